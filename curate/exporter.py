"""Export: a view or a SELECT becomes a Hugging Face dataset folder, validated, split, with lineage.

This module owns the path from the store to a folder laid out as a Hub dataset repository:

    FOLDER/README.md                                the dataset card (YAML header, then prose)
    FOLDER/data/<split>-NNNNN-of-NNNNN.parquet      messages, prompt-completion, sharegpt, alpaca
    FOLDER/data/<split>.jsonl                       openai, catalyst
    FOLDER/lineage.parquet                          each exported row → its generation id(s)

What a row is in each format, and which rows a format cannot hold, is ``formats.py``'s. Here:

1. **One read of the store.** The source is read once, into a scratch DuckDB file inside the
   folder (``.curate-export/``), already converted to typed messages, with each row's drop
   reason, content hash and split side; the store is attached read-only only for that read.
   Rows are stored in a seeded shuffle order (md5 of seed and id), the order they are written in;
   the sort runs on the rows as read, before their messages are typed, so it moves one string a
   row. The scratch database is a file, compressed, so memory stays under the store's limit.
2. **Decisions on key columns.** ``--limit`` keeps the first N matching rows of that order (a
   seeded sample); invalid rows are counted per reason; exact duplicates (same typed messages and
   tools) keep the first finished, then the smallest id. Only small columns are read here.
3. **Writing out.** Each split is its rows of the scratch table, scanned in stored order (DuckDB
   keeps insertion order for a scan and a filter) and written by DuckDB itself, as
   Parquet shards or JSON lines, on one thread, so memory stays flat and the same store and
   arguments give the same bytes. No row passes through Python.

**Preference formats** (``dpo``, ``kto``, ``openai-preference``; the pairing rule is
``formats.pairs``'s): step 1 also reads each row's rank (``--rank-by``, checked first to be a number
the source can compute) and the key of its prompt (``formats.prompt_key``). In step 2 ``--limit``
samples prompts (every answer to each: md5 of seed and prompt), and the rows are validated and put
through the curation passes that act on rows (``--pii``, ``--exclude-contaminated``, and the
coverage check of ``--dedup near``) as rows, before they are paired: a row any of them removes takes
no part, like a row without a rank. Then one pair per prompt (chosen: the highest rank, rejected:
the lowest, ties to the first finished then the smallest id; none on equal ranks, below
``--min-margin``, or equal answers), exact duplicates among pairs (same prompt, answers and tools)
and, with ``--dedup near``, all but one pair per cluster of near-duplicate prompts (the widest
margin) dropped, and the rows written built in ``work.export_pairs`` (kto: two per pair). A pair's
side is its chosen row's: the prompt's opening or near-duplicate cluster, which both answers share,
so ``--split-by`` is refused. lineage.parquet names both generation ids and both ranks.

Splits: a row's side depends only on its split key and the seed (md5, not DuckDB's ``hash``, so
it holds across versions): growing the store never moves a conversation from test to train, and
every row sharing a key is on one side. The default key is the conversation's opening (its
messages up to and including the first user message), which every call of a conversation, and
every exact duplicate, shares.

**Curation passes cover what is exported.** An export acting on a pass (``--pii drop|redact``,
``--dedup near``, ``--exclude-contaminated``) first brings that pass up to date: each pass records
the rows it has seen (``pass_coverage``), so the export runs it, as a writer and before it reads,
over the chat rows it has not seen as they are now (or, with ``rescan=False``/``--no-rescan``,
refuses in one sentence naming the command to run). Rows the pass still has not seen when the
store is read (not chat rows, or imported in between) are not exported, and counted; nor are rows
whose text SOURCE changed from the ``chat`` row the passes read (a SELECT that rewrites the
messages, tools, model or finish reason: compared by md5 just after the read, the step "as the passes saw
them"), since a finding speaks only of the text it was found in. The
near-duplicate clusters and the eval sets are run again with the settings and files they were last
run with; results recorded without coverage (an older curate) are used as they are, and the card
says so.

Nothing in the folder changes until everything is written: the new data, lineage and card are
renamed into place at the end, and an existing card's hand-written prose is kept (``card.merge``).

Every option, with its default and its check, is a field of :class:`ExportOptions`; ``export`` takes
one, or its fields as keywords, and the command line builds one. The card's text is ``card.render``'s,
from the options and what the export found (``card.Facts``): this module gathers the facts.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate import card, formats
from curate.errors import UsageError
from curate.store import ReadableStore, Store, no_progress_bar, source_query

__all__ = [
    "DEDUP",
    "DEFAULT_RANK_BY",
    "DEFAULT_SHARD_BYTES",
    "PII",
    "ExportError",
    "ExportOptions",
    "ExportSummary",
    "export",
]

# The choices of --dedup and --pii: the command line's choices are made from these (formats.FORMATS
# gives --format's), so a new mode is added here once.
DEDUP = ("exact", "near", "none")
PII = ("keep", "drop", "redact")
# What ranks the answers to one prompt for the preference formats, unless --rank-by says otherwise:
# the score the `scored` view gives for the shipped `helpfulness` rubric (curate judge).
DEFAULT_RANK_BY = "judge_helpfulness"
# Shards of about this much source JSON each; the Hub's viewer and streaming like files well
# under its 5 GB limit, and a few hundred MB keep a shard quick to download and to retry.
DEFAULT_SHARD_BYTES = 256 * 2**20
# Rows per Parquet row group: small enough for the Hub's viewer and for streaming reads.
ROW_GROUP_ROWS = 10_000
SCRATCH = ".curate-export"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The optional columns an export reads when the source has them.
_OPTIONAL = {
    "tools": "json",
    "model": "varchar",
    "finish_reason": "varchar",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "finished_at": "timestamptz",
}


class ExportError(UsageError, ValueError):
    """The export cannot be made as asked; the message names the argument or row at fault."""


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """Every option of an export, each with its default: the one place they are stated and checked.

    ``fmt``: the dataset format (``formats.FORMATS``). ``where``: a SQL condition over the source's
    columns. ``limit``: keep a seeded sample of N matching rows. ``test_size``: the fraction for the
    test split (0: train only). ``split_by``: a SQL expression whose rows stay on one side (default:
    the conversation's opening). ``seed``: the seed of the split and of the row order. ``dedup``:
    ``exact`` keeps one row per identical messages+tools, ``near`` also one row per near-duplicate
    cluster (``curate dedup near``, on ``near_on``), ``none`` keeps all. ``exclude_contaminated``:
    drop rows ``curate decontaminate`` found in an eval set. ``pii``: ``drop`` the rows in which
    ``curate scan pii`` found personal data or secrets, or ``redact`` the spans. ``strict``: refuse to
    write anything if a row is invalid for ``fmt``. ``license_id``: the card's license.
    ``shard_bytes``: about how much source JSON goes into one Parquet shard. ``rescan``: bring the
    passes acted on up to date first (False: refuse, naming the command, when one is not).
    ``rank_by`` (preference formats only): a SQL expression over the source's columns giving each
    answer a number, higher is better (NULL: the answer takes no part). ``min_margin`` (preference
    formats only): a pair only when the chosen answer's rank exceeds the rejected one's by at
    least this much (None: by any positive margin; equal ranks never make a pair). ``reasoning``:
    what the assistant messages' reasoning becomes (``formats.REASONING``: ``drop``, ``keep`` as
    ``reasoning_content``, ``inline`` before the content between ``think_tags``); None: the format's
    default (``formats.default_reasoning``: ``drop`` for the formats with no field for it, else ``keep``).
    ``tokenizer``: a local folder or Hub id whose tokenizer and chat template count every exported
    row's tokens, as a trainer would (``curate.tokens``; the card gets per-split statistics).
    ``max_tokens`` (needs ``tokenizer``): the rows longer than this are dropped, counted by reason
    (``over N tokens``), never truncated.

    Keyword-only, so that a call names each option it sets. Made with a bad value, it raises
    :class:`ExportError` naming the command line's option; ``dataclasses.replace`` checks again.
    """

    fmt: str = "messages"
    where: str | None = None
    limit: int | None = None
    test_size: float = 0.1
    split_by: str | None = None
    seed: int = 0
    dedup: str = "exact"
    near_on: str = "prompt"
    exclude_contaminated: bool = False
    pii: str = "keep"
    strict: bool = False
    license_id: str = card.PLACEHOLDER_LICENSE
    shard_bytes: int = DEFAULT_SHARD_BYTES
    rescan: bool = True
    rank_by: str = DEFAULT_RANK_BY
    min_margin: float | None = None
    reasoning: str | None = None
    think_tags: tuple[str, str] = formats.THINK
    tokenizer: str | None = None
    max_tokens: int | None = None

    @property
    def reasoning_mode(self) -> str:
        """What this export does with reasoning: ``reasoning``, else the format's default."""
        return self.reasoning or formats.default_reasoning(self.fmt)

    def __post_init__(self) -> None:
        if self.fmt not in formats.FORMATS:
            raise ExportError(f"--format {self.fmt}: expected one of {', '.join(formats.FORMATS)}")
        if not 0 <= self.test_size < 1:
            raise ExportError(f"--test-size {self.test_size}: expected a fraction from 0 (no test split) to below 1")
        if self.limit is not None and self.limit < 1:
            raise ExportError(f"--limit {self.limit}: expected a positive number of rows")
        if self.dedup not in DEDUP:
            raise ExportError(f"--dedup {self.dedup}: expected one of {', '.join(DEDUP)}")
        if self.pii not in PII:
            raise ExportError(f"--pii {self.pii}: expected one of {', '.join(PII)}")
        if self.shard_bytes < 1:
            raise ExportError("shard_bytes must be positive")
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer.strip()):
            raise ExportError("--tokenizer: expected a local folder or a Hugging Face Hub id (org/name)")
        if self.max_tokens is not None:
            if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
                raise ExportError(f"--max-tokens {self.max_tokens}: expected a positive number of tokens")
            if self.tokenizer is None:
                raise ExportError(f"--max-tokens {self.max_tokens} needs --tokenizer: lengths are counted with the "
                                  "target model's tokenizer and chat template")
        if not isinstance(self.rank_by, str) or not self.rank_by.strip():
            raise ExportError("--rank-by: expected a SQL expression over SOURCE's columns (a number per row)")
        margin = self.min_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                                   or not math.isfinite(margin) or margin <= 0):
            raise ExportError(f"--min-margin {margin}: expected a positive number (equal ranks never make a pair)")
        if self.fmt in formats.PREFERENCE_FORMATS:
            if self.split_by is not None:
                raise ExportError(f"--split-by: --format {self.fmt} splits by prompt (its opening messages, or its "
                                  "near-duplicate cluster), so that both sides of a pair and every pair of one "
                                  "conversation are on one side; leave --split-by out")
            if self.dedup == "near" and self.near_on != "prompt":
                raise ExportError(f"--dedup near: --format {self.fmt} keeps one pair per cluster of near-duplicate "
                                  f"prompts; clusters on {self.near_on} would part the answers to one prompt "
                                  "(use near_on='prompt')")
        if self.reasoning is not None and self.reasoning not in formats.REASONING:
            raise ExportError(f"--reasoning {self.reasoning}: expected one of {', '.join(formats.REASONING)}")
        if self.reasoning == "keep" and self.fmt in formats.NO_REASONING_FIELD:
            raise ExportError(f"--reasoning keep: --format {self.fmt} has no field for reasoning; --reasoning inline "
                              "writes it before the content, between think tags")
        tags = self.think_tags
        if (not isinstance(tags, tuple) or len(tags) != 2 or not all(isinstance(t, str) and t.strip() for t in tags)):
            raise ExportError(f"--think-tags {tags!r}: expected an opening and a closing tag, e.g. <think> and </think>")
        if self.fmt not in formats.PREFERENCE_FORMATS and (self.rank_by != DEFAULT_RANK_BY
                                                            or self.min_margin is not None):
            raise ExportError(f"--rank-by and --min-margin pair answers for --format "
                              f"{', '.join(formats.PREFERENCE_FORMATS)}; --format {self.fmt} has no pairs")


