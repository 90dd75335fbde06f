"""The two kinds of store: what only reads (``ReadableStore``) and what also writes (``Store``).

A ``Store`` and the lake read as one (``LakeStore``) share the reading doors; only a ``Store`` has
the writers. A query the reading doors refuse is a ``QueryError`` with DuckDB's message, and the
file is as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import UsageError
from curate.lake.reader import LakeReadOnly, LakeStore
from curate.store import QueryError, ReadableStore, Store
from curate.synthetic import generation_record
from tests.helpers import empty_lake

WRITERS = ("write", "session", "migrate", "ingest", "ingest_texts")


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[LakeStore]:
    with LakeStore(empty_lake(tmp_path / "lake")) as read:
        yield read


@pytest.fixture
def filled(store: Store) -> Store:
    store.ingest_texts([json.dumps(generation_record(i)) for i in range(3)], source="test")
    return store


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chat_rows(store: ReadableStore) -> int:
    """Typed for what only reads: a Store and the lake alike."""
    return int(store.arrow("select count(*) as n from chat").to_pylist()[0]["n"])


# -- one interface ------------------------------------------------------------------------------


def test_a_store_and_the_lake_are_both_readable_and_only_the_store_writes(store: Store, lake: LakeStore) -> None:
    assert isinstance(store, ReadableStore) and isinstance(lake, ReadableStore)
    assert isinstance(store, Store) and not isinstance(lake, Store)
    for name in WRITERS:
        assert callable(getattr(store, name)), name
        assert not hasattr(LakeStore, name), name
        assert not hasattr(lake, name), name


def test_a_function_typed_for_the_readable_store_reads_both(filled: Store, lake: LakeStore) -> None:
    assert chat_rows(filled) == 3
    assert chat_rows(lake) == 0


def test_every_reading_door_of_a_store_is_the_lakes_too() -> None:
    doors = ("read", "arrow", "query", "sql", "table", "views", "view_files", "snapshot", "unload", "scratch",
             "attached", "label", "spool_dir")
    for name in doors:
        assert hasattr(ReadableStore, name) and hasattr(LakeStore, name), name
    assert not {name for name in dir(Store) if not name.startswith("_")} - set(dir(ReadableStore)) - set(WRITERS)


@pytest.mark.parametrize("name", WRITERS)
def test_asking_the_lake_for_a_writer_says_where_to_write(lake: LakeStore, name: str) -> None:
    with pytest.raises(LakeReadOnly, match="--lake") as refused:
        getattr(lake, name)
    assert isinstance(refused.value, AttributeError)  # what hasattr() and getattr(x, name, default) expect


def test_a_name_the_lake_has_not_that_is_no_writer_is_a_plain_attribute_error(lake: LakeStore) -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'") as missing:
        lake.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    assert not isinstance(missing.value, LakeReadOnly)


def test_a_reading_store_creates_no_file_and_a_store_does(tmp_path: Path) -> None:
    ReadableStore(tmp_path / "read.duckdb")
    assert not (tmp_path / "read.duckdb").exists()
    Store(tmp_path / "written.duckdb")
    assert (tmp_path / "written.duckdb").exists()
    assert chat_rows(ReadableStore(tmp_path / "written.duckdb")) == 0


# -- a query DuckDB refuses ------------------------------------------------------------------------

BAD_QUERIES = {
    "syntax": ("selec 1", None, "Parser Error: syntax error at or near \"selec\""),
    "column": ("select nope from generations", None, "Binder Error: Referenced column \"nope\" not found"),
    "missing view": ("select * from nowhere", None, "Catalog Error: Table with name nowhere does not exist"),
    "function": ("select no_such_function(1)", None, "Catalog Error: Scalar Function with name no_such_function"),
    "write": ("delete from generation_rows", None, "Invalid Input Error: Cannot execute statement of type \"DELETE\""),
    "parameters": ("select ? as a, ? as b", [1], "Invalid Input Error"),
    "conversion": ("select id::int from generations", None, "Conversion Error: Could not convert string"),
    "overflow": ("select 2147483647::int + 1", None, "Out of Range Error: Overflow in addition of INT32"),
}
# unload runs ``copy (SQL) to ...``: a statement that is no query is refused by the parser there.
UNLOAD_SAYS = {"write": "Parser Error: syntax error at or near \"delete\""}


def _door(name: str) -> Callable[[ReadableStore, str, list[Any] | None, Path], object]:
    return {
        "arrow": lambda store, sql, params, _: store.arrow(sql, params),
        "sql": lambda store, sql, params, _: store.sql(sql, params),
        "unload": lambda store, sql, _, tmp: store.unload(sql, tmp / "out.parquet"),
    }[name]


@pytest.mark.parametrize(("door", "case"), [
    (door, case) for door in ("arrow", "sql", "unload") for case, (_, params, _) in BAD_QUERIES.items()
    if door != "unload" or params is None  # unload takes no parameters
])
def test_a_query_duckdb_refuses_is_a_query_error_with_its_message_and_the_file_is_unchanged(
    filled: Store, tmp_path: Path, door: str, case: str
) -> None:
    sql, params, says = BAD_QUERIES[case]
    if door == "unload":
        says = UNLOAD_SAYS.get(case, says)
    before = digest(filled.path)

    with pytest.raises(QueryError) as refused:
        _door(door)(filled, sql, params, tmp_path)

    assert str(refused.value).startswith(says), str(refused.value)
    assert isinstance(refused.value, UsageError) and not isinstance(refused.value, duckdb.Error)
    assert isinstance(refused.value.__cause__, duckdb.Error)
    assert str(refused.value) == str(refused.value.__cause__)  # DuckDB's message, whole
    assert digest(filled.path) == before
    assert sorted(p.name for p in filled.path.parent.iterdir() if p.name.startswith(filled.path.name)) == [
        filled.path.name]  # no write-ahead log either
    assert chat_rows(filled) == 3


def test_a_table_that_is_not_there_is_a_query_error(filled: Store) -> None:
    with pytest.raises(QueryError, match="Catalog Error: Table with name chat2 does not exist"):
        filled.table("chat2")


def test_a_view_that_fails_as_a_snapshot_runs_it_is_a_query_error_and_leaves_no_partial_file(
    tmp_path: Path
) -> None:
    mine = tmp_path / "queries"
    mine.mkdir()
    (mine / "numbers.sql").write_text("-- one row per generation, its id as a number\nselect id::int as n from generations\n")
    store = Store(tmp_path / "s.duckdb", queries=[mine])
    store.ingest_texts([json.dumps(generation_record(1))], source="test")
    before = digest(store.path)

    with pytest.raises(QueryError, match="Conversion Error"):
        store.snapshot(tmp_path / "snap", ["numbers"])

    assert [p.name for p in (tmp_path / "snap").iterdir() if p.name.endswith(".parquet")] == []
    assert digest(store.path) == before


def test_the_lake_refuses_a_bad_query_the_same_way(lake: LakeStore) -> None:
    with pytest.raises(QueryError, match="^Parser Error: syntax error"):
        lake.sql("selec 1")


def test_a_query_reading_a_missing_file_is_a_query_error_naming_it(filled: Store, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="absent.parquet") as failed:
        filled.arrow(f"select * from read_parquet('{tmp_path / 'absent.parquet'}')")
    assert isinstance(failed.value.__cause__, duckdb.IOException)


def test_a_query_over_the_memory_limit_is_a_query_error_saying_what_to_do(tmp_path: Path) -> None:
    store = Store(tmp_path / "small.duckdb", memory_limit="20MB")
    with pytest.raises(QueryError, match="CURATE_MEMORY_LIMIT"):
        store.arrow("select list(repeat('x', 1000)) from range(1000000)")


def test_curate_sql_prints_duckdbs_message_as_one_line_and_exits_1(filled: Store) -> None:
    result = CliRunner().invoke(app, ["sql", "selec 1", "--db", str(filled.path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Parser Error: syntax error at or near \"selec\"")
    assert "Traceback" not in result.stderr
