"""``curate import``: JSONL files (plain or gzip) into the store, one transaction per file.

DuckDB reads the file as numbered lines (its CSV reader, told there is one column and no
quoting), streaming and in parallel, and ``curate.store`` turns the lines into rows: in one pass
for a clean new file, else by the two-pass merge. A file DuckDB cannot read as lines is read here
in Python, in blocks of about ``batch_bytes`` cut at the last newline, into the same relation.
Memory stays near the store's limit whatever the file's size.

Long lines: DuckDB's reader silently drops a line longer than its buffer, so a thread reads the
file beside it and a file with a line over ``_MAX_NATIVE_LINE`` is read by Python instead, with
DuckDB on one thread (one long line's JSON costs several times its size). A line up to
``MAX_LINE_BYTES`` is imported; a longer one is read past, never held whole, and goes to
``rejects`` with its line number, its first ``REJECT_HEAD_BYTES`` and the reason
"line longer than MAX_LINE_BYTES bytes". A file commits whole or not at all,
so an import stopped at any point keeps every file it finished and a re-run stores nothing twice.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from curate import records
from curate.errors import MissingFile
from curate.merge import FastPathRefused, fast_insert, merge_source
from curate.records import WriteCounts
from curate.store import Store

__all__ = ["MAX_LINE_BYTES", "REJECT_HEAD_BYTES", "ImportSummary", "import_file", "import_files", "line_batches"]

DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_ROWS = 4096
_MAX_NATIVE_LINE = 16 * 1024 * 1024
# The longest line imported, not counting its newline. One such line's JSON needs about 4x its
# size at once, so at the default 1 GB memory limit the ceiling is a little above this.
MAX_LINE_BYTES = 80 * 1024 * 1024
REJECT_HEAD_BYTES = 4096  # what rejects.raw keeps of a line longer than MAX_LINE_BYTES
_SCAN_BYTES = 8 * 1024 * 1024


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


def _has_long_line(data: bytes, limit: int, start: int = 0, end: int | None = None) -> bool:
    """Whether a line of ``data[start:end]`` (split at ``\n``) is longer than ``limit`` bytes.

    It jumps from newline to newline at most ``limit`` bytes apart, so a block of short lines costs
    one backward search per ``limit`` bytes.
    """
    end = len(data) if end is None else end
    while end - start > limit:
        newline = data.rfind(b"\n", start, start + limit + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


def _stream_has_long_line(stream: IO[bytes], limit: int, stop: threading.Event) -> bool:
    run = 0  # bytes of the line that the previous blocks ended in
    while not stop.is_set():
        block = stream.read(_SCAN_BYTES)
        if not block:
            return False
        first = block.find(b"\n")
        if first < 0:
            run += len(block)
            if run > limit:
                return True
            continue
        last = block.rfind(b"\n")
        if run + first > limit or _has_long_line(block, limit, first + 1, last):
            return True
        run = len(block) - last - 1
    return False


class _LongLineScan:
    """A thread reading ``path`` beside DuckDB's reader, to learn whether a line is over ``limit``.

    DuckDB drops a line longer than its buffer without a word (a file whose only line it is reads
    as no lines), so its result stands only when this finds no such line.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self._path, self._limit = path, limit
        self._stop = threading.Event()
        self._found = True  # until the scan says otherwise (a file it cannot read goes to Python)
        self._thread = threading.Thread(target=self._run, name="curate-line-scan", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with _open(self._path) as stream:
                self._found = _stream_has_long_line(stream, self._limit, self._stop)
        except Exception:  # noqa: BLE001 - Python's reader then reads the file and raises what is wrong
            self._found = True

    def found(self) -> bool:
        self._thread.join()
        return self._found

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


class _TooLong:
    """A line longer than the limit: where it is, how long, and its first bytes."""

    __slots__ = ("head", "length", "line")

    def __init__(self, line: int, head: bytes, length: int) -> None:
        self.line, self.head, self.length = line, head[:REJECT_HEAD_BYTES], length


def line_batches(
    stream: IO[bytes],
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    *,
    max_line: int = MAX_LINE_BYTES,
    too_long: list[_TooLong] | None = None,
) -> Iterator[pa.Table]:
    """Arrow tables of ``(line, text)`` covering every line of ``stream``, about ``batch_bytes`` each.

    A line longer than ``max_line`` bytes (not counting its newline) is left out of the tables and
    appended to ``too_long``; it is read past, so memory never holds more than ``max_line`` of it.
    """
    too_long = too_long if too_long is not None else []
    first = 1  # the number of the line ``pending`` (or the line being read past) is part of
    pending = b""
    skipping: _TooLong | None = None
    while True:
        block = stream.read(batch_bytes)
        if not block:
            break
        if skipping is not None:
            newline = block.find(b"\n")
            rest = block if newline < 0 else block[:newline]
            if len(skipping.head) < REJECT_HEAD_BYTES:
                skipping.head += rest[: REJECT_HEAD_BYTES - len(skipping.head)]
            skipping.length += len(rest)
            if newline < 0:
                continue
            skipping, first, block = None, first + 1, block[newline + 1 :]
        if pending:
            block = pending + block
        cut = block.rfind(b"\n")
        if cut < 0:
            if len(block) > max_line:
                skipping = _TooLong(first, block, len(block))
                too_long.append(skipping)
                pending = b""
            else:
                pending = block
            continue
        pending = block[cut + 1 :]
        yield from _tables(block[:cut], first, max_line, too_long)
        first += block.count(b"\n", 0, cut) + 1
    if pending:
        yield from _tables(pending, first, max_line, too_long)


def _tables(block: bytes, first: int, max_line: int, too_long: list[_TooLong]) -> Iterator[pa.Table]:
    if not _has_long_line(block, max_line):
        yield _table(block, first)
        return
    # Rare: a line over the limit among whole lines. The others go in runs of numbered lines.
    start, number, run_start, run_first = 0, first, 0, first
    while start <= len(block):
        end = block.find(b"\n", start)
        end = len(block) if end < 0 else end
        if end - start > max_line:
            if start > run_start:
                yield _table(block[run_start : start - 1], run_first)
            too_long.append(_TooLong(number, block[start : min(end, start + REJECT_HEAD_BYTES)], end - start))
            run_start, run_first = end + 1, number + 1
        start, number = end + 1, number + 1
    if run_start <= len(block):
        yield _table(block[run_start:], run_first)


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
    # than max_line_size) raises, and the file is read by the Python path instead. A line longer
    # than buffer_size it drops without a word: _LongLineScan catches those.
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
    if isinstance(exc, duckdb.NotImplementedException):
        return "Parallel CSV Reader" in text  # a line longer than its buffer, beside others
    return isinstance(exc, duckdb.InvalidInputException) and (
        "CSV Error" in text or "CSV Parser" in text or "Invalid unicode" in text
        or "maximum line size" in text
    )


class _NativeMissedLines(Exception):
    """DuckDB's reader finished, but the file has a line it may have dropped: read it in Python."""


def _stage_in_python(
    con: duckdb.DuckDBPyConnection, path: Path, batch_bytes: int, too_long: list[_TooLong]
) -> None:
    con.execute("create or replace temp table _curate_src (line bigint, text varchar)")
    with _open(path) as stream:
        for batch in line_batches(stream, batch_bytes, too_long=too_long):
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
        raise MissingFile(f"{path}: no such file")
    summary = summary if summary is not None else ImportSummary()
    source = f"import:{path.resolve()}"
    started = time.perf_counter()
    gzipped = _is_gzip(path)
    # Fastest first: DuckDB's reader with the one-pass insert (a clean, new file), then its
    # reader with the full merge, then Python's reader for a file DuckDB cannot read as lines
    # or that has a line DuckDB's reader may drop (found by a scan beside it).
    counts = None
    scan = _LongLineScan(path, _MAX_NATIVE_LINE)
    missed = False
    try:
        for reader, fast in (("duckdb", True), ("duckdb", False), ("python", False)):
            if reader == "duckdb" and missed:
                continue
            try:
                counts = _import_once(store, path, source, reader=reader, fast=fast, gzipped=gzipped,
                                      batch_bytes=batch_bytes, scan=scan)
                break
            except FastPathRefused:
                continue
            except _NativeMissedLines:
                missed = True
            except duckdb.Error as exc:
                if reader == "python" or not (_is_unreadable(exc) or scan.found()):
                    raise
    finally:
        scan.cancel()
    assert counts is not None
    summary.files.append(str(path))
    summary.add(counts)
    summary.seconds += time.perf_counter() - started
    return summary


def _reject_too_long(con: duckdb.DuckDBPyConnection, source: str, too_long: list[_TooLong]) -> None:
    con.execute("create or replace temp table _curate_long (line bigint, length bigint, head varchar)")
    con.executemany("insert into _curate_long values (?, ?, ?)",
                    [(t.line, t.length, t.head.decode("utf-8", "backslashreplace")) for t in too_long])
    con.execute(
        f"""
        insert into rejects
        select ?, line, format('line longer than {MAX_LINE_BYTES} bytes: {{:d}} bytes, of which raw keeps '
                               || 'the first {REJECT_HEAD_BYTES}', length), raw, md5(raw), now()
        from (select line, length, {records.masked("head")} as raw from _curate_long)
        on conflict do nothing
        """,
        [source],
    )
    con.execute("drop table _curate_long")


def _import_once(
    store: Store, path: Path, source: str, *, reader: str, fast: bool, gzipped: bool,
    batch_bytes: int, scan: _LongLineScan,
) -> WriteCounts:
    too_long: list[_TooLong] = []
    with store.write() as con:
        one_thread = reader == "python" and scan.found()
        if one_thread:
            # Long lines: one thread, so that only one of them is parsed at a time.
            con.execute("set threads = 1")
        try:
            if reader == "duckdb":
                con.execute(_native_source(path, gzipped))
            else:
                _stage_in_python(con, path, batch_bytes, too_long)
            counts = fast_insert(con, source=source) if fast else merge_source(con, source=source)
        finally:
            if one_thread:
                con.execute("reset threads")
        if reader == "duckdb" and scan.found():
            raise _NativeMissedLines  # rolls back
        if too_long:
            _reject_too_long(con, source, too_long)
            counts = dataclasses.replace(counts, lines=counts.lines + len(too_long),
                                         rejected=counts.rejected + len(too_long))
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
        raise MissingFile(f"{', '.join(missing)}: no such file")
    summary = ImportSummary()
    done = 0
    for path in paths:
        import_file(store, path, batch_bytes=batch_bytes, summary=summary)
        done += Path(path).stat().st_size
        if progress is not None:
            progress(done)
    return summary