_OPTION_NAMES = frozenset(f.name for f in fields(ExportOptions))


def _options(options: ExportOptions | None, changes: dict[str, Any]) -> ExportOptions:
    """``options`` (default: every default) with ``changes`` as field overrides, checked."""
    if options is not None and not isinstance(options, ExportOptions):
        raise TypeError(f"export() options must be an ExportOptions, not {type(options).__name__}")
    unknown = [name for name in changes if name not in _OPTION_NAMES]
    if unknown:
        # As Python says it of a function's keywords, which these were before ExportOptions.
        raise TypeError(f"export() got an unexpected keyword argument {unknown[0]!r}")
    base = ExportOptions() if options is None else options
    return replace(base, **changes) if changes else base


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote and the row counts at each step."""

    folder: Path
    format: str
    query: str
    counts: dict[str, int]  # each step in order (source, filtered, valid, deduplicated, ...), then each split
    splits: dict[str, int]
    invalid: dict[str, int]  # reason → rows
    invalid_examples: dict[str, list[str]]  # reason → a few ids
    files: list[Path]
    shared_keys: int  # split-key values on both sides (0 by construction; checked)
    shared_prompts: int  # identical prompts (messages before the answer) on both sides
    fingerprint: str
    seconds: float
    card: str = field(repr=False)
    # Preference formats: prompts seen, pairs made, prompts without a pair and pairs dropped per reason.
    pairing: dict[str, Any] = field(default_factory=dict)

    def load(self, **kwargs: Any) -> Any:
        """The folder as a ``datasets.DatasetDict``: ``datasets.load_dataset(folder, **kwargs)``, so a
        notebook goes from a view to a dataset in one line (needs ``datasets``: the ``notebook`` extra)."""
        try:
            import datasets
        except ImportError:
            raise ImportError("ExportSummary.load() needs datasets: pip install 'curate[notebook]'") from None
        return datasets.load_dataset(str(self.folder), **kwargs)


def _check_folder(folder: Path) -> str | None:
    """The folder's current card if it is a previous export; None if new or empty; else refuse."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise ExportError(f"{folder}: exists and is not a folder")
    readme = folder / "README.md"
    if readme.exists():
        text = readme.read_text(encoding="utf-8")
        if card.block(text) is not None:
            return text
    if any(not p.name.startswith(".") for p in folder.iterdir()):
        raise ExportError(
            f"{folder}: not empty and not a curate export (no README.md with curate's block); "
            "export into a new or empty folder, or one an earlier export wrote"
        )
    return None


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------- pass 1: the one read of the store


def _describe(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, str]:
    try:
        rows = con.execute(f"describe select * from ({query}) as source").fetchall()
    except duckdb.Error as exc:
        raise ExportError(f"SOURCE: {exc}") from None
    columns = {name: str(kind) for name, kind, *_ in rows}
    missing = [name for name in ("id", "messages") if name not in columns]
    if missing:
        raise ExportError(
            f"SOURCE has no column {' or '.join(missing)}: an export reads id and messages (JSON text, "
            f"as the chat and conversations views have); it has {', '.join(columns) or 'no columns'}"
        )
    return columns


# The types a rank may have: numbers, and booleans (true above false).
_RANK_TYPES = re.compile(r"(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|"
                         r"FLOAT|DOUBLE|DECIMAL\(\d+,\s*\d+\)|BOOLEAN)")


def _check_rank(con: duckdb.DuckDBPyConnection, query: str, columns: dict[str, str], rank_by: str) -> None:
    """Refuse a --rank-by the source cannot compute, or whose value is not a number."""
    try:
        [(_, kind, *_)] = con.execute(f"describe select ({rank_by}) as rank from ({query}) as source").fetchall()
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0]
        hint = ""
        if rank_by == DEFAULT_RANK_BY and DEFAULT_RANK_BY not in columns:
            hint = (f" ({DEFAULT_RANK_BY}, the default, is the score the `scored` view gives for the helpfulness "
                    "rubric of `curate judge`: export from `scored`, or rank by another column)")
        raise ExportError(f"--rank-by {rank_by}: SOURCE cannot compute it{hint}: {reason}. SOURCE has "
                          f"{', '.join(columns)}") from None
    if not _RANK_TYPES.fullmatch(str(kind)):
        raise ExportError(f"--rank-by {rank_by}: is {kind}, not a number; give an expression whose value is a number "
                          f"(higher is better), e.g. ({rank_by})::double")


