"""Acknowledged webhook deliveries per second: ``curate listen`` beside a no-op endpoint, same run.

Each round serves, one after the other, on the same ASGI server (uvicorn with uvloop and
httptools, started by ``curate.serving.serve_forever`` in its own process):

1. a no-op endpoint: a Starlette route that reads the body and answers 200, nothing else;
2. ``curate listen`` on a fresh store (preloaded with ``--preload`` generations), which answers
   200 once the delivery is fsynced in the spool and merges it into the store when it can.

Both get the same load: the sandbox's load generator, ``--connections`` keep-alive connections,
~2 KB ``generation.completed`` bodies, for ``--seconds``. The listener is killed with SIGKILL at
the end of its load, while deliveries are still arriving; a new listener then merges what the
killed one spooled, and every acknowledged id must be in the store exactly once.

Then, with nobody else on the file, single deliveries one after another: the time from each
acknowledgement to the moment the listener reports it merged (its /healthz spool backlog empty,
which it updates after the merge's commit) gives the ack-to-visible latency.

    python bench_listen.py [--rounds 3] [--seconds 15] [--connections 512] [--preload 100000]

Goal (issue 15): >= 0.5x the no-op endpoint, >= 5,000 acknowledged/s on 2 cores, 0 lost.
The load generator shares the machine's two cores with the server, so the figures are floors.
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

from curate.sandbox.loadgen import LoadSummary, deliver, envelopes
from curate.store import Store
from curate.synthetic import generation_record

WID = "wh-bench"
CURATE = str(Path(sys.executable).parent / "curate")

NOOP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from curate.serving import serve_forever

async def webhook(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True, "outcome": "noop"})

serve_forever(Starlette(routes=[Route("/webhook", webhook, methods=["POST"])]), host="127.0.0.1", port=0,
              ready_line=lambda url: f"noop ready url={url}/webhook")
"""


def preload(db: Path, n: int) -> None:
    store = Store(db)
    for start in range(0, n, 50_000):
        texts = [json.dumps(generation_record(i)) for i in range(start, min(n, start + 50_000))]
        store.ingest_texts(texts, source="preload")


