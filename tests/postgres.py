"""A throwaway PostgreSQL server for tests: its own data dir, port and socket dir, gone on stop.

Used for the Iceberg SQL catalog tests. The binaries come from the system's PostgreSQL
(`scripts/ensure-postgres.sh` installs it; `make test` runs that first). initdb and postgres
refuse to run as root, so as root they run as the `postgres` system user through runuser.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers import free_port

__all__ = ["PostgresServer", "find_bindir"]

MISSING = "PostgreSQL not found: run scripts/ensure-postgres.sh"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
PORT_CLASH = ("could not bind", "Address already in use", "could not create any TCP/IP sockets")


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (-1,)


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: the newest /usr/lib/postgresql/<version>/bin,
    else `pg_config --bindir`, else wherever initdb is on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if _has_server_binaries(bindir):
            return bindir
    raise RuntimeError(f"{MISSING} (no initdb, pg_ctl and postgres under /usr/lib/postgresql/*/bin, "
                       "pg_config --bindir or PATH)")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1, trust auth for user `postgres`, tuned for speed not durability.

    >>> with PostgresServer() as server:
    ...     url = server.create_database("scratch")
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port: int | None = None
        self.root: Path | None = None
        self._run_as: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"{MISSING} (running as root needs the 'postgres' system user "
                                   "that the postgresql package creates)") from None
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            if not os.access(runuser, os.X_OK):
                raise RuntimeError("running as root but runuser is missing: install util-linux")
            self._run_as = [runuser, "-u", "postgres", "--"]

    @property
    def datadir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "server.log"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._run_as, str(self.bindir / tool), *args],
            cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def start(self) -> Self:
        if self.port is not None:
            return self
        # Our own dir from mkdtemp (mode 700 under the world-traversable temp dir), handed to the
        # postgres user when we are root; it holds the data dir, the socket and the log.
        self.root = Path(tempfile.mkdtemp(prefix="curate-pg-"))
        try:
            if self._owner is not None:
                os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
            init = self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                             "--no-sync", "-E", "UTF8", "--locale=C")
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed (exit {init.returncode}):\n{init.stdout}{init.stderr}")
            self._start_on_free_port()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            raise
        atexit.register(self.stop)
        return self

    def _start_on_free_port(self, attempts: int = 5) -> None:
        assert self.root is not None
        for attempt in range(1, attempts + 1):
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {shlex.quote(str(self.root))} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            started = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile),
                                "-w", "-t", "30", "-o", options, "start")
            if started.returncode == 0:
                self.port = port
                return
            log = _tail(self.logfile)
            if attempt < attempts and any(marker in log for marker in PORT_CLASH):
                self.logfile.unlink(missing_ok=True)
                continue
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop")
            raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{port} (pg_ctl exit {started.returncode}):\n"
                               f"{started.stdout}{started.stderr}\n--- server log tail ---\n{log}")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.root is None:
            return
        if self.port is not None:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def url_for(self, dbname: str) -> str:
        """The SQLAlchemy URL of one database on this server."""
        if self.port is None:
            raise RuntimeError("PostgreSQL server not started")
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the server's `postgres` database."""
        return self.url_for("postgres")

    def create_database(self, name: str) -> str:
        """Create an empty database (lowercase letters, digits, underscores) and return its URL."""
        if not DB_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r} must match {DB_NAME.pattern}")
        if self.port is None:
            raise RuntimeError("PostgreSQL server not started")
        import psycopg2  # here, not at the top: conftest imports this module for every test
        from psycopg2 import sql

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.url_for(name)
