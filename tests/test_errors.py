"""Errors a user can act on share one base, and each says the exit code the command line ends with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from curate.client import ApiError, ApiUnavailable
from curate.config import MissingApiKey
from curate.errors import CurateError, MissingFile, NoSuchName
from curate.exporter import ExportError
from curate.lake.table import LakeError
from curate.publisher import HubError, PublishError
from curate.store import QueryError, StoreBehind, StoreLocked, StoreUnreadable
from curate.submit import InvalidRequests


@pytest.mark.parametrize(("error", "code"), [
    (MissingApiKey, 2), (ExportError, 2), (PublishError, 2), (LakeError, 2), (InvalidRequests, 2),
    (HubError, 1), (StoreLocked, 1), (StoreBehind, 1), (ApiError, 1), (ApiUnavailable, 1), (MissingFile, 1),
    (NoSuchName, 1), (QueryError, 1), (StoreUnreadable, 1),
])
def test_every_error_a_user_can_act_on_is_a_curate_error_with_its_exit_code(error: type, code: int) -> None:
    assert issubclass(error, CurateError) and error.exit_code == code


def test_a_missing_file_or_name_is_still_the_builtin_error_code_that_catches_it_expects() -> None:
    assert issubclass(MissingFile, FileNotFoundError) and issubclass(NoSuchName, KeyError)
    assert str(NoSuchName("chat2: no such view")) == "chat2: no such view"  # not quoted, as KeyError would


CURATE = str(Path(sys.executable).parent / "curate")


def test_a_file_that_is_not_a_store_is_one_line_naming_it(tmp_path: Path) -> None:
    notes = tmp_path / "notes.duckdb"
    notes.write_text("hello\n")
    run = subprocess.run([CURATE, "stats", "--db", str(notes)], check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.startswith(f"error: {notes}: ") and "not a valid DuckDB database" in run.stderr
    assert "Traceback" not in run.stderr and notes.read_text() == "hello\n"


def test_an_error_curate_did_not_expect_is_a_traceback_with_a_hint_not_a_user_error(tmp_path: Path) -> None:
    # A bug stands in for every unexpected exception: stats() raising a KeyError.
    program = (
        "import sys, curate.stats\n"
        "def broken(*a, **k): raise KeyError('a bug')\n"
        "curate.stats.stats = broken\n"
        "from curate.cli import main\n"
        f"sys.argv = ['curate', 'stats', '--db', {str(tmp_path / 'x.duckdb')!r}]\n"
        "main()\n"
    )
    run = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "did not expect" in run.stderr and "Traceback (most recent call last)" in run.stderr
    assert "KeyError: 'a bug'" in run.stderr and not run.stderr.startswith("error:")


def test_a_full_disk_or_a_refused_path_is_the_environments_error_not_a_bug() -> None:
    import errno

    from curate.errors import EnvironmentRefused, from_environment

    full = from_environment(OSError(errno.ENOSPC, "No space left on device", "/data/curate.duckdb"))
    assert isinstance(full, EnvironmentRefused) and "No space left on device" in str(full)
    assert isinstance(from_environment(PermissionError(errno.EACCES, "Permission denied", "/out")), EnvironmentRefused)
    assert from_environment(KeyError("a bug")) is None and from_environment(ValueError("a bug")) is None


def test_duckdb_running_out_of_memory_is_the_environments_error_saying_what_to_raise() -> None:
    import duckdb

    from curate.errors import from_environment

    con = duckdb.connect(config={"memory_limit": "4MB", "threads": 1})
    with pytest.raises(duckdb.OutOfMemoryException) as raised:
        con.execute("select list(repeat('x', 1000)) from range(1000000)").fetchall()
    refused = from_environment(raised.value)
    assert refused is not None and "CURATE_MEMORY_LIMIT" in str(refused)


def test_a_port_already_taken_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = subprocess.run([CURATE, "sandbox", "--port", str(taken.getsockname()[1])],
                             check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and "Address already in use" in run.stderr and "Traceback" not in run.stderr


def test_ctrl_c_during_a_query_stops_it_with_exit_130(tmp_path: Path) -> None:
    import signal
    import time

    from curate.store import Store

    Store(tmp_path / "s.duckdb")
    endless = "select sum(hash(a.range * b.range)) from range(1000000) a, range(1000000) b"
    proc = subprocess.Popen([CURATE, "sql", "--db", str(tmp_path / "s.duckdb"), endless],
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert (proc.returncode, stderr.strip()) == (130, "interrupted")
