"""The store's overview: what ``curate stats`` prints, as one value a notebook can read too.

This module owns ``Stats`` and ``stats(store)``: how many generations there are by state, model
and source, what the ledger still waits for, what was refused and why, the dates the generations
span, the tokens they used, and how many rows the ``chat`` and ``conversations`` views give. It
reads everything in one read-only connection (and the spool's files, for what waits there), with one SQL query per figure group, never a
Python loop over rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import duckdb

from curate import ledger, spool, submissions
from curate.store import ReadableStore

__all__ = ["OTHER_MODELS", "STATES", "TOP_MODELS", "TOP_REASONS", "Counts", "Stats", "stats"]

STATES = ("Queued", "In Progress", "Success", "Failed")
"""The generation states, in the order a generation goes through them; always all listed."""

TOP_MODELS = 10
"""How many models are named; the rest are counted together as ``OTHER_MODELS``."""

OTHER_MODELS = "(other)"

TOP_REASONS = 3
"""How many of the most frequent reject reasons are named."""

Counts = tuple[tuple[str, int], ...]
"""(name, count) pairs, in the order they are shown."""


@dataclass(frozen=True)
class Stats:
    """The store at one moment: counts, date range, tokens and view sizes.

    Counts are (name, count) pairs, largest first (``by_state``: in ``STATES`` order, then any
    other state seen). A generation with no model or state counts under ``"(none)"``. Dates are
    ``None`` in a store with no such timestamp. ``mean_tokens_per_success`` is the mean
    ``total_tokens`` of the ``Success`` generations that report it (``None`` if none).
    ``chat_rows`` and ``conversations`` are ``None`` when that view cannot be queried (a broken
    view file that replaces it). ``spool_*`` say what writers have made durable in the spool but
    not merged into the store yet (``curate.spool``): records, segments, bytes, and when the oldest
    was spooled. ``submissions`` counts the request lines ``curate submit`` claimed, by state.
    ``judgments`` counts the ``judgments`` view's rows and ``unparseable_judgments`` those of them
    whose answer could not be read as a score (``None`` when that view cannot be queried).
    """

    generations: int
    by_state: Counts
    by_model: Counts
    by_source: Counts
    ledger_pending: int
    ledger_pending_groups: int
    rejects: int
    top_reject_reasons: Counts
    first_dispatched_at: datetime | None
    last_dispatched_at: datetime | None
    first_finished_at: datetime | None
    last_finished_at: datetime | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mean_tokens_per_success: float | None
    chat_rows: int | None
    conversations: int | None
    spool_records: int = 0
    spool_segments: int = 0
    spool_bytes: int = 0
    spool_oldest_at: datetime | None = None
    submissions: Counts = ()  # request lines by state (curate.submissions.STATES order), those with any
    judgments: int | None = 0  # rows of the judgments view (None: the view is broken)
    unparseable_judgments: int | None = 0  # of those, the ones without a score (their parse_error says why)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: counts as ``{name: count}`` objects, datetimes as ISO 8601 strings."""
        result: dict[str, Any] = {}
        for field in fields(self):
            name, value = field.name, getattr(self, field.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = dict(value)
            result[name] = value
        return result


_NONE = "(none)"

_TOTALS = """
    select count(*),
           min(dispatched_at), max(dispatched_at), min(finished_at), max(finished_at),
           coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
           coalesce(sum(total_tokens), 0),
           avg(total_tokens) filter (where state = 'Success')
    from generation_rows
"""

_BY_STATE = f"""
    select coalesce(state, '{_NONE}') as state, count(*) as n
    from generation_rows group by all
"""

_BY_MODEL = f"""
    with counted as (
        select coalesce(model, '{_NONE}') as model, count(*) as n from generation_rows group by all
    ), ranked as (
        select model, n, row_number() over (order by n desc, model) as rank from counted
    )
    select case when rank <= {TOP_MODELS} then model else '{OTHER_MODELS}' end as name, sum(n)::bigint
    from ranked group by all order by min(rank)
"""

_BY_SOURCE = "select source, count(*) as n from generation_rows group by all order by n desc, source"

_REJECT_REASONS = f"""
    select reason, count(*) as n from rejects group by all order by n desc, reason limit {TOP_REASONS}
"""


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    row = con.execute(sql).fetchone()
    assert row is not None, "an aggregate always returns a row"
    return row


def _pairs(con: duckdb.DuckDBPyConnection, sql: str) -> Counts:
    return tuple((str(name), int(n)) for name, n in con.execute(sql).fetchall())


def _view_rows(con: duckdb.DuckDBPyConnection, view: str) -> int | None:
    try:
        source = view if view.startswith("(") else f'"{view}"'
        return int(_one(con, f"select count(*) from {source}")[0])
    except duckdb.Error:
        return None


def stats(store: ReadableStore) -> Stats:
    """The store's overview, read in one read-only connection."""
    with store.read() as con:
        (generations, first_dispatched, last_dispatched, first_finished, last_finished,
         prompt, completion, total, mean_success) = _one(con, _TOTALS)
        seen = dict(_pairs(con, _BY_STATE))
        by_state = tuple((s, seen.pop(s, 0)) for s in STATES) + tuple(
            sorted(seen.items(), key=lambda pair: (-pair[1], pair[0]))
        )
        by_model = _pairs(con, _BY_MODEL)
        by_source = _pairs(con, _BY_SOURCE)
        pending, pending_groups = ledger.pending_count(con)
        rejects = int(_one(con, "select count(*) from rejects")[0])
        reasons = _pairs(con, _REJECT_REASONS)
        chat_rows = _view_rows(con, "chat")
        conversations = _view_rows(con, "conversations")
        merged = dict(con.execute("select segment, merged_to from spool_merged").fetchall())
        lines = dict(_pairs(con, "select state, count(*) from submissions group by all"))
        judgments = _view_rows(con, "judgments")
        unparseable = _view_rows(con, "(select * from judgments where parse_error is not null)")
    waiting = spool.status(store.spool_dir, merged)
    return Stats(
        generations=int(generations),
        by_state=by_state,
        by_model=by_model,
        by_source=by_source,
        ledger_pending=int(pending),
        ledger_pending_groups=int(pending_groups),
        rejects=rejects,
        top_reject_reasons=reasons,
        first_dispatched_at=first_dispatched,
        last_dispatched_at=last_dispatched,
        first_finished_at=first_finished,
        last_finished_at=last_finished,
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
        total_tokens=int(total),
        mean_tokens_per_success=None if mean_success is None else float(mean_success),
        chat_rows=chat_rows,
        conversations=conversations,
        spool_records=waiting.records,
        spool_segments=waiting.segments,
        spool_bytes=waiting.bytes,
        spool_oldest_at=waiting.oldest,
        submissions=tuple((state, lines[state]) for state in submissions.STATES if lines.get(state)),
        judgments=judgments,
        unparseable_judgments=unparseable,
    )
