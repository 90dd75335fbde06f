"""The lake beside one DuckDB file: ingest rows/s with 1, 2 and 4 writers, and read latency of ``chat``.

    .venv/bin/python bench/bench_lake.py [--writers 1,2,4] [--rows-per-writer 100000]
        [--read-rows 1000000] [--batch-rows 5000] [--catalog postgres|sqlite]
        [--skip-ingest] [--skip-read] [--skip-lookup] [--lookup-rounds 7] [--memory-limit 1GB]

Small check run (a minute or two): ``--writers 1,2 --rows-per-writer 5000 --read-rows 20000``.

The catalog is a throwaway PostgreSQL server on 127.0.0.1 (``tests/postgres.py``; needs the
system's PostgreSQL, ``scripts/ensure-postgres.sh``), one fresh database and one fresh warehouse
folder per lake; ``--catalog sqlite`` puts each lake in a fresh folder with a SQLite catalog
instead. Every store and warehouse is made under bench/data/ (git-ignored); PostgreSQL and the
lakes are removed at the end, the cached stores are kept.

**Ingest.** Each writer has its own local store of ``--rows-per-writer`` distinct terminal
generations (``curate.synthetic.generation_record``, disjoint seed ranges per writer), built once
into bench/data/ (``lake-w{writer}-{rows}.duckdb``, imported from a JSONL) and copied afresh for
every run before the clock starts. For each N in ``--writers``, N spawned processes open their
copy and import pyiceberg, wait on one barrier, then each calls
``curate.lake.table.push(store, lake, batch_rows=...)`` into one fresh lake (its table created
beforehand). Reported: wall time from the barrier to the last writer's finish, rows/s of all
writers together, commits, commit conflicts pyiceberg retried (its "Commit failed due to a
concurrent update, retrying" warnings, counted per writer), appends that ran out of those retries
and were sent again by ``Lake.append``, the time of each ``Lake.append`` (one commit: Parquet
write plus catalog swap) and the share of push time spent in the local store (claiming rows and
recording them). Afterwards, untimed: the lake read through ``LakeStore`` must hold exactly
N x rows ids, every id of every writer's store, one row each, in one snapshot per commit.

Beside it, in fresh processes, on the same rows as writer 0: one writer into a DuckDB file
(``curate.importer.import_files(Store(new file), [jsonl])``) and the end-to-end path of one lake
writer (that import, then ``push`` to a fresh lake whose table exists), so that the lake's
overhead is in plain sight. A push claims each batch in the local store before sending it and
records it after; "local store share" is the part of the push spent there.

**Read.** A store of ``--read-rows`` generations (``lake-read-{rows}.duckdb``) is pushed, by one
writer in ``--batch-rows`` commits, to a lake with a SQLite catalog, both built once into
bench/data/ (``lake-read-{rows}-b{batch}/``; the first push of 1,000,000 rows is slow, see the
time printed); each run registers that table in a fresh catalog of its own. Then, each in a
fresh process under the same DuckDB memory limit (the store's default 1GB unless
``--memory-limit``), the lake through ``LakeStore(uri)`` and the DuckDB store through
``Store(path)`` are opened and queried ``--runs`` (3) times each: the open; ``select count(*)
from chat``; ``select model, count(*), avg(completion_tokens) from chat group by all``; and a
point lookup ``select * from chat where id = ?``. The table gives the first (cold) run and the
median, and each process's peak RSS. Every lake query also pays a check of the catalog for new
commits (``LakeStore.refresh``), and a re-plan of the files when there are some: these two are
timed on their own as well. The answers of the lake and of the DuckDB file must be the same.

**Point lookups** (issue 19). One fresh process opens both the lake and the DuckDB file (the
same read set, the same memory limit) and looks up the same ids in each: ``LOOKUP_IDS`` Success
generations spread over the read set, and one id that is in neither. After a warm-up lookup on
each, ``--lookup-rounds`` rounds alternate which store goes first; in a round each store looks
up every id once, through each of ``LOOKUPS`` (``chat`` and ``generation_rows``). Reported per
query: the median ms of one lookup on each, and the lake / DuckDB-file ratio (of the medians,
and the median of the rounds' ratios). Measured side by side in one process so that a busy
machine slows both alike. Every answer must be the same on both (one row per present id, none
for the missing one).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_views import machine
from make_generations import write_count

from curate.importer import import_files
from curate.store import ReadableStore, Store
from curate.synthetic import generation_id, generation_record

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent

# Writer i's seeds start at (i + 1) * WRITER_SEEDS: disjoint from one another and from the read set.
WRITER_SEEDS = 100_000_000
BARRIER_TIMEOUT = 600.0

QUERIES = {
    "count": "select count(*) from chat",
    "group by model": "select model, count(*), avg(completion_tokens) from chat group by all",
    "point lookup": "select * from chat where id = ?",
}

# Point lookups, lake against DuckDB file in one process (issue 19).
LOOKUPS = {
    "chat": "select * from chat where id = ?",
    "generation_rows": "select * from generation_rows where id = ?",
}
LOOKUP_IDS = 5
MISSING_ID = "no-such-generation-id"


# -- data: JSONL of distinct generations, and stores built from them once ---------------------


def build_store(db: Path, jsonl: Path, start: int, count: int, *, keep_jsonl: bool) -> Path:
    """A store of ``count`` generations (seeds ``start`` onwards), built once from ``jsonl``."""
    DATA.mkdir(exist_ok=True)
    if db.exists() and (jsonl.exists() or not keep_jsonl):
        return db
    if not jsonl.exists():
        print(f"writing {jsonl.name} ({count:,} records) ...", file=sys.stderr, flush=True)
        write_count(jsonl, count, start=start)
    if not db.exists():
        print(f"importing {jsonl.name} into {db.name} ...", file=sys.stderr, flush=True)
        partial = db.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        store = Store(partial)
        import_files(store, [jsonl])
        with store.read() as con:
            have = con.execute("select count(*) from generation_rows where state in ('Success', 'Failed')").fetchone()
        if not have or have[0] != count:
            raise SystemExit(f"{partial}: {have} terminal generations, expected {count:,}")
        os.replace(partial, db)
    if not keep_jsonl:
        jsonl.unlink()
    return db


def writer_data(index: int, rows: int) -> tuple[Path, Path]:
    """Writer ``index``'s cached store, and its JSONL (kept for writer 0 only, for the baselines)."""
    db = DATA / f"lake-w{index}-{rows}.duckdb"
    jsonl = DATA / f"lake-w{index}-{rows}.jsonl"
    build_store(db, jsonl, (index + 1) * WRITER_SEEDS, rows, keep_jsonl=index == 0)
    return db, jsonl


