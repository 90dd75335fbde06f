"""The store: one writer at a time, waiting politely for the lock and saying who holds it.

Writers wait for the file as long as it takes (or ``wait`` seconds); readers wait for a writer
at most ``lock_timeout`` seconds, and never for each other.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from curate import store as store_module
from curate.store import Store, StoreLocked
from curate.synthetic import generation_record
from tests.helpers import held


def test_writer_waits_for_another_process_to_let_go(store: Store) -> None:
    with held(store.path, 1.0):
        started = time.monotonic()
        counts = store.ingest_texts([json.dumps(generation_record(1))], source="poll")
    assert counts.stored == 1
    assert time.monotonic() - started >= 0.5


def test_writer_waits_past_the_readers_lock_timeout(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", lock_timeout=0.2)  # bounds readers only
    with held(store.path, 1.5):
        started = time.monotonic()
        counts = store.ingest_texts([json.dumps(generation_record(1))], source="poll")
    assert counts.stored == 1
    assert time.monotonic() - started >= 1.0


def test_a_waiting_writer_says_every_few_seconds_who_holds_the_file(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store_module, "WAIT_NOTICE_SECONDS", 0.2)
    with caplog.at_level(logging.WARNING, logger="curate.store"), held(store.path, 1.5) as proc:
        store.ingest_texts([json.dumps(generation_record(1))], source="poll")
    notices = [r.getMessage() for r in caplog.records if r.name == "curate.store"]
    assert len(notices) >= 2
    assert all(re.fullmatch(rf"waiting for .+ \(PID {proc.pid}\) to let go of {re.escape(str(store.path))} "
                            r"\(\d+ s so far\)", n) for n in notices), notices


def test_writer_told_how_long_to_wait_gives_up_naming_the_holder(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", lock_timeout=30)
    with held(store.path, 30.0) as proc, pytest.raises(StoreLocked) as caught:
        started = time.monotonic()
        with store.write(wait=0.5):
            pass
    assert 0.5 <= time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(f"{store.path} is held by ") and f"(PID {proc.pid})" in message


def test_reader_gives_up_on_a_writer_after_lock_timeout_naming_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", lock_timeout=0.5)
    with held(store.path, 30.0) as proc, pytest.raises(StoreLocked) as caught:
        started = time.monotonic()
        store.sql("select 1")
    assert 0.5 <= time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(f"{store.path} is being written by ") and f"(PID {proc.pid})" in message
    assert "more than 0.5s" in message


def test_reader_waits_for_a_writer_then_reads(store: Store) -> None:
    with held(store.path, 1.0):
        rows = store.arrow("select count(*) as n from generations").to_pylist()
    assert rows == [{"n": 0}]


def test_readers_share_the_file(store: Store) -> None:
    with held(store.path, 30.0, mode="ro"):
        assert store.arrow("select 1 as one").to_pylist() == [{"one": 1}]


def test_a_failed_write_stores_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.write() as con:
        con.execute("insert into rejects values ('t', 1, 'r', 'x', md5('x'), now())")
        raise RuntimeError("crash mid-batch")
    assert store.arrow("select count(*) as n from rejects").to_pylist() == [{"n": 0}]


def test_store_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(tmp_path / "nope" / "s.duckdb")


def test_writers_in_one_process_take_turns_and_store_one_row(store: Store) -> None:
    body = json.dumps(generation_record(5))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: store.ingest_texts([body], source="poll"), range(8)))
    assert sum(r.stored for r in results) == 1
    assert store.arrow("select count(*) as n from generations").to_pylist() == [{"n": 1}]


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
    rows = {r["id"]: r for r in store.arrow(
        "select id, kind, source, group_id, done_at is not null as done from ledger").to_pylist()}
    assert rows[record["id"]]["done"] and rows[record["id"]]["source"] == "submit"
    assert not rows["still-running"]["done"]
    assert not rows["not-finished"]["done"] and rows["not-finished"]["source"] == "webhook"
    assert rows["grp-1"]["kind"] == "group" and rows["grp-1"]["done"]
    assert rows["member-a"]["group_id"] == "grp-1" and rows["member-a"]["done"]


def test_attached_gives_another_connection_the_stores_tables_and_views_read_only(store: Store) -> None:
    store.ingest_texts([json.dumps(generation_record(1))], source="poll")
    con = duckdb.connect()
    try:
        with store.attached(con, "s") as alias:
            assert alias == "s"
            con.execute("use s")
            assert con.execute("select count(*) from chat").fetchall() == [(1,)]
            with pytest.raises(duckdb.Error, match="read-only"):
                con.execute("delete from rejects")
            con.execute("use memory")
        assert "s" not in {r[0] for r in con.execute("select database_name from duckdb_databases()").fetchall()}
    finally:
        con.close()
    assert store.arrow("select count(*) as n from generations").to_pylist() == [{"n": 1}]


def test_a_new_path_gets_a_migrated_store_and_opening_an_existing_one_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    assert not path.exists()
    Store(path)
    assert path.exists() and Store(path).migrate() == []
    before = path.read_bytes()
    Store(path, queries=[])
    assert path.read_bytes() == before
