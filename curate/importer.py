"""``curate import``: JSONL files (plain or gzip) into the store, one transaction per file.

DuckDB reads the file as numbered lines (its CSV reader, told there is one column and no
quoting), streaming and in parallel, and ``curate.store`` turns the lines into rows: in one pass
for a clean new file, else by the two-pass merge. A file DuckDB cannot read as lines is read here
in Python, in blocks of about ``batch_bytes`` cut at the last newline, into the same relation.
Memory stays near the store's limit whatever the file's size. A file commits whole or not at all,
so an import stopped at any point keeps every file it finished and a re-run stores nothing twice.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from curate import records
from curate.merge import FastPathRefused, fast_insert, merge_source
from curate.records import WriteCounts
from curate.store import Store

__all__ = ["ImportSummary", "import_file", "import_files", "line_batches"]

DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_ROWS = 4096
_MAX_NATIVE_LINE = 16 * 1024 * 1024


class ImportSummary(BaseModel):
    """What an import did, per file and in total."""

    files: list[str] = []
    lines: int = 0
    stored: int = 0
    updated: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def add(self, counts: WriteCounts) -> None:
        self.lines += counts.lines
        self.stored += counts.stored
        self.updated += counts.updated
        self.duplicate += counts.duplicate
        self.rejected += counts.rejected
        self.skipped += counts.skipped


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as probe:
        return probe.read(2) == _GZIP_MAGIC


def _open(path: Path) -> IO[bytes]:
    if _is_gzip(path):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _texts(lines: list[bytes]) -> pa.Array:
    # Arrow validates UTF-8 in C; only a block that fails is decoded line by line, so that one
    # bad line becomes a reject (its bytes kept as escapes) instead of failing the whole block.
    try:
        return pa.array(lines, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        out = []
        for raw in lines:
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("invalid UTF-8: " + raw.decode("utf-8", "backslashreplace"))
        return pa.array(out, pa.string())


def line_batches(stream: IO[bytes], batch_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[pa.Table]:
    """Arrow tables of ``(line, text)`` covering every line of ``stream``, about ``batch_bytes`` each."""
    first = 1
    pending = b""
    while True:
        block = stream.read(batch_bytes)
        if not block:
            break
        if pending:
            block = pending + block
        cut = block.rfind(b"\n")
        if cut < 0:
            pending = block
            continue
        pending = block[cut + 1 :]
        yield _table(block[:cut], first)
        first += block.count(b"\n", 0, cut) + 1
    if pending:
        yield _table(pending, first)


def _table(block: bytes, first: int) -> pa.Table:
    if b"\r" in block:
        # CRLF files: the cut at the last "\n" leaves that line's "\r" at the block's end.
        block = block.replace(b"\r\n", b"\n").removesuffix(b"\r")
    lines = block.split(b"\n")
    table = pa.table(
        {
            "line": pa.array(range(first, first + len(lines)), pa.int64()),
            "text": _texts(lines),
        }
    )
    # Small record batches let DuckDB parse on every core.
    return pa.Table.from_batches(table.to_batches(max_chunksize=_CHUNK_ROWS))


def _native_source(path: Path, gzipped: bool) -> str:
    # DuckDB's CSV reader, told there is one column, no quoting and a delimiter that valid JSON
    # never contains, reads a JSONL file as lines: in parallel, in C++, streaming, with their
    # line numbers. Anything it cannot read that way (invalid UTF-8, a raw \x01, a line longer
    # than max_line_size) raises, and the file is read by the Python path instead.
    literal = str(path).replace("'", "''")
    return f"""
        create or replace temp view _curate_src as
        select ordinality as line, {records.masked("text")} as text
        from read_csv('{literal}', columns = {{'text': 'VARCHAR'}}, delim = chr(1), quote = '',
                      escape = '', header = false, auto_detect = false,
                      compression = '{"gzip" if gzipped else "none"}',
                      max_line_size = {_MAX_NATIVE_LINE}, buffer_size = {4 * _MAX_NATIVE_LINE})
        with ordinality
    """


def _is_unreadable(exc: duckdb.Error) -> bool:
    text = str(exc)
    return isinstance(exc, duckdb.InvalidInputException) and (
        "CSV Error" in text or "CSV Parser" in text or "Invalid unicode" in text
        or "maximum line size" in text
    )


def _stage_in_python(con: duckdb.DuckDBPyConnection, path: Path, batch_bytes: int) -> None:
    con.execute("create or replace temp table _curate_src (line bigint, text varchar)")
    with _open(path) as stream:
        for batch in line_batches(stream, batch_bytes):
            con.register("_curate_block", batch)
            con.execute(f"insert into _curate_src select line, {records.masked('text')} from _curate_block")
            con.unregister("_curate_block")


def import_file(
    store: Store,
    path: str | os.PathLike[str],
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    summary: ImportSummary | None = None,
) -> ImportSummary:
    """Import one JSONL (or JSONL.gz) file in one transaction: all of it is stored, or none.

    Memory stays bounded whatever the file's size: DuckDB streams the file and spills to disk
    past the store's memory limit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    summary = summary if summary is not None else ImportSummary()
    source = f"import:{path.resolve()}"
    started = time.perf_counter()
    gzipped = _is_gzip(path)
    # Fastest first: DuckDB's reader with the one-pass insert (a clean, new file), then its
    # reader with the full merge, then Python's reader for a file DuckDB cannot read as lines.
    counts = None
    for reader, fast in (("duckdb", True), ("duckdb", False), ("python", False)):
        try:
            counts = _import_once(store, path, source, reader=reader, fast=fast, gzipped=gzipped,
                                  batch_bytes=batch_bytes)
            break
        except FastPathRefused:
            continue
        except duckdb.Error as exc:
            if reader == "python" or not _is_unreadable(exc):
                raise
    assert counts is not None
    summary.files.append(str(path))
    summary.add(counts)
    summary.seconds += time.perf_counter() - started
    return summary


def _import_once(
    store: Store, path: Path, source: str, *, reader: str, fast: bool, gzipped: bool,
    batch_bytes: int,
) -> WriteCounts:
    with store.write() as con:
        if reader == "duckdb":
            con.execute(_native_source(path, gzipped))
        else:
            _stage_in_python(con, path, batch_bytes)
        counts = fast_insert(con, source=source) if fast else merge_source(con, source=source)
        con.execute(
            "insert into imports (source, started_at, finished_at, lines, stored, updated, "
            "duplicate, rejected, skipped) values (?, now(), now(), ?, ?, ?, ?, ?, ?)",
            [source, counts.lines, counts.stored, counts.updated, counts.duplicate,
             counts.rejected, counts.skipped],
        )
    return counts


def import_files(
    store: Store,
    paths: list[str | os.PathLike[str]],
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import every file in turn; a missing file fails before anything is read.

    ``progress`` is called after each file with the bytes imported so far.
    """
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no such file")
    summary = ImportSummary()
    done = 0
    for path in paths:
        import_file(store, path, batch_bytes=batch_bytes, summary=summary)
        done += Path(path).stat().st_size
        if progress is not None:
            progress(done)
    return summary
