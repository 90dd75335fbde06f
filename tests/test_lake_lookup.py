"""Point lookups on the lake (issue 19): a filter on ``id`` reaches the Parquet scan, and changes no answer.

The lake's ``generation_rows`` keeps one row per id, the copy ``DEDUP_ORDER`` prefers, and is
shaped so that ``where id = ?`` is applied below the dedup (``curate.lake.reader``). These tests
hold the lookups to an unpruned read: the same rows chosen over the whole lake by a plain window
over whole rows, materialised as a table (no filter can reach below it), under the same views.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest

from curate import migrations, views
from curate.lake.reader import LakeStore, lake_rows_view_sql
from curate.lake.table import DEDUP_ORDER, Lake, push
from curate.records import COLUMNS
from curate.store import Store
from curate.synthetic import generation_id, generation_record


def fill(store: Store, seeds: range, **changes: Any) -> list[dict[str, Any]]:
    records = [{**generation_record(i), **changes} for i in seeds]
    store.ingest_texts([json.dumps(r) for r in records], source="test")
    return records


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Ids in several files and snapshots, whose copies differ in what DEDUP_ORDER looks at.

    * a: seeds 0-59, as generated (pushed first, in 3 batches: 3 files, 3 snapshots).
    * b: seeds 20-49 finished later (2031), answered by another model; 40-44 of them Failed:
      b's copy is preferred, and an older copy says otherwise about state, time and model.
    * c: seeds 30-34 with b's finishedAt, stored later: c's copy wins on updated_at.
    * d: seeds 50-54 with an earlier finishedAt (2020): a's copy still wins, though pushed first.
    """
    root = tmp_path_factory.mktemp("lookup")
    uri = str(root / "lake")
    later = "2031-01-01T00:00:00Z"
    a, b, c, d = (Store(root / f"{name}.duckdb") for name in "abcd")
    fill(a, range(60))
    push(a, uri, batch_rows=20)
    for seed in range(20, 50):
        record = generation_record(seed)
        record["finishedAt"] = later
        record["request"] = {**record["request"], "model": "newer"}
        if 40 <= seed < 45:
            record.update(state="Failed", stateMessage="failed later", response=None)
        b.ingest_texts([json.dumps(record)], source="test")
    push(b, uri, batch_rows=7)
    for seed in range(30, 35):
        record = generation_record(seed)
        record["finishedAt"] = later
        record["request"] = {**record["request"], "model": "newest"}
        c.ingest_texts([json.dumps(record)], source="test")
    push(c, uri, batch_rows=2)
    fill(d, range(50, 55), finishedAt="2020-01-01T00:00:00Z")
    push(d, uri)
    return uri


