"""Lake maintenance: expiry, compaction and orphan deletion, alone and beside running writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from curate.lake import maintain as lake_maintain
from curate.lake.maintain import MaintainSummary, maintain
from curate.lake.table import DEDUP_ORDER, LAKE_COLUMNS, Lake, LakeError, local_path, push
from curate.lake.table import current_files as current_tasks
from curate.store import Store
from curate.synthetic import generation_record

NO_EXPIRY = timedelta(days=365)


def stored(path: Path, records: Iterable[dict[str, Any]]) -> Store:
    store = Store(path, lock_timeout=5)
    store.ingest_texts([json.dumps(r) for r in records], source="test")
    return store


def lake_with(tmp_path: Path, seeds: range, *, batch_rows: int = 20) -> Path:
    """A folder lake holding generation_record(seed) for ``seeds``, ``batch_rows`` per commit."""
    folder = tmp_path / "lake"
    push(stored(tmp_path / f"s{seeds.start}-{seeds.stop}.duckdb", map(generation_record, seeds)), str(folder),
         batch_rows=batch_rows)
    return folder


def rows(folder: Path) -> pa.Table:
    with Lake(str(folder)) as lake:
        return lake.table().scan().to_arrow()


def id_counts(folder: Path) -> Counter[str]:
    return Counter(rows(folder).column("id").to_pylist())


def snapshot_count(folder: Path) -> int:
    with Lake(str(folder)) as lake:
        return len(lake.table().metadata.snapshots)


def table_dir(folder: Path) -> Path:
    return folder / "warehouse" / "curate" / "generations"


def current_files(folder: Path) -> set[str]:
    with Lake(str(folder)) as lake:
        return set(lake.data_files())


def files_under(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*") if p.is_file()}


def reader_view(table: pa.Table) -> list[dict[str, Any]]:
    """What a reader sees: the first row per id under DEDUP_ORDER, in id order."""
    con = duckdb.connect()
    try:
        con.register("lake_rows", table)
        kept = con.sql(
            f"select * from lake_rows qualify row_number() over (partition by id order by {DEDUP_ORDER}) = 1 "
            "order by id"
        ).to_arrow_table()
    finally:
        con.close()
    return kept.select(list(LAKE_COLUMNS)).to_pylist()


def id_batch(lake: Lake, ids: list[str]) -> pa.Table:
    schema = lake.arrow_schema()
    columns = {f.name: pa.nulls(len(ids), f.type) for f in schema}
    columns["id"] = pa.array(ids, pa.string())
    return pa.table(columns, schema=schema)


def test_expiry_keeps_recent_snapshots_and_the_current_one_and_every_row(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(60))  # 3 snapshots
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    time.sleep(0.01)
    push(stored(tmp_path / "later.duckdb", map(generation_record, range(60, 100))), str(folder), batch_rows=20)
    assert snapshot_count(folder) == 5

    # Snapshots 1 and 2 stopped being current before the cutoff; the 3rd was current until after it.
    report = maintain(str(folder), expire_older_than=timedelta(0), now=cutoff, compact=False, orphans=False)
    assert (report.snapshots_before, report.snapshots_expired, report.snapshots_after) == (5, 2, 3)
    assert id_counts(folder) == Counter(generation_record(i)["id"] for i in range(100))

    report = maintain(str(folder), expire_older_than=timedelta(0), compact=False, orphans=False)
    assert (report.snapshots_expired, report.snapshots_after) == (2, 1)
    assert id_counts(folder) == Counter(generation_record(i)["id"] for i in range(100))


def test_compaction_merges_small_files_and_keeps_every_id(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(120))
    assert len(current_files(folder)) == 6

    report = maintain(str(folder), expire_older_than=NO_EXPIRY, orphans=False)

    assert (report.data_files_before, report.data_files_after) == (6, 1)
    assert (report.files_compacted, report.files_written, report.duplicates_removed) == (6, 1, 0)
    assert report.rows_before == report.rows_after == 120
    assert id_counts(folder) == Counter(generation_record(i)["id"] for i in range(120))
    with Lake(str(folder)) as lake:
        summary = lake.table().current_snapshot().summary  # type: ignore[union-attr]
        assert summary is not None and summary.get("curate.maintenance") == "compact"


def test_compaction_keeps_the_copy_of_each_id_that_readers_keep(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(90), batch_rows=30)
    # Seeds 60-119 from another store: 30 ids now have two copies, and the second copy differs
    # (a later finish), so that which one survives matters.
    later = []
    for seed in range(60, 120):
        record = generation_record(seed)
        if record["finishedAt"] is not None:
            record["finishedAt"] = record["finishedAt"].replace("2026-", "2027-")
        later.append(record)
    push(stored(tmp_path / "b.duckdb", later), str(folder), batch_rows=30)
    before = rows(folder)
    assert before.num_rows == 150

    report = maintain(str(folder), expire_older_than=NO_EXPIRY, orphans=False)

    after = rows(folder)
    assert (report.duplicates_removed, report.rows_after, after.num_rows) == (30, 120, 120)
    assert set(id_counts(folder).values()) == {1}
    # The physical rows are now exactly what readers saw before.
    assert reader_view(after) == reader_view(before)
    finished = dict(zip(after.column("id").to_pylist(), after.column("finished_at").to_pylist(), strict=True))
    assert all(finished[generation_record(s)["id"]].year == 2027 for s in range(60, 90)
               if generation_record(s)["finishedAt"] is not None)


def test_compaction_commit_keeps_files_appended_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = lake_with(tmp_path, range(80))
    real_write = lake_maintain._write

    def write_while_another_writer_appends(table: Any, arrow: pa.Table) -> Any:
        # Lands after the compaction loaded the table it commits against: its first commit
        # attempt fails, and pyiceberg's retry must keep this file.
        with Lake(str(folder)) as writer:
            writer.append(id_batch(writer, ["appended-1", "appended-2"]), batch_id="racing")
        return real_write(table, arrow)

    monkeypatch.setattr(lake_maintain, "_write", write_while_another_writer_appends)
    report = maintain(str(folder), expire_older_than=NO_EXPIRY, orphans=False)

    assert report.conflicts_retried >= 1
    assert (report.files_compacted, report.files_written, report.bins_skipped) == (4, 1, 0)
    assert id_counts(folder) == Counter([generation_record(i)["id"] for i in range(80)] + ["appended-1", "appended-2"])
    assert len(current_files(folder)) == 2  # the merged file and the appended one


def test_compaction_skips_a_bin_whose_files_another_commit_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = lake_with(tmp_path, range(80))
    real_write = lake_maintain._write
    ours: list[str] = []

    def write_after_someone_else_compacted(table: Any, arrow: pa.Table) -> Any:
        # Another commit rewrites one of the bin's files first (as a second compactor would).
        with Lake(str(folder)) as other:
            fresh = other.table()
            victim = current_tasks(fresh)[0]
            copy = real_write(fresh, lake_maintain._read(fresh, [victim]))
            counter = lake_maintain._RetryCounter()
            assert lake_maintain._replace(other, fresh, [victim.file], copy, counter)
        written = real_write(table, arrow)
        ours.extend(f.file_path for f in written)
        return written

    monkeypatch.setattr(lake_maintain, "_write", write_after_someone_else_compacted)
    report = maintain(str(folder), expire_older_than=NO_EXPIRY, orphans=False)

    assert (report.files_compacted, report.files_written, report.bins_skipped) == (0, 0, 1)
    assert id_counts(folder) == Counter(generation_record(i)["id"] for i in range(80))
    assert ours and not any(os.path.exists(local_path(p)) for p in ours)


def test_orphan_files_are_deleted_only_past_the_margin_and_referenced_files_never(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(80))
    data, metadata = table_dir(folder) / "data", table_dir(folder) / "metadata"
    stray = data / "stray.parquet"
    pq.write_table(pa.table({"id": ["x"]}), stray)
    stray_metadata = metadata / "00099-stray.metadata.json"
    stray_metadata.write_text("{}")
    referenced = files_under(table_dir(folder))  # everything but the strays is referenced
    referenced -= {str(stray), str(stray_metadata)}
    stray_bytes = stray.stat().st_size + stray_metadata.stat().st_size

    report = maintain(str(folder), expire_older_than=NO_EXPIRY, compact=False)
    assert report.orphans_deleted == 0 and stray.exists() and stray_metadata.exists()

    # Everything is old now, referenced or not: only the strays go.
    two_hours_ago = time.time() - 7200
    for path in files_under(table_dir(folder)):
        os.utime(path, (two_hours_ago, two_hours_ago))
    report = maintain(str(folder), expire_older_than=NO_EXPIRY, compact=False)

    assert (report.orphans_deleted, report.orphan_bytes) == (2, stray_bytes)
    assert not stray.exists() and not stray_metadata.exists()
    assert files_under(table_dir(folder)) == referenced
    assert id_counts(folder) == Counter(generation_record(i)["id"] for i in range(80))


def test_files_replaced_by_compaction_are_deleted_once_no_snapshot_needs_them(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(80))
    small = current_files(folder)
    assert len(small) == 4

    maintain(str(folder), expire_older_than=timedelta(0), orphans_older_than=timedelta(0))
    # Compacted away, but the snapshot before the compaction still reads them.
    assert all(os.path.exists(p) for p in small)

    # Expired now, but written moments ago: inside the margin.
    report = maintain(str(folder), expire_older_than=timedelta(0))
    assert report.snapshots_expired == 1 and all(os.path.exists(p) for p in small)

    report = maintain(str(folder), now=datetime.now(UTC) + timedelta(hours=2))
    assert report.orphans_deleted >= 4 and not any(os.path.exists(p) for p in small)
    assert files_under(table_dir(folder) / "data") == current_files(folder)
    assert id_counts(folder) == Counter(generation_record(i)["id"] for i in range(80))


def test_a_second_maintainer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(10))
    refused = pytest.raises(LakeError, match=r"maintenance already running by .*:\d+:\w+ until \d{4}-")
    with Lake(str(folder)) as first, lake_maintain._lease(first), refused:
        maintain(str(folder))
    assert maintain(str(folder)).snapshots_after == 1  # released when the first finished


def expire_lease(lake: Lake, holder: str) -> sa.Table:
    """Leave a lease of ``holder`` that ran out a second ago, as a maintainer that died would."""
    engine = lake.catalog.engine
    lake_maintain._create_lease_table(engine)
    leases = sa.Table(lake_maintain.LEASE_TABLE, sa.MetaData(), autoload_with=engine)
    with engine.begin() as con:
        con.execute(sa.insert(leases).values(
            name=lake.config.table, holder=holder,
            expires_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1),
        ))
    return leases


def test_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    folder = lake_with(tmp_path, range(10))
    with Lake(str(folder)) as lake:
        leases = expire_lease(lake, "elsewhere:1:crashed")
        maintain(lake)
        with lake.catalog.engine.connect() as con:
            assert con.execute(sa.select(leases)).all() == []  # taken over, then released


def test_maintaining_a_lake_without_a_table_says_so(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="no such table"):
        maintain(str(tmp_path / "empty"))
    with pytest.raises(LakeError, match="local"):
        local_path("s3://bucket/warehouse/curate/generations")


# -- writers and a maintainer at once ----------------------------------------------------------

WRITER = r"""
import sys, time
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from curate.lake.table import Lake

