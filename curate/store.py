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
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import duckdb
import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from curate import migrations, records, views
from curate.records import WriteCounts

if TYPE_CHECKING:
    from curate.export import ExportResult

__all__ = [
    "FastPathRefused", "Result", "Store", "StoreLocked", "ViewInfo", "WriteCounts", "WriteSession", "fast_insert",
    "ingest", "ingest_texts", "merge_source", "no_progress_bar",
]

# What a conflicting lock looks like: "Could not set lock on file "...": Conflicting lock is held
# in /usr/bin/python3 (PID 4774)". Inside one process, a read-only open of a file held read-write
# fails differently ("different configuration"); both mean "someone else has it, wait".
_LOCK_MARKERS = ("Could not set lock", "different configuration than existing connections")
_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")

DEFAULT_MEMORY_LIMIT = "1GB"

T = TypeVar("T")

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


class StoreLocked(RuntimeError):
    """The store stayed locked by another process for longer than the retry budget."""


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, (duckdb.IOException, duckdb.ConnectionException)) and any(
        marker in str(exc) for marker in _LOCK_MARKERS
    )


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


def _env_queries() -> list[Path]:
    value = os.environ.get("CURATE_QUERIES") or ""
    return [Path(p) for p in value.split(os.pathsep) if p]


class Store:
    """A curate store in one DuckDB file.

    ``lock_timeout`` bounds how long an open waits for another process to let go of the file;
    ``memory_limit`` (default ``$CURATE_MEMORY_LIMIT``, else 1GB) caps DuckDB's memory;
    ``queries`` are folders of view files added to (or overriding) the shipped ones (default
    ``$CURATE_QUERIES``, folders separated by ``os.pathsep``).
    Creating a ``Store`` brings the file's schema and its views up to date (creating the file if
    need be). A broken view file does not stop it: its error is in ``view_errors``.
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
        self.queries = [Path(q) for q in queries] if queries is not None else _env_queries()
        self.view_errors: list[views.ViewError] = []
        self.lock_timeout = lock_timeout
        # DuckDB spills to disk past this, so an import's memory does not grow with its file.
        self.memory_limit = memory_limit or os.environ.get("CURATE_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"{self.path}: the folder {self.path.parent} does not exist")
        self.migrate()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def label(self) -> str:
        """How exports' cards name the store."""
        return self.path.name

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        def connect() -> duckdb.DuckDBPyConnection:
            con = duckdb.connect(str(self.path), read_only=read_only, config={"memory_limit": self.memory_limit})
            no_progress_bar(con)
            return con

        return self._retrying_lock(connect)

    def _retrying_lock(self, opening: Callable[[], T]) -> T:
        """``opening()``, retried while another process holds the file, for ``lock_timeout``."""
        retrying = Retrying(
            retry=retry_if_exception(_is_lock_error),
            wait=wait_random_exponential(multiplier=0.005, max=0.2),
            stop=stop_after_delay(self.lock_timeout),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return opening()
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

    @contextmanager
    def attached(self, con: duckdb.DuckDBPyConnection, alias: str = "store") -> Iterator[str]:
        """The store attached read-only to another connection ``con`` as ``alias``, detached on exit.

        For work that reads the store once and then goes on without it (an export's scratch
        database): the store is held only while attached.
        """
        quoted = str(self.path).replace("'", "''")
        self._retrying_lock(lambda: con.execute(f"attach '{quoted}' as \"{alias}\" (read_only)"))
        try:
            yield alias
        finally:
            con.execute(f'detach "{alias}"')

    def migrate(self) -> list[str]:
        """Apply pending migrations and refresh the views; return the migrations that ran."""
        files = self.view_files()
        with _writer_lock(self.path):
            con = self._connect(read_only=False)
            try:
                applied = migrations.apply(con)
                self.view_errors = views.refresh(con, files)
                return applied
            finally:
                con.close()

    def view_files(self) -> list[views.View]:
        """The view files in force: the shipped ones, then the ``queries`` folders' (later wins)."""
        return views.load([views.QUERIES_DIR, *self.queries])

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, committed and closed on exit.

        Writers in one process take turns: DuckDB would let two of its connections insert the
        same new id at once, and one row per id rests on one writer at a time.
        """
        with _writer_lock(self.path):
            yield from self._write()

    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
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

    def session(self) -> WriteSession:
        """A read-write connection for several transactions in a row; close it promptly.

        For a writer whose batches come back to back (``curate listen`` under load), where a
        reopen and a checkpoint per batch would cost more than the batch. While it is open,
        every other process waits for the file, so hold it for a bounded time.
        """
        return WriteSession(self)

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

    def ingest_texts(self, texts: list[str], *, source: str) -> WriteCounts:
        """Store raw records (HTTP bodies, say), numbered from 1 in the order given."""
        with self.write() as con:
            return ingest_texts(con, texts, source=source)

    def query(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """Run one read-only query and return its rows as an Arrow table."""
        with self.read() as con:
            return con.sql(sql, params=params).to_arrow_table()

    # -- the analyst's API: each call opens read-only, fetches, and lets go -----------------

    def sql(self, sql: str, params: list[Any] | None = None) -> Result:
        """Run one read-only query; ``.df()``, ``.pl()`` or ``.arrow()`` the result."""
        return Result(self.query(sql, params))

    def table(self, name: str) -> Result:
        """Every row of a view or table (``db.table("chat")``)."""
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
        so a reader sees the old snapshot or the new one, never half of one.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        wanted = list(names) if names is not None else [v.name for v in self.view_files()]
        written = []
        with self.read() as con:
            present = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
            for name in wanted:
                if name not in present:
                    raise KeyError(f"{name}: no such view in {self.path}")
                target = out / f"{name}.parquet"
                partial = out / f".{name}.parquet.partial"
                quoted = str(partial).replace("'", "''")
                con.execute(f"copy (select * from \"{name}\") to '{quoted}' (format parquet, compression zstd)")
                os.replace(partial, target)
                written.append(target)
        return written


    def export(self, source: str, folder: str | os.PathLike[str], **options: Any) -> ExportResult:
        """Export a view or SELECT to a Hugging Face dataset folder: ``db.export("chat", "out/")``.

        The options are ``curate.export.export``'s (``fmt``, ``where``, ``limit``, ``test_size``,
        ``split_by``, ``seed``, ``dedup``, ``strict``, ``license_id``).
        """
        from curate.export import export

        return export(self, source, folder, **options)


class WriteSession:
    """The store held read-write by this process across transactions (see ``Store.session``)."""

    def __init__(self, store: Store) -> None:
        self._lock = _writer_lock(store.path)
        self._lock.acquire()
        try:
            self.con = store._connect(read_only=False)
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


def ingest(
    con: duckdb.DuckDBPyConnection, batch: pa.Table, *, source: str, per_line: bool = False
) -> WriteCounts:
    """Merge the records of an Arrow ``batch`` (columns ``line``, ``text``) into ``con``'s store."""
    con.register("_curate_src", batch)
    counts = merge_source(con, source=source, per_line=per_line)
    con.unregister("_curate_src")
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
    return WriteCounts(stored=stored, lines=stored)
