"""Import throughput: curate's import of a 1 GB JSONL of GenerationForClient records, beside
DuckDB's own ``read_json`` of the same file into a table (the ceiling).

    make bench            # or: .venv/bin/python bench/bench_import.py [--mb 1024] [--runs 2]

Each run is a fresh process on a fresh store file, timed from before connecting until the
connection is closed, with the process's peak RSS. The file is generated once into bench/data/
(git-ignored) by make_generations.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
from make_generations import write

HERE = Path(__file__).resolve().parent

CEILING = """
import json, os, resource, sys, time, duckdb
path, db = sys.argv[1], sys.argv[2]
started = time.perf_counter()
con = duckdb.connect(db)
con.execute("create table g as select * from read_json(?)", [path])
rows = con.execute("select count(*) from g").fetchone()[0]
con.close()
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# The floor of any lossless store: only the raw lines, zstd-compressed, nothing parsed.
RAW_ONLY = """
import json, resource, sys, time, duckdb
path, db = sys.argv[1], sys.argv[2]
started = time.perf_counter()
con = duckdb.connect(db)
con.execute("create table raw_lines (raw json using compression zstd)")
con.execute(
    "insert into raw_lines select text from read_csv(?, columns = {'text': 'VARCHAR'}, "
    "delim = chr(1), quote = '', escape = '', header = false, auto_detect = false)", [path])
rows = con.execute("select count(*) from raw_lines").fetchone()[0]
con.close()
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CURATE = """
import json, resource, sys, time
from curate.store import Store
from curate.importer import import_files
path, db = sys.argv[1], sys.argv[2]
store = Store(db)
if len(sys.argv) > 3:  # re-import: the store already holds the file
    import_files(store, [path])
started = time.perf_counter()
summary = import_files(store, [path])
print(json.dumps({"seconds": time.perf_counter() - started,
                  "rows": summary.stored + summary.duplicate + summary.rejected,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(script: str, path: Path, *extra: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        db = Path(tmp) / "bench.duckdb"
        done = subprocess.run([sys.executable, "-c", script, str(path), str(db), *extra],
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["db_mb"] = db.stat().st_size / 2**20
        return result


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()[1]
        ram = f"{int(mem) / 2**20:.0f} GiB"
    except OSError:
        ram = "?"
    return (f"{os.cpu_count()} cores ({cpu}), {ram} RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, duckdb {duckdb.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1024.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    (HERE / "data").mkdir(exist_ok=True)
    path = HERE / "data" / f"generations-{args.mb:g}mb.jsonl"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write(path, args.mb)
    # The same file with a truncated last line: the one-pass insert refuses it at the very end,
    # the worst case for a messy file, which then takes the two-pass merge.
    bad_tail = path.with_name(path.stem + "-bad-tail.jsonl")
    if not bad_tail.exists():
        shutil.copyfile(path, bad_tail)
        with bad_tail.open("a") as out:
            out.write('{"id": "cut-off", "state": "Succ\n')
    size_mb = path.stat().st_size / 2**20
    print(f"machine: {machine()}")
    print(f"file: {path.name}, {size_mb:.0f} MiB\n")
    print("| run | path | seconds | MiB/s | rows/s | peak RSS MiB | store MiB |")
    print("|---|---|---|---|---|---|---|")
    # The three main paths run back to back in every round, so each round gives a paired ratio
    # (this machine's speed drifts by 20-30% between minutes); the merge paths run once.
    ratios: list[float] = []
    for n in range(1, args.runs + 1):
        cases = [
            ("duckdb read_json (ceiling)", CEILING, path, ()),
            ("raw lines only (lossless floor)", RAW_ONLY, path, ()),
            ("curate import", CURATE, path, ()),
        ]
        if n == 1:
            cases += [
                ("curate import, bad last line (merge path)", CURATE, bad_tail, ()),
                ("curate re-import, all duplicates", CURATE, path, ("again",)),
            ]
        seconds: dict[str, float] = {}
        for name, script, file, extra in cases:
            r = run(script, file, *extra)
            seconds[name] = r["seconds"]
            print(f"| {n} | {name} | {r['seconds']:.2f} | {size_mb / r['seconds']:.1f} | "
                  f"{r['rows'] / r['seconds']:,.0f} | {r['rss_mb']:.0f} | {r['db_mb']:.0f} |",
                  flush=True)
        ratios.append(seconds["duckdb read_json (ceiling)"] / seconds["curate import"])
    print(f"\ncurate import throughput / ceiling, per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}x "
          f"(goal >= 0.70x)")


if __name__ == "__main__":
    main()
