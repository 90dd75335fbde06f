"""``curate dedup near`` against its floor, in alternating rounds, each side in a fresh process.

    .venv/bin/python bench/bench_neardup.py [--n 100000] [--on prompt] [--rounds 3] [--planted 0]
                                            [--pass-code DIR] [--no-exact]

The pass: ``near_duplicates(store, on=..., full=True)`` (``--pass-code DIR``: the curate of another
checkout, e.g. ``git archive HEAD | tar -x -C /tmp/nd-before``; ``--no-exact``: with exact
verification off, to price it). The floor: the cheapest way to get the same texts and sign them,
i.e. one query of the same normalised texts from the store into Arrow (``neardup._texts_sql``,
the text column alone) plus rensa's signatures of the same shingles (their 64-bit hashes made
beforehand, untimed, as the pass makes them); making the shingles is printed apart, and counts
against the pass. Rounds alternate which side runs first; the ratio is pass / floor per round, in
wall seconds, and the CPU ratio the same in CPU seconds (user + system, every thread of the
process: of the pass, of the floor's read and signing), which a loaded machine disturbs less.

The store is made once in bench/data/ (git-ignored) from ``make_generations.write``'s records
(100,000 records: 95,652 chat rows). ``--planted K`` adds up to K rows, each a copy of an existing prompt
(its last request message with 1 to 12 of its words replaced), so that pairs fall on both sides of the threshold and some are
decided on their exact similarity (a store of its own, ``neardup-N-planted-K.duckdb``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

from make_generations import write

from curate.importer import import_files
from curate.store import Store
from curate.synthetic import generation_record

DATA = Path(__file__).resolve().parent / "data"

PASS = """
import json, resource, sys
import curate.neardup as neardup
from curate.store import Store
if sys.argv[3] == "no-exact":
    neardup.margin = lambda threshold, num_perm: 0.0
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
before = cpu()
r = neardup.near_duplicates(Store(sys.argv[1]), on=sys.argv[2], full=True)
print(json.dumps({"rows": r.rows, "clusters": r.clusters, "in_clusters": r.rows_in_clusters, "seconds": r.seconds,
                  "cpu": cpu() - before,
                  "candidates": getattr(r, "candidates", None), "exact_checks": getattr(r, "exact_checks", None),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FLOOR = """
import json, resource, sys, time
import pyarrow.compute as pc
import rensa
from curate import neardup
from curate.store import Store
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
store = Store(sys.argv[1])
started, before = time.perf_counter(), cpu()
texts = store.arrow(f"select text from ({neardup._texts_sql(sys.argv[2])})").column("text")
read, read_cpu = time.perf_counter() - started, cpu() - before
texts = pc.filter(texts, pc.greater(pc.utf8_length(pc.fill_null(texts, "")), 0)).to_pylist()
started = time.perf_counter()
batch = 10_000  # as before the pass's batches shrank to 2,000 rows (rensa signs either as fast)
made = [neardup.shingles(texts[i : i + batch], neardup.DEFAULT_SHINGLE) for i in range(0, len(texts), batch)]
hashing = time.perf_counter() - started
started, before = time.perf_counter(), cpu()
for hashes, offsets in made:
    rensa.RMinHash.digest_matrix_from_flat_token_hashes(neardup._u64(hashes), offsets, neardup.DEFAULT_NUM_PERM,
                                                        neardup.SEED)
sign, sign_cpu = time.perf_counter() - started, cpu() - before
print(json.dumps({"read": read, "sign": sign, "floor": read + sign, "shingling": hashing,
                  "cpu": read_cpu + sign_cpu}))
"""


def make_store(n: int) -> Path:
    DATA.mkdir(exist_ok=True)
    db = DATA / f"neardup-{n}.duckdb"
    if not db.exists():
        jsonl = DATA / f"neardup-{n}.jsonl"
        if not jsonl.exists():
            raw = DATA / "neardup-raw.jsonl"
            write(raw, n * 1.9 / 1024)
            with raw.open("rb") as src, jsonl.open("wb") as dst:
                for i, line in enumerate(src):
                    if i >= n:
                        break
                    dst.write(line)
            raw.unlink()
        import_files(Store(db), [jsonl])
    return db


def plant(db: Path, n: int, k: int) -> Path:
    """A copy of ``db`` with ``k`` more rows, each an existing prompt with 1 to 12 words replaced."""
    planted = DATA / f"neardup-{n}-planted-{k}.duckdb"
    if planted.exists():
        return planted
    rnd = random.Random(19)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]
    records = []
    for seed in range(k):
        # Record ``seed`` of the store (make_generations renders seeds 0..n-1), its last request
        # message's words partly replaced, under a new id.
        original = generation_record(seed)
        if original.get("state") != "Success":
            continue
        body = generation_record(10_000_000 + seed, state="Success")
        messages = json.loads(json.dumps(original["request"]["messages"]))
        last = messages[-1]
        if not isinstance(last.get("content"), str) or not last["content"].split():
            continue
        tokens = last["content"].split()
        for _ in range(rnd.randint(1, 12)):
            tokens[rnd.randrange(len(tokens))] = rnd.choice(words)
        last["content"] = " ".join(tokens)
        body["request"]["messages"] = messages
        records.append(json.dumps(body))
    tmp = planted.with_suffix(".tmp")
    tmp.write_bytes(db.read_bytes())
    store = Store(tmp)
    for start in range(0, len(records), 5000):
        store.ingest_texts(records[start : start + 5000], source="planted")
    tmp.rename(planted)
    return planted


def run(code: str, db: Path, on: str, mode: str, pythonpath: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", code, str(db), on, mode], check=True, capture_output=True, text=True,
                          env=env)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--on", default="prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--planted", type=int, default=0)
    parser.add_argument("--pass-code", default=None, help="a folder whose curate/ the pass is run from")
    parser.add_argument("--no-exact", action="store_true")
    args = parser.parse_args()
    db = make_store(args.n)
    if args.planted:
        db = plant(db, args.n, args.planted)
    Store(db).migrate()  # a store made by an older curate lacks the schema the readers expect
    mode = "no-exact" if args.no_exact else "exact"
    ratios, cpu_ratios = [], []
    print("| round | pass s | floor s (read + sign) | shingling s | ratio | CPU ratio | rows | clusters "
          "| rows in clusters | candidates | exact checks | peak RSS MB | load |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        if round_ % 2:
            floor = run(FLOOR, db, args.on, mode, None)
            near = run(PASS, db, args.on, mode, args.pass_code)
        else:
            near = run(PASS, db, args.on, mode, args.pass_code)
            floor = run(FLOOR, db, args.on, mode, None)
        ratio = near["seconds"] / floor["floor"]
        ratios.append(ratio)
        cpu_ratio = near["cpu"] / floor["cpu"] if near.get("cpu") and floor.get("cpu") else float("nan")
        cpu_ratios.append(cpu_ratio)
        print(f"| {round_} | {near['seconds']:.2f} | {floor['floor']:.2f} ({floor['read']:.2f} + {floor['sign']:.2f}) "
              f"| {floor['shingling']:.2f} | {ratio:.2f}x | {cpu_ratio:.2f}x | {near['rows']:,} | {near['clusters']:,} "
              f"| {near['in_clusters']:,} | {near['candidates']} | {near['exact_checks']} | {near['rss_mb']:.0f} "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f}x, median CPU ratio {statistics.median(cpu_ratios):.2f}x "
          f"over {args.rounds} rounds")


if __name__ == "__main__":
    main()
