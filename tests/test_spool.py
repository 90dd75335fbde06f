"""The spool: frames made durable by one writer, merged once by whoever takes the file next."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from curate import merge, spool
from curate.stats import stats
from curate.store import Store
from curate.synthetic import generation_record

CURATE = str(Path(sys.executable).parent / "curate")


@pytest.fixture
def db(tmp_path: Path) -> Store:
    return Store(tmp_path / "s.duckdb", lock_timeout=5)


def body_frame(seed: int) -> bytes:
    """A spooled raw generation, as the listener and harvest write them."""
    record = json.dumps(generation_record(seed)).encode()
    return spool.encode({"op": "body", "source": "spool-test", "line": seed, "at": time.time()}, record)


def spooled(store: Store, seeds: range) -> Path:
    """A segment holding one body per seed, let go of by its writer (as if it had ended)."""
    writer = spool.SpoolWriter(store.spool_dir)
    writer.append([body_frame(seed) for seed in seeds])
    writer.close()
    return writer.path


def ids(seeds: range) -> set[str]:
    return {generation_record(seed)["id"] for seed in seeds}


def stored(store: Store) -> dict[str, int]:
    row = store.arrow("select count(*) as n, count(distinct id) as ids from generation_rows").to_pylist()[0]
    return {"n": row["n"], "ids": row["ids"]}


def stored_ids(store: Store) -> set[str]:
    return {r["id"] for r in store.arrow("select id from generation_rows").to_pylist()}


def merged_rows(store: Store) -> list[dict[str, Any]]:
    return store.arrow("select segment, merged_to, records from spool_merged order by segment").to_pylist()


def frame_offsets(path: Path) -> list[int]:
    """Where each frame of a segment starts."""
    data = path.read_bytes()
    offsets, at = [], len(spool.MAGIC)
    while at < len(data):
        offsets.append(at)
        length = int.from_bytes(data[at:at + 4], "little")
        at += 8 + length
    return offsets


CHILD_WRITER = """
import json, sys, time
from curate import spool
from curate.synthetic import generation_record
folder, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
writer = spool.SpoolWriter(folder)
writer.append([spool.encode({"op": "body", "source": "spool-test", "line": seed, "at": time.time()},
                            json.dumps(generation_record(seed)).encode()) for seed in range(n)])
print(writer.path, flush=True)
if mode == "stay":
    time.sleep(120)
"""


def child_writer(store: Store, n: int, mode: str) -> tuple[subprocess.Popen[str], Path]:
    """A process that spools ``n`` bodies, then exits (``exit``) or stays alive holding its segment (``stay``)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(store.spool_dir), str(n), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    proc.stdout.close()
    assert path.name.endswith(spool.SUFFIX), path
    return proc, path


# -- torn and corrupt frames -----------------------------------------------------------------------


def test_a_torn_last_frame_is_skipped_with_a_reason_and_the_frames_before_it_are_merged(
    db: Store, caplog: pytest.LogCaptureFixture
) -> None:
    proc, path = child_writer(db, 5, "exit")
    assert proc.wait(60) == 0
    last = frame_offsets(path)[-1]
    os.truncate(path, last + 8 + 20)  # the writer died while writing its fifth frame
    caplog.set_level(logging.WARNING, logger="curate.spool")
    result = spool.drain(db)
    assert result.records == 4 and result.segments_done == 1
    assert stored_ids(db) == ids(range(4))
    warnings = [r.getMessage() for r in caplog.records if r.name == "curate.spool"]
    assert len(warnings) == 1 and "cut short" in warnings[0] and path.name in warnings[0], warnings
    assert not path.exists()


def test_a_frame_with_a_bad_checksum_is_reported_the_frames_before_it_merged_and_the_file_kept_aside(
    db: Store, caplog: pytest.LogCaptureFixture
) -> None:
    path = spooled(db, range(5))
    third = frame_offsets(path)[2]
    original = path.read_bytes()
    with path.open("r+b") as segment:  # one flipped bit inside the third frame's payload
        segment.seek(third + 8 + 40)
        byte = segment.read(1)[0]
        segment.seek(third + 8 + 40)
        segment.write(bytes([byte ^ 0x10]))
    caplog.set_level(logging.WARNING, logger="curate.spool")
    result = spool.drain(db)
    assert result.records == 2
    assert stored_ids(db) == ids(range(2))
    warnings = [r.getMessage() for r in caplog.records if r.name == "curate.spool"]
    assert len(warnings) == 1 and "checksum" in warnings[0] and path.name in warnings[0], warnings
    kept = path.with_name(path.name + ".damaged")  # the frames after the bad one: for a person to recover
    assert not path.exists() and kept.read_bytes()[third + 8 + 41:] == original[third + 8 + 41:]
    assert spool.drain(db).records == 0  # and never merged again


