"""The lake: one Apache Iceberg table of generations that several writers append to.

One DuckDB file takes one writing process. Past one machine, every harvester, listener and
importer keeps its own local store (its ledger, its merge, its crash safety) and also appends
the terminal generations it stored to one Iceberg table, through ``pyiceberg`` and a SQL catalog
(SQLite for one machine, PostgreSQL across machines). Analysts read the lake with DuckDB
(``curate.open(lake=...)``, in ``curate.lake.reader``).

What shapes this module (measured in ../shared/docs/iceberg.md, pyiceberg 0.12):

* The catalog takes about 10 commits a second whatever the number of writers, so writers
  commit large batches (5,000 rows by default).
* Concurrent commits conflict and are retried: the table asks pyiceberg for 20 retries, and a
  batch whose retries run out is released and sent again on the next push, never dropped.
* Iceberg does not enforce a unique id and upserts are copy-on-write, so writers only append;
  an id two writers both stored is in the table twice, and readers keep the latest terminal row
  per id (``DEDUP_ORDER``). Maintenance compacts those copies away.
* The local store records what it sent (``lake_sent``) only after the commit, as a claim first
  (``sending``) and ``committed`` after. A writer killed between the two leaves a claim; the next
  push looks for the batch in the table (each file carries its batch id in ``lake_batch``, and
  each snapshot in its summary) before sending it again.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from curate.config import DEFAULT_LAKE_BATCH_ROWS, Settings
from curate.errors import UsageError
from curate.records import COLUMNS

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import FileScanTask, Table

    from curate.store import Store

__all__ = [
    "DEDUP_ORDER", "DEFAULT_BATCH_ROWS", "DEFAULT_TABLE", "LAKE_COLUMNS", "Lake", "LakeConfig", "LakeError",
    "LakePusher", "PushSummary", "batch_rows_default", "current_files", "exited_here", "lake_rows_sql", "local_path",
    "masked", "pending_count", "push", "writer_name",
]

log = logging.getLogger("curate.lake")

DEFAULT_TABLE = "curate.generations"
DEFAULT_BATCH_ROWS = DEFAULT_LAKE_BATCH_ROWS
# Which copy of an id readers keep: the latest finished, then the latest stored, then a fixed
# order of bodies so that every reader picks the same one.
DEDUP_ORDER = "finished_at desc nulls last, updated_at desc, raw_hash desc"
# Only settled generations go to the lake: a Queued or In Progress row would be replaced later.
TERMINAL = "state in ('Success', 'Failed')"
# A claim older than this is taken to be abandoned by its writer even if its process seems alive.
CLAIM_LEASE = timedelta(minutes=10)

# The table's columns: the store's generation_rows (records.COLUMNS), then who sent each row.
LAKE_COLUMNS = (*COLUMNS, "lake_writer", "lake_batch", "pushed_at")

TABLE_PROPERTIES = {
    # Commits conflict under concurrency; with 20 retries none failed in the measurements.
    "commit.retry.num-retries": "20",
    "commit.retry.min-wait-ms": "20",
    "commit.retry.max-wait-ms": "2000",
    # A commit in flight never outlives this, so maintenance can take older unreferenced files
    # for orphans (its default margin is an hour).
    "commit.retry.total-timeout-ms": "600000",
    # Keeps the manifest count (and planning time) small as commits accumulate.
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # Compaction replaces files with files holding the same rows: it must not conflict with
    # the appends that go on beside it (curate's table is append-only apart from compaction).
    "write.delete.isolation-level": "snapshot",
    "write.parquet.compression-codec": "zstd",
}


class LakeError(UsageError, RuntimeError):
    """A lake that cannot be reached or used as asked (a bad URI, a missing catalog, a failed commit).

    Its message is masked (``masked``): whatever URI, DSN or driver message went into it, no
    password comes out.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(masked(a) if isinstance(a, str) else a for a in args))


