"""The store: one writer at a time, waiting politely for the lock and saying who holds it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from curate.store import Store, StoreLocked
from curate.synthetic import generation_record

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[3] == "ro")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextmanager
def held(path: Path, seconds: float, mode: str = "rw") -> Iterator[subprocess.Popen[str]]:
    """Another process holding the store's file, as a notebook or a harvester would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds), mode],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_writer_waits_for_another_process_to_let_go(store: Store) -> None:
    with held(store.path, 1.0):
        started = time.monotonic()
        counts = store.ingest_texts([json.dumps(generation_record(1))], source="poll")
    assert counts.stored == 1
    assert time.monotonic() - started >= 0.5


def test_writer_gives_up_with_a_message_naming_the_holder(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", lock_timeout=0.5)
    with held(store.path, 30.0) as proc, pytest.raises(StoreLocked) as caught:
        store.ingest_texts(["{}"], source="poll")
    message = str(caught.value)
    assert f"(PID {proc.pid})" in message
    assert "one writer or many readers" in message


def test_reader_waits_for_a_writer_then_reads(store: Store) -> None:
    with held(store.path, 1.0):
        rows = store.query("select count(*) as n from generations").to_pylist()
    assert rows == [{"n": 0}]


def test_readers_share_the_file(store: Store) -> None:
    with held(store.path, 30.0, mode="ro"):
        assert store.query("select 1 as one").to_pylist() == [{"one": 1}]


def test_a_failed_write_stores_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.write() as con:
        con.execute("insert into rejects values ('t', 1, 'r', 'x', md5('x'), now())")
        raise RuntimeError("crash mid-batch")
    assert store.query("select count(*) as n from rejects").to_pylist() == [{"n": 0}]


def test_store_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(tmp_path / "nope" / "s.duckdb")


def test_writers_in_one_process_take_turns_and_store_one_row(store: Store) -> None:
    body = json.dumps(generation_record(5))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: store.ingest_texts([body], source="poll"), range(8)))
    assert sum(r.stored for r in results) == 1
    assert store.query("select count(*) as n from generations").to_pylist() == [{"n": 1}]
