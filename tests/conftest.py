"""Shared fixtures: a fresh store per test, and no DuckDB connection outliving its test."""

from __future__ import annotations

import json
import re
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from curate.store import Store
from tests.postgres import PostgresServer


@pytest.fixture(autouse=True)
def close_duckdb_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every connection a test opened: a leaked one would hold the file's lock."""
    opened: list[weakref.ref[duckdb.DuckDBPyConnection]] = []
    real_connect = duckdb.connect

    def tracking_connect(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        con = real_connect(*args, **kwargs)
        opened.append(weakref.ref(con))
        return con

    monkeypatch.setattr(duckdb, "connect", tracking_connect)
    yield
    for ref in opened:
        con = ref()
        if con is not None:
            con.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "curate.duckdb", lock_timeout=5)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write records (dicts are JSON-encoded, strings written as they are) one per line."""
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            out.write("\n")
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session, started only if a test asks for it."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the session's server, named after the test."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")[:40] or "test"
    return postgres_server.create_database(f"t_{stem}_{uuid.uuid4().hex[:8]}")
