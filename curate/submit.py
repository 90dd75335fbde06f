"""``curate submit``: send a JSONL file of chat requests to inference.net, never paying twice.

Every line is checked before anything is sent; one bad line refuses the file, naming the line.
Each line has a key (its ``metadata.custom_id``, else a hash of the request), and each request
is written to ``submissions`` as ``sending`` and committed *before* its POST goes out; the id
the API answers with (a generation's or a group's) is made durable in the store's spool
(``curate.spool``) before anything else happens, then merged, which marks the line ``submitted``
and puts the id in the ledger. So an id the API gave is never lost, even when the store's file
is busy or the process dies right after the POST. A re-run skips every key already there. A line whose
answer never came (a crash, a timeout, a 5xx after sending) stays ``sending``/``uncertain``: it
may exist and be billed, and there is no idempotency key, so it is not sent again unless asked
(``resend_uncertain``). Requests go in groups of up to 50 (one POST each) unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from curate import spool
from curate.client import InferenceClient, SubmitFailed, SubmitUncertain
from curate.config import Settings
from curate.store import FOREVER, Store

__all__ = ["InvalidRequests", "SubmitSummary", "submit_file"]

MAX_GROUP = 50


class InvalidRequests(ValueError):
    """Lines of a request file that cannot be sent; nothing was sent."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        shown = "; ".join(f"line {line}: {why}" for line, why in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} line(s) cannot be sent, so nothing was: {shown}{more}")
        self.problems = problems


class SubmitSummary(BaseModel):
    """What a submit run did."""

    lines: int = 0
    submitted: int = 0
    already_submitted: int = 0
    uncertain: int = 0
    failed: int = 0
    posts: int = 0
    stopped: str | None = None


@dataclass(frozen=True)
class _Line:
    number: int
    key: str
    body: dict[str, Any]


def _problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "not a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "no model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages (a non-empty list is required)"
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "metadata is not an object"
    custom_id = (metadata or {}).get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        return "metadata.custom_id is not a string"
    return None


def _key(body: dict[str, Any]) -> str:
    custom_id = (body.get("metadata") or {}).get("custom_id")
    if custom_id:
        return f"custom_id:{custom_id}"
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _read(path: Path, webhook_id: str | None) -> Iterator[_Line]:
    with path.open(encoding="utf-8", errors="strict") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            body = json.loads(text)
            if webhook_id is not None:
                body["metadata"] = {**(body.get("metadata") or {}), "webhook_id": webhook_id}
            yield _Line(number, _key(body), body)


def _check(path: Path) -> None:
    """Refuse the file, naming every bad line, before anything is sent."""
    problems: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    with path.open("rb") as raw:
        for number, data in enumerate(raw, start=1):
            if not data.strip():
                continue
            try:
                body = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append((number, f"not valid JSON ({exc})"))
                continue
            why = _problem(body)
            if why:
                problems.append((number, why))
                continue
            key = _key(body)
            if key in first_seen:
                problems.append((number, f"the same request as line {first_seen[key]} ({key})"))
            first_seen.setdefault(key, number)
    if problems:
        raise InvalidRequests(path, problems)


def submit_file(
    store: Store,
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    group_size: int = MAX_GROUP,
    webhook_id: str | None = None,
    rpm: int | None = 250,
    resend_uncertain: bool = False,
) -> SubmitSummary:
    """Submit every request of ``path`` not submitted before; see the module's docstring."""
    if not 1 <= group_size <= MAX_GROUP:
        raise ValueError(f"group size must be 1 to {MAX_GROUP}, not {group_size}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    settings.require_api_key()
    _check(path)
    writer = spool.SpoolWriter(store.spool_dir)
    try:
        # What a crashed submit left (ids the API gave it) must be in the store before the known
        # keys are read, or a line that was paid for would look unsent: wait for the file.
        spool.drain(store, writer, wait=None)
        summary = asyncio.run(_submit(store, writer, settings, path, group_size, webhook_id, rpm, resend_uncertain))
        spool.drain(store, writer, wait=None)  # every id this run got, in the store before we return
        return summary
    finally:
        spool.finish(store, writer)


async def _submit(
    store: Store, writer: spool.SpoolWriter, settings: Settings, path: Path, group_size: int,
    webhook_id: str | None, rpm: int | None, resend_uncertain: bool,
) -> SubmitSummary:
    summary = SubmitSummary()
    source = f"submit:{path.resolve()}"
    with store.read(wait=FOREVER) as con:
        known = dict(con.execute("select key, state from submissions").fetchall())
    todo: list[_Line] = []
    for line in _read(path, webhook_id):
        summary.lines += 1
        state = known.get(line.key)
        if state == "submitted":
            summary.already_submitted += 1
        elif state in ("sending", "uncertain") and not resend_uncertain:
            summary.uncertain += 1
        else:
            todo.append(line)
    async with InferenceClient(settings, rpm=rpm) as client:
        for start in range(0, len(todo), group_size):
            chunk = todo[start : start + group_size]
            _record_sending(store, chunk, source)
            try:
                if group_size == 1:
                    generation_id = await client.submit(chunk[0].body)
                    _record_submitted(store, writer, chunk, generation_id=generation_id)
                else:
                    group_id, _ = await client.submit_group([line.body for line in chunk])
                    _record_submitted(store, writer, chunk, group_id=group_id)
                summary.posts += 1
                summary.submitted += len(chunk)
            except SubmitFailed as exc:
                _record_state(store, chunk, "failed", str(exc))
                summary.failed += len(chunk)
                summary.stopped = str(exc)
                break
            except SubmitUncertain as exc:
                _record_state(store, chunk, "uncertain", str(exc))
                summary.uncertain += len(chunk)
                summary.stopped = str(exc)
                break
    return summary


def _record_sending(store: Store, chunk: list[_Line], source: str) -> None:
    rows = pa.table({
        "key": [line.key for line in chunk],
        "line": pa.array([line.number for line in chunk], pa.int64()),
        "request": [json.dumps(line.body, ensure_ascii=False) for line in chunk],
    })
    with store.write() as con:
        con.register("_curate_sending", rows)
        con.execute(
            """
            insert into submissions (key, source, line, request, state, created_at, updated_at)
            select key, ?, line, request, 'sending', now(), now() from _curate_sending
            on conflict (key) do update set state = 'sending', source = excluded.source,
                line = excluded.line, request = excluded.request, error = null,
                updated_at = excluded.updated_at
            """,
            [source],
        )
        con.unregister("_curate_sending")


def _record_submitted(
    store: Store, writer: spool.SpoolWriter, chunk: list[_Line], *, generation_id: str | None = None,
    group_id: str | None = None,
) -> None:
    """Make the id the API gave durable first (the spool), then merge it if the file is free."""
    writer.append([spool.encode({"op": "submitted", "keys": [line.key for line in chunk],
                                 "generation_id": generation_id, "group_id": group_id, "at": time.time()})])
    spool.drain(store, writer)


def _record_state(store: Store, chunk: list[_Line], state: str, error: str) -> None:
    with store.write() as con:
        con.execute(
            "update submissions set state = ?, error = ?, updated_at = now() "
            "where key in (select unnest(?::varchar[]))",
            [state, error, [line.key for line in chunk]],
        )
