"""Reading the lake as a store: every view, query, snapshot and export, on the Iceberg table.

``LakeStore`` is a ``ReadableStore`` (``curate.store``) whose DuckDB file is private to this
process and holds no data:
the schema's tables (empty) and, in place of the ``generation_rows`` table, a view over the
Parquet files of the lake's current snapshot (planned by pyiceberg) that keeps one row per id,
the one ``lake.DEDUP_ORDER`` prefers. The shipped views and the user's own then run unchanged,
made by each read as temporary views of its own connection, as for any store.
Each read checks the lake's current snapshot first and re-plans when writers have committed since.

The lake is read-only here: a ``LakeStore`` has none of ``Store``'s writers, and what takes a
``Store`` refuses it. The curation passes, which write their findings into the store, run on a
local store, which ``pull`` fills with the lake's generations.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Self, overload

import duckdb
import pyarrow as pa

from curate import migrations
from curate.importer import ImportSummary
from curate.lake.table import DEDUP_ORDER, Lake, LakeConfig, LakeError
from curate.records import COLUMNS
from curate.store import ReadableStore, Store, store_at

__all__ = ["LakeReadOnly", "LakeStore", "lake_rows_view_sql", "open_store", "pull"]

_EMPTY = "_lake_empty_rows"
_UNPLANNED = object()


class LakeReadOnly(LakeError, AttributeError):
    """A write was asked of the lake's read view: one of ``Store``'s writers, which it has not.

    Still an AttributeError, which is what it is: ``hasattr(lake, "write")`` is False.
    """


# What ``Store`` adds to ``ReadableStore``: the writers a ``LakeStore`` has not.
_WRITERS = frozenset(name for name in dir(Store) if not hasattr(ReadableStore, name))


def lake_rows_view_sql(files: Sequence[str]) -> str:
    """``generation_rows`` over the lake's Parquet ``files``: its exact columns and types, one row per id.

    The copy of each id that ``DEDUP_ORDER`` prefers is found on narrow columns (a window over
    whole rows would sort every body: 8.9 s against 1.8 s over 1M rows) and the rows are joined
    to it by position. The join is an inner join that also equates the ids, so that a filter on
    ``id`` (``where id = ?``, ``id in (...)``) reaches both scans: DuckDB copies it across the
    join's equality and pushes it through the window, whose partition key it is, into the Parquet
    scan. A point lookup then reads one id's copies instead of ranking the whole lake's first
    (issue 19). Filters on other columns stay above the window: they apply to the chosen copy,
    never to the choice. Rows without an id (curate never writes one: a store's ids are not
    null) have no copy to keep and are left out.
    """
    if not files:
        return f"select * from {_EMPTY}"
    casts = {
        "raw": "raw::json", "raw_hash": "raw_hash::ubigint",
        "request_built": "request_built::json", "response_built": "response_built::json",
    }
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    # file_index (the file's place in the list) and file_row_number say where a row is: both
    # scans read the same list, so a position names the same row in each.
    source = f"read_parquet([{listed}], file_row_number = true)"
    columns = ", ".join(f"r.{casts[c]} as {c}" if c in casts else f"r.{c}" for c in COLUMNS)
    return (
        f"with kept as (select id, file_index, file_row_number from {source} "
        f"qualify row_number() over (partition by id order by {DEDUP_ORDER}) = 1) "
        f"select {columns} from {source} r join kept k "
        f"on r.id = k.id and r.file_index = k.file_index and r.file_row_number = k.file_row_number"
    )


class LakeStore(ReadableStore):
    """The lake, read through DuckDB with the store's views (``curate.open(lake=...)``)."""

    def __init__(
        self,
        lake: Lake | LakeConfig | str | os.PathLike[str],
        *,
        queries: Sequence[str | os.PathLike[str]] | None = None,
        memory_limit: str | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake(lake, read_only=True)
        self._planned: Any = _UNPLANNED
        self._plan_lock = threading.Lock()
        folder = tempfile.mkdtemp(prefix="curate-lake-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
        super().__init__(Path(folder) / "lake.duckdb", lock_timeout=lock_timeout, memory_limit=memory_limit,
                         queries=queries)
        self._build()

    def __repr__(self) -> str:
        return f"LakeStore({self.lake.config.identity!r})"

    @property
    def label(self) -> str:
        return f"lake {self.lake.config.identity}"

    def _build(self) -> None:
        """The private file: the schema's tables, empty, and ``generation_rows`` as the lake's rows.

        Made at the current schema, so it never needs migrating. The views are made by each read,
        as temporary views of its connection (``ReadableStore.read``).
        """
        con = self._connect(read_only=False)
        try:
            migrations.apply(con)
            con.execute(f"create table {_EMPTY} as select * from generation_rows limit 0")
            con.execute("drop table generation_rows")
            self._plan(con)
        finally:
            con.close()

    def _plan(self, con: duckdb.DuckDBPyConnection) -> None:
        snapshot, files = self.lake.plan()
        con.execute(f"create or replace view generation_rows as {lake_rows_view_sql(files)}")
        self._planned = snapshot

    def refresh(self) -> bool:
        """Re-plan the lake's files if writers committed since the last read; True if it did."""
        with self._plan_lock:
            if self.lake.snapshot_id() == self._planned:
                return False
            con = self._connect(read_only=False)
            try:
                self._plan(con)
            finally:
                con.close()
            return True

    @contextmanager
    def read(self, *, wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        self.refresh()
        with super().read(wait=wait) as con:
            yield con

    @contextmanager
    def attached(self, con: duckdb.DuckDBPyConnection, alias: str = "store") -> Iterator[str]:
        self.refresh()
        with super().attached(con, alias) as name:
            yield name

    # Hidden from mypy: a __getattr__ it saw would make any name of a LakeStore type-check, and to
    # mypy a LakeStore has no writers at all.
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> NoReturn:
            # Only for names nothing else defines. A notebook that hands the lake to a writer
            # (curate.import_files(lake, ...)) learns where to write instead of reading
            # "'LakeStore' object has no attribute 'write'".
            if name in _WRITERS:
                raise LakeReadOnly(
                    f"{self.label} is read-only here: write to a local store with --db and push with --lake "
                    "(curate import/harvest/listen --lake), and run curation passes on a local store"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)

    def close(self) -> None:
        """Let go of the catalog's connections and remove the private file."""
        self.lake.close()
        self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pull(lake: Lake | LakeConfig | str, store: Store, *, batch_rows: int = 50_000) -> ImportSummary:
    """Merge the lake's generations (one per id) into a local ``store``, as an import would.

    For the work that writes into a store (near-duplicates, PII, decontamination), and for a copy
    to take away. Each body is merged as received, so a pull run twice stores nothing new.
    """
    started = time.monotonic()
    with LakeStore(lake) as read:
        summary = ImportSummary(files=[read.label])
        with read.read() as con:
            batches = con.sql(
                "select row_number() over (order by id) as line, raw::varchar as text from generation_rows"
            ).to_arrow_reader(batch_size=batch_rows)
            for batch in batches:
                summary.add(store.ingest(pa.Table.from_batches([batch]), source="lake"))
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


@overload
def open_store(
    path: str | os.PathLike[str] | None = None,
    *,
    lake: None = None,
    queries: list[str | os.PathLike[str]] | None = None,
    lock_timeout: float = 30.0,
) -> Store: ...


@overload
def open_store(
    path: str | os.PathLike[str] | None = None,
    *,
    lake: str | os.PathLike[str],
    queries: list[str | os.PathLike[str]] | None = None,
    lock_timeout: float = 30.0,
) -> LakeStore: ...


@overload
def open_store(
    path: str | os.PathLike[str] | None = None,
    *,
    lake: str | os.PathLike[str] | None,
    queries: list[str | os.PathLike[str]] | None = None,
    lock_timeout: float = 30.0,
) -> ReadableStore: ...


def open_store(
    path: str | os.PathLike[str] | None = None,
    *,
    lake: str | os.PathLike[str] | None = None,
    queries: list[str | os.PathLike[str]] | None = None,
    lock_timeout: float = 30.0,
) -> ReadableStore:
    """The store at ``path``, else ``$CURATE_DB``: a new one if there is no file, else the file untouched.

    ``lake``: read an Iceberg lake instead (a folder, or ``postgresql://...?warehouse=DIR``; see
    ``curate.lake.table.LakeConfig``): the same views and exports, on one row per generation id.
    ``queries``: folders of your own view files (default ``$CURATE_QUERIES``).
    Without ``lake`` it is a ``Store``, to write as well as read; with one, a ``LakeStore``, to read.
    """
    if lake is not None:
        return LakeStore(lake, queries=queries, lock_timeout=lock_timeout)
    return store_at(path, queries=queries, lock_timeout=lock_timeout)
