"""HTTP to inference.net: the one place that knows its URLs, its auth, its limits and its answers.

``InferenceClient`` wraps one ``httpx.AsyncClient``. Every call has a timeout, takes a slot from
a client-side rate limit (aiolimiter, spacing calls evenly so that no minute ever holds more
than the account's requests-per-minute, retries included) and is retried with tenacity: on 5xx, timeouts, connection
errors and bodies that are not valid JSON, with exponential backoff and jitter; on 429 after the
``Retry-After`` the server sent (seconds or an HTTP date), else with backoff.

Submissions are special: an answer that never arrives leaves a generation that may exist and be
billed, and there is no idempotency key. So a submit is retried only when the request certainly
did not take effect (it could not connect, or the answer was 429); any other failure raises
``SubmitUncertain`` for the caller to record.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from curate.api_types import first_str, first_value
from curate.config import Settings
from curate.errors import CurateError

__all__ = [
    "DEFAULT_TIMEOUT",
    "ApiError",
    "ApiUnavailable",
    "Fetched",
    "InferenceClient",
    "SubmitFailed",
    "SubmitUncertain",
    "retry_after_seconds",
    "run_blocking",
]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

T = TypeVar("T")


def run_blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end and return its result, as ``asyncio.run`` does, from any caller.

    A notebook cell runs inside Jupyter's own event loop, where ``asyncio.run`` refuses to start
    another: there, ``work`` gets its loop on a worker thread while the cell waits. Everywhere else
    (the command line, a script) it runs on the caller's thread, so Ctrl-C reaches it as before.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-loop") as pool:
        return pool.submit(asyncio.run, work).result()


class ApiError(CurateError, RuntimeError):
    """inference.net answered with an error curate will not retry (4xx other than 404/429)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {body[:300]}")
        self.status = status


class SubmitUncertain(RuntimeError):
    """A submission failed in a way that may have created (and billed) the generation anyway."""


class ApiUnavailable(CurateError, RuntimeError):
    """A read kept failing (5xx, 429, timeouts, bad bodies) through every attempt."""


class SubmitFailed(RuntimeError):
    """A submission failed every attempt without reaching inference.net: nothing was created."""


class _Retryable(Exception):
    """A failure worth trying again; ``retry_after`` is the server's own wait, when it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.sent = sent  # whether the request may have reached the server


@dataclass(frozen=True)
class Fetched:
    """One GET: the status, the body exactly as received, and the body parsed (None on 404)."""

    status: int
    body: bytes
    json: Any

    @property
    def visible(self) -> bool:
        """False for a 404: inference.net does not show the generation (or group) yet."""
        return self.status != 404


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _Wait:
    """Wait the server's Retry-After when it gave one, else exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            # A little jitter so that many waiting callers do not return in one burst.
            return exc.retry_after + random.uniform(0, 0.25)
        return float(self._backoff(state))


