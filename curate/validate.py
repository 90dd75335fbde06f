"""``curate validate``: a dataset folder read as trainers read it, and the rows they would refuse or misread.

This module owns four things:

* **Reading** a folder, curate's export or anyone's (a dataset downloaded from the Hub), with
  ``datasets.load_dataset(FOLDER)``, as a trainer does, then its splits as Arrow batches.
* **Telling its format**: ``--format``, else curate's card (its tags name the format), else the
  columns (``detect``), most specific first: ``input``/``preferred_output``/``non_preferred_output``
  (openai-preference), ``chosen``/``rejected`` (dpo), ``prompt``/``completion``/``label`` (kto),
  ``prompt``/``completion``, ``messages``, ``request``/``response`` (catalyst), ``conversations``
  (sharegpt), ``instruction``/``output`` (alpaca). A folder whose columns tell none is refused,
  naming them. From columns alone, ``messages`` is TRL's SFT type: OpenAI's JSONL has the same
  column, and is checked by OpenAI's rules only when curate's card or ``--format openai`` says so.
* **TRL's column conventions** (its "Dataset formats and types" guide, ``trl/data_utils.py``): a
  column of a type is either a list of messages (conversational) or a string (standard); a
  preference row's prompt is its own column or implicit, the common prefix of ``chosen`` and
  ``rejected`` (``extract_prompt``), what is left of each being the answer; KTO's ``label`` is a
  bool; other columns are ignored, as TRL's ``apply_chat_template`` ignores them.
* **The report**: each broken row once, with the first reason found (columns in their order, then
  the rows they make together), counted by reason, with the first ``max_examples`` (split, row)
  of each; rows are numbered from 0 in each split, as ``dataset[split][row]`` and curate's
  ``lineage.parquet`` number them.

What a valid row holds is stated elsewhere and only run here: the rules a trainer needs of any
list of messages are ``curate.formats``' (``MESSAGE_RULES``, ``CONVERSATION_RULES``,
``SFT_RULES``, ``PROMPT_RULES``, ``ANSWER_RULES``), SQL run by an in-memory DuckDB over each Arrow
batch after ``typed_messages`` has parsed the messages; sharegpt, alpaca and catalyst rows are
read back into messages and checked by their export's own ``drop_reason``; OpenAI's published
rules are ``validate_openai`` and ``validate_openai_preference``, run on each line (a JSON value
per row, null members dropped where ``datasets`` filled them in for keys a line did not have).
Time is linear in the rows; memory is one batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa

from curate import card, formats
from curate.errors import UsageError

if TYPE_CHECKING:
    import datasets

__all__ = ["BATCH_ROWS", "DEFAULT_MAX_EXAMPLES", "NotADataset", "Report", "detect", "validate"]

DEFAULT_MAX_EXAMPLES = 5
BATCH_ROWS = 8192

# The columns that tell a format, most specific first; a folder checked as the format needs them.
_TELLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("openai-preference", ("input", "preferred_output", "non_preferred_output")),
    ("dpo", ("chosen", "rejected")),
    ("kto", ("prompt", "completion", "label")),
    ("prompt-completion", ("prompt", "completion")),
    ("messages", ("messages",)),
    ("catalyst", ("request", "response")),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
)
_NEEDS = dict(_TELLS)
# Besides those, what each format reads (the OpenAI formats read every column: a line has no other key).
_ALSO_READS = {"messages": ("tools",), "prompt-completion": ("tools",), "kto": ("tools",), "dpo": ("prompt", "tools"),
               "alpaca": ("input", "system")}
_OPENAI_CHECKS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "openai": formats.validate_openai, "openai-preference": formats.validate_openai_preference}

PROMPTS_DIFFER = "chosen and rejected prompts differ"
NO_SHARED_PROMPT = "chosen and rejected share no prompt"
NOT_BOOL = "label is not a bool"


class NotADataset(UsageError):
    """A folder ``curate validate`` cannot check: missing, unreadable by ``datasets``, or of no format it knows."""


@dataclass
class Report:
    """What ``validate`` found: the format and how it was told, the splits' sizes, and the broken
    rows by reason (``counts``), the first few of each as (split, row) in ``examples``."""

    folder: Path
    format: str
    told_by: str  # "--format", "card" (curate's) or "columns"
    form: str  # how the rows were read: conversational, text, implicit prompt, JSON lines
    columns: list[str]
    ignored: list[str]  # columns the format does not read
    splits: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.splits.values())

    @property
    def broken(self) -> int:
        """Rows broken, each counted once (under its first reason)."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.broken == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "format": self.format, "told_by": self.told_by, "form": self.form,
            "columns": self.columns, "ignored_columns": self.ignored, "splits": self.splits, "rows": self.rows,
            "broken": self.broken,
            "reasons": {reason: {"rows": n, "examples": [{"split": s, "row": r} for s, r in self.examples[reason]]}
                        for reason, n in self.counts.most_common()},
        }


