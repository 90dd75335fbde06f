"""Serving an ASGI app with uvicorn: in a background thread, or in the foreground.

Shared by the sandbox and ``curate listen``. uvicorn runs on a socket bound here, before it starts,
so that ``port=0`` yields a known URL without reading uvicorn's logs, and so the socket is closed by
us if startup fails (an unclosed socket is a ResourceWarning, which fails tests under ``-W error``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import uvicorn

__all__ = [
    "BackgroundServed", "BackgroundServer", "Server", "StartStop", "bind", "serve_forever", "url_of",
    "uvicorn_config",
]

T = TypeVar("T")


def bind(host: str, port: int) -> socket.socket:
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


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_config(app: Any, *, quiet_logging: bool, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for curate's servers; ``options`` (TLS files, say) go to uvicorn as they are."""
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
        **options,
    )


class Server(uvicorn.Server):
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


class BackgroundServer:
    """An ASGI app served by uvicorn on its own thread and event loop."""

    def __init__(
        self, app: Any, host: str, port: int, on_shutdown: Callable[[], None] | None = None
    ) -> None:
        self._app, self._host, self._port, self._on_shutdown = app, host, port, on_shutdown
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
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
        sock = bind(self._host, self._port)
        self.url = url_of(sock)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"curate-serve {self.url}", daemon=True
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
        except BaseException as exc:  # noqa: BLE001 - surfaced by start(); a thread must not die noisily
            self._error = exc
        finally:
            sock.close()
            self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        self._server = Server(
            uvicorn_config(self._app, quiet_logging=True),
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
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # stopped meanwhile: state is frozen, read it directly
            return fn()
        return future.result(timeout)


class StartStop:
    """Context-manager plumbing for anything that starts and stops."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BackgroundServed(StartStop):
    """An app served on loopback by a ``curate.serving.BackgroundServer`` held in ``self._server``."""

    _server: Any

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


def serve_forever(
    app: Any,
    *,
    host: str,
    port: int,
    ready_line: Callable[[str], str],
    announce: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` in the foreground until SIGINT/SIGTERM.

    Once listening, ``announce`` (default: print and flush) gets ``ready_line(url)``, where ``url``
    is ``http(s)://HOST:PORT`` of the bound socket; ``uvicorn_options`` (TLS files) go to uvicorn.
    """
    sock = bind(host, port)
    url = url_of(sock)
    if uvicorn_options.get("ssl_certfile"):
        url = url.replace("http://", "https://", 1)
    line = ready_line(url)
    say = announce if announce is not None else (lambda text: print(text, flush=True))
    server = Server(
        uvicorn_config(app, quiet_logging=False, **uvicorn_options),
        on_started=lambda: say(line),
        on_shutdown=on_shutdown,
    )
    # uvicorn re-raises the signal it stopped on once it has shut down. Turned into an exception
    # here, a SIGTERM ends the call like a SIGINT does, so the caller's cleanup runs (the lake
    # pusher's final push) and the process exits 0 after a graceful stop.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):  # the signal uvicorn handled: a clean exit
        pass
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(Exception):
    """The SIGTERM uvicorn re-raised after its graceful shutdown."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated
