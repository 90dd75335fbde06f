"""Harvest: API calls per stored generation, how late each is stored, rate-limit violations, and
throughput against a bare concurrent httpx GET loop; beside inference.net's published polling
loop (every id polled each second, 5 at a time).

    .venv/bin/python bench/bench_harvest.py [--n 2000]

The sandbox runs in its own process with realistic latency (log-normal, ~2 s queued, ~4 s
running, 3 % failures); the harvester paces itself at --rpm 3,000 (50/s, so a run takes seconds,
not the paid tier's 8 minutes), and a separate run checks it against a sandbox enforcing that
rate. Requests are submitted with plain httpx and their ids written to the ledger, so only the
harvest is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from curate import ledger
from curate.config import Settings
from curate.harvester import harvest
from curate.sandbox import SandboxProcess
from curate.store import Store
from curate.synthetic import chat_request

RPM = 3000
LATENCY = {"queue_delay": 2.0, "run_delay": 4.0, "delay_spread": 0.5, "failure_rate": 0.03}


async def _submit(url: str, key: str, n: int, group: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        if group == 1:
            sem = asyncio.Semaphore(16)

            async def one(seed: int) -> str:
                async with sem:
                    answer = await http.post("/v1/slow/chat/completions", json=chat_request(seed))
                    return str(answer.json()["id"])

            return list(await asyncio.gather(*(one(seed) for seed in range(n))))
        ids = []
        for start in range(0, n, group):
            body = {"requests": [chat_request(seed) for seed in range(start, min(n, start + group))]}
            ids.append((await http.post("/v1/slow/group/chat/completions", json=body)).json()["groupId"])
        return ids


def _ledgered(store: Store, ids: list[str], kind: str) -> None:
    with store.write() as con:
        ledger.add(con, ids, kind=kind, source="submit")  # type: ignore[arg-type]


def _lateness(store: Store) -> float:
    """Median seconds between a generation finishing and it being stored."""
    row = store.arrow(
        "select median(epoch(first_seen_at) - epoch(finished_at)) as s from generation_rows "
        "where finished_at is not null"
    ).to_pylist()[0]
    return float(row["s"])


def curate_run(n: int, group: int, **latency: Any) -> dict[str, Any]:
    # The sandbox enforces no limit here: the bench submits in a burst, which a shared limit
    # would charge to the harvest. The harvester still paces itself at --rpm; `rate_limited`
    # checks the limit on its own.
    with tempfile.TemporaryDirectory() as tmp, SandboxProcess(**latency) as sandbox:
        store = Store(Path(tmp) / "h.duckdb")
        ids = asyncio.run(_submit(sandbox.url, sandbox.api_key, n, group))
        _ledgered(store, ids, "generation" if group == 1 else "group")
        started = time.monotonic()
        summary = harvest(store, Settings(api_key=sandbox.api_key, base_url=sandbox.url),
                          rpm=RPM, concurrency=16)
        seconds = time.monotonic() - started
        return {
            "stored": summary.stored, "calls": summary.calls,
            "calls_per_generation": summary.calls / max(1, summary.stored),
            "lateness_s": _lateness(store), "seconds": seconds,
        }


def published_loop(n: int) -> dict[str, Any]:
    """inference.net's example: each id polled every second, 5 pollers, until terminal."""

    async def run(url: str, key: str, ids: list[str]) -> tuple[int, list[float]]:
        calls = 0
        late: list[float] = []
        sem = asyncio.Semaphore(5)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=30) as http:
            async def poll(generation_id: str) -> None:
                nonlocal calls
                for _ in range(120):
                    async with sem:
                        calls += 1
                        answer = await http.get(f"/v1/generation/{generation_id}")
                    if answer.status_code == 200 and answer.json()["state"] in ("Success", "Failed"):
                        finished = answer.json()["finishedAt"]
                        late.append(time.time() - _epoch(finished))
                        return
                    await asyncio.sleep(1.0)

            await asyncio.gather(*(poll(i) for i in ids))
        return calls, late

    with SandboxProcess(**LATENCY) as sandbox:
        ids = asyncio.run(_submit(sandbox.url, sandbox.api_key, n, 1))
        started = time.monotonic()
        calls, late = asyncio.run(run(sandbox.url, sandbox.api_key, ids))
        return {"calls_per_generation": calls / n, "lateness_s": statistics.median(late),
                "seconds": time.monotonic() - started}


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def rate_limited(n: int) -> dict[str, Any]:
    """The harvester against a sandbox enforcing the same limit: no call may get a 429.

    The limit is RPM scaled to a 6 s window (same rate, so the bench need not wait a minute for
    its own setup calls to leave the window). Setup submits groups and reads their member ids,
    waits out the window, then the harvest polls every id singly.
    """
    window, limit = 6.0, RPM // 10
    quick = {"queue_delay": 0.0, "run_delay": 0.0, "delay_spread": 0.0, "visibility_delay": 0.0}
    with tempfile.TemporaryDirectory() as tmp, SandboxProcess(
        rpm_limit=limit, rate_window=window, **quick
    ) as sandbox:
        groups = asyncio.run(_submit(sandbox.url, sandbox.api_key, n, 50))
        time.sleep(0.5)
        with httpx.Client(base_url=sandbox.url, headers=sandbox.headers, timeout=30) as http:
            ids = [g["id"] for group in groups
                   for g in http.get(f"/v1/slow/group/{group}/generations").json()["generations"]]
        time.sleep(window + 0.5)
        store = Store(Path(tmp) / "r.duckdb")
        _ledgered(store, ids, "generation")
        before = sandbox.stats()
        started = time.monotonic()
        summary = harvest(store, Settings(api_key=sandbox.api_key, base_url=sandbox.url),
                          rpm=limit, concurrency=16, client_options={"rate_period": window})
        stats = sandbox.stats()
        return {"stored": summary.stored, "calls": summary.calls,
                "seconds": time.monotonic() - started,
                "calls_per_s": summary.calls / (time.monotonic() - started),
                "violations": stats.rate_limit_violations - before.rate_limit_violations}