def read_data(rows: int) -> Path:
    return build_store(DATA / f"lake-read-{rows}.duckdb", DATA / f"lake-read-{rows}.jsonl", 0, rows,
                       keep_jsonl=False)


# -- lakes: fresh catalog and warehouse per run -------------------------------------------------


class Lakes:
    """Hands out fresh lakes under ``scratch``: a PostgreSQL database each, or a SQLite folder each."""

    def __init__(self, catalog: str, scratch: Path) -> None:
        self.catalog = catalog
        self.scratch = scratch
        self.server: Any = None
        self.version = "SQLite (pyiceberg SqlCatalog)"
        if catalog == "postgres":
            sys.path.insert(0, str(ROOT))
            from tests.postgres import PostgresServer

            self.server = PostgresServer().start()
            out = subprocess.run([str(self.server.bindir / "postgres"), "--version"],
                                 capture_output=True, text=True, check=False)
            self.version = f"{out.stdout.strip() or 'PostgreSQL'} on 127.0.0.1"

    def fresh(self, name: str) -> str:
        warehouse = self.scratch / name
        if self.server is None:
            return str(warehouse)  # a folder: catalog.db beside warehouse/
        warehouse.mkdir()
        return f"{self.server.create_database(name)}?warehouse={warehouse}"

    def register(self, name: str, metadata_location: str) -> str:
        """A fresh catalog in which the table is an existing lake's (``metadata_location``)."""
        from curate.lake.table import Lake

        if self.server is None:
            name = f"{name}-catalog"  # a folder whose warehouse stays empty
        uri = self.fresh(name)
        with Lake(uri) as lake:
            lake.catalog.create_namespace(lake.config.table.split(".")[0])
            lake.catalog.register_table(lake.config.table, metadata_location)
        return uri

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# -- worker processes ---------------------------------------------------------------------------


def _rss_mb() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: a spawned child inherits its parent's peak through fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Conflicts(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Commit failed due to a concurrent update"):
            self.count += 1


