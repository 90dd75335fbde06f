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

__all__ = ["Kind", "add"]

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