def start(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split("url=", 1)[1].split()[0]


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()


def load(url: str, items: list[Any], connections: int, seconds: float,
         kill: subprocess.Popen[str] | None = None) -> tuple[LoadSummary, float]:
    """Offer ``items`` for ``seconds``; with ``kill``, SIGKILL that process then, mid-load."""
    result: dict[str, LoadSummary] = {}
    duration = None if kill is not None else seconds
    thread = threading.Thread(target=lambda: result.update(
        report=asyncio.run(deliver(url, items, webhook_id=WID, connections=connections, duration=duration,
                                   timeout=30))))
    started = time.perf_counter()
    thread.start()
    if kill is not None:
        time.sleep(seconds)
        kill.send_signal(signal.SIGKILL)  # mid-load: what a crash looks like
        kill.wait()
    thread.join()
    return result["report"], time.perf_counter() - started if kill is None else seconds


def listen(db: Path) -> tuple[subprocess.Popen[str], str]:
    return start([CURATE, "listen", "--db", str(db), "--port", "0", "--webhook-id", WID])


def merged(url: str, timeout: float = 60.0) -> None:
    """Wait until the listener at ``url`` has merged every record waiting in its spool."""
    deadline = time.monotonic() + timeout
    health = url.replace("/webhook", "/healthz")
    while time.monotonic() < deadline:
        body = httpx.get(health).json()
        if body["spool"]["records"] == 0 and body["queued"] == 0:
            return
        time.sleep(0.05)
    raise TimeoutError("the listener did not merge its spool")


def one_round(db: Path, seconds: float, connections: int, offered: int, first: int) -> dict[str, Any]:
    noop, noop_url = start([sys.executable, "-c", NOOP])
    noop_report, noop_seconds = load(noop_url, envelopes(offered, webhook_id=WID, start=first), connections, seconds)
    stop(noop)
    items = envelopes(offered, webhook_id=WID, start=first + offered)
    proc, url = listen(db)
    report, killed_after = load(url, items, connections, seconds, kill=proc)
    if proc.stdout is not None:
        proc.stdout.close()
    restarted, url = listen(db)  # merges what the killed listener spooled
    spool_dir = Store(db).spool_dir
    deadline = time.monotonic() + 120
    while len(list(spool_dir.glob("*.seg"))) > 1 and time.monotonic() < deadline:  # the killed one's, merged
        time.sleep(0.1)
    merged(url)
    stop(restarted)
    con = duckdb.connect(str(db), read_only=True)
    try:
        con.register("acked", pa.table({"id": pa.array(report.acked, pa.string())}))
        lost = con.execute("select count(*) from acked where id not in (select id from generation_rows)").fetchone()
        dupes = con.execute("select count(*) - count(distinct id) from generation_rows").fetchone()
    finally:
        con.close()
    latencies = sorted(report.latencies)
    noop_rate = noop_report.statuses.get(200, 0) / noop_seconds
    rate = len(report.acked) / killed_after
    return {
        "noop_per_s": noop_rate,
        "acked_per_s": rate,
        "ratio": rate / noop_rate,
        "acked": len(report.acked),
        "non_200": sum(n for status, n in report.statuses.items() if status != 200),
        "lost": lost[0] if lost else None,
        "duplicate_rows": dupes[0] if dupes else None,
        "p50_ack_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ack_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


def visible_latency(db: Path, samples: int) -> dict[str, float]:
    """Ack to merged, one delivery at a time, nobody else on the file."""
    proc, url = listen(db)
    health = url.replace("/webhook", "/healthz")
    took = []
    try:
        with httpx.Client() as client:
            for item in envelopes(samples, webhook_id=WID, start=90_000_000):
                answer = client.post(url, content=item.body, headers={"X-Inference-Webhook-ID": WID,
                                                                      "Content-Type": "application/json"})
                acked = time.perf_counter()
                assert answer.status_code == 200, answer.text
                while client.get(health).json()["spool"]["records"]:
                    time.sleep(0.002)
                took.append(time.perf_counter() - acked)
    finally:
        stop(proc)
    took.sort()
    return {"samples": samples, "p50_ms": 1000 * took[len(took) // 2], "p99_ms": 1000 * took[int(len(took) * 0.99)],
            "max_ms": 1000 * took[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--preload", type=int, default=100_000)
    parser.add_argument("--offered", type=int, default=150_000, help="deliveries prepared per load")
    parser.add_argument("--latency-samples", type=int, default=300)
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            db = Path(tmp) / f"round{r}.duckdb"
            preload(db, args.preload)
            row = one_round(db, args.seconds, args.connections, args.offered, first=10_000_000 * (r + 1))
            rows.append(row)
            print(json.dumps({"round": r + 1, **{k: round(v, 2) if isinstance(v, float) else v
                                                  for k, v in row.items()}}), flush=True)
        db = Path(tmp) / "latency.duckdb"
        preload(db, args.preload)
        latency = visible_latency(db, args.latency_samples)
    print(json.dumps({"ack_to_visible": {k: round(v, 1) for k, v in latency.items()}}))
    rates = [row["acked_per_s"] for row in rows]
    ratios = [row["ratio"] for row in rows]
    print(f"median {statistics.median(rates):,.0f} acked deliveries/s, {statistics.median(ratios):.2f}x the no-op "
          f"endpoint ({statistics.median(row['noop_per_s'] for row in rows):,.0f}/s) over {args.rounds} rounds "
          f"({args.connections} connections, store preloaded with {args.preload:,}); "
          f"lost {sum(row['lost'] for row in rows)}, duplicate rows {sum(row['duplicate_rows'] for row in rows)}; "
          f"ack to visible p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms")


if __name__ == "__main__":
    main()
