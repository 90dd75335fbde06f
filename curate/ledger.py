"""The ledger: every generation and group id curate is waiting for, kept in the store.

inference.net has no endpoint that lists generations, so an id curate does not write down is an
id it can never harvest. Ids arrive from curate's own submissions, from ``--ids`` files, from
groups and from webhooks; each waits here with its polling schedule until it is terminal, so a
harvest resumes where any stop left it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import duckdb
import pyarrow as pa

__all__ = ["Kind", "add", "settle"]

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
    generation_ids: Iterable[str],
    groups: Iterable[tuple[str, list[str]]] = (),
    *,
    source: str,
) -> None:
    """Record ids that arrived finished (a webhook delivered them), in the caller's transaction.

    Ids the ledger lacks are written down; every id whose stored generation is terminal, and
    every group (with its members), is marked done, so no harvest polls it again.
    """
    rows = [(i, "generation", None) for i in generation_ids]
    for group_id, members in groups:
        rows.append((group_id, "group", None))
        rows.extend((m, "generation", group_id) for m in members)
    if not rows:
        return
    ids, kinds, group_ids = zip(*rows, strict=True)
    con.register("_curate_settled", pa.table({
        "id": pa.array(ids, pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "group_id": pa.array(group_ids, pa.string()),
    }))
    try:
        con.execute(
            """
            insert into ledger (id, kind, group_id, source, added_at, next_poll_at)
            select id, any_value(kind), any_value(group_id), ?, now(), now()
            from _curate_settled group by id
            on conflict do nothing
            """,
            [source],
        )
        con.execute(
            """
            update ledger set done_at = coalesce(ledger.done_at, now()), last_seen_at = now(),
                              last_state = s.state
            from (
                select distinct x.id, case when x.kind = 'group' then 'completed' else g.state end as state
                from _curate_settled x left join generation_rows g on g.id = x.id
                where x.kind = 'group' or g.state in ('Success', 'Failed')
            ) s
            where ledger.id = s.id
            """
        )
    finally:
        con.unregister("_curate_settled")
