"""The ``chat`` and ``conversations`` views over 1,000,000 generated generations: time and peak memory.

    .venv/bin/python bench/bench_views.py [--n 1000000] [--runs 1]

The data is ``make_generations.write``'s synthetic GenerationForClient records (multi-turn
chats, tool calls, ~4 % Failed, non-ASCII text), cut to ``--n`` lines, in which every fourth
line starts a 3-call conversation: lines 4k+2 and 4k+3 are rewritten as the follow-up calls of
the line before them (the whole history re-sent, with the previous answer and a new user turn),
so that ``conversations`` has real folding to do: half the calls (4k+1 and 4k+2) fold into 4k+3.
The file is made once into bench/data/ (git-ignored); the store is imported anew on each run.

Each view is then read whole in its own fresh process, two ways: materialised (``create temp
table x as select * from VIEW``: DuckDB spills past the memory limit) and streamed as Arrow
batches (as an export reads it), under the store's memory limit (1 GB unless ``--memory-limit``),
timed from before connecting (and making the views, as every reader does, as temporary views of
its connection) until the last row, with the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from make_generations import write

from curate.importer import import_files
from curate.store import Store
from curate.synthetic import chat_response

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

MATERIALISE = """
import json, resource, sys, time, duckdb
from curate import views
db, view, limit, how = sys.argv[1:5]
started = time.perf_counter()
con = duckdb.connect(db, read_only=True, config={"memory_limit": limit})
con.execute("set enable_progress_bar = false")
errors = views.install(con, views.load([views.QUERIES_DIR]))  # as every reader does: temporary views
if errors:
    raise SystemExit("\\n".join(map(str, errors)))
if how == "table":
    con.execute(f"create temp table x as select * from {view}")
    seconds = time.perf_counter() - started
    rows = con.execute("select count(*) from x").fetchall()[0][0]
else:  # the way an export reads a view: Arrow batches, streamed
    rows = 0
    for batch in con.sql(f"select * from {view}").to_arrow_reader(batch_size=10_000):
        rows += batch.num_rows
    seconds = time.perf_counter() - started
con.close()
print(json.dumps({"seconds": seconds, "rows": rows,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
HOW = {"table": "create temp table x as select * from VIEW", "arrow": "Arrow batches of 10,000, streamed"}


def _follow_up(previous: dict[str, Any], record: dict[str, Any], seed: int) -> dict[str, Any]:
    """``record`` rewritten as the next call of ``previous``'s conversation: its history re-sent."""
    history = list(previous["request"]["messages"])
    answer = (previous.get("response") or chat_response(seed - 1, previous["request"], created=0))
    history.append(answer["choices"][0]["message"])
    history.append({"role": "user", "content": f"Thanks. And one more thing about call {seed}?"})
    request = dict(previous["request"], messages=history)
    request["metadata"] = {"custom_id": f"req-{seed:08d}"}
    out = dict(record, request=request, state="Success", stateMessage="Generation completed")
    out["response"] = chat_response(seed, request, created=0)
    out["finishedAt"] = record["finishedAt"] or record["dispatchedAt"]
    return out


def make_data(n: int) -> Path:
    """The benchmark's JSONL: ``n`` records, three in four of them in 3-call conversations."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"views-{n}.jsonl"
    if path.exists():
        return path
    base = DATA / f"views-{n}-base.jsonl"
    have = 0
    if base.exists():
        with base.open("rb") as lines:
            have = sum(1 for _ in lines)
    if have < n:
        print(f"writing {base} ...", flush=True)
        write(base, n * 1800 / 2**20)  # records average ~1.75 KB: enough for n, cut below
    tmp = path.with_suffix(".tmp")
    previous: dict[str, Any] = {}
    with base.open("rb") as src, tmp.open("w", encoding="utf-8") as out:
        for seed, line in enumerate(src):
            if seed == n:
                break
            record = json.loads(line)
            if seed % 4 in (2, 3):
                record = _follow_up(previous, record, seed)
            previous = record
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    base.unlink()
    return path


def materialise(db: Path, view: str, memory_limit: str, how: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MATERIALISE, str(db), view, memory_limit, how],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ram = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return (f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, duckdb {duckdb.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--views", default="chat,conversations")
    parser.add_argument("--memory-limit", default="1GB")
    args = parser.parse_args()
    path = make_data(args.n)
    print(f"machine: {machine()}")
    print(f"file: {path.name}, {path.stat().st_size / 2**20:.0f} MiB, {args.n:,} records; "
          f"memory limit {args.memory_limit}")
    print("read as: " + "; ".join(f"{how} = {what}" for how, what in HOW.items()) + "\n")
    print("| run | view | read as | rows | seconds | rows/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        db = Path(tmp) / "bench.duckdb"
        store = Store(db, memory_limit=args.memory_limit)
        started = time.perf_counter()
        import_files(store, [path])
        imported = time.perf_counter() - started
        started = time.perf_counter()
        with store.read():  # the views, made as every reader makes them: in its own connection
            pass
        if store.view_errors:
            raise SystemExit("\n".join(map(str, store.view_errors)))
        print(f"(import {imported:.1f} s, opening read-only with the views {time.perf_counter() - started:.2f} s, "
              f"store {db.stat().st_size / 2**20:.0f} MiB)\n", file=sys.stderr, flush=True)
        for run in range(1, args.runs + 1):
            for view in args.views.split(","):
                for how in HOW:
                    r = materialise(db, view, args.memory_limit, how)
                    print(f"| {run} | {view} | {how} | {r['rows']:,} | {r['seconds']:.2f} | "
                          f"{r['rows'] / r['seconds']:,.0f} | {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
