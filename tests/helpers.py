"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CURATE", "free_port", "held", "listen_process", "spooled_done"]

CURATE = str(Path(sys.executable).parent / "curate")

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[3] == "ro")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextmanager
def held(path: Path, seconds: float, mode: str = "rw") -> Iterator[subprocess.Popen[str]]:
    """Another process holding the store's file, as a notebook or a harvester would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds), mode],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def listen_process(
    db: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``curate listen --port 0`` in a child process, and the webhook URL it printed.

    The child sees no API key, store or webhook ids from this environment unless ``env`` gives
    them; its stderr (the access log) goes to ``log`` when given. It is stopped with SIGTERM.
    """
    base = {k: v for k, v in os.environ.items()
            if k not in ("INFERENCE_API_KEY", "INFERENCE_BASE_URL", "CURATE_DB", "CURATE_WEBHOOK_IDS")}
    with log.open("a") if log is not None else open(os.devnull, "w") as err:
        proc = subprocess.Popen([CURATE, "listen", "--db", str(db), "--port", "0", *args], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=base | (env or {}))
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("curate listen ready url="), (line, log.read_text()[-2000:] if log else "")
        yield proc, line.split("url=", 1)[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def empty_lake(folder: Path) -> str:
    """A lake a writer has made (its catalog) but not yet appended to; readers refuse one not made."""
    from curate.lake.table import Lake

    with Lake(str(folder)) as lake:
        lake.catalog  # noqa: B018 -- connecting makes the catalog
    return str(folder)


def spooled_done(folder: Path, segment_prefix: str = "") -> set[str]:
    """Ids the spool's segments (those whose name starts with ``segment_prefix``: one process's)
    record as polled to the end, in their ``polled`` frames' ``done``. A harvest appends those
    frames with the bodies they are about, in one write."""
    from curate import spool

    done: set[str] = set()
    for path in spool.segments(folder):
        if path.name.startswith(segment_prefix):
            records, _, _ = spool.read_records(path.read_bytes(), len(spool.MAGIC))
            for record in records:
                if record.header.get("op") == "polled":
                    done.update(i for i, _ in record.header.get("done") or [])
    return done
