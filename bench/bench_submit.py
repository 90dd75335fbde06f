"""Submit: singles (``--group-size 1``) sent concurrently within the account's rate, beside that rate.

    .venv/bin/python bench/bench_submit.py [--n 2000] [--rpm 3000]

The floor is the rate limit itself: a submit can send no faster than --rpm allows, so the
figure is requests per second over the limit's per-second rate, measured over the whole run
(reading and checking the file, every claim, every answer made durable, the last merge). The
sandbox runs in its own process and enforces the same rate over a 1-second sliding window (a
stricter test of pacing than a 60-second one); it answers at once, so the limit is what binds.
A second run sends groups of 50 for comparison.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from curate.config import Settings
from curate.sandbox import SandboxProcess
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
from curate.synthetic import chat_request


def run(n: int, rpm: int, group_size: int) -> dict[str, float]:
    per_second = rpm / 60
    with tempfile.TemporaryDirectory() as tmp, SandboxProcess(
        queue_delay=0.5, run_delay=0.5, rpm_limit=max(1, round(per_second)), rate_window=1.0
    ) as sandbox:
        path = Path(tmp) / "requests.jsonl"
        path.write_text("".join(json.dumps(chat_request(seed)) + "\n" for seed in range(n)))
        store = Store(Path(tmp) / "bench.duckdb")
        settings = Settings(api_key=sandbox.api_key, base_url=sandbox.url)
        started = time.perf_counter()
        summary = submit_file(store, settings, path, SubmitOptions(group_size=group_size, rpm=rpm, concurrency=8))
        seconds = time.perf_counter() - started
        stats = sandbox.stats()
        states = {r["state"]: r["n"] for r in
                  store.arrow("select state, count(*) as n from submissions group by all").to_pylist()}
    assert summary.submitted == n and states == {"submitted": n}, (summary, states)
    return {
        "posts": summary.posts, "seconds": seconds, "per_second": summary.posts / seconds,
        "ratio": summary.posts / seconds / per_second, "violations": stats.rate_limit_violations,
        "generations": stats.submitted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rpm", type=int, default=3000)
    args = parser.parse_args()
    print(f"{args.n} chat requests; --rpm {args.rpm} ({args.rpm / 60:.1f}/s), sandbox limit the same per 1 s\n")
    for label, group_size in (("singles (--group-size 1)", 1), ("groups of 50", 50)):
        r = run(args.n, args.rpm, group_size)
        print(f"{label}: {r['posts']:,.0f} POSTs in {r['seconds']:.1f} s = {r['per_second']:.1f}/s, "
              f"{r['ratio']:.2f}x the rate limit; {r['violations']:.0f} rate-limit violations; "
              f"{r['generations']:,.0f} generations created for {args.n:,} lines")


if __name__ == "__main__":
    main()