def detect(columns: Sequence[str]) -> str | None:
    """The format ``columns`` tell (see the module's docstring), or None."""
    have = set(columns)
    return next((fmt for fmt, needs in _TELLS if have.issuperset(needs)), None)


def validate(folder: str | Path, *, fmt: str | None = None, max_examples: int = DEFAULT_MAX_EXAMPLES,
             batch_rows: int = BATCH_ROWS, cache_dir: str | Path | None = None) -> Report:
    """Check every row of the dataset folder ``folder`` as ``fmt`` (default: told by curate's card,
    else by the columns) and report the broken ones.

    ``cache_dir`` is ``datasets``' cache (default its own, ``$HF_DATASETS_CACHE``). Raises
    ``NotADataset`` (exit 2) for a folder that is missing, that ``datasets`` cannot load, or whose
    columns tell no format.
    """
    folder = Path(folder)
    if fmt is not None and fmt not in formats.FORMATS:
        raise UsageError(f"unknown format {fmt!r}; expected one of {', '.join(formats.FORMATS)}")
    if max_examples < 0:
        raise UsageError("max_examples must be 0 or more")
    if not folder.is_dir():
        raise NotADataset(f"{folder}: {'no such folder' if not folder.exists() else 'not a folder'}")
    told_by = "--format"
    if fmt is None:
        fmt, told_by = _card_format(folder), "card"
    with _loaded(folder, cache_dir) as loaded:
        first = next(iter(loaded.values()), None)
        columns = list(first.column_names) if first is not None else []
        if fmt is None:
            fmt, told_by = detect(columns), "columns"
        if fmt is None:
            found = ", ".join(columns) or "none"
            known = "; ".join(f"{name}: {', '.join(needs)}" for name, needs in _TELLS)
            raise NotADataset(f"{folder}: cannot tell its format from its columns ({found}); "
                              f"expected the columns of one of these formats ({known}), or --format")
        report: Report | None = None
        con = duckdb.connect()
        try:
            for name, split in loaded.items():
                plan = _plan(fmt, split.data.schema)
                if report is None:
                    report = Report(folder, fmt, told_by, plan.form, columns, plan.ignored)
                report.splits[name] = split.num_rows
                start = 0
                for batch in split.with_format("arrow").iter(batch_size=batch_rows):
                    for row, reason in plan.broken(con, batch, start):
                        report.counts[reason] += 1
                        seen = report.examples.setdefault(reason, [])
                        if len(seen) < max_examples:
                            seen.append((name, row))
                    start += batch.num_rows
        finally:
            con.close()
    if report is None:  # no split at all
        raise NotADataset(f"{folder}: datasets.load_dataset found no split in it")
    return report


# ---------------------------------------------------------------- reading the folder


def _card_format(folder: Path) -> str | None:
    """The format curate's card names (its tags: ``curate`` and one format), or None."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        header, _ = card.split(readme.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # not a card curate wrote; datasets will say what it makes of it
    tags = header.get("tags")
    if not isinstance(tags, list) or "curate" not in tags:
        return None
    named = [tag for tag in tags if tag in formats.FORMATS]
    return named[0] if len(named) == 1 else None


@contextmanager
def _loaded(folder: Path, cache_dir: str | Path | None) -> Iterator[datasets.DatasetDict]:
    try:
        import datasets
    except ImportError:
        raise UsageError("curate validate reads folders with the datasets library, which is not installed: "
                         "pip install 'curate[notebook]'") from None
    # The error is told once, in the refusal: not also in datasets' log and progress bars.
    quiet, verbosity = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        try:
            loaded = datasets.load_dataset(str(folder), cache_dir=None if cache_dir is None else str(cache_dir))
        except Exception as exc:  # a foreign library reading foreign files: whatever it raises, nothing was checked
            raise NotADataset(f"{folder}: datasets.load_dataset cannot read it: {_why(exc)}") from exc
        if not isinstance(loaded, datasets.DatasetDict):
            raise NotADataset(f"{folder}: datasets.load_dataset did not give splits")
        yield loaded
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not quiet:
            datasets.enable_progress_bars()


def _why(exc: BaseException) -> str:
    """An exception and its causes, one line each at most, for a one-line error."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        lines = [line.strip() for line in str(seen).strip().splitlines() if line.strip()]
        # A long message (a cast error lists whole schemas) says what and why on its first and last lines.
        text = lines[0][:300] + (f" … {lines[-1][:300]}" if len(lines) > 1 else "") if lines else ""
        parts.append(f"{type(seen).__name__}: {text}" if text else type(seen).__name__)
        seen = seen.__cause__
    return "; ".join(parts)


