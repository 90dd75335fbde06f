"""Eval contamination: which chat rows share word n-grams with the items of an evaluation set.

``decontaminate(store, ["gsm8k.jsonl"])`` reads each eval file, shingles every eval item and every
row of the ``chat`` view into word n-grams (13 by default, as in the GPT-3 paper and
lm-evaluation-harness), and writes one ``contamination`` row per (chat row, eval item) pair that
shares at least ``min_shared`` of them. The store's generations are never modified: an export
drops the rows with ``--where "id not in (select id from contaminated)"``.

**Eval files.** A JSONL file (one JSON object per line), a Parquet file, or a Hugging Face dataset
folder (read with ``datasets.load_dataset(folder)`` when ``datasets`` is installed, else every
``.parquet``, ``.jsonl`` and ``.json`` file inside it, in path order). The eval set is named after
the file or folder (``path.name``); two paths with the same name are refused.

**An item's text** is the concatenation, in the record's key order, of the strings held by its
text fields (``TEXT_FIELDS``: ``question``, ``prompt``, ``input``, ``instruction``, ``text``,
``answer``, ``output``, ``choices``, ``messages``...). In a field, a string counts; a list counts
each element; an object (a message, an ARC ``choices`` dict) counts its ``content``, ``text`` and
``value`` members. Other fields (labels, ids, metadata) do not count. An item without a word is
read (and counted, in ``empty_items`` too) but cannot match.

**An item's id** is its ``id`` (or ``task_id``, ``question_id``, ``idx``) field as text, else its
1-based row number in the file (``split:row`` for a dataset folder with several splits).

**N-grams.** Text is lowercased and split into words, the runs of letters, digits, marks and
``_`` (Python's ``\\w+``, in DuckDB's Unicode classes): punctuation, case and whitespace do not
count. A chat row's text is every message's text (``curate.messages.conversation_text``: string
content, or the ``text`` of its text parts), request and answer, in order. An item of ``ngram``
words or more gives its consecutive ``ngram``-word shingles; a shorter item gives one shingle of
all its words, matched against the chat rows' shingles of that length. A pair is contaminated
when it shares at least ``min(min_shared, the item's shingle count)`` distinct shingles, so a
short item can match too.

The matching runs in DuckDB: shingles are hashed (``hash()``) and joined on the hash, then the
shingle strings are compared, so a hash collision never counts. The store is held read-only only
to copy each chat row's lowercased text to a temporary Parquet file (``Store.unload``); the
matching runs afterwards in a DuckDB of its own, with nothing held. The pairs are written in one
short transaction that first deletes the rows of the same eval sets: re-running a set replaces its
rows, other sets' rows stay.

**What a run has seen.** Each run records, per eval set, the chat rows it checked
(``pass_coverage``, pass ``decontaminate:<eval set>``, with each row's body hash and a digest of
``ngram``, ``min_shared`` and the set's items) and how to run it again (``pass_settings``: the
file's absolute path, ``ngram``, ``min_shared``). A later run checks only the rows that set has not
checked as they are now; when the set's items or the settings change, every row is checked again
and the set's rows are replaced. ``curate export --exclude-contaminated`` uses this to check the
rows added since, with the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import MissingFile, NoSuchName
from curate.messages import conversation_text
from curate.store import Store, no_progress_bar

__all__ = ["DEFAULT_NGRAM", "ID_FIELDS", "TEXT_FIELDS", "DecontaminateSummary", "EvalItem", "decontaminate",
           "item_text", "pending", "read_eval_set", "recorded", "unchecked"]

DEFAULT_NGRAM = 13

# The fields whose strings make an item's text: what prompts and answers are called in common
# eval sets (GSM8K, MMLU, ARC, HumanEval, MBPP, TruthfulQA, chat-format sets...).
TEXT_FIELDS = frozenset({
    "question", "prompt", "input", "instruction", "text", "query", "problem", "context", "passage",
    "answer", "answers", "output", "response", "completion", "solution", "canonical_solution", "target",
    "choices", "options", "messages", "conversations",
})
# Which field names an item, first found wins; else its row number.
ID_FIELDS = ("id", "task_id", "question_id", "idx")
# In an object inside a text field, the members holding its text.
_MEMBER_TEXT = ("content", "text", "value")
_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")

# A word: a run of letters, digits, marks and '_' (RE2 has no Unicode \w).
_WORD = r"[\p{L}\p{N}\p{M}_]+"


@dataclass(frozen=True)
class EvalItem:
    """One eval item: its id and its text (see the module's rule)."""

    item: str
    text: str


@dataclass(frozen=True)
class DecontaminateSummary:
    """What one run read and found, per eval set (in the order given)."""

    items: dict[str, int]
    contaminated: dict[str, int]
    pairs: dict[str, int]
    rows_scanned: int
    seconds: float
    ngram: int = DEFAULT_NGRAM
    min_shared: int = 1
    empty_items: dict[str, int] = field(default_factory=dict)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for element in value:
            yield from _strings(element)
    elif isinstance(value, dict):
        for member in _MEMBER_TEXT:
            if member in value:
                yield from _strings(value[member])


def item_text(record: dict[str, Any]) -> str:
    """An item's text: the strings of its ``TEXT_FIELDS``, in the record's key order, joined by newlines."""
    return "\n".join(s for key, value in record.items() if key in TEXT_FIELDS for s in _strings(value))


def _item_id(record: dict[str, Any], row: str) -> str:
    for name in ID_FIELDS:
        value = record.get(name)
        if value is not None and value != "":
            return str(value)
    return row


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each record of a JSON Lines file with its line number (blank lines skipped, but counted)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            yield number, record if isinstance(record, dict) else {"text": record}


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return [r for _, r in _read_jsonl(path)]  # JSON Lines named .json
        return [r if isinstance(r, dict) else {"text": r} for r in (data if isinstance(data, list) else [data])]
    return [r for _, r in _read_jsonl(path)]


def _read_folder(path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """A dataset folder's splits: (split name, records) each."""
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        loaded = datasets.load_dataset(str(path))
        return [(name, list(split)) for name, split in loaded.items()]
    files = sorted(
        p for p in path.rglob("*")
        if p.suffix in _DATA_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise MissingFile(f"{path}: a folder with no .parquet, .jsonl or .json file")
    return [(str(p.relative_to(path)), _read_file(p)) for p in files]


def read_eval_set(path: str | os.PathLike[str]) -> list[EvalItem]:
    """The items of one eval file or dataset folder, with their ids and texts."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"{path}: no such eval file or folder")
    if path.is_dir():
        parts = _read_folder(path)
        several = len(parts) > 1
        return [
            EvalItem(_item_id(r, f"{split}:{n}" if several else str(n)), item_text(r))
            for split, records in parts for n, r in enumerate(records, 1)
        ]
    if path.suffix == ".jsonl":
        return [EvalItem(_item_id(r, str(number)), item_text(r)) for number, r in _read_jsonl(path)]
    return [EvalItem(_item_id(r, str(n)), item_text(r)) for n, r in enumerate(_read_file(path), 1)]


def _eval_table(sets: Iterable[tuple[str, list[EvalItem]]]) -> pa.Table:
    names, ids, texts = [], [], []
    for name, items in sets:
        for item in items:
            names.append(name)
            ids.append(item.item)
            texts.append(item.text)
    return pa.table({
        "eval_set": pa.array(names, pa.string()),
        "eval_item": pa.array(ids, pa.string()),
        "text": pa.array(texts, pa.string()),
    })


# Shingles of `words` (a list) of length `n`: the list of their strings.
def _shingles(words: str, n: str) -> str:
    return f"list_transform(range(1, len({words}) - ({n}) + 2), lambda i: array_to_string({words}[i:i + ({n}) - 1], ' '))"


# Bumped when the matching changes in a way the settings do not show.
# 2: a message's text is curate.messages' rule (only "text" parts with a string text count).
VERSION = 2
PASS_PREFIX = "decontaminate:"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _set_digest(items: list[EvalItem], *, ngram: int, min_shared: int) -> str:
    """What a set's findings depend on: its items, ``ngram``, ``min_shared`` and the matching's version."""
    digest = hashlib.sha256(json.dumps([VERSION, ngram, min_shared], separators=(",", ":")).encode())
    for item in items:
        digest.update(b"\0" + item.item.encode() + b"\1" + item.text.encode())
    return digest.hexdigest()[:16]


def _todo_sql(wanted: list[tuple[str, str, bool]], *, text: bool = True) -> str:
    """The chat rows some of the ``wanted`` sets (name, settings digest, whole) has not checked as they
    are now, with those sets' names; with ``text``, each row's text, every message's, lowercased.
    A ``whole`` set wants every row."""
    values = ", ".join(f"({_lit(name)}, {_lit(PASS_PREFIX + name)}, {_lit(digest)}, {str(whole).lower()})"
                       for name, digest, whole in wanted)
    messages = "json_extract(r.messages, '$[*]')"
    text_column = f", lower({conversation_text(messages)}) as text" if text else ""
    return f"""
with wanted(eval_set, pass, settings, whole) as (values {values}),
rows as (select c.id, coalesce(g.raw_hash, hash(c.messages::varchar)) as raw_hash, c.messages
         from chat c left join generation_rows g on g.id = c.id),
todo as (
    select r.id, list(w.eval_set order by w.eval_set) as sets
    from rows r cross join wanted w
    where w.whole or not exists (select 1 from pass_coverage p where p.pass = w.pass and p.id = r.id
                                 and p.raw_hash = r.raw_hash and p.settings = w.settings)
    group by r.id
)
select r.id, r.raw_hash, t.sets{text_column}
from rows r join todo t using (id)
"""


def _whole_sets(store: Store, digests: dict[str, str]) -> set[str]:
    """The sets no run has checked with these items and settings: every row is theirs to check."""
    checked = {(r["pass"], r["settings"]) for r in store.arrow(
        "select distinct pass, settings from pass_coverage where starts_with(pass, ?)", [PASS_PREFIX]).to_pylist()}
    return {name for name, digest in digests.items() if (PASS_PREFIX + name, digest) not in checked}


def recorded(store: Store) -> list[dict[str, Any]]:
    """The eval sets earlier runs checked: ``eval_set``, ``path``, ``ngram``, ``min_shared``, by name."""
    rows = store.arrow("select pass, params::varchar as params from pass_settings where starts_with(pass, ?) "
                       "order by pass", [PASS_PREFIX]).to_pylist()
    return [{"eval_set": r["pass"][len(PASS_PREFIX):], **json.loads(r["params"])} for r in rows]


def unchecked(store: Store, eval_set: str) -> int:
    """How many chat rows the recorded run of ``eval_set`` has not checked as they are now (its file unread)."""
    rows = store.arrow("select settings from pass_settings where pass = ?", [PASS_PREFIX + eval_set]).to_pylist()
    if not rows:
        raise NoSuchName(f"{eval_set}: no recorded run of curate decontaminate")
    sql = f"select count(*) as n from ({_todo_sql([(eval_set, rows[0]['settings'], False)], text=False)})"
    return int(store.arrow(sql).to_pylist()[0]["n"])


def pending(
    store: Store, eval_paths: Sequence[str | os.PathLike[str]], *, ngram: int = DEFAULT_NGRAM, min_shared: int = 1,
) -> dict[str, int]:
    """Per eval set, how many chat rows a run with these files and settings would check (0: up to date)."""
    paths = [Path(p) for p in eval_paths]
    digests = {p.name: _set_digest(read_eval_set(p), ngram=ngram, min_shared=min_shared) for p in paths}
    whole = _whole_sets(store, digests)
    wanted = [(name, digest, name in whole) for name, digest in digests.items()]
    counts = dict.fromkeys(digests, 0)
    if wanted:
        for r in store.arrow(f"select eval_set, count(*) as n from (select unnest(sets) as eval_set "
                             f"from ({_todo_sql(wanted, text=False)})) group by eval_set").to_pylist():
            counts[r["eval_set"]] = int(r["n"])
    # A set never checked counts as pending even on an empty store: its settings are to be recorded.
    return {name: max(n, 1) if name in whole else n for name, n in counts.items()}

_MATCH_SQL = f"""
with eval_words as (
    select eval_set, eval_item, regexp_extract_all(lower(text), '{_WORD}') as words
    from _curate_eval_items
),
eval_grams as (
    -- An item of n words or more: its n-word shingles; a shorter one: all its words, once.
    select eval_set, eval_item, len(words) as width, n_grams, unnest(grams) as gram
    from (select eval_set, eval_item, words,
                 case when len(words) >= $n then {_shingles('words', '$n')}
                      else [array_to_string(words, ' ')] end as grams,
                 case when len(words) >= $n then len(words) - $n + 1 else 1 end as n_grams
          from eval_words where len(words) > 0)
),
eval_hashed as (
    select distinct eval_set, eval_item, least(width, $n) as width, n_grams, gram, hash(gram) as h
    from eval_grams
),
widths as (select distinct width from eval_hashed),
chat_words as (
    select id, regexp_extract_all(text, '{_WORD}') as words
    from _curate_chat_text
),
chat_grams as (
    select id, width, unnest({_shingles('words', 'width')}) as gram
    from chat_words, widths
    where len(words) >= width
),
chat_hashed as (select id, width, gram, hash(gram) as h from chat_grams),
shared as (
    select c.id, e.eval_set, e.eval_item, any_value(e.n_grams) as n_grams, count(distinct e.gram) as shared_ngrams
    from chat_hashed c join eval_hashed e on c.h = e.h and c.width = e.width
    where c.gram = e.gram  -- a hash collision is not a match
    group by all
)
select id, eval_set, eval_item, shared_ngrams::integer as shared_ngrams
from shared
where shared_ngrams >= least($min_shared, n_grams)
order by eval_set, id, eval_item
"""


def _match(store: Store, texts: Path, spill: Path, items: pa.Table, *, ngram: int, min_shared: int) -> pa.Table:
    """The contaminated pairs, computed in a DuckDB of its own (the store is not held)."""
    con = duckdb.connect(config={"memory_limit": store.memory_limit, "temp_directory": str(spill)})
    try:
        no_progress_bar(con)
        quoted = "'" + str(texts).replace("'", "''") + "'"
        con.execute(f"create view _curate_chat_text as select * from read_parquet({quoted})")
        con.register("_curate_eval_items", items)
        return con.sql(_MATCH_SQL, params={"n": ngram, "min_shared": min_shared}).to_arrow_table()
    finally:
        con.close()


def decontaminate(
    store: Store,
    eval_paths: Sequence[str | os.PathLike[str]],
    *,
    ngram: int = DEFAULT_NGRAM,
    min_shared: int = 1,
    full: bool = False,
) -> DecontaminateSummary:
    """Flag the chat rows that share ``ngram``-word shingles with the items of ``eval_paths``.

    Writes one ``contamination`` row per (chat row, eval item) pair sharing at least
    ``min_shared`` distinct shingles (all of a short item's). Only the rows a set has not checked
    as they are now, with these items and settings, are read (``full``: every row); a set checked
    with other items or settings has its rows replaced. Returns the items read, the pairs and
    contaminated rows each set has in the store after the run, the chat rows read and the seconds.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be 1 or more, not {ngram}")
    if min_shared < 1:
        raise ValueError(f"min_shared must be 1 or more, not {min_shared}")
    started = time.perf_counter()
    paths = [Path(p) for p in eval_paths]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two eval sets would have the same name: {', '.join(twice)} (rename one)")
    sets = [(p.name, read_eval_set(p)) for p in paths]
    items = _eval_table(sets)
    digests = {name: _set_digest(found, ngram=ngram, min_shared=min_shared) for name, found in sets}
    whole = set(names) if full else _whole_sets(store, digests)
    with store.scratch() as folder:
        texts = Path(folder) / "chat_text.parquet"
        scanned = store.unload(_todo_sql([(name, digests[name], name in whole) for name in names]), texts)
        todo = pq.read_table(texts, columns=["id", "raw_hash", "sets"])
        pairs = _match(store, texts, Path(folder) / "spill", items, ngram=ngram, min_shared=min_shared)
    # A row read for one set is not news for another set that had checked it.
    wants = {(i, name) for i, row_sets in zip(todo.column("id").to_pylist(), todo.column("sets").to_pylist(),
                                             strict=True) for name in row_sets}
    pairs = pairs.filter(pa.array([(i, e) in wants for i, e in zip(pairs.column("id").to_pylist(),
                                                                    pairs.column("eval_set").to_pylist(), strict=True)],
                                  pa.bool_()))
    checked = pa.table({
        "pass": pa.array([PASS_PREFIX + name for _, name in sorted(wants)], pa.string()),
        "eval_set": pa.array([name for _, name in sorted(wants)], pa.string()),
        "id": pa.array([i for i, _ in sorted(wants)], pa.string()),
    })
    hash_of = dict(zip(todo.column("id").to_pylist(), todo.column("raw_hash").to_pylist(), strict=True))
    checked = checked.append_column("raw_hash", pa.array([hash_of[i] for i in checked.column("id").to_pylist()],
                                                         pa.uint64()))
    checked = checked.append_column("settings", pa.array([digests[e] for e in checked.column("eval_set").to_pylist()],
                                                         pa.string()))
    with store.write() as con:
        con.register("_curate_contamination", pairs)
        con.register("_curate_checked", checked)
        try:
            whole_names = sorted(whole)
            con.execute("delete from contamination where eval_set in (select unnest($names::varchar[]))",
                        {"names": whole_names})
            con.execute("delete from pass_coverage where pass in (select $prefix || unnest($names::varchar[]))",
                        {"names": whole_names, "prefix": PASS_PREFIX})
            # The rows read again (changed since a set checked them): that set's rows for them go.
            con.execute("delete from contamination where (id, eval_set) in (select (id, eval_set) from _curate_checked)")
            con.execute("delete from pass_coverage where (pass, id) in (select (pass, id) from _curate_checked)")
            con.execute(
                """
                insert into contamination (id, eval_set, eval_item, shared_ngrams, ngram, found_at)
                select id, eval_set, eval_item, shared_ngrams, $n, now() from _curate_contamination
                """,
                {"n": ngram},
            )
            con.execute("insert into pass_coverage (pass, id, raw_hash, settings, scanned_at) "
                        "select pass, id, raw_hash, settings, now() from _curate_checked")
            for path in paths:
                con.execute("delete from pass_settings where pass = ?", [PASS_PREFIX + path.name])
                con.execute("insert into pass_settings values (?, ?, ?, now())", [
                    PASS_PREFIX + path.name, digests[path.name],
                    json.dumps({"path": str(path.resolve()), "ngram": ngram, "min_shared": min_shared})])
            totals = {r[0]: (r[1], r[2]) for r in con.execute(
                "select eval_set, count(distinct id), count(*) from contamination "
                "where eval_set in (select unnest($names::varchar[])) group by eval_set", {"names": names}).fetchall()}
        finally:
            con.unregister("_curate_contamination")
            con.unregister("_curate_checked")
    return DecontaminateSummary(
        items={name: len(found) for name, found in sets},
        contaminated={name: int(totals.get(name, (0, 0))[0]) for name in names},
        pairs={name: int(totals.get(name, (0, 0))[1]) for name in names},
        rows_scanned=int(scanned),
        seconds=time.perf_counter() - started,
        ngram=ngram,
        min_shared=min_shared,
        empty_items={name: sum(1 for i in found if not re.search(r"\w", i.text)) for name, found in sets},
    )
