"""``curate listen``: the webhook receiver, curate's one network-facing surface.

inference.net pushes each finished generation (and each finished group) to a URL registered in its
dashboard. Deliveries are not signed: the private webhook id in ``X-Inference-Webhook-ID`` (else in
the body) is the only proof of origin, so it is compared in constant time against the configured
ids, and an optional secret path segment can be required as well. Anything unauthenticated is
answered 401 and stored nowhere. Refusing costs little: a body without the header is read only up
to ``UNAUTHENTICATED_BODY`` bytes (a larger one is answered 401 unread), and a large authenticated
body is parsed on a thread, ``PARSE_THREADS`` at a time, not on the event loop.

Webhook ids never reach a stored byte: each body is masked (``records.mask_webhook_ids``) before
it is spooled, and the access log, the answers' details and the rejects' reasons never carry a
configured webhook id or the path token.

A delivery is acknowledged (2xx) once what it carried is on disk in the store's spool
(``curate.spool``): deliveries that arrive together share one ``fdatasync`` (group commit), and
nothing waits for the DuckDB file, which a notebook or an export may hold for minutes. A thread
merges the spool into the store whenever the file is free (every ``MERGE_SECONDS`` while there is
something to merge), so a delivery is in ``chat`` moments after its answer when nobody else holds
the file. A delivery delivered twice is one row. When the spool cannot be written (a full disk),
the answer is 503 so that inference.net retries.

What a delivery gets back:

====  =========================================================================================
200   spooled (a body the store then refuses is kept in ``rejects`` with its reason), or a
      ``webhook.test`` (logged, stored nowhere)
400   not JSON, not an object, or an unknown event: a ``rejects`` row
401   no configured webhook id (or wrong path token), or no header and a body over
      ``UNAUTHENTICATED_BODY`` bytes; nothing stored
404   a path that is not the webhook's (``/webhook`` itself when a path token is configured)
413   a body over ``max_body`` bytes, refused without reading it whole
503   the spool cannot be written (or, with ``verify_by_fetch``, the API does not yet show every
      generation the delivery names finished): retry later
====  =========================================================================================

Every delivery gets one JSON access-log line (logger ``curate.listen``): event, ids, outcome,
status, milliseconds. Never the body, never a webhook id.

``GET /healthz`` says whether the listener is ready, its counters and how much waits (queue,
spool, ledger); with ``health_details`` it also names the store, the spool folder, the process id
and the last error, which an unauthenticated caller should not learn by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from curate import ledger, records, spool
from curate.api_types import ALIASES, TERMINAL_STATES, first_str
from curate.client import ApiError, ApiUnavailable, Fetched, InferenceClient
from curate.config import Settings
from curate.serving import BackgroundServed, BackgroundServer, serve_forever
from curate.store import Store, StoreLocked

__all__ = [
    "EVENTS",
    "MAX_BODY",
    "PARSE_THREADS",
    "READY_PREFIX",
    "UNAUTHENTICATED_BODY",
    "Listener",
    "ListenerConfig",
    "ListenerServer",
    "run_forever",
]

EVENTS = ("generation.completed", "async-embedding.completed", "slow-group.completed", "webhook.test")
MAX_BODY = 10 * 1024 * 1024  # inference.net's documented maximum payload
# The most of a body without X-Inference-Webhook-ID that is read, to look for the webhook id in it.
# inference.net sends the header with every delivery (typically 5-50 KB); a larger body without
# it is answered 401 unread, so a stranger cannot make the listener read and parse 10 MB.
UNAUTHENTICATED_BODY = 64 * 1024
PARSE_ON_LOOP = 256 * 1024  # authenticated bodies larger than this are parsed on a thread ...
PARSE_THREADS = 2  # ... this many at once (the others wait their turn, holding only their bytes)
MASK_ANYWHERE = 8  # a configured webhook id this long is masked wherever a body holds it
READY_PREFIX = "curate listen ready"
SOURCE = "webhook"
VERIFIED_SOURCE = "webhook-verified"

log = logging.getLogger("curate.listen")


class ListenerConfig(BaseModel):
    """How ``curate listen`` authenticates, limits and writes deliveries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_ids: tuple[str, ...] = Field(min_length=1, description="Ids a delivery may carry.")
    path_token: str | None = Field(default=None, description="Secret path segment: POST /webhook/TOKEN.")
    verify_by_fetch: bool = Field(default=False, description="Store the API's copy, not the pushed body.")
    max_body: int = Field(default=MAX_BODY, gt=0, description="Largest body accepted, in bytes.")
    max_batch: int = Field(default=2000, gt=0, description="Most deliveries made durable by one sync.")
    rpm: int | None = Field(default=250, description="API calls per minute for verify_by_fetch.")
    health_details: bool = Field(default=False, description="/healthz also names paths, the pid, the last error.")

    @field_validator("webhook_ids")
    @classmethod
    def _non_empty(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(i.strip() for i in ids if i.strip())
        if not cleaned:
            raise ValueError("at least one non-empty webhook id is required")
        return cleaned

    @field_validator("path_token")
    @classmethod
    def _token(cls, token: str | None) -> str | None:
        if token is not None and (not token or "/" in token):
            raise ValueError("the path token must be a non-empty path segment (no '/')")
        return token


class Refused(Exception):
    """A delivery answered without being stored (or with a rejects row only)."""

    def __init__(self, status: int, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.outcome, self.detail = status, outcome, detail


class SpoolUnavailable(Exception):
    """The spool could not be written; the deliveries waiting on it are answered 503."""


@dataclass
class _Delivery:
    """One authenticated delivery on its way to the spool."""

    event: str
    bodies: list[bytes]  # what to store, as received: the pushed body, or the API's copies
    source: str
    generations: list[tuple[str, str | None]] = field(default_factory=list)  # (id, state)
    group: tuple[str, list[tuple[str, str | None]]] | None = None  # (group id, members)
    reject: str | None = None  # refused before the store: kept in rejects with this reason

    def frames(self, lines: range) -> list[bytes]:
        """The delivery's spool records: one per body; the ids it settles ride on the last."""
        at = time.time()
        if self.reject is not None:
            return [spool.encode({"op": "reject", "source": SOURCE, "line": lines[0], "reason": self.reject,
                                  "at": at}, self.bodies[0])]
        frames = []
        for index, (line, body) in enumerate(zip(lines, self.bodies, strict=True)):
            header: dict[str, Any] = {"op": "body", "source": self.source, "line": line, "at": at}
            if index == len(self.bodies) - 1:
                header["settle"] = SOURCE
                if self.generations:
                    header["gens"] = self.generations
                if self.group is not None:
                    header["group"] = self.group
            frames.append(spool.encode(header, body))
        return frames


def _parse(body: bytes) -> Any:
    """The body's JSON: orjson (a tenth of the standard library's time), else the standard library,
    which also reads what orjson refuses (NaN, integers past 64 bits), as the store does."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _first_str(*values: Any) -> str | None:
    """The first non-empty string of ``values``: a body's id (``api_types.first_str``), then a
    header's."""
    return next((v for v in values if isinstance(v, str) and v), None)


def _state(body: Any) -> str | None:
    state = body.get("state") if isinstance(body, dict) else None
    return state if isinstance(state, str) else None


def _members(data: Any) -> list[tuple[str, str | None]]:
    """(id, state) of each generation in a group's body."""
    generations = data.get("generations") if isinstance(data, dict) else None
    if not isinstance(generations, list):
        return []
    return [
        (i, _state(g)) for g in generations if isinstance(g, dict)
        and (i := first_str(g, "member_id"))
    ]


MERGE_SECONDS = 0.2  # how often the merger looks for something to merge, when idle
MERGE_DUTY = 4.0  # after a merge that took T seconds, the next waits at least this times T
LEDGER_READ_SECONDS = 1.0  # /healthz reads the ledger's pending count at most this often
STOP_WAIT_SECONDS = 5.0  # at shutdown, how long to wait for the file to merge what is left


class _Spooler:
    """Makes deliveries durable in groups and answers each once its group is on disk.

    A delivery queues on the event loop and schedules one sync for the loop's next turn; that
    sync appends everything queued by then and calls ``fdatasync`` once (group commit), so the
    number of deliveries per sync follows the load. The sync runs on the loop itself: it takes a
    fraction of a millisecond here (../shared/docs/durable-appends.md), less than handing the
    work to a thread and back would cost in waits for the GIL. A thread merges the spool into the
    store whenever it can take the file.
    """

    def __init__(self, store: Store, max_batch: int, counters: Counter[str]) -> None:
        self._store, self._max_batch, self._counters = store, max_batch, counters
        self.writer = spool.SpoolWriter(store.spool_dir)
        self._pending: list[tuple[list[bytes], asyncio.Future[None]]] = []
        self._scheduled = False
        self._lock = threading.Lock()  # guards _appends, which the merge thread trims
        self._stop = threading.Event()
        self._appends: deque[tuple[Path, int, float, int]] = deque()  # (segment, its end, when, records)
        self._merged_to: tuple[Path, int] = (self.writer.path, 0)  # how far our segment is merged
        self.healthy = True
        self.last_error: str | None = None
        self.merged = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._merge_loop, name="curate-spool-merge", daemon=True)
        self._thread.start()

    def stop(self, *, wait: float) -> None:
        """Stop the merge thread, and merge what is left if the file is free within ``wait`` s."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._note(spool.drain(self._store, self.writer, wait=wait))
        except Exception as exc:  # noqa: BLE001 - what is not merged stays in the spool
            log.warning(json.dumps({"spool_error": f"{type(exc).__name__}: {exc}"[:300]}))
        spool.finish(self._store, self.writer)

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def put(self, delivery: _Delivery) -> None:
        """Return once ``delivery`` is durable in the spool (``SpoolUnavailable`` if it cannot be)."""
        frames = delivery.frames(self.writer.lines(max(1, len(delivery.bodies))))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((frames, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._sync)
        await done

    def _sync(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            frames = [frame for item, _ in batch for frame in item]
            error: BaseException | None = None
            try:
                end = self.writer.append(frames)
                with self._lock:
                    self._appends.append((self.writer.path, end, time.time(), len(frames)))
                self.healthy, self.last_error = True, None
            except OSError as exc:
                error = exc
                self.healthy, self.last_error = False, f"{type(exc).__name__}: {exc}"[:300]
                log.warning(json.dumps({"spool_error": self.last_error, "deliveries": len(batch)}))
            self._counters["syncs"] += 1
            _answer(batch, error)

    def _merge_loop(self) -> None:
        """Merge the spool whenever there is something to merge, spending at most a fifth of the
        time merging: a merge costs ~0.1-0.2 s whatever its size (a DuckDB write transaction), so
        under load it waits four times as long as the last one took and merges more at once."""
        pause = MERGE_SECONDS
        while not self._stop.wait(pause):
            pause = MERGE_SECONDS
            merged_path, merged_to = self._merged_to
            if not (merged_path != self.writer.path or self.writer.durable > max(merged_to, len(spool.MAGIC))
                    or self._others()):
                continue
            started = time.perf_counter()
            try:
                merged = spool.drain(self._store, self.writer, wait=0.0)
            except Exception as exc:  # noqa: BLE001 - reported, and tried again
                self.last_error = f"merge: {type(exc).__name__}: {exc}"[:300]
                log.warning(json.dumps({"merge_error": self.last_error}))
                pause = 1.0
                continue
            took = time.perf_counter() - started
            self._note(merged)
            if merged.rounds:
                self._counters["merges"] += merged.rounds
                self._counters["merge_ms"] += round(took * 1000)
                pause = max(MERGE_SECONDS, MERGE_DUTY * took)

    def _note(self, merged: spool.DrainSummary) -> None:
        """Count what a drain merged, and forget the appends it covered."""
        self.merged += merged.records
        for name, n in merged.counts.items():
            self._counters[name] += n
        if merged.own_to is not None:
            self._merged_to = merged.own_to
            path, offset = merged.own_to
            with self._lock:
                while self._appends and (self._appends[0][0] != path or self._appends[0][1] <= offset):
                    self._appends.popleft()

    def _others(self) -> bool:
        """Whether the spool holds segments besides ours (a crashed writer's, or our rotated one)."""
        return any(p != self.writer.path for p in spool.segments(self._store.spool_dir))

    def backlog(self) -> dict[str, Any]:
        """What of ours waits in the spool: records, and the oldest one's age in seconds."""
        with self._lock:
            records = sum(n for *_, n in self._appends)
            oldest = self._appends[0][2] if self._appends else None
        return {"records": records, "oldest_seconds": None if oldest is None else round(time.time() - oldest, 3),
                "merged": self.merged}


def _answer(batch: list[tuple[list[bytes], asyncio.Future[None]]], error: BaseException | None) -> None:
    for _, done in batch:
        if done.done():  # the client went away meanwhile
            continue
        if error is None:
            done.set_result(None)
        else:
            # The reason, not the message: an OSError's names the spool's path, which is no
            # business of whoever sent the delivery (the operator's log has it).
            reason = getattr(error, "strerror", None) or type(error).__name__
            done.set_exception(SpoolUnavailable(str(reason)))


class Listener:
    """The receiver's ASGI app (``listener.app``), its write queue and its counters."""

    def __init__(
        self,
        store: Store,
        config: ListenerConfig,
        *,
        settings: Settings | None = None,
        client_factory: Callable[[], InferenceClient] | None = None,
    ) -> None:
        self.store, self.config = store, config
        self.counters: Counter[str] = Counter()
        self._spooler: _Spooler | None = None
        self._ledger_read_at = -LEDGER_READ_SECONDS
        self._ledger_count: int | None = None
        self._ids = [i.encode() for i in config.webhook_ids]
        # What no log line, answer or rejects reason may print (longest first, so none is cut).
        self._secrets = sorted({*config.webhook_ids, *([config.path_token] if config.path_token else [])},
                               key=len, reverse=True)
        self._mask_anywhere = [i.encode() for i in config.webhook_ids if len(i) >= MASK_ANYWHERE]
        self._parsing: asyncio.Semaphore | None = None
        self._client: InferenceClient | None = None
        if config.verify_by_fetch and client_factory is None:
            if settings is None:
                raise ValueError("verify_by_fetch needs settings with an API key")
            settings.require_api_key()
            # Few attempts: inference.net waits 30 s for an answer, and retries on 503 itself.
            client_factory = lambda: InferenceClient(
                settings, rpm=config.rpm, attempts=3, max_backoff=4.0
            )
        self._client_factory = client_factory
        path = "/webhook" if config.path_token is None else "/webhook/{token}"
        self.app = Starlette(
            routes=[
                Route(path, self._webhook, methods=["POST", "OPTIONS"]),
                Route("/healthz", self._healthz, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._spooler = _Spooler(self.store, self.config.max_batch, self.counters)
        self._parsing = asyncio.Semaphore(PARSE_THREADS)
        self._spooler.start()
        if self._client_factory is not None:
            self._client = self._client_factory()
        try:
            yield
        finally:
            await asyncio.to_thread(self._spooler.stop, wait=STOP_WAIT_SECONDS)
            if self._client is not None:
                await self._client.aclose()

    # -- endpoints ------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        spooler = self._spooler
        assert spooler is not None
        # Anyone who can reach the port can ask: by default, nothing about paths or the process.
        body: dict[str, Any] = {
            "ready": spooler.healthy,
            "queued": spooler.queued,
            "spool": spooler.backlog(),
            "ledger_pending": await asyncio.to_thread(self._ledger_pending),
            "counters": dict(sorted(self.counters.items())),
        }
        if self.config.health_details:
            body["details"] = {
                "store": str(self.store.path),
                "spool_dir": str(self.store.spool_dir),
                "pid": os.getpid(),
                "verify_by_fetch": self.config.verify_by_fetch,
                "last_error": None if spooler.last_error is None else self._scrub(spooler.last_error),
            }
        return JSONResponse(body, status_code=200 if spooler.healthy else 503)

    def wait_merged(self, timeout: float = 10.0) -> bool:
        """Wait until every delivery acknowledged so far is merged into the store; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spooler = self._spooler
            if spooler is not None and spooler.queued == 0 and spooler.backlog()["records"] == 0:
                return True
            time.sleep(0.01)
        return False

    def _ledger_pending(self) -> int | None:
        """Ids the store's ledger still waits for (None while a writer holds the file).

        Read at most once a second: a reader holds the file for its query, and a monitor polling
        /healthz must not keep the merger from taking it.
        """
        now = time.monotonic()
        if now - self._ledger_read_at >= LEDGER_READ_SECONDS:
            self._ledger_read_at = now
            try:
                with self.store.read(wait=0.5) as con:
                    self._ledger_count = ledger.pending_count(con)[0]
            except StoreLocked:
                self._ledger_count = None
        return self._ledger_count

    async def _webhook(self, request: Request) -> Response:
        started = time.perf_counter()
        entry: dict[str, Any] = {"event": (request.headers.get("x-inference-event") or "")[:100] or None}
        try:
            status, outcome = await self._handle(request, entry)
        except Refused as refused:
            status, outcome = refused.status, refused.outcome
            entry["detail"] = refused.detail
        except Exception as exc:  # noqa: BLE001 - a bug must cost one delivery a retry, not the server
            log.error(self._scrub(f"delivery failed\n{traceback.format_exc()}"))
            status, outcome = 500, "error"
            entry["detail"] = f"internal error: {type(exc).__name__}"
        self.counters[outcome] += 1
        entry = {k: self._scrub(v) if isinstance(v, str) else v for k, v in entry.items()}
        entry.update(outcome=outcome, status=status, ms=round((time.perf_counter() - started) * 1000, 1))
        if request.client is not None:
            entry["client"] = request.client.host
        log.info(orjson.dumps(entry).decode())
        if status == 200:
            return JSONResponse({"ok": True, "outcome": outcome})
        return JSONResponse({"ok": False, "outcome": outcome, "detail": entry.get("detail")}, status_code=status)

    def _scrub(self, text: str) -> str:
        """``text`` with every configured webhook id and the path token replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, records.WEBHOOK_ID_MARKER)
        return text

    async def _handle(self, request: Request, entry: dict[str, Any]) -> tuple[int, str]:
        token = self.config.path_token
        if token is not None and not hmac.compare_digest(
            str(request.path_params.get("token", "")).encode(), token.encode()
        ):
            raise Refused(401, "unauthorized", "unknown path")
        if request.method == "OPTIONS":  # the readiness check that precedes each delivery
            return 200, "options"
        header_id = request.headers.get("x-inference-webhook-id")
        if header_id is not None and not self._known(header_id):
            raise Refused(401, "unauthorized", "unknown webhook id")
        if header_id is None:  # only a small body may be read (and parsed) to find the id in it
            body = await self._read(request, UNAUTHENTICATED_BODY, lambda size: Refused(
                401, "unauthorized", f"no webhook id header, and a body of {size}: at most "
                                     f"{UNAUTHENTICATED_BODY} bytes are read to find one in the body"))
        else:
            body = await self._read(request, self.config.max_body, lambda size: Refused(
                413, "too_large", f"body of {size}: the most accepted is {self.config.max_body} bytes"))
        try:
            payload = await self._parse(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
            if header_id is None:  # nothing authenticates it: not ours to keep
                raise Refused(401, "unauthorized", "no webhook id") from None
            raise await self._reject(body, f"not valid JSON: {exc}") from None
        if header_id is None:
            body_id = first_str(payload, "webhook_id")
            if body_id is None or not self._known(body_id):
                raise Refused(401, "unauthorized", "no known webhook id")
        if not isinstance(payload, dict):
            raise await self._reject(body, "not a JSON object")
        event = payload.get("event")
        entry["event"] = event if isinstance(event, str) else None
        if event not in EVENTS:
            raise await self._reject(body, f"field event is {event!r}, not one of {', '.join(EVENTS)}")
        if event == "webhook.test":
            return 200, "test"
        delivery = await self._delivery(request, payload, body, entry)
        if self._client is not None:
            await self._verify(delivery)
        try:
            await self._put(delivery)
        except SpoolUnavailable as exc:
            raise Refused(503, "unavailable", f"the spool is unavailable: {str(exc)[:200]}") from None
        return 200, "spooled"

    async def _put(self, delivery: _Delivery) -> None:
        assert self._spooler is not None
        # No spool segment may hold a webhook id: the store masks them too, but only once merged.
        delivery.bodies = [self._mask(body) for body in delivery.bodies]
        await self._spooler.put(delivery)

    def _mask(self, body: bytes) -> bytes:
        """``body`` with the value of every webhookId/webhook_id key masked (``records``' rule),
        and any configured id of ``MASK_ANYWHERE`` characters or more masked wherever it occurs
        (under another key, say); a shorter one could be a word of a generation's text."""
        body = records.mask_webhook_ids(body)
        for secret in self._mask_anywhere:
            if secret in body:
                body = body.replace(secret, records.WEBHOOK_ID_MARKER.encode())
        return body

    def _known(self, candidate: str) -> bool:
        given = candidate.encode()
        # Every id is compared, so the time taken says nothing about which (if any) matched.
        matched = False
        for known in self._ids:
            matched |= hmac.compare_digest(given, known)
        return matched

    async def _read(self, request: Request, limit: int, over: Callable[[str], Refused]) -> bytes:
        """The body, up to ``limit`` bytes: past that, ``over(size)`` is raised as soon as it shows
        (before reading anything when Content-Length says so), and the rest is never kept."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise over(f"{declared} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise over(f"more than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _parse(self, body: bytes) -> Any:
        """``_parse(body)``: on the loop when small, else on a thread, ``PARSE_THREADS`` at a time."""
        if len(body) <= PARSE_ON_LOOP or self._parsing is None:
            return _parse(body)
        async with self._parsing:
            return await asyncio.to_thread(_parse, body)

    async def _reject(self, body: bytes, reason: str) -> Refused:
        """A 400 whose body is kept in ``rejects`` first (or a 503 if even that cannot be written)."""
        reason = self._scrub(reason)
        try:
            await self._put(_Delivery(event="", bodies=[body], source=SOURCE, reject=reason))
        except SpoolUnavailable as exc:
            return Refused(503, "unavailable", f"the spool is unavailable: {str(exc)[:200]}")
        return Refused(400, "rejected", reason)

    async def _delivery(
        self, request: Request, payload: dict[str, Any], body: bytes, entry: dict[str, Any]
    ) -> _Delivery:
        event = payload["event"]
        data = payload.get("data")
        if event == "slow-group.completed":
            group_id = _first_str(first_str(payload, "group_id"), request.headers.get("x-inference-group-id"))
            entry["group_id"] = group_id
            if not isinstance(data, dict) or not isinstance(data.get("generations"), list):
                raise await self._reject(body, "field data.generations is not a list of generations")
            members = _members(data)
            return _Delivery(event, [body], SOURCE, group=(group_id, members) if group_id else None,
                             generations=[] if group_id else members)
        # Of data's keys only its "id" is read, as the listener always has: the store also reads
        # data's other id keys (ALIASES["id"]), but reading them here would accept deliveries that
        # are answered 400 now.
        generation_id = _first_str(
            first_str(payload, "generation_id"), data.get("id") if isinstance(data, dict) else None,
            request.headers.get("x-inference-generation-id"),
        )
        entry["generation_id"] = generation_id
        if generation_id is None:
            raise await self._reject(body, f"no generation id: {', '.join(ALIASES['generation_id'])} and data.id "
                                           "are missing or not strings")
        return _Delivery(event, [body], SOURCE, generations=[(generation_id, _state(data))])

    async def _verify(self, delivery: _Delivery) -> None:
        """Swap the pushed body for the API's own copies of every generation it names (by the
        group's GET when it has a group id, else each generation's), or answer 503 until the API
        shows them all finished."""
        assert self._client is not None
        try:
            if delivery.group is not None:
                group_id, named = delivery.group
                fetched = await self._client.get_group(group_id)
                members = (fetched.json or {}).get("generations") if isinstance(fetched.json, dict) else None
                if not fetched.visible or not isinstance(members, list):
                    raise Refused(503, "unverified", "the API does not show this group yet")
                listed = _members(fetched.json)
                missing = {i for i, _ in named} - {i for i, _ in listed}
                if missing:
                    raise Refused(503, "unverified", f"the API's copy of this group lacks {len(missing)} of the "
                                                     f"{len(named)} generations the delivery names")
                delivery.bodies = [json.dumps(m, ensure_ascii=False).encode("utf-8", "backslashreplace")
                                   for m in members]
                delivery.group = (group_id, listed)
            elif delivery.generations:
                ids = list(dict.fromkeys(i for i, _ in delivery.generations))
                # Concurrently (the client keeps to its rate), and every one is waited for.
                results = await asyncio.gather(*(self._client.get_generation(i) for i in ids),
                                               return_exceptions=True)
                answers: list[Fetched] = []
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                    answers.append(result)
                states = [a.json.get("state") if isinstance(a.json, dict) else None for a in answers]
                unfinished = sum(1 for a, state in zip(answers, states, strict=True)
                                 if not a.visible or state not in TERMINAL_STATES)
                if unfinished:
                    what = "this generation" if len(ids) == 1 else f"{unfinished} of the {len(ids)} generations"
                    raise Refused(503, "unverified", f"the API does not show {what} finished yet")
                delivery.bodies = [a.body for a in answers]
                delivery.generations = list(zip(ids, states, strict=True))
            else:
                raise await self._reject(delivery.bodies[0], "no generation or group id to verify")
        except (ApiUnavailable, ApiError) as exc:
            raise Refused(503, "unverified", f"the API could not be asked: {str(exc)[:200]}") from None
        delivery.source = VERIFIED_SOURCE


class ListenerServer(BackgroundServed):
    """A listener served on a background thread: ``with ListenerServer(listener) as srv: srv.url``."""

    def __init__(self, listener: Listener, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.listener = listener
        self._server = BackgroundServer(listener.app, host, port)

    @property
    def url(self) -> str:
        """Where deliveries go: ``http://HOST:PORT/webhook`` (plus ``/TOKEN`` with a path token)."""
        token = self.listener.config.path_token
        return f"{self._server.url}/webhook" + (f"/{token}" if token else "")

    @property
    def base_url(self) -> str:
        return self._server.url


def run_forever(
    listener: Listener,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (what ``curate listen`` runs).

    Once listening it calls ``announce`` with ``curate listen ready url=http://HOST:PORT/webhook``
    (the path token, if any, is not printed). ``uvicorn_options`` are passed on (TLS files).
    """
    path = "/webhook" if listener.config.path_token is None else "/webhook/<path-token>"
    serve_forever(
        listener.app, host=host, port=port, announce=announce,
        ready_line=lambda url: f"{READY_PREFIX} url={url}{path}", **uvicorn_options,
    )
