"""``curate scan pii``: find personal data and secrets in the chat messages (see ``curate.pii``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, QueriesOption, open_store, out, user_errors

__all__ = ["scan_app"]

scan_app = typer.Typer(
    help="Curation passes over the chat rows; each records what it finds apart from the stored bodies.",
    rich_markup_mode=None,
    no_args_is_help=True,
)


@scan_app.callback()
def scan_callback() -> None:
    """Curation passes over the chat rows; each records what it finds apart from the stored bodies."""
    # A callback keeps `scan` a group of commands even while `pii` is its only one.


@scan_app.command("pii")
def pii_command(
    db: DbOption = None,
    queries: QueriesOption = None,
    full: Annotated[bool, typer.Option("--full", help="Scan every row again, not only the rows no scan has read.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as one JSON object.")] = False,
) -> None:
    """Find emails, phone numbers, card numbers, IP addresses and secrets in the chat messages.

    Reads only the rows no earlier scan read as they are now (new rows, changed rows; every row
    once the detectors change), and records which rows it read (table pass_coverage). The table
    pii_findings holds one row per span found; the view pii lists the chat rows with findings.
    The stored bodies are never modified.
    """
    from curate import pii

    with user_errors():
        store = open_store(db, queries)
        result = pii.scan(store, full=full)
        found = store.arrow("select kind, count(*) as n from pii_findings group by kind").to_pydict()
        stored = dict(zip(found["kind"], found["n"], strict=True))
    counts = {kind: result.findings.get(kind, 0) for kind in pii.KINDS}
    if as_json:
        typer.echo(json.dumps({"rows": result.rows, "skipped": result.skipped, "messages": result.messages,
                               "findings": counts, "total": result.total, "seconds": round(result.seconds, 3)}))
        return
    table = Table("kind", "found now", "in the store")
    for kind, n in counts.items():
        table.add_row(kind, f"{n:,}", f"{stored.get(kind, 0):,}")
    out.print(table)
    out.print(f"scanned {result.rows + result.skipped:,} chat rows: {result.rows:,} read now ({result.messages:,} "
              f"messages, {result.total:,} findings), {result.skipped:,} unchanged since an earlier scan "
              f"({result.seconds:.1f}s); see the view pii and the table pii_findings", highlight=False)
