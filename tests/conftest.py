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
from tests.scheduling import cost, deal


# `-n auto` keeps xdist's one worker per CPU. A third worker on two cores ended the suite ~20 %
# sooner, but it widened the window of the submit kill test in test_submit_races (a group the
# sandbox creates for a POST in flight when the kill lands is never known to curate): that test
# failed on a quiet machine with three workers; with two, only once, beside other processes' load.
@pytest.hookimpl(trylast=True)  # after -k/-m have deselected: the slices are of what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the long tests start first, one per worker in turn (tests/scheduling.py)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        items[:] = deal(items, [cost(item.nodeid) for item in items], int(workerinput["workercount"]),
                        [item.nodeid.split("::", 1)[0] for item in items])


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
