"""``curate export conversations --pii redact`` under the store's memory limit, a finding in every row.

    cd bench && ../.venv/bin/python bench_redact.py [--size 200000] [--rounds 1] [--memory-limit 1GB]
                                                   [--before DIR]

The store is bench_export.py's store of N conversations (built there, or here the same way), copied
once to bench/data/redact-N.duckdb (git-ignored), scanned for PII (``curate scan pii``, so that
every row is covered and the export runs no scan), and then given one more finding in each chat
row: an e-mail span over the first three characters of its longest message. So every exported row
has a span to redact, the case where ``--pii redact`` holds the most text.

Each round times, in a fresh process, ``export(store, "conversations", out, pii="redact",
rescan=False)`` under the memory limit, from opening the store to the files closed: wall seconds,
CPU seconds and peak RSS, and with ``--before DIR`` the same by the curate in DIR (e.g. ``git
archive db57158 | tar -x -C /tmp/before``). The goal is memory flat under 1.5 GB at the default
1 GB limit, as the export's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_export import DATA, ROOT, machine, make_store, run

from curate import pii
from curate.store import Store

EXPORT = """
import json, os, resource, sys, time
db, limit, out = sys.argv[1:4]
started = time.perf_counter()
from curate.exporter import export
from curate.store import Store
result = export(Store(db, memory_limit=limit), "conversations", out + "/export", pii="redact", rescan=False,
                test_size=0.1)
print(json.dumps({"seconds": time.perf_counter() - started, "cpu": sum(os.times()[:2]),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "redacted": result.counts.get("PII redacted"), "written": result.counts.get("train", 0) + result.counts.get("test", 0)}))
"""


def make_redact_store(size: int, memory_limit: str) -> Path:
    """bench_export's store of ``size`` conversations, scanned, with a finding in every chat row."""
    db = DATA / f"redact-{size}.duckdb"
    if db.exists():
        Store(db, memory_limit=memory_limit).migrate()
        return db
    partial = db.with_suffix(".partial")
    shutil.copyfile(make_store(size, memory_limit), partial)
    store = Store(partial, memory_limit=memory_limit)
    print("scanning for PII ...", file=sys.stderr, flush=True)
    pii.scan(store)
    longest = store.arrow("""
        select id, (list_position(lengths, list_max(lengths)) - 1)::int as message_index from (
            select id, list_transform(messages::json[], lambda m: coalesce(length(m ->> 'content'), 0)) as lengths
            from chat)
        where list_max(lengths) >= 3""")
    with store.write() as con:
        con.register("longest", longest)
        con.execute("""insert into pii_findings (id, message_index, kind, span_start, span_end, detector, scanned_at)
                       select id, message_index, 'email', 0, 3, 'regex', now() from longest
                       where (id, message_index) not in (select (id, message_index) from pii_findings)""")
        con.unregister("longest")
    os.replace(partial, db)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--before", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}; memory limit {args.memory_limit}\n")
    db = make_redact_store(args.size, args.memory_limit)
    codes = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    print("| conversations | round | code | seconds | cpu s | peak MiB | rows written | rows redacted |")
    print("|---|---|---|---|---|---|---|---|")
    for round_no in range(1, args.rounds + 1):
        for name, code in codes.items():
            with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                result = run(EXPORT, db, args.memory_limit, Path(tmp), code)
            if result.get("oom"):
                print(f"| {args.size:,} | {round_no} | {name} | out of memory | | | | |", flush=True)
                continue
            print(f"| {args.size:,} | {round_no} | {name} | {result['seconds']:.1f} | {result['cpu']:.1f} | "
                  f"{result['rss_mb']:.0f} | {result['written']:,} | {result['redacted']:,} |", flush=True)


if __name__ == "__main__":
    main()
