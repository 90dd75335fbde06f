"""``curate submit``: send a JSONL file of chat requests to inference.net, each line paid once.

Every line is checked before anything is sent; one bad line refuses the file, naming the line.
Then lines go out in claims (``curate.submissions`` holds the rules): a claim takes, in one
atomic write, only lines no run has claimed or sent, so two runs of one file, or a run beside a
re-run, split the lines instead of paying for them twice. Each claimed line is sent with a
``metadata.custom_id`` (its own, else its key), so its generation names its line however it
comes back. Claimed lines go out in groups of up to 50 (or singly), several POSTs in flight
within the account's rate; the id each answer carries is made durable in the store's spool
(``curate.spool``) before anything else, then merged, so an id the API gave survives a busy
store, a crash and SIGKILL.

What an answer means for its lines:
- 2xx: ``submitted``, with the generation's or the group's id (then in the ledger).
- 5xx, a timeout or a cut connection after the request went out: ``uncertain`` (it may exist and
  be billed; there is no idempotency key). The run goes on with the next lines; a generation
  that later reaches the store with the line's custom_id settles it. ``resend_uncertain`` is
  the explicit way to risk a second charge.
- 4xx: nothing was created. A group is split in halves until the refused lines are alone; each
  of those is ``failed`` with the API's message, and a re-run sends it again. An answer that
  refuses every request alike (401, 402, 403, 404) stops the run.
- ``max_failures`` POSTs in a row that are uncertain or never reach the API stop the run: the
  API is down, and sending on would only make more uncertain lines.

Just before a POST goes out (once the rate limit lets it), its lines are written down as
``sending`` in the spool. So when a run is killed, the lines whose POST had begun are reported
with the uncertain ones and never sent again without asking, while the lines it had claimed
and not begun are taken by the next run. A run that stops, or is interrupted, gives back the
lines it claimed and never sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from curate import spool, submissions
from curate.client import ApiError, InferenceClient, SubmitFailed, SubmitUncertain, run_blocking
from curate.config import Settings
from curate.errors import MissingFile, UsageError
from curate.store import Store

__all__ = ["InvalidRequests", "SubmitOptions", "SubmitSummary", "submit_file", "submit_requests"]

log = logging.getLogger("curate.submit")

MAX_GROUP = 50
# A claim holds about this many seconds of sending at the account's rate: what a second run
# beside this one finds taken at a time, against one store write (and maybe a wait) per claim.
CLAIM_SECONDS = 1.0
# Answers that would refuse every request alike: sending on would only repeat them.
REFUSES_EVERY_LINE = frozenset({401, 402, 403, 404, 405})

class InvalidRequests(UsageError, ValueError):
    """Lines of a request file that cannot be sent; nothing was sent."""

    def __init__(self, path: Path | str, problems: list[tuple[int, str]]) -> None:
        shown = "; ".join(f"line {line}: {why}" for line, why in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} line(s) cannot be sent, so nothing was: {shown}{more}")
        self.problems = problems


@dataclass(frozen=True)
class SubmitOptions:
    """How a submit sends: one frozen object, as the CLI and a notebook both pass it."""

    group_size: int = MAX_GROUP  # requests per POST; 1 submits singly
    webhook_id: str | None = None  # set as metadata.webhook_id on every request sent
    rpm: int | None = 250  # requests per minute the account allows (None: no cap)
    concurrency: int = 4  # POSTs in flight at once
    resend_uncertain: bool = False  # also send lines whose earlier answer never came (may pay twice)
    max_failures: int = 5  # POSTs in a row that are uncertain or unsent before the run stops

    def __post_init__(self) -> None:
        if not 1 <= self.group_size <= MAX_GROUP:
            raise ValueError(f"group size must be 1 to {MAX_GROUP}, not {self.group_size}")
        if self.concurrency < 1 or self.max_failures < 1:
            raise ValueError("concurrency and max failures must be at least 1")
        if self.rpm is not None and self.rpm < 1:
            raise ValueError(f"rpm must be at least 1, not {self.rpm}")


class SubmitSummary(BaseModel):
    """What a submit run did, line by line; ``exit_code`` says whether anything needs attention."""

    lines: int = 0
    submitted: int = 0  # sent by this run, with an id
    already_submitted: int = 0  # sent before, with an id
    uncertain: int = 0  # sent and unanswered (this run or an earlier one that ended)
    failed: int = 0  # refused by the API (4xx) or never reached it
    elsewhere: int = 0  # being sent by another run that still runs
    changed: int = 0  # their custom_id was sent before with another request: not sent
    changed_lines: list[int] = []  # the first 20 of those, by line number
    not_sent: int = 0  # left for a later run because this one stopped
    posts: int = 0
    stopped: str | None = None

    @property
    def exit_code(self) -> int:
        """0: every line is submitted (or being sent by another run that still runs); 1: the run
        stopped before the end of the file; 3: it ended, and some lines are uncertain, failed, or
        reuse a custom_id sent before with another request. (2, a file refused before anything was
        sent, is ``InvalidRequests``.)"""
        if self.stopped:
            return 1
        return 3 if self.uncertain or self.failed or self.changed else 0


@dataclass(frozen=True)
class _Line:
    number: int
    key: str
    body: dict[str, Any]


def _batched(items: Iterator[_Line] | Sequence[_Line], n: int) -> Iterator[Sequence[_Line]]:
    """``itertools.batched``, which Python 3.11 lacks."""
    it = iter(items)
    while chunk := tuple(islice(it, n)):
        yield chunk


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


def _not_json(value: str) -> Any:
    raise ValueError(f"{value} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a JSON number")
    return value


def _parse(path: Path) -> Iterator[tuple[int, _Line | str]]:
    """Each non-blank line's number, and its parsed line or why it cannot be sent.

    Lines are split on ``\n`` only (``\r`` is JSON whitespace). What JSON cannot carry is
    refused here, before anything is sent: NaN, Infinity and numbers too large for a double
    (Python's parser takes them; no request body can), and escaped lone surrogates.
    """
    with path.open("rb") as raw:
        for number, data in enumerate(raw, start=1):
            if not data.strip():
                continue
            try:
                body = json.loads(data.decode("utf-8"), parse_constant=_not_json, parse_float=_finite)
            except (UnicodeDecodeError, ValueError) as exc:
                yield number, f"not valid JSON ({exc})"
                continue
            except RecursionError:  # "[[[[..." nested deeper than the parser goes
                yield number, "not valid JSON (nested too deeply to read)"
                continue
            why = _problem(body)
            if why is None:
                try:
                    json.dumps(body, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError as exc:
                    why = f"holds a lone surrogate ({exc.object[exc.start:exc.end]!r}), which is not valid Unicode"
            yield number, why if why else _Line(number, submissions.line_key(body), body)


def _check(path: Path | str, parsed: Iterable[tuple[int, _Line | str]] | None = None) -> None:
    """Refuse the file (or ``parsed``, the requests named ``path``), naming every bad line, before anything is sent."""
    problems: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    for number, line in parsed if parsed is not None else _parse(Path(path)):
        if isinstance(line, str):
            problems.append((number, line))
        elif line.key in first_seen:
            problems.append((number, f"the same request as line {first_seen[line.key]} ({line.key})"))
        else:
            first_seen[line.key] = number
    if problems:
        raise InvalidRequests(path, problems)


def _read(path: Path | str, parsed: Iterable[tuple[int, _Line | str]] | None = None) -> Iterator[_Line]:
    """The lines ``_check`` passed; a file changed since then is refused where it changed."""
    seen: set[str] = set()
    for number, line in parsed if parsed is not None else _parse(Path(path)):
        if isinstance(line, str) or line.key in seen:
            why = line if isinstance(line, str) else "the same request as an earlier line"
            raise InvalidRequests(path, [(number, f"{why} (the file changed while it was being sent)")])
        seen.add(line.key)
        yield line


def submit_file(
    store: Store, settings: Settings, path: str | os.PathLike[str], options: SubmitOptions | None = None
) -> SubmitSummary:
    """Submit every request of ``path`` that no run has claimed or sent; see the module's docstring."""
    options = options or SubmitOptions()
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such file")
    settings.require_api_key()
    _check(path, _parse(path))
    return _send(store, settings, lambda: _read(path, _parse(path)), f"submit:{path.resolve()}", options)


def _checked(bodies: Iterable[Any]) -> Iterator[tuple[int, _Line | str]]:
    for number, body in enumerate(bodies, start=1):
        why = _problem(body)
        yield number, why if why else _Line(number, submissions.line_key(body), body)


def submit_requests(
    store: Store, settings: Settings, requests: Callable[[], Iterable[dict[str, Any]]], source: str,
    options: SubmitOptions | None = None,
) -> SubmitSummary:
    """Submit request bodies curate made (``curate sample``, ``curate judge``) as ``submit_file`` sends
    a file's lines: each checked first, then claimed and sent once, however often this is run.

    ``requests`` makes the bodies (called twice: once to check every one, once to send), in the same
    order each time; a request's number in that order stands for a file's line number. ``source``
    names them in the submissions table (``sample:...``); give each a ``metadata.custom_id`` that
    says what it is, so that a re-run finds it sent.
    """
    options = options or SubmitOptions()
    settings.require_api_key()
    _check(source, _checked(requests()))
    return _send(store, settings, lambda: _read(source, _checked(requests())), source, options)


def _send(store: Store, settings: Settings, lines: Callable[[], Iterator[_Line]], source: str,
          options: SubmitOptions) -> SubmitSummary:
    writer = spool.SpoolWriter(store.spool_dir)
    run = _Run(store, writer, settings, lines, source, options)
    try:
        # What a crashed submit left (ids the API gave it) must be in the store before lines are
        # claimed, or a line that was paid for would look unsent: wait for the file.
        spool.drain(store, writer, wait=None)
        run_blocking(run.go())
        return run.summary
    finally:
        try:
            spool.drain(store, writer, wait=None)  # every id this run got, in the store before we return
            run.give_back()
        finally:
            submissions.finished(run.by)
            spool.finish(store, writer)


class _Run:
    """One submit: claims lines, sends them, and makes every answer durable."""

    def __init__(self, store: Store, writer: spool.SpoolWriter, settings: Settings,
                 lines: Callable[[], Iterator[_Line]], source: str, options: SubmitOptions) -> None:
        self.store, self.writer, self.settings, self.lines, self.options = store, writer, settings, lines, options
        self.by = submissions.claimant()
        self.source = source
        self.summary = SubmitSummary()
        self.unsent: set[str] = set()  # claimed by this run, POST not started: given back at the end
        self.failures = 0  # POSTs in a row that were uncertain or never reached the API
        self.error: Exception | None = None  # what a worker could not handle: raised at the end
        rate = (options.rpm or 3000) / 60 * CLAIM_SECONDS
        self.claim_units = max(options.concurrency, math.ceil(rate))
        self.claim_lines = self.claim_units * options.group_size
        self.first_claim = True

    async def go(self) -> None:
        # One claim's worth queued ahead: the next claim (a store write, and a wait if another
        # holds the file) happens while the last one's lines are sent.
        queue: asyncio.Queue[Sequence[_Line] | None] = asyncio.Queue(maxsize=self.claim_units)
        async with InferenceClient(self.settings, rpm=self.options.rpm) as client:
            workers = [asyncio.create_task(self._work(client, queue)) for _ in range(self.options.concurrency)]
            try:
                await self._produce(queue)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
        if self.error is not None:
            raise self.error

    async def _produce(self, queue: asyncio.Queue[Sequence[_Line] | None]) -> None:
        for chunk in _batched(self.lines(), self.claim_lines):
            self.summary.lines += len(chunk)
            if self.summary.stopped:
                self.summary.not_sent += len(chunk)
                continue
            claimed = await asyncio.to_thread(self._claim, chunk)
            self._count_others(claimed, chunk)
            todo = [line for line in chunk if line.key in claimed.keys]
            self.unsent.update(line.key for line in todo)
            for unit in _batched(todo, self.options.group_size):
                await queue.put(unit)

    def _claim(self, chunk: Sequence[_Line]) -> submissions.Claimed:
        # What runs wrote down so far, merged first: a line only claimed by a run that was killed
        # is taken again only once that run's spool is merged (the claim waits for the file anyway).
        spool.drain(self.store, self.writer, wait=None)
        lines = [submissions.Line(line.key, line.number, json.dumps(self._stored(line), ensure_ascii=False),
                                  submissions.custom_id_of(line.body, line.key)) for line in chunk]
        with self.store.write() as con:
            if self.first_claim:  # lines an earlier curate left open whose generation is stored already
                submissions.resolve(con, everything=True)
                self.first_claim = False
            return submissions.claim(con, lines, by=self.by, source=self.source, spooling=self._spooling,
                                     resend_uncertain=self.options.resend_uncertain)

    def _spooling(self) -> set[int]:
        """PIDs with spool segments still to merge; this run's own segment holds nothing of an
        earlier run of this process."""
        return spool.writer_pids(self.store.spool_dir, besides=self.writer.path)

    def _count_others(self, claimed: submissions.Claimed, chunk: Sequence[_Line]) -> None:
        for line in chunk:
            what = claimed.others.get(line.key)
            if what is None:
                continue
            if what == "changed":
                self.summary.changed += 1
                if len(self.summary.changed_lines) < 20:
                    self.summary.changed_lines.append(line.number)
            elif what == "submitted":
                self.summary.already_submitted += 1
            elif what == "uncertain":
                self.summary.uncertain += 1
            else:
                self.summary.elsewhere += 1

    async def _work(self, client: InferenceClient, queue: asyncio.Queue[Sequence[_Line] | None]) -> None:
        while (unit := await queue.get()) is not None:
            if self.summary.stopped:
                continue  # its lines stay in `unsent`, given back at the end
            try:
                await self._post(client, unit)
            except Exception as exc:  # noqa: BLE001 - kept, and raised once every worker has let go
                # Not cancelling the others: a POST in flight may create generations, and its
                # answer (the id) must be waited for and written down. The producer sees the stop.
                self.error = self.error or exc
                self._stop(f"{type(exc).__name__}: {exc}")

    async def _post(self, client: InferenceClient, unit: Sequence[_Line]) -> None:
        bodies = [self._outgoing(line) for line in unit]
        marked: list[bool] = []

        def sending() -> None:  # the POST may exist from here on: written down before it goes out
            if not marked:
                self._write(unit, "sending")
                self.unsent.difference_update(line.key for line in unit)
                marked.append(True)

        try:
            if self.options.group_size == 1:
                generation_id = await client.submit(bodies[0], before_send=sending)
                self._answer(unit, "submitted", generation_id=generation_id)
            else:
                group_id, _ = await client.submit_group(bodies, before_send=sending)
                self._answer(unit, "submitted", group_id=group_id)
        except SubmitUncertain as exc:
            self._answer(unit, "uncertain", error=str(exc))
            self._failed_post(exc)
        except SubmitFailed as exc:
            self._answer(unit, "failed", error=str(exc))
            self._failed_post(exc)
        except ApiError as exc:
            if exc.status in REFUSES_EVERY_LINE:
                self._answer(unit, "failed", error=str(exc))
                self._stop(f"{exc} (every request would get the same answer: fix that, then run again)")
            elif len(unit) > 1:  # nothing was created: find the refused lines, send the others
                half = len(unit) // 2
                for part in (unit[:half], unit[half:]):
                    await self._post(client, part)
            else:
                self._answer(unit, "failed", error=str(exc))
        else:
            self.summary.posts += 1
            self.failures = 0

    def _answer(self, unit: Sequence[_Line], state: submissions.State, *, generation_id: str | None = None,
                group_id: str | None = None, error: str | None = None) -> None:
        """Make a POST's answer durable (the spool) before anything else; merged at the next claim."""
        try:
            self._write(unit, state, generation_id=generation_id, group_id=group_id, error=error)
        except OSError as exc:
            # The spool refused (a full disk): the store itself is the last place an id can live.
            log.error("could not write the answer to lines %s of %s to the spool (%s): recording %s "
                      "(generation %s, group %s) in the store directly", [line.number for line in unit],
                      self.source, exc, state, generation_id, group_id)
            with self.store.write() as con:
                submissions.record(con, [line.key for line in unit], state, generation_id=generation_id,
                                   group_id=group_id, error=error)
            self._stop(f"the spool could not be written ({exc}): free some disk, then run again")
        if state == "submitted":
            self.summary.submitted += len(unit)
        elif state == "uncertain":
            self.summary.uncertain += len(unit)
        else:
            self.summary.failed += len(unit)

    def _write(self, unit: Sequence[_Line], state: submissions.State, **answer: str | None) -> None:
        self.writer.append([spool.encode({"op": submissions.OP, "keys": [line.key for line in unit],
                                          "state": state, **answer, "at": time.time()})])

    def _failed_post(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures >= self.options.max_failures:
            self._stop(f"{self.failures} POSTs in a row failed, so inference.net looks down; the last: {exc}")

    def _stop(self, reason: str) -> None:
        if not self.summary.stopped:
            self.summary.stopped = reason

    def _outgoing(self, line: _Line) -> dict[str, Any]:
        body = dict(line.body)
        metadata = dict(body.get("metadata") or {})
        if not metadata.get("custom_id"):
            metadata["custom_id"] = line.key  # so the generation names its line, however it returns
        if self.options.webhook_id is not None:
            metadata["webhook_id"] = self.options.webhook_id
        body["metadata"] = metadata
        return body

    def _stored(self, line: _Line) -> dict[str, Any]:
        """The request as sent, less the webhook id (a credential: it stays out of the store)."""
        body = self._outgoing(line)
        metadata = {k: v for k, v in body["metadata"].items() if k != "webhook_id"}
        return {**body, "metadata": metadata}

    def give_back(self) -> None:
        """Release the lines this run claimed and never sent (it stopped, or was interrupted)."""
        if not self.unsent:
            return
        with self.store.write() as con:
            self.summary.not_sent += submissions.release(con, self.unsent, by=self.by)
        self.unsent.clear()