def _read_sql(query: str, columns: dict[str, str], options: ExportOptions, *, compare_to_chat: bool = False) -> str:
    """The one read of the store: a SELECT of every source row, typed, checked, hashed and given its
    split, in the seeded order the rows are written in (each split is then the rows of that split,
    in stored order).

    Each row has ``as_seen``, true here; with ``compare_to_chat`` it also carries the md5 of its
    messages and, where SOURCE has them, tools, model and finish reason, which ``_mark_rewritten``
    compares with the ``chat`` row of its id, the one the curation passes read.

    Its own function so that bench/bench_export.py can time the same statement's stages (typed,
    checked, sorted) beside DuckDB's plain COPY of the source."""
    fmt, where, split_by, seed, test_size = options.fmt, options.where, options.split_by, options.seed, options.test_size
    optional = ",\n".join(
        f"source.{name}::{kind} as {name}" if name in columns else f"null::{kind} as {name}"
        for name, kind in _OPTIONAL.items()
    )
    # A conversation row lists the calls folded into it: all of them made the row.
    generation_ids = (
        "list_concat(source.folded_ids::varchar[], [source.id::varchar])" if "folded_ids" in columns
        else "[source.id::varchar]"
    )
    matched = f"coalesce(({where}), false)" if where else "true"
    # Without --split-by, a near-duplicate cluster (curate dedup near) is one key, so its rows
    # share a side: a paraphrase cannot sit in train while its twin is in test.
    key = f"({split_by})::varchar" if split_by else "near._near_cluster"
    # The opening: the text of the messages up to and including the first user message.
    opening = ("array_to_string(list_transform(t[1:coalesce(list_position(list_transform(t, lambda m: m.role), 'user'), "
               "len(t))], lambda m: m.role || ':' || coalesce(m.content, to_json(m.content_parts)::varchar, '')), chr(30))")
    seed_text = _sql_text(f"{seed}:")
    # A preference format also reads each row's rank and the key of its prompt (formats.pairs pairs them).
    preference = fmt in formats.PREFERENCE_FORMATS
    rank_value = f",\n           ({options.rank_by}) as rank_value" if preference else ""
    prompt_key = (f",\n           case when matched then {formats.prompt_key('messages_text', 'tools')} end as prompt_key"
                  if preference else "")
    pair_columns = ", prompt_key, case when matched then rank_value end as rank" if preference else ""
    # With compare_to_chat, the md5 of what each row exports that the passes read; `_mark_rewritten`
    # compares them with the chat rows' after the read (a join inside it built its hash table on
    # the wide source rows and ran out of memory at 1 GB on 200k conversations).
    compared = ["messages", *_compared(columns)] if compare_to_chat else []
    digests = "".join(f", md5_number(source.{name}::varchar) as _digest_{name}" for name in compared)
    digest_columns = "".join(f", _digest_{name}" for name in compared)
    return f"""
with source_rows as (
    select source.id::varchar as id, {generation_ids} as generation_ids, {optional},
           {matched} as matched, {key} as split_key, source.messages::varchar as messages_text,
           md5_number_lower({seed_text} || source.id::varchar) as shuffle{digests}{rank_value}
    -- The clusters under names of their own, so that --where, --split-by and --rank-by name SOURCE's
    -- columns (id, cluster_id) without ambiguity.
    from ({query}) as source
         left join (select id as _near_id, cluster_id as _near_cluster from work.near) as near
         on near._near_id = source.id::varchar
),
ordered as (
    -- The seeded order, taken while the messages are still one string each: a sort moves strings
    -- far more cheaply than the typed lists they become (issue 19: 1.2 s of a 6.8 s read at 200k).
    -- What follows is projections only, which keep this order (DuckDB preserves insertion order
    -- through them), so the scratch table is stored in it. A row --where leaves out is sorted
    -- without its messages. A preference format's prompt key is taken here, before the sort: two
    -- JSON parses a row, which after it made the order-keeping insert run out of memory at 1 GB.
    select * replace (case when matched then messages_text end as messages_text){prompt_key}
    from source_rows order by shuffle, id
),
typed as (
    select * exclude (messages_text),
           case when matched then {formats.typed_messages("messages_text")} end as t,
           strlen(messages_text) as nbytes
    from ordered
),
checked as (
    select *, case when matched then {formats.drop_reason(fmt)} end as reason
    from typed
),
keyed as (
    -- Each message hashed once: the row's content hash and its prompt's (all but the answer)
    -- are hashes of these, not of copies of the messages.
    select *,
           case when matched and reason is null then md5(coalesce(split_key, {opening}, id)) end as split_group,
           case when matched and reason is null then list_transform(t, lambda m: {formats.message_hash("m", options.reasoning_mode)}) end as message_hashes
    from checked
)
select id, generation_ids, model, finish_reason, prompt_tokens, completion_tokens, finished_at,
       matched, true as as_seen{digest_columns}, reason, matched and reason is null as keep, t, tools, nbytes,
       hash(message_hashes, tools) as content_hash,
       split_group,
       case when split_group is not null then
           case when md5_number_lower({seed_text} || split_group) / 18446744073709551616.0 < {test_size!r}
                then 'test' else 'train' end end as split,
       case when len(t) > 1 then hash(message_hashes[1:-2]) end as prompt_hash,
       shuffle{pair_columns}
from keyed
"""


def _compared(columns: dict[str, str]) -> list[str]:
    """The columns besides the messages that the passes read and SOURCE has (``_read_sql``)."""
    return [name for name in ("tools", "model", "finish_reason") if name in columns]


def _mark_rewritten(con: duckdb.DuckDBPyConnection, columns: dict[str, str]) -> None:
    """``as_seen`` false for each row whose exported text is not the ``chat`` row of its id that
    the passes read (compared by md5; a row of an id ``chat`` does not hold is left to the passes'
    own coverage check). Run while the store is attached, after the read."""
    names = ["messages", *_compared(columns)]
    con.execute("create table work.seen as select id::varchar as id"
                + "".join(f", md5_number({name}::varchar) as {name}" for name in names) + " from chat")
    differs = " or ".join(f"r._digest_{name} is distinct from s.{name}" for name in names)
    con.execute(f"""update work.export_rows set as_seen = false
                    where rowid in (select r.rowid from work.export_rows r join work.seen s using (id) where {differs})""")


def _read_source(con: duckdb.DuckDBPyConnection, query: str, columns: dict[str, str], options: ExportOptions,
                 *, compare_to_chat: bool) -> None:
    where, split_by = options.where, options.split_by
    try:
        con.execute("create table work.export_rows as "
                    + _read_sql(query, columns, options, compare_to_chat=compare_to_chat))
    except duckdb.Error as exc:
        where_hint = " (check --where and --split-by: they are SQL over SOURCE's columns)" if where or split_by else ""
        raise ExportError(f"reading SOURCE{where_hint}: {exc}") from None
    if compare_to_chat:
        _mark_rewritten(con, columns)


def _copy_curation(con: duckdb.DuckDBPyConnection, near_on: str, passes: _Passes) -> None:
    """What the curation passes found (their tables are small), copied while the store is attached,
    with the rows each pass acted on covers as they are now (in the same read as the rows)."""
    covered = [(name, passes.pii) for name in ("pii",) if passes.pii]
    if passes.near:
        covered.append((f"near:{near_on}", passes.near))
    covered += [(f"decontaminate:{name}", digest) for name, digest in passes.eval_sets.items()]
    values = ", ".join(f"({_sql_text(name)}, {_sql_text(digest)})" for name, digest in covered)
    con.execute(f"""create table work.covered as
                    select p.pass, p.id from store.pass_coverage p
                    join store.generation_rows g on g.id = p.id and g.raw_hash = p.raw_hash
                    join (values {values or "(null, null)"}) w(pass, settings) on w.pass = p.pass and w.settings = p.settings""")
    con.execute(f"""create table work.near as select id, cluster_id from store.near_duplicate_rows
                    where on_what = {_sql_text(near_on)}""")
    con.execute("""create table work.contaminated as select id, list(distinct eval_set order by eval_set) as eval_sets
                   from store.contamination group by id""")
    con.execute("""create table work.pii_spans as select id, message_index, kind, span_start, span_end, detector
                   from store.pii_findings""")
    con.execute("create table work.pii as select distinct id from work.pii_spans")


def _fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[str, int]:
    """A digest of the store's generations (count, XOR of every stored body's hash)."""
    [(count, xor)] = con.execute("select count(*), coalesce(bit_xor(raw_hash), 0) from generation_rows").fetchall()
    return hashlib.sha256(f"{count}:{xor}".encode()).hexdigest()[:16], int(count)


def _view_sql(store: ReadableStore, source: str) -> str | None:
    """The file of the view SOURCE names, as its author wrote it (None for a SELECT)."""
    views = {v.name: v for v in store.view_files()}
    view = views.get(source.strip())
    return view.sql if view is not None else None


# ---------------------------------------------------------------- pass 2: decisions on key columns


@dataclass
class _Decisions:
    counts: dict[str, int]
    splits: dict[str, int]
    invalid: dict[str, int]
    invalid_examples: dict[str, list[str]]
    shared_keys: int
    shared_prompts: int
    straddling_clusters: int = 0
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    # The table whose kept rows are written: the rows, or for a preference format its pairs.
    table: str = "work.export_rows"
    pairs: card.PairFacts | None = None


