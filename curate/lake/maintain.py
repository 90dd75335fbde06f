"""Lake maintenance: expire old snapshots, compact small files, delete orphan files.

This module owns the upkeep of the lake's Iceberg table (``curate.lake.table``) while writers keep
appending to it. pyiceberg 0.12 offers only snapshot expiry, and that without retries
(../shared/docs/iceberg.md), so the rest is here:

* **Expiry.** Every commit copies the table's metadata, and so costs more with every snapshot
  kept; expiring old snapshots keeps commits fast. A snapshot is expired once it has not been the
  current one for ``expire_older_than``, so that an append or a reader that started from it
  recently still finds it.
* **Compaction.** Writers commit one small file per batch, and the same id may be in the table
  more than once. Small files of the current snapshot are merged in bins of about
  ``target_file_bytes``, keeping one row per id within a bin (the one readers would keep,
  ``DEDUP_ORDER``). Each bin is one overwrite snapshot that removes exactly its own files and
  adds the merged ones: files appended meanwhile are untouched, and the table's snapshot
  isolation for deletes lets the commit be retried past concurrent appends (unlike
  ``Table.overwrite(df, filter)``, which serializable validation starves while writers append).
* **Orphans.** pyiceberg never deletes data files or manifests. Files under the table's
  ``data/`` and ``metadata/`` folders that no remaining snapshot references are deleted once
  older than a margin, which protects the files of commits still in flight.
* **One maintainer at a time**, through a lease row in the catalog's own database.

It never changes a row: compaction rewrites rows, it does not edit them, and it drops only
extra copies of an id that readers would not show.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

import pyarrow as pa
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from curate.lake.table import (
    DEDUP_ORDER,
    Lake,
    LakeConfig,
    LakeError,
    current_files,
    exited_here,
    local_path,
    writer_name,
)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import FileScanTask, Table

__all__ = ["MaintainSummary", "maintain"]

log = logging.getLogger("curate.lake.maintain")

# One maintenance run holds the lease this long, never renewed: a run that would outlast it
# stops starting new work (see _Deadline) rather than overlap a successor.
LEASE = timedelta(minutes=15)
# Work is not started this close to the end of the lease.
LEASE_MARGIN = timedelta(minutes=2)
LEASE_TABLE = "curate_maintenance"
# Marks compaction snapshots, so that a snapshot's summary says what made it.
COMPACT_SUMMARY = {"curate.maintenance": "compact"}
# What pyiceberg logs before each of its own commit retries (pyiceberg/table/__init__.py).
_PYICEBERG_RETRY = "Commit failed due to a concurrent update"


@dataclass(frozen=True)
class MaintainSummary:
    """What one maintenance run did. Row and file counts are physical (every copy of an id)."""

    snapshots_before: int = 0
    snapshots_after: int = 0
    snapshots_expired: int = 0
    data_files_before: int = 0
    data_files_after: int = 0
    files_compacted: int = 0  # small files replaced by merged ones
    files_written: int = 0  # merged files committed
    bins_skipped: int = 0  # bins not committed: their files were removed meanwhile, or conflicts persisted
    rows_before: int = 0
    rows_after: int = 0  # includes rows appended while maintenance ran
    duplicates_removed: int = 0
    orphans_deleted: int = 0
    orphan_bytes: int = 0
    conflicts_retried: int = 0  # commits retried after a concurrent commit (pyiceberg's and ours)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def maintain(
    lake: Lake | LakeConfig | str,
    *,
    expire_older_than: timedelta = timedelta(minutes=30),
    compact: bool = True,
    target_file_bytes: int = 128 * 2**20,
    orphans: bool = True,
    orphans_older_than: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> MaintainSummary:
    """Expire snapshots, compact small files and delete orphan files, beside running writers.

    * ``expire_older_than``: snapshots that stopped being current longer ago than this are
      expired (the current one is always kept). Readers and appends that started from a
      snapshot need it for as long as they run.
    * ``compact``: merge the current snapshot's files smaller than ``target_file_bytes / 2``
      into files of about ``target_file_bytes``, keeping one row per id in each merge.
    * ``orphans``: delete files of the table that no snapshot references and that were last
      modified more than ``orphans_older_than`` ago (longer than any commit takes, since a
      commit in flight writes its files before it lands). Local lakes only (file://).
    * ``now``: the time the ages are measured from (default: the clock).

    Raises LakeError if the table does not exist, its files are not local (with ``orphans``),
    or another maintainer holds the lease.
    """
    if expire_older_than < timedelta(0) or orphans_older_than < timedelta(0):
        raise ValueError("expire_older_than and orphans_older_than must not be negative")
    if target_file_bytes < 2:
        raise ValueError(f"target_file_bytes must be at least 2, not {target_file_bytes}")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    started = time.monotonic()
    own = not isinstance(lake, Lake)
    handle = lake if isinstance(lake, Lake) else Lake(lake)
    try:
        table = handle.table(create=False)
        if orphans:
            local_path(table.metadata.location)  # refuse a remote lake before doing anything
        with _lease(handle) as deadline, _RetryCounter() as retries:
            before = _state(table)
            expired = _expire(handle, now - expire_older_than, retries)
            compacted = _compact(handle, target_file_bytes, retries, deadline) if compact else _Compacted()
            swept = (0, 0)
            if orphans and deadline.remaining():
                swept = _sweep(handle, (now - orphans_older_than).timestamp())
            elif orphans:
                log.warning("lake maintenance: the lease is running out; orphan files are left for the next run")
            after = _state(handle.table(create=False))
            conflicts = retries.count
        return MaintainSummary(
            snapshots_before=before.snapshots, snapshots_after=after.snapshots, snapshots_expired=expired,
            data_files_before=before.files, data_files_after=after.files,
            files_compacted=compacted.files_in, files_written=compacted.files_out, bins_skipped=compacted.skipped,
            rows_before=before.rows, rows_after=after.rows, duplicates_removed=compacted.duplicates,
            orphans_deleted=swept[0], orphan_bytes=swept[1], conflicts_retried=conflicts,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        if own:
            handle.close()


# -- state and retries ------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    snapshots: int
    files: int
    rows: int


def _name(table: Table) -> str:
    return ".".join(table.name())


def _state(table: Table) -> _State:
    tasks = current_files(table)
    return _State(len(table.metadata.snapshots), len(tasks), sum(t.file.record_count for t in tasks))


class _RetryCounter(logging.Filter):
    """Counts commit retries made by this thread: pyiceberg's own (from its log) and ours.

    A filter on pyiceberg's logger sees each record without changing where it goes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._thread = threading.get_ident()
        self._logger = logging.getLogger("pyiceberg.table")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self._thread and str(record.msg).startswith(_PYICEBERG_RETRY):
            self.count += 1
        return True

    def ours(self, state: RetryCallState) -> None:
        self.count += 1

    def __enter__(self) -> Self:
        self._logger.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeFilter(self)


def _is_conflict(exc: BaseException) -> bool:
    from pyiceberg.exceptions import CommitFailedException

    return isinstance(exc, CommitFailedException)


def _retrying(retries: _RetryCounter, attempts: int) -> Retrying:
    """Retries on a lost commit race, with jittered backoff so that retries do not collide again."""
    return Retrying(
        retry=retry_if_exception(_is_conflict), wait=wait_random_exponential(multiplier=0.1, max=3),
        stop=stop_after_attempt(attempts), before_sleep=retries.ours, reraise=True,
    )


# -- expiry -----------------------------------------------------------------------------------


def _expirable(table: Table, cutoff_ms: int) -> list[int]:
    """Snapshots that stopped being current before ``cutoff_ms``, except any a branch or tag holds.

    A snapshot stops being current when its child is committed. Its own timestamp is not the
    right age: after a quiet hour the current snapshot is an hour old, and an append that
    started from it just before another landed still needs it to retry its commit.
    """
    metadata = table.metadata
    protected = {ref.snapshot_id for ref in metadata.refs.values()}
    superseded: dict[int, int] = {}
    for snapshot in metadata.snapshots:
        parent = snapshot.parent_snapshot_id
        if parent is not None:
            superseded[parent] = min(superseded.get(parent, snapshot.timestamp_ms), snapshot.timestamp_ms)
    return [
        s.snapshot_id for s in metadata.snapshots
        if s.snapshot_id not in protected and superseded.get(s.snapshot_id, s.timestamp_ms) < cutoff_ms
    ]


def _expire(lake: Lake, cutoff: datetime, retries: _RetryCounter) -> int:
    from pyiceberg.utils.datetime import datetime_to_millis

    cutoff_ms = datetime_to_millis(cutoff)
    expired = 0
    # pyiceberg does not retry an expiry (it makes no snapshot): a writer committing between
    # the catalog read and its compare-and-swap fails it. Each try reloads the table.
    for attempt in _retrying(retries, attempts=10):
        with attempt:
            table = lake.table(create=False)
            ids = _expirable(table, cutoff_ms)
            if ids:
                table.maintenance.expire_snapshots().by_ids(ids).commit()
            expired = len(ids)
    if expired:
        log.info("lake maintenance: expired %d snapshot(s)", expired)
    return expired


# -- compaction -------------------------------------------------------------------------------


@dataclass
class _Compacted:
    files_in: int = 0
    files_out: int = 0
    duplicates: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class _Deadline:
    """When this run must stop starting work (a monotonic time): its lease is never renewed."""

    until: float

    def remaining(self) -> bool:
        return time.monotonic() < self.until


def _bins(tasks: Sequence[FileScanTask], target: int) -> list[list[FileScanTask]]:
    """First-fit decreasing by file size: bins of about ``target`` bytes, of two files or more."""
    bins: list[tuple[int, list[FileScanTask]]] = []
    for task in sorted(tasks, key=lambda t: (-t.file.file_size_in_bytes, t.file.file_path)):
        size = task.file.file_size_in_bytes
        for i, (total, members) in enumerate(bins):
            if total + size <= target:
                members.append(task)
                bins[i] = (total + size, members)
                break
        else:
            bins.append((size, [task]))
    return [members for _, members in bins if len(members) > 1]


def _compact(lake: Lake, target: int, retries: _RetryCounter, deadline: _Deadline) -> _Compacted:
    table = lake.table(create=False)
    small = [t for t in current_files(table) if t.file.file_size_in_bytes < target // 2]
    done = _Compacted()
    if len(small) < 2:
        return done
    isolation = table.properties.get("write.delete.isolation-level", "serializable")
    if isolation != "snapshot":
        # Serializable isolation refuses a commit that removes files if any file was added
        # meanwhile: every bin would be skipped while writers append (no harm, no progress).
        log.warning(
            "lake maintenance: %s has write.delete.isolation-level=%s; compaction only succeeds "
            "between appends (curate creates tables with 'snapshot')", _name(table), isolation,
        )
    # Each bin is read whole into memory: about target bytes of Parquet, several times that in Arrow.
    for members in _bins(small, target):
        if not deadline.remaining():
            log.warning("lake maintenance: the lease is running out; the remaining files wait for the next run")
            break
        rows_in = sum(t.file.record_count for t in members)
        rows = _deduplicated(_read(table, members))
        # Load the table again before writing: the commit then starts from a recent snapshot,
        # and retries against fewer concurrent ones.
        table = lake.table(create=False)
        written = _write(table, rows)
        if _replace(lake, table, [t.file for t in members], written, retries):
            done.files_in += len(members)
            done.files_out += len(written)
            done.duplicates += rows_in - rows.num_rows
        else:
            done.skipped += 1
            _delete_written(lake, written)
    log.info(
        "lake maintenance: compacted %d file(s) into %d, %d duplicate row(s) removed, %d bin(s) skipped",
        done.files_in, done.files_out, done.duplicates, done.skipped,
    )
    return done


def _read(table: Table, members: Sequence[FileScanTask]) -> pa.Table:
    """The rows of ``members`` in the table's current schema, through pyiceberg's own reader."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    scan = ArrowScan(table_metadata=table.metadata, io=table.io, projected_schema=table.schema(), row_filter=AlwaysTrue())
    return scan.to_table(members)


def _deduplicated(rows: pa.Table) -> pa.Table:
    """``rows`` with one row per id: the first under DEDUP_ORDER (rows without an id all stay)."""
    import duckdb

    position = "__curate_position"
    numbered = rows.append_column(position, pa.array(range(rows.num_rows), pa.int64()))
    con = duckdb.connect()
    try:
        con.register("bin_rows", numbered)
        # The position settles ties (identical copies), so that every run keeps the same row.
        keep = con.sql(
            f"select {position} from bin_rows "
            f"qualify id is null or row_number() over (partition by id order by {DEDUP_ORDER}, {position}) = 1 "
            f"order by {position}"
        ).to_arrow_table().column(0)
    finally:
        con.close()
    return rows if len(keep) == rows.num_rows else rows.take(keep)


def _write(table: Table, rows: pa.Table) -> list[DataFile]:
    """Write ``rows`` as the table's data files, as ``Transaction.append`` does, without committing."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    if not rows.num_rows:
        return []
    return list(_dataframe_to_data_files(table_metadata=table.metadata, df=rows, io=table.io, write_uuid=uuid.uuid4()))


def _replace(
    lake: Lake, table: Table, old: Sequence[DataFile], new: Sequence[DataFile], retries: _RetryCounter
) -> bool:
    """Commit one snapshot that removes ``old`` and adds ``new``; False if it cannot be done.

    pyiceberg retries the commit itself (the table's 20 retries, about 30 s): each retry
    refreshes the table, rebuilds the manifests from the new current snapshot (so files appended
    meanwhile are kept) and checks that every file in ``old`` is still there. Past those retries
    the commit is tried once more from a freshly loaded table before the bin is given up.
    """
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    try:
        for attempt in _retrying(retries, attempts=2):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    table = lake.table(create=False)
                # Leaving the inner block stages the snapshot, leaving the outer one commits it.
                with (
                    table.transaction() as tx,
                    tx.update_snapshot(snapshot_properties=COMPACT_SUMMARY).overwrite() as overwrite,
                ):
                    for data_file in old:
                        overwrite.delete_data_file(data_file)
                    for data_file in new:
                        overwrite.append_data_file(data_file)
    except ValidationException as exc:
        # Some of the files were removed by another commit ("Missing required files to delete",
        # "Data files were concurrently deleted"): their rows are wherever that commit put them.
        log.warning("lake maintenance: a bin was not compacted: %s", exc)
        return False
    except CommitFailedException as exc:
        log.warning("lake maintenance: a bin was not compacted, the table kept changing: %s", exc)
        return False
    return True


def _delete_written(lake: Lake, files: Sequence[DataFile]) -> None:
    """Delete files of a compaction that was not committed (pyiceberg leaves data files behind)."""
    table = lake.table(create=False)
    for data_file in files:
        try:
            table.io.delete(data_file.file_path)
        except OSError as exc:  # the orphan sweep will find it
            log.warning("lake maintenance: could not delete %s: %s", data_file.file_path, exc)


# -- orphan files -----------------------------------------------------------------------------


def _referenced(table: Table) -> set[str]:
    """Local paths of every file a remaining snapshot or the metadata still needs."""
    from pyiceberg.manifest import ManifestContent

    metadata = table.metadata
    paths = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    paths |= {stats.statistics_path for stats in metadata.statistics}
    paths |= {stats.statistics_path for stats in metadata.partition_statistics}
    manifests: dict[str, Any] = {}
    for snapshot in metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            manifests.setdefault(manifest.manifest_path, manifest)
    paths |= manifests.keys()
    for manifest in manifests.values():
        # Live entries only: a file some snapshot deleted is still live in that snapshot's
        # parent, if the parent remains; once it is expired nothing can read the file.
        entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        paths |= {entry.data_file.file_path for entry in entries}
        if manifest.content == ManifestContent.DELETES:  # curate writes none; lake.current_files says why
            raise LakeError(f"{_name(table)}: the table has delete files, which curate's maintenance does not handle")
    return {local_path(p) for p in paths}


def _sweep(lake: Lake, cutoff: float) -> tuple[int, int]:
    """Delete unreferenced files under the table's data/ and metadata/ modified before ``cutoff``."""
    table = lake.table(create=False)
    root = local_path(table.metadata.location)
    # List first, then read the references: a commit landing in between is then either in the
    # references or has files newer than the listing's cutoff.
    candidates: list[tuple[str, int]] = []
    for folder in ("data", "metadata"):
        for directory, _, names in os.walk(os.path.join(root, folder)):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                if stat.st_mtime < cutoff:
                    candidates.append((os.path.normpath(path), stat.st_size))
    if not candidates:
        return 0, 0
    table = lake.table(create=False)
    referenced = _referenced(table)
    # If the table's own metadata is not where the listing looked, the paths do not match and
    # every file would look unreferenced: delete nothing.
    current = table.current_snapshot()
    for needed in (table.metadata_location, current.manifest_list if current is not None else None):
        if needed is not None and not os.path.exists(local_path(needed)):
            raise LakeError(f"{lake.config.identity}: {needed} is not on this machine; orphan files left alone")
    deleted = deleted_bytes = 0
    for path, size in candidates:
        if path in referenced:
            continue
        try:
            os.remove(path)
        except FileNotFoundError:  # removed meanwhile (pyiceberg prunes old metadata files itself)
            continue
        deleted += 1
        deleted_bytes += size
    if deleted:
        log.info("lake maintenance: deleted %d orphan file(s), %d bytes", deleted, deleted_bytes)
    return deleted, deleted_bytes


# -- the lease --------------------------------------------------------------------------------


def _lease_table(metadata: sa.MetaData) -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        LEASE_TABLE, metadata,
        sa.Column("name", sa.String(255), primary_key=True),  # the table maintained
        sa.Column("holder", sa.String(255), nullable=False),  # host:pid:token
        sa.Column("expires_at", sa.DateTime(), nullable=False),  # naive UTC: SQLite has no time zones
    )


def _holder() -> str:
    return f"{writer_name()}:{uuid.uuid4().hex[:8]}"


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _take_lease(engine: sa.Engine, name: str, holder: str, now: datetime, lease: timedelta, label: str) -> None:
    """Insert the lease row, or take it over if expired (or its holder died here), in one transaction.

    The take-over is a compare-and-swap on the row read, so two maintainers cannot both take
    it: the loser's update matches no row, and the loser's insert breaks the primary key.
    """
    import sqlalchemy as sa

    table = _lease_table(sa.MetaData())
    until = now + lease
    try:
        with engine.begin() as con:
            row = con.execute(sa.select(table.c.holder, table.c.expires_at).where(table.c.name == name)).first()
            if row is None:
                con.execute(sa.insert(table).values(name=name, holder=holder, expires_at=until))
                return
            if row.expires_at <= now or exited_here(row.holder):
                taken = con.execute(
                    sa.update(table)
                    .where(table.c.name == name, table.c.holder == row.holder, table.c.expires_at == row.expires_at)
                    .values(holder=holder, expires_at=until)
                )
                if taken.rowcount == 1:
                    log.info("lake maintenance: took over the lease of %s (expired or dead)", row.holder)
                    return
    except sa.exc.IntegrityError:
        pass  # another maintainer inserted the row first
    with engine.connect() as con:
        row = con.execute(sa.select(table.c.holder, table.c.expires_at).where(table.c.name == name)).first()
    if row is None:  # released meanwhile: try again
        _take_lease(engine, name, holder, now, lease, label)
        return
    raise LakeError(
        f"{label}: maintenance already running by {row.holder} until {row.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    )


def _release_lease(engine: sa.Engine, name: str, holder: str) -> None:
    import sqlalchemy as sa

    table = _lease_table(sa.MetaData())
    try:
        with engine.begin() as con:
            con.execute(sa.delete(table).where(table.c.name == name, table.c.holder == holder))
    except sa.exc.SQLAlchemyError as exc:
        # Not worth hiding why the run ended: the lease runs out by itself.
        log.warning("lake maintenance: could not release the lease (it expires by itself): %s", exc)


def _create_lease_table(engine: sa.Engine) -> None:
    import sqlalchemy as sa

    metadata = sa.MetaData()
    _lease_table(metadata)
    try:
        metadata.create_all(engine, checkfirst=True)
    except sa.exc.SQLAlchemyError:
        # Two maintainers starting together may both try to create it.
        if not sa.inspect(engine).has_table(LEASE_TABLE):
            raise


@contextmanager
def _lease(lake: Lake, lease: timedelta = LEASE) -> Iterator[_Deadline]:
    """Hold the table's maintenance lease for the block; LakeError if another maintainer holds it."""
    import sqlalchemy as sa

    engine = lake.catalog.engine
    holder = _holder()
    name = lake.config.table
    _create_lease_table(engine)
    # SQLite answers "database is locked" when two processes write at once: try again.
    for attempt in Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, sa.exc.OperationalError)),
        wait=wait_random_exponential(multiplier=0.05, max=1), stop=stop_after_attempt(5), reraise=True,
    ):
        with attempt:
            _take_lease(engine, name, holder, _utcnow(), lease, lake.config.identity)
    try:
        yield _Deadline(time.monotonic() + (lease - min(LEASE_MARGIN, lease / 2)).total_seconds())
    finally:
        _release_lease(engine, name, holder)
