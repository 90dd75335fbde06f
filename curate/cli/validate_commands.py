"""``curate validate``: check a dataset folder as trainers read it (``curate.validate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import out, user_errors
from curate.cli.export_commands import Format

__all__ = ["validate_command"]

# curate.validate.DEFAULT_MAX_EXAMPLES, restated so that --help imports no stage (tests/test_validate.py checks it).
DEFAULT_MAX_EXAMPLES = 5


def validate_command(
    folder: Annotated[Path, typer.Argument(
        help="A dataset folder: curate export's, or any datasets.load_dataset reads (one from the Hub).",
        show_default=False)],
    fmt: Annotated[Format | None, typer.Option(
        "--format", help="Check the rows as this format [default: the one curate's card names, else the one the "
                         "columns tell; messages alone tell TRL's SFT type, --format openai checks OpenAI's rules].",
        show_default=False)] = None,
    max_examples: Annotated[int, typer.Option("--max-examples", min=0, help="Rows listed per reason.")]
    = DEFAULT_MAX_EXAMPLES,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read FOLDER with datasets.load_dataset, as a trainer does, and report each row a trainer would refuse or misread.

    TRL's column conventions for messages, prompt-completion, dpo and kto (conversational or text);
    OpenAI's published rules for openai and openai-preference; curate's own for sharegpt, alpaca and
    catalyst. Exit status 1 when a row is broken, 2 when FOLDER is no dataset of a format it knows.
    """
    from curate.validate import validate

    with user_errors():
        report = validate(folder, fmt=None if fmt is None else fmt.value, max_examples=max_examples)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        sizes = ", ".join(f"{name} {n:,}" for name, n in report.splits.items())
        told = {"--format": "as told by --format", "card": "named by curate's card", "columns": "told by its columns"}
        out.print(f"{report.folder}: {report.format} ({told[report.told_by]}), {report.form}; rows: {sizes}",
                  highlight=False, soft_wrap=True)
        if report.ignored:
            out.print(f"columns not read: {', '.join(report.ignored)}", style="dim", highlight=False, soft_wrap=True)
        if report.ok:
            out.print(f"every row of {report.rows:,} is valid", highlight=False)
        else:
            reasons = Table("broken because", "rows", "e.g. (split:row)")
            for reason, n in report.counts.most_common():
                reasons.add_row(reason, f"{n:,}", ", ".join(f"{s}:{r}" for s, r in report.examples[reason]))
            out.print(reasons)
            out.print(f"{report.broken:,} of {report.rows:,} rows broken", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
