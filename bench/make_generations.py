"""Write a JSONL file of synthetic GenerationForClient records until it reaches a target size.

    python bench/make_generations.py OUT.jsonl --mb 1024

Every line is a distinct record from curate.synthetic.generation_record (about 1.8 KB each, ~4%
Failed, tool calls, non-ASCII text), so the file is the same on every machine for the same size
and compresses like real traffic rather than like copies of a few templates. Rendering runs on
every core.
"""

from __future__ import annotations

import argparse
import json
import os
from multiprocessing import Pool
from pathlib import Path

from curate.synthetic import generation_record

_CHUNK = 2000


def _render(bounds: tuple[int, int]) -> bytes:
    return "".join(
        json.dumps(generation_record(seed), ensure_ascii=False, separators=(",", ":")) + "\n"
        for seed in range(*bounds)
    ).encode("utf-8")


def write_count(path: Path, count: int, *, start: int = 0) -> None:
    """Write exactly ``count`` records, seeds ``start`` onwards, to ``path`` (renamed into place)."""
    tmp = path.with_suffix(".tmp")
    chunks = [(s, min(s + _CHUNK, start + count)) for s in range(start, start + count, _CHUNK)]
    with tmp.open("wb") as out, Pool(os.cpu_count() or 1) as pool:
        for block in pool.imap(_render, chunks, chunksize=1):
            out.write(block)
    os.replace(tmp, path)


def write(path: Path, megabytes: float, *, start: int = 0) -> int:
    """Write records to ``path`` until it holds ``megabytes`` MiB; return how many were written.

    Record seeds count from ``start``, so files written from different starts share no id.
    """
    target = int(megabytes * 1024 * 1024)
    written = 0
    records = 0

    with path.open("wb") as out, Pool(os.cpu_count() or 1) as pool:
        # Records are at least ~700 bytes, which bounds how many chunks can be needed.
        bound = ((s, s + _CHUNK) for s in range(start, start + target // 700 + _CHUNK, _CHUNK))
        for block in pool.imap(_render, bound, chunksize=1):
            if written + len(block) > target:
                lines = block.splitlines(keepends=True)
                for line in lines:
                    if written >= target:
                        break
                    out.write(line)
                    written += len(line)
                    records += 1
                break
            out.write(block)
            written += len(block)
            records += _CHUNK
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mb", type=float, default=1024.0)
    args = parser.parse_args()
    n = write(args.out, args.mb)
    print(f"{args.out}: {n} records, {args.out.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
