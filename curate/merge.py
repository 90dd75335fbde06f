"""The records' merge: raw records (JSONL lines, HTTP bodies, spooled deliveries) into the store.

``records`` holds the SQL that recognises each record shape; this module runs it inside a
caller's read-write transaction: ``merge_source`` (the idempotent two-pass merge), ``fast_insert``
(one pass, for a clean file of new ids) and ``ingest``/``ingest_texts`` (an Arrow batch or a list
of texts). Nothing here opens the store: ``curate.store`` hands out the connection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from curate import ledger, records, submissions
from curate.records import WriteCounts

__all__ = [
    "OPS", "FastPathRefused", "Spooled", "apply", "fast_insert", "ingest", "ingest_texts", "merge_source", "problem",
    "refuse",
]


def ingest(
    con: duckdb.DuckDBPyConnection, batch: pa.Table, *, source: str, per_line: bool = False
) -> WriteCounts:
    """Merge the records of an Arrow ``batch`` (columns ``line``, ``text``) into ``con``'s store."""
    con.register("_curate_batch", batch)
    con.execute(f"create or replace temp view _curate_src as select line, {records.masked('text')} as text "
                "from _curate_batch")
    counts = merge_source(con, source=source, per_line=per_line)
    # Only on success: after a failure the transaction is aborted, and the connection goes with it.
    con.execute("drop view if exists _curate_src")
    con.unregister("_curate_batch")
    return counts


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> int:
    row = con.execute(f"select count(*) from {sql}", params or []).fetchone()
    return int(row[0]) if row else 0


def ingest_texts(con: duckdb.DuckDBPyConnection, texts: list[str], *, source: str) -> WriteCounts:
    """Merge raw records, numbered from 1 in the order given, in the caller's transaction."""
    batch = pa.table(
        {"line": pa.array(range(1, len(texts) + 1), pa.int64()), "text": pa.array(texts, pa.string())}
    )
    return ingest(con, batch, source=source)


def merge_source(con: duckdb.DuckDBPyConnection, *, source: str, per_line: bool = False) -> WriteCounts:
    """Normalise the relation ``_curate_src(line, text)`` and merge it into ``con``'s store.

    ``per_line`` also reports what happened to each line (``WriteCounts.outcomes``), which a
    receiver answering each delivery needs and a file import does not pay for.

    Runs inside the caller's transaction (on an error the caller rolls back and closes, and the
    temporary state goes with the connection). The merge is idempotent: a record already stored
    is a duplicate; a terminal state (Success/Failed) is never replaced by a non-terminal one; a
    newer record of equal standing replaces the stored one, keeping ``first_seen_at``.
    """
    con.execute("set variable curate_source = ?", [source])
    con.execute(records.PARSE_SQL)
    kinds = dict(con.execute("select shape, count(*) from _curate_parsed group by all").fetchall())
    con.execute(records.RARE_SQL[0])
    if any(kinds.get(shape) for shape in records.RARE_SHAPES):
        for statement in records.RARE_SQL[1:]:
            con.execute(statement)
    con.execute(records.MERGE_SQL)
    actions = dict(con.execute("select action, count(*) from _curate_merge group by all").fetchall())
    clean = _count(con, f"_curate_parsed where shape in {records.COMMON_SHAPES} and bad_id is null")
    for action in ("insert", "update"):
        if actions.get(action):
            chosen = _count(
                con, f"_curate_merge where action = ? and shape in {records.COMMON_SHAPES}", [action]
            )
            for statement in records.insert_sql(action, every_clean_line=chosen == clean):
                con.execute(statement)
    # Reading the text again to explain refusals is paid only when there are some.
    refused = [row[0] for row in con.execute(records.REJECTED_LINES).fetchall()]
    rejected = 0
    if refused:
        con.execute(records.rejects_sql(refused if len(refused) <= 10_000 else None))
        rejected = _count(con, "_curate_rejected")
        con.execute(
            """
            insert into rejects
            select getvariable('curate_source'), line, reason, text, md5(text), now()
            from _curate_rejected
            on conflict do nothing
            """
        )
    outcomes: dict[int, tuple[str, str | None]] = {}
    if per_line:
        outcomes = {line: (outcome, None) for line, outcome in con.execute(records.LINE_OUTCOMES).fetchall()}
        if refused:
            for line, reason in con.execute("select line, reason from _curate_rejected").fetchall():
                outcomes[line] = ("rejected", reason)
    for name in records.TEMP_TABLES:
        con.execute(f"drop table if exists {name}")
    submissions.resolve(con)
    return WriteCounts(
        stored=actions.get("insert", 0),
        updated=actions.get("update", 0),
        duplicate=actions.get("duplicate", 0),
        rejected=rejected,
        skipped=kinds.get("webhook.test", 0),
        lines=sum(kinds.values()),
        outcomes=outcomes,
    )


