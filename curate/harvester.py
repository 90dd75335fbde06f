"""``curate harvest``: bring in every generation the ledger is waiting for, resumably.

A group is fetched whole with one GET once all its members are done (the endpoint answers 404
until then); a single id is polled on its own schedule, backing off while it is 404, ``Queued``
or ``In Progress``. Every call goes through the client's rate limit.

Fetched bodies and the ledger's new states are buffered, then appended together to the spool
(``curate.spool``) every ``FLUSH_SECONDS`` or ``FLUSH_EVERY`` bodies, and merged into the store
whenever the file is free: polling never waits for the file, whoever holds it. What this run
spooled but could not merge yet is remembered here, so an id done is not polled again. A harvest
killed at any moment loses at most the unspooled buffer, which the next run fetches again; the
store's idempotent merge makes a second copy a duplicate, never a second row. At the end the
harvest waits for the file to merge what it fetched (Ctrl-C leaves it safe in the spool).
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

from pydantic import BaseModel

from curate import ledger, records, spool
from curate.api_types import TERMINAL_STATES, first_id
from curate.client import ApiError, ApiUnavailable, Fetched, InferenceClient, run_blocking
from curate.config import Settings
from curate.store import Store, StoreLocked

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
    rank: int = 0  # its place among its kind's pending ids, oldest first


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
LOAD_WAIT = 1.0  # seconds to wait for a writer before polling on with what this run knows

class _Run:
    """One harvest's view of the ledger: the store's, plus what this run spooled but has not merged."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writer = spool.SpoolWriter(store.spool_dir)
        self.summary = HarvestSummary()
        self.entries: dict[str, _Entry] = {}
        self.finished: set[str] = set()  # done in this run but not merged yet: not polled again
        self.added: set[str] = set()  # put in the ledger by this run, perhaps not merged yet

    def load(self) -> list[_Entry]:
        """The ids to poll, by when they are due: the store's pending ids, as this run knows them.

        When a writer holds the file the store cannot be read: the run goes on with what it knew.
        """
        try:
            with self.store.read(wait=LOAD_WAIT) as con:
                learned = {kind: seconds if n >= LEARN_AFTER[kind] else None
                           for kind, (n, seconds) in ledger.finish_delays(con, LEARN_QUANTILE).items()}
                rows = ledger.pending(con)
        except StoreLocked:
            return self.pending()
        entries: dict[str, _Entry] = {}
        for entry_id, kind, attempts, next_poll_at, added_at, rank in rows:
            if entry_id in self.finished:
                continue
            known = self.entries.get(entry_id)
            if known is not None and known.attempts > attempts:
                entries[entry_id] = known  # polled by this run since the store last heard of it
                continue
            entry = _Entry(entry_id, kind, attempts, next_poll_at, rank=rank)
            if attempts == 0:
                seconds = learned.get(kind)
                if seconds is not None:
                    entry.next_poll_at = max(next_poll_at, added_at + timedelta(seconds=seconds))
                elif rank > SAMPLE.get(kind, 0):
                    entry.held = True
            entries[entry_id] = entry
        for entry_id in self.added - entries.keys() - self.finished:
            if entry_id in self.entries:
                entries[entry_id] = self.entries[entry_id]
        self.entries = entries
        return self.pending()

    def pending(self) -> list[_Entry]:
        """The ids left to poll, by when they are due.

        While a kind's timing is not learned, ``SAMPLE`` of its ids are polled at a time: as
        sampled ids finish, the next held ones are let go here, so sampling goes on even while
        what finished cannot be merged (the file is held) and the store's ranks stand still.
        """
        live = [e for i, e in self.entries.items() if i not in self.finished]
        for kind, limit in SAMPLE.items():
            held = sorted((e for e in live if e.kind == kind and e.held), key=lambda e: (e.rank, e.id))
            polled = sum(1 for e in live if e.kind == kind and not e.held)
            for entry in held[: max(0, limit - polled)]:
                entry.held = False
        return sorted(live, key=lambda e: e.next_poll_at)

    def add(self, ids: list[str], *, source: str) -> None:
        """Wait for ``ids`` too: in the spool first, then in the store."""
        self.writer.append([spool.encode({"op": "ledger", "ids": ids, "kind": "generation", "source": source,
                                          "at": time.time()})])
        now = datetime.now(UTC)
        for entry_id in ids:
            self.entries.setdefault(entry_id, _Entry(entry_id, "generation", 0, now))
        self.added.update(ids)

    def flush(self, buffer: _Buffer, *, wait: float | None = 0.0) -> None:
        """Spool what ``buffer`` holds (durably), then merge whatever the file lets us merge."""
        frames = [spool.encode({"op": "body", "source": source, "line": line, "at": time.time()},
                               records.mask_webhook_ids(text.encode()))
                  for line, (source, text) in zip(self.writer.lines(len(buffer.bodies)), buffer.bodies, strict=True)]
        for group_id, member_ids in buffer.members:
            frames.append(spool.encode({"op": "ledger", "ids": member_ids, "kind": "generation", "source": "group",
                                        "group_id": group_id}))
        if buffer.done or buffer.later:
            frames.append(spool.encode({
                "op": "polled", "at": time.time(), "backoff": [FIRST_DELAY, MAX_DELAY],
                "done": buffer.done,
                "later": [(i, st, attempts, when.isoformat()) for i, st, attempts, when in buffer.later],
            }))
        if frames:
            self.writer.append(frames)
            self.finished.update(i for i, _ in buffer.done)
        merged = spool.drain(self.store, self.writer, wait=wait)
        for name in ("stored", "updated", "duplicate", "rejected"):
            setattr(self.summary, name, getattr(self.summary, name) + merged.counts.get(name, 0))
        if not merged.remaining:  # all this run spooled is merged: the store's ledger says it all
            self.added.clear()
            self.finished.clear()


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
                member_id = first_id(generation, "member_id")  # the id the store files it under
                if member_id is not None:
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
    run = _Run(store)
    try:
        if ids_file is not None:
            path = Path(ids_file)
            ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            run.add(ids, source=f"ids:{path.resolve()}")
        spool.drain(store, run.writer)  # what this or a crashed writer left, if the file is free
        return run_blocking(_harvest(run, settings, rpm, concurrency, once, progress, client_options or {}))
    finally:
        spool.finish(store, run.writer)


