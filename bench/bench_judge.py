"""API calls per judged row and per sampled answer, and judge throughput at a given --rpm, beside their floors.

    .venv/bin/python bench/bench_judge.py [--n 1000] [--k 3] [--rpm 250] [--collect polling,webhooks]

On the sandbox (its own process, enforcing --rpm per minute), a store holding --n
chat rows of traffic is sampled --k times per prompt by a teacher (``curate.sampling.sample``),
the answers collected, then every answer judged by the shipped ``helpfulness`` rubric
(``curate.judging.judge``), each request set sent in groups of 50. Collecting is done two ways:

* polling: ``curate.harvester.harvest`` (one GET per group once it is done, more while it runs);
* webhooks: the requests carry ``--webhook-id`` and ``curate listen`` (its own process) stores
  each generation as the sandbox delivers it: no GET at all.

The figures are the sandbox's own counts of the calls it served (POSTs and GETs), over the rows
judged or answers sampled. The floor of calls per row is 1/50 (one POST per group of 50); the
floor of judge throughput is what --rpm allows: rpm x 50 / 60 rows per second (the sandbox
answers at once, so the limit is what binds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curate.config import Settings
from curate.harvester import harvest
from curate.importer import import_files
from curate.judging import JudgeOptions, judge, rubric
from curate.sampling import SampleOptions, sample
from curate.sandbox import SandboxProcess
from curate.store import Store, StoreLocked
from curate.submit import SubmitOptions
from curate.synthetic import generation_record

ROOT = Path(__file__).resolve().parent.parent
CURATE = str(Path(sys.executable).with_name("curate"))
GROUP = 50


def traffic(store: Store, n: int, folder: Path) -> None:
    path = folder / "traffic.jsonl"
    with path.open("w") as out:
        for seed in range(n):
            out.write(json.dumps(generation_record(seed, state="Success")) + "\n")
    import_files(store, [path])


def calls(sandbox: SandboxProcess) -> tuple[int, int]:
    by = sandbox.stats().calls_by_endpoint
    posts = sum(v for k, v in by.items() if k.startswith("POST"))
    gets = sum(v for k, v in by.items() if k.startswith("GET"))
    return posts, gets


def wait_for(store: Store, sql: str, want: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(StoreLocked):  # the listener may hold the file for a moment
            if store.arrow(sql).column(0)[0].as_py() >= want:
                return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {want} rows of: {sql}")


def run(n: int, k: int, rpm: int, webhooks: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "bench.duckdb"
        store = Store(db)
        traffic(store, n, folder)
        listener = None
        port = 18000 + os.getpid() % 1000
        extra = {"webhook_url": f"http://127.0.0.1:{port}/webhook"} if webhooks else {}
        with SandboxProcess(queue_delay=0.2, run_delay=0.2, rpm_limit=rpm, rate_window=60.0,
                            **extra) as sandbox:
            settings = Settings(api_key=sandbox.api_key, base_url=sandbox.url)
            webhook_id = "bench-webhook" if webhooks else None
            if webhooks:
                env = dict(os.environ, CURATE_WEBHOOK_IDS=webhook_id or "")
                listener = subprocess.Popen([CURATE, "listen", "--db", str(db), "--port", str(port),
                                             "--webhook-id", webhook_id or ""], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(2.0)
            submit = SubmitOptions(group_size=GROUP, rpm=rpm, concurrency=4, webhook_id=webhook_id)

            def collect(sql: str, want: int) -> None:
                if webhooks:
                    wait_for(store, sql, want)
                else:
                    harvest(store, settings, rpm=rpm)

            try:
                base = calls(sandbox)
                sample(store, settings, "chat", SampleOptions(model="teacher/big", n=k, temperature=0.8, submit=submit))
                collect("select count(*) from samples", n * k)
                sampled = calls(sandbox)
                started = time.perf_counter()
                summary = judge(store, settings, "samples", JudgeOptions(model="judge/strict", rubric=rubric("helpfulness"),
                                                                         submit=submit))
                sending = time.perf_counter() - started
                collect("select count(*) from judgments", n * k)
                judged = calls(sandbox)
            finally:
                if listener is not None:
                    listener.terminate()
                    listener.wait(30)
            violations = sandbox.stats().rate_limit_violations
        rows = summary.rows
        assert rows == n * k and store.arrow("select count(*) as c from judgments").column(0)[0].as_py() == rows
    return {
        "sample_posts": sampled[0] - base[0], "sample_gets": sampled[1] - base[1],
        "judge_posts": judged[0] - sampled[0], "judge_gets": judged[1] - sampled[1], "rows": rows,
        "judge_seconds": sending, "violations": violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--rpm", type=int, default=250)
    parser.add_argument("--collect", default="polling,webhooks", help="polling, webhooks, or both (comma-separated)")
    args = parser.parse_args()
    floor_rate = args.rpm * GROUP / 60
    print(f"{args.n} prompts x {args.k} samples, each answer judged; groups of {GROUP}; --rpm {args.rpm} "
          f"(the sandbox enforces the same per minute)\n")
    print("| collected by | API calls per sampled answer (POST + GET) | API calls per judged row (POST + GET) | floor "
          "| judge rows/s sending | floor rows/s (rpm x 50 / 60) | ratio | rate-limit violations |")
    print("|---|---|---|---|---|---|---|---|")
    for label, webhooks in (("polling (curate harvest)", False), ("webhooks (curate listen)", True)):
        if ("webhooks" if webhooks else "polling") not in args.collect.split(","):
            continue
        r = run(args.n, args.k, args.rpm, webhooks)
        answers = args.n * args.k
        per_answer = (r["sample_posts"] + r["sample_gets"]) / answers
        per_row = (r["judge_posts"] + r["judge_gets"]) / r["rows"]
        rate = r["rows"] / r["judge_seconds"]
        print(f"| {label} | {per_answer:.4f} ({r['sample_posts']:.0f} + {r['sample_gets']:.0f}) | {per_row:.4f} "
              f"({r['judge_posts']:.0f} + {r['judge_gets']:.0f}) | {1 / GROUP:.4f} | {rate:,.0f} | {floor_rate:,.0f} "
              f"| {rate / floor_rate:.2f}x | {r['violations']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