class FastPathRefused(Exception):
    """The one-pass insert met a line it does not handle; the caller rolls back and merges."""


def fast_insert(con: duckdb.DuckDBPyConnection, *, source: str) -> WriteCounts:
    """Insert every line of ``_curate_src`` in one pass, or raise ``FastPathRefused``.

    Succeeds only when every line is a common-shape record whose id is neither in the store nor
    elsewhere in the source, which is what a first import of a clean file is.
    """
    con.execute("set variable curate_source = ?", [source])
    refusals = con.execute(records.FAST_PATH_PROBE_SQL).fetchone()
    if refusals and refusals[0]:
        raise FastPathRefused("the first lines already show a stored id or a line to refuse")
    try:
        row = con.execute(records.fast_insert_sql()).fetchone()
    except duckdb.InvalidInputException as exc:
        if records.FAST_PATH_REFUSED not in str(exc) and "Malformed JSON" not in str(exc):
            raise
        raise FastPathRefused(str(exc)) from exc
    duplicates = con.execute(records.DUPLICATE_IDS_SQL).fetchone()
    if duplicates and duplicates[0]:
        raise FastPathRefused("an id of this source is already stored, or appears twice in it")
    stored = int(row[0]) if row else 0
    submissions.resolve(con)
    return WriteCounts(stored=stored, lines=stored)


class Spooled(Protocol):
    """A record from the spool (``curate.spool.Record``): a header saying what it is, and raw bytes."""

    @property
    def header(self) -> dict[str, Any]: ...

    @property
    def body(self) -> bytes: ...


# What a spooled record's header says (``op``), and who writes it:
#   body       a raw record to merge (listener, harvest): source, line; with ``settle`` (the
#              listener's: the ledger source to name), the ids it carries are marked in the
#              ledger once the body is taken (not rejected):
#              ``gens`` [[id, state]...] and ``group`` [group id, [[id, state]...]]
#   reject     a raw body refused before the store (listener): source, line, reason
#   ledger     ids to wait for (submit, harvest): ids, kind, source, group_id
#   polled     what a harvest's polls learned: done [[id, state]...], later [[id, state, attempts,
#              iso time]...], backoff [first delay, max delay] for a body the store refuses
#   submission what a POST answered (submit): keys, state (submitted|uncertain|failed),
#              generation_id, group_id, error; see curate.submissions.record
#   submitted  the same, as earlier curates wrote it: keys, generation_id, group_id
OPS = ("body", "reject", "ledger", "polled", submissions.OP, "submitted")
_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "body": (("source", str),),
    "reject": (("source", str), ("reason", str)),
    "ledger": (("ids", list), ("kind", str), ("source", str)),
    "polled": (("backoff", list),),
    submissions.OP: (("keys", list), ("state", str)),
    "submitted": (("keys", list),),
}


def problem(header: Any) -> str | None:
    """Why a spooled record's header cannot be applied, or None when it can.

    The spool checks every header with this before anything is merged, so one record that a
    bug or a newer curate wrote is kept aside with a reason instead of stopping every merge.
    """
    if not isinstance(header, dict):
        return "is not a JSON object"
    op = header.get("op")
    if op not in OPS:
        return f"has an unknown op {op!r}"
    line = header.get("line")
    if line is not None and not (isinstance(line, int) and -(2**63) <= line < 2**63):
        return "has a line that is not a 64-bit integer"
    for name, kind in _FIELDS[op]:
        if not isinstance(header.get(name), kind):
            return f"of a {op} record has no {name} ({kind.__name__})"
    if op == submissions.OP and header["state"] not in submissions.RECORDED:
        return f"of a {op} record has a state that is not one of {', '.join(submissions.RECORDED)}"
    for name in ("ids", "keys"):
        if name in header and not all(isinstance(v, str) for v in header[name]):
            return f"of a {op} record has {name} that are not all strings"
    for name in ("generation_id", "group_id", "error", "settle", "kind"):
        if header.get(name) is not None and not isinstance(header[name], str):
            return f"of a {op} record has a {name} that is not a string"
    shapes = {  # what the merge unpacks: each element's form, checked here so that it never raises
        "gens": _pairs, "done": _pairs, "later": lambda v: _rows(v, (str, _opt_str, int, str)),
        "backoff": lambda v: isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v),
        "group": lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and _pairs(v[1]),
    }
    for name, ok in shapes.items():
        if header.get(name) is not None and not ok(header[name]):
            return f"of a {op} record has a {name} of the wrong form"
    return None


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rows(value: Any, kinds: tuple[Any, ...]) -> bool:
    def fits(item: Any, kind: Any) -> bool:
        return kind(item) if callable(kind) and not isinstance(kind, type) else isinstance(item, kind)

    return isinstance(value, list) and all(
        isinstance(row, list) and len(row) == len(kinds) and all(fits(x, k) for x, k in zip(row, kinds, strict=True))
        for row in value)