# ---------------------------------------------------------------- the checks each format makes


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _kind(kind: pa.DataType) -> str:
    """What a column holds, for telling conversational from text: messages (a list of structs or of
    JSON values), json, text, bool, null (no value at all) or other."""
    if getattr(kind, "extension_name", None) == "arrow.json":
        return "json"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = kind.value_type
        return "messages" if pa.types.is_struct(inner) or getattr(inner, "extension_name", None) == "arrow.json" else "other"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_null(kind):
        return "null"
    return "struct" if pa.types.is_struct(kind) else "other"


def _messages_json(schema: pa.Schema, col: str) -> str:
    """SQL: a conversational column as the JSON text ``typed_messages`` reads."""
    kind = schema.field(col).type
    if _kind(kind) == "messages" and pa.types.is_struct(kind.value_type):
        return formats.message_list_json(_q(col), [f.name for f in kind.value_type])
    return f"to_json({_q(col)})::varchar"


def _json_value(schema: pa.Schema, col: str) -> str:
    """SQL: any column as JSON text (NULL when absent): a string is taken as JSON text, as TRL reads ``tools``."""
    if col not in schema.names or _kind(schema.field(col).type) == "null":
        return "null::varchar"
    if _kind(schema.field(col).type) == "text":
        return f"{_q(col)}::varchar"
    return f"to_json({_q(col)})::varchar"


@dataclass(frozen=True)
class _Plan:
    """How one split's rows are checked: ``sql`` gives (row, reason) of its broken rows, or, for
    the OpenAI formats, (row, line JSON) for ``check`` to judge."""

    form: str
    ignored: list[str]
    sql: str
    check: Callable[[Mapping[str, Any]], list[str]] | None = None

    def broken(self, con: duckdb.DuckDBPyConnection, batch: pa.Table, start: int) -> Iterator[tuple[int, str]]:
        rows = batch.append_column("__row", pa.array(range(start, start + batch.num_rows), pa.int64()))
        con.register("batch", rows)
        try:
            found = con.sql(self.sql).fetchall()
        finally:
            con.unregister("batch")
        if self.check is None:
            yield from ((int(row), str(reason)) for row, reason in found)
            return
        for row, line in found:
            example = {key: value for key, value in orjson.loads(line).items() if value is not None}
            problems = self.check(example)
            if problems:
                yield int(row), problems[0]


def _plan(fmt: str, schema: pa.Schema) -> _Plan:
    names = schema.names
    if fmt in _OPENAI_CHECKS:
        return _Plan("each row as a JSON line, OpenAI's rules", [], _lines_sql(schema), _OPENAI_CHECKS[fmt])
    reads = (*_NEEDS[fmt], *_ALSO_READS.get(fmt, ()))
    ignored = [name for name in names if name not in reads]
    missing = [col for col in _NEEDS[fmt] if col not in names]
    if missing:
        return _Plan("-", ignored, _every_row(f"missing column {', '.join(missing)}"))
    if fmt in ("sharegpt", "alpaca", "catalyst"):
        return _Plan("as curate writes it", ignored, _export_sql(fmt, schema))
    return _trl_plan(fmt, schema, ignored)


def _every_row(reason: str) -> str:
    return f"select __row, {_text(reason)} as reason from batch order by __row"


def _lines_sql(schema: pa.Schema) -> str:
    """SQL: each row as one JSON object (an OpenAI line). JSON columns are kept as they are; a
    column of structs is one ``datasets`` typed from the lines, its null members (keys some line
    did not have) dropped."""
    members = []
    for f in schema:
        kind = _kind(f.type)
        if kind == "messages" and pa.types.is_struct(f.type.value_type):
            value = f"json_strip_nulls(({_messages_json(schema, f.name)})::json)"
        elif kind in ("struct", "other") and not pa.types.is_primitive(f.type):
            value = f"json_strip_nulls(to_json({_q(f.name)}))"
        else:
            value = _q(f.name)
        members.append(f"{_q(f.name)} := {value}")
    if not members:
        return "select __row, '{}' as line from batch order by __row"
    return f"select __row, to_json(struct_pack({', '.join(members)}))::varchar as line from batch order by __row"