@pytest.fixture(scope="module")
def unpruned(lake: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """The lake's rows chosen over the whole lake, materialised, with the shipped views over them."""
    with Lake(lake) as handle:
        files = handle.data_files()
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con = duckdb.connect()
    migrations.apply(con)
    con.execute(
        f"insert into generation_rows by name select {', '.join(COLUMNS)} from read_parquet([{listed}]) "
        f"qualify row_number() over (partition by id order by {DEDUP_ORDER}) = 1"
    )
    assert not views.install(con, views.load([views.QUERIES_DIR]))
    yield con
    con.close()


@pytest.fixture(scope="module")
def read(lake: str) -> Iterator[LakeStore]:
    with LakeStore(lake) as store:
        yield store


def test_the_lake_holds_several_copies_of_the_ids_looked_up(lake: str) -> None:
    with Lake(lake) as handle:
        files = handle.data_files()
        snapshots = len(handle.table().metadata.snapshots)
    listed = ", ".join(f"'{f}'" for f in files)
    copies = dict(duckdb.execute(f"select id, count(*) from read_parquet([{listed}]) group by id").fetchall())
    assert len(files) == snapshots == 3 + 5 + 3 + 1  # one file and one snapshot per batch
    assert copies[generation_id(31)] == 3 and copies[generation_id(41)] == 2 and copies[generation_id(0)] == 1


@pytest.mark.parametrize(
    ("seed", "finished_year", "model", "state"),
    [
        (0, None, None, "Success"),  # one copy
        (25, 2031, "newer", "Success"),  # b's, finished later
        (31, 2031, "newest", "Success"),  # c's: finished as b's, stored later
        (42, 2031, None, "Failed"),  # b's: the older copy was a Success
        (52, None, None, "Success"),  # a's: d's copy finished earlier, though pushed later
    ],
)
def test_a_lookup_by_id_returns_the_copy_dedup_order_prefers(
    read: LakeStore, unpruned: duckdb.DuckDBPyConnection, seed: int, finished_year: int | None, model: str | None,
    state: str,
) -> None:
    wanted = generation_id(seed)
    got = read.arrow("select * from generation_rows where id = ?", [wanted]).to_pylist()
    assert len(got) == 1
    (row,) = got
    assert row["state"] == state
    if finished_year is not None:
        assert row["finished_at"].year == finished_year
    else:
        assert row["finished_at"].year < 2031 and row["finished_at"].year != 2020
    if model is not None:
        assert row["model"] == model
    expected = unpruned.sql("select * from generation_rows where id = ?", params=[wanted]).to_arrow_table().to_pylist()
    assert got == expected
    # Through the views as well: chat shows a Success copy only when the preferred copy is one.
    chat = read.arrow("select id, model from chat where id = ?", [wanted]).to_pylist()
    assert chat == ([] if state == "Failed" else [{"id": wanted, "model": row["model"]}])


def test_a_lookup_of_a_missing_id_returns_nothing(read: LakeStore) -> None:
    for view in ("generation_rows", "generations", "chat", "conversations"):
        assert read.arrow(f"select * from {view} where id = ?", ["no-such-generation"]).num_rows == 0, view
    assert read.arrow("select * from generation_rows where id in (?, ?)", ["nope", "nor-this"]).num_rows == 0


# Each query is run on the lake and on the unpruned read; the answers must be equal. Filters on
# id (equality, lists, ranges, joins) may be pushed below the dedup; filters on other columns
# must not be (an older copy would otherwise come back).
QUERIES: list[tuple[str, list[Any]]] = [
    ("select * from generation_rows where id = ?", [generation_id(31)]),
    ("select id, raw_hash, state from generation_rows where id in (?, ?, ?, ?)",
     [generation_id(0), generation_id(31), generation_id(42), "missing"]),
    ("select id, finished_at from generation_rows where id between ? and ?", [generation_id(20), generation_id(45)]),
    ("select id from generation_rows where id like 'gen%'", []),
    ("select id, model from generation_rows where state = 'Success'", []),
    ("select id, state from generation_rows where state = 'Failed'", []),
    ("select id from generation_rows where model = 'newer'", []),
    ("select id from generation_rows where finished_at < ?", ["2030-01-01"]),
    ("select id from generation_rows where finished_at < ?", ["2021-01-01"]),
    ("select id, raw from generation_rows where id = ? and state = 'Success'", [generation_id(42)]),
    ("select count(*), count(distinct id), sum(total_tokens) from generation_rows", []),
    ("select state, model, count(*) from generation_rows group by all", []),
    ("select g.id, g.model from generation_rows g join (values (?), (?)) v(i) on g.id = v.i",
     [generation_id(33), generation_id(44)]),
    ("select g.id, g.state from generation_rows g where g.id in (select id from generation_rows where model = ?)",
     ["newest"]),
    ("select * from generations where id = ?", [generation_id(33)]),
    ("select * from chat where id = ?", [generation_id(25)]),
    ("select * from chat where id in (?, ?)", [generation_id(42), generation_id(52)]),
    ("select * from chat where model = 'newest'", []),
    ("select id, messages from chat", []),
    ("select id, n_calls, folded_ids from conversations", []),
    ("select * from conversations where id = ?", [generation_id(31)]),
    ("select * from usage", []),
    ("select * from failures", []),
    ("select * from failures where id = ?", [generation_id(42)]),
]


@pytest.mark.parametrize(("sql", "params"), QUERIES, ids=[q for q, _ in QUERIES])
def test_results_equal_the_unpruned_read(
    read: LakeStore, unpruned: duckdb.DuckDBPyConnection, sql: str, params: list[Any]
) -> None:
    ordered = f"select * from ({sql}) order by all"
    got = read.arrow(ordered, params or None)
    expected = unpruned.sql(ordered, params=params or None).to_arrow_table()
    assert got.to_pylist() == expected.to_pylist()


def test_an_id_filter_reaches_both_parquet_scans(read: LakeStore) -> None:
    """The plan: the filter on id is applied in both scans, the window's below the join too."""
    wanted = generation_id(31)
    with read.read() as con:
        ((_, plan),) = con.execute("explain select * from chat where id = ?", [wanted]).fetchall()
    assert plan.count("READ_PARQUET") == 2, plan
    assert plan.count(f"Filters: id = '{wanted}'") == 2, plan


def test_the_view_over_no_files_is_the_empty_table() -> None:
    assert lake_rows_view_sql([]) == "select * from _lake_empty_rows"
