"""Import of long lines (issue 17): every line is stored or refused with a reason, never dropped.

DuckDB's CSV reader drops a line longer than its buffer without a word, and fails a file where
such a line sits beside others; the importer finds those lines itself and reads the file in
Python, rejecting only a line longer than ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from curate.importer import MAX_LINE_BYTES, REJECT_HEAD_BYTES, import_file, line_batches
from curate.store import Store
from curate.synthetic import generation_record

MB = 1024 * 1024


def long_record(seed: int, size: int) -> tuple[str, bytes]:
    """A valid GenerationForClient record whose line is ``size`` bytes: one huge user message."""
    record = generation_record(seed)
    record["request"]["messages"][0]["content"] = ""
    base = len(json.dumps(record).encode())
    record["request"]["messages"][0]["content"] = "x" * (size - base)
    line = json.dumps(record).encode()
    assert len(line) == size
    return record["id"], line


def short(seed: int) -> bytes:
    return json.dumps(generation_record(seed)).encode()


def write(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return store.arrow(sql).to_pylist()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "c.duckdb")


def test_a_13_mb_line_is_stored_whole_beside_other_lines(store: Store, tmp_path: Path) -> None:
    gid, line = long_record(1, 13 * MB)
    summary = import_file(store, write(tmp_path / "g.jsonl", [short(2), line, short(3)]))
    assert (summary.lines, summary.stored, summary.rejected) == (3, 3, 0)
    assert rows(store, f"select length(raw) as n from generations where id = '{gid}'") == [{"n": len(line)}]


@pytest.mark.parametrize("name", ["alone.jsonl", "alone.jsonl.gz"])
def test_a_70_mb_line_alone_is_stored_not_dropped(store: Store, tmp_path: Path, name: str) -> None:
    gid, line = long_record(1, 70 * MB)
    summary = import_file(store, write(tmp_path / name, [line]))
    assert (summary.lines, summary.stored, summary.rejected) == (1, 1, 0)
    assert rows(store, f"select md5(raw) as h from generations where id = '{gid}'") == [
        {"h": hashlib.md5(line).hexdigest()}]
    assert rows(store, "select lines, stored from imports") == [{"lines": 1, "stored": 1}]


def test_a_70_mb_line_beside_other_lines_is_stored_with_them(store: Store, tmp_path: Path) -> None:
    gid, line = long_record(1, 70 * MB)
    path = write(tmp_path / "mixed.jsonl", [short(2), short(3), line, b"{cut off", short(4)])
    summary = import_file(store, path)
    assert (summary.lines, summary.stored, summary.rejected) == (5, 4, 1)
    assert rows(store, "select line from rejects") == [{"line": 4}]
    assert rows(store, f"select length(raw) as n from generations where id = '{gid}'") == [{"n": len(line)}]


def test_a_line_over_the_limit_is_rejected_with_its_line_number(store: Store, tmp_path: Path) -> None:
    import_file(store, write(tmp_path / "earlier.jsonl", [short(10), short(11)]))
    over = b'{"id": "too-long", "state": "Success", "pad": "' + b"y" * MAX_LINE_BYTES + b'"}'
    path = write(tmp_path / "over.jsonl", [short(2), short(3), over, short(4), b"{cut off"])
    summary = import_file(store, path)
    assert (summary.lines, summary.stored, summary.rejected) == (5, 3, 2)
    rejects = rows(store, "select line, reason, raw from rejects order by line")
    assert [r["line"] for r in rejects] == [3, 5]
    assert rejects[0]["reason"].startswith(f"line longer than {MAX_LINE_BYTES} bytes: {len(over)} bytes")
    assert rejects[0]["raw"] == over[:REJECT_HEAD_BYTES].decode()
    assert rows(store, "select count(*) as n from generations") == [{"n": 5}]  # earlier rows kept
    assert rows(store, "select lines, rejected from imports order by lines") == [
        {"lines": 2, "rejected": 0}, {"lines": 5, "rejected": 2}]
    again = import_file(store, path)
    assert (again.duplicate, again.rejected) == (3, 2)
    assert rows(store, "select count(*) as n from rejects") == [{"n": 2}]


# The Python reader's limit, with small sizes: every line is in a table or in too_long, numbered.


@pytest.mark.parametrize("batch_bytes", [3, 7, 64])
@pytest.mark.parametrize("data", [
    b"aaaaaaaaaaaa\nb\ncc\n",
    b"b\naaaaaaaaaaaa\ncc",
    b"b\ncc\naaaaaaaaaaaa",
    b"aaaaaaaaaaaa",
    b"aaaaaaaaaaaa\naaaaaaaaaaaa\n\nb\r\naaaaaaaaaa\r\ncc\n",
    b"abcdefgh\nabcdefghi\n",
])
def test_line_batches_set_aside_every_line_over_the_limit(data: bytes, batch_bytes: int) -> None:
    too_long: list[Any] = []
    tables = list(line_batches(io.BytesIO(data), batch_bytes, max_line=8, too_long=too_long))
    kept = [(r["line"], r["text"]) for t in tables for r in t.to_pylist()]
    # The limit counts a line's bytes before its "\n" (a "\r" of CRLF included).
    expected = list(enumerate(data.removesuffix(b"\n").split(b"\n"), 1))
    assert kept == [(n, line.removesuffix(b"\r").decode()) for n, line in expected if len(line) <= 8]
    assert [(t.line, t.length, t.head) for t in too_long] == [
        (n, len(line), line) for n, line in expected if len(line) > 8]
