"""``curate listen``: the webhook receiver, curate's one network-facing surface.

inference.net pushes each finished generation (and each finished group) to a URL registered in its
dashboard. Deliveries are not signed: the private webhook id in ``X-Inference-Webhook-ID`` (else in
the body) is the only proof of origin, so it is compared in constant time against the configured
ids, and an optional secret path segment can be required as well. Anything unauthenticated is
answered 401 and stored nowhere.

A delivery is acknowledged (2xx) only once what it carried is committed to the store; when the
store cannot be written, the answer is 503 so that inference.net retries. Deliveries are queued
and written in groups, one transaction per group, each opening the store only for its length (so
a notebook or a harvest can take turns with the listener). A delivery delivered twice is one row.

What a delivery gets back:

====  =========================================================================================
200   stored, or already stored (a duplicate), or a ``webhook.test`` (logged, stored nowhere)
400   not JSON, not an object, an unknown event, or a shape the store refuses: a ``rejects`` row
401   no configured webhook id (or wrong path token); nothing stored
404   a path that is not the webhook's (``/webhook`` itself when a path token is configured)
413   a body over ``max_body`` bytes, refused without reading it whole
503   the store (or, with ``verify_by_fetch``, the API) is unavailable: retry later
====  =========================================================================================

Every delivery gets one JSON access-log line (logger ``curate.listen``): event, ids, outcome,
status, milliseconds. Never the body, never a webhook id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from curate import ledger
from curate.client import ApiError, ApiUnavailable, InferenceClient
from curate.config import Settings
from curate.serving import BackgroundServed, BackgroundServer, serve_forever
from curate.merge import ingest
from curate.store import Store

__all__ = [
    "EVENTS",
    "MAX_BODY",
    "READY_PREFIX",
    "Listener",
    "ListenerConfig",
    "ListenerServer",
    "run_forever",
]

EVENTS = ("generation.completed", "async-embedding.completed", "slow-group.completed", "webhook.test")
MAX_BODY = 10 * 1024 * 1024  # inference.net's documented maximum payload
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
    max_batch: int = Field(default=2000, gt=0, description="Most deliveries written in one transaction.")
    rpm: int | None = Field(default=250, description="API calls per minute for verify_by_fetch.")

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


class StoreUnavailable(Exception):
    """The batch could not be committed; its deliveries are answered 503."""


@dataclass
class _Delivery:
    """One authenticated delivery on its way to the store."""

    event: str
    texts: list[str]  # what to store: the pushed body, or the API's copies
    source: str
    generations: list[tuple[str, str | None]] = field(default_factory=list)  # (id, state)
    group: tuple[str, list[tuple[str, str | None]]] | None = None  # (group id, members)
    reject: str | None = None  # refused before the store: kept in rejects with this reason
    lines: list[int] = field(default_factory=list)
    done: asyncio.Future[tuple[str, str | None]] | None = None


def _first_str(*values: Any) -> str | None:
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
        and (i := _first_str(g.get("generationId"), g.get("generation_id"), g.get("id")))
    ]


# The store is one writer or many readers (docs: duckdb-and-datasets B.1). Under load the writer
# keeps the file across back-to-back batches for at most HOLD_SECONDS, which spares a reopen and a
# checkpoint per batch, then lets go for REST_SECONDS whatever is queued, so a notebook or a
# harvest waiting for the file (retrying every <=0.2 s) gets its turn; idle, it holds nothing.
HOLD_SECONDS = 2.0
REST_SECONDS = 0.2


class _Writer:
    """Writes queued deliveries in groups, one transaction each, and settles their futures.

    Grouping needs no timer: while one transaction commits, the next deliveries queue up, so the
    group size follows the load (measured in docs/benchmarks.md).
    """

    def __init__(self, store: Store, max_batch: int, counters: Counter[str]) -> None:
        self._store, self._max_batch, self._counters = store, max_batch, counters
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        # Line numbers (the rejects key within a source) unique across restarts: microseconds.
        self._next_line = time.time_ns() // 1000
        self.healthy = True
        self.last_error: str | None = None
        self.ledger_pending: int | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def put(self, delivery: _Delivery) -> tuple[str, str | None]:
        delivery.done = asyncio.get_running_loop().create_future()
        delivery.lines = list(range(self._next_line, self._next_line + max(1, len(delivery.texts))))
        self._next_line += len(delivery.lines)
        self._queue.put_nowait(delivery)
        return await delivery.done

    def _take(self, first: _Delivery) -> list[_Delivery]:
        batch = [first]
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def run(self) -> None:
        while True:
            batch = self._take(await self._queue.get())
            try:
                session = await asyncio.to_thread(self._store.session)
            except Exception as exc:  # noqa: BLE001 - a store that cannot be opened means "retry later"
                self._fail(batch, exc)
                continue
            held_since = time.monotonic()
            try:
                while True:
                    results = await asyncio.to_thread(self._write_all, session.con, batch)
                    self._settle(batch, results)
                    if any(isinstance(r, BaseException) for r in results):
                        break  # the connection may be unusable: start the next batch afresh
                    if self._queue.empty() or time.monotonic() - held_since > HOLD_SECONDS:
                        break
                    batch = self._take(self._queue.get_nowait())
            finally:
                await asyncio.to_thread(session.close)
            if time.monotonic() - held_since > HOLD_SECONDS:
                await asyncio.sleep(REST_SECONDS)

    def _fail(self, batch: list[_Delivery], exc: BaseException) -> None:
        self.healthy, self.last_error = False, f"{type(exc).__name__}: {exc}"[:300]
        log.warning(json.dumps({"store_error": self.last_error, "deliveries": len(batch)}))
        self._settle(batch, [exc] * len(batch))

    def _settle(self, batch: list[_Delivery], results: list[tuple[str, str | None] | BaseException]) -> None:
        for delivery, result in zip(batch, results, strict=True):
            assert delivery.done is not None
            if delivery.done.done():  # the client went away meanwhile
                continue
            if isinstance(result, BaseException):
                delivery.done.set_exception(StoreUnavailable(str(result)))
            else:
                delivery.done.set_result(result)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            self.healthy, self.last_error = False, f"{type(failed).__name__}: {failed}"[:300]
            log.warning(json.dumps({"store_error": self.last_error, "deliveries": len(batch)}))

    def _write_all(
        self, con: duckdb.DuckDBPyConnection, batch: list[_Delivery]
    ) -> list[tuple[str, str | None] | BaseException]:
        try:
            return list(self._transaction(con, batch))
        except Exception as exc:  # noqa: BLE001 - answered per delivery below
            if len(batch) == 1:
                return [exc]
        # One delivery the store chokes on must not hold back the others: write each alone.
        results: list[tuple[str, str | None] | BaseException] = []
        for delivery in batch:
            try:
                results.extend(self._transaction(con, [delivery]))
            except Exception as exc:  # noqa: BLE001 - that delivery alone is answered 503
                results.append(exc)
        return results

    def _transaction(self, con: duckdb.DuckDBPyConnection, batch: list[_Delivery]) -> list[tuple[str, str | None]]:
        started = time.perf_counter()
        con.execute("begin transaction")
        try:
            outcomes = self._write(con, batch)
            con.execute("commit")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("rollback")
            raise
        self.healthy, self.last_error = True, None
        self._counters["batches"] += 1
        self._counters["batch_ms"] += round((time.perf_counter() - started) * 1000)
        return outcomes

    def _write(self, con: duckdb.DuckDBPyConnection, batch: list[_Delivery]) -> list[tuple[str, str | None]]:
        lines, texts, sources = [], [], []
        for delivery in batch:
            if delivery.reject is not None:
                continue
            lines.extend(delivery.lines[: len(delivery.texts)])
            texts.extend(delivery.texts)
            sources.extend([delivery.source] * len(delivery.texts))
        by_line: dict[int, tuple[str, str | None]] = {}
        refused = [(SOURCE, d.lines[0], d.reject, d.texts[0]) for d in batch if d.reject is not None]
        if refused:
            con.executemany(
                "insert into rejects values (?, ?, ?, ?, md5(?), now()) on conflict do nothing",
                [(source, line, reason, text, text) for source, line, reason, text in refused],
            )
            by_line.update({line: ("rejected", reason) for _, line, reason, _ in refused})
        for source in dict.fromkeys(sources):
            chosen = [i for i, s in enumerate(sources) if s == source]
            table = pa.table({
                "line": pa.array([lines[i] for i in chosen], pa.int64()),
                "text": pa.array([texts[i] for i in chosen], pa.string()),
            })
            by_line.update(ingest(con, table, source=source, per_line=True).outcomes)
        outcomes = [_combine([by_line.get(line, ("rejected", "no record")) for line in d.lines[: len(d.texts)]])
                    for d in batch]
        accepted = [d for d, (outcome, _) in zip(batch, outcomes, strict=True) if outcome != "rejected"]
        ledger.settle(
            con,
            [g for d in accepted for g in d.generations],
            [d.group for d in accepted if d.group is not None],
            source=SOURCE,
        )
        row = con.execute("select count(*) from ledger where done_at is null").fetchone()
        self.ledger_pending = int(row[0]) if row else None
        return outcomes


def _combine(outcomes: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """One delivery's outcome from its records' (a verified group has one record per member)."""
    if not outcomes:
        return ("rejected", "no record")
    for name in ("rejected", "stored", "updated", "duplicate"):
        hit = next((o for o in outcomes if o[0] == name), None)
        if hit is not None:
            return hit
    return outcomes[0]


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
        self._writer = _Writer(store, config.max_batch, self.counters)
        self._ids = [i.encode() for i in config.webhook_ids]
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
        task = asyncio.get_running_loop().create_task(self._writer.run())
        if self._client_factory is not None:
            self._client = self._client_factory()
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._client is not None:
                await self._client.aclose()

    # -- endpoints ------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        body = {
            "ready": self._writer.healthy,
            "store": str(self.store.path),
            "verify_by_fetch": self.config.verify_by_fetch,
            "queued": self._writer.queued,
            "ledger_pending": self._writer.ledger_pending,
            "last_error": self._writer.last_error,
            "counters": dict(sorted(self.counters.items())),
        }
        return JSONResponse(body, status_code=200 if self._writer.healthy else 503)

    async def _webhook(self, request: Request) -> Response:
        started = time.perf_counter()
        entry: dict[str, Any] = {"event": request.headers.get("x-inference-event")}
        try:
            status, outcome = await self._handle(request, entry)
        except Refused as refused:
            status, outcome = refused.status, refused.outcome
            entry["detail"] = refused.detail
        except Exception as exc:  # a bug must cost one delivery a retry, not the server
            log.exception("delivery failed")
            status, outcome = 500, "error"
            entry["detail"] = f"internal error: {type(exc).__name__}"
        self.counters[outcome] += 1
        entry.update(outcome=outcome, status=status, ms=round((time.perf_counter() - started) * 1000, 1))
        if request.client is not None:
            entry["client"] = request.client.host
        log.info(json.dumps(entry, ensure_ascii=False))
        if status == 200:
            return JSONResponse({"ok": True, "outcome": outcome})
        return JSONResponse({"ok": False, "outcome": outcome, "detail": entry.get("detail")}, status_code=status)

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
        body = await self._read(request)
        text = body.decode("utf-8", "backslashreplace")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
            if header_id is None:  # nothing authenticates it: not ours to keep
                raise Refused(401, "unauthorized", "no webhook id") from None
            raise await self._reject(text, f"not valid JSON: {exc}") from None
        if header_id is None:
            body_id = _first_str(payload.get("webhookId"), payload.get("webhook_id")) if isinstance(
                payload, dict) else None
            if body_id is None or not self._known(body_id):
                raise Refused(401, "unauthorized", "no known webhook id")
        if not isinstance(payload, dict):
            raise await self._reject(text, "not a JSON object")
        event = payload.get("event")
        entry["event"] = event if isinstance(event, str) else None
        if event not in EVENTS:
            raise await self._reject(text, f"field event is {event!r}, not one of {', '.join(EVENTS)}")
        if event == "webhook.test":
            return 200, "test"
        delivery = self._delivery(request, payload, text, entry)
        if self._client is not None:
            await self._verify(delivery)
        try:
            outcome, reason = await self._writer.put(delivery)
        except StoreUnavailable as exc:
            raise Refused(503, "unavailable", f"the store is unavailable: {str(exc)[:200]}") from None
        if outcome == "rejected":
            raise Refused(400, "rejected", reason or "refused by the store")
        return 200, outcome

    def _known(self, candidate: str) -> bool:
        given = candidate.encode()
        # Every id is compared, so the time taken says nothing about which (if any) matched.
        matched = False
        for known in self._ids:
            matched |= hmac.compare_digest(given, known)
        return matched

    async def _read(self, request: Request) -> bytes:
        limit = self.config.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Refused(413, "too_large", f"body of {declared} bytes is over {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, "too_large", f"body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _reject(self, text: str, reason: str) -> Refused:
        """A 400 whose body is kept in ``rejects`` first (or a 503 if even that cannot be written)."""
        try:
            await self._writer.put(_Delivery(event="", texts=[text], source=SOURCE, reject=reason))
        except StoreUnavailable as exc:
            return Refused(503, "unavailable", f"the store is unavailable: {str(exc)[:200]}")
        return Refused(400, "rejected", reason)

    def _delivery(self, request: Request, payload: dict[str, Any], text: str, entry: dict[str, Any]) -> _Delivery:
        event = payload["event"]
        data = payload.get("data")
        if event == "slow-group.completed":
            group_id = _first_str(
                payload.get("group_id"), payload.get("groupId"), request.headers.get("x-inference-group-id")
            )
            entry["group_id"] = group_id
            members = _members(data)
            return _Delivery(event, [text], SOURCE, group=(group_id, members) if group_id else None,
                             generations=[] if group_id else members)
        generation_id = _first_str(
            payload.get("generationId"), payload.get("generation_id"),
            data.get("id") if isinstance(data, dict) else None,
            request.headers.get("x-inference-generation-id"),
        )
        entry["generation_id"] = generation_id
        return _Delivery(event, [text], SOURCE, generations=[(generation_id, _state(data))] if generation_id else [])

    async def _verify(self, delivery: _Delivery) -> None:
        """Swap the pushed body for the API's own copy (or answer 503 until it has one)."""
        assert self._client is not None
        try:
            if delivery.group is not None:
                fetched = await self._client.get_group(delivery.group[0])
                members = (fetched.json or {}).get("generations") if isinstance(fetched.json, dict) else None
                if not fetched.visible or not isinstance(members, list):
                    raise Refused(503, "unverified", "the API does not show this group yet")
                delivery.texts = [json.dumps(m, ensure_ascii=False) for m in members]
                delivery.group = (delivery.group[0], _members(fetched.json))
            elif delivery.generations:
                generation_id = delivery.generations[0][0]
                fetched = await self._client.get_generation(generation_id)
                state = fetched.json.get("state") if isinstance(fetched.json, dict) else None
                if not fetched.visible or state not in ("Success", "Failed"):
                    raise Refused(503, "unverified", "the API does not show this generation finished yet")
                delivery.texts = [fetched.body.decode("utf-8", "backslashreplace")]
                delivery.generations = [(generation_id, state)]
            else:
                raise await self._reject(delivery.texts[0], "no generation or group id to verify")
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
