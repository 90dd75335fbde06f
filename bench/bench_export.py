"""``curate export conversations --format messages`` beside DuckDB's ``COPY (select * from conversations) TO parquet``.

    .venv/bin/python bench/bench_export.py [--sizes 100000,1000000] [--runs 1] [--memory-limit 1GB]

For each size N, a store holding N conversations is built once into bench/data/ (git-ignored):
``make_generations.write``'s synthetic GenerationForClient records (tool calls, ~4 % Failed,
non-ASCII text), in which every fourth line (4k+3) is rewritten as the follow-up call of the line
before it (the whole history re-sent plus a new user turn), so ``conversations`` folds one call in
four and holds N Success trajectories, some of them two calls long.

Each run then times, each in a fresh process under the same memory limit, from before opening
the store until the files are closed, with the process's peak RSS:

* ``copy``: DuckDB's own ``COPY (select * from conversations) TO 'x.parquet'`` (zstd), the floor,
  spilling to a temporary folder; if it runs out of memory under the limit, under twice the
  limit, and so on (the table says which);
* ``export``: ``curate.exporter.export(store, "conversations", fmt="messages")``, test fraction 0.1,
  exact dedup: typed messages, validation, split, lineage, card.

A second export to a fresh folder checks that the data files are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_views import _follow_up, machine
from make_generations import write

from curate.importer import import_files
from curate.store import Store

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

COPY = """
import json, resource, sys, time, duckdb
db, limit, out = sys.argv[1:4]
started = time.perf_counter()
con = duckdb.connect(db, read_only=True, config={"memory_limit": limit})
con.execute("set enable_progress_bar = false")
con.execute(f"set temp_directory = '{out}/spill'")  # as the export spills into its scratch folder
con.execute(f"copy (select * from conversations) to '{out}/copy.parquet' (format parquet, compression zstd)")
con.close()
print(json.dumps({"seconds": time.perf_counter() - started, "rows": None,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

EXPORT = """
import json, resource, sys, time
db, limit, out = sys.argv[1:4]
started = time.perf_counter()
from curate.exporter import export
from curate.store import Store
store = Store(db, memory_limit=limit)
result = export(store, "conversations", out + "/export", fmt="messages", test_size=0.1)
print(json.dumps({"seconds": time.perf_counter() - started, "rows": result.counts["deduplicated"],
                  "counts": result.counts, "shared": [result.shared_keys, result.shared_prompts],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_store(conversations: int, memory_limit: str) -> Path:
    """A store with ``conversations`` Success trajectories, built once."""
    DATA.mkdir(exist_ok=True)
    db = DATA / f"export-{conversations}.duckdb"
    if db.exists():
        return db
    # 4 lines make 3 trajectories, and ~4 % of lines are Failed; a few extra lines cover both.
    lines = int(conversations * 4 / 3 / 0.955) + 1000
    base = DATA / f"export-{conversations}-base.jsonl"
    print(f"writing {lines:,} records ...", file=sys.stderr, flush=True)
    write(base, lines * 1800 / 2**20)
    path = DATA / f"export-{conversations}.jsonl"
    previous: dict[str, Any] = {}
    with base.open("rb") as src, path.open("w", encoding="utf-8") as out:
        for seed, line in enumerate(src):
            record = json.loads(line)
            if seed % 4 == 3 and previous.get("state") == "Success":
                record = _follow_up(previous, record, seed)
            previous = record
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    base.unlink()
    partial = db.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    store = Store(partial, memory_limit=memory_limit)
    import_files(store, [path])
    path.unlink()
    # Cut to exactly N trajectories: drop the Success calls of the last ones beyond N.
    with store.write() as con:
        have = con.execute("select count(*) from conversations").fetchall()[0][0]
        if have > conversations:
            con.execute(
                """delete from generation_rows where id in (
                       select unnest(list_concat(folded_ids, [id]))
                       from (select * from conversations order by id desc limit ?))""",
                [have - conversations],
            )
    os.replace(partial, db)
    return db


def run(script: str, db: Path, memory_limit: str, out: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", script, str(db), memory_limit, str(out)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "Out of Memory" in done.stderr:
            return {"oom": True}
        raise SystemExit(done.stderr)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), limit=memory_limit)


def run_copy(db: Path, memory_limit: str, out: Path) -> dict[str, Any]:
    """The COPY under the export's limit, or, if DuckDB runs out of memory, under twice that, ..."""
    number, unit = int(memory_limit[:-2]), memory_limit[-2:]
    while True:
        result = run(COPY, db, f"{number}{unit}", out)
        if not result.get("oom"):
            return result
        number *= 2


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("data/*")) + [folder / "lineage.parquet"]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--memory-limit", default="1GB")
    args = parser.parse_args()
    print(f"machine: {machine()}; memory limit {args.memory_limit}\n")
    print("| conversations | run | copy s (memory limit) | copy peak MiB | export s (memory limit) | export peak MiB |"
          " export / copy | rows written | split check | same bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        db = make_store(size, args.memory_limit)
        for run_no in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                copy = run_copy(db, args.memory_limit, Path(tmp))
                first = run(EXPORT, db, args.memory_limit, Path(tmp))
                one = digest(Path(tmp) / "export")
                os.rename(Path(tmp) / "export", Path(tmp) / "first")
                run(EXPORT, db, args.memory_limit, Path(tmp))
                same = one == digest(Path(tmp) / "export")
            print(f"| {size:,} | {run_no} | {copy['seconds']:.1f} ({copy['limit']}) | {copy['rss_mb']:.0f} | "
                  f"{first['seconds']:.1f} ({first['limit']}) | "
                  f"{first['rss_mb']:.0f} | {first['seconds'] / copy['seconds']:.2f}x | {first['rows']:,} | "
                  f"{first['shared'][0]} keys, {first['shared'][1]} prompts | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