def _schema() -> Any:
    from pyiceberg.schema import Schema
    from pyiceberg.types import DecimalType, LongType, NestedField, StringType, TimestamptzType

    types: dict[str, Any] = {
        "raw_hash": DecimalType(20, 0),  # DuckDB's ubigint: Iceberg has no unsigned type
        "dispatched_at": TimestamptzType(), "finished_at": TimestamptzType(),
        "first_seen_at": TimestamptzType(), "updated_at": TimestamptzType(), "pushed_at": TimestamptzType(),
        "prompt_tokens": LongType(), "completion_tokens": LongType(), "total_tokens": LongType(),
    }
    # Every field optional: Arrow batches are nullable, and the id is unique by convention only.
    return Schema(*(
        NestedField(i, name, types.get(name, StringType()), required=False)
        for i, name in enumerate(LAKE_COLUMNS, start=1)
    ))


def lake_rows_sql(source: str, extra: str = "") -> str:
    """A SELECT turning ``source`` (generation_rows' columns) into the lake's Arrow types.

    ``extra``: more select items (the lake's own columns), after the store's.
    """
    casts = {
        "raw": "raw::varchar", "raw_hash": "raw_hash::decimal(20, 0)",
        "request_built": "request_built::varchar", "response_built": "response_built::varchar",
    }
    items = [f"{casts.get(c, c)} as {c}" for c in COLUMNS] + ([extra] if extra else [])
    return f"select {', '.join(items)} from {source}"


@dataclass(frozen=True, repr=False)
class LakeConfig:
    """Where a lake is: its SQL catalog, its warehouse folder and its table.

    Written as one string (``--lake``, ``$CURATE_LAKE``):

    * ``DIR``: a lake on this machine, catalog ``DIR/catalog.db`` (SQLite), warehouse ``DIR/warehouse``;
    * ``postgresql://USER@HOST:PORT/DB?warehouse=/shared/lake``: a PostgreSQL catalog, for writers
      on several machines (the warehouse must be storage they all reach);
    * ``sqlite:////abs/catalog.db?warehouse=/abs/warehouse``.

    ``table=NAMESPACE.NAME`` (default ``curate.generations``) may be added to any of them, as a
    query parameter (for a folder: ``DIR?table=...``).
    """

    catalog_uri: str
    warehouse: str
    table: str = DEFAULT_TABLE
    folder: Path | None = None  # a lake given as a folder, which its first writer makes

    @classmethod
    def parse(cls, value: str | os.PathLike[str]) -> LakeConfig:
        text = os.fspath(value).strip()
        if not text:
            raise LakeError("the lake is empty: give a folder or a catalog URI (see curate lake --help)")
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if not scheme and _LIBPQ_DSN.match(text):
            raise LakeError(
                f"{text}: a libpq connection string is not a lake; write it as a URI: "
                "postgresql://USER@HOST:PORT/DB?warehouse=FOLDER_OR_URI"
            )
        if not scheme:
            path, _, query = text.partition("?")
            params = dict(parse_qsl(query))
            folder = Path(path).expanduser().resolve()  # made by the first writer, not here (Lake._connect)
            return cls(
                catalog_uri=f"sqlite:///{folder / 'catalog.db'}",
                warehouse=_file_uri(folder / "warehouse"),
                table=_table_name(params.get("table", DEFAULT_TABLE), text),
                folder=folder,
            )
        if not scheme.startswith(("postgres", "sqlite")):
            raise LakeError(
                f"{masked(text)}: the lake's catalog must be a folder, postgresql://... or sqlite:///... "
                "(pyiceberg's SQL catalog)"
            )
        parts = urlsplit(text)
        params = dict(parse_qsl(parts.query))
        warehouse = params.pop("warehouse", None)
        table = params.pop("table", DEFAULT_TABLE)
        if not warehouse:
            raise LakeError(f"{masked(text)}: add ?warehouse=FOLDER_OR_URI (where the table's files go)")
        if "://" not in warehouse:
            warehouse = _file_uri(Path(warehouse).expanduser().resolve())
        scheme = parts.scheme
        if scheme in ("postgresql", "postgres"):
            scheme = "postgresql+psycopg2"
        # Not urlunsplit: it turns sqlite:////abs/catalog.db into sqlite://abs/catalog.db.
        query = urlencode(params)
        catalog_uri = f"{scheme}://{parts.netloc}{parts.path}{'?' if query else ''}{query}"
        return cls(catalog_uri=catalog_uri, warehouse=warehouse, table=_table_name(table, text))

    @property
    def identity(self) -> str:
        """Names this lake in a local store's records: the catalog (no password) and the table."""
        return f"{masked(self.catalog_uri)}#{self.table}"

    @property
    def former_identity(self) -> str:
        """The identity earlier curates recorded: only a ``user:password@`` was masked, so a
        ``?password=`` (or ``token=``...) was stored as it was."""
        parts = urlsplit(self.catalog_uri) if "://" in self.catalog_uri else None
        uri = self.catalog_uri
        if parts is not None and parts.password is not None:
            uri = urlunsplit((parts.scheme, parts.netloc.replace(f":{parts.password}@", ":***@"), parts.path,
                              parts.query, parts.fragment))
        return f"{uri}#{self.table}"

    def __str__(self) -> str:
        return f"{self.identity} (warehouse {masked(self.warehouse)})"

    def __repr__(self) -> str:
        return f"LakeConfig({masked(self.catalog_uri)!r}, {masked(self.warehouse)!r}, {self.table!r})"


