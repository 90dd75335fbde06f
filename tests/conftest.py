"""Shared fixtures: a fresh store per test, and no DuckDB connection outliving its test."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from curate.store import Store


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
