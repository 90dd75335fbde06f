"""A webhook load generator: inference.net delivering completions as fast as a receiver takes them.

The sandbox's own dispatcher sends each delivery the documented way (an OPTIONS check, a POST,
retries), through httpx, which costs about a millisecond of CPU per call: on a 2-core machine
shared with the receiver under test it could not offer 1,000 deliveries a second. This one keeps
``connections`` HTTP/1.1 keep-alive connections and writes pre-built ``generation.completed``
POSTs on them back to back, parsing answers with h11 (uvicorn's own HTTP parser, so no new
dependency), and records which generation ids were acknowledged: what a crash test needs to
check that nothing acknowledged was lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from curate.synthetic import generation_record

__all__ = ["Delivery", "LoadSummary", "deliver", "envelopes"]


@dataclass(frozen=True)
class Delivery:
    """One pre-built POST: the generation it carries and the body's bytes."""

    generation_id: str
    body: bytes


@dataclass
class LoadSummary:
    """What happened to the deliveries offered."""

    acked: list[str] = field(default_factory=list)  # generation ids answered 2xx, in answer order
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # deliveries cut off by a connection error (a killed receiver, say)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return len(self.acked) / self.seconds if self.seconds else 0.0


def envelopes(
    n: int, *, webhook_id: str, start: int = 0, casing: str = "camel"
) -> list[Delivery]:
    """``n`` ``generation.completed`` deliveries of synthetic generations ``start``.. ``start+n-1``."""
    wid, gid = ("webhookId", "generationId") if casing == "camel" else ("webhook_id", "generation_id")
    out = []
    for seed in range(start, start + n):
        record = generation_record(seed)
        payload = {
            "event": "generation.completed", "timestamp": record.get("finishedAt"), wid: webhook_id,
            gid: record["id"], "data": record,
        }
        out.append(Delivery(record["id"], json.dumps(payload, ensure_ascii=False).encode()))
    return out


async def deliver(
    url: str,
    deliveries: Sequence[Delivery],
    *,
    webhook_id: str,
    connections: int = 32,
    duration: float | None = None,
    timeout: float = 30.0,
) -> LoadSummary:
    """POST every delivery to ``url`` (stopping early after ``duration`` seconds, if given)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    report = LoadSummary()
    queue = iter(deliveries)
    started = time.perf_counter()
    deadline = None if duration is None else started + duration

    async def connection() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            report.errors += 1
            return
        conn = h11.Connection(h11.CLIENT)
        try:
            for item in queue:
                if deadline is not None and time.perf_counter() > deadline:
                    break
                sent = time.perf_counter()
                try:
                    status = await asyncio.wait_for(
                        _exchange(conn, reader, writer, host, port, path, webhook_id, item), timeout
                    )
                except (OSError, TimeoutError, h11.ProtocolError, asyncio.IncompleteReadError):
                    report.errors += 1
                    return
                report.statuses[status] += 1
                report.latencies.append(time.perf_counter() - sent)
                if 200 <= status < 300:
                    report.acked.append(item.generation_id)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    await asyncio.gather(*(connection() for _ in range(connections)))
    report.seconds = time.perf_counter() - started
    return report


async def _exchange(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    path: str,
    webhook_id: str,
    item: Delivery,
) -> int:
    headers = [
        ("Host", f"{host}:{port}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(item.body))),
        ("User-Agent", "Kuzco-Webhook/1.0"),
        ("X-Inference-Event", "generation.completed"),
        ("X-Inference-Webhook-ID", webhook_id),
        ("X-Inference-Generation-ID", item.generation_id),
    ]
    writer.write(conn.send(h11.Request(method="POST", target=path, headers=headers)) or b"")
    writer.write(conn.send(h11.Data(data=item.body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status
        elif isinstance(event, h11.ConnectionClosed):
            raise asyncio.IncompleteReadError(b"", None)
