"""``curate dedup near`` over 200,000 chat rows: time and peak memory, in a fresh process.

    .venv/bin/python bench/bench_neardup.py [--n 200000] [--on prompt]

The store is made once in bench/data/ (git-ignored) from ``make_generations.write``'s records.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from make_generations import write

from curate.importer import import_files
from curate.store import Store

DATA = Path(__file__).resolve().parent / "data"
RUN = """
import json, resource, sys
from curate.neardup import near_duplicates
from curate.store import Store
r = near_duplicates(Store(sys.argv[1]), on=sys.argv[2])
print(json.dumps({"rows": r.rows, "clusters": r.clusters, "in_clusters": r.rows_in_clusters, "seconds": r.seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--on", default="prompt")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    db = DATA / f"neardup-{args.n}.duckdb"
    if not db.exists():
        jsonl = DATA / f"neardup-{args.n}.jsonl"
        if not jsonl.exists():
            raw = DATA / "neardup-raw.jsonl"
            write(raw, args.n * 1.9 / 1024)
            with raw.open("rb") as src, jsonl.open("wb") as dst:
                for i, line in enumerate(src):
                    if i >= args.n:
                        break
                    dst.write(line)
            raw.unlink()
        import_files(Store(db), [jsonl])
    done = subprocess.run([sys.executable, "-c", RUN, str(db), args.on], check=True, capture_output=True, text=True)
    r = json.loads(done.stdout)
    print("| rows | on | clusters | rows in clusters | seconds | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|")
    print(f"| {r['rows']:,} | {args.on} | {r['clusters']:,} | {r['in_clusters']:,} | {r['seconds']:.1f} | {r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