def _drop(con: duckdb.DuckDBPyConnection, ids_sql: str) -> int:
    """Drop kept rows whose id ``ids_sql`` lists; how many rows are kept after."""
    con.execute(f"update work.export_rows set keep = false where keep and id in ({ids_sql})")
    return _one(con, "select count(*) from work.export_rows where keep")


_REDACT_WINDOW = 10_000  # rows of the scratch table whose texts are in Python at once


def _redact(con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, int]]:
    """Replace each span ``curate scan pii`` found with its placeholder, in the rows kept.

    The scan's spans are offsets into a message's text content (``_drop_rewritten`` has already
    left out rows whose text SOURCE changed); a row whose finding is in content parts, or whose
    text is shorter than a span, is dropped rather than exported half-redacted. Returns the rows
    kept and the spans per kind. The texts are read a window of rows at a time and the redacted
    ones kept in the scratch database, so memory stays under the limit whatever the findings."""
    from curate.pii import Finding, redact

    con.execute("create table work.export_redactions (rid bigint, position integer, content varchar)")
    unsafe: list[int] = []
    kinds: dict[str, int] = {}
    last = _one(con, "select coalesce(max(rowid), -1) from work.export_rows")
    for low in range(0, last + 1, _REDACT_WINDOW):
        found = con.execute(f"""
            select r.rowid, s.message_index, r.t[s.message_index + 1].content,
                   list((s.span_start, s.span_end, s.kind, s.detector) order by s.span_start)
            from work.export_rows r join work.pii_spans s using (id)
            where r.keep and r.rowid between {low} and {low + _REDACT_WINDOW - 1} group by all order by 1, 2""").fetchall()
        # A window holds whole rows: a row with one message it cannot redact is dropped, whole.
        bad = {rid for rid, _, text, spans in found if text is None or any(end > len(text) for _, end, _, _ in spans)}
        unsafe += sorted(bad)
        redacted: dict[str, list[Any]] = {"rid": [], "position": [], "content": []}
        for rid, index, text, spans in found:
            if rid in bad:
                continue
            redacted["rid"].append(rid)
            redacted["position"].append(index + 1)
            redacted["content"].append(redact(text, [Finding(start, end, kind, det) for start, end, kind, det in spans]))
            for _, _, kind, _ in spans:
                kinds[kind] = kinds.get(kind, 0) + 1
        if redacted["rid"]:
            con.register("redacted", pa.table(redacted))
            con.execute("insert into work.export_redactions select rid, position, content from redacted")
            con.unregister("redacted")
    if unsafe:
        con.execute(f"update work.export_rows set keep = false where rowid in ({', '.join(map(str, unsafe))})")
    if _one(con, "select count(*) from work.export_redactions"):
        # Not an UPDATE: DuckDB moves a row whose list column is updated to the end of the table,
        # so redacted rows would be written last and lose the rowid their duplicates point at. The
        # table is written again in its stored order instead, the seeded order, a total order on
        # (shuffle, id), so that every row keeps its position, and so its rowid.
        con.execute("""
            create table work.export_rows_redacted as
            select r.* replace (case when red.rid is null then r.t else list_transform(r.t, lambda m, i: struct_update(m,
                       content := coalesce(red.contents[i], m.content))) end as t)
            from work.export_rows r
                 left join (select rid, map(list(position), list(content)) as contents
                            from work.export_redactions group by rid) as red
                 on red.rid = r.rowid
            order by r.shuffle, r.id""")
        con.execute("drop table work.export_rows")
        con.execute("alter table work.export_rows_redacted rename to export_rows")
    return _one(con, "select count(*) from work.export_rows where keep"), dict(sorted(kinds.items()))


def _acting(options: ExportOptions) -> bool:
    """Whether the export acts on a curation pass's findings (PII, near-duplicates, eval sets)."""
    return options.pii != "keep" or options.dedup == "near" or options.exclude_contaminated


def _drop_rewritten(con: duckdb.DuckDBPyConnection, options: ExportOptions, passes: _Passes,
                    counts: dict[str, int]) -> None:
    """Drop the kept rows whose exported text is not what the passes read (``as_seen``, a SOURCE
    that rewrote the messages, tools, model or finish reason of a chat row): a pass's findings
    say nothing of text it did not read, and a PII span applied to other text would redact the
    wrong characters. A step only when the export acts on a pass."""
    if not _acting(options):
        return
    before = _one(con, "select count(*) from work.export_rows where keep")
    con.execute("update work.export_rows set keep = false where keep and not as_seen")
    counts["as the passes saw them"] = _one(con, "select count(*) from work.export_rows where keep")
    if counts["as the passes saw them"] < before:
        passes.notes.append(f"{before - counts['as the passes saw them']:,} rows left out: SOURCE changed their messages "
                            "(or tools, model, finish reason) from the `chat` row the curation passes read, so no "
                            "pass's findings speak for them.")


def _drop_unseen(con: duckdb.DuckDBPyConnection, counts: dict[str, int], step: str, passes: list[str]) -> None:
    """Drop the kept rows one of ``passes`` has not seen as they are: a step only when there are some."""
    if not passes:
        return
    listed = ", ".join(_sql_text(p) for p in passes)
    unseen = f"""select id from work.export_rows r where keep and (select count(distinct pass) from work.covered c
                 where c.id = r.id and c.pass in ({listed})) < {len(passes)}"""
    if _one(con, f"select count(*) from ({unseen})"):
        counts[step] = _drop(con, unseen)


def _drop_by_eval_sets_and_pii(con: duckdb.DuckDBPyConnection, options: ExportOptions, passes: _Passes,
                               counts: dict[str, int], removed: dict[str, dict[str, int]]) -> None:
    """``--exclude-contaminated`` and ``--pii drop|redact`` on the kept rows, each a counted step
    (the rows a pass has not seen as they are, first); what they removed, into ``removed``."""
    if options.exclude_contaminated:
        _drop_unseen(con, counts, "checked against the eval sets", [f"decontaminate:{n}" for n in passes.eval_sets])
        removed["eval sets"] = dict(con.execute("""
            select eval_set, count(*) from (
                select unnest(c.eval_sets) as eval_set from work.export_rows r join work.contaminated c using (id)
                where r.keep)
            group by eval_set order by eval_set""").fetchall())
        counts["decontaminated"] = _drop(con, "select id from work.contaminated")
    if options.pii in ("drop", "redact"):
        _drop_unseen(con, counts, "scanned for PII", ["pii"] if passes.pii else [])
    if options.pii == "drop":
        counts["without PII"] = _drop(con, "select id from work.pii")
    elif options.pii == "redact":
        counts["PII redacted"], removed["PII, spans redacted per kind"] = _redact(con)


def _invalid(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, list[str]]]:
    """The matching rows that do not fit the format: per reason, how many and the first three ids."""
    return con.execute("""
        select reason, count(*), list(id order by id)[1:3] from work.export_rows
        where matched and reason is not null group by reason order by count(*) desc, reason""").fetchall()


def _split_decisions(con: duckdb.DuckDBPyConnection, table: str, cluster_id: str, counts: dict[str, int],
                     invalid: list[tuple[str, int, list[str]]], removed: dict[str, dict[str, int]],
                     pairs: card.PairFacts | None = None) -> _Decisions:
    """The decisions on ``table``'s kept rows (the rows, or a preference format's pairs): the rows
    per split, with the split checks (split keys, identical prompts and near-duplicate clusters,
    by ``table``'s column ``cluster_id``, found on both sides)."""
    splits = dict(con.execute(
        f"select split, count(*) from {table} where keep group by split order by split desc").fetchall())
    shared_keys = _one(con, f"""select count(*) from (select split_group from {table} where keep
                                 group by split_group having count(distinct split) > 1)""")
    shared_prompts = _one(con, f"""select count(*) from (select prompt_hash from {table}
                                    where keep and prompt_hash is not null
                                    group by prompt_hash having count(distinct split) > 1)""")
    straddling = _one(con, f"""select count(*) from (select n.cluster_id from {table} r
                                join work.near n on n.id = r.{cluster_id}
                                where r.keep group by n.cluster_id having count(distinct r.split) > 1)""")
    counts.update({name: splits.get(name, 0) for name in ("train", "test") if name in splits})
    return _Decisions(
        counts=counts,
        splits={name: splits[name] for name in ("train", "test") if name in splits},
        invalid={reason: n for reason, n, _ in invalid},
        invalid_examples={reason: list(ids) for reason, _, ids in invalid},
        shared_keys=shared_keys,
        shared_prompts=shared_prompts,
        straddling_clusters=straddling,
        removed=removed,
        table=table,
        pairs=pairs,
    )


