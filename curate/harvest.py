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
from curate.store import Store, ingest_texts

__all__ = ["HarvestSummary", "harvest"]

FIRST_DELAY = 2.0  # seconds before re-polling an id that was not done
MAX_DELAY = 300.0
FLUSH_EVERY = 1000  # bodies
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
    held: bool = False  # waiting until its kind's timing is learned


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

    def take(self) -> _Buffer:
        """Hand over everything buffered so far, and start empty."""
        taken = _Buffer(self.bodies, self.done, self.later, self.members)
        self.bodies, self.done, self.later, self.members = [], [], [], []
        self.since = time.monotonic()
        return taken


def _delay(attempts: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, attempts - 1))


# How long generations (and groups) take, learned from those this store has seen finish. Until
# LEARN_AFTER of a kind have, only the SAMPLE oldest unpolled of that kind are polled, on the
# backoff schedule, and the rest wait; after, an id is first polled when LEARN_QUANTILE of its
# kind had finished, so most need one call. The price is lateness: see docs/benchmarks.md.
LEARN_QUANTILE = 0.95
LEARN_AFTER = {"generation": 10, "group": 1}
SAMPLE = {"generation": 12, "group": 1}
HOLD = 0.5  # seconds between looks at the schedule while ids are held

_LEARNED = """
    select 'generation' as kind, count(*) as n,
           quantile_cont(epoch(g.finished_at) - epoch(l.added_at), {q}) as seconds
    from ledger l join generation_rows g on g.id = l.id
    where l.kind = 'generation' and l.source = 'submit' and g.finished_at is not null
    union all
    select 'group', count(*), quantile_cont(seconds, {q}) from (
        select epoch(max(g.finished_at)) - epoch(any_value(l.added_at)) as seconds
        from ledger l join ledger m on m.group_id = l.id join generation_rows g on g.id = m.id
        where l.kind = 'group' and l.done_at is not null
        group by l.id)
"""


def _load(store: Store) -> list[_Entry]:
    with store.read() as con:
        learned = {
            kind: seconds if n >= LEARN_AFTER[kind] else None
            for kind, n, seconds in con.execute(_LEARNED.format(q=LEARN_QUANTILE)).fetchall()
        }
        rows = con.execute(
            """
            select id, kind, attempts, next_poll_at, added_at,
                   row_number() over (partition by kind order by added_at, id) as rank
            from ledger where done_at is null
            """
        ).fetchall()
    entries = []
    for entry_id, kind, attempts, next_poll_at, added_at, rank in rows:
        entry = _Entry(entry_id, kind, attempts, next_poll_at)
        if attempts == 0:
            seconds = learned.get(kind)
            if seconds is not None:
                entry.next_poll_at = max(next_poll_at, added_at + timedelta(seconds=seconds))
            elif rank > SAMPLE.get(kind, 0):
                entry.held = True
        entries.append(entry)
    return sorted(entries, key=lambda e: e.next_poll_at)


def _flush(store: Store, buffer: _Buffer, summary: HarvestSummary) -> None:
    if not len(buffer):
        return
    with store.write() as con:
        for source in {s for s, _ in buffer.bodies}:
            counts = ingest_texts(con, [t for s, t in buffer.bodies if s == source], source=source)
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
            # A "done" id whose body the store refused (it is in rejects) is not done: it is
            # polled again on the backoff schedule, never dropped.
            con.execute(
                f"""
                update ledger set
                    last_state = case when c.done and not c.stored then 'body refused'
                                      else c.state end,
                    last_seen_at = now(),
                    attempts = coalesce(c.attempts, ledger.attempts + 1),
                    next_poll_at = case
                        when c.done and not c.stored then now() + to_seconds(
                            least({MAX_DELAY}, {FIRST_DELAY} * pow(2, ledger.attempts)))
                        else coalesce(c.next_poll_at, ledger.next_poll_at) end,
                    done_at = case when c.done and c.stored then now() end
                from (
                    select x.*, l.kind = 'group' or exists (
                        select 1 from generation_rows g where g.id = x.id) as stored
                    from _curate_ledger_changes x join ledger l on l.id = x.id
                    qualify row_number() over (partition by x.id order by x.done desc) = 1
                ) c
                where ledger.id = c.id
                """
            )
            con.unregister("_curate_ledger_changes")


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
    flushing = asyncio.Lock()
    entries = _load(store)
    async with InferenceClient(settings, rpm=rpm, **client_options) as client:
        while entries:
            now = datetime.now(UTC)
            due = [e for e in entries if not e.held and e.next_poll_at <= now]
            if not due:
                _flush(store, buffer.take(), summary)
                if once:
                    break
                waiting = [(e.next_poll_at - now).total_seconds() for e in entries if not e.held]
                await asyncio.sleep(min(max(min(waiting, default=HOLD), 0.05), HOLD, 5.0))
                entries = _load(store)
                continue
            queue: asyncio.Queue[_Entry] = asyncio.Queue()
            for entry in due:
                queue.put_nowait(entry)

            async def worker() -> None:
                while not queue.empty():
                    await _poll(client, queue.get_nowait(), buffer, summary)
                    if len(buffer.bodies) >= FLUSH_EVERY or time.monotonic() - buffer.since > FLUSH_SECONDS:
                        # DuckDB writes in a thread (it lets go of the GIL), so polls go on.
                        async with flushing:
                            await asyncio.to_thread(_flush, store, buffer.take(), summary)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
            async with flushing:
                await asyncio.to_thread(_flush, store, buffer.take(), summary)
            entries = _load(store)
            summary.calls = client.calls
            summary.pending = len(entries)
            if progress is not None:
                progress(summary)
            if once:
                break
        summary.calls = client.calls
    _flush(store, buffer.take(), summary)
    summary.pending = len(_load(store))
    summary.seconds = time.monotonic() - started
    return summary
