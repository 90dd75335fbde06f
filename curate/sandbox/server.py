"""Running the sandbox: in a background thread, in the foreground, or as a child process.

uvicorn runs on a socket bound here, before it starts, so that ``port=0`` yields a known URL
without reading uvicorn's logs, and so the socket is closed by us if startup fails (an unclosed
socket is a ResourceWarning, which fails tests under ``-W error``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
import uvicorn

from curate.sandbox.app import SandboxApp
from curate.sandbox.config import Fault, SandboxConfig, SandboxStats
from curate.sandbox.lifecycle import BackgroundServed, Keyed, StartStop
from curate.sandbox.webhooks import shared_ssl_context

__all__ = ["READY_PREFIX", "Sandbox", "SandboxProcess", "run_forever"]

READY_PREFIX = "curate sandbox ready"
T = TypeVar("T")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it Nagle plus delayed ACKs cap a keep-alive client at ~25 requests/s.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_config(app: Any, *, quiet_logging: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="on",
        interface="asgi3",
        ws="none",
        access_log=False,
        log_level="warning",
        # In-process, leave the host's logging configuration (pytest's, the CLI's) untouched.
        log_config=None if quiet_logging else uvicorn.config.LOGGING_CONFIG,
        server_header=False,
        timeout_graceful_shutdown=3,
    )


class _Server(uvicorn.Server):
    """uvicorn with a readiness callback, prompt stops, and stalled calls released on shutdown."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_started: Callable[[], None] | None = None,
        on_shutdown: Callable[[], None] | None = None,
        exit_event: asyncio.Event | None = None,
    ) -> None:
        super().__init__(config)
        self._on_started, self._on_shutdown, self._exit_event = on_started, on_shutdown, exit_event

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def main_loop(self) -> None:
        if self._exit_event is None:  # foreground: uvicorn's signal-driven loop
            await super().main_loop()
            return
        # uvicorn polls should_exit every 0.1 s; waking on an event makes stop() prompt.
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_event.wait(), 1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own shutdown, minus its fixed 0.1 s sleep: tests start and stop a server
        # per test, and that sleep alone would double the sandbox suite's run time.
        if self._on_shutdown is not None:
            self._on_shutdown()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0)
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:
            if time.monotonic() >= deadline:
                for task in state.tasks:
                    task.cancel(msg="sandbox shutdown")
                break
            await asyncio.sleep(0.005)
        if not self.force_exit:
            await self.lifespan.shutdown()


class _BackgroundServer:
    """An ASGI app served by uvicorn on its own thread and event loop."""

    def __init__(
        self, app: Any, host: str, port: int, on_shutdown: Callable[[], None] | None = None
    ) -> None:
        self._app, self._host, self._port, self._on_shutdown = app, host, port, on_shutdown
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._exit: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> str:
        if self._thread is not None:
            raise RuntimeError("already started")
        sock = _bind(self._host, self._port)
        self.url = _url(sock)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"curate-sandbox {self.url}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"server at {self.url} did not start within {timeout}s")
        if self._error is not None or not self.running:
            self._thread.join()
            raise RuntimeError(f"server at {self.url} failed to start") from self._error
        return self.url

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:  # surfaced by start(); a thread must not die noisily
            self._error = exc
        finally:
            sock.close()
            self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        self._server = _Server(
            _uvicorn_config(self._app, quiet_logging=True),
            on_started=self._ready.set,
            on_shutdown=self._on_shutdown,
            exit_event=self._exit,
        )
        await self._server.serve(sockets=[sock])
        if not self._server.started:
            raise RuntimeError("uvicorn did not start")

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, server = self._thread, self._loop, self._server
        if thread is None or not thread.is_alive():
            return
        if server is not None and loop is not None and self._exit is not None:
            server.should_exit = True
            with contextlib.suppress(RuntimeError):  # a closed loop has nothing left to wake
                loop.call_soon_threadsafe(self._exit.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"server at {self.url} did not stop within {timeout}s")

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the server's loop (where all state lives) and return its result."""
        loop = self._loop
        if loop is None or not self.running or threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # stopped meanwhile: state is frozen, read it directly
            return fn()
        return future.result(timeout)


