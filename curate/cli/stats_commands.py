"""``curate stats``: the store's overview in the terminal, or as JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, LakeOption, QueriesOption, lake_uri, open_store, out, user_errors

if TYPE_CHECKING:
    from curate.stats import Counts, Stats

__all__ = ["stats_command"]


def stats_command(
    db: DbOption = None,
    lake: LakeOption = None,
    queries: QueriesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the overview as JSON.")] = False,
) -> None:
    """Print the store's overview: generations by state, model and source, and what else it holds.

    Also what the ledger still waits for, how many records were refused and the commonest
    reasons, the dates the generations span, the tokens they used, and the rows of chat and
    conversations.
    """
    from curate.stats import stats

    with user_errors():
        overview = stats(open_store(db, queries, lake_uri(lake, db)))
    if as_json:
        typer.echo(json.dumps(overview.to_dict(), ensure_ascii=False))
        return
    total = overview.generations
    out.print(_counts("Generations", "state", overview.by_state, total))
    if overview.by_model:
        out.print(_counts("Models", "model", overview.by_model, total))
    if overview.by_source:
        out.print(_counts("Sources", "source", overview.by_source, total))
    out.print(_store_table(overview))
    if overview.top_reject_reasons:
        out.print(_counts("Commonest reject reasons", "reason", overview.top_reject_reasons, overview.rejects))


def _counts(title: str, what: str, counts: Counts, total: int) -> Table:
    table = Table(what, "count", "%", title=title, title_justify="left")
    for name, n in counts:
        table.add_row(name, f"{n:,}", f"{100 * n / total:.1f}" if total else "-")
    return table


def _when(first: datetime | None, last: datetime | None) -> str:
    if first is None or last is None:
        return "-"
    return f"{first.isoformat(sep=' ', timespec='seconds')} … {last.isoformat(sep=' ', timespec='seconds')}"


def _maybe(n: int | None) -> str:
    return "unavailable (view broken)" if n is None else f"{n:,}"


def _store_table(s: Stats) -> Table:
    table = Table(title="Store", title_justify="left", show_header=False)
    table.add_row("ledger pending", f"{s.ledger_pending:,} ({s.ledger_pending_groups:,} group(s))")
    table.add_row("submitted lines", ", ".join(f"{n:,} {state}" for state, n in s.submissions) or "0")
    table.add_row("rejects", f"{s.rejects:,}")
    table.add_row("dispatched", _when(s.first_dispatched_at, s.last_dispatched_at))
    table.add_row("finished", _when(s.first_finished_at, s.last_finished_at))
    table.add_row(
        "tokens",
        f"{s.total_tokens:,} total ({s.prompt_tokens:,} prompt, {s.completion_tokens:,} completion)",
    )
    mean = s.mean_tokens_per_success
    table.add_row("tokens per Success", "-" if mean is None else f"{mean:,.1f}")
    table.add_row("chat rows", _maybe(s.chat_rows))
    table.add_row("conversations", _maybe(s.conversations))
    unparseable = "" if not s.unparseable_judgments else f" ({s.unparseable_judgments:,} unparseable: see parse_error)"
    table.add_row("judgments", _maybe(s.judgments) + unparseable)
    spooled = "0 (all merged)"
    if s.spool_records:
        age = "" if s.spool_oldest_at is None else f", oldest since {s.spool_oldest_at.isoformat(sep=' ', timespec='seconds')}"
        spooled = f"{s.spool_records:,} record(s) in {s.spool_segments:,} segment(s), {s.spool_bytes:,} bytes{age}"
    table.add_row("waiting in the spool", spooled)
    return table