def _decide(con: duckdb.DuckDBPyConnection, options: ExportOptions, passes: _Passes) -> _Decisions:
    limit, dedup = options.limit, options.dedup
    source = _one(con, "select count(*) from work.export_rows")
    if limit is not None:
        # A seeded sample: the first N matching rows in the stored (shuffled) order.
        con.execute(f"""
            update work.export_rows set matched = false, keep = false, reason = null
            where rowid in (select rowid from work.export_rows where matched order by shuffle, id offset {int(limit)})""")
    filtered = _one(con, "select count(*) from work.export_rows where matched")
    invalid = _invalid(con)
    valid = filtered - sum(n for _, n, _ in invalid)
    con.execute("create table work.export_duplicates (content_hash ubigint, kept_rowid bigint, duplicate_ids varchar[])")
    if dedup in ("exact", "near"):
        con.execute("""
            insert into work.export_duplicates
            select content_hash, first(rowid order by finished_at nulls last, id),
                   list(id order by finished_at nulls last, id)[2:]
            from work.export_rows where keep group by content_hash having count(*) > 1""")
        con.execute("""
            update work.export_rows set keep = false
            where rowid in (select r.rowid from work.export_rows r join work.export_duplicates d using (content_hash)
                            where r.keep and r.rowid <> d.kept_rowid)""")
    deduplicated = _one(con, "select count(*) from work.export_rows where keep")
    counts = {"source": source, "filtered": filtered, "valid": valid, "deduplicated": deduplicated}
    _drop_rewritten(con, options, passes, counts)
    removed: dict[str, dict[str, int]] = {}
    if dedup == "near":  # one row per cluster: its representative
        _drop_unseen(con, counts, "compared for near-duplicates", [f"near:{passes.near_on}"] if passes.near else [])
        counts["near-deduplicated"] = _drop(con, "select id from work.near where id <> cluster_id")
    _drop_by_eval_sets_and_pii(con, options, passes, counts, removed)
    return _split_decisions(con, "work.export_rows", "id", counts, invalid, removed)


def _decide_pairs(con: duckdb.DuckDBPyConnection, options: ExportOptions, passes: _Passes) -> _Decisions:
    """``_decide`` for a preference format: the rows are sampled (by prompt), validated and passed
    through the curation passes as rows; then paired (``formats.pairs``, one pair per prompt); then
    the pairs are deduplicated (exact: same prompt, answers and tools; near: one per cluster of
    near-duplicate prompts) and written, each on the side of its chosen row's split key (the
    prompt's opening or cluster: both answers share it). The table written is ``work.export_pairs``:
    one row per pair, or for kto one per side, the chosen side first."""
    limit, dedup = options.limit, options.dedup
    prompt = "coalesce(prompt_key, 'row:' || id)"
    source = _one(con, "select count(*) from work.export_rows")
    if limit is not None:
        # A seeded sample of prompts, with every answer to each: the first N in the order of md5(seed:prompt).
        con.execute(f"""
            update work.export_rows set matched = false, keep = false, reason = null
            where matched and {prompt} not in (
                select key from (select distinct {prompt} as key from work.export_rows where matched)
                order by md5_number_lower({_sql_text(f"{options.seed}:")} || key), key limit {int(limit)})""")
    filtered = _one(con, "select count(*) from work.export_rows where matched")
    invalid = _invalid(con)
    counts = {"source": source, "filtered": filtered, "valid": filtered - sum(n for _, n, _ in invalid)}
    removed: dict[str, dict[str, int]] = {}
    # The passes that act on rows act before the pairing: a row they drop takes no part.
    _drop_rewritten(con, options, passes, counts)
    if dedup == "near":
        _drop_unseen(con, counts, "compared for near-duplicates", [f"near:{passes.near_on}"] if passes.near else [])
    _drop_by_eval_sets_and_pii(con, options, passes, counts, removed)
    answers = (f"select rowid as rid, {prompt} as prompt_key, rank, finished_at, id, content_hash "
               "from work.export_rows where keep")
    try:
        con.execute(f"create table work.export_prompts as {formats.pairs(answers, options.min_margin)}")
    except duckdb.Error as exc:
        raise ExportError(f"--rank-by {options.rank_by}: {str(exc).splitlines()[0]}") from None
    prompts = _one(con, "select count(*) from work.export_prompts")
    found = dict(con.execute("select no_pair, count(*) from work.export_prompts where no_pair is not null "
                             "group by no_pair").fetchall())
    no_pair = {reason: found[reason] for reason in formats.NO_PAIR if reason in found}
    con.execute("""
        create table work.export_pair_keys as
        select p.chosen_rid, p.rejected_rid, c.id as chosen_id, r.id as rejected_id, p.chosen_rank, p.rejected_rank,
               c.split, c.split_group, c.shuffle, c.prompt_hash, c.finished_at,
               hash(c.content_hash, r.content_hash) as content_hash, true as keep
        from work.export_prompts p join work.export_rows c on c.rowid = p.chosen_rid
             join work.export_rows r on r.rowid = p.rejected_rid
        where p.no_pair is null
        order by c.split, c.shuffle, c.id""")
    paired = _one(con, "select count(*) from work.export_pair_keys")
    counts.update({"prompts": prompts, "pairs": paired})
    dropped: dict[str, int] = {}
    # Exact duplicates: pairs of the same prompt, answers and tools; the first finished (chosen) is kept.
    con.execute("create table work.export_duplicates (content_hash ubigint, kept_rowid bigint, duplicate_ids varchar[])")
    if dedup in ("exact", "near"):
        con.execute("""
            insert into work.export_duplicates
            select content_hash, first(rowid order by finished_at nulls last, chosen_id),
                   flatten(list([chosen_id, rejected_id] order by finished_at nulls last, chosen_id)[2:])
            from work.export_pair_keys where keep group by content_hash having count(*) > 1""")
        con.execute("""
            update work.export_pair_keys set keep = false
            where rowid in (select k.rowid from work.export_pair_keys k join work.export_duplicates d using (content_hash)
                            where k.keep and k.rowid <> d.kept_rowid)""")
    counts["deduplicated"] = _one(con, "select count(*) from work.export_pair_keys where keep")
    if counts["deduplicated"] < paired:
        dropped["an exact duplicate of another pair"] = paired - counts["deduplicated"]
    if dedup == "near":
        # One pair per cluster of near-duplicate prompts (the chosen row's): the widest margin, then
        # the first finished, then the smallest chosen id.
        con.execute("""
            update work.export_pair_keys set keep = false
            where keep and rowid not in (
                select first(k.rowid order by k.chosen_rank - k.rejected_rank desc, k.finished_at nulls last, k.chosen_id)
                from work.export_pair_keys k left join work.near n on n.id = k.chosen_id
                where k.keep group by coalesce(n.cluster_id, 'pair:' || k.chosen_id))""")
        counts["near-deduplicated"] = _one(con, "select count(*) from work.export_pair_keys where keep")
        if counts["near-deduplicated"] < counts["deduplicated"]:
            dropped["a near-duplicate prompt (--dedup near)"] = counts["deduplicated"] - counts["near-deduplicated"]
    _build_pairs(con, options.fmt)
    models = con.execute("""
        select model, count(*) filter (where side = 0), count(*) filter (where side = 1) from (
            select coalesce(x.model, '(none)') as model, s.side from (
                select chosen_rid as rid, 0 as side from work.export_pair_keys where keep
                union all select rejected_rid, 1 from work.export_pair_keys where keep) s
            join work.export_rows x on x.rowid = s.rid)
        group by model order by model""").fetchall()
    # A pair's cluster is its chosen row's (kto writes each side under the side's own id).
    return _split_decisions(con, "work.export_pairs", "chosen_id", counts, invalid, removed,
                            pairs=card.PairFacts(prompts=prompts, pairs=paired, no_pair=no_pair, dropped=dropped,
                                                 models=[tuple(row) for row in models]))