def _first(branches: Sequence[str], source: str) -> str:
    """SQL: each row of ``source`` broken by one of ``branches`` (each gives ``__row``, ``k``,
    ``reason``), with the reason of the first branch (smallest ``k``) that finds one."""
    union = "\n  union all\n".join(branches)
    return f"""{source}
select __row, arg_min(reason, k) as reason from (
{union}
) where reason is not null group by __row order by __row"""


def _rules(k: int, t: str, rules: Sequence[formats.Rule], prefix: str, source: str = "typed") -> str:
    """A branch: ``formats``' ``rules`` over the messages ``t``, their reason after ``prefix``."""
    return (f"  select __row, {k} as k, {_text(prefix)} || ({formats.first_reason(rules)}) as reason "
            f"from (select *, {t} as t from {source})")


def _when(k: int, cases: Sequence[tuple[str, str]], source: str) -> str:
    """A branch: the reason of the first of ``cases`` (condition, reason) that holds."""
    whens = " ".join(f"when {cond} then {_text(reason)}" for cond, reason in cases)
    return f"  select __row, {k} as k, case {whens} end as reason from {source}"


def _export_sql(fmt: str, schema: pa.Schema) -> str:
    """sharegpt, alpaca, catalyst: the rows read back into messages, checked by the export's own rules."""
    names = schema.names
    cases: list[tuple[str, str]] = []
    tools = "null::varchar"
    if fmt == "sharegpt":
        kind = schema.field("conversations").type
        if _kind(kind) != "messages" or not pa.types.is_struct(kind.value_type):
            return _every_row("conversations is not a list of turns")
        fields = [f.name for f in kind.value_type]
        # curate writes user as human, assistant as gpt, system as system (formats.columns).
        role = ("case c.\"from\" when 'human' then 'user' when 'gpt' then 'assistant' else c.\"from\" end"
                if "from" in fields else "null::varchar")
        value = 'c."value"' if "value" in fields else "null::varchar"
        messages = f"to_json(list_transform(conversations, lambda c: struct_pack(role := {role}, content := {value})))::varchar"
    elif fmt == "alpaca":
        for col in ("instruction", "output", "system"):
            if col in names and _kind(schema.field(col).type) not in ("text", "null"):
                return _every_row(f"{col} is not text")
        system = "system::varchar" if "system" in names else "null::varchar"
        messages = ("to_json(list_concat("
                    f"case when coalesce({system}, '') <> '' then [struct_pack(role := 'system', content := {system})] else [] end, "
                    "[struct_pack(role := 'user', content := instruction::varchar), "
                    "struct_pack(role := 'assistant', content := output::varchar)]))::varchar")
        cases.append(("instruction is null", "instruction is not text"))
    else:  # catalyst: the request's messages, then the answer
        request, response = (f"(case when json_valid({text}) then ({text})::json end)"
                             for text in (_json_value(schema, col) for col in ("request", "response")))
        messages = (f"'[' || array_to_string(list_concat(json_extract({request}, '$.messages[*]'), "
                    f"[json_extract({response}, '$.choices[0].message')])::varchar[], ',') || ']'")
        tools = f"nullif(json_extract({request}, '$.tools')::varchar, 'null')"
    source = f"""with j as materialized (select __row, {messages} as messages, {tools} as tools from batch),
typed as materialized (select __row, {formats.typed_messages("messages")} as t, tools from j)"""
    branches = [_when(0, cases, "batch")] if cases else []
    branches.append(f"  select __row, 1 as k, ({formats.drop_reason(fmt)}) as reason from typed")
    return _first(branches, source)


