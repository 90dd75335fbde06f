"""``curate export conversations --format messages`` beside DuckDB's ``COPY (select * from conversations) TO parquet``.

    .venv/bin/python bench/bench_export.py [--sizes 200000,1000000] [--rounds 3] [--memory-limit 1GB]
                                           [--before /tmp/before]

For each size N, a store holding N conversations is built once into bench/data/ (git-ignored):
``make_generations.write``'s synthetic GenerationForClient records (tool calls, ~4 % Failed,
non-ASCII text), in which every fourth line (4k+3) is rewritten as the follow-up call of the line
before it (the whole history re-sent plus a new user turn), so ``conversations`` folds one call in
four and holds N Success trajectories, some of them two calls long.

Each round then times, each in a fresh process under the same memory limit, from before opening
the store until the files are closed, with the process's peak RSS:

* ``copy``: DuckDB's own ``COPY (select * from conversations) TO 'x.parquet'`` (zstd), the floor,
  spilling to a temporary folder; if it runs out of memory under the limit, under twice the
  limit, and so on (the table says which);
* ``export``: ``curate.exporter.export(store, "conversations", fmt="messages")``, test fraction 0.1,
  exact dedup: typed messages, validation, split, lineage, card;
* with ``--before DIR``, the same export by the curate in DIR (e.g. the committed code:
  ``git archive HEAD | tar -x -C /tmp/before``), in the same round.

The machine is shared, so each ratio is taken within its round (floor and exports back to back),
and the median over the rounds is printed. Each export's data files and lineage are digested:
one digest per code over all rounds means the same bytes every time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_views import _follow_up, machine
from make_generations import write

from curate.importer import import_files
from curate.store import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"

COPY = """
import json, os, resource, sys, time
db, limit, out = sys.argv[1:4]
started = time.perf_counter()
from curate.store import Store
store = Store(db, memory_limit=limit)
with store.read() as con:  # the views are a reader's (temporary) views
    con.execute("set enable_progress_bar = false")
    con.execute(f"set temp_directory = '{out}/spill'")  # as the export spills into its scratch folder
    con.execute(f"copy (select * from conversations) to '{out}/copy.parquet' (format parquet, compression zstd)")
