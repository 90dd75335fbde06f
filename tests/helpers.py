"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["held"]

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