# -- merged once, whatever happens around the commit ------------------------------------------------


@pytest.mark.parametrize("bookkeeping", ["kept", "lost"])
def test_a_segment_merged_then_put_back_leaves_each_generation_once(
    db: Store, tmp_path: Path, bookkeeping: str
) -> None:
    path = spooled(db, range(20))
    aside = tmp_path / "aside.seg"
    shutil.copyfile(path, aside)
    assert spool.drain(db).records == 20
    assert not path.exists()
    assert stored(db) == {"n": 20, "ids": 20}
    shutil.copyfile(aside, path)  # as if the deletion after the commit had never happened
    if bookkeeping == "lost":  # ... nor the spool_merged row: every frame is applied again
        with db.write() as con:
            con.execute("delete from spool_merged")
    spool.drain(db)
    assert stored(db) == {"n": 20, "ids": 20}
    assert not path.exists()
    assert stored_ids(db) == ids(range(20))


def test_a_merge_that_fails_half_way_commits_nothing_and_the_next_drain_merges_it_once(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = spooled(db, range(10))
    real_apply = merge.apply

    def failing(con: Any, records: Any) -> dict[str, int]:
        real_apply(con, records)
        raise RuntimeError("the disk went away half-way")

    monkeypatch.setattr(merge, "apply", failing)
    with pytest.raises(RuntimeError, match="half-way"):
        spool.drain(db)
    assert path.exists()
    assert stored(db) == {"n": 0, "ids": 0}
    assert merged_rows(db) == []
    monkeypatch.setattr(merge, "apply", real_apply)
    assert spool.drain(db).records == 10
    assert stored(db) == {"n": 10, "ids": 10}
    assert not path.exists()


def test_a_live_writers_segment_is_not_merged_until_its_process_is_gone(db: Store) -> None:
    proc, path = child_writer(db, 6, "stay")
    try:
        result = spool.drain(db)
        assert result.records == 0 and path.exists()
        assert stored(db) == {"n": 0, "ids": 0}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = spool.drain(db)
    assert (result.records, result.segments_done) == (6, 1)
    assert stored_ids(db) == ids(range(6))
    assert not path.exists()


# -- the writer ------------------------------------------------------------------------------------


def test_appends_from_many_threads_share_syncs_and_every_frame_reads_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads, per_thread = 8, 200
    syncs = 0
    real_fdatasync = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real_fdatasync(fd)
        time.sleep(0.003)  # a disk's flush takes about this long; this machine's may not

    monkeypatch.setattr(os, "fdatasync", counting)
    writer = spool.SpoolWriter(tmp_path / "spool")
    not_durable: list[tuple[int, int]] = []

    def append(thread: int) -> None:
        for i in range(per_thread):
            end = writer.append([spool.encode({"op": "reject", "source": "t", "reason": "r", "t": thread, "i": i},
                                              b"x" * (i % 50))])
            if writer.durable < end:  # append returned before its frame was synced
                not_durable.append((thread, i))

    workers = [threading.Thread(target=append, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    writer.close()
    appends = threads * per_thread
    assert not not_durable
    assert 0 < syncs < appends * 3 / 4, (syncs, appends)  # about 2.5 appends a sync here
    records, end, problem = spool.read_records(writer.path.read_bytes(), len(spool.MAGIC))
    assert problem is None and end == writer.path.stat().st_size and len(records) == appends
    for thread in range(threads):
        mine = [r for r in records if r.header["t"] == thread]
        assert [r.header["i"] for r in mine] == list(range(per_thread))
        assert [r.body for r in mine] == [b"x" * (i % 50) for i in range(per_thread)]


# -- what the operator sees ------------------------------------------------------------------------


def spool_row(store: Store) -> str:
    """The "waiting in the spool" row of ``curate stats --db STORE``."""
    env = {k: v for k, v in os.environ.items() if k != "CURATE_DB"} | {"COLUMNS": "250"}
    result = subprocess.run([CURATE, "stats", "--db", str(store.path)], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if "waiting in the spool" in line]
    return " ".join(line.replace("│", " ").split())  # the row, without the table's borders


def test_stats_reports_records_waiting_in_the_spool_until_they_are_merged(db: Store) -> None:
    proc, _ = child_writer(db, 7, "exit")  # a writer that ended before it could merge
    assert proc.wait(60) == 0
    overview = stats(db)
    assert (overview.spool_records, overview.spool_segments) == (7, 1)
    assert overview.spool_bytes > 0 and overview.spool_oldest_at is not None
    assert spool_row(db).startswith("waiting in the spool 7 record(s) in 1 segment(s), ")
    spool.drain(db)
    assert stats(db).spool_records == 0
    assert spool_row(db) == "waiting in the spool 0 (all merged)"


# -- a writer's own faults: a full disk, a failed rotation, a record it cannot apply ------------------


def test_an_append_the_disk_refuses_is_undone_and_the_appends_after_it_merge(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = spool.SpoolWriter(db.spool_dir)
    writer.append([body_frame(0)])
    real_write = os.write

    def full_disk(fd: int, data: Any) -> int:  # half the frame reaches the file, then ENOSPC
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.append([body_frame(1)])  # the listener answers this one 503
    monkeypatch.setattr(os, "write", real_write)
    writer.append([body_frame(2)])  # ... and acknowledges this one
    assert writer.path.stat().st_size == writer.durable
    spool.drain(db, writer)
    assert stored_ids(db) == ids(range(0, 3, 2))
    spool.finish(db, writer)
    assert spool.segments(db.spool_dir) == []


def test_a_rotation_that_fails_keeps_the_old_segment_current_and_loses_nothing(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = spool.SpoolWriter(db.spool_dir)
    writer.append([body_frame(0)])
    first = writer.path

    def no_room(folder: Path) -> tuple[Path, int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "_create", no_room)
    with pytest.raises(OSError):
        writer.rotate()
    monkeypatch.undo()
    writer.append([body_frame(1)])
    assert writer.path == first
    spool.drain(db, writer)
    assert stored_ids(db) == ids(range(2))
    spool.finish(db, writer)


def test_a_new_segment_is_locked_before_a_drain_can_see_its_name(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[Path]] = []
    real_flock = spool.fcntl.flock

    def flock(fd: int, operation: int) -> None:  # what another process's drain lists right now
        seen.append(spool.segments(db.spool_dir))
        real_flock(fd, operation)

    monkeypatch.setattr(spool.fcntl, "flock", flock)
    writer = spool.SpoolWriter(db.spool_dir)
    monkeypatch.undo()
    assert seen and seen[0] == []
    writer.append([body_frame(0)])
    spool.drain(db, writer)
    assert stored_ids(db) == ids(range(1))
    spool.finish(db, writer)


@pytest.mark.parametrize("header", [["a", "list"], {"op": "compact"}, {"op": "body", "source": "x", "line": 2**63},
                                    {"op": "ledger", "kind": "generation", "source": "x"}])
def test_a_record_that_cannot_be_applied_goes_to_rejects_and_stops_no_other_merge(db: Store, header: Any) -> None:
    # Its frame is whole (the checksum holds), so the frames after it, in its segment too, merge.
    bad = spool.SpoolWriter(db.spool_dir)
    payload = json.dumps(header).encode() + b"\n"
    bad.append([body_frame(0), spool._FRAME.pack(len(payload), spool.zlib.crc32(payload)) + payload, body_frame(4)])
    bad.close()
    good = spooled(db, range(1, 4))
    spool.drain(db)
    assert stored_ids(db) == ids(range(5))
    assert spool.segments(db.spool_dir) == [] and not list(db.spool_dir.glob("*.damaged"))
    (reject,) = db.arrow("select reason, raw from rejects").to_pylist()
    assert reject["reason"].startswith("a spooled record whose header") and reject["raw"] == payload.decode()
    assert not good.exists()


def test_two_paths_to_one_store_share_one_spool(db: Store, tmp_path: Path) -> None:
    link = tmp_path / "link.duckdb"
    link.symlink_to(db.path)
    assert Store(link).spool_dir == db.spool_dir


def test_a_record_the_store_cannot_merge_goes_to_rejects_and_never_stops_the_records_after_it(db: Store) -> None:
    # A 10 MB slow-group delivery (the listener's largest) takes the group merge past DuckDB's
    # memory limit: that record alone is kept in rejects with the reason, the others merge.
    item = generation_record(7) | {"stateMessage": "a" * 10_000_000}
    group = {"event": "slow-group.completed", "timestamp": "2026-12-05T00:00:00Z", "webhookId": "w",
             "data": {"groupId": "G1", "generations": [item]}}
    writer = spool.SpoolWriter(db.spool_dir)
    writer.append([body_frame(1),
                   spool.encode({"op": "body", "source": "spool-test", "line": 99}, json.dumps(group).encode()),
                   body_frame(2)])
    writer.close()
    result = spool.drain(db)
    assert stored_ids(db) == ids(range(1, 3))
    (reject,) = db.arrow("select line, reason, length(raw) as n from rejects").to_pylist()
    assert reject["line"] == 99 and "could not be merged" in reject["reason"] and reject["n"] > 10_000_000
    assert result.records == 3 and spool.segments(db.spool_dir) == []
