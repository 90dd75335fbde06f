"""The DuckDB store: one file, its schema, and the only door through which curate writes.

DuckDB lets one process hold a file read-write, or many hold it read-only, never both
(../shared/docs/duckdb-and-datasets.md, B.1). So nothing here keeps a connection open: a writer
opens read-write for the length of one batch and closes; a reader opens read-only for one query.
Both retry a lock conflict with jittered exponential backoff for a bounded time, then give up with
a message that says who holds the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from curate import migrations
from curate.records import NORMALIZE_SQL, TEMP_TABLES, WriteCounts

__all__ = ["Store", "StoreLocked", "WriteCounts"]

# What a conflicting lock looks like: "Could not set lock on file "...": Conflicting lock is held
# in /usr/bin/python3 (PID 4774)". Inside one process, a read-only open of a file held read-write
# fails differently ("different configuration"); both mean "someone else has it, wait".
_LOCK_MARKERS = ("Could not set lock", "different configuration than existing connections")
_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")


_COLUMNS = (
    "id, raw, raw_hash, shape, state, state_message, model, custom_id, dispatched_at, "
    "finished_at, prompt_tokens, completion_tokens, total_tokens, source, first_seen_at, "
    "updated_at, request_path, response_path, request_built, response_built"
)
_VALUES = (
    "m.id, coalesce(m.raw, b.text), m.raw_hash, m.shape, m.state, m.state_message, m.model, "
    "m.custom_id, m.dispatched_at, m.finished_at, m.prompt_tokens, m.completion_tokens, "
    "m.total_tokens, getvariable('curate_source'), now(), now(), m.request_path, "
    "m.response_path, m.request_built, m.response_built"
)


class StoreLocked(RuntimeError):
    """The store stayed locked by another process for longer than the retry budget."""


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, (duckdb.IOException, duckdb.ConnectionException)) and any(
        marker in str(exc) for marker in _LOCK_MARKERS
    )


class Store:
    """A curate store in one DuckDB file.

    ``lock_timeout`` bounds how long an open waits for another process to let go of the file.
    Creating a ``Store`` brings the file's schema up to date (creating the file if need be).
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"{self.path}: the folder {self.path.parent} does not exist")
        self.migrate()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        retrying = Retrying(
            retry=retry_if_exception(_is_lock_error),
            wait=wait_random_exponential(multiplier=0.005, max=0.2),
            stop=stop_after_delay(self.lock_timeout),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return duckdb.connect(str(self.path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
                raise
            holder = _HOLDER.search(str(exc))
            who = f"{holder.group(1)} (PID {holder.group(2)})" if holder else "another connection"
            raise StoreLocked(
                f"{self.path} is locked by {who}, which kept it for more than "
                f"{self.lock_timeout:g}s. A DuckDB file takes one writer or many readers at a "
                "time: close the notebook or process holding it (or use curate.open(), which "
                "connects per query), then try again."
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def migrate(self) -> list[str]:
        """Apply pending migrations; return the names that ran."""
        con = self._connect(read_only=False)
        try:
            return migrations.apply(con)
        finally:
            con.close()

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, committed and closed on exit."""
        con = self._connect(read_only=False)
        try:
            con.execute("begin transaction")
            try:
                yield con
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection, closed on exit. Never blocks a writer for longer than the block."""
        con = self._connect(read_only=True)
        try:
            yield con
        finally:
            con.close()

    def ingest(self, batch: pa.Table, *, source: str) -> WriteCounts:
        """Store one batch of raw records in one transaction.

        ``batch`` has columns ``line`` (int64: where the record came from, e.g. its line number)
        and ``text`` (string: the record exactly as received). Every recognised generation is
        upserted; everything else becomes a ``rejects`` row. Returns what happened to each record.
        """
        with self.write() as con:
            return ingest(con, batch, source=source)

    def query(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """Run one read-only query and return its rows as an Arrow table."""
        with self.read() as con:
            return con.sql(sql, params=params).to_arrow_table()


def ingest(con: duckdb.DuckDBPyConnection, batch: pa.Table, *, source: str) -> WriteCounts:
    """Normalise ``batch`` (columns ``line``, ``text``) and merge it into ``con``'s store.

    Runs inside the caller's transaction. The merge is idempotent: a record already stored is a
    duplicate; a terminal state (Success/Failed) is never replaced by a non-terminal one; a newer
    record of equal standing replaces the stored one, keeping ``first_seen_at``.
    """
    # On an error the caller rolls back and closes; the temp state goes with the connection.
    con.register("_curate_batch", batch)
    con.execute("set variable curate_source = ?", [source])
    for statement in NORMALIZE_SQL:
        con.execute(statement)
    row = con.execute(
        """
        select
            count(*) filter (where action = 'insert'),
            count(*) filter (where action = 'update'),
            count(*) filter (where action = 'duplicate'),
            (select count(*) from _curate_rejected),
            (select count(*) from _curate_skipped)
        from _curate_merge
        """
    ).fetchone()
    assert row is not None
    con.execute(
        f"insert into generations ({_COLUMNS}) select {_VALUES} "
        "from _curate_merge m join _curate_batch b on b.line = m.line where action = 'insert'"
    )
    if row[1]:
        # An id seen before: replace every stored column but first_seen_at.
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")
                            if c not in ("id", "first_seen_at"))
        con.execute(
            f"insert into generations ({_COLUMNS}) select {_VALUES} "
            "from _curate_merge m join _curate_batch b on b.line = m.line "
            f"where action = 'update' on conflict (id) do update set {updates}"
        )
    con.execute(
        """
        insert into rejects
        select getvariable('curate_source'), line, reason, text, md5(text), now()
        from _curate_rejected
        on conflict do nothing
        """
    )
    counts = WriteCounts(
        stored=row[0], updated=row[1], duplicate=row[2], rejected=row[3], skipped=row[4]
    )
    # Temp tables live as long as the connection; drop them so a caller may ingest again.
    for name in TEMP_TABLES:
        con.execute(f"drop table {name}")
    con.unregister("_curate_batch")
    return counts