print(json.dumps({"seconds": time.perf_counter() - started, "rows": None, "cpu": sum(os.times()[:2]),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

EXPORT = """
import json, os, resource, sys, time
db, limit, out = sys.argv[1:4]
started = time.perf_counter()
from curate.exporter import export
from curate.store import Store
steps = []
store = Store(db, memory_limit=limit)
result = export(store, "conversations", out + "/export", fmt="messages", test_size=0.1,
                progress=lambda m: steps.append([round(time.perf_counter() - started, 2), m[:40]]))
print(json.dumps({"seconds": time.perf_counter() - started, "rows": result.counts["deduplicated"],
                  "counts": result.counts, "shared": [result.shared_keys, result.shared_prompts], "steps": steps,
                  "cpu": sum(os.times()[:2]), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# The export's own read statement (exporter._read_sql), cut into stages, each written by DuckDB
# to one Parquet file as the COPY floor is: what each step of the work costs before any
# decision, scratch table or second read.
STAGE = """
import json, os, resource, sys, time
db, limit, out, stage = sys.argv[1:5]
started = time.perf_counter()
import duckdb
from curate import exporter, formats
from curate.store import Store, no_progress_bar
store = Store(db, memory_limit=limit)
con = duckdb.connect(out + "/work.duckdb", config={"memory_limit": limit})  # the read names work.near
no_progress_bar(con)
con.execute(f"set temp_directory = '{out}/spill'")
con.execute("create table near (id varchar, cluster_id varchar)")
with store.attached(con, "store"):
    con.execute("use store")
    query = "select * from conversations"
    cols = ", ".join(f'{expr} as "{name}"' for name, expr in formats.columns("messages").items())
    if stage == "typed":  # the typed messages of the format, nothing else
        sql = (f"select {cols} from (select {formats.typed_messages('messages::varchar')} as t, tools "
               f"from ({query}))")
    else:  # the read: typed, checked, hashed, split; "sorted" also in the seeded order (the export's own read)
        read = exporter._read_sql(query, exporter._describe(con, query), exporter.ExportOptions())
        sort = "from source_rows order by shuffle, id"
        assert sort in read, "the read's seeded order is no longer where this bench cuts it"
        if stage == "checked":
            read = read.replace(sort, "from source_rows")
        keys = "id, split, content_hash, prompt_hash, finished_at, nbytes, reason"
        sql = f"select {cols}, {keys} from ({read})"
    con.execute(f"copy ({sql}) to '{out}/stage.parquet' (format parquet, compression zstd, row_group_size 10000)")
    con.execute("use work")
print(json.dumps({"seconds": time.perf_counter() - started, "cpu": sum(os.times()[:2]),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
STAGES = ("typed", "checked", "sorted")


def make_store(conversations: int, memory_limit: str) -> Path:
    """A store with ``conversations`` Success trajectories, built once."""
    DATA.mkdir(exist_ok=True)
    db = DATA / f"export-{conversations}.duckdb"
    if db.exists():
        Store(db, memory_limit=memory_limit).migrate()  # a store built by an older curate: readers refuse it
        return db
    # 4 lines make 3 trajectories, and ~4 % of lines are Failed; a few extra lines cover both.
    lines = int(conversations * 4 / 3 / 0.955) + 1000
    base = DATA / f"export-{conversations}-base.jsonl"
    print(f"writing {lines:,} records ...", file=sys.stderr, flush=True)
    write(base, lines * 1800 / 2**20)
    path = DATA / f"export-{conversations}.jsonl"
    previous: dict[str, Any] = {}
    with base.open("rb") as src, path.open("w", encoding="utf-8") as out:
        for seed, line in enumerate(src):
            record = json.loads(line)
            if seed % 4 == 3 and previous.get("state") == "Success":
                record = _follow_up(previous, record, seed)
            previous = record
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    base.unlink()
    partial = db.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    store = Store(partial, memory_limit=memory_limit)
    import_files(store, [path])
    path.unlink()
    _cut(store, conversations)
    os.replace(partial, db)
    return db


def _cut(store: Store, conversations: int) -> None:
    """Cut to exactly N trajectories: drop the calls of the last ones beyond N (the views are a
    reader's, so the ids are listed by a reader, then deleted by the writer)."""
    have = store.arrow("select count(*) as n from conversations").to_pylist()[0]["n"]
    if have <= conversations:
        return
    ids = store.arrow("""select unnest(list_concat(folded_ids, [id])) as id
                         from (select * from conversations order by id desc limit ?)""", [have - conversations])
    with store.write() as con:
        con.register("cut_ids", ids)
        con.execute("delete from generation_rows where id in (select id from cut_ids)")
        con.unregister("cut_ids")


def run(script: str, db: Path, memory_limit: str, out: Path, code: Path = ROOT, *args: str) -> dict[str, Any]:
    """``script`` in a fresh process, importing curate from ``code`` (a checkout of the repository)."""
    env = dict(os.environ, PYTHONPATH=str(code))
    done = subprocess.run([sys.executable, "-c", script, str(db), memory_limit, str(out), *args],
                          capture_output=True, text=True, check=False, cwd=code, env=env)
    if done.returncode != 0:
        if "Out of Memory" in done.stderr:
            return {"oom": True}
        raise SystemExit(done.stderr)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), limit=memory_limit)


def run_copy(db: Path, memory_limit: str, out: Path) -> dict[str, Any]:
    """The COPY under the export's limit, or, if DuckDB runs out of memory, under twice that, ..."""
    number, unit = int(memory_limit[:-2]), memory_limit[-2:]
    while True:
        result = run(COPY, db, f"{number}{unit}", out)
        if not result.get("oom"):
            return result
        number *= 2


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("data/*")) + [folder / "lineage.parquet"]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--before", type=Path, default=None,
                        help="another tree of curate (e.g. `git archive HEAD | tar -x -C /tmp/before`) whose export "
                             "runs in the same rounds, beside this one's")
    parser.add_argument("--stages", action="store_true",
                        help="also time the export's read statement in stages (typed, checked, sorted), each "
                             "written straight to Parquet: what the work costs before any decision")
    args = parser.parse_args()
    print(f"machine: {machine()}; memory limit {args.memory_limit}\n")
    codes = {"export": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    stages = STAGES if args.stages else ()
    print("Ratios are each run's over the COPY's of the same round; cpu is the process's user + system seconds, "
          "every thread.\n")
    print("| conversations | round | copy s (limit) | copy cpu s | copy peak MiB | "
          + " | ".join(f"{name} s | {name} cpu s | {name} peak MiB | {name} / copy | cpu ratio" for name in codes)
          + "".join(f" | {stage} cpu ratio (wall)" for stage in stages)
          + " | rows written | split check | bytes |")
    print("|---|---|---|---|---|" + "---|---|---|---|---|" * len(codes) + "---|" * len(stages) + "---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        db = make_store(size, args.memory_limit)
        digests: dict[str, set[str]] = {name: set() for name in codes}
        ratios: dict[str, list[float]] = {name: [] for name in [*codes, *(f"{n} cpu" for n in codes), *stages,
                                                                 *(f"{s} wall" for s in stages)]}
        for round_no in range(1, args.rounds + 1):
            cells, first = [], None
            with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                # The floor and each export in turn, in every round: the machine is shared, so the
                # ratio is taken within the round.
                copy = run_copy(db, args.memory_limit, Path(tmp))
                for name, code in codes.items():
                    result = run(EXPORT, db, args.memory_limit, Path(tmp), code)
                    digests[name].add(digest(Path(tmp) / "export"))
                    shutil.rmtree(Path(tmp) / "export")
                    ratios[name].append(result["seconds"] / copy["seconds"])
                    ratios[f"{name} cpu"].append(result["cpu"] / copy["cpu"])
                    cells.append(f"{result['seconds']:.1f} | {result['cpu']:.1f} | {result['rss_mb']:.0f} | "
                                 f"{ratios[name][-1]:.2f}x | {ratios[f'{name} cpu'][-1]:.2f}x")
                    print(f"  {name} steps: {result['steps']}", file=sys.stderr, flush=True)
                    first = first or result
                for stage in stages:
                    result = run(STAGE, db, args.memory_limit, Path(tmp), ROOT, stage)
                    ratios[stage].append(result["cpu"] / copy["cpu"])
                    ratios[f"{stage} wall"].append(result["seconds"] / copy["seconds"])
                    cells.append(f"{ratios[stage][-1]:.2f}x (wall {ratios[f'{stage} wall'][-1]:.2f}x)")
                    for leftover in Path(tmp).glob("work.duckdb*"):
                        leftover.unlink()
            assert first is not None
            same = ", ".join(f"{name}: {len(d)} digest{'s' if len(d) > 1 else ''}" for name, d in digests.items())
            print(f"| {size:,} | {round_no} | {copy['seconds']:.1f} ({copy['limit']}) | {copy['cpu']:.1f} | "
                  f"{copy['rss_mb']:.0f} | " + " | ".join(cells)
                  + f" | {first['rows']:,} | {first['shared'][0]} keys, {first['shared'][1]} prompts | {same} |",
                  flush=True)
        print()
        for name, values in ratios.items():
            ordered = sorted(values)
            print(f"{size:,}: {name} / copy, median of {len(ordered)} rounds: {ordered[len(ordered) // 2]:.2f}x "
                  f"(range {ordered[0]:.2f}-{ordered[-1]:.2f})")
        for name in codes:
            print(f"{size:,}: {name}: distinct data digests {sorted(digests[name])}")


if __name__ == "__main__":
    main()
