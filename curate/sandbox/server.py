"""Running the sandbox: in a background thread, in the foreground, or as a child process.

The uvicorn plumbing (binding first, prompt stops) is ``curate.serving``, shared with ``curate listen``.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

from curate.sandbox.app import SandboxApp
from curate.sandbox.config import Fault, SandboxConfig, SandboxStats
from curate.sandbox.lifecycle import BackgroundServed, Keyed, StartStop
from curate.sandbox.webhooks import shared_ssl_context
from curate.serving import BackgroundServer, serve_forever

__all__ = ["READY_PREFIX", "Sandbox", "SandboxProcess", "run_forever"]

READY_PREFIX = "curate sandbox ready"


class Sandbox(Keyed, BackgroundServed):
    """A fake inference.net API on 127.0.0.1, served from a background thread.

    ``with Sandbox(queue_delay=0.01, run_delay=0.02) as sb:`` starts it and stops it; keyword
    arguments override fields of the optional :class:`SandboxConfig`.
    """

    def __init__(self, config: SandboxConfig | None = None, /, **overrides: Any) -> None:
        base = config if config is not None else SandboxConfig()
        self.config = SandboxConfig.model_validate({**base.model_dump(), **overrides})
        self._app = SandboxApp(self.config)
        self._server = BackgroundServer(
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
    serve_forever(
        app, host=config.host, port=config.port, announce=announce, on_shutdown=app.begin_shutdown,
        ready_line=lambda url: f"{READY_PREFIX} url={url} api_key={config.api_key}",
    )


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
