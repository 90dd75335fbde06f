"""The dataset card's text: its YAML front matter, its prose, and the block of prose curate writes.

A card is a ``README.md``: front matter between two ``---`` lines, then Markdown. curate writes its
prose between two marker lines, :data:`START` and :data:`END`; everything outside that block is the
user's and is never rewritten. This module only handles text (no files, no network), so an export
and a publish merge cards the same way.

:func:`render` writes an export's card: the front matter (license, tags, the splits' files and
features, as the Hub reads them) and the block's prose (how the rows were chosen, the counts at each
step, the split check, models, tokens, files), from the export's options and the :class:`Facts` it
found. It reads the options through :class:`Options`, so this module needs nothing of the exporter
(the arrow goes one way: exporter → card).

How :func:`merge` combines an existing card (from the Hub, or hand-edited on disk) with a freshly
generated one:

- **Prose.** The generated block replaces the existing block in place: what comes before and after
  it is kept byte for byte. An existing card without a block keeps its prose first, then gets the
  block after a blank line. An existing card with no prose at all (or no card) takes the generated
  body whole.
- **Front matter.** The generated card's keys come first, in its order, with its values: curate
  owns ``configs``, ``dataset_info`` and whatever else it writes. Then come the keys only the
  existing card has (``language``, ``pretty_name``, ``size_categories``, ...), in their order.
  Three exceptions: a generated value of ``null`` counts as unset; a generated ``license: other``
  (curate's placeholder) gives way to a license set by hand; ``tags`` are the generated tags, then
  the existing ones curate did not set, so tags added by hand survive.

Merging is idempotent: ``merge(merge(e, g), g) == merge(e, g)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import yaml

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["END", "PLACEHOLDER_LICENSE", "START", "Facts", "Options", "PairFacts", "TokenFacts", "block", "compose",
           "merge", "render", "split"]

START = "<!-- curate:generated:start -->"
END = "<!-- curate:generated:end -->"

# The license curate writes when it does not know one; a real one set by hand is worth more.
PLACEHOLDER_LICENSE = "other"
_FENCE = "---"


def split(text: str) -> tuple[dict[str, Any], str]:
    """The card's front matter (``{}`` when it has none) and its body, the text after the front matter.

    Raises ValueError when the front matter is not closed, is not valid YAML (naming the line, counted
    in the whole card), or is not a mapping.
    """
    text = text.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip() != _FENCE:
        return {}, text
    for end, line in enumerate(lines[1:], start=1):
        if line.rstrip() == _FENCE:
            break
    else:
        raise ValueError("the front matter opened by '---' on line 1 has no closing '---' line")
    try:
        header = yaml.safe_load("".join(lines[1:end]))
    except yaml.MarkedYAMLError as exc:
        # The mark counts from 0 within the YAML; the card has the opening fence before it.
        line_number = exc.problem_mark.line + 2 if exc.problem_mark else "?"
        raise ValueError(f"front matter, line {line_number}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"front matter: {exc}") from None
    if header is None:
        header = {}
    if isinstance(header, dict):
        return header, "".join(lines[end + 1:])
    # A ValueError, not a TypeError: the card's text is wrong, not the caller's argument.
    raise ValueError(f"front matter must be a mapping of keys to values, not a {type(header).__name__}")


def compose(header: dict[str, Any], body: str) -> str:
    """A card from front matter and a body; an empty header gives the body alone (no empty ``{}`` block)."""
    if not header:
        return body
    return f"{_FENCE}\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}{_FENCE}\n{body}"


def block(text: str) -> str | None:
    """curate's block in a card or body, markers included; None when there is none.

    Raises ValueError when the markers do not make exactly one block: an unmatched marker would make
    the next merge replace the user's prose, so it is refused rather than guessed at.
    """
    span = _block_span(text)
    return None if span is None else text[span[0]:span[1]]


def merge(existing: str, generated: str) -> str:
    """A new card: the freshly ``generated`` one's block and keys, the ``existing`` one's own prose and keys.

    ``existing`` may be empty (no card yet). The rules are in this module's docstring. Raises
    ValueError when either card's front matter is broken, the generated card has no block, or either
    card has unmatched markers.
    """
    generated_header, generated_body = split(generated)
    existing_header, existing_body = split(existing)
    generated_block = block(generated_body)
    if generated_block is None:
        raise ValueError(f"the generated card has no {START} ... {END} block")
    return compose(_merge_header(existing_header, generated_header),
                   _merge_body(existing_body, generated_body, generated_block))


def _merge_header(existing: dict[str, Any], generated: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in generated.items():
        if value is None:
            continue
        mine = existing.get(key)
        if key == "license" and value == PLACEHOLDER_LICENSE and mine is not None:
            value = mine
        elif key == "tags" and isinstance(value, list) and isinstance(mine, list):
            value = value + [tag for tag in mine if tag not in value]
        merged[key] = value
    for key, value in existing.items():
        merged.setdefault(key, value)
    return merged


def _merge_body(existing: str, generated: str, generated_block: str) -> str:
    span = _block_span(existing)
    if span is not None:
        return existing[:span[0]] + generated_block + existing[span[1]:]
    if not existing.strip():
        return generated
    return existing + ("" if existing.endswith("\n") else "\n") + "\n" + generated_block + "\n"


def _block_span(text: str) -> tuple[int, int] | None:
    starts, ends = text.count(START), text.count(END)
    if starts == ends == 0:
        return None
    start, end = text.find(START), text.find(END)
    if starts != 1 or ends != 1 or end < start:
        raise ValueError(
            f"the card's curate markers do not make one block ({starts} {START}, {ends} {END}, in that order): "
            "keep exactly one of each, start first, or remove both"
        )
    return start, end + len(END)


# ---------------------------------------------------------------- an export's card


def _reasoning_prose(facts: Facts) -> str:
    rows = f"{facts.reasoning_rows:,} exported row{'s' if facts.reasoning_rows != 1 else ''}"
    if not facts.reasoning_rows:
        return "none in the exported rows."
    if facts.reasoning == "keep":
        return (f"{rows} have it, kept as `reasoning_content` on their assistant messages (earlier turns "
                "included), the key chat templates read.")
    if facts.reasoning == "inline":
        return (f"{rows} have it, written into the assistant messages' content before the answer, between think "
                "tags (`--reasoning inline`; a message whose content is a list of parts keeps its parts and loses "
                "its reasoning).")
    return f"{rows} had it; dropped (`--reasoning drop`, or a format with no field for it)."


class Options(Protocol):
    """The export options a card states (``curate.exporter.ExportOptions`` has them, read-only)."""

    @property
    def fmt(self) -> str: ...
    @property
    def test_size(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def split_by(self) -> str | None: ...
    @property
    def dedup(self) -> str: ...
    @property
    def license_id(self) -> str: ...
    @property
    def rank_by(self) -> str: ...
    @property
    def min_margin(self) -> float | None: ...


@dataclass(frozen=True)
class TokenFacts:
    """Each exported row's length counted with the target model's tokenizer and chat template (``curate.tokens``)."""

    tokenizer: str  # as given: a Hub id, or a folder's path
    revision: str  # the Hub commit, or sha256: of the folder's tokenizer files
    max_tokens: int | None  # --max-tokens: rows over it were dropped; None: only counted
    reason: str  # what the rows dropped for their length are counted under (in Facts.invalid too)
    dropped: int  # rows dropped as over max_tokens
    splits: list[tuple[Any, ...]]  # split, rows, min, p50, p90, p99, max, total tokens of the rows written


@dataclass(frozen=True)
class PairFacts:
    """What the pairing of a preference export found (``curate.formats.pairs``)."""

    prompts: int  # distinct prompts among the rows left after filtering, validating and the passes
    pairs: int  # prompts that made a pair
    no_pair: dict[str, int]  # why a prompt made no pair → prompts
    dropped: dict[str, int]  # why a pair was dropped after (duplicates) → pairs
    models: list[tuple[Any, ...]]  # (model, chosen answers, rejected answers) of the pairs kept


@dataclass(frozen=True)
class Facts:
    """What an export read, decided and wrote, as its card states it."""

    name: str  # the card's title: the folder's name
    query: str  # the SQL the rows were read with, WHERE and sample included
    view_sql: str | None  # the view's file as its author wrote it, when SOURCE names a view
    when: str  # when the export was made, as the card prints it
    store: str
    fingerprint: str
    generations: int  # generations in the store
    counts: dict[str, int]  # each step in order (source, filtered, valid, deduplicated, ...), then each split
    splits: dict[str, int]  # split → rows, train first
    invalid: dict[str, int]  # reason → rows dropped as invalid for the format
    removed: dict[str, dict[str, int]]  # what a pass removed rows as found in → name → rows
    shared_keys: int
    straddling_clusters: int
    shared_prompts: int
    models: list[tuple[Any, ...]]  # (model, split, rows)
    tokens: list[tuple[Any, ...]]  # split, then for prompt then completion: rows, total, mean, p50, p90, max
    notes: list[str]  # one line per curation pass acted on
    files: list[str]  # the data files, relative to the folder, in POSIX form
    sizes: dict[str, int]  # split → bytes of its files
    pairs: PairFacts | None = None  # a preference format's pairing; None for the others
    reasoning: str = "drop"  # what the files do with reasoning (formats.REASONING), as written
    reasoning_rows: int = 0  # exported rows with reasoning in any assistant message
    lengths: TokenFacts | None = None  # --tokenizer: lengths by the target model's chat template


def render(options: Options, facts: Facts) -> str:
    """The card of an export made with ``options`` that found ``facts``: front matter, then curate's block.

    The same options and facts give the same text.
    """
    # Imported here: a publish merges cards with this module and needs neither DuckDB nor Arrow.
    import duckdb

    from curate import formats
    from curate._version import __version__

    fmt, split_by = options.fmt, options.split_by
    preference = facts.pairs is not None

    jsonl = fmt in formats.JSONL_FORMATS
    data_files = [
        {"split": split, "path": f"data/{split}.jsonl" if jsonl else f"data/{split}-*"} for split in facts.splits
    ]
    features = formats.FEATURES[fmt] if jsonl else [_feature(f.name, f.type) for f in formats.schema(fmt, facts.reasoning)]
    header: dict[str, Any] = {
        "license": options.license_id,
        "task_categories": ["text-generation"],
        "tags": ["curate", "inference.net", "fine-tuning", fmt, *(["preference"] if preference else [])],
        "size_categories": [_size_category(facts.counts["deduplicated"])],
        "configs": [{"config_name": "default", "data_files": data_files}],
        "dataset_info": {
            "features": features,
            # datasets wants num_bytes beside num_examples; it is meant as the split's size in
            # Arrow, which no one computes here: the files' bytes are the honest nearest figure.
            "splits": [{"name": split, "num_bytes": facts.sizes[split], "num_examples": n}
                       for split, n in facts.splits.items()],
            "download_size": sum(facts.sizes.values()),
        },
    }
    split_rule = f"`{split_by}`" if split_by else "the conversation (its messages up to and including the first user message)"
    if preference:
        split_rule = ("the prompt's conversation (its messages up to and including the first user message, or its "
                      "near-duplicate cluster): both sides of a pair, and every pair of one conversation, are on one side")
    lines = [
        START,
        f"# {facts.name}",
        "",
        f"A fine-tuning dataset exported by curate from inference.net generations, in the `{fmt}` format. "
        + _FORMAT_PROSE[fmt],
        "",
        "## How it was made",
        "",
        f"- Exported {facts.when} by curate {__version__} (DuckDB {duckdb.__version__}).",
        f"- Store: `{facts.store}`, fingerprint `{facts.fingerprint}` ({facts.generations:,} generations).",
        (f"- Split: test fraction {options.test_size:g}, seed {options.seed}, by {split_rule}; "
         f"duplicates: {options.dedup}."),
        f"- Reasoning: {_reasoning_prose(facts)}",
        "- Query:",
        "",
        "```sql",
        facts.query,
        "```",
    ]
    if facts.view_sql:
        lines += ["", "<details><summary>The view it reads</summary>", "", "```sql", facts.view_sql.strip(), "```", "",
                  "</details>"]
    if facts.notes:
        lines += ["", "## Curation passes", ""] + [f"- {note}" for note in facts.notes]
        if preference:
            lines += ["- The passes act on the answers before they are paired: an answer they remove takes no part."]
    if facts.pairs is not None:
        lines += _pair_lines(options, facts.pairs)
    lines += ["", "## Rows at each step", "", "| step | rows |", "|---|---:|"]
    lines += [f"| {step} | {n:,} |" for step, n in facts.counts.items() if step not in facts.splits]
    lines += [f"| {split} | {n:,} |" for split, n in facts.splits.items()]
    for what, counts in facts.removed.items():
        lines += ["", f"Rows removed as found in {what}:", "", "| name | rows |", "|---|---:|"]
        lines += [f"| {name} | {n:,} |" for name, n in counts.items()] or ["| (none) | 0 |"]
    # The rows dropped for their length are in invalid too (the summary's reasons); stated with the lengths here.
    length_reason = None if facts.lengths is None else facts.lengths.reason
    invalid = {reason: n for reason, n in facts.invalid.items() if reason != length_reason}
    if invalid:
        lines += ["", "Rows dropped as invalid for this format:", "", "| reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in invalid.items()]
    lines += [
        "",
        "## Split check",
        "",
        f"- Split-key values found in more than one split: **{facts.shared_keys}**.",
        ("- Near-duplicate clusters (`curate dedup near`) found in more than one split: "
         f"**{facts.straddling_clusters}**."),
        ("- Identical prompts (the messages before the answer) found in more than one split: "
         f"**{facts.shared_prompts}**."),
    ]
    if facts.models and not preference:
        split_names = list(facts.splits)
        lines += ["", "## Models", "", "| model | " + " | ".join(split_names) + " |",
                  "|---|" + "---:|" * len(split_names)]
        per_model: dict[str, dict[str, int]] = {}
        for model, split, n in facts.models:
            per_model.setdefault(model, {})[split] = n
        lines += [f"| {model} | " + " | ".join(f"{by.get(s, 0):,}" for s in split_names) + " |"
                  for model, by in per_model.items()]
    if any(row[1] for row in facts.tokens):
        per_row = ("per row: the chosen answer's call (kto: the side's)" if preference
                   else "per row (the last call of a conversation)")
        lines += ["", "## Tokens", "", f"As reported by the API's `usage`, {per_row}.",
                  "", "| split | tokens | rows | total | mean | p50 | p90 | max |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for split, *vals in facts.tokens:
            for label, (n, total, mean, p50, p90, top) in (("prompt", vals[0:6]), ("completion", vals[6:12])):
                if n:
                    lines.append(f"| {split} | {label} | {n:,} | {total:,} | {int(mean):,} | {p50:,} | {p90:,} | {top:,} |")
    if facts.lengths is not None:
        lines += _length_lines(fmt, facts.lengths)
    lines += ["", "## Files", ""]
    lines += [f"- `{path}`" for path in facts.files]
    lineage = ("- `lineage.parquet`: one row per exported row: `split`, `row` (its position in the split), `id`, "
               "`generation_ids` (the inference.net generations it was made from) and `duplicate_ids` (exact "
               "duplicates dropped in its favour).")
    if preference:
        lineage = ("- `lineage.parquet`: one row per exported row: `split`, `row` (its position in the split), `id` (the "
                   "chosen answer's generation; kto: the side's), `generation_ids` (the generations it was made from), "
                   "`duplicate_ids` (both ids of each pair dropped as its exact duplicate), `chosen_id`, `rejected_id`, "
                   "`chosen_rank` and `rejected_rank` (the pair's two answers and their ranks)"
                   + (", and `label`." if fmt == "kto" else "."))
    lines += [
        lineage,
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder")  # or "ORG/NAME" once published',
        "```",
        END,
        "",
    ]
    return compose(header, "\n".join(lines))


def _pair_lines(options: Options, pairs: PairFacts) -> list[str]:
    """The card's account of a preference export's pairing."""
    margin = "any positive margin" if options.min_margin is None else f"at least {options.min_margin:g}"
    lines = [
        "", "## Pairs", "",
        (f"Answers sharing a prompt (the messages before the answer, compared as JSON values with keys sorted and "
         f"null members dropped, and the same tools) are ranked by `{options.rank_by}` (higher is better; an answer "
         "whose rank is NULL, or that the format cannot hold, takes no part). Each prompt gives at most one pair: "
         "chosen is the highest-ranked answer, rejected the lowest (ties to the first finished, then the smallest "
         f"id), when chosen's rank exceeds rejected's by {margin} (`--min-margin`; equal ranks make no pair) and "
         "the two answers differ."),
        "",
        f"- Prompts seen: **{pairs.prompts:,}**.",
        f"- Prompts with a pair: **{pairs.pairs:,}**.",
    ]
    if pairs.no_pair:
        lines += ["", "| prompts without a pair, because | prompts |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in pairs.no_pair.items()]
    lines += ["", "| pairs dropped, because | pairs |", "|---|---:|"]
    lines += [f"| {reason} | {n:,} |" for reason, n in pairs.dropped.items()] or ["| (none) | 0 |"]
    if pairs.models:
        lines += ["", "Models of the answers in the pairs kept:", "", "| model | chosen | rejected |", "|---|---:|---:|"]
        lines += [f"| {model} | {chosen:,} | {rejected:,} |" for model, chosen, rejected in pairs.models]
    return lines


def _length_lines(fmt: str, lengths: TokenFacts) -> list[str]:
    """The card's account of the lengths counted with the target model's tokenizer (``--tokenizer``)."""
    what = {"dpo": "; a pair is the longer of prompt + chosen and prompt + rejected",
            "openai-preference": "; a pair is the longer of prompt + preferred and prompt + non-preferred output",
            "kto": "; a row is its prompt + completion", "prompt-completion": "; a row is its prompt + completion",
            "sharegpt": "; the conversation as messages (human: user, gpt: assistant)",
            "alpaca": "; system, instruction (and input) as the user's message, output as the assistant's"}.get(fmt, "")
    if lengths.max_tokens is None:
        limit = "No row was dropped for its length (no `--max-tokens`)."
    else:
        limit = (f"Rows over {lengths.max_tokens:,} tokens (`--max-tokens {lengths.max_tokens}`) were dropped, not "
                 f"truncated: **{lengths.dropped:,}**.")
    lines = [
        "", "## Tokens by the target model's tokenizer", "",
        (f"Counted with `{lengths.tokenizer}` (revision `{lengths.revision}`) as a trainer counts them: each row's "
         "messages and tools through the tokenizer's chat template, "
         f"`len(tokenizer.apply_chat_template(messages, tools=tools, tokenize=True))`{what}. "
         "p50, p90, p99: nearest rank."),
        "", limit, "",
        "| split | rows | min | p50 | p90 | p99 | max | total |", "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {split} | " + " | ".join(f"{value:,}" for value in values) + " |"
              for split, *values in lengths.splits]
    return lines


def _feature(name: str | None, kind: pa.DataType) -> dict[str, Any]:
    """A column's Hugging Face feature in the card's YAML form (what ``datasets`` writes itself)."""
    import pyarrow as pa

    out: dict[str, Any] = {} if name is None else {"name": name}
    if isinstance(kind, pa.JsonType):
        out["dtype"] = "json"
    elif pa.types.is_list(kind):
        item = _feature(None, kind.value_type)
        out["list"] = item.get("struct", item.get("dtype"))
    elif pa.types.is_struct(kind):
        out["struct"] = [_feature(kind.field(i).name, kind.field(i).type) for i in range(kind.num_fields)]
    else:
        out["dtype"] = str(kind)
    return out


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


_FORMAT_PROSE = {
    "messages": "Hugging Face conversational: a `messages` list (role, content, content_parts, tool_calls, "
                "tool_call_id, name) and `tools`. Content is text in `content`, or a list of text/image parts in "
                "`content_parts`. Tool-call `arguments` and `tools` are JSON (`datasets`' `Json()` feature: "
                "they load as Python objects, whatever their shapes).",
    "prompt-completion": "Hugging Face conversational prompt-completion: `prompt` (the messages before the "
                         "answer), `completion` (the answer) and `tools`, typed as in the `messages` format.",
    "openai": "OpenAI chat fine-tuning JSONL: one `{\"messages\": [...], \"tools\": [...]}` per line, tool-call "
              "arguments as JSON strings, only the keys OpenAI accepts (a null content outside an assistant "
              "turn is written as empty text). Every line passed OpenAI's published rules before it was written.",
    "sharegpt": "ShareGPT: `conversations` of `{from, value}` (human, gpt, system). Rows with tool calls or "
                "images do not fit and were dropped.",
    "alpaca": "Alpaca: `instruction`, `input` (empty), `output`, and `system`. Single-turn rows only.",
    "catalyst": "inference.net's dataset format: one `{\"request\": ..., \"response\": ...}` per line, the "
                "request the messages before the answer (with model and tools), the response a chat completion.",
    "dpo": "TRL's conversational preference type, as `DPOTrainer` reads it: `prompt` (the messages before the "
           "answer, tool calls and tool results included), `chosen` and `rejected` (each a list holding one "
           "assistant answer), and `tools`, typed as in the `messages` format. One row per pair (see Pairs).",
    "kto": "TRL's unpaired preference type, as `KTOTrainer` reads it: `prompt` (the messages before the answer), "
           "`completion` (a list holding one assistant answer), `label` (true for the chosen answer, false for the "
           "rejected one) and `tools`, typed as in the `messages` format. Two rows per pair (see Pairs), the "
           "chosen one first.",
    "openai-preference": "OpenAI's preference (DPO) fine-tuning JSONL: one `{\"input\": {\"messages\": [...], "
                         "\"tools\": [...]}, \"preferred_output\": [...], \"non_preferred_output\": [...]}` per "
                         "pair (see Pairs), messages as the `openai` format writes them. Every line passed OpenAI's "
                         "published chat and preference rules (text only) before it was written.",
}
