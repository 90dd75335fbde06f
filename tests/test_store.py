"""The store: one writer at a time, waiting politely for the lock and saying who holds it."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from curate.store import Store, StoreLocked
from curate.synthetic import generation_record
from tests.helpers import held


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


def test_ingest_per_line_reports_each_lines_outcome(store: Store) -> None:
    import pyarrow as pa

    from curate.merge import ingest

    first = json.dumps(generation_record(1))
    texts = [first, json.dumps(generation_record(2)), "{broken", "", first]
    with store.write() as con:
        counts = ingest(con, pa.table({"line": pa.array([10, 11, 12, 13, 14], pa.int64()), "text": texts}),
                        source="t", per_line=True)
    outcomes = {line: outcome for line, (outcome, _) in counts.outcomes.items()}
    assert outcomes == {10: "duplicate", 11: "stored", 12: "rejected", 13: "skipped", 14: "stored"}
    assert "not valid JSON" in (counts.outcomes[12][1] or "")


def test_settle_marks_finished_ids_done_and_records_unknown_ones(store: Store) -> None:
    from curate import ledger

    record = generation_record(1)
    store.ingest_texts([json.dumps(record)], source="t")
    with store.write() as con:
        ledger.add(con, [record["id"], "still-running"], kind="generation", source="submit")
        ledger.settle(con, [(record["id"], "Success"), ("not-finished", "Queued")],
                      [("grp-1", [("member-a", "Failed")])], source="webhook")
    rows = {r["id"]: r for r in store.query(
        "select id, kind, source, group_id, done_at is not null as done from ledger").to_pylist()}
    assert rows[record["id"]]["done"] and rows[record["id"]]["source"] == "submit"
    assert not rows["still-running"]["done"]
    assert not rows["not-finished"]["done"] and rows["not-finished"]["source"] == "webhook"
    assert rows["grp-1"]["kind"] == "group" and rows["grp-1"]["done"]
    assert rows["member-a"]["group_id"] == "grp-1" and rows["member-a"]["done"]
