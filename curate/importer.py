"""``curate import``: JSONL files (plain or gzip) streamed into the store in bounded batches.

A file is read in blocks of about ``batch_bytes``, cut at the last newline, and handed to
``Store.ingest`` as one Arrow batch of ``(line number, text)``: memory stays near one block
whatever the file's size, and each block commits on its own, so an import stopped at any point
keeps every batch it finished and a re-run stores nothing twice.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
from pydantic import BaseModel

from curate.records import WriteCounts
from curate.store import Store, ingest

__all__ = ["ImportSummary", "import_files", "import_file", "line_batches"]

DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_ROWS = 4096


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

    def add(self, counts: WriteCounts, lines: int) -> None:
        self.lines += lines
        self.stored += counts.stored
        self.updated += counts.updated
        self.duplicate += counts.duplicate
        self.rejected += counts.rejected
        self.skipped += counts.skipped


def _open(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
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


def import_file(
    store: Store,
    path: str | os.PathLike[str],
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Callable[[int], None] | None = None,
    summary: ImportSummary | None = None,
) -> ImportSummary:
    """Import one JSONL (or JSONL.gz) file; ``progress`` is called with its bytes read so far."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    summary = summary if summary is not None else ImportSummary()
    source = f"import:{path.resolve()}"
    started = time.perf_counter()
    with store.write() as con:
        row = con.execute(
            "insert into imports (source, started_at) values (?, now()) returning import_id",
            [source],
        ).fetchone()
    assert row is not None
    import_id = row[0]
    total = ImportSummary()
    with _open(path) as stream:
        raw = stream.fileobj if isinstance(stream, gzip.GzipFile) else stream  # type: ignore[attr-defined]
        for batch in line_batches(stream, batch_bytes):
            # The batch and the import's running totals commit together.
            with store.write() as con:
                total.add(ingest(con, batch, source=source), batch.num_rows)
                con.execute(
                    "update imports set lines = ?, stored = ?, updated = ?, duplicate = ?, "
                    "rejected = ?, skipped = ? where import_id = ?",
                    [total.lines, total.stored, total.updated, total.duplicate, total.rejected,
                     total.skipped, import_id],
                )
            if progress is not None:
                progress(raw.tell() if raw is not None else 0)
    with store.write() as con:
        con.execute("update imports set finished_at = now() where import_id = ?", [import_id])
    summary.files.append(str(path))
    summary.add(
        WriteCounts(total.stored, total.updated, total.duplicate, total.rejected, total.skipped),
        total.lines,
    )
    summary.seconds += time.perf_counter() - started
    return summary


def import_files(
    store: Store,
    paths: list[str | os.PathLike[str]],
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import every file in turn; a missing file fails before anything is read.

    ``progress`` is called with the bytes read so far across all the files.
    """
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no such file")
    summary = ImportSummary()
    done = 0
    for path in paths:
        report = None if progress is None else (lambda n, base=done: progress(base + n))
        import_file(store, path, batch_bytes=batch_bytes, progress=report, summary=summary)
        done += Path(path).stat().st_size
    return summary
