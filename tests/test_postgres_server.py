"""The throwaway PostgreSQL server the suite starts (tests/postgres.py, fixtures in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.postgres import PostgresServer

SEEN_URLS: set[str] = set()


def test_server_accepts_sqlalchemy_connections(postgres_server: PostgresServer) -> None:
    engine = sa.create_engine(postgres_server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_postgres_url_is_a_distinct_empty_database(postgres_url: str, run: str) -> None:
    """Each run gets a database no other test has had, empty although the other run wrote to its own."""
    assert postgres_url not in SEEN_URLS
    SEEN_URLS.add(postgres_url)
    engine = sa.create_engine(postgres_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("create table written_by_earlier_run (run text)"))
            conn.execute(sa.text("insert into written_by_earlier_run values (:run)"), {"run": run})
    finally:
        engine.dispose()


def test_iceberg_sql_catalog_round_trip(postgres_url: str, tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("test", uri=postgres_url, warehouse=f"file://{tmp_path}/wh")
    try:
        catalog.create_namespace("curate")
        rows = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "text": pa.array(["a", "b", "c"])})
        table = catalog.create_table("curate.generations", schema=rows.schema)
        table.append(rows)
        back = catalog.load_table("curate.generations").scan().to_arrow()
        assert back.num_rows == 3
        assert sorted(back.column("id").to_pylist()) == [1, 2, 3]
    finally:
        catalog.close()
