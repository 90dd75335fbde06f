"""The analyst's side: curate.open() in a notebook, views on each read, snapshots, and never a lock fight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curate
from curate.store import Store
from curate.synthetic import generation_record
from tests.helpers import held

CURATE = str(Path(sys.executable).parent / "curate")


@pytest.fixture
def db(tmp_path: Path) -> Store:
    store = curate.open(tmp_path / "curate.duckdb", lock_timeout=5)
    store.ingest_texts([json.dumps(generation_record(i)) for i in range(20)], source="test")
    return store


def test_sql_result_converts_to_pandas_polars_and_arrow(db: Store) -> None:
    result = db.sql("select state, count(*) as n from generations group by all order by state")
    assert isinstance(result.arrow(), pa.Table)
    assert isinstance(result.df(), pd.DataFrame) and list(result.df().columns) == ["state", "n"]
    assert isinstance(result.pl(), pl.DataFrame) and result.pl()["n"].sum() == 20
    assert len(result) == result.arrow().num_rows


def test_table_reads_a_view_whole(db: Store) -> None:
    chat = db.table("chat")
    successes = db.sql("select count(*) as n from generations where state = 'Success'").to_pylist()[0]["n"]
    assert len(chat) == successes and "messages" in chat.columns


def test_views_lists_each_view_with_what_a_row_is_and_its_rows(db: Store) -> None:
    infos = {info.name: info for info in db.views()}
    assert {"chat", "conversations", "failures", "usage", "duplicates"} <= set(infos)
    assert infos["chat"].description.startswith("One row per")
    assert infos["failures"].rows == db.sql("select count(*) as n from failures").to_pylist()[0]["n"]


def test_a_new_store_reads_with_every_view(tmp_path: Path) -> None:
    store = curate.open(tmp_path / "fresh.duckdb")
    names = {r["view_name"] for r in store.arrow(
        "select view_name from duckdb_views() where not internal").to_pylist()}
    assert {"generations", "chat", "conversations", "failures", "usage", "duplicates"} <= names


def test_a_broken_user_view_is_reported_by_file_and_line_and_the_rest_work(db: Store, tmp_path: Path) -> None:
    folder = tmp_path / "views"
    folder.mkdir()
    (folder / "mine.sql").write_text("-- my view\n\nselect id,\n       no_such_column\nfrom generations\n")
    (folder / "fine.sql").write_text("-- ids only\n\nselect id from generations\n")
    store = curate.open(db.path, queries=[folder])
    assert store.view_errors == []  # nothing is read, nor created, until the first query
    assert len(store.table("fine")) == 20 and len(store.table("chat")) > 0
    [error] = store.view_errors
    assert str(folder / "mine.sql") in str(error) and "line 4" in str(error)


def test_curate_queries_environment_variable_adds_a_folder(
    db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "views"
    folder.mkdir()
    (folder / "models.sql").write_text("-- one row per model\n\nselect distinct model from generations\n")
    monkeypatch.setenv("CURATE_QUERIES", str(folder))
    assert len(curate.open(db.path).table("models")) > 0


def test_snapshot_writes_parquet_that_reads_while_the_store_is_locked(db: Store, tmp_path: Path) -> None:
    written = db.snapshot(tmp_path / "snap")
    assert {p.name for p in written} >= {"chat.parquet", "conversations.parquet", "usage.parquet"}
    rows = len(db.table("chat"))
    with held(db.path, 30.0):  # a harvest holds the file: the snapshot needs no lock at all
        assert pq.read_table(tmp_path / "snap" / "chat.parquet").num_rows == rows
    assert not list((tmp_path / "snap").glob(".*partial"))


def test_snapshot_of_an_unknown_view_names_it(db: Store, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no_such_view"):
        db.snapshot(tmp_path / "snap", ["no_such_view"])


WRITER = """
import json, sys, time
from curate.store import Store
from curate.synthetic import generation_record
store, n, until = Store(sys.argv[1], lock_timeout=30), 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:  # harvest-like: a batch of bodies, then a moment's polling
    store.ingest_texts([json.dumps(generation_record(10_000 + n + i)) for i in range(50)], source="poll")
    n += 50
    time.sleep(0.02)
print(n)
"""


def test_a_writer_and_a_notebook_in_two_processes_never_fight_over_the_lock(db: Store) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db.path), "4"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    notebook = curate.open(db.path, lock_timeout=30)
    reads, seen = 0, []
    while writer.poll() is None:  # a StoreLocked here would fail the test
        seen.append(notebook.sql("select count(*) as n from chat").to_pylist()[0]["n"])
        reads += 1
    out, _ = writer.communicate()
    assert writer.returncode == 0
    written = int(out)
    assert reads >= 10 and seen == sorted(seen)  # the reader saw the store grow, batch by batch
    assert len(db.sql("select id from generations")) == 20 + written  # no write lost


def test_curate_views_lists_and_shows_a_view(db: Store) -> None:
    listed = subprocess.run([CURATE, "views", "--db", str(db.path)], capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and "conversations" in listed.stdout and "One row per" in listed.stdout
    shown = subprocess.run([CURATE, "views", "show", "usage", "--db", str(db.path)],
                           capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and shown.stdout.startswith("-- One row per model and day")
    missing = subprocess.run([CURATE, "views", "show", "nope", "--db", str(db.path)],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr
