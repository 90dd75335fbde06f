"""The lake: where it is, what a push sends (once), how a dead writer's commit is settled, how it reads.

These run on folder lakes (a SQLite catalog); tests/test_lake_writers.py runs several processes
through PostgreSQL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import curate
from curate.lake.reader import LakeReadOnly, LakeStore
from curate.lake.table import Lake, LakeConfig, LakeError, LakePusher, pending_count, push
from curate.store import Store
from curate.synthetic import generation_record
from tests.conftest import write_jsonl
from tests.helpers import empty_lake

CURATE = str(Path(sys.executable).parent / "curate")


def fill(store: Store, seeds: range, **changes: Any) -> list[dict[str, Any]]:
    records = [{**generation_record(i), **changes} for i in seeds]
    store.ingest_texts([json.dumps(r) for r in records], source="test")
    return records


def lake_ids(lake: str | Path) -> list[str]:
    with LakeStore(str(lake)) as read:
        return sorted(read.arrow("select id from generations").column("id").to_pylist())


def physical_rows(lake: str | Path) -> int:
    with Lake(str(lake)) as handle:
        return sum(pq_rows(path) for path in handle.data_files())


def pq_rows(path: str) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CURATE, *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


# -- where a lake is ---------------------------------------------------------------------------


def test_a_folder_is_a_sqlite_catalog_and_a_warehouse_inside_it(tmp_path: Path) -> None:
    config = LakeConfig.parse(str(tmp_path / "lake"))
    assert config.catalog_uri == f"sqlite:///{tmp_path / 'lake' / 'catalog.db'}"
    assert config.warehouse == f"file://{tmp_path / 'lake' / 'warehouse'}"
    assert config.table == "curate.generations"


def test_a_postgresql_uri_takes_its_warehouse_and_table_from_the_query() -> None:
    config = LakeConfig.parse("postgresql://me:secret@db:5432/curate?warehouse=/shared/lake&table=team.gens")
    assert config.catalog_uri == "postgresql+psycopg2://me:secret@db:5432/curate"
    assert (config.warehouse, config.table) == ("file:///shared/lake", "team.gens")
    assert "secret" not in config.identity and "***" in config.identity


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("postgresql://me@db/curate", "?warehouse="),
        ("mysql://me@db/curate?warehouse=/x", "postgresql://"),
        ("postgresql://me@db/curate?warehouse=/x&table=nodot", "NAMESPACE.NAME"),
        ("", "folder"),
    ],
)
def test_a_bad_lake_uri_is_refused_with_what_to_fix(uri: str, says: str) -> None:
    with pytest.raises(LakeError, match=says.replace("?", r"\?").replace(".", r"\.")):
        LakeConfig.parse(uri)


def test_an_unreachable_catalog_is_a_lake_error_on_the_command_line(tmp_path: Path) -> None:
    result = run("sql", "--lake", f"postgresql://nobody@127.0.0.1:1/none?warehouse={tmp_path}", "select 1")
    assert result.returncode == 2
    assert "cannot reach the catalog" in result.stderr and "Traceback" not in result.stderr


# -- pushing ------------------------------------------------------------------------------------


def test_push_sends_each_terminal_generation_once(store: Store, tmp_path: Path) -> None:
    records = fill(store, range(30))
    fill(store, range(100, 105), state="In Progress", finishedAt=None, response=None)
    lake = tmp_path / "lake"

    first = push(store, str(lake), batch_rows=7)
    second = push(store, str(lake), batch_rows=7)

    assert (first.rows, first.batches, first.pending) == (30, 5, 0)
    assert (second.rows, second.batches) == (0, 0)
    assert lake_ids(lake) == sorted(r["id"] for r in records)
    assert physical_rows(lake) == 30


def test_a_generation_stored_again_with_a_new_body_is_sent_again_and_read_as_the_latest(
    store: Store, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    (record,) = fill(store, range(1))
    push(store, lake)
    changed = {**record, "finishedAt": "2031-01-01T00:00:00Z", "response": {**record["response"], "model": "newer"}}
    store.ingest_texts([json.dumps(changed)], source="test")

    assert push(store, lake).rows == 1
    with LakeStore(lake) as read:
        assert read.arrow("select year(finished_at) as y from generations").to_pylist() == [{"y": 2031}]
    assert physical_rows(lake) == 2


def _claim_as_dead_writer(store: Store, lake: str, batch_id: str, ids: list[str]) -> None:
    """What a writer killed between its commit and its record leaves: a claim by a dead pid."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True)

    with store.write() as con:
        con.execute(
            "insert into lake_sent (lake, id, raw_hash, batch_id, state, claimed_by, claimed_at) "
            "select ?, id, raw_hash, ?, 'sending', ?, now() from generation_rows where id in (select unnest(?))",
            [LakeConfig.parse(lake).identity, batch_id, f"{socket.gethostname()}:{dead.stdout.strip()}", ids],
        )


def test_a_dead_writers_commit_found_in_the_lake_is_not_sent_again(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    records = fill(store, range(10))
    ids = [r["id"] for r in records[:4]]
    _claim_as_dead_writer(store, lake, "dead-batch", ids)
    # Its commit landed: the rows are in the lake under its batch id.
    with store.read() as con:
        from curate.lake.table import lake_rows_sql

        rows = con.sql(
            lake_rows_sql(
                "generation_rows where id in (select unnest($ids))",
                "'h:1' as lake_writer, 'dead-batch' as lake_batch, now() as pushed_at",
            ),
            params={"ids": ids},
        ).to_arrow_table()
    with Lake(lake) as handle:
        handle.append(rows, batch_id="dead-batch")

    summary = push(store, lake)

    assert (summary.recovered, summary.released, summary.rows) == (1, 0, 6)
    assert physical_rows(lake) == 10
    assert lake_ids(lake) == sorted(r["id"] for r in records)


def test_a_dead_writers_commit_missing_from_the_lake_is_sent_again(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    records = fill(store, range(10))
    _claim_as_dead_writer(store, lake, "lost-batch", [r["id"] for r in records[:4]])

    summary = push(store, lake)

    assert (summary.recovered, summary.released, summary.rows) == (0, 1, 10)
    with store.read() as con:
        assert pending_count(con, LakeConfig.parse(lake)) == 0
    assert physical_rows(lake) == 10


def test_a_failed_commit_releases_its_rows_for_the_next_push(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(5))

    class Refusing(Lake):
        def append(self, rows: Any, *, batch_id: str, attempts: int = 5) -> int:
            raise LakeError("catalog down")

    with pytest.raises(LakeError, match="catalog down"):
        push(store, Refusing(lake))

    with store.read() as con:
        assert pending_count(con, LakeConfig.parse(lake)) == 5
    assert push(store, lake).rows == 5


def test_the_pusher_sends_while_the_writer_runs_and_the_rest_on_exit(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(5))
    with LakePusher(store, lake, interval=0.05) as pusher:
        import time

        deadline = time.monotonic() + 10
        while pusher.rows < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pusher.rows == 5
        fill(store, range(5, 8))
    assert pusher.rows == 8
    assert len(lake_ids(lake)) == 8


# -- reading ------------------------------------------------------------------------------------


def test_the_lake_has_the_stores_views_with_the_same_rows(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(300))
    push(store, lake, batch_rows=100)

    with curate.open(lake=lake) as read:
        assert isinstance(read, LakeStore)
        ours = {v.name: v.rows for v in store.views()}
        assert {v.name: v.rows for v in read.views()} == ours
        for view in ("chat", "usage", "failures"):
            order = "order by all"
            assert read.arrow(f"select * from {view} {order}") == store.arrow(f"select * from {view} {order}"), view


def test_copies_of_an_id_from_two_writers_are_read_once(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    a, b = Store(tmp_path / "a.duckdb"), Store(tmp_path / "b.duckdb")
    fill(a, range(20))
    fill(b, range(10, 30))
    push(a, lake)
    push(b, lake)

    assert physical_rows(lake) == 40
    assert len(lake_ids(lake)) == len(set(lake_ids(lake))) == 30


def test_a_reader_sees_commits_made_after_it_opened(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(3))
    push(store, lake)
    with LakeStore(lake) as read:
        assert read.arrow("select count(*) as n from generations").to_pylist() == [{"n": 3}]
        fill(store, range(3, 5))
        push(store, lake)
        assert read.arrow("select count(*) as n from generations").to_pylist() == [{"n": 5}]


def test_an_empty_lake_reads_as_an_empty_store(tmp_path: Path) -> None:
    with LakeStore(empty_lake(tmp_path / "lake")) as read:
        assert read.arrow("select count(*) as n from chat").to_pylist() == [{"n": 0}]


def test_the_lake_refuses_writes_and_says_where_to_write(tmp_path: Path) -> None:
    with LakeStore(empty_lake(tmp_path / "lake")) as read, pytest.raises(LakeReadOnly, match="--lake"):
        read.ingest_texts([json.dumps(generation_record(1))], source="test")


def test_an_export_from_the_lake_is_byte_identical_to_one_from_the_store(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(200))
    push(store, lake, batch_rows=50)
    with LakeStore(lake) as read:
        curate.export(read, "chat", tmp_path / "lake-out", fmt="openai", test_size=0.2)
    curate.export(store, "chat", tmp_path / "store-out", fmt="openai", test_size=0.2)

    for name in ("data/train.jsonl", "data/test.jsonl", "lineage.parquet"):
        assert (tmp_path / "lake-out" / name).read_bytes() == (tmp_path / "store-out" / name).read_bytes(), name
    assert "Store: `lake sqlite:" in (tmp_path / "lake-out" / "README.md").read_text()


# -- the commands ---------------------------------------------------------------------------------


def test_import_with_a_lake_pushes_and_reading_commands_take_the_lake(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    sample = write_jsonl(tmp_path / "g.jsonl", [generation_record(i) for i in range(40)])

    imported = run("import", str(sample), "--db", str(tmp_path / "w.duckdb"), "--lake", lake, "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["lake"]["rows"] == 40

    counted = run("sql", "select count(*) as n from generations", "--format", "json", env={"CURATE_LAKE": lake})
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == [{"n": 40}]
    info = run("lake", "info", "--lake", lake, "--json")
    assert json.loads(info.stdout)["rows"] == 40


def test_lake_push_without_a_lake_says_how_to_give_one(tmp_path: Path) -> None:
    result = run("lake", "push", "--db", str(tmp_path / "w.duckdb"), env={"CURATE_LAKE": ""})
    assert result.returncode == 2
    assert "--lake" in result.stderr


def test_pull_merges_the_lake_into_a_local_store_once(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(50))
    push(store, lake, batch_rows=20)
    local = Store(tmp_path / "work.duckdb")

    from curate.lake.reader import pull

    first, again = pull(lake, local, batch_rows=16), pull(lake, local, batch_rows=16)

    assert (first.lines, first.stored) == (50, 50)
    assert (again.stored, again.duplicate) == (0, 50)
    order = "order by all"
    assert local.arrow(f"select * from chat {order}") == store.arrow(f"select * from chat {order}")


def test_views_stats_snapshot_and_export_commands_read_the_lake(store: Store, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    fill(store, range(60))
    push(store, lake)

    views = run("views", "--lake", lake)
    stats = run("stats", "--lake", lake, "--json")
    snapshot = run("snapshot", str(tmp_path / "snap"), "--lake", lake, "--view", "chat")
    exported = run("export", "chat", "--lake", lake, "--out", str(tmp_path / "out"), "--json")

    for result in (views, stats, snapshot, exported):
        assert result.returncode == 0, result.stderr
    assert "chat" in views.stdout
    assert json.loads(stats.stdout)["generations"] == 60
    chat_rows = store.arrow("select count(*) as n from chat").to_pylist()[0]["n"]
    assert pq.read_table(tmp_path / "snap" / "chat.parquet").num_rows == chat_rows
    assert json.loads(exported.stdout)["counts"]["source"] == chat_rows



def test_a_writer_with_an_unreachable_lake_stops_before_writing(tmp_path: Path) -> None:
    sample = write_jsonl(tmp_path / "g.jsonl", [generation_record(1)])
    db = tmp_path / "w.duckdb"

    result = run("import", str(sample), "--db", str(db), "--lake", f"postgresql://x@127.0.0.1:1/x?warehouse={tmp_path}")

    assert result.returncode == 2 and "cannot reach the catalog" in result.stderr
    assert not db.exists() or Store(db).arrow("select count(*) as n from generation_rows").to_pylist() == [{"n": 0}]


def test_reading_a_lake_that_is_not_there_refuses_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "lak"
    with pytest.raises(LakeError, match="no lake here"):
        LakeStore(typo)
    run = subprocess.run([CURATE, "lake", "info", "--lake", str(typo)], check=False, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "no lake here" in run.stderr
    assert not typo.exists()