def _file_uri(path: Path) -> str:
    # Not Path.as_uri(): pyiceberg does not percent-decode, so a space would become "%20" on disk.
    return f"file://{path}"


def _table_name(name: str, given: str) -> str:
    if name.count(".") != 1 or not all(name.split(".")):
        raise LakeError(f"{masked(given)}: table must be NAMESPACE.NAME, not {name!r}")
    return name


# -- secrets in URIs, DSNs and messages ---------------------------------------------------------

MASK = "***"
# Query parameters and libpq keywords whose value is a secret, by a normalised name (lower case,
# no "_", "-", "."): any name containing one of these, or equal to one of _SECRET_NAMES.
_SECRET_PARTS = ("password", "passwd", "pwd", "secret", "token", "credential", "accesskey", "apikey", "privatekey",
                 "sessionkey", "signature", "authorization")
_SECRET_NAMES = frozenset({"key", "sig", "auth", "pass"})
# A URI in free text: a scheme, "://", then up to white space or a quote.
_URI = r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*"
# A URI's password, which may hold a single quote unencoded (RFC 3986 allows it, SQLAlchemy reads
# it): masked first, so that the quote does not end the URI before its password.
_QUOTED_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:\"<>]*:)[^\s/@\"<>]*@")
# A libpq keyword=value pair (value bare, or single-quoted with backslash escapes).
_PAIR = r"(?<![\w.\-])(?P<key>[A-Za-z_][\w.\-]*)(?P<eq>\s*=\s*)(?P<value>'(?:\\.|[^'\\])*'|[^\s'\"]*)"
# A lake given as libpq's "host=... dbname=..." (not a folder): keyword=value pairs, no "://".
_LIBPQ_DSN = re.compile(
    r"\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|sslpassword|connect_timeout|options)"
    r"\s*=", re.IGNORECASE)
_URI_OR_PAIR = re.compile(rf"(?P<uri>{_URI})|{_PAIR}")
_USERINFO = re.compile(r"(?P<user>[^:/@?#]*):(?P<password>[^@]*)@")


def _secret_name(name: str) -> bool:
    key = re.sub(r"[-_.\s]", "", unquote_plus(name)).lower()
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def masked(text: str) -> str:
    """``text`` with every secret of a URI, DSN or message in it replaced by ``***``.

    The one place curate masks what it prints, stores or puts in an error: a URI's
    ``user:password@``, its query parameters named like secrets (``password=``, ``sslpassword=``,
    ``token=``, ``access_key=``, ``secret=``...), URIs nested in its parameters
    (``warehouse=s3://key:secret@...``) and libpq ``key=value`` strings (``host=db password=pw``).
    Anything else is kept as written, so a masked URI still names its host, database and table.
    """
    return _URI_OR_PAIR.sub(_mask_match, _QUOTED_PASSWORD.sub(rf"\g<head>{MASK}@", text))


def _mask_match(match: re.Match[str]) -> str:
    if match["uri"] is not None:
        return _masked_uri(match["uri"])
    key, eq, value = match["key"], match["eq"], match["value"]
    if _secret_name(key):
        return f"{key}{eq}{MASK}" if value else match[0]
    return f"{key}{eq}{masked(value)}" if value else match[0]