class InferenceClient:
    """Async client for inference.net's background generations.

    ``rpm`` caps requests per minute (per ``rate_period`` seconds, which tests shorten) across
    every call this client makes, retries included (None: no cap).
    ``transport`` is httpx's seam: tests pass a ``MockTransport``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rpm: int | None = 250,
        rate_period: float = 60.0,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = settings.require_api_key()
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "curate"},
            timeout=timeout,
            transport=transport,
        )
        # Calls spaced evenly, 2% under the limit. A bucket of `rpm` would let a burst of rpm
        # calls and then rpm more as it drains land in one window: a sliding-window limit (the
        # sandbox's, measured: 11 violations in 25 calls) would answer 429.
        self._limiter = AsyncLimiter(1, rate_period / rpm * 1.02) if rpm else None
        self._attempts = attempts
        self._wait = _Wait(backoff, max_backoff)
        self.calls = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API ----------------------------------------------------------------------------

    async def submit(
        self, body: Mapping[str, Any], *, path: str = "/v1/slow/chat/completions",
        before_send: Callable[[], None] | None = None,
    ) -> str:
        """Submit one chat request; return its generation id.

        ``before_send`` is called once the rate limit lets the POST go, just before it is sent
        (again before any retry): where a caller writes down that the request may now exist.
        """
        answer = await self._submit(path, body, before_send)
        generation_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(generation_id, str):
            raise SubmitUncertain(f"POST {path} answered without an id: {str(answer)[:200]}")
        return generation_id

    async def submit_group(
        self, bodies: Sequence[Mapping[str, Any]], *, path: str = "/v1/slow/group/chat/completions",
        before_send: Callable[[], None] | None = None,
    ) -> tuple[str, int]:
        """Submit up to 50 chat requests as one group; return its id and size (``before_send``: as
        for ``submit``)."""
        if not 1 <= len(bodies) <= 50:
            raise ValueError(f"a group holds 1 to 50 requests, not {len(bodies)}")
        answer = await self._submit(path, {"requests": list(bodies)}, before_send)
        group_id = first_str(answer, "group_id")
        if group_id is None:
            raise SubmitUncertain(f"POST {path} answered without a group id: {str(answer)[:200]}")
        size = first_value(answer, "group_size")
        return group_id, size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else len(bodies)

    async def get_generation(self, generation_id: str) -> Fetched:
        """``GET /v1/generation/{id}``; a 404 (not visible yet) is an answer, not an error."""
        return await self._get(f"/v1/generation/{generation_id}")

    async def get_group(self, group_id: str) -> Fetched:
        """``GET /v1/slow/group/{id}/generations``; 404 until every generation is done."""
        return await self._get(f"/v1/slow/group/{group_id}/generations")

    # -- plumbing ---------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, body: Any = None, before_send: Callable[[], None] | None = None
    ) -> httpx.Response:
        # Encoded first: a body JSON cannot carry (NaN) fails here, before anything is sent or
        # written down as sent. The same encoding httpx's json= would apply.
        content = None if body is None else json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        headers = None if body is None else {"Content-Type": "application/json"}
        if self._limiter is not None:
            await self._limiter.acquire()
        if before_send is not None:
            before_send()
        self.calls += 1
        try:
            return await self._http.request(method, path, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(f"{method} {path}: {exc!r}", sent=False) from exc
        # Read/write timeouts, resets, protocol errors, and a body that does not decode: the
        # request may have reached the server.
        except httpx.RequestError as exc:
            raise _Retryable(f"{method} {path}: {exc!r}") from exc

    def _check(self, method: str, path: str, response: httpx.Response) -> Any:
        """The parsed body of a 2xx, None for a 404, or the right exception."""
        status = response.status_code
        if status == 429:
            raise _Retryable(
                f"{method} {path}: 429", retry_after_seconds(response.headers.get("retry-after")),
                sent=False,
            )
        if status >= 500:
            raise _Retryable(f"{method} {path}: {status}")
        if status == 404 and method == "GET":
            return None
        if status >= 400:
            raise ApiError(status, method, path, response.text)
        try:
            return json.loads(response.content)
        except ValueError as exc:  # a truncated or garbled body
            raise _Retryable(f"{method} {path}: invalid JSON ({len(response.content)} bytes)") from exc

    def _retrying(self, *, only_unsent: bool) -> AsyncRetrying:
        def worth_retrying(exc: BaseException) -> bool:
            return isinstance(exc, _Retryable) and (not only_unsent or not exc.sent)

        return AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            wait=self._wait,
            stop=stop_after_attempt(self._attempts),
            reraise=True,
        )

    async def _get(self, path: str) -> Fetched:
        try:
            async for attempt in self._retrying(only_unsent=False):
                with attempt:
                    response = await self._send("GET", path)
                    parsed = self._check("GET", path, response)
                    return Fetched(response.status_code, response.content, parsed)
        except _Retryable as exc:
            raise ApiUnavailable(f"{exc}: gave up after {self._attempts} attempts") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _submit(self, path: str, body: Any, before_send: Callable[[], None] | None = None) -> Any:
        try:
            async for attempt in self._retrying(only_unsent=True):
                with attempt:
                    return self._check("POST", path, await self._send("POST", path, body, before_send))
        except _Retryable as exc:
            if exc.sent:
                raise SubmitUncertain(
                    f"{exc}: the request may have been accepted; not retried, to pay only once"
                ) from exc
            raise SubmitFailed(f"{exc}: gave up after {self._attempts} attempts") from exc
        raise AssertionError("unreachable")  # pragma: no cover
