"""``curate harvest``: bring in every generation the ledger is waiting for, resumably.

A group is fetched whole with one GET once all its members are done (the endpoint answers 404
until then); a single id is polled on its own schedule, backing off while it is 404, ``Queued``
or ``In Progress``. Every call goes through the client's rate limit. Fetched bodies are buffered
and written in batches, each batch committing the bodies and the ledger's new state together,
so a harvest killed at any moment loses at most the unwritten batch, which the next run fetches
again; the store's idempotent merge makes the second copy a duplicate, never a second row.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from curate import ledger
from curate.client import ApiError, ApiUnavailable, Fetched, InferenceClient
from curate.config import Settings
from curate.models import TERMINAL_STATES
from curate.store import Store, ingest

__all__ = ["HarvestSummary", "harvest"]

FIRST_DELAY = 2.0  # seconds before re-polling an id that was not done
MAX_DELAY = 300.0
FLUSH_EVERY = 200  # bodies
FLUSH_SECONDS = 2.0


class HarvestSummary(BaseModel):
    """What a harvest run did."""

    stored: int = 0
    updated: int = 0
    duplicate: int = 0
    rejected: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    calls: int = 0
    seconds: float = 0.0


@dataclass
class _Entry:
    id: str
    kind: str
    attempts: int
    next_poll_at: datetime


@dataclass
class _Buffer:
    """Bodies to store and ledger changes to record, written together."""

    bodies: list[tuple[str, str]] = field(default_factory=list)  # (source, text)
    done: list[tuple[str, str]] = field(default_factory=list)  # (id, state)
    later: list[tuple[str, str | None, int, datetime]] = field(default_factory=list)
    members: list[tuple[str, list[str]]] = field(default_factory=list)  # (group id, member ids)
    since: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.bodies) + len(self.done) + len(self.later)


def _delay(attempts: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, attempts - 1))


def _load(store: Store) -> list[_Entry]:
    with store.read() as con:
        rows = con.execute(
            "select id, kind, attempts, next_poll_at from ledger where done_at is null "
            "order by next_poll_at"
        ).fetchall()
    return [_Entry(*row) for row in rows]


def _flush(store: Store, buffer: _Buffer, summary: HarvestSummary) -> None:
    if not len(buffer):
        return
    with store.write() as con:
        for source in {s for s, _ in buffer.bodies}:
            texts = [t for s, t in buffer.bodies if s == source]
            batch = pa.table({"line": pa.array(range(1, len(texts) + 1), pa.int64()),
                              "text": pa.array(texts, pa.string())})
            counts = ingest(con, batch, source=source)
            summary.stored += counts.stored
            summary.updated += counts.updated
            summary.duplicate += counts.duplicate
            summary.rejected += counts.rejected
        for group_id, member_ids in buffer.members:
            ledger.add(con, member_ids, kind="generation", source="group", group_id=group_id)
        changes = [(i, st, None, None, True) for i, st in buffer.done] + [
            (i, st, attempts, when, False) for i, st, attempts, when in buffer.later
        ]
        if changes:
            ids, states, attempts, whens, done = zip(*changes, strict=True)
            con.register("_curate_ledger_changes", pa.table({
                "id": pa.array(ids, pa.string()),
                "state": pa.array(states, pa.string()),
                "attempts": pa.array(attempts, pa.int32()),
                "next_poll_at": pa.array(whens, pa.timestamp("us", tz="UTC")),
                "done": pa.array(done, pa.bool_()),
            }))
            con.execute(
                """
                update ledger set
                    last_state = c.state, last_seen_at = now(),
                    attempts = coalesce(c.attempts, ledger.attempts + 1),
                    next_poll_at = coalesce(c.next_poll_at, ledger.next_poll_at),
                    done_at = case when c.done then now() end
                from (select * from _curate_ledger_changes
                      qualify row_number() over (partition by id order by done desc) = 1) c
                where ledger.id = c.id
                """
            )
            con.unregister("_curate_ledger_changes")
    buffer.bodies.clear()
    buffer.done.clear()
    buffer.later.clear()
    buffer.members.clear()
    buffer.since = time.monotonic()


async def _poll(client: InferenceClient, entry: _Entry, buffer: _Buffer, summary: HarvestSummary) -> None:
    try:
        fetched: Fetched = (
            await client.get_group(entry.id) if entry.kind == "group"
            else await client.get_generation(entry.id)
        )
    except (ApiUnavailable, ApiError) as exc:
        _reschedule(entry, f"error: {str(exc)[:80]}", buffer)
        return
    if not fetched.visible:
        _reschedule(entry, None, buffer)
        return
    if entry.kind == "group":
        generations = (fetched.json or {}).get("generations") if isinstance(fetched.json, dict) else None
        if not isinstance(generations, list):
            _reschedule(entry, "unexpected body", buffer)
            return
        member_ids = []
        for generation in generations:
            buffer.bodies.append(("group", json.dumps(generation, ensure_ascii=False)))
            if isinstance(generation, dict):
                _count_state(generation.get("state"), summary)
                member_id = generation.get("id") or generation.get("generationId")
                if isinstance(member_id, str):
                    member_ids.append(member_id)
        buffer.members.append((entry.id, member_ids))
        buffer.done.append((entry.id, "Success"))
        # Members arrive terminal; mark them done as soon as they are in the ledger.
        buffer.done.extend((member_id, "done") for member_id in member_ids)
        return
    state = fetched.json.get("state") if isinstance(fetched.json, dict) else None
    if state in TERMINAL_STATES:
        buffer.bodies.append(("poll", fetched.body.decode("utf-8", "backslashreplace")))
        buffer.done.append((entry.id, state))
        _count_state(state, summary)
    else:
        _reschedule(entry, state if isinstance(state, str) else "unexpected body", buffer)


def _count_state(state: Any, summary: HarvestSummary) -> None:
    if state == "Success":
        summary.succeeded += 1
    elif state == "Failed":
        summary.failed += 1


def _reschedule(entry: _Entry, state: str | None, buffer: _Buffer) -> None:
    entry.attempts += 1
    entry.next_poll_at = datetime.now(UTC) + timedelta(seconds=_delay(entry.attempts))
    buffer.later.append((entry.id, state, entry.attempts, entry.next_poll_at))


def harvest(
    store: Store,
    settings: Settings,
    *,
    ids_file: str | os.PathLike[str] | None = None,
    rpm: int | None = 250,
    concurrency: int = 8,
    once: bool = False,
    progress: Callable[[HarvestSummary], None] | None = None,
    client_options: dict[str, Any] | None = None,
) -> HarvestSummary:
    """Poll until every ledger entry is terminal (``once``: one pass over those due)."""
    settings.require_api_key()
    if ids_file is not None:
        path = Path(ids_file)
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        with store.write() as con:
            ledger.add(con, ids, kind="generation", source=f"ids:{path.resolve()}")
    return asyncio.run(_harvest(store, settings, rpm, concurrency, once, progress,
                                client_options or {}))


async def _harvest(
    store: Store, settings: Settings, rpm: int | None, concurrency: int, once: bool,
    progress: Callable[[HarvestSummary], None] | None, client_options: dict[str, Any],
) -> HarvestSummary:
    started = time.monotonic()
    summary = HarvestSummary()
    buffer = _Buffer()
    entries = _load(store)
    async with InferenceClient(settings, rpm=rpm, **client_options) as client:
        while entries:
            now = datetime.now(UTC)
            due = [e for e in entries if e.next_poll_at <= now]
            if not due:
                _flush(store, buffer, summary)
                if once:
                    break
                wait = min(e.next_poll_at for e in entries) - now
                await asyncio.sleep(min(max(wait.total_seconds(), 0.05), 5.0))
                continue
            queue: asyncio.Queue[_Entry] = asyncio.Queue()
            for entry in due:
                queue.put_nowait(entry)

            async def worker() -> None:
                while not queue.empty():
                    await _poll(client, queue.get_nowait(), buffer, summary)
                    if len(buffer.bodies) >= FLUSH_EVERY or time.monotonic() - buffer.since > FLUSH_SECONDS:
                        _flush(store, buffer, summary)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
            _flush(store, buffer, summary)
            entries = _load(store)
            summary.calls = client.calls
            summary.pending = len(entries)
            if progress is not None:
                progress(summary)
            if once:
                break
        summary.calls = client.calls
    _flush(store, buffer, summary)
    summary.pending = len(_load(store))
    summary.seconds = time.monotonic() - started
    return summary
