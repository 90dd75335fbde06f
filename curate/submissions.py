"""The submissions table: every request line curate sends, its key, who claimed it, what became of it.

inference.net has no idempotency key, so this table is what stands between a line and a second
charge. It is the one place that knows a line's key, the states a line goes through and every
change between them:

- ``claim`` (``curate submit``, before any POST): one atomic upsert that takes only lines no one
  else has claimed or sent; a second run, or a run beside a re-run, gets none of them.
- ``record`` (the spool's merge of what a run wrote down): ``sending`` just before a line's POST
  goes out, then ``submitted`` with the id the API gave, ``uncertain`` when no answer came,
  ``failed`` when the API refused it.
- ``resolve`` (every merge of generations): a stored generation whose ``metadata.custom_id`` is an
  open line's settles that line, so an uncertain POST that did create its generation stops
  being uncertain as soon as the generation shows up (a webhook, a group, an import).
- ``release``: lines a run claimed and never sent (it stopped, or was interrupted) go back.

A line's states (``STATES``):

  claimed    taken by a run (``claimed_by``: host, PID, token), not sent yet. If that run ends
             without sending it (a kill), the next claim takes it again once the run's spool is
             merged: it was never sent, so sending it is not sending it twice.
  sending    its POST is going out or went out (written to the run's spool before the POST).
             Left so by a run that ended, it may have been created and billed: it is reported
             with the uncertain lines, never sent again without ``resend_uncertain``.
  submitted  the API answered with its id (``generation_id``, or ``group_id`` for a group).
  uncertain  the POST went out and no answer came (5xx, timeout): it may exist and be billed.
  failed     the API refused it (4xx) or was never reached: it surely does not exist, and a
             re-run sends it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from curate import ledger

__all__ = [
    "OP",
    "RECORDED",
    "RETRY_SEPARATOR",
    "STATES",
    "Claimed",
    "Line",
    "State",
    "attempt_id",
    "claim",
    "claimant",
    "custom_id_of",
    "failed_attempts",
    "finished",
    "line_key",
    "listing",
    "next_attempt",
    "record",
    "release",
    "request_digest",
    "resolve",
    "running",
]

State = Literal["claimed", "sending", "submitted", "uncertain", "failed"]
STATES: tuple[State, ...] = ("claimed", "sending", "submitted", "uncertain", "failed")
OP = "submission"  # the spool record (curate.merge) that carries what a run wrote down about a POST
RECORDED: tuple[State, ...] = ("sending", "submitted", "uncertain", "failed")  # what such a record can say
OPEN = ("claimed", "sending", "uncertain")  # lines whose generation may exist without curate knowing its id


_HASHED = re.compile(r"sha256:[0-9a-f]{64}")


def line_key(body: dict[str, Any]) -> str:
    """A line's key: ``custom_id:ID`` from ``metadata.custom_id``, else a hash of the line.

    The hash is of the line as its author wrote it, less ``metadata.webhook_id``: where the
    answer is delivered does not make another request, so ``--webhook-id`` (or a webhook id
    written in the line) never changes a key. The rule is frozen in migration m008. A line
    whose custom_id is such a hash (curate sent it with its key as custom_id, and it was copied
    back from its generation) is that same line.
    """
    custom_id = (body.get("metadata") or {}).get("custom_id")
    if custom_id and _HASHED.fullmatch(custom_id):
        return str(custom_id)  # the key curate sent a line with: the same line, copied back
    if custom_id:
        return f"custom_id:{custom_id}"
    metadata = dict(body.get("metadata") or {})
    metadata.pop("webhook_id", None)
    keyed = {k: v for k, v in body.items() if k != "metadata"}
    if metadata:
        keyed["metadata"] = metadata
    canonical = json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# A request curate makes again on purpose (``--retry-failed``): its custom_id is the first
# attempt's, then this and the attempt's number, so it is a new line, sent once like any other.
RETRY_SEPARATOR = "~retry"


def attempt_id(custom_id: str, attempt: int) -> str:
    """The custom_id of attempt ``attempt`` (0: the first) of the request whose first is ``custom_id``."""
    return custom_id if attempt == 0 else f"{custom_id}{RETRY_SEPARATOR}{attempt}"


def next_attempt(custom_id: str, failed: Mapping[str, int]) -> str:
    """The custom_id to send the request whose first is ``custom_id`` with: the first, unless
    ``failed`` (``failed_attempts``) lists it, then the attempt after its last."""
    return attempt_id(custom_id, failed[custom_id] + 1) if custom_id in failed else custom_id


def request_digest(body: dict[str, Any], length: int) -> str:
    """A request curate made, less its metadata, as ``length`` hex digits of sha256: what its
    custom_id is keyed on (``curate sample``, ``curate judge``), so that the same request is the same
    line and any change to it another. The JSON form is frozen: a new one would send again what was sent."""
    keyed = {key: value for key, value in body.items() if key != "metadata"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:length]


def failed_attempts(con: duckdb.DuckDBPyConnection, prefix: str, succeeded: str) -> dict[str, int]:
    """The requests (first custom_id, starting with ``prefix``) every attempt of which has come back and
    failed, each with its last attempt's number: those ``--retry-failed`` sends again. ``succeeded``
    is SQL over ``g`` (a ``generation_rows`` row) saying the attempt gave what was asked. A request
    with an attempt still running, or never seen, is not listed."""
    rows = con.execute(f"""
        select regexp_replace(g.custom_id, '{RETRY_SEPARATOR}[0-9]+$', '') as first,
               max(coalesce(try_cast(regexp_extract(g.custom_id, '{RETRY_SEPARATOR}([0-9]+)$', 1) as integer), 0))
        from generation_rows g
        where starts_with(g.custom_id, ?)
        group by first
        having not bool_or(g.state in ('Queued', 'In Progress') or ({succeeded}))""", [prefix]).fetchall()
    return {first: int(last) for first, last in rows}


def custom_id_of(body: dict[str, Any], key: str) -> str:
    """The ``metadata.custom_id`` a line is sent with: its own, else its key."""
    return str((body.get("metadata") or {}).get("custom_id") or key)


@dataclass(frozen=True)
class Line:
    """A line to claim: its key, where it came from, and the request as stored (no webhook id)."""

    key: str
    number: int
    request: str
    custom_id: str


@dataclass(frozen=True)
class Claimed:
    """What a claim took, and what each line it did not take is: ``submitted`` (sent before),
    ``uncertain`` (sent, no answer: maybe paid), ``elsewhere`` (another run holds it) or
    ``changed`` (its custom_id was sent before with another request: a new request that reuses
    an old custom_id is not sent, since its key says it was)."""

    keys: frozenset[str]
    others: dict[str, Literal["submitted", "uncertain", "elsewhere", "changed"]]


def _started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), to tell a PID reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command's name


_RUNNING_HERE: set[str] = set()  # the runs of this process that have not finished (a notebook has many)


def claimant() -> str:
    """A new run's name in ``claimed_by``: host, PID, the PID's start time and a token.

    The run counts as running until ``finished``: a notebook's kernel outlives its runs, and
    the lines an interrupted run claimed must not look held by it for the kernel's lifetime.
    """
    pid = os.getpid()
    name = f"{socket.gethostname()}:{pid}:{_started(pid) or '-'}:{secrets.token_hex(4)}"
    _RUNNING_HERE.add(name)
    return name


def finished(claimed_by: str) -> None:
    """The run ``claimed_by`` (of this process) has ended: its lines are no longer held."""
    _RUNNING_HERE.discard(claimed_by)


def running(claimed_by: str | None) -> bool | None:
    """Whether the run that claimed a line is still running: None when it cannot be told
    (another host), False when it has ended, its PID now names another process, or the claim
    predates claimants."""
    if not claimed_by:
        return False
    host, pid, started = _parse(claimed_by)
    if host != socket.gethostname() or pid is None:
        return None
    if pid == os.getpid() and started == (_started(pid) or "-"):
        return claimed_by in _RUNNING_HERE
    try:
        os.kill(pid, 0)
        signalled = True
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: a teammate's run on a shared store, or a reuse
        signalled = False
    now = _started(pid)
    if started not in ("", "-") and now is not None:
        return now == started
    return True if signalled else None


def _parse(claimed_by: str) -> tuple[str, int | None, str]:
    """The host, PID and PID start time ``claimant`` wrote (the start time is "-" when unknown)."""
    host, pid, started, *_ = [*claimed_by.split(":"), "", ""]
    return host, int(pid) if pid.isdigit() else None, started


def claim(
    con: duckdb.DuckDBPyConnection,
    lines: Sequence[Line],
    *,
    by: str,
    source: str,
    spooling: Callable[[], set[int]],
    resend_uncertain: bool = False,
) -> Claimed:
    """Claim ``lines`` for the run ``by``, in the caller's write transaction; one statement.

    A line is taken when it is new or ``failed``, or ``claimed`` by a run that has ended (it
    never sent it). With ``resend_uncertain`` it is also taken when ``uncertain``, or
    ``sending`` under a run that has ended. A run has ended when its process is gone *and* none
    of its spool is left to merge: ``spooling`` returns the PIDs whose spool segments are still
    there, and is called after the processes are looked at, so a run that ends meanwhile is
    taken for running. A line ``submitted``, or held by a run still running (or on another
    host, which cannot be told), is never taken.
    """
    if not lines:
        return Claimed(frozenset(), {})
    holders = [h for (h,) in con.execute(
        "select distinct claimed_by from submissions where state in ('claimed', 'sending') "
        "and claimed_by is not null and claimed_by <> ?", [by]).fetchall()]
    gone = [h for h in holders if running(h) is False]
    unmerged = spooling() if gone else set()  # only now: what a gone run spooled is all there is
    ended = [h for h in gone if _parse(h)[1] not in unmerged]
    con.register("_curate_claim", pa.table({
        "key": pa.array([line.key for line in lines], pa.string()),
        "line": pa.array([line.number for line in lines], pa.int64()),
        "request": pa.array([line.request for line in lines], pa.string()),
        "custom_id": pa.array([line.custom_id for line in lines], pa.string()),
    }))
    try:
        taken = con.execute(
            """
            insert into submissions (key, source, line, request, state, created_at, updated_at, custom_id,
                                     claimed_by)
            select key, ?, line, request, 'claimed', now(), now(), custom_id, ? from _curate_claim
            on conflict (key) do update set
                state = 'claimed', source = excluded.source, line = excluded.line, request = excluded.request,
                custom_id = excluded.custom_id, claimed_by = excluded.claimed_by, error = null,
                generation_id = null, group_id = null, updated_at = excluded.updated_at
            where submissions.state = 'failed'
               or (submissions.state = 'claimed' and list_contains(?::varchar[], submissions.claimed_by))
               or (? and (submissions.state = 'uncertain'
                          or (submissions.state = 'sending'
                              and (submissions.claimed_by is null
                                   or list_contains(?::varchar[], submissions.claimed_by)))))
            returning key
            """,
            [source, by, ended, resend_uncertain, ended],
        ).fetchall()
        keys = frozenset(k for (k,) in taken)
        rows = con.execute(
            "select s.key, s.state, s.claimed_by, s.request::varchar from submissions s "
            "semi join _curate_claim c on c.key = s.key"
        ).fetchall()
    finally:
        con.unregister("_curate_claim")
    asked = {line.key: line.request for line in lines}
    others: dict[str, Literal["submitted", "uncertain", "elsewhere", "changed"]] = {}
    for key, state, holder, request in rows:
        if key in keys:
            continue
        if _same_request(request) != _same_request(asked[key]):
            others[key] = "changed"
        elif state == "submitted":
            others[key] = "submitted"
        elif state == "uncertain" or (state == "sending" and (holder is None or holder in gone)):
            others[key] = "uncertain"  # sent, and no answer will come: maybe paid
        else:
            others[key] = "elsewhere"
    return Claimed(keys, others)


def _same_request(text: str) -> Any:
    """A request as compared with another under the same key: without the webhook id (older
    curates stored it) and the custom_id (the key accounts for it; older curates sent none)."""
    body = json.loads(text)
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        metadata = {k: v for k, v in body["metadata"].items() if k not in ("webhook_id", "custom_id")}
        body = {k: v for k, v in body.items() if k != "metadata"} | ({"metadata": metadata} if metadata else {})
    return body


def release(con: duckdb.DuckDBPyConnection, keys: Iterable[str], *, by: str) -> int:
    """Give back lines ``by`` claimed and never sent; they are as if never claimed."""
    keys = list(keys)
    if not keys:
        return 0
    ((deleted,),) = con.execute(
        "delete from submissions where state = 'claimed' and claimed_by = ? "
        "and key in (select unnest(?::varchar[]))", [by, keys],
    ).fetchall()
    return int(deleted)


def record(
    con: duckdb.DuckDBPyConnection,
    keys: Sequence[str],
    state: str,
    *,
    generation_id: str | None = None,
    group_id: str | None = None,
    error: str | None = None,
) -> None:
    """What a run wrote down about a POST, in the caller's transaction (the spool's merge calls this).

    ``sending`` moves a ``claimed`` line on; ``submitted`` is certain and always wins;
    ``uncertain`` and ``failed`` only change a line not yet answered, so they never undo a line
    that a generation already settled. The ids go into the ledger, where a harvest waits for them.
    """
    if state == "submitted":
        con.execute(
            "update submissions set state = 'submitted', generation_id = coalesce(?, generation_id), "
            "group_id = coalesce(?, group_id), error = null, updated_at = now() "
            "where key in (select unnest(?::varchar[]))",
            [generation_id, group_id, list(keys)],
        ).fetchall()
        if generation_id is not None:
            ledger.add(con, [generation_id], kind="generation", source="submit")
        if group_id is not None:
            ledger.add(con, [group_id], kind="group", source="submit")
        return
    if state not in RECORDED:
        raise ValueError(f"a run cannot record a line as {state!r}")
    before = ["claimed"] if state == "sending" else ["claimed", "sending"]
    con.execute(
        "update submissions set state = ?, error = ?, updated_at = now() "
        "where list_contains(?::varchar[], state) and key in (select unnest(?::varchar[]))",
        [state, error, before, list(keys)],
    ).fetchall()


def resolve(con: duckdb.DuckDBPyConnection, *, everything: bool = False) -> int:
    """Settle open lines whose generation is in the store, in the caller's transaction.

    An open line (``OPEN``) is one whose POST may have created a generation whose
    id never reached curate. A stored generation whose ``metadata.custom_id`` is the line's
    makes it ``submitted`` with that id, and puts the id in the ledger. Only the generations
    this transaction wrote are looked at (a merge calls this for every batch, so it must not
    grow with the store), unless ``everything``. Returns how many lines it settled.
    """
    ((open_lines,),) = con.execute(
        "select count(*) from submissions where list_contains(?::varchar[], state) and custom_id is not null",
        [list(OPEN)],
    ).fetchall()
    if not open_lines:
        return 0
    recent = "" if everything else "and g.updated_at = now()"  # now(): this transaction's start
    found = con.execute(
        f"""
        select s.key, g.id, g.state from submissions s
        join generation_rows g on g.custom_id = s.custom_id {recent}
            and g.first_seen_at >= s.created_at  -- a generation seen before the line was sent is another's
        where list_contains(?::varchar[], s.state) and s.custom_id is not null
        qualify row_number() over (partition by s.key order by g.first_seen_at, g.id) = 1
        """,
        [list(OPEN)],
    ).fetchall()
    if not found:
        return 0
    con.register("_curate_resolved", pa.table({
        "key": pa.array([k for k, _, _ in found], pa.string()),
        "id": pa.array([i for _, i, _ in found], pa.string()),
    }))
    try:
        con.execute(
            "update submissions set state = 'submitted', generation_id = r.id, error = null, updated_at = now() "
            "from _curate_resolved r where submissions.key = r.key"
        ).fetchall()
    finally:
        con.unregister("_curate_resolved")
    ledger.settle(con, [(i, state) for _, i, state in found], source="submit")
    return len(found)


def listing(con: duckdb.DuckDBPyConnection, states: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Lines in ``states`` (all when empty), oldest first, with where they came from and why.

    ``running`` says whether the run holding a ``claimed`` or ``sending`` line still runs (None:
    another host).
    """
    unknown = sorted(set(states) - set(STATES))
    if unknown:
        raise ValueError(f"no such submission state: {', '.join(unknown)} (states: {', '.join(STATES)})")
    rows = con.execute(
        """
        select key, state, case when starts_with(source, 'submit:') then substr(source, 8) else source end
                   as file,
               line, error, generation_id, group_id, custom_id, claimed_by, updated_at
        from submissions
        where len(?::varchar[]) = 0 or state in (select unnest(?::varchar[]))
        order by created_at, source, line
        """,
        [list(states), list(states)],
    ).fetchall()
    names = ("key", "state", "file", "line", "error", "generation_id", "group_id", "custom_id", "claimed_by",
             "updated_at")
    out = [dict(zip(names, row, strict=True)) for row in rows]
    for row in out:
        row["running"] = running(row["claimed_by"]) if row["state"] in ("claimed", "sending") else None
    return out