def _build_pairs(con: duckdb.DuckDBPyConnection, fmt: str) -> None:
    """The rows written for a preference format, in the order written: each split's together, then
    the seeded order of the chosen rows. dpo, openai-preference: one row per pair, the chosen row's
    messages in ``t`` and the rejected one's in ``rejected_t``; kto: a row per side, chosen first,
    ``label`` telling which. Model and tokens are the chosen row's (kto: the side's)."""
    if fmt == "kto":
        sides = """(select k.*, k.rowid as pair, k.chosen_rid as rid, true as label, 0 as side
                    from work.export_pair_keys k where k.keep
                    union all
                    select k.*, k.rowid, k.rejected_rid, false, 1 from work.export_pair_keys k where k.keep)"""
        con.execute(f"""
            create table work.export_pairs as
            select x.id, x.generation_ids, s.chosen_id, s.rejected_id, s.chosen_rank, s.rejected_rank, s.label,
                   x.model, x.finish_reason, x.prompt_tokens, x.completion_tokens, x.t, null as rejected_t, x.tools,
                   x.nbytes, s.split, s.split_group, s.prompt_hash, s.pair, true as keep
            from {sides} as s join work.export_rows x on x.rowid = s.rid
            order by s.split, s.shuffle, s.chosen_id, s.side""")
        return
    con.execute("""
        create table work.export_pairs as
        select k.chosen_id as id, list_concat(c.generation_ids, r.generation_ids) as generation_ids,
               k.chosen_id, k.rejected_id, k.chosen_rank, k.rejected_rank, null::boolean as label,
               c.model, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.t, r.t as rejected_t, c.tools,
               c.nbytes + r.nbytes as nbytes, k.split, k.split_group, k.prompt_hash, k.rowid as pair, true as keep
        from work.export_pair_keys k join work.export_rows c on c.rowid = k.chosen_rid
             join work.export_rows r on r.rowid = k.rejected_rid
        where k.keep
        order by k.split, k.shuffle, k.chosen_id""")


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


# ---------------------------------------------------------------- pass 3: streaming the splits out


def _write_parquet(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str], split: str, rows: int,
                   nbytes: int, data: Path, shard_bytes: int) -> list[Path]:
    """The split as Parquet shards of about ``shard_bytes`` of source JSON each, written by DuckDB.

    DuckDB's own writer, fed in stored order, writes the same bytes for the same rows (tested),
    and its JSON columns read back as Arrow's ``arrow.json`` type, which ``datasets`` loads as
    ``Json()``: no row passes through Python.
    """
    shards = max(1, math.ceil(nbytes / shard_bytes))
    per_shard = math.ceil(rows / shards)
    bounds = con.execute(f"""
        select min(rowid), max(rowid) from (
            select rowid, (row_number() over (order by rowid) - 1) // {per_shard} as shard
            from {table} where keep and split = {_sql_text(split)})
        group by shard order by shard""").fetchall()
    cols = ", ".join(f'{expr} as "{name}"' for name, expr in columns.items())
    paths = []
    for i, (low, high) in enumerate(bounds):
        path = data / f"{split}-{i:05d}-of-{len(bounds):05d}.parquet"
        con.execute(f"""
            copy (select {cols} from {table}
                  where keep and split = {_sql_text(split)} and rowid between {low} and {high})
            to {_sql_text(str(path))} (format parquet, compression zstd, row_group_size {ROW_GROUP_ROWS})""")
        paths.append(path)
    return paths


def _write_jsonl(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str], split: str,
                 data: Path) -> list[Path]:
    """The split as one JSON line per row, written by DuckDB: a one-column CSV with no quoting is
    the lines as they are (a JSON line holds no raw newline or control character to quote)."""
    path = data / f"{split}.jsonl"
    (name, expr), = columns.items()
    con.execute(f"""
        copy (select {expr} as "{name}" from {table} where keep and split = {_sql_text(split)})
        to {_sql_text(str(path))} (format csv, header false, quote '', escape '', delimiter '\x01')""")
    return [path]


