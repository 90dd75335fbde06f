"""How many webhook deliveries per second ``curate listen`` stores durably, and that none acked is lost.

Each round starts ``curate listen`` as its own process on a fresh store (optionally preloaded with
``--preload`` generations, so the merge looks ids up in a store that is not empty), then offers
``generation.completed`` deliveries from the sandbox's load generator on ``--connections``
keep-alive connections (each delivery is ~2 KB, as inference.net's typically are) for
``--seconds``, and then kills the listener with SIGKILL while deliveries are still arriving.
Afterwards every acknowledged generation id must be in the store, exactly once.

    python bench_listen.py [--rounds 3] [--seconds 20] [--connections 512] [--preload 100000]

Goal (issue 4): >= 1,000 deliveries/s on a 2-core machine with 0 acknowledged deliveries lost.
The load generator shares the machine's two cores with the listener, so the figure is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa

from curate.sandbox.loadgen import LoadReport, deliver, envelopes
from curate.store import Store
from curate.synthetic import generation_record

WID = "wh-bench"
CURATE = str(Path(sys.executable).parent / "curate")


def preload(db: Path, n: int) -> None:
    store = Store(db)
    for start in range(0, n, 50_000):
        texts = [json.dumps(generation_record(i)) for i in range(start, min(n, start + 50_000))]
        store.ingest_texts(texts, source="preload")


def one_round(db: Path, seconds: float, connections: int, offered: int, start: int) -> dict[str, Any]:
    items = envelopes(offered, webhook_id=WID, start=start)
    proc = subprocess.Popen(
        [CURATE, "listen", "--db", str(db), "--port", "0", "--webhook-id", WID],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.split("url=", 1)[1].split()[0]
    result: dict[str, LoadReport] = {}
    thread = threading.Thread(target=lambda: result.update(
        report=asyncio.run(deliver(url, items, webhook_id=WID, connections=connections, timeout=30))))
    started = time.perf_counter()
    thread.start()
    time.sleep(seconds)
    health = httpx.get(url.replace("/webhook", "/healthz")).json()
    proc.send_signal(signal.SIGKILL)  # mid-load: what a crash looks like
    proc.wait()
    killed_after = time.perf_counter() - started
    thread.join()
    proc.stdout.close()
    report = result["report"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        con.register("acked", pa.table({"id": pa.array(report.acked, pa.string())}))
        lost = con.execute("select count(*) from acked where id not in (select id from generation_rows)").fetchone()
        dupes = con.execute("select count(*) - count(distinct id) from generation_rows").fetchone()
        stored = con.execute("select count(*) from generation_rows where source = 'webhook'").fetchone()
    finally:
        con.close()
    latencies = sorted(report.latencies)
    batches = health["counters"].get("batches", 0)
    return {
        "acked": len(report.acked),
        "acked_per_s": len(report.acked) / killed_after,
        "stored_webhook_rows": stored[0] if stored else None,
        "lost": lost[0] if lost else None,
        "duplicate_rows": dupes[0] if dupes else None,
        "cut_off": report.errors,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "mean_batch": health["counters"].get("stored", 0) / batches if batches else None,
        "busy_share": health["counters"].get("batch_ms", 0) / 1000 / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--preload", type=int, default=100_000)
    parser.add_argument("--offered", type=int, default=60_000, help="deliveries prepared per round")
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            db = Path(tmp) / f"round{r}.duckdb"
            preload(db, args.preload)
            row = one_round(db, args.seconds, args.connections, args.offered, start=10_000_000 * (r + 1))
            rows.append(row)
            print(json.dumps({"round": r + 1, **{k: round(v, 2) if isinstance(v, float) else v
                                                  for k, v in row.items()}}), flush=True)
    rates = [row["acked_per_s"] for row in rows]
    print(f"median {statistics.median(rates):.0f} acked deliveries/s over {args.rounds} rounds "
          f"({args.connections} connections, store preloaded with {args.preload:,}); "
          f"lost {sum(row['lost'] for row in rows)}, duplicate rows {sum(row['duplicate_rows'] for row in rows)}")


if __name__ == "__main__":
    main()