def _trl_plan(fmt: str, schema: pa.Schema, ignored: list[str]) -> _Plan:
    """messages, prompt-completion, dpo, kto: TRL's types, conversational or standard (text)."""
    names = schema.names
    implicit = fmt == "dpo" and "prompt" not in names
    cols = {"messages": ["messages"], "prompt-completion": ["prompt", "completion"], "kto": ["prompt", "completion"],
            "dpo": ["chosen", "rejected"] if implicit else ["prompt", "chosen", "rejected"]}[fmt]
    kinds = {col: {"json": "messages"}.get(_kind(schema.field(col).type), _kind(schema.field(col).type)) for col in cols}
    odd = [col for col in cols if kinds[col] not in (("messages",) if fmt == "messages" else ("messages", "text"))]
    if fmt == "messages" and odd:
        return _Plan("-", ignored, _every_row("messages is not a list of messages"))
    if odd:
        return _Plan("-", ignored, _every_row(f"{odd[0]} is neither a list of messages nor text"))
    if len(set(kinds.values())) > 1:
        listed = ", ".join(cols[:-1]) + " and " + cols[-1]
        return _Plan("-", ignored, _every_row(f"{listed} are not all lists of messages or all text"))
    conversational = kinds[cols[0]] == "messages"
    form = ("conversational" if conversational else "text") + (", implicit prompt" if implicit else "")
    label: list[str] = []
    if fmt == "kto":
        is_bool = _kind(schema.field("label").type) == "bool"
        label = [_when(9, [("label is null" if is_bool else "true", NOT_BOOL)], "typed")]
    if not conversational:
        source = "with typed as (select * from batch)"
        cases = [(f"{_q(col)} is null", f"{col} is not text") for col in cols]
        if fmt == "dpo":
            cases.append(("chosen = rejected", formats.SAME_ANSWER))
            if implicit:
                cases.append(("left(chosen, 1) <> left(rejected, 1)", NO_SHARED_PROMPT))
        return _Plan(form, ignored, _first([_when(0, cases, "typed"), *label], source))
    parsed = ", ".join(f"{_messages_json(schema, col)} as {col}" for col in cols)
    typed = ", ".join(f"{formats.typed_messages(col)} as {col}" for col in cols)
    extra = ", label" if fmt == "kto" else ""
    source = f"""with j as materialized (select __row, {parsed}, {_json_value(schema, 'tools')} as tools{extra} from batch),
typed as materialized (select __row, {typed}, tools{extra} from j)"""
    message, conversation = formats.MESSAGE_RULES, formats.CONVERSATION_RULES
    branches: list[str]
    if fmt == "messages":
        branches = [_rules(0, "messages", [*message, *conversation, *formats.SFT_RULES], "messages: ")]
    elif not implicit:
        prompt, *answers = cols
        branches = [_rules(0, prompt, [*message, *formats.PROMPT_RULES], "prompt: ")]
        for k, answer in enumerate(answers, start=1):
            branches.append(_rules(k, answer, [*message, *formats.ANSWER_RULES], f"{answer}: "))
        for k, answer in enumerate(answers, start=3):
            branches.append(_rules(k, f"list_concat({prompt}, {answer})", conversation, f"prompt + {answer}: "))
        if fmt == "dpo":
            branches.append(_when(5, [("chosen = rejected", formats.SAME_ANSWER)], "typed"))
    else:
        # TRL's extract_prompt: the prompt is the longest common prefix, the answers what is left.
        n = ("coalesce(list_position(list_transform(range(1, least(len(chosen), len(rejected)) + 1), "
             "lambda i: chosen[i] is distinct from rejected[i]), true) - 1, least(len(chosen), len(rejected)))")
        source += f",\nsplit as materialized (select *, {n} as n from typed)"

        def diverges(t: str) -> str:
            # What is left is not an answer: it opens with no assistant message, or holds another turn.
            return (f"(len({t}) > 0 and ({t}[1].role is distinct from 'assistant' or "
                    f"coalesce(list_bool_or(list_transform({t}, lambda m: m.role in ('system', 'developer', 'user'))), false)))")

        branches = [
            _rules(0, "chosen", message, "chosen: ", "split"),
            _rules(1, "rejected", message, "rejected: ", "split"),
            _when(2, [("chosen = rejected", formats.SAME_ANSWER),
                      (f"{diverges('chosen[n + 1:]')} or {diverges('rejected[n + 1:]')}", PROMPTS_DIFFER),
                      ("n = 0", NO_SHARED_PROMPT)], "split"),
            _rules(3, "chosen[1:n]", formats.PROMPT_RULES, "prompt: ", "split"),
            _rules(4, "chosen[n + 1:]", formats.ANSWER_RULES, "chosen: ", "split"),
            _rules(5, "rejected[n + 1:]", formats.ANSWER_RULES, "rejected: ", "split"),
            _rules(6, "chosen", conversation, "chosen: ", "split"),
            _rules(7, "rejected", conversation, "rejected: ", "split"),
        ]
    return _Plan(form, ignored, _first([*branches, *label], source))