def _write_lineage(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    con.execute(f"""
        copy (select r.split, (row_number() over (partition by r.split order by r.rowid) - 1)::bigint as "row",
                     r.id, r.generation_ids, coalesce(d.duplicate_ids, []::varchar[]) as duplicate_ids
              from work.export_rows r left join work.export_duplicates d on d.kept_rowid = r.rowid
              where r.keep
              order by r.split desc, "row")
        to {_sql_text(str(path))} (format parquet, compression zstd, row_group_size 100000)""")


def _write_pair_lineage(con: duckdb.DuckDBPyConnection, fmt: str, path: Path) -> None:
    """lineage.parquet of a preference format: each row's pair, both generation ids and both ranks."""
    label = ", p.label" if fmt == "kto" else ""
    con.execute(f"""
        copy (select p.split, (row_number() over (partition by p.split order by p.rowid) - 1)::bigint as "row",
                     p.id, p.generation_ids, coalesce(d.duplicate_ids, []::varchar[]) as duplicate_ids,
                     p.chosen_id, p.rejected_id, p.chosen_rank, p.rejected_rank{label}
              from work.export_pairs p left join work.export_duplicates d on d.kept_rowid = p.pair
              where p.keep
              order by p.split desc, "row")
        to {_sql_text(str(path))} (format parquet, compression zstd, row_group_size 100000)""")


# ---------------------------------------------------------------- what the card states of the rows


def _stats(con: duckdb.DuckDBPyConnection, table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The card's tables of the rows kept: (model, split, rows), and each split's token counts."""
    models = con.execute(f"""
        select coalesce(model, '(none)'), split, count(*) from {table} where keep
        group by all order by 1, 2 desc""").fetchall()
    tokens = con.execute(f"""
        select split, count(prompt_tokens), sum(prompt_tokens), round(avg(prompt_tokens)),
               quantile_disc(prompt_tokens, 0.5), quantile_disc(prompt_tokens, 0.9), max(prompt_tokens),
               count(completion_tokens), sum(completion_tokens), round(avg(completion_tokens)),
               quantile_disc(completion_tokens, 0.5), quantile_disc(completion_tokens, 0.9), max(completion_tokens)
        from {table} where keep group by split order by split desc""").fetchall()
    return models, tokens


# ---------------------------------------------------------------- lengths by the target model's tokenizer


def _count_tokens(con: duckdb.DuckDBPyConnection, decisions: _Decisions, options: ExportOptions,
                  say: Callable[[str], None]) -> card.TokenFacts | None:
    """``--tokenizer``: each kept row's length by the target model's chat template (``curate.tokens``),
    counted on the row as the writer writes it, into ``work.export_tokens`` (rid, tokens). With
    ``--max-tokens``, the rows over it are dropped and counted by reason (``over N tokens``), and
    the splits and the split check are counted again. None without ``--tokenizer``."""
    if options.tokenizer is None:
        return None
    from curate import tokens

    tokenizer = tokens.load(options.tokenizer)
    table, limit = decisions.table, options.max_tokens
    kept = sum(decisions.splits.values())
    say(f"counting the tokens of {kept:,} rows with {tokenizer.name} ({tokenizer.revision})")
    # The writer's columns. With keep and no row having reasoning the writer leaves the field out;
    # a field of nulls renders the same (transformers drops None members), so the counts are the same.
    columns = formats.columns(options.fmt, options.reasoning_mode, options.think_tags)
    lengths = tokens.count_rows(con, f"(select rowid, * from {table} where keep)", options.fmt, columns, tokenizer)
    con.register("export_token_counts", lengths)
    con.execute("create table work.export_tokens as select key as rid, tokens, refused from export_token_counts")
    con.unregister("export_token_counts")
    # kto writes a pair as two rows: a side dropped takes its pair's other side with it, so that
    # every pair in the files is whole.
    def whole(rowids: str) -> str:
        if options.fmt != "kto":
            return rowids
        return f"select rowid from {table} where pair in (select pair from {table} where rowid in ({rowids}))"

    # A row the chat template refuses would stop the trainer: dropped, counted by the template's words.
    for why, n, examples in con.execute(f"""
            select 'the chat template refuses it: ' || e.refused, count(*), list(r.id order by r.id)[1:3]
            from {table} r join work.export_tokens e on e.rid = r.rowid
            where r.keep and e.refused is not null group by all order by 2 desc, 1""").fetchall():
        decisions.invalid[why] = n
        decisions.invalid_examples[why] = list(examples)
    refused = sum(n for why, n in decisions.invalid.items() if why.startswith("the chat template refuses it: "))
    if refused:
        con.execute(f"update {table} set keep = false where keep and rowid in "
                    f"({whole('select rid from work.export_tokens where refused is not null')})")
        _count_again(con, decisions, options.fmt)
        kept -= refused
        if not decisions.splits:
            raise ExportError(f"nothing to export: the chat template of {tokenizer.name} refuses all {refused:,} rows")
    reason, dropped = (f"over {limit} tokens" if limit is not None else ""), 0
    if limit is not None:
        over = whole(f"select rid from work.export_tokens where tokens > {int(limit)}")
        [(dropped, examples)] = con.execute(
            f"select count(*), list(id order by id)[1:3] from {table} where keep and rowid in ({over})").fetchall()
        if dropped:
            con.execute(f"update {table} set keep = false where keep and rowid in ({over})")
            decisions.invalid[reason] = dropped
            decisions.invalid_examples[reason] = list(examples)
            _count_again(con, decisions, options.fmt)
        steps = {step: n for step, n in decisions.counts.items() if step not in ("train", "test")}
        decisions.counts = {**steps, f"at most {limit} tokens": kept - dropped, **decisions.splits}
        if not decisions.splits:
            raise ExportError(f"nothing to export: all {kept:,} rows are over --max-tokens {limit} "
                              f"(counted with {tokenizer.name})")
    return card.TokenFacts(tokenizer=tokenizer.name, revision=tokenizer.revision, max_tokens=limit, reason=reason,
                           dropped=dropped, splits=tokens.split_stats(con, table, "work.export_tokens"))


def _count_again(con: duckdb.DuckDBPyConnection, decisions: _Decisions, fmt: str) -> None:
    """The splits, the split check and (pairs) the models of the answers, of the rows still kept."""
    table = decisions.table
    splits = dict(con.execute(f"select split, count(*) from {table} where keep group by split").fetchall())
    decisions.splits = {name: splits[name] for name in ("train", "test") if name in splits}
    decisions.shared_keys = _one(con, f"""select count(*) from (select split_group from {table} where keep
                                          group by split_group having count(distinct split) > 1)""")
    decisions.shared_prompts = _one(con, f"""select count(*) from (select prompt_hash from {table}
                                             where keep and prompt_hash is not null
                                             group by prompt_hash having count(distinct split) > 1)""")
    row_id = "id" if decisions.pairs is None else "chosen_id"
    decisions.straddling_clusters = _one(con, f"""select count(*) from (select n.cluster_id from {table} r
                                                  join work.near n on n.id = r.{row_id}
                                                  where r.keep group by n.cluster_id having count(distinct r.split) > 1)""")
    if decisions.pairs is not None:
        sides = ("select id, case when label then 0 else 1 end as side from work.export_pairs where keep" if fmt == "kto"
                 else "select chosen_id as id, 0 as side from work.export_pairs where keep "
                      "union all select rejected_id, 1 from work.export_pairs where keep")
        models = con.execute(f"""
            select coalesce(x.model, '(none)') as model, count(*) filter (where s.side = 0), count(*) filter (where s.side = 1)
            from ({sides}) s join (select id, any_value(model) as model from work.export_rows group by id) x using (id)
            group by 1 order by 1""").fetchall()
        decisions.pairs = replace(decisions.pairs, models=[tuple(row) for row in models])


# ---------------------------------------------------------------- the passes an export acts on


@dataclass
class _Passes:
    """The passes an export acts on, each with the settings digest whose coverage counts, and what the
    card says of them. An empty digest: the pass is not acted on, or its results had no coverage."""

    pii: str = ""
    near: str = ""
    near_on: str = "prompt"
    eval_sets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _refuse_or_run(rescan: bool, flag: str, what: str, command: str) -> None:
    if not rescan:
        raise ExportError(f"{flag} --no-rescan: {what}; run `{command}` first (or export without --no-rescan).")


def _bring_passes_up_to_date(store: ReadableStore, options: ExportOptions, say: Callable[[str], None]) -> _Passes:
    """Run each pass the export acts on over the chat rows it has not seen (a writer, before the
    export reads), or refuse when ``options.rescan`` is False; what the export then relies on."""
    pii, dedup, near_on = options.pii, options.dedup, options.near_on
    exclude_contaminated, rescan = options.exclude_contaminated, options.rescan
    passes = _Passes(near_on=near_on)
    acting = [flag for flag, on in ((f"--pii {pii}", pii != "keep"), ("--dedup near", dedup == "near"),
                                    ("--exclude-contaminated", exclude_contaminated)) if on]
    if not acting:
        return passes
    if not isinstance(store, Store):  # the lake read as a store (LakeStore): nothing writes there
        raise ExportError(f"{acting[0]}: the lake is read-only, so no curation pass has run on it; pull it into a "
                          "store (`curate lake pull --db work.duckdb`), and export from that store.")
    if pii != "keep":
        from curate import pii as pii_pass

        todo = pii_pass.pending(store)
        if todo:
            _refuse_or_run(rescan, f"--pii {pii}", f"{todo:,} chat rows have not been scanned for PII as they are now",
                           "curate scan pii")
            say(f"scanning {todo:,} chat rows for PII (curate scan pii)")
            pii_pass.scan(store)
        passes.pii = pii_pass.scan_settings()
        passes.notes.append("PII (`curate scan pii`): every exported row was scanned, as exported, with the "
                            f"current detectors (digest `{passes.pii}`).")
    if dedup == "near":
        _near_up_to_date(store, passes, near_on, rescan, say)
    if exclude_contaminated:
        _eval_sets_up_to_date(store, passes, rescan, say)
    return passes


def _near_up_to_date(store: Store, passes: _Passes, on: str, rescan: bool, say: Callable[[str], None]) -> None:
    from curate import neardup

    settings = neardup.recorded_settings(store, on)
    if settings is None and store.arrow("select 1 from near_duplicate_rows where on_what = ? limit 1", [on]).num_rows:
        passes.notes.append(f"Near-duplicates on {on}: clusters recorded by an older curate, without the rows they "
                            "compared: rows added since may be missing from them (`curate dedup near` brings them "
                            "up to date).")
        return
    settings = settings or {"threshold": neardup.DEFAULT_THRESHOLD, "num_perm": neardup.DEFAULT_NUM_PERM,
                            "shingle": neardup.DEFAULT_SHINGLE}
    threshold, num_perm, shingle = float(settings["threshold"]), int(settings["num_perm"]), int(settings["shingle"])
    command = f"curate dedup near --on {on} --threshold {threshold:g}"
    todo = neardup.pending(store, on=on, threshold=threshold, num_perm=num_perm, shingle=shingle)  # type: ignore[arg-type]
    if todo:
        _refuse_or_run(rescan, "--dedup near",
                       f"the near-duplicate clusters on {on} are not up to date ({todo:,} chat rows new, changed or "
                       "gone since they were computed)", command)
        say(f"computing near-duplicate clusters on {on} ({command})")
        neardup.near_duplicates(store, on=on, threshold=threshold, num_perm=num_perm, shingle=shingle)  # type: ignore[arg-type]
    passes.near = neardup.settings_digest(on, threshold, num_perm, shingle)
    passes.notes.append(f"Near-duplicates (`{command}`): every exported row was compared, as exported.")


def _eval_sets_up_to_date(store: Store, passes: _Passes, rescan: bool, say: Callable[[str], None]) -> None:
    from curate import decontaminate as dc

    sets = dc.recorded(store)
    known = {s["eval_set"] for s in sets}
    legacy = [r["eval_set"] for r in store.arrow(
        "select distinct eval_set from contamination order by eval_set").to_pylist() if r["eval_set"] not in known]
    if not sets and not legacy:
        raise ExportError("--exclude-contaminated: no eval set has been checked against this store; "
                          "run `curate decontaminate EVAL_FILE...` first.")
    for recorded in sets:
        name, path = recorded["eval_set"], Path(recorded["path"])
        ngram, min_shared = int(recorded["ngram"]), int(recorded["min_shared"])
        command = f"curate decontaminate {path} --ngram {ngram} --min-shared {min_shared}"
        if path.exists():
            todo = dc.pending(store, [path], ngram=ngram, min_shared=min_shared)[name]
        else:
            todo = dc.unchecked(store, name)
            if todo:
                raise ExportError(f"--exclude-contaminated: {todo:,} chat rows have not been checked against {name}, "
                                  f"whose file {path} is gone; run `curate decontaminate EVAL_FILE` with it first.")
        if todo:
            _refuse_or_run(rescan, "--exclude-contaminated",
                           f"{todo:,} chat rows have not been checked against {name} as they and its file are now",
                           command)
            say(f"checking {todo:,} chat rows against {name} ({command})")
            dc.decontaminate(store, [path], ngram=ngram, min_shared=min_shared)
        digest = store.arrow("select settings from pass_settings where pass = ?",
                             [dc.PASS_PREFIX + name]).to_pylist()[0]["settings"]
        passes.eval_sets[name] = digest
        passes.notes.append(f"Eval set `{name}` (`{command}`): every exported row was checked, as exported.")
    for name in legacy:
        passes.notes.append(f"Eval set `{name}`: rows recorded by an older curate, without the rows it checked: "
                            "rows added since were not checked against it (`curate decontaminate` with its file "
                            "brings it up to date).")


# ---------------------------------------------------------------- the whole export


def export(
    store: ReadableStore,
    source: str,
    folder: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **changes: Any,
) -> ExportSummary:
    """Export ``source`` (a view name or a SELECT with ``id`` and ``messages``) to ``folder``.

    ``options`` says how (:class:`ExportOptions`; default: its defaults); keyword arguments are its
    fields, overriding it: ``export(db, "conversations", "out/", fmt="openai", test_size=0.2)``. An
    unknown keyword raises TypeError naming it. ``progress`` is told each step as it starts.
    """
    # progress is not an option: it changes nothing written, and a callback in ExportOptions would make
    # two option objects asking for the same export compare unequal.
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    options = _options(options, changes)
    query = source_query(source)
    out = Path(folder)
    existing_card = _check_folder(out)
    passes = _bring_passes_up_to_date(store, options, say)
    scratch = out / SCRATCH
    created = not out.exists()
    shutil.rmtree(scratch, ignore_errors=True)  # left by an export that crashed
    (scratch / "data").mkdir(parents=True)
    try:
        decisions, files, fingerprint, text = _export_into(store, source, query, out, scratch, options, passes, say)
        if existing_card is not None:
            text = card.merge(existing_card, text)
        (scratch / "README.md").write_text(text, encoding="utf-8")
        _swap_in(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
    return ExportSummary(
        folder=out, format=options.fmt, query=_full_query(query, options), counts=decisions.counts,
        splits=decisions.splits, invalid=decisions.invalid, invalid_examples=decisions.invalid_examples,
        files=[p for paths in files.values() for p in paths], shared_keys=decisions.shared_keys,
        shared_prompts=decisions.shared_prompts, fingerprint=fingerprint,
        seconds=time.perf_counter() - started, card=text, pairing=_pairing(decisions.pairs),
    )


def _pairing(pairs: card.PairFacts | None) -> dict[str, Any]:
    """ExportSummary.pairing: what the pairing found, as plain values ({} for the other formats)."""
    if pairs is None:
        return {}
    return {"prompts": pairs.prompts, "pairs": pairs.pairs, "no_pair": dict(pairs.no_pair),
            "dropped": dict(pairs.dropped)}


def _export_into(
    store: ReadableStore, source: str, query: str, out: Path, scratch: Path, options: ExportOptions, passes: _Passes,
    say: Callable[[str], None],
) -> tuple[_Decisions, dict[str, list[Path]], str, str]:
    """Everything but the final move: data, lineage and card written into ``scratch``."""
    fmt = options.fmt
    # A scratch database file: DuckDB compresses what it keeps there, and spills past the limit.
    con = duckdb.connect(str(scratch / "work.duckdb"), config={"memory_limit": store.memory_limit})
    try:
        no_progress_bar(con)
        con.execute(f"set temp_directory = {_sql_text(str(scratch / 'spill'))}")
        say(f"reading {source.strip() if _IDENT.fullmatch(source.strip()) else 'the query'} from {store.path}")
        with store.attached(con, "store"):
            con.execute("use store")
            try:
                columns = _describe(con, query)
                if fmt in formats.PREFERENCE_FORMATS:
                    _check_rank(con, query, columns, options.rank_by)
                fingerprint, generations = _fingerprint(con)
                _copy_curation(con, options.near_on, passes)
                # The passes read `chat`: a SOURCE that is not `chat` may export other text than they read.
                _read_source(con, query, columns, options,
                             compare_to_chat=_acting(options) and source.strip().lower() != "chat")
            finally:
                con.execute("use work")
        view_sql = _view_sql(store, source)
        if fmt in formats.PREFERENCE_FORMATS:
            say(f"validating, pairing by {options.rank_by}, deduplicating and splitting")
            decisions = _decide_pairs(con, options, passes)
        else:
            say("validating, deduplicating and splitting")
            decisions = _decide(con, options, passes)
        if options.strict and decisions.invalid:
            detail = "; ".join(f"{reason}: {n} (e.g. {', '.join(decisions.invalid_examples[reason])})"
                               for reason, n in decisions.invalid.items())
            raise ExportError(f"--strict: {sum(decisions.invalid.values())} rows do not fit {fmt}: {detail}")
        if not decisions.splits:
            pairing = ""
            if decisions.pairs is not None:
                why = ", ".join(f"{reason}: {n}" for reason, n in decisions.pairs.no_pair.items())
                pairing = f", {decisions.pairs.prompts} prompts, {decisions.pairs.pairs} pairs ({why or 'no prompt'})"
            raise ExportError(f"nothing to export: {decisions.counts['filtered']} rows matched, "
                              f"{decisions.counts['valid']} fit {fmt}{pairing}")
        lengths = _count_tokens(con, decisions, options, say)
        table = decisions.table
        reasoning, reasoning_rows = _reasoning(con, table, options, paired=decisions.pairs is not None)
        columns = formats.columns(fmt, reasoning, options.think_tags)
        files: dict[str, list[Path]] = {}
        # One thread for the files: with two, DuckDB's writer cut row groups differently from run
        # to run when memory was short (1M rows, 1 GB), so the bytes differed. It costs ~10 %.
        con.execute("set threads = 1")
        for split, rows in decisions.splits.items():
            say(f"writing {split}: {rows:,} rows")
            if fmt in formats.JSONL_FORMATS:
                files[split] = _write_jsonl(con, table, columns, split, scratch / "data")
            else:
                nbytes = _one(con, f"select sum(nbytes) from {table} where keep and split = {_sql_text(split)}")
                files[split] = _write_parquet(con, table, columns, split, rows, nbytes, scratch / "data",
                                              options.shard_bytes)
        if decisions.pairs is not None:
            _write_pair_lineage(con, fmt, scratch / "lineage.parquet")
        else:
            _write_lineage(con, scratch / "lineage.parquet")
        con.execute("reset threads")
        final_files = {s: [out / "data" / p.name for p in paths] for s, paths in files.items()}
        models, tokens = _stats(con, table)
        text = card.render(options, card.Facts(
            name=out.resolve().name, query=_full_query(query, options), view_sql=view_sql,
            when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), store=store.label, fingerprint=fingerprint,
            generations=generations, counts=decisions.counts, splits=decisions.splits, invalid=decisions.invalid,
            removed=decisions.removed, shared_keys=decisions.shared_keys,
            straddling_clusters=decisions.straddling_clusters, shared_prompts=decisions.shared_prompts,
            models=models, tokens=tokens, notes=passes.notes, pairs=decisions.pairs,
            reasoning=reasoning, reasoning_rows=reasoning_rows, lengths=lengths,
            files=[p.relative_to(out).as_posix() for paths in final_files.values() for p in paths],
            sizes={split: sum(p.stat().st_size for p in paths) for split, paths in files.items()},
        ))
    finally:
        con.close()
    return decisions, final_files, fingerprint, text


def _reasoning(con: duckdb.DuckDBPyConnection, table: str, options: ExportOptions, *, paired: bool) -> tuple[str, int]:
    """What the files do with reasoning, and how many exported rows have any. ``keep`` with no row
    that has reasoning writes no ``reasoning_content`` field: data without any exports as before."""
    has = "list_bool_or(list_transform({}, lambda m: m.reasoning_content is not null))"
    any_side = has.format("t") + (f" or {has.format('rejected_t')}" if paired else "")
    rows = _one(con, f"select count(*) from {table} where keep and ({any_side})")
    mode = options.reasoning_mode
    return ("drop" if mode == "keep" and not rows else mode), rows


def _full_query(query: str, options: ExportOptions) -> str:
    where, limit = options.where, options.limit
    text = f"select * from ({query}) as source" if where or limit else query
    if where:
        text += f"\nwhere {where}"
    if limit and options.fmt in formats.PREFERENCE_FORMATS:
        text += f"\n-- then a sample of {limit:,} prompts, every answer to each: the first in the order of md5(seed:prompt)"
    elif limit:
        text += f"\n-- then a sample of {limit:,} rows: the first in the order of md5(seed:id)"
    return text


def _swap_in(scratch: Path, out: Path) -> None:
    """Move the new data, lineage and card into ``out``, replacing an earlier export's."""
    old = scratch / "old-data"
    if (out / "data").exists():
        os.replace(out / "data", old)
    os.replace(scratch / "data", out / "data")
    os.replace(scratch / "lineage.parquet", out / "lineage.parquet")
    os.replace(scratch / "README.md", out / "README.md")
