"""A loopback webhook receiver that records what it is sent, for tests of webhook delivery.

It answers each request from a script (statuses for successive POSTs, a status for OPTIONS), so
a test can make the first delivery fail and watch the retry arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from curate.sandbox.lifecycle import BackgroundServed

__all__ = ["RecordedRequest", "WebhookRecorder"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int  # what the recorder answered
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookRecorder(BackgroundServed):
    """``with WebhookRecorder(post_statuses=[500]) as hook: Sandbox(webhook_url=hook.url)``.

    OPTIONS get ``options_status``; successive POSTs get ``post_statuses`` then 200, each after
    ``post_delay`` seconds (to outlast the sender's timeout).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        options_status: int = 200,
        post_statuses: Iterable[int] = (),
        post_delay: float = 0.0,
    ) -> None:
        from curate.serving import BackgroundServer

        self.options_status = options_status
        self.post_delay = post_delay
        self._post_statuses: deque[int] = deque(post_statuses)
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Condition()
        self._closing: asyncio.Event | None = None
        self._server = BackgroundServer(self._app, host, port, self._release)

    @property
    def url(self) -> str:
        """The URL to give the sandbox as ``webhook_url`` (path ``/hook``)."""
        return self._server.url + "/hook"

    def script(self, *post_statuses: int) -> None:
        """Statuses for the next POSTs, in order; POSTs beyond them get 200."""
        with self._lock:
            self._post_statuses = deque(post_statuses)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def posts(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until ``predicate(requests)`` holds; raise TimeoutError with what came."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self._requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"webhook recorder got {len(self._requests)} requests: "
                        f"{[(r.method, r.status) for r in self._requests]}"
                    )
                self._lock.wait(left)
            return list(self._requests)

    def wait_for_posts(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        reqs = self.wait_for(lambda rs: sum(r.method == "POST" for r in rs) >= n, timeout)
        return [r for r in reqs if r.method == "POST"]

    def _release(self) -> None:
        if self._closing is not None:
            self._closing.set()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._closing = asyncio.Event()
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        method = scope["method"]
        with self._lock:
            if method == "OPTIONS":
                status = self.options_status
            elif method == "POST" and self._post_statuses:
                status = self._post_statuses.popleft()
            else:
                status = 200
        record = RecordedRequest(
            method=method,
            path=scope["path"],
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=b"".join(chunks),
            status=status,
            received_at=time.time(),
        )
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()
        if method == "POST" and self.post_delay:
            # Recorded on arrival: a sender that times out was still heard.
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):  # cut short by stop(), which must not wait
                await asyncio.wait_for(self._closing.wait(), self.post_delay)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"11"),
                    (b"access-control-allow-origin", b"*"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
