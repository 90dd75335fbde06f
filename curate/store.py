"""The DuckDB store: one file, its schema, and the doors in and out of it.

DuckDB lets one process hold a file read-write, or many hold it read-only, never both
(../shared/docs/duckdb-and-datasets.md, B.1). So nothing here keeps a connection open for long,
and the two doors are two classes:

* ``ReadableStore`` is every door that only reads (``read``, ``sql``, ``arrow``, ``table``,
  ``views``, ``snapshot``, ``unload``, ``attached``): it opens read-only and never changes the
  file: the views are temporary views of its own connection (``curate.views``), and a store whose
  schema is behind is refused with the command that migrates it. Readers never wait for readers;
  one waits for a writer for at most ``lock_timeout``, then says who holds the file. Code that
  only reads takes a ``ReadableStore``, so it reads the lake (``curate.lake.reader.LakeStore``,
  also a ``ReadableStore``) as well as a file.
* ``Store`` is a ``ReadableStore`` with the writers (``write``, ``session``, ``migrate``,
  ``ingest``): a writer brings the schema up to date on its first connection and waits for the
  file as long as it takes, saying every few seconds who holds it. The writers that must not wait
  (a listener acknowledging deliveries, a harvest polling) put what they learn in the spool first
  (``curate.spool``) and merge it when the file is free.

A query the reading doors are given that DuckDB refuses (its SQL, its parameters, or the values it
met) is a ``QueryError`` carrying DuckDB's message; the file is as it was.

This module is only the file: the records' merge is ``curate.merge``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

import duckdb
import pyarrow as pa

from curate import merge, migrations, views
from curate.config import Settings
from curate.errors import CurateError, MissingFile, NoSuchName, UsageError, from_environment
from curate.records import WriteCounts

__all__ = [
    "FOREVER",
    "QueryError",
    "ReadableStore",
    "Result",
    "Store",
    "StoreBehind",
    "StoreLocked",
    "StoreUnreadable",
    "ViewInfo",
    "WriteCounts",
    "WriteSession",
    "fsync",
    "holder",
    "no_progress_bar",
    "source_query",
    "store_at",
]

log = logging.getLogger("curate.store")

# What a conflicting lock looks like: "Could not set lock on file "...": Conflicting lock is held
# in /usr/bin/python3 (PID 4774)". Inside one process, a read-only open of a file held read-write
# fails differently ("different configuration"); both mean "someone else has it, wait".
_LOCK_MARKERS = ("Could not set lock", "different configuration than existing connections")
_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")

WAIT_NOTICE_SECONDS = 5.0  # how often a waiting writer says who holds the file
FOREVER = math.inf  # ``read(wait=FOREVER)``: a reader that is part of a writer's work waits as a writer does

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_WRITER_LOCKS: dict[Path, threading.Lock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> threading.Lock:
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(path.resolve(), threading.Lock())


def no_progress_bar(con: duckdb.DuckDBPyConnection) -> None:
    """Turn DuckDB's own progress bar off: it would write into curate's output.

    In a Jupyter kernel without ipywidgets DuckDB refuses any change to the setting, and its bar
    is already off there.
    """
    try:
        con.execute("set enable_progress_bar = false")
    except duckdb.InvalidInputException:
        pass


class StoreLocked(CurateError, RuntimeError):
    """A reader found the store held by a writer for longer than its ``lock_timeout``."""


class StoreBehind(CurateError, RuntimeError):
    """A reader found a store whose schema an older curate wrote: a writer must migrate it first."""


class StoreUnreadable(CurateError):
    """The store's file could not be opened for a reason other than a writer holding it: it is
    not a DuckDB database, or not readable (DuckDB's message says which)."""


class QueryError(UsageError):
    """DuckDB refused a query a reading door was given: its SQL, its parameters, or a value it met.

    The message is DuckDB's own ("Parser Error: syntax error at or near ..."), and the DuckDB
    error is its ``__cause__``. Nothing was changed: the query ran read-only.
    """

    # The exit code `curate sql` has always given a query DuckDB refused (tests/test_cli.py), not
    # UsageError's 2: scripts may test for it.
    exit_code: ClassVar[int] = 1


# The DuckDB errors a query itself causes, or that the user can act on: ProgrammingError is its
# SQL or parameters (Parser, Binder, Catalog, InvalidInput: a syntax error, a missing column, view
# or function, a write on the read-only connection, a wrong number of parameters); DataError is a
# value it met (Conversion, OutOfRange, TypeMismatch: '1x'::int, an overflow); IOException a file
# the query reads (read_parquet of a missing path); OutOfMemory a query too big for the memory
# limit (CURATE_MEMORY_LIMIT); NotImplemented a feature DuckDB lacks. Internal and fatal errors
# are DuckDB's bugs, not the user's, and stay as DuckDB raised them (a traceback).
_QUERY_ERRORS: tuple[type[duckdb.Error], ...] = (
    duckdb.ProgrammingError, duckdb.DataError, duckdb.IOException, duckdb.OutOfMemoryException,
    duckdb.NotImplementedException,
)


def fsync(path: Path) -> None:
    """Make ``path`` durable: a file's bytes, or a folder's names (a file created, renamed or linked in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def source_query(source: str) -> str:
    """The SELECT a SOURCE argument stands for: a view or table name (``chat``), else the SELECT
    as written, less a final semicolon. What every command that reads a SOURCE reads."""
    text = source.strip().rstrip(";").strip()
    if not text:
        raise UsageError("SOURCE is empty: give a view name (chat, conversations, ...) or a SELECT")
    if _NAME.fullmatch(text):
        return f'select * from "{text}"'
    return text


def interruptible(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """``work()`` (a DuckDB call on ``con``), stopped by Ctrl-C.

    Python runs a signal's handler only between bytecodes of the main thread, and a long query
    keeps that thread inside DuckDB: Ctrl-C could wait for the query's end (seen: over a minute).
    So the query runs on a thread while the main thread waits, which a signal does interrupt;
    then ``con.interrupt()`` stops the query and the KeyboardInterrupt goes on.
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: list[Any] = []
    finished = threading.Event()  # not Thread.join: CPython 3.11 marks a thread whose join Ctrl-C cut short as stopped

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # noqa: BLE001 -- handed to the waiting thread as it is
            outcome.append((False, exc))
        finally:
            finished.set()

    threading.Thread(target=run, name="curate-query", daemon=True).start()
    try:
        finished.wait()
    except KeyboardInterrupt:
        con.interrupt()
        finished.wait()
        raise
    done, value = outcome[0]
    if not done:
        raise value
    return cast(T, value)


@contextmanager
def _user_query() -> Iterator[None]:
    """Run a query the caller was given: what it got wrong becomes a ``QueryError``."""
    try:
        yield
    except _QUERY_ERRORS as exc:
        refused = from_environment(exc)  # out of memory: DuckDB's message and what to do about it
        raise QueryError(str(refused or exc)) from exc


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, (duckdb.IOException, duckdb.ConnectionException)) and any(
        marker in str(exc) for marker in _LOCK_MARKERS
    )