def _pairs(value: Any) -> bool:
    """[[id, state or null], ...]"""
    return _rows(value, (str, _opt_str))


def _reject(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[str, int, str, str]]) -> None:
    """Keep (source, line, reason, raw text) in rejects, webhook ids masked; once each."""
    con.executemany(
        f"insert into rejects select s, l, r, {records.masked('t')}, md5({records.masked('t')}), now() "
        "from (select ?::varchar as s, ?::bigint as l, ?::varchar as r, ?::varchar as t) on conflict do nothing",
        list(rows),
    )


def refuse(con: duckdb.DuckDBPyConnection, spooled: Sequence[Spooled], reason: str) -> None:
    """Keep spooled records the store cannot take in rejects, with ``reason``, in the caller's
    transaction: a body as its text, any other record as its header, so nothing is lost."""
    _reject(con, [
        (str(r.header.get("source") or "spool"),
         r.header["line"] if isinstance(r.header.get("line"), int) else 0,
         reason,
         r.body.decode("utf-8", "backslashreplace") if r.header.get("op") in ("body", "reject")
         else json.dumps(r.header, ensure_ascii=False))
        for r in spooled
    ])


def apply(con: duckdb.DuckDBPyConnection, spooled: Sequence[Spooled]) -> dict[str, int]:
    """Merge spooled records in the caller's transaction; return the merge's counts.

    Bodies go first (each source in one merge), then the ledger's records in the order they
    were spooled, so a poll that marks an id done finds its body stored. Applying the same
    records twice stores nothing twice: every step is an idempotent merge or upsert.
    """
    counts: dict[str, int] = {}
    by_source: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    rejected: list[tuple[str, int, str, str]] = []
    after: list[dict[str, Any]] = []
    for number, record in enumerate(spooled, start=1):
        header = record.header
        op = header.get("op")
        given = header.get("line")
        line = given if isinstance(given, int) else number
        if op == "body":
            text = record.body.decode("utf-8", "backslashreplace")
            by_source.setdefault(str(header.get("source") or "spool"), []).append((line, text, header))
        elif op == "reject":
            rejected.append((str(header.get("source") or "spool"), line, str(header.get("reason")),
                             record.body.decode("utf-8", "backslashreplace")))
        elif op in OPS:
            after.append(header)
        else:
            raise ValueError(f"a spooled record with an unknown op {op!r}")
    settled: dict[str, tuple[list[tuple[str, str | None]], list[tuple[str, list[tuple[str, str | None]]]]]] = {}
    for source, items in by_source.items():
        settling = [h for _, _, h in items if h.get("settle")]
        batch = pa.table({
            "line": pa.array([line for line, _, _ in items], pa.int64()),
            "text": pa.array([text for _, text, _ in items], pa.string()),
        })
        written = ingest(con, batch, source=source, per_line=bool(settling))
        for name in ("stored", "updated", "duplicate", "rejected", "skipped"):
            counts[name] = counts.get(name, 0) + getattr(written, name)
        for line, _, header in items:
            if not header.get("settle") or written.outcomes.get(line, ("rejected", None))[0] == "rejected":
                continue
            gens, groups = settled.setdefault(str(header["settle"]), ([], []))
            gens.extend((g[0], g[1]) for g in header.get("gens") or [])
            if header.get("group"):
                group_id, members = header["group"]
                groups.append((group_id, [(m[0], m[1]) for m in members]))
    if rejected:
        _reject(con, rejected)
        counts["rejected"] = counts.get("rejected", 0) + len(rejected)
    for source, (gens, groups) in settled.items():
        ledger.settle(con, gens, groups, source=source)
    for header in after:
        op = header["op"]
        if op == "ledger":
            ledger.add(con, header["ids"], kind=header["kind"], source=header["source"],
                       group_id=header.get("group_id"))
        elif op == "polled":
            first_delay, max_delay = header["backoff"]
            ledger.record_polls(con, [tuple(d) for d in header.get("done") or []],
                                [tuple(x) for x in header.get("later") or []],
                                first_delay=first_delay, max_delay=max_delay)
        elif op in (submissions.OP, "submitted"):
            submissions.record(con, header["keys"], str(header.get("state") or "submitted"),
                               generation_id=header.get("generation_id"), group_id=header.get("group_id"),
                               error=header.get("error"))
    return counts
