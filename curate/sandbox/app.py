"""The sandbox's ASGI application: a gate in front of a Starlette router.

The gate reads every request body to its end before anything can answer, because an early
answer (401, 429, 5xx) over an unread body leaves the body's bytes on a kept-alive connection,
where they corrupt the next request. It then counts the call, checks the Bearer key, the rate
window and the injected faults, in that order, and only then lets the router see the request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from curate.sandbox.config import Fault, SandboxConfig
from curate.sandbox.state import (
    Core,
    RequestError,
    error_body,
    validate_chat,
    validate_embedding,
    validate_group,
)
from curate.sandbox.webhooks import WebhookDispatcher

__all__ = ["SandboxApp"]

_JSON = "application/json"
_FAULTS = TypeAdapter(Fault | list[Fault])
_ERROR_NAMES = {
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
Handler = Callable[[Request], Awaitable[Response]]


def _json(obj: Any, status: int = 200) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=_JSON)


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _truncating(send: Send) -> Send:
    """Sends the first half of the real answer, with a Content-Length that matches the half."""
    start: Message = {}
    chunks: list[bytes] = []

    async def truncated(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        full = b"".join(chunks)
        cut = full[: len(full) // 2]
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(cut)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": cut})

    return truncated


_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _handles_errors(handler: Handler, allowed: tuple[str, ...]) -> Handler:
    """Answers RequestErrors, and wrong methods, with OpenAI-style JSON (Starlette: text)."""
    allow = ", ".join(allowed)

    async def wrapped(request: Request) -> Response:
        if request.method not in allowed:
            body = error_body(
                f"Method {request.method} not allowed",
                "invalid_request_error",
                "method_not_allowed",
            )
            return Response(body, status_code=405, media_type=_JSON, headers={"Allow": allow})
        try:
            return await handler(request)
        except RequestError as exc:
            return Response(exc.body(), status_code=exc.status, media_type=_JSON)

    return wrapped


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise RequestError(
            400, f"body is not valid JSON: {exc}", "invalid_request_error", "invalid_json"
        ) from None


class SandboxApp:
    """ASGI callable serving one :class:`Core`; see the module docstring for the gate."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.core = Core(config)
        self.webhooks = WebhookDispatcher(self.core, config)
        self._key = config.api_key.encode()
        self._closing: asyncio.Event | None = None

        def route(path: str, endpoint: Handler, *methods: str) -> Route:
            return Route(path, _handles_errors(endpoint, methods), methods=_ANY_METHOD)

        # The router tries routes in order: the hot polling route goes first.
        routes = [route("/v1/generation/{id}", self._get_generation, "GET")]
        for mode in ("slow", "async"):
            routes += [
                route(f"/v1/{mode}/chat/completions", self._submit_chat, "POST"),
                route(f"/v1/{mode}/group/chat/completions", self._submit_group, "POST"),
                route(f"/v1/{mode}/embeddings", self._submit_embedding, "POST"),
                route(f"/v1/{mode}/group/{{group_id}}/generations", self._get_group, "GET"),
            ]
        routes += [
            route("/_sandbox/health", self._health, "GET"),
            route("/_sandbox/stats", self._stats, "GET"),
            route("/_sandbox/reset", self._reset, "POST"),
            route("/_sandbox/faults", self._faults, "GET", "POST", "DELETE"),
            route("/_sandbox/webhook-test", self._webhook_test, "POST"),
        ]
        self.router = Router(routes=routes, default=self._not_found, lifespan=self._lifespan)

    # -- lifecycle ------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        self._closing = asyncio.Event()
        try:
            yield
        finally:
            await self.webhooks.stop()

    def begin_shutdown(self) -> None:
        """Release calls stalled by a slow fault, so that shutdown does not wait for them."""
        if self._closing is not None:
            self._closing.set()

    # -- the gate -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        body = await _drain(receive)
        if body is None:
            return
        replay = _replaying(body, receive)
        if scope["path"].startswith("/v1/"):
            await self._api(scope, replay, receive, send)
        else:
            await self.router(scope, replay, send)

    async def _api(self, scope: Scope, replay: Receive, receive: Receive, send: Send) -> None:
        core, method, path = self.core, scope["method"], scope["path"]
        core.calls_total += 1
        core.calls_by_endpoint[self._endpoint(method, path)] += 1

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                core.responses_by_status[message["status"]] += 1
            await send(message)

        counted: Send = counting
        if not self._authorized(scope):
            core.unauthorized += 1
            body = error_body(
                "Invalid or missing API key", "authentication_error", "invalid_api_key"
            )
            await _send_json(counted, 401, body, [(b"www-authenticate", b"Bearer")])
            return
        retry_after = core.admit(time.time())
        if retry_after is not None:
            limit, window = self.config.rpm_limit, self.config.rate_window
            body = error_body(
                f"Rate limit exceeded: {limit} requests per {window:g}s",
                "rate_limit_error",
                "rate_limit_exceeded",
            )
            await _send_json(counted, 429, body, [(b"retry-after", str(retry_after).encode())])
            return
        fault = core.pick_fault(method, path)
        if fault is not None:
            if fault.kind == "error":
                if fault.after:  # the call takes effect; only its answer is lost
                    async def discard(message: Message) -> None:
                        return None

                    await self.router(scope, replay, discard)
                body = error_body(
                    f"Injected fault: HTTP {fault.status}",
                    "server_error",
                    _ERROR_NAMES[fault.status],
                )
                await _send_json(counted, fault.status, body)
                return
            if fault.kind == "rate_limit":
                value = (
                    formatdate(time.time() + fault.retry_after, usegmt=True)
                    if fault.retry_after_http_date
                    else str(fault.retry_after)
                )
                body = error_body(
                    "Injected fault: rate limited", "rate_limit_error", "rate_limit_exceeded"
                )
                await _send_json(counted, 429, body, [(b"retry-after", value.encode())])
                return
            if fault.kind == "slow":
                outcome = await self._stall(fault.delay, receive)
                if outcome == "gone":
                    return
                if outcome == "closing":
                    body = error_body(
                        "Sandbox shutting down", "server_error", "service_unavailable"
                    )
                    await _send_json(counted, 503, body)
                    return
            elif fault.kind == "truncate":
                counted = _truncating(counted)
        await self.router(scope, replay, counted)

    def _endpoint(self, method: str, path: str) -> str:
        """The route a call hit, with ids replaced by placeholders; also counts per-id calls."""
        if path.startswith("/v1/generation/"):
            self.core.calls_per_generation[path[15:]] += 1
            return method + " /v1/generation/{id}"
        parts = path.split("/")
        if len(parts) == 6 and parts[3] == "group" and parts[5] == "generations":
            self.core.calls_per_group[parts[4]] += 1
            return f"{method} /v1/{parts[2]}/group/{{groupId}}/generations"
        return f"{method} {path}"

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def _stall(self, delay: float, receive: Receive) -> str:
        """Wait ``delay`` seconds unless the client hangs up or the sandbox stops first."""
        assert self._closing is not None
        sleeping = asyncio.ensure_future(asyncio.sleep(delay))
        closing = asyncio.ensure_future(self._closing.wait())
        # With the body read, the next receive() only returns once the client disconnects.
        leaving = asyncio.ensure_future(receive())
        done, pending = await asyncio.wait(
            (sleeping, closing, leaving), return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if leaving in done:
            return "gone"
        return "closing" if closing in done else "ok"

    # -- API endpoints --------------------------------------------------------------------

    async def _submit_chat(self, request: Request) -> Response:
        gen = self.core.submit("chat", validate_chat(await _json_body(request)))
        self.webhooks.on_generation(gen)
        return _json({"id": gen.id})

    async def _submit_embedding(self, request: Request) -> Response:
        gen = self.core.submit("embedding", validate_embedding(await _json_body(request)))
        self.webhooks.on_generation(gen)
        return _json({"id": gen.id})

    async def _submit_group(self, request: Request) -> Response:
        body = await _json_body(request)
        group = self.core.submit_group(validate_group(body), body)
        for gen in group.generations:
            self.webhooks.on_generation(gen)
        self.webhooks.on_group(group)
        return _json({"groupId": group.id, "groupSize": len(group.generations)})

    async def _get_generation(self, request: Request) -> Response:
        body = self.core.generation_body(request.path_params["id"], time.time())
        if body is None:
            raise RequestError(404, "Generation not found", "invalid_request_error", "not_found")
        return Response(body, media_type=_JSON)

    async def _get_group(self, request: Request) -> Response:
        body = self.core.group_body(request.path_params["group_id"], time.time())
        if body is None:
            raise RequestError(
                404, "Group not found or not complete", "invalid_request_error", "not_found"
            )
        return Response(body, media_type=_JSON)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            body = error_body(
                f"No route for {scope['method']} {scope['path']}",
                "invalid_request_error",
                "not_found",
            )
            await _send_json(send, 404, body)

    # -- control endpoints (no auth: loopback test tooling) -------------------------------

    async def _health(self, request: Request) -> Response:
        return _json({"ok": True})

    async def _stats(self, request: Request) -> Response:
        return Response(self.core.stats().model_dump_json(), media_type=_JSON)

    async def _reset(self, request: Request) -> Response:
        self.core.reset_stats()
        return _json({"ok": True})

    async def _faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                parsed = _FAULTS.validate_json(await request.body())
            except ValidationError as exc:
                raise RequestError(
                    400, str(exc), "invalid_request_error", "invalid_fault"
                ) from None
            for fault in parsed if isinstance(parsed, list) else [parsed]:
                self.core.inject(fault)
        elif request.method == "DELETE":
            self.core.clear_faults()
        return _json({"faults": [f.model_dump() for f in self.core.active_faults()]})

    async def _webhook_test(self, request: Request) -> Response:
        body = await _json_body(request)
        wid = body.get("webhook_id") if isinstance(body, dict) else None
        if not isinstance(wid, str) or not wid:
            raise RequestError(
                400, "'webhook_id' is required", "invalid_request_error", "invalid_request"
            )
        try:
            self.webhooks.send_test(wid)
        except RuntimeError as exc:
            raise RequestError(409, str(exc), "invalid_request_error", "no_webhook_url") from None
        return _json({"ok": True})