def _import_pyiceberg() -> None:
    import pyiceberg.catalog.sql
    import pyiceberg.io.pyarrow
    import pyiceberg.table  # noqa: F401


def _instrument() -> tuple[_Conflicts, list[float], list[int]]:
    """Count pyiceberg's retried conflicts and ``Lake.append``'s own retries; time each append."""
    from curate.lake import table as lake_module

    _import_pyiceberg()  # before the clock, as a running writer has it

    conflicts = _Conflicts()
    pyiceberg_log = logging.getLogger("pyiceberg.table")
    pyiceberg_log.addHandler(conflicts)
    pyiceberg_log.propagate = False  # counted, not printed
    appends: list[float] = []
    resent = [0]
    append, is_conflict = lake_module.Lake.append, lake_module._is_commit_conflict

    def timed_append(self: Any, rows: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return append(self, rows, **kwargs)
        finally:
            appends.append(time.perf_counter() - started)

    def counted_conflict(exc: BaseException) -> bool:
        conflict = is_conflict(exc)
        resent[0] += conflict
        return conflict

    lake_module.Lake.append = timed_append  # type: ignore[method-assign]
    lake_module._is_commit_conflict = counted_conflict
    return conflicts, appends, resent


def push_worker(db: str, lake_uri: str, batch_rows: int, barrier: Any, out: str) -> None:
    """One lake writer: its store open and pyiceberg imported, then ``push`` from the barrier on."""
    from curate.lake.table import push

    conflicts, appends, resent = _instrument()
    store = Store(db)
    barrier.wait(BARRIER_TIMEOUT)
    started = time.time()
    summary = push(store, lake_uri, batch_rows=batch_rows)
    finished = time.time()
    Path(out).write_text(json.dumps({
        "started": started, "finished": finished, "rows": summary.rows, "batches": summary.batches,
        "pending": summary.pending, "conflicts": conflicts.count, "resent": resent[0], "appends": appends,
        "rss_mb": _rss_mb(),
    }))


def import_worker(jsonl: str, db: str, lake_uri: str, batch_rows: int, out: str) -> None:
    """One writer into a new DuckDB file; with ``lake_uri``, then its push to that lake."""
    from curate.lake.table import push

    conflicts, appends, resent = _instrument()
    store = Store(db)
    started = time.perf_counter()
    summary = import_files(store, [jsonl])
    imported = time.perf_counter() - started
    result: dict[str, Any] = {"rows": summary.stored, "import_s": imported, "seconds": imported}
    if lake_uri:
        pushed = push(store, lake_uri, batch_rows=batch_rows)
        result.update(seconds=time.perf_counter() - started, push_s=time.perf_counter() - started - imported,
                      pushed=pushed.rows, batches=pushed.batches, pending=pushed.pending,
                      conflicts=conflicts.count, resent=resent[0], appends=appends)
    result["rss_mb"] = _rss_mb()
    Path(out).write_text(json.dumps(result))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _query(store: ReadableStore, sql: str, params: list[Any] | None) -> tuple[float, Any]:
    started = time.perf_counter()
    table = store.arrow(sql, params)
    return time.perf_counter() - started, table


def read_worker(kind: str, target: str, point_id: str, memory_limit: str, runs: int, out: str) -> None:
    """Open ``target`` (a lake URI or a store file) and time each query ``runs`` times."""
    from curate.lake.reader import LakeStore

    def open_store() -> ReadableStore:
        if kind == "lake":
            return LakeStore(target, memory_limit=memory_limit)
        return Store(target, memory_limit=memory_limit)

    times: dict[str, list[float]] = {}
    answers: dict[str, Any] = {}
    if kind == "lake":
        # Once per process, on the first open (curate imports pyiceberg only when a lake is used).
        times["import pyiceberg (first open only)"] = [_timed(_import_pyiceberg)[0]]
    times["open"] = []
    for run in range(runs):
        seconds, store = _timed(open_store)
        times["open"].append(seconds)
        if run < runs - 1 and isinstance(store, LakeStore):
            store.close()  # its private file goes; the last one is kept for the queries
    if isinstance(store, LakeStore):
        lake = store.lake
        times["catalog check (each query)"] = [_timed(lake.snapshot_id)[0] for _ in range(runs)]
        plans = [_timed(lake.data_files) for _ in range(runs)]
        times["plan files (after a commit)"] = [s for s, _ in plans]
        answers["files"] = len(plans[0][1])
    for name, sql in QUERIES.items():
        params = [point_id] if "?" in sql else None
        times[name] = []
        for _ in range(runs):
            seconds, table = _query(store, sql, params)
            times[name].append(seconds)
        # Small answers only (a count, a few models, one row): compared with the other store's.
        answers[name] = sorted([str(v) for v in row.values()] for row in table.to_pylist())
    if isinstance(store, LakeStore):
        store.close()
    Path(out).write_text(json.dumps({"times": times, "answers": answers, "rss_mb": _rss_mb()}))


def lookup_worker(lake_uri: str, db: str, ids: list[str], memory_limit: str, rounds: int, out: str) -> None:
    """The same point lookups on the lake and on the DuckDB file, alternating, in one process."""
    from curate.lake.reader import LakeStore

    _import_pyiceberg()
    lake = LakeStore(lake_uri, memory_limit=memory_limit)
    stores: dict[str, ReadableStore] = {"lake": lake, "duckdb": Store(db, memory_limit=memory_limit)}
    times: dict[str, dict[str, list[float]]] = {q: {k: [] for k in stores} for q in LOOKUPS}
    answers: dict[str, dict[str, list[Any]]] = {q: {k: [] for k in stores} for q in LOOKUPS}
    try:
        for name, store in stores.items():  # warm-up: first query of each, not timed
            store.arrow(LOOKUPS["chat"], [ids[0]])
        for round_ in range(rounds):
            order = list(stores) if round_ % 2 == 0 else list(reversed(stores))
            for query, sql in LOOKUPS.items():
                for name in order:
                    spent = 0.0
                    for wanted in ids:
                        seconds, table = _query(stores[name], sql, [wanted])
                        spent += seconds
                        if round_ == 0:
                            rows = table.to_pylist()
                            answers[query][name].append(sorted(sorted(str(v) for v in r.values()) for r in rows))
                    times[query][name].append(spent / len(ids))
    finally:
        lake.close()
    Path(out).write_text(json.dumps({"times": times, "answers": answers, "rss_mb": _rss_mb()}))


@contextmanager
def processes(ctx: Any) -> Iterator[list[Any]]:
    """The processes started in the block; any still running at its end (an error) are terminated."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def run_one(ctx: Any, target: Callable[..., None], *args: Any) -> dict[str, Any]:
    """``target(*args, out)`` in a fresh spawned process; its JSON result."""
    with tempfile.NamedTemporaryFile(dir=DATA, suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    try:
        with processes(ctx) as started:
            proc = ctx.Process(target=target, args=(*args, str(out)))
            proc.start()
            started.append(proc)
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"{target.__name__} failed (exit {proc.exitcode}); its traceback is above")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


# -- checks -------------------------------------------------------------------------------------


def check_lake(lake_uri: str, stores: list[Path], commits: int, memory_limit: str) -> str:
    """The lake as readers see it holds exactly the stores' ids, once each; '' when it does, else why not."""
    from curate.lake.reader import LakeStore

    expected = 0
    for db in stores:
        with Store(db).read() as con:
            expected += con.execute("select count(*) from generation_rows").fetchone()[0]  # type: ignore[index]
    store = LakeStore(lake_uri, memory_limit=memory_limit)
    try:
        files = store.lake.data_files()
        snapshots = len(store.lake.table().metadata.snapshots)
        with store.read() as con:
            seen, ids = con.execute("select count(*), count(distinct id) from generation_rows").fetchone()  # type: ignore[misc]
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            stored = con.execute(f"select count(*) from read_parquet([{listed}])").fetchone()[0]  # type: ignore[index]
            for i, db in enumerate(stores):
                quoted = str(db).replace("'", "''")
                con.execute(f"attach '{quoted}' as w{i} (read_only)")
            union = " union all ".join(f"select id from w{i}.generation_rows" for i in range(len(stores)))
            missing = con.execute(
                f"select count(*) from ({union}) s where not exists (select 1 from generation_rows g where g.id = s.id)"
            ).fetchone()[0]  # type: ignore[index]
    finally:
        store.close()
    problems = []
    if not (seen == ids == stored == expected):
        problems.append(f"{seen:,} rows / {ids:,} ids read, {stored:,} rows in the files, {expected:,} expected")
    if missing:
        problems.append(f"{missing:,} ids of the writers' stores missing")
    if snapshots != commits:
        problems.append(f"{snapshots} snapshots for {commits} commits")
    return "; ".join(problems)


# -- the two parts ------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds >= 0.0995 else f"{seconds * 1000:.1f}"


def _latency(appends: list[float]) -> str:
    if not appends:
        return "-"
    p90 = statistics.quantiles(appends, n=10, method="inclusive")[-1] if len(appends) > 1 else appends[0]
    return f"{_ms(statistics.median(appends))} / {_ms(p90)} / {_ms(max(appends))}"


def ingest(args: argparse.Namespace, ctx: Any, lakes: Lakes, scratch: Path) -> None:
    from curate.lake.table import Lake

    rows = args.rows_per_writer
    writers = [int(n) for n in args.writers.split(",")]
    data = [writer_data(i, rows) for i in range(max(writers))]
    jsonl = data[0][1]
    print(f"\n## Ingest: {rows:,} generations per writer, {args.batch_rows:,} rows per commit, "
          f"catalog {lakes.version}\n")
    print("| into | writers | rows | seconds | rows/s (all writers) | commits | conflicts retried | "
          "appends sent again | append ms median / p90 / max | local store share of push | "
          "peak RSS MiB (max writer) | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    duck = run_one(ctx, import_worker, str(jsonl), str(scratch / "import.duckdb"), "", args.batch_rows)
    ok = "ok" if duck["rows"] == rows else f"{duck['rows']:,} stored"
    print(f"| DuckDB file (import_files) | 1 | {rows:,} | {duck['seconds']:.2f} | "
          f"{rows / duck['seconds']:,.0f} | 1 | - | - | - | - | {duck['rss_mb']:.0f} | {ok} |", flush=True)

    uri = lakes.fresh("bench_e2e")
    with Lake(uri) as lake:
        lake.table()  # as below: the table exists before the clock
    e2e = run_one(ctx, import_worker, str(jsonl), str(scratch / "e2e.duckdb"), uri, args.batch_rows)
    problem = check_lake(uri, [scratch / "e2e.duckdb"], e2e["batches"], args.memory_limit)
    local = 1 - sum(e2e["appends"]) / e2e["push_s"]
    print(f"| lake: import_files, then push (import {e2e['import_s']:.2f} s + push {e2e['push_s']:.2f} s) | 1 | "
          f"{e2e['pushed']:,} | {e2e['seconds']:.2f} | {e2e['pushed'] / e2e['seconds']:,.0f} | {e2e['batches']} | "
          f"{e2e['conflicts']} | {e2e['resent']} | {_latency(e2e['appends'])} | {local:.0%} | "
          f"{e2e['rss_mb']:.0f} | {problem or 'ok'} |", flush=True)

    for n in writers:
        uri = lakes.fresh(f"bench_ingest_{n}")
        with Lake(uri) as lake:
            lake.table()  # the table exists before the clock, as it does for any writer but the first
        copies = []
        for i in range(n):
            copy = scratch / f"ingest-{n}-w{i}.duckdb"
            shutil.copyfile(data[i][0], copy)
            copies.append(copy)
        outs = [scratch / f"ingest-{n}-w{i}.json" for i in range(n)]
        barrier = ctx.Barrier(n + 1)
        with processes(ctx) as started:
            for i in range(n):
                proc = ctx.Process(target=push_worker,
                                   args=(str(copies[i]), uri, args.batch_rows, barrier, str(outs[i])))
                proc.start()
                started.append(proc)
            barrier.wait(BARRIER_TIMEOUT)
            released = time.time()
            for proc in started:
                proc.join()
            joined = time.time()
            if any(proc.exitcode != 0 for proc in started):
                raise SystemExit(f"a lake writer failed ({[p.exitcode for p in started]}); its traceback is above")
        results = [json.loads(out.read_text()) for out in outs]
        wall = max(r["finished"] for r in results) - min(r["started"] for r in results)
        total = sum(r["rows"] for r in results)
        commits = sum(r["batches"] for r in results)
        appends = [s for r in results for s in r["appends"]]
        local = 1 - sum(appends) / sum(r["finished"] - r["started"] for r in results)
        problem = check_lake(uri, copies, commits, args.memory_limit)
        if total != n * rows or any(r["pending"] for r in results):
            problem = "; ".join(filter(None, [problem, f"{total:,} rows pushed, {sum(r['pending'] for r in results)} pending"]))
        per_writer = ", ".join(f"{r['rows'] / (r['finished'] - r['started']):,.0f}" for r in results)
        print(f"| lake: push | {n} | {total:,} | {wall:.2f} | {total / wall:,.0f} (per writer {per_writer}) | "
              f"{commits} | {sum(r['conflicts'] for r in results)} | {sum(r['resent'] for r in results)} | "
              f"{_latency(appends)} | {local:.0%} | {max(r['rss_mb'] for r in results):.0f} | {problem or 'ok'} |",
              flush=True)
        print(f"(barrier to the last process joined: {joined - released:.2f} s)", file=sys.stderr, flush=True)
        for copy in copies:
            copy.unlink()


def point_id(rows: int) -> str:
    """A Success generation in the middle of the read set (so a ``chat`` row)."""
    seed = rows // 2
    while generation_record(seed)["state"] != "Success":
        seed += 1
    return generation_id(seed)


def read_lake(rows: int, batch_rows: int, memory_limit: str, scratch: Path) -> tuple[str, dict[str, Any]]:
    """The read set pushed to a lake of its own (SQLite catalog), built once; its metadata file and how it was built.

    Pushing 1M rows takes minutes (200 commits), so the lake is kept in bench/data/ and each run
    registers its current metadata in a fresh catalog.
    """
    from curate.lake.table import Lake, push

    folder = DATA / f"lake-read-{rows}-b{batch_rows}"
    built = folder / "built.json"
    if not built.exists():
        db = read_data(rows)
        shutil.rmtree(folder, ignore_errors=True)  # a build that did not finish
        copy = scratch / "read-copy.duckdb"
        shutil.copyfile(db, copy)
        print(f"pushing {db.name} to {folder.name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        pushed = push(Store(copy), str(folder), batch_rows=batch_rows)
        seconds = time.perf_counter() - started
        problem = check_lake(str(folder), [copy], pushed.batches, memory_limit)
        copy.unlink()
        if problem or pushed.rows != rows:
            raise SystemExit(f"{folder}: the read lake is wrong: {problem or f'{pushed.rows:,} rows pushed'}")
        built.write_text(json.dumps({"rows": pushed.rows, "commits": pushed.batches, "seconds": seconds}))
    with Lake(str(folder)) as lake:
        return lake.table(create=False).metadata_location, json.loads(built.read_text())


def read(args: argparse.Namespace, ctx: Any, lakes: Lakes, scratch: Path) -> None:
    rows = args.read_rows
    db = read_data(rows)
    metadata, built = read_lake(rows, args.batch_rows, args.memory_limit, scratch)
    uri = lakes.register("bench_read", metadata)
    wanted = point_id(rows)
    lake = run_one(ctx, read_worker, "lake", uri, wanted, args.memory_limit, args.runs)
    local = run_one(ctx, read_worker, "duckdb", str(db), wanted, args.memory_limit, args.runs)

    print(f"\n## Read: `chat` over {rows:,} generations, memory limit {args.memory_limit}, catalog {lakes.version}\n")
    print(f"(the lake: pushed once by one writer in {built['seconds']:.1f} s, {built['commits']} commits of up to "
          f"{args.batch_rows:,} rows, {lake['answers']['files']} Parquet files; the DuckDB file "
          f"{db.stat().st_size / 2**20:.0f} MiB)\n")
    print(f"| measure | lake: first ms | lake: median of {args.runs} ms | DuckDB file: first ms | "
          f"DuckDB file: median of {args.runs} ms | lake / DuckDB (median) | same answer |")
    print("|---|---|---|---|---|---|---|")
    for name, times in lake["times"].items():
        theirs = local["times"].get(name)
        if theirs is None:
            print(f"| {name} | {_ms(times[0])} | {_ms(statistics.median(times))} | - | - | - | - |")
            continue
        same = "-" if name == "open" else ("yes" if lake["answers"][name] == local["answers"][name] else "NO")
        ratio = statistics.median(times) / statistics.median(theirs)
        print(f"| {'open (`LakeStore(uri)` / `Store(path)`)' if name == 'open' else f'`{QUERIES[name]}`'} | "
              f"{_ms(times[0])} | {_ms(statistics.median(times))} | {_ms(theirs[0])} | "
              f"{_ms(statistics.median(theirs))} | {ratio:.1f}x | {same} |")
    print(f"| peak RSS MiB (the whole process) | {lake['rss_mb']:.0f} | | {local['rss_mb']:.0f} | | "
          f"{lake['rss_mb'] / local['rss_mb']:.1f}x | |", flush=True)
    answers = {k: v for k, v in lake["answers"].items() if k in QUERIES}
    if answers != local["answers"]:
        raise SystemExit(f"the lake and the DuckDB file answer differently:\n{answers}\n{local['answers']}")


def lookup_ids(rows: int) -> list[str]:
    """``LOOKUP_IDS`` Success generations spread over the read set, then one id that is in neither store."""
    found = []
    for k in range(LOOKUP_IDS):
        seed = rows * (2 * k + 1) // (2 * LOOKUP_IDS)
        while generation_record(seed)["state"] != "Success":
            seed += 1
        found.append(generation_id(seed))
    return [*found, MISSING_ID]


def lookup(args: argparse.Namespace, ctx: Any, lakes: Lakes, scratch: Path) -> None:
    rows = args.read_rows
    db = read_data(rows)
    metadata, built = read_lake(rows, args.batch_rows, args.memory_limit, scratch)
    uri = lakes.register("bench_lookup", metadata)
    ids = lookup_ids(rows)
    result = run_one(ctx, lookup_worker, uri, str(db), ids, args.memory_limit, args.lookup_rounds)

    print(f"\n## Point lookups: {len(ids) - 1} ids and a missing one over {rows:,} generations, "
          f"lake ({built['commits']} commits of up to {args.batch_rows:,} rows) and DuckDB file in one process, "
          f"{args.lookup_rounds} alternating rounds, memory limit {args.memory_limit}, catalog {lakes.version}\n")
    print("| lookup | lake: ms per lookup (median of rounds) | DuckDB file: ms per lookup | "
          "lake / DuckDB (medians) | lake / DuckDB (median of rounds' ratios, min-max) | same answer |")
    print("|---|---|---|---|---|---|")
    wrong = []
    for query, sql in LOOKUPS.items():
        lake_t, duck_t = result["times"][query]["lake"], result["times"][query]["duckdb"]
        ratios = [a / b for a, b in zip(lake_t, duck_t, strict=True)]
        lake_ans, duck_ans = result["answers"][query]["lake"], result["answers"][query]["duckdb"]
        expected_rows = [1] * (len(ids) - 1) + [0]
        same = lake_ans == duck_ans and [len(a) for a in lake_ans] == expected_rows
        if not same:
            wrong.append(query)
        print(f"| `{sql}` | {_ms(statistics.median(lake_t))} | {_ms(statistics.median(duck_t))} | "
              f"{statistics.median(lake_t) / statistics.median(duck_t):.2f}x | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {'yes' if same else 'NO'} |")
    print(f"(rounds, lake ms: {[_ms(t) for t in result['times']['chat']['lake']]}; "
          f"DuckDB file ms: {[_ms(t) for t in result['times']['chat']['duckdb']]} for chat; "
          f"peak RSS {result['rss_mb']:.0f} MiB)", flush=True)
    if wrong:
        raise SystemExit(f"the lake and the DuckDB file answer the lookups differently: {wrong}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="1,2,4", help="writer counts to run, comma-separated")
    parser.add_argument("--rows-per-writer", type=int, default=100_000)
    parser.add_argument("--read-rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=5000, help="rows per lake commit")
    parser.add_argument("--catalog", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--skip-lookup", action="store_true")
    parser.add_argument("--lookup-rounds", type=int, default=7, help="alternating rounds of point lookups")
    parser.add_argument("--runs", type=int, default=3, help="runs of each read measure")
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB's, for the lake and the store alike")
    args = parser.parse_args()

    import pyarrow
    import pyiceberg

    DATA.mkdir(exist_ok=True)
    ctx = mp.get_context("spawn")
    print(f"machine: {machine()}, pyiceberg {pyiceberg.__version__}, pyarrow {pyarrow.__version__}")
    with tempfile.TemporaryDirectory(dir=DATA, prefix="lake-run-") as tmp:
        lakes = Lakes(args.catalog, Path(tmp))
        try:
            if not args.skip_ingest:
                ingest(args, ctx, lakes, Path(tmp))
            if not args.skip_read:
                read(args, ctx, lakes, Path(tmp))
            if not args.skip_lookup:
                lookup(args, ctx, lakes, Path(tmp))
        finally:
            lakes.close()


if __name__ == "__main__":
    main()