async def _harvest(
    run: _Run, settings: Settings, rpm: int | None, concurrency: int, once: bool,
    progress: Callable[[HarvestSummary], None] | None, client_options: dict[str, Any],
) -> HarvestSummary:
    started = time.monotonic()
    summary = run.summary
    buffer = _Buffer()
    flushing = asyncio.Lock()
    entries = run.load()
    async with InferenceClient(settings, rpm=rpm, **client_options) as client:
        while entries:
            now = datetime.now(UTC)
            due = [e for e in entries if not e.held and e.next_poll_at <= now]
            if not due:
                async with flushing:
                    await asyncio.to_thread(run.flush, buffer.take())
                if once:
                    break
                waiting = [(e.next_poll_at - now).total_seconds() for e in entries if not e.held]
                await asyncio.sleep(min(max(min(waiting, default=HOLD), 0.05), HOLD, 5.0))
                entries = await asyncio.to_thread(run.load)
                continue
            queue: asyncio.Queue[_Entry] = asyncio.Queue()
            for entry in due:
                queue.put_nowait(entry)

            async def worker(queue: asyncio.Queue[_Entry]) -> None:
                while not queue.empty():
                    await _poll(client, queue.get_nowait(), buffer, summary)
                    if len(buffer.bodies) >= FLUSH_EVERY or time.monotonic() - buffer.since > FLUSH_SECONDS:
                        # The spool's sync and DuckDB's merge run in a thread (both let go of the
                        # GIL), so polls go on.
                        async with flushing:
                            await asyncio.to_thread(run.flush, buffer.take())

            await asyncio.gather(*(worker(queue) for _ in range(max(1, concurrency))))
            async with flushing:
                await asyncio.to_thread(run.flush, buffer.take())
            entries = await asyncio.to_thread(run.load)
            summary.calls = client.calls
            summary.pending = len(entries)
            if progress is not None:
                progress(summary)
            if once:
                break
        summary.calls = client.calls
    run.flush(buffer.take(), wait=None)  # everything fetched, merged before we return
    summary.pending = len(run.load())
    summary.seconds = time.monotonic() - started
    return summary
