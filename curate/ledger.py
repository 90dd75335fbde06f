"""The ledger: every generation and group id curate is waiting for, kept in the store.

inference.net has no endpoint that lists generations, so an id curate does not write down is an
id it can never harvest. Ids arrive from curate's own submissions, from ``--ids`` files, from
groups and from webhooks; each waits here with its polling schedule until it is terminal, so a
harvest resumes where any stop left it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import duckdb
import pyarrow as pa

__all__ = ["Kind", "add", "finish_delays", "pending", "pending_count", "record_polls", "settle"]

Kind = Literal["generation", "group"]


def add(
    con: duckdb.DuckDBPyConnection,
    ids: Iterable[str],
    *,
    kind: Kind,
    source: str,
    group_id: str | None = None,
) -> int:
    """Write ``ids`` down (in the caller's transaction); an id already there keeps its row.

    Returns how many were new.
    """
    batch = pa.table({"id": pa.array(list(ids), pa.string())})
    con.register("_curate_ledger_new", batch)
    try:
        row = con.execute(
            """
            insert into ledger (id, kind, group_id, source, added_at, next_poll_at)
            select distinct id, ?, ?, ?, now(), now() from _curate_ledger_new
            on conflict do nothing
            """,
            [kind, group_id, source],
        ).fetchone()
    finally:
        con.unregister("_curate_ledger_new")
    return int(row[0]) if row else 0


def settle(
    con: duckdb.DuckDBPyConnection,
    generations: Iterable[tuple[str, str | None]],
    groups: Iterable[tuple[str, list[tuple[str, str | None]]]] = (),
    *,
    source: str,
) -> None:
    """Record ids that arrived with their bodies (a webhook delivered them), in the caller's transaction.

    ``generations`` are (id, state) pairs of bodies the store took; ``groups`` are (group id,
    members). Ids the ledger lacks are written down; a generation in a terminal state, and every
    group, is marked done, so no harvest polls it again. One upsert, with no look at the stored
    generations: a receiver calls this for every batch, so it must not grow with the store.
    """
    rows: list[tuple[str, str, str | None, str | None]] = [(i, "generation", None, state) for i, state in generations]
    for group_id, members in groups:
        rows.append((group_id, "group", None, "completed"))
        rows.extend((m, "generation", group_id, state) for m, state in members)
    if not rows:
        return
    ids, kinds, group_ids, states = zip(*rows, strict=True)
    con.register("_curate_settled", pa.table({
        "id": pa.array(ids, pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "group_id": pa.array(group_ids, pa.string()),
        "state": pa.array(states, pa.string()),
    }))
    try:
        con.execute(
            """
            insert into ledger (id, kind, group_id, source, added_at, next_poll_at, last_state,
                                last_seen_at, done_at)
            select id, kind, group_id, ?, now(), now(), state, now(),
                   case when kind = 'group' or state in ('Success', 'Failed') then now() end
            from _curate_settled
            qualify row_number() over (partition by id order by state in ('Success', 'Failed') desc) = 1
            on conflict (id) do update set
                last_seen_at = excluded.last_seen_at,
                last_state = case when excluded.done_at is null then ledger.last_state
                                  else excluded.last_state end,
                done_at = coalesce(ledger.done_at, excluded.done_at)
            """,
            [source],
        )
    finally:
        con.unregister("_curate_settled")


def record_polls(
    con: duckdb.DuckDBPyConnection,
    done: Sequence[tuple[Any, ...]],
    later: Sequence[tuple[Any, ...]],
    *,
    first_delay: float,
    max_delay: float,
) -> None:
    """Record what polls learned, in the caller's transaction.

    ``done``: (id, state) of ids whose terminal body was fetched (or groups fetched whole);
    ``later``: (id, last state seen, attempts, next poll time) of ids to poll again. A "done" id
    whose body the store refused (it is in rejects) is not done: it is polled again on the
    backoff schedule (``first_delay`` doubling up to ``max_delay``), never dropped. An id already done stays done whatever a later poll says
    (a webhook may have settled it while a harvest still polled it).
    """
    changes = [(i, st, None, None, True) for i, st, *_ in done] + [
        (i, st, attempts, when, False) for i, st, attempts, when in later
    ]
    if not changes:
        return
    ids, states, attempts, whens, finished = zip(*changes, strict=True)
    con.register("_curate_ledger_changes", pa.table({
        "id": pa.array(ids, pa.string()),
        "state": pa.array(states, pa.string()),
        "attempts": pa.array(attempts, pa.int32()),
        "next_poll_at": pa.array([_time(w) for w in whens], pa.timestamp("us", tz="UTC")),
        "done": pa.array(finished, pa.bool_()),
    }))
    try:
        con.execute(
            f"""
            update ledger set
                last_state = case when ledger.done_at is not null then ledger.last_state
                                  when c.done and not c.stored then 'body refused'
                                  else c.state end,
                last_seen_at = now(),
                attempts = coalesce(c.attempts, ledger.attempts + 1),
                next_poll_at = case
                    when c.done and not c.stored then now() + to_seconds(
                        least({float(max_delay)}, {float(first_delay)} * pow(2, ledger.attempts)))
                    else coalesce(c.next_poll_at, ledger.next_poll_at) end,
                done_at = coalesce(ledger.done_at, case when c.done and c.stored then now() end)
            from (
                select x.*, l.kind = 'group' or exists (
                    select 1 from generation_rows g where g.id = x.id) as stored
                from _curate_ledger_changes x join ledger l on l.id = x.id
                qualify row_number() over (partition by x.id order by x.done desc) = 1
            ) c
            where ledger.id = c.id
            """
        )
    finally:
        con.unregister("_curate_ledger_changes")


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def pending(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int, datetime, datetime, int]]:
    """Every id not done yet: (id, kind, attempts, next poll time, added time, rank of its
    addition among its kind's)."""
    return [tuple(row) for row in con.execute(
        """
        select id, kind, attempts, next_poll_at, added_at,
               row_number() over (partition by kind order by added_at, id) as rank
        from ledger where done_at is null
        """
    ).fetchall()]


def pending_count(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """How many ids are not done yet, and how many of them are groups."""
    ((ids, groups),) = con.execute(
        "select count(*), count(*) filter (where kind = 'group') from ledger where done_at is null"
    ).fetchall()
    return int(ids), int(groups)


def finish_delays(con: duckdb.DuckDBPyConnection, quantile: float) -> dict[str, tuple[int, float | None]]:
    """Per kind, how many of curate's own submissions have finished and the ``quantile`` of the
    seconds from their addition to their end: what a harvest waits before its first poll."""
    rows = con.execute(
        """
        select 'generation' as kind, count(*) as n,
               quantile_cont(epoch(g.finished_at) - epoch(l.added_at), $q) as seconds
        from ledger l join generation_rows g on g.id = l.id
        where l.kind = 'generation' and l.source = 'submit' and g.finished_at is not null
        union all
        select 'group', count(*), quantile_cont(seconds, $q) from (
            select epoch(max(g.finished_at)) - epoch(any_value(l.added_at)) as seconds
            from ledger l join ledger m on m.group_id = l.id join generation_rows g on g.id = m.id
            where l.kind = 'group' and l.done_at is not null
            group by l.id)
        """,
        {"q": quantile},
    ).fetchall()
    return {kind: (int(n), None if seconds is None else float(seconds)) for kind, n, seconds in rows}