def _masked_uri(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    # The password as SQLAlchemy reads it (``user:`` up to the first "@", "/" and "?" allowed),
    # and on to a later "@" of the host part, as urllib reads it.
    userinfo = _USERINFO.match(rest)
    if userinfo is not None:
        after = rest[userinfo.end():]
        host = re.split(r"[/?#]", after, maxsplit=1)[0]
        end = userinfo.end() + host.rfind("@") + 1
        rest = f"{userinfo['user']}:{MASK}@{rest[end:]}"
    path, question, query = rest.partition("?")
    query, hash_sign, fragment = query.partition("#")
    if not question:
        path, hash_sign, fragment = path.partition("#")
    pairs = []
    for pair in query.split("&") if question else []:
        name, eq, value = pair.partition("=")
        if eq and _secret_name(name):
            pair = f"{name}={MASK}"
        elif eq and masked(unquote_plus(value)) != unquote_plus(value):  # a URI or DSN with secrets inside
            pair = f"{name}={masked(unquote_plus(value))}"
        pairs.append(pair)
    return f"{scheme}{sep}{path}{question}{'&'.join(pairs)}{hash_sign}{masked(fragment)}"


def _unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not connect" in text or "connection refused" in text


def _driver_message(exc: BaseException) -> str:
    """The database driver's own words (SQLAlchemy's wrapper adds the SQL and a link)."""
    return str(getattr(exc, "orig", None) or exc).strip()


def _locked(exc: BaseException) -> bool:
    """SQLite's "database is locked": another process held the catalog's file past the wait."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and "database is locked" in str(exc)


def _is_creation_race(exc: BaseException) -> bool:
    """An error a writer creating the table may meet when others create it at the same moment."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchNamespaceError, TableAlreadyExistsError
    from sqlalchemy.exc import IntegrityError

    races = (IntegrityError, NamespaceAlreadyExistsError, NoSuchNamespaceError, TableAlreadyExistsError)
    return isinstance(exc, races) or _locked(exc)


def _is_commit_conflict(exc: BaseException) -> bool:
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    # An append whose starting snapshot was expired meanwhile is refused before it lands.
    stale = isinstance(exc, ValidationException) and "Cannot find starting snapshot" in str(exc)
    # A commit refused by a locked SQLite catalog did not land (its transaction rolled back).
    return isinstance(exc, CommitFailedException) or stale or _locked(exc)


def _sqlite_file(catalog_uri: str) -> Path | None:
    """The file of a SQLite catalog (``sqlite:////abs/catalog.db``), or None for another database."""
    if not catalog_uri.startswith("sqlite:///"):
        return None
    path = catalog_uri.removeprefix("sqlite:///").partition("?")[0]  # SQLAlchemy's: sqlite:////abs, sqlite:///rel
    return Path(path) if path and path != ":memory:" else None


class Lake:
    """A handle on the lake's table: created on first use, appended to with retries, planned for reading."""

    def __init__(self, config: LakeConfig | str | os.PathLike[str], *, read_only: bool = False) -> None:
        """``read_only``: a reader's handle, which refuses a lake whose SQLite catalog is not there
        rather than create it (a mistyped path would otherwise read as an empty lake)."""
        self.config = config if isinstance(config, LakeConfig) else LakeConfig.parse(config)
        self.read_only = read_only
        self._catalog: SqlCatalog | None = None

    def __repr__(self) -> str:
        return f"Lake({self.config.identity!r})"

    @property
    def catalog(self) -> SqlCatalog:
        if self._catalog is None:
            self._catalog = self._connect()
        return self._catalog

    def _connect(self) -> SqlCatalog:
        try:
            from pyiceberg.catalog.sql import SqlCatalog
            from sqlalchemy.exc import DBAPIError, SQLAlchemyError
        except ModuleNotFoundError as exc:
            raise LakeError(f"a lake needs {exc.name}: pip install 'curate[lake]'") from exc

        catalog_file = _sqlite_file(self.config.catalog_uri)
        if catalog_file is not None and not catalog_file.exists():
            if self.read_only:
                raise LakeError(f"{self.config.identity}: no lake here (no catalog at {catalog_file}); a writer "
                                "given --lake, or `curate lake push`, makes one")
            if self.config.folder is not None:
                self.config.folder.mkdir(parents=True, exist_ok=True)
        # Several writers starting at once may race to create the catalog's own tables.
        try:
            for attempt in Retrying(
                retry=retry_if_exception(lambda e: isinstance(e, DBAPIError) and not _unreachable(e)),
                wait=wait_random_exponential(multiplier=0.05, max=1), stop=stop_after_attempt(5), reraise=True,
            ):
                with attempt:
                    return SqlCatalog("curate", uri=self.config.catalog_uri, warehouse=self.config.warehouse)
        except ModuleNotFoundError as exc:
            raise LakeError(f"{self.config.identity}: the catalog needs {exc.name} (pip install it)") from exc
        except SQLAlchemyError as exc:
            what = "cannot reach the catalog" if _unreachable(exc) else "cannot use the catalog"
            raise LakeError(f"{self.config.identity}: {what}: {_driver_message(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Let go of the catalog's database connections."""
        if self._catalog is not None:
            self._catalog.engine.dispose()
            self._catalog = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> Table | None:
        """The table as the catalog has it now, or None if nothing was ever pushed to this lake."""
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.config.table)
        except NoSuchTableError:
            return None

    def table(self, *, create: bool = True) -> Table:
        """The table, reloaded from the catalog (created with its namespace if absent and ``create``)."""
        table = self.load()
        if table is not None:
            return table
        if not create:
            raise LakeError(f"{self.config.identity}: no such table yet (nothing was pushed to this lake)")
        try:
            for attempt in Retrying(
                retry=retry_if_exception(_is_creation_race),
                wait=wait_random_exponential(multiplier=0.05, max=1), stop=stop_after_attempt(8), reraise=True,
            ):
                with attempt:
                    return self._create()
        except Exception as exc:
            if not _is_creation_race(exc):
                raise
            raise LakeError(f"{self.config.identity}: could not create the table: {_driver_message(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self) -> Table:
        """Make the namespace and the table, or load what a writer that got there first made.

        Writers starting together on a new lake all find no table and all try to make one: the
        catalog takes the first namespace and table and refuses the others, with pyiceberg's
        already-exists errors or, when the rows of two creations meet in the database, with the
        database's unique-key error (pyiceberg converts it for tables but not for namespaces).
        """
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
        from sqlalchemy.exc import IntegrityError

        namespace = self.config.table.split(".")[0]
        try:
            self.catalog.create_namespace(namespace)
        except NamespaceAlreadyExistsError:
            pass
        except IntegrityError:
            if not self.catalog.namespace_exists(namespace):
                raise
        try:
            return self.catalog.create_table(self.config.table, schema=_schema(), properties=TABLE_PROPERTIES)
        except (TableAlreadyExistsError, IntegrityError):
            table = self.load()
            if table is None:
                raise
            return table

    def exists(self) -> bool:
        return self.load() is not None

    def append(self, rows: pa.Table, *, batch_id: str, attempts: int = 5) -> int:
        """Commit ``rows`` as one snapshot tagged with ``batch_id``; return the snapshot id.

        pyiceberg retries a conflicting commit itself (the table's 20 retries); past those, the
        whole append is tried again on a freshly loaded table, ``attempts`` times, before the
        conflict is raised (the caller keeps the rows and sends them on its next push).
        """
        arrow = rows.cast(self.arrow_schema())
        for attempt in Retrying(
            retry=retry_if_exception(_is_commit_conflict),
            wait=wait_random_exponential(multiplier=0.2, max=5), stop=stop_after_attempt(attempts), reraise=True,
        ):
            with attempt:
                table = self.table()
                table.append(arrow, snapshot_properties={"curate.batch": batch_id, "curate.writer": writer_name()})
                for snapshot in reversed(table.metadata.snapshots):
                    if snapshot.summary is not None and snapshot.summary.get("curate.batch") == batch_id:
                        return snapshot.snapshot_id
                raise AssertionError(f"batch {batch_id} committed but its snapshot is not in the table")
        raise AssertionError("unreachable")  # pragma: no cover

    def arrow_schema(self) -> pa.Schema:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        schema = schema_to_pyarrow(_schema(), include_field_ids=False)
        return pa.schema([f.with_type(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f
                          for f in schema])

    def committed_batches(self, batch_ids: Iterable[str]) -> set[str]:
        """Which of ``batch_ids`` are in the table: by snapshot summary, else by the rows' ``lake_batch``."""
        from pyiceberg.expressions import In

        wanted = set(batch_ids)
        table = self.load() if wanted else None
        if table is None:
            return set()
        found = {s.summary.get("curate.batch", "") for s in table.metadata.snapshots if s.summary is not None} & wanted
        rest = wanted - found
        if rest and table.current_snapshot() is not None:
            # Expired snapshots lose their summaries; the rows still say which batch they came in.
            where = In("lake_batch", rest)  # type: ignore[call-arg, arg-type]  # In.__new__ is not seen
            scanned = table.scan(row_filter=where, selected_fields=("lake_batch",)).to_arrow()
            found |= {b for b in scanned.column("lake_batch").to_pylist() if b is not None}
        return found

    def snapshot_id(self) -> int | None:
        """The current snapshot's id (None for an empty or absent table)."""
        return self.plan(files=False)[0]

    def data_files(self) -> list[str]:
        """Local paths of the Parquet files that make up the current snapshot."""
        return self.plan()[1]

    def plan(self, *, files: bool = True) -> tuple[int | None, list[str]]:
        """The current snapshot's id and (``files``) its Parquet files' local paths, from one load."""
        table = self.load()
        snapshot = table.current_snapshot() if table is not None else None
        if table is None or snapshot is None or not files:
            return (snapshot.snapshot_id if snapshot is not None else None), []
        return snapshot.snapshot_id, [local_path(task.file.file_path) for task in current_files(table)]


def current_files(table: Table) -> list[FileScanTask]:
    """The scan tasks of the table's current snapshot (none when it is empty).

    Refuses a table with delete files: curate never writes them, so another engine did, and
    reading or rewriting the data files without applying them would bring deleted rows back.
    """
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    tasks = list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    if any(task.delete_files for task in tasks):
        raise LakeError(f"{'.'.join(table.name())}: the table has delete files, which curate does not handle")
    return tasks


def local_path(location: str) -> str:
    """The local path pyiceberg's file IO uses for ``location`` (no percent-decoding, as it does)."""
    parts = urlsplit(location)
    if parts.scheme == "":
        return os.path.normpath(os.path.abspath(location))
    if parts.scheme == "file":
        return os.path.normpath(f"{parts.netloc}{parts.path}")
    raise LakeError(f"{location}: curate works with lakes on local or mounted storage only (file://)")


# -- pushing a local store's generations to the lake -------------------------------------------


@dataclass(frozen=True)
class PushSummary:
    """What one push did: rows and batches committed, and claims of dead writers resolved."""

    rows: int = 0
    batches: int = 0
    recovered: int = 0  # abandoned batches found already in the lake
    released: int = 0  # abandoned batches not in the lake, to be sent again
    pending: int = 0  # rows still waiting after the push


def writer_name() -> str:
    """``HOST:PID``: who claims a batch (and, with a suffix, who holds maintenance's lease)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def exited_here(holder: str) -> bool:
    """Whether ``holder`` (``HOST:PID``, maybe ``:SUFFIX``) names a process of this machine that has exited."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


_UNSENT = f"""
    from generation_rows g
    where g.{TERMINAL}
      and not exists (select 1 from lake_sent s
                      where s.lake = $lake and s.id = g.id and s.raw_hash = g.raw_hash)
"""


def pending_count(con: duckdb.DuckDBPyConnection, lake: LakeConfig) -> int:
    """Terminal generations of this store not yet committed (nor being sent) to ``lake``."""
    row = con.execute(f"select count(*) {_UNSENT}", {"lake": lake.identity}).fetchone()
    return int(row[0]) if row else 0


def _abandoned(con: duckdb.DuckDBPyConnection, lake: LakeConfig) -> list[str]:
    rows = con.execute(
        "select batch_id, any_value(claimed_by), min(claimed_at) from lake_sent "
        "where lake = ? and state = 'sending' group by batch_id",
        [lake.identity],
    ).fetchall()
    now = datetime.now(UTC)
    dead = []
    for batch_id, claimed_by, claimed_at in rows:
        if claimed_by == writer_name():
            continue  # this process's own batch in flight (another thread)
        if exited_here(str(claimed_by)) or (claimed_at is not None and now - claimed_at > CLAIM_LEASE):
            dead.append(batch_id)
    return dead


def _forget_former_identity(store: Store, config: LakeConfig) -> None:
    """Rename what an older curate recorded under this lake's unmasked name (a password in its
    query), so that the password leaves the store and nothing is sent twice."""
    former = config.former_identity
    if former == config.identity:
        return
    with store.read() as con:
        ((held,),) = con.execute("select count(*) from lake_sent where lake = ?", [former]).fetchall()
    if held:
        with store.write() as con:
            con.execute("update lake_sent set lake = ? where lake = ?", [config.identity, former]).fetchall()


def _recover(store: Store, lake: Lake) -> tuple[int, int]:
    """Settle batches claimed by writers that died before recording their commit."""
    with store.read() as con:
        dead = _abandoned(con, lake.config)
    if not dead:
        return 0, 0
    landed = lake.committed_batches(dead)
    with store.write() as con:
        for batch_id in dead:
            if batch_id in landed:
                con.execute(
                    "update lake_sent set state = 'committed', committed_at = now() where batch_id = ?", [batch_id]
                )
            else:
                con.execute("delete from lake_sent where batch_id = ?", [batch_id])
    log.info("lake: %d abandoned batch(es) already committed, %d to send again", len(landed), len(dead) - len(landed))
    return len(landed), len(dead) - len(landed)


def _mark_committed(con: duckdb.DuckDBPyConnection, landed: tuple[str, int]) -> None:
    batch_id, snapshot_id = landed
    con.execute(
        "update lake_sent set state = 'committed', snapshot_id = ?, committed_at = now() where batch_id = ?",
        [snapshot_id, batch_id],
    )


def _claim(
    store: Store, lake: LakeConfig, batch_rows: int, batch_id: str, landed: tuple[str, int] | None
) -> pa.Table:
    """Take up to ``batch_rows`` unsent rows, recorded as ``sending`` under ``batch_id``.

    ``landed`` (batch id, snapshot id), the batch committed just before, is recorded in the same
    transaction: one opening of the store per batch instead of two.
    """
    with store.write() as con:
        if landed is not None:
            _mark_committed(con, landed)
        # Unsent rows in storage order, picked by rowid alone and then fetched by a rowid range:
        # a batch is then a few contiguous row groups, and the long bodies of the rest of the
        # store are never read (selecting whole rows in the anti-join read all of them).
        con.execute(
            f"create or replace temp table _lake_pick as select g.rowid as r {_UNSENT} order by g.rowid limit $limit",
            {"lake": lake.identity, "limit": batch_rows},
        )
        low, high = con.execute("select min(r), max(r) from _lake_pick").fetchone() or (None, None)
        con.execute(
            "create or replace temp table _lake_claim as select * from generation_rows "
            "where rowid between $low and $high and rowid in (select r from _lake_pick)",
            {"low": low, "high": high},
        )
        con.execute(
            "insert into lake_sent (lake, id, raw_hash, batch_id, state, claimed_by, claimed_at) "
            "select ?, id, raw_hash, ?, 'sending', ?, now() from _lake_claim",
            [lake.identity, batch_id, writer_name()],
        )
        rows = con.sql(
            lake_rows_sql("_lake_claim", "$writer as lake_writer, $batch as lake_batch, now() as pushed_at"),
            params={"writer": writer_name(), "batch": batch_id},
        ).to_arrow_table()
        con.execute("drop table _lake_claim")
        con.execute("drop table _lake_pick")
    return rows


def batch_rows_default() -> int:
    """Rows per commit: ``$CURATE_LAKE_BATCH_ROWS``, else 5,000."""
    return Settings.from_env().lake_batch_rows


def push(
    store: Store,
    lake: Lake | LakeConfig | str,
    *,
    batch_rows: int | None = None,
    max_batches: int | None = None,
) -> PushSummary:
    """Append the store's terminal generations not yet in ``lake``, ``batch_rows`` per commit.

    ``batch_rows`` defaults to ``$CURATE_LAKE_BATCH_ROWS``, else 5,000: the catalog takes about
    10 commits a second from all writers together, so rows per commit is the lake's throughput.

    Safe to run from several threads or processes on one store, and after any crash: a row is
    claimed before it is sent and recorded as committed after, and a dead writer's claims are
    checked against the table before anything is sent again.
    """
    own = not isinstance(lake, Lake)
    handle = lake if isinstance(lake, Lake) else Lake(lake)
    batch_rows = batch_rows or batch_rows_default()
    try:
        _forget_former_identity(store, handle.config)
        recovered, released = _recover(store, handle)
        rows = batches = 0
        landed: tuple[str, int] | None = None  # committed to the lake, not yet recorded
        drained = False
        try:
            while max_batches is None or batches < max_batches:
                batch_id = uuid.uuid4().hex
                claimed = _claim(store, handle.config, batch_rows, batch_id, landed)
                landed = None
                if not claimed.num_rows:
                    drained = True
                    break
                try:
                    snapshot_id = handle.append(claimed, batch_id=batch_id)
                except BaseException:
                    # Not committed (or not known to be): release the claim so the rows go next
                    # time. A commit that landed anyway is found by its batch id, and only
                    # duplicates rows that readers deduplicate.
                    with store.write() as con:
                        con.execute("delete from lake_sent where batch_id = ?", [batch_id])
                    raise
                landed = (batch_id, snapshot_id)
                rows += claimed.num_rows
                batches += 1
                log.info("lake: committed %d rows in snapshot %d", claimed.num_rows, snapshot_id)
        finally:
            if landed is not None:
                with store.write() as con:
                    _mark_committed(con, landed)
        pending = 0
        if not drained:
            with store.read() as con:
                pending = pending_count(con, handle.config)
        return PushSummary(rows=rows, batches=batches, recovered=recovered, released=released, pending=pending)
    finally:
        if own:
            handle.close()


class LakePusher:
    """Pushes a store's new terminal generations to the lake from a background thread.

    For the long-running writers (``curate harvest --lake``, ``curate listen --lake``): every
    ``interval`` seconds it pushes what is pending, and on exit everything that is left. A push
    that fails (the catalog unreachable, conflicts past every retry) is logged and tried again at
    the next tick: the rows wait in the local store. A final push that fails raises ``LakeError``
    saying how many rows wait for ``curate lake push``.
    """

    def __init__(
        self,
        store: Store,
        lake: Lake | LakeConfig | str,
        *,
        interval: float | None = None,
        batch_rows: int | None = None,
    ) -> None:
        import threading

        self.store = store
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.interval = interval or Settings.from_env().lake_push_seconds
        self.batch_rows = batch_rows
        self.rows = 0
        self.batches = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="curate-lake-push", daemon=True)

    def _push_once(self) -> PushSummary:
        summary = push(self.store, self.lake, batch_rows=self.batch_rows)
        self.rows += summary.rows
        self.batches += summary.batches
        return summary

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._push_once()
            except Exception as exc:  # noqa: BLE001 - any failure leaves the rows for the next tick
                self.errors += 1
                self.last_error = exc
                log.warning("lake: push failed (rows wait in the local store, retried in %gs): %s",
                            self.interval, masked(str(exc)))

    def __enter__(self) -> Self:
        self.lake.table()  # an unreachable catalog fails now, not after an hour of harvesting
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._push_once()
        except Exception as error:
            if exc_type is not None:  # the writer's own failure is the one to report
                log.warning("lake: final push failed: %s", masked(str(error)))
                return
            with self.store.read() as con:
                waiting = pending_count(con, self.lake.config)
            raise LakeError(
                f"{waiting:,} generation(s) are stored locally but not in {self.lake.config.identity} "
                f"({error}); send them with: curate lake push"
            ) from error
        finally:
            self.lake.close()