def holder(exc: BaseException) -> str:
    """Who holds the file, as DuckDB's lock error names it ("python3 (PID 4774)")."""
    found = _HOLDER.search(str(exc))
    return f"{found.group(1)} (PID {found.group(2)})" if found else "another connection of this process"


@dataclass(frozen=True)
class Result:
    """The rows of one query, already fetched: the store was let go before this was returned.

    Convert with ``.arrow()`` (a ``pyarrow.Table``), ``.df()`` (pandas) or ``.pl()`` (polars).
    """

    table: pa.Table

    def arrow(self) -> pa.Table:
        return self.table

    def df(self) -> Any:
        """A pandas DataFrame (needs pandas: ``pip install 'curate[notebook]'``)."""
        try:
            import pandas  # noqa: F401 - only to say clearly what is missing
        except ImportError:
            raise ImportError("Result.df() needs pandas: pip install 'curate[notebook]'") from None
        return self.table.to_pandas()

    def pl(self) -> Any:
        """A polars DataFrame (needs polars: ``pip install 'curate[notebook]'``)."""
        try:
            import polars
        except ImportError:
            raise ImportError("Result.pl() needs polars: pip install 'curate[notebook]'") from None
        return polars.from_arrow(self.table)

    def to_pylist(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"<Result {self.table.num_rows:,} rows: {', '.join(self.table.column_names)}>"


@dataclass(frozen=True)
class ViewInfo:
    """A view of the store: its name, what one row is, its file, and (if counted) its rows."""

    name: str
    description: str
    path: Path
    rows: int | None


class ReadableStore:
    """A curate store in one DuckDB file, as read: every door that only reads.

    ``lock_timeout`` bounds how long a reader waits for a writer to let go of the file;
    ``memory_limit`` (default ``$CURATE_MEMORY_LIMIT``, else 1GB) caps DuckDB's memory; ``queries``
    are folders of view files added to (or overriding) the shipped ones (default
    ``$CURATE_QUERIES``, folders separated by ``os.pathsep``), for this object's connections only.

    Creating one changes nothing and creates nothing: a path with no file yet is a store to read
    once a writer has made it (``Store`` makes it). A broken view file does not stop reading: its
    error is in ``view_errors``. Code that only reads takes this type, so that it reads the lake
    (``curate.lake.reader.LakeStore``) as well as a ``Store``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = 30.0,
        memory_limit: str | None = None,
        queries: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        self.path = Path(path)
        env = Settings.from_env()
        self.queries = [Path(q) for q in queries] if queries is not None else list(env.queries)
        self.view_errors: list[views.ViewError] = []
        self.lock_timeout = lock_timeout
        self.memory_limit = memory_limit or env.memory_limit
        if self.path.parent and not self.path.parent.exists():
            raise MissingFile(f"{self.path}: the folder {self.path.parent} does not exist")
        self._views = views.load([views.QUERIES_DIR, *self.queries])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def label(self) -> str:
        """How exports' cards name the store."""
        return self.path.name

    @property
    def spool_dir(self) -> Path:
        """Where the store's writers make what they learn durable before it is merged (``curate.spool``).

        Here, not on ``Store`` alone: a reader reports what waits there (``curate stats``).
        """
        real = self.path.resolve()  # one spool per file, whatever path or link named it
        return real.with_name(real.name + ".spool")

    def _connect(self, *, read_only: bool, wait: float | None = None) -> duckdb.DuckDBPyConnection:
        """A connection to the file. Read-write is for ``Store``'s writers and for a subclass's own
        private file (``LakeStore`` builds one); every reading door opens read-only."""

        def connect() -> duckdb.DuckDBPyConnection:
            con = duckdb.connect(str(self.path), read_only=read_only, config={"memory_limit": self.memory_limit})
            no_progress_bar(con)
            return con

        if read_only:
            timeout = None if wait == FOREVER else self.lock_timeout if wait is None else wait
            return self._wait_for_lock(connect, timeout, reader=True)
        return self._wait_for_lock(connect, wait, reader=False)

    def _wait_for_lock(self, opening: Callable[[], T], wait: float | None, *, reader: bool) -> T:
        """``opening()``, retried with jittered backoff (5 ms doubling to 0.2 s) while another
        process holds the file: forever (``wait`` None, saying every few seconds who holds it),
        or for ``wait`` seconds, then ``StoreLocked`` naming the holder."""
        started = time.monotonic()
        noticed = started
        delay = 0.005
        while True:
            try:
                return opening()
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc):  # not a DuckDB file, a folder, no permission, a full disk
                    raise StoreUnreadable(f"{self.path}: {exc}") from exc
                now = time.monotonic()
                if wait is not None and now - started >= wait:
                    if reader:
                        raise StoreLocked(
                            f"{self.path} is being written by {holder(exc)}, which kept it for more than "
                            f"{wait:g}s. Readers wait only for writers, and curate's writers hold the file "
                            "for moments at a time: an import of a large file holds it until the file is in. "
                            "Try again, or raise CURATE_LOCK_TIMEOUT."
                        ) from exc
                    raise StoreLocked(f"{self.path} is held by {holder(exc)}") from exc
                if wait is None and now - noticed >= WAIT_NOTICE_SECONDS:
                    noticed = now
                    log.warning("waiting for %s to let go of %s (%.0f s so far)", holder(exc), self.path,
                                now - started)
            time.sleep(delay * (0.5 + os.urandom(1)[0] / 255))
            delay = min(delay * 2, 0.2)

    @contextmanager
    def attached(self, con: duckdb.DuckDBPyConnection, alias: str = "store") -> Iterator[str]:
        """The store attached read-only to another connection ``con`` as ``alias``, detached on exit.

        For work that reads the store once and then goes on without it (an export's scratch
        database): the store is held only while attached. The views are created as ``con``'s
        temporary views; they read the store's tables while ``alias`` is the current database
        (``use alias``).
        """
        quoted = str(self.path).replace("'", "''")
        self._wait_for_lock(lambda: con.execute(f"attach '{quoted}' as \"{alias}\" (read_only)"),
                            self.lock_timeout, reader=True)
        try:
            (previous,) = con.execute("select current_database()").fetchone() or ("memory",)
            con.execute(f'use "{alias}"')
            try:
                self._prepare_reader(con)
            finally:
                con.execute(f'use "{previous}"')
            yield alias
        finally:
            con.execute(f'detach "{alias}"')

    def _prepare_reader(self, con: duckdb.DuckDBPyConnection) -> None:
        """Refuse a store whose schema is behind, then create the views in ``con`` alone."""
        behind = migrations.pending(con)
        if behind:
            raise StoreBehind(
                f"{self.path} was written by an older curate and lacks {len(behind)} schema "
                f"migration(s) ({', '.join(m.__name__ for m in behind)}): run `curate migrate --db "
                f"{self.path}` (or any writer: import, harvest, listen, submit) to apply them."
            )
        self.view_errors = views.install(con, self._views)

    def view_files(self) -> list[views.View]:
        """The view files in force: the shipped ones, then the ``queries`` folders' (later wins)."""
        return list(self._views)

    @contextmanager
    def read(self, *, wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection with the views, closed on exit. Changes nothing in the file.

        Waits for a writer to let go for ``wait`` seconds (default ``lock_timeout``), then
        ``StoreLocked``; never for another reader. ``wait=FOREVER`` waits as long as it takes,
        saying who holds the file, for reads that are a step of a writer's work. What the
        connection's queries raise is DuckDB's own: the caller ran them.
        """
        if not self.path.exists():
            raise MissingFile(f"{self.path}: no store here (a writer such as curate import creates one)")
        con = self._connect(read_only=True, wait=wait)
        try:
            self._prepare_reader(con)
            yield con
        finally:
            con.close()

    def arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """Run one read-only query and return its rows as an Arrow table (``QueryError`` if DuckDB refuses it)."""
        with self.read() as con, _user_query():
            return interruptible(con, lambda: con.sql(sql, params=params).to_arrow_table())

    query = arrow  # the name ``arrow`` had before; ``sql`` is the one that returns a ``Result``

    def unload(self, sql: str, path: str | os.PathLike[str], *, row_group_rows: int = 5000) -> int:
        """Copy the rows of ``sql`` (which may read the views) to the Parquet file ``path``, and let go.

        For a pass that computes in Python: the store is held read-only for the copy alone, which
        DuckDB does by itself; the pass then reads ``path`` (``pyarrow.parquet.ParquetFile``) one
        row group of ``row_group_rows`` rows at a time with nothing held, so its memory does not
        grow with the store. Rows keep the query's order. Returns the number of rows written.
        ``QueryError`` if DuckDB refuses ``sql``.
        """
        quoted = "'" + str(path).replace("'", "''") + "'"
        with self.read(wait=FOREVER) as con, _user_query():  # a pass's first step: it then writes, and writers wait
            ((written,),) = interruptible(con, lambda: con.execute(
                f"copy ({sql}) to {quoted} (format parquet, compression zstd, row_group_size {int(row_group_rows)})"
            ).fetchall())
        return int(written)

    def scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A temporary folder beside the store, removed on exit, for the files of ``unload``.

        Beside the store rather than in the system's temporary folder: what is unloaded can be as
        large as the store's messages, and /tmp is often a small in-memory file system.
        """
        return tempfile.TemporaryDirectory(prefix=f".{self.path.name}.", suffix=".unload", dir=self.path.parent)

    # -- the analyst's API: each call opens read-only, fetches, and lets go -----------------

    def sql(self, sql: str, params: list[Any] | None = None) -> Result:
        """Run one read-only query; ``.df()``, ``.pl()`` or ``.arrow()`` the result (``QueryError`` if refused)."""
        return Result(self.arrow(sql, params))

    def table(self, name: str) -> Result:
        """Every row of a view or table (``db.table("chat")``); ``QueryError`` if there is none."""
        return self.sql(f'select * from "{name.replace(chr(34), chr(34) * 2)}"')

    def views(self, *, count: bool = True) -> list[ViewInfo]:
        """The views, with what one row is and (``count``) how many rows each has now."""
        files = self.view_files()
        if not count:
            return [ViewInfo(v.name, v.description, v.path, None) for v in files]
        with self.read() as con:
            described = views.describe(con, files)
        return [ViewInfo(v.name, d, v.path, rows) for v, (_, d, rows) in zip(files, described, strict=True)]

    def snapshot(self, folder: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[Path]:
        """Write views (default: every one) as ``FOLDER/NAME.parquet``, to read with no lock at all.

        For long notebook sessions: read the files with pandas, polars or DuckDB while harvests
        and listeners keep writing the store. Each file is written aside and renamed into place,
        so a reader sees the old snapshot or the new one, never half of one. ``NoSuchName`` for a
        view that is not there; ``QueryError`` if DuckDB refuses a view's query as it runs.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        wanted = list(names) if names is not None else [v.name for v in self.view_files()]
        written = []
        with self.read() as con:
            present = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
            for name in wanted:
                if name not in present:
                    raise NoSuchName(f"{name}: no such view in {self.path}")
                target = out / f"{name}.parquet"
                partial = out / f".{name}.parquet.partial"
                quoted = str(partial).replace("'", "''")
                with _user_query():
                    copy = f"copy (select * from \"{name}\") to '{quoted}' (format parquet, compression zstd)"
                    interruptible(con, functools.partial(con.execute, copy))
                os.replace(partial, target)
                written.append(target)
        return written


class Store(ReadableStore):
    """A curate store in one DuckDB file, read (``ReadableStore``) and written.

    Writers wait for the file as long as it takes (``lock_timeout`` bounds only the readers).
    Creating a ``Store`` changes nothing in an existing file; a path with no file yet gets a new,
    migrated store.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = 30.0,
        memory_limit: str | None = None,
        queries: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        super().__init__(path, lock_timeout=lock_timeout, memory_limit=memory_limit, queries=queries)
        self._migrated = False
        if not self.path.exists():
            self._create()

    def _create(self) -> None:
        """Make the new store whole beside its path, then link it into place.

        A writer killed while migrating a new file would leave a store with part of its schema,
        which every reader then refuses; a store that appears only once migrated cannot. If another
        process links its own first, that one is kept: it is as new and as whole.
        """
        partial = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{threading.get_ident()}")
        try:
            con = duckdb.connect(str(partial), config={"memory_limit": self.memory_limit})
            try:
                migrations.apply(con)
            finally:
                con.close()
            fsync(partial)
            try:
                os.link(partial, self.path)
            except FileExistsError:
                pass
            fsync(self.path.parent)  # the new name survives a crash
        finally:
            partial.unlink(missing_ok=True)
            partial.with_name(partial.name + ".wal").unlink(missing_ok=True)
        self._migrated = True

    def migrate(self) -> list[str]:
        """Apply pending migrations (creating the file if need be); return the migrations that ran.

        A writer does this on its first connection; ``curate migrate`` does it on its own.
        """
        with _writer_lock(self.path):
            con = self._connect(read_only=False)
            try:
                return self._migrate(con)
            finally:
                con.close()

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        applied = migrations.apply(con)
        self._migrated = True
        return applied

    @contextmanager
    def write(self, *, wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, committed and closed on exit.

        Waits for the file as long as it takes (``wait``: at most that many seconds, then
        ``StoreLocked``). Writers in one process take turns: DuckDB would let two of its
        connections insert the same new id at once, and one row per id rests on one writer at a
        time. The connection has no views: a writer reads tables.
        """
        with _writer_lock(self.path):
            yield from self._write(wait)

    def _write(self, wait: float | None) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._connect(read_only=False, wait=wait)
        try:
            if not self._migrated:
                self._migrate(con)
            con.execute("begin transaction")
            try:
                yield con
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")
        finally:
            con.close()

    def session(self) -> WriteSession:
        """A read-write connection for several transactions in a row; close it promptly.

        While it is open, every other process waits for the file, so hold it for a bounded time.
        """
        return WriteSession(self)

    def ingest(self, batch: pa.Table, *, source: str) -> WriteCounts:
        """Store one batch of raw records in one transaction.

        ``batch`` has columns ``line`` (int64: where the record came from, e.g. its line number)
        and ``text`` (string: the record exactly as received). Every recognised generation is
        upserted; everything else becomes a ``rejects`` row. Returns what happened to each record.
        """
        with self.write() as con:
            return merge.ingest(con, batch, source=source)

    def ingest_texts(self, texts: list[str], *, source: str) -> WriteCounts:
        """Store raw records (HTTP bodies, say), numbered from 1 in the order given."""
        with self.write() as con:
            return merge.ingest_texts(con, texts, source=source)


class WriteSession:
    """The store held read-write by this process across transactions (see ``Store.session``)."""

    def __init__(self, store: Store) -> None:
        self._lock = _writer_lock(store.path)
        self._lock.acquire()
        try:
            self.con = store._connect(read_only=False)
            if not store._migrated:
                store._migrate(self.con)
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Let go of the file (and of this process's writer turn); may be called from any thread."""
        try:
            self.con.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store_at(
    path: str | os.PathLike[str] | None = None,
    *,
    queries: Sequence[str | os.PathLike[str]] | None = None,
    lock_timeout: float = 30.0,
) -> Store:
    """The store at ``path``, else at ``$CURATE_DB`` (else ``./curate.duckdb``).

    A function, not a method: every public name of ``Store`` either reads (``ReadableStore``) or
    writes, and the lake refuses the writers.
    """
    return Store(Settings.from_env(db=path).db, queries=queries, lock_timeout=lock_timeout)