folder, name, seconds, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
lake = Lake(folder)
schema = lake.arrow_schema()
end = time.monotonic() + seconds
number = 0
with open(out, "a", encoding="utf-8") as log:
    while time.monotonic() < end:
        batch = f"{name}-{number}"
        columns = {f.name: pa.nulls(100, f.type) for f in schema}
        columns["id"] = pa.array([f"{batch}-{i}" for i in range(100)], pa.string())
        columns["raw"] = pa.array(["x" * 300] * 100, pa.string())
        started = time.monotonic()
        try:
            lake.append(pa.table(columns, schema=schema), batch_id=batch)
        except ValidationException as exc:
            # The snapshot this append started from was expired under it (expire_older_than=0).
            # pyiceberg guarantees the append did not land: send the same batch again.
            print(f"again {batch} {exc}", file=log, flush=True)
            continue
        except CommitFailedException as exc:  # did not land either
            print(f"failed {batch} {exc}", file=log, flush=True)
        else:
            print(f"ok {batch} {time.monotonic() - started:.3f}", file=log, flush=True)
        number += 1
        time.sleep(0.3)
lake.close()
"""


def committed_ids(log: Path) -> list[str]:
    return [f"{line.split()[1]}-{i}" for line in log.read_text().splitlines() if line.startswith("ok ")
            for i in range(100)]


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_maintenance_beside_two_writers_loses_no_committed_row(tmp_path: Path) -> None:
    folder = tmp_path / "lake"
    with Lake(str(folder)) as lake:
        lake.table()  # created once, before the writers race for it
    logs = [tmp_path / f"writer{n}.log" for n in range(2)]
    errors = [tmp_path / f"writer{n}.err" for n in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    for n in range(2):
        with errors[n].open("wb") as stderr:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WRITER, str(folder), f"w{n}", "8", str(logs[n])], stderr=stderr,
            ))
    reports: list[tuple[bool, MaintainSummary]] = []
    deadline = time.monotonic() + 90
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            report = maintain(
                # The margin must exceed the longest commit (a writer's files wait on disk for it).
                str(folder), expire_older_than=timedelta(0), orphans_older_than=timedelta(seconds=4),
                target_file_bytes=2**20,
            )
            reports.append((any(p.poll() is None for p in procs), report))
    finally:
        wait_all(procs, 30)
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err.read_text()[-3000:]

    expected = Counter(committed_ids(logs[0]) + committed_ids(logs[1]))
    assert all(len(committed_ids(log)) >= 3 * 100 for log in logs), "the writers barely wrote"
    assert any(running and r.files_compacted for running, r in reports), "no compaction while writers ran"
    # Every committed id exactly once: nothing lost, nothing doubled, no failed batch visible.
    assert id_counts(folder) == expected

    # With nothing in flight, everything left over goes; every file the table needs is kept.
    for _ in range(2):
        maintain(str(folder), expire_older_than=timedelta(0), orphans_older_than=timedelta(0), target_file_bytes=2**20)
    assert files_under(table_dir(folder) / "data") == current_files(folder)
    assert id_counts(folder) == expected


def test_the_lease_and_maintenance_work_on_a_postgresql_catalog(tmp_path: Path, postgres_url: str) -> None:
    uri = f"{postgres_url}?warehouse={tmp_path / 'warehouse'}"
    with Lake(uri) as lake:
        for n in range(3):
            lake.append(id_batch(lake, [f"{n}-a", f"{n}-b", "same"]), batch_id=f"b{n}")
    refused = pytest.raises(LakeError, match="maintenance already running by")
    with Lake(uri) as first, lake_maintain._lease(first), refused:
        maintain(uri)
    with Lake(uri) as lake:
        expire_lease(lake, "elsewhere:1:crashed")
        report = maintain(lake, expire_older_than=timedelta(0), orphans_older_than=timedelta(0))

    assert (report.files_compacted, report.duplicates_removed, report.rows_after) == (3, 2, 7)
    with Lake(uri) as lake:
        assert sorted(lake.table().scan().to_arrow().column("id").to_pylist()) == [
            "0-a", "0-b", "1-a", "1-b", "2-a", "2-b", "same"]