def throughput(n: int) -> dict[str, float]:
    """GETs per second with the limit lifted: curate's harvest against a bare httpx loop."""
    quick = {"queue_delay": 0.0, "run_delay": 0.0, "delay_spread": 0.0, "visibility_delay": 0.0}
    with tempfile.TemporaryDirectory() as tmp, SandboxProcess(**quick) as sandbox:
        ids = asyncio.run(_submit(sandbox.url, sandbox.api_key, n, 1))
        time.sleep(0.5)  # every generation is done: each GET is one stored body

        async def bare() -> float:
            sem = asyncio.Semaphore(16)
            async with httpx.AsyncClient(base_url=sandbox.url, timeout=30,
                                         headers={"Authorization": f"Bearer {sandbox.api_key}"}) as http:
                async def get(generation_id: str) -> None:
                    async with sem:
                        (await http.get(f"/v1/generation/{generation_id}")).json()

                started = time.monotonic()
                await asyncio.gather(*(get(i) for i in ids))
                return n / (time.monotonic() - started)

        bare_rate = asyncio.run(bare())
        store = Store(Path(tmp) / "t.duckdb")
        _ledgered(store, ids, "generation")
        started = time.monotonic()
        summary = harvest(store, Settings(api_key=sandbox.api_key, base_url=sandbox.url),
                          rpm=None, concurrency=16)
        curate_rate = summary.calls / (time.monotonic() - started)
        return {"bare_get_per_s": bare_rate, "curate_get_per_s": curate_rate,
                "ratio": curate_rate / bare_rate, "stored": summary.stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    n = args.n
    print(f"{n} generations; sandbox latency {LATENCY}; --rpm {RPM}\n")
    singles = curate_run(n, 1, **LATENCY)
    print(f"curate harvest, single ids: {singles}")
    groups = curate_run(n, 50, **LATENCY)
    print(f"curate harvest, groups of 50: {groups}")
    limited = rate_limited(n)
    print(f"curate harvest at the limit ({RPM} rpm as {RPM // 10} per 6 s): {limited}")
    baseline = published_loop(n)
    print(f"published 1-second loop: {baseline}")
    rates = throughput(n)
    print(f"throughput, limit lifted: {rates}")


if __name__ == "__main__":
    main()
