"""Four writers, one lake: harvest, listen and two imports, each SIGKILLed once and restarted.

Every writer is a real ``curate`` process with its own local DuckDB store, pushing to one
Iceberg table through a PostgreSQL catalog on 127.0.0.1, while ``curate lake maintain`` expires,
compacts and sweeps in a loop beside them. Afterwards the lake holds every generation any
writer stored, exactly once as readers see it, and exports from it are byte-identical to
exports from one DuckDB store holding the same generations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from curate.exporter import export
from curate.importer import import_files
from curate.lake.reader import LakeStore
from curate.lake.table import Lake
from curate.sandbox import Sandbox
from curate.store import Store
from curate.synthetic import chat_request, generation_record
from tests.conftest import write_jsonl
from tests.helpers import free_port

CURATE = str(Path(sys.executable).parent / "curate")
WID = "wh-lake-writers"


class Writers:
    """Starts curate processes with one environment, and kills what is left at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen([CURATE, *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=self.env)
        log.close()
        self.procs.append(proc)
        return proc

    def run(self, name: str, *args: str, timeout: float = 120) -> None:
        proc = self.start(name, *args)
        assert proc.wait(timeout) == 0, (self.tmp / f"{name}.log").read_text()[-3000:]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def commits_by(lake: Lake, pid: int) -> int:
    """Snapshots committed by the writer process ``pid`` (from their summaries)."""
    suffix = f":{pid}"
    table = lake.table()
    return sum(
        1 for s in table.metadata.snapshots
        if s.summary is not None and str(s.summary.get("curate.writer", "")).endswith(suffix)
    )


def kill_after_first_commit(lake: Lake, proc: subprocess.Popen[str], *, deadline: float = 60) -> bool:
    """SIGKILL ``proc`` as soon as it has committed to the lake; False if it ended first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if commits_by(lake, proc.pid):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    raise AssertionError(f"pid {proc.pid} made no commit in {deadline}s")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def terminal_ids(path: Path) -> set[str]:
    store = Store(path)
    rows = store.arrow("select id from generation_rows where state in ('Success', 'Failed')")
    return set(rows.column("id").to_pylist())


def maintain_loop(writers: Writers, lake_uri: str, stop: threading.Event, runs: list[int]) -> None:
    while not stop.is_set():
        proc = writers.start(
            "maintain", "lake", "maintain", "--lake", lake_uri, "--expire-minutes", "0",
            "--target-file-mb", "1", "--orphan-minutes", "1", "--json",
        )
        runs.append(proc.wait(120))


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Writers]:
    w = Writers(tmp_path, {})
    yield w
    w.stop_all()


def test_four_killed_writers_and_a_maintainer_leave_every_generation_once(
    tmp_path: Path, postgres_url: str, writers: Writers
) -> None:
    lake_uri = f"{postgres_url}?warehouse={tmp_path / 'warehouse'}"
    listen_port = free_port()
    sandbox = Sandbox(
        queue_delay=0.3, run_delay=0.6, failure_rate=0.05, webhook_backoff=0.5,
        webhook_url=f"http://127.0.0.1:{listen_port}/webhook",
    )
    with sandbox, Lake(lake_uri) as lake:
        writers.env = {
            **os.environ, "INFERENCE_BASE_URL": sandbox.url, "INFERENCE_API_KEY": "sandbox-key",
            "CURATE_LAKE_BATCH_ROWS": "1000", "CURATE_LAKE_PUSH_SECONDS": "1", "CURATE_WEBHOOK_IDS": WID,
        }
        lake.table()  # created once, before the writers race for it
        db = {name: str(tmp_path / f"{name}.duckdb") for name in ("harvest", "listen", "import-a", "import-b")}
        requests = write_jsonl(tmp_path / "requests.jsonl", [chat_request(seed) for seed in range(200)])
        pushed = write_jsonl(tmp_path / "pushed.jsonl", [chat_request(seed) for seed in range(1000, 1200)])
        file_a = write_jsonl(tmp_path / "a.jsonl", [generation_record(i) for i in range(12_000)])
        file_b = write_jsonl(tmp_path / "b.jsonl", [generation_record(i) for i in range(6_000, 18_000)])
        writers.run("submit-harvest", "submit", str(requests), "--db", db["harvest"])

        stop = threading.Event()
        maintenance: list[int] = []
        maintainer = threading.Thread(target=maintain_loop, args=(writers, lake_uri, stop, maintenance))
        maintainer.start()
        try:
            listen_args = ("listen", "--db", db["listen"], "--port", str(listen_port), "--lake", lake_uri)
            listener = writers.start("listen", *listen_args)
            wait_until(lambda: listening(listen_port), 30, "the listener")
            writers.run("submit-listen", "submit", str(pushed), "--db", db["listen"], "--webhook-id", WID)
            # One group GET a second, so the harvest is still running at its first commit.
            harvester = writers.start("harvest", "harvest", "--db", db["harvest"], "--lake", lake_uri, "--rpm", "60")
            import_a = writers.start("import-a", "import", str(file_a), "--db", db["import-a"], "--lake", lake_uri)
            import_b = writers.start("import-b", "import", str(file_b), "--db", db["import-b"], "--lake", lake_uri)

            killed = {
                "import-a": kill_after_first_commit(lake, import_a),
                "import-b": kill_after_first_commit(lake, import_b),
                "listen": kill_after_first_commit(lake, listener),
                "harvest": kill_after_first_commit(lake, harvester),
            }
            assert all(killed.values()), killed

            # Each restarted, and run to the end.
            listener = writers.start("listen", *listen_args)
            restarted = [
                writers.start("harvest", "harvest", "--db", db["harvest"], "--lake", lake_uri),
                writers.start("import-a", "import", str(file_a), "--db", db["import-a"], "--lake", lake_uri),
                writers.start("import-b", "import", str(file_b), "--db", db["import-b"], "--lake", lake_uri),
            ]
            for proc in restarted:
                assert proc.wait(180) == 0, [(tmp_path / f"{n}.log").read_text()[-2000:] for n in db]
            # The sandbox's retries of deliveries the dead listener missed: its backoff (0.5, 1, 2 s)
            # ends within 4 s, and nothing is left to retry once none is scheduled or in flight.
            sandbox.wait_for_webhooks(timeout=4)
            listener.send_signal(signal.SIGTERM)
            assert listener.wait(60) == 0, (tmp_path / "listen.log").read_text()[-3000:]
            # What no delivery brought is in the listener's ledger: a harvest collects it.
            writers.run("harvest-listen", "harvest", "--db", db["listen"], "--lake", lake_uri)
        finally:
            stop.set()
            maintainer.join(180)
        log = (tmp_path / "maintain.log").read_text()
        assert maintenance and all(code == 0 for code in maintenance), log[-3000:]
        reports = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert sum(r["files_compacted"] for r in reports) > 0, "no compaction ran while the writers did"
        # One last maintenance with nothing writing, then every store's leftovers (none expected).
        writers.run("maintain", "lake", "maintain", "--lake", lake_uri, "--expire-minutes", "0",
                    "--target-file-mb", "1", "--orphan-minutes", "1")
        for path in db.values():
            writers.run("push", "lake", "push", "--db", path, "--lake", lake_uri)

    stored = {name: terminal_ids(Path(path)) for name, path in db.items()}
    assert len(stored["harvest"]) == 200 and len(stored["listen"]) == 200
    assert len(stored["import-a"]) == len(stored["import-b"]) == 12_000
    expected = set().union(*stored.values())
    for path in db.values():
        left = Store(path).arrow("select state, count(*) as n from lake_sent group by all").to_pylist()
        assert {r["state"] for r in left} == {"committed"}

    read = LakeStore(lake_uri)
    try:
        (row,) = read.arrow("select count(*) as n, count(distinct id) as ids from generations").to_pylist()
        assert row == {"n": len(expected), "ids": len(expected)}
        assert set(read.arrow("select id from generations").column("id").to_pylist()) == expected

        # The same generations in one DuckDB store export to the same bytes.
        bodies = tmp_path / "bodies.jsonl"
        with bodies.open("w") as out:
            for path in db.values():
                terminal = Store(path).arrow("select raw from generation_rows where state in ('Success', 'Failed')")
                out.writelines(raw + "\n" for raw in terminal.column("raw").to_pylist())
        reference = Store(tmp_path / "reference.duckdb")
        import_files(reference, [bodies])
        from_lake = export(read, "chat", tmp_path / "from-lake", fmt="messages")
        from_store = export(reference, "chat", tmp_path / "from-store", fmt="messages")
        assert from_lake.counts == from_store.counts
        for name in ["lineage.parquet", *(str(p.relative_to(tmp_path / "from-store"))
                                          for p in (tmp_path / "from-store" / "data").iterdir())]:
            assert (tmp_path / "from-lake" / name).read_bytes() == (tmp_path / "from-store" / name).read_bytes(), name
    finally:
        read.close()
