"""``curate export``: a view or a SELECT to a Hugging Face dataset folder."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, LakeOption, QueriesOption, err, lake_uri, open_store, out, user_errors

__all__ = ["export_command"]

# curate.formats.FORMATS, for --help without importing duckdb and pyarrow (tests/test_imports.py
# checks that the two agree).
EXPORT_FORMATS = ("messages", "openai", "prompt-completion", "sharegpt", "alpaca", "catalyst", "dpo", "kto",
                  "openai-preference")

Format = Enum("Format", {name: name for name in EXPORT_FORMATS}, type=str)  # type: ignore[misc]


# curate.exporter.DEDUP and PII, restated for the same reason (tests/test_export_options.py checks that
# the choices, and every default below, are the library's).
DEDUP_MODES = ("exact", "near", "none")
PII_MODES = ("keep", "drop", "redact")

# curate.exporter.DEFAULT_RANK_BY, restated for the same reason.
DEFAULT_RANK_BY = "judge_helpfulness"

# curate.formats.REASONING and THINK, restated for the same reason.
REASONING_MODES = ("drop", "keep", "inline")
THINK_TAGS = "<think>,</think>"
Reasoning = Enum("Reasoning", {name: name for name in REASONING_MODES}, type=str)  # type: ignore[misc]

Dedup = Enum("Dedup", {name: name for name in DEDUP_MODES}, type=str)  # type: ignore[misc]
Pii = Enum("Pii", {name: name for name in PII_MODES}, type=str)  # type: ignore[misc]


def _tags(text: str) -> tuple[str, str]:
    opening, _, closing = text.partition(",")
    return opening.strip(), closing.strip()


def export_command(
    source: Annotated[
        str, typer.Argument(help="A view name (chat, conversations, ...) or a SELECT with id and messages columns.",
                            show_default=False)
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="The folder to write (a Hub dataset layout).",
                                          show_default=False)],
    fmt: Annotated[Format, typer.Option("--format", help="The dataset format.")] = Format["messages"],
    where: Annotated[str | None, typer.Option(help="A SQL condition over SOURCE's columns.", show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(help="Keep a seeded sample of N matching rows.", show_default=False)] = None,
    test_size: Annotated[float, typer.Option(help="The test split's fraction; 0 for train only.")] = 0.1,
    split_by: Annotated[
        str | None,
        typer.Option(help="A SQL expression: rows sharing its value stay on one side "
                          "[default: the conversation's opening messages].", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="The seed of the split and of the row order.")] = 0,
    dedup: Annotated[Dedup, typer.Option(
        help="exact: one row per identical messages and tools; near: also one per near-duplicate "
             "cluster (curate dedup near, brought up to date first).")] = Dedup["exact"],
    exclude_contaminated: Annotated[bool, typer.Option(
        "--exclude-contaminated", help="Drop rows curate decontaminate found in an eval set.")] = False,
    pii: Annotated[Pii, typer.Option(help="What to do with what curate scan pii found: drop the rows, or redact the spans "
                                    "([EMAIL], [PHONE], [SECRET], ...).")] = Pii["keep"],
    no_rescan: Annotated[bool, typer.Option(
        "--no-rescan", help="Refuse, rather than first run them, when a pass acted on (--pii, --dedup near, "
                            "--exclude-contaminated) has not seen every chat row as it is now.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Write nothing if any row is invalid for the format.")] = False,
    license_id: Annotated[str, typer.Option("--license", help="The card's license id.")] = "other",
    rank_by: Annotated[str, typer.Option(
        "--rank-by", help="dpo, kto, openai-preference: a SQL expression over SOURCE's columns ranking the answers to "
                          "one prompt, higher is better (NULL: no part). The highest and the lowest make its pair.")
    ] = DEFAULT_RANK_BY,
    min_margin: Annotated[float | None, typer.Option(
        "--min-margin", help="dpo, kto, openai-preference: a pair only when the chosen rank exceeds the rejected one "
                             "by at least this [default: any positive margin; equal ranks make no pair].",
        show_default=False)] = None,
    reasoning: Annotated[Reasoning | None, typer.Option(
        help="What reasoning models' thinking becomes: keep (reasoning_content on the assistant messages), inline "
             "(before the content, between --think-tags) or drop [default: drop for openai, openai-preference, "
             "sharegpt and alpaca, which have no field for it; keep for the others].", show_default=False)] = None,
    think_tags: Annotated[str, typer.Option(
        help="--reasoning inline: the opening and closing tags, comma-separated.")] = THINK_TAGS,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", metavar="NAME_OR_PATH",
        help="Count each row's tokens with the target model's tokenizer and chat template, as a trainer does (a "
             "local folder or a Hugging Face Hub id; needs curate[tokenizer]); the card gets per-split statistics.",
        show_default=False)] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", metavar="N",
        help="With --tokenizer: drop the rows longer than N tokens (counted by reason), never truncate them "
             "[default: drop none, only count].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    db: DbOption = None,
    lake: LakeOption = None,
    queries: QueriesOption = None,
) -> None:
    """Export SOURCE to a dataset folder: validated, deduplicated, split, with lineage and a card.

    The folder loads with datasets.load_dataset(FOLDER) and publishes with curate publish.
    The same store and arguments write the same bytes.
    """
    from curate.exporter import ExportOptions, export

    started = time.perf_counter()
    with user_errors():
        store = open_store(db, queries, lake_uri(lake, db))
        options = ExportOptions(
            fmt=fmt.value, where=where, limit=limit, test_size=test_size, split_by=split_by, seed=seed,
            dedup=dedup.value, exclude_contaminated=exclude_contaminated, pii=pii.value, strict=strict,
            license_id=license_id, rescan=not no_rescan, rank_by=rank_by, min_margin=min_margin,
            reasoning=None if reasoning is None else reasoning.value, think_tags=_tags(think_tags),
            tokenizer=tokenizer, max_tokens=max_tokens,
        )
        result = export(store, source, out_dir, options, progress=None if as_json else lambda message: err.print(
            f"[{time.perf_counter() - started:5.1f}s] {message}", style="dim", highlight=False))
    if as_json:
        typer.echo(json.dumps({
            "folder": str(result.folder), "format": result.format, "counts": result.counts,
            "invalid": result.invalid, "files": [str(p) for p in result.files],
            "shared_keys": result.shared_keys, "shared_prompts": result.shared_prompts,
            "fingerprint": result.fingerprint, "seconds": round(result.seconds, 2),
            **({"pairing": result.pairing} if result.pairing else {}),
        }))
        return
    steps = Table("step", "rows", title=f"{result.format} → {result.folder}")
    for step, n in result.counts.items():
        steps.add_row(step, f"{n:,}")
    out.print(steps)
    if result.invalid:
        reasons = Table("dropped because", "rows", "e.g.")
        for reason, n in result.invalid.items():
            reasons.add_row(reason, f"{n:,}", ", ".join(result.invalid_examples[reason]))
        out.print(reasons)
    if result.pairing:
        out.print(f"pairs: {result.pairing['prompts']:,} prompts, {result.pairing['pairs']:,} with a pair",
                  highlight=False)
        for heading, unit, found in (("no pair because", "prompts", result.pairing["no_pair"]),
                                     ("pair dropped because", "pairs", result.pairing["dropped"])):
            if found:
                table = Table(heading, unit)
                for reason, n in found.items():
                    table.add_row(reason, f"{n:,}")
                out.print(table)
    out.print(f"split check: {result.shared_keys} split keys and {result.shared_prompts} identical prompts "
              "in more than one split", highlight=False)
    for path in [*result.files, result.folder / "lineage.parquet", result.folder / "README.md"]:
        typer.echo(f"wrote {path}")