class Sandbox(Keyed, BackgroundServed):
    """A fake inference.net API on 127.0.0.1, served from a background thread.

    ``with Sandbox(queue_delay=0.01, run_delay=0.02) as sb:`` starts it and stops it; keyword
    arguments override fields of the optional :class:`SandboxConfig`.
    """

    def __init__(self, config: SandboxConfig | None = None, /, **overrides: Any) -> None:
        base = config if config is not None else SandboxConfig()
        self.config = SandboxConfig.model_validate({**base.model_dump(), **overrides})
        self._app = SandboxApp(self.config)
        self._server = _BackgroundServer(
            self._app, self.config.host, self.config.port, self._app.begin_shutdown
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; the API lives under ``{url}/v1``."""
        if not self._server.url:
            raise RuntimeError("the sandbox is not started")
        return self._server.url

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client with the base URL and the Bearer key set; the caller closes it."""
        kwargs.setdefault("verify", shared_ssl_context())
        return httpx.Client(base_url=self.url, headers=self.headers, trust_env=False, **kwargs)

    # -- inspection and control -----------------------------------------------------------

    def stats(self) -> SandboxStats:
        return self._server.call(self._app.core.stats)

    def reset_stats(self) -> None:
        self._server.call(self._app.core.reset_stats)

    def inject(self, fault: Fault | None = None, /, **fields: Any) -> Fault:
        """Add a fault, given as a :class:`Fault` or as its fields (``kind="error", ...``)."""
        fault = fault if fault is not None else Fault(**fields)
        self._server.call(lambda: self._app.core.inject(fault))
        return fault

    def clear_faults(self) -> None:
        self._server.call(self._app.core.clear_faults)

    def faults(self) -> list[Fault]:
        """Faults still active, with ``times`` counting the hits left."""
        return self._server.call(self._app.core.active_faults)

    def generation_ids(self) -> list[str]:
        """Ids of all generations submitted so far, in submission order."""
        return self._server.call(lambda: list(self._app.core.generations))

    def group_ids(self) -> list[str]:
        return self._server.call(lambda: list(self._app.core.groups))

    def generation(self, generation_id: str) -> dict[str, Any] | None:
        """The GenerationForClient body as of now, ignoring the visibility delay."""
        core = self._app.core

        def read() -> dict[str, Any] | None:
            gen = core.generations.get(generation_id)
            return None if gen is None else gen.record(time.time())

        return self._server.call(read)

    def send_test_webhook(self, webhook_id: str) -> None:
        """Deliver a ``webhook.test`` event to the configured ``webhook_url``."""
        if not self._server.running:
            raise RuntimeError("the sandbox is not running")
        self._server.call(lambda: self._app.webhooks.send_test(webhook_id))

    def pending_webhooks(self) -> int:
        """Webhook deliveries scheduled or in flight."""
        return self._server.call(lambda: self._app.webhooks.pending)

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        """Block until no delivery is scheduled or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending_webhooks():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True


def run_forever(
    config: SandboxConfig | None = None, *, announce: Callable[[str], None] | None = None
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (what ``curate sandbox`` runs).

    Once listening it calls ``announce`` (default: print and flush) with one line,
    ``curate sandbox ready url=http://127.0.0.1:PORT api_key=KEY``.
    """
    config = config if config is not None else SandboxConfig()
    app = SandboxApp(config)
    sock = _bind(config.host, config.port)
    line = f"{READY_PREFIX} url={_url(sock)} api_key={config.api_key}"
    say = announce if announce is not None else (lambda text: print(text, flush=True))
    server = _Server(
        _uvicorn_config(app, quiet_logging=False),
        on_started=lambda: say(line),
        on_shutdown=app.begin_shutdown,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled; that is a clean exit
        pass
    finally:
        sock.close()


class SandboxProcess(Keyed, StartStop):
    """The sandbox in a child process (``python -m curate.sandbox``), for tests that kill things.

    Control goes over HTTP (``/_sandbox/...``), since the child's memory is out of reach.
    """

    def __init__(self, config: SandboxConfig | None = None, /, **overrides: Any) -> None:
        base = config if config is not None else SandboxConfig()
        self.config = SandboxConfig.model_validate({**base.model_dump(), **overrides})
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    def start(self, timeout: float = 20.0) -> Self:
        env = dict(os.environ)
        # The child must import this very package, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [
            sys.executable,
            "-m",
            "curate.sandbox",
            "--config-json",
            self.config.model_dump_json(),
        ]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise RuntimeError(f"sandbox process gave no ready line in {timeout}s")
                line = self._proc.stdout.readline()
                if not line:
                    self.stop()
                    raise RuntimeError("sandbox process exited before it was ready")
                if line.startswith(READY_PREFIX):
                    self.url = line.split("url=", 1)[1].split()[0]
                    return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        with httpx.Client(
            base_url=self.url, trust_env=False, timeout=10.0, verify=shared_ssl_context()
        ) as client:
            resp = client.request(method, path, json=payload)
            resp.raise_for_status()
            return resp.json()

    def stats(self) -> SandboxStats:
        return SandboxStats.model_validate(self._control("GET", "/_sandbox/stats"))

    def inject(self, fault: Fault | None = None, /, **fields: Any) -> Fault:
        fault = fault if fault is not None else Fault(**fields)
        self._control("POST", "/_sandbox/faults", fault.model_dump(mode="json"))
        return fault

    def clear_faults(self) -> None:
        self._control("DELETE", "/_sandbox/faults")
