"""``curate score``: heuristic signals of each chat row's answer, no API (see ``curate.signals``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, QueriesOption, open_store, out, user_errors

__all__ = ["score_command"]

_TOP_LANGUAGES = 5


def score_command(
    db: DbOption = None,
    queries: QueriesOption = None,
    full: Annotated[bool, typer.Option("--full", help="Score every chat row again, not only the rows not yet scored.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as one JSON object.")] = False,
) -> None:
    """Measure refusal, repetition, truncation, empty and short answers, language and length of each chat answer.

    Scores only the chat rows not scored as they are now (new rows, changed rows; every row once
    the signals' definitions change) and records them in the table signal_rows; the view signals
    lists them, its header defining each signal. The stored bodies are never modified.
    """
    from curate import signals

    with user_errors():
        store = open_store(db, queries)
        result = signals.score(store, full=full)
        (stored,) = store.arrow(
            "select count(*) as rows, count(*) filter (refusal) as refusals, count(*) filter (truncated) as truncated, "
            "count(*) filter (empty) as empty, count(*) filter (short) as short from signals").to_pylist()
        top = store.arrow(f"select language, count(*) as n from signals where language is not null "
                          f"group by language order by n desc, language limit {_TOP_LANGUAGES}").to_pylist()
    now = {"rows": result.rows, "refusals": result.refusals, "truncated": result.truncated,
           "empty": result.empty, "short": result.short}
    now_languages = dict(list(result.languages.items())[:_TOP_LANGUAGES])
    store_languages = {row["language"]: row["n"] for row in top}
    if as_json:
        typer.echo(json.dumps({**now, "skipped": result.skipped, "languages": now_languages,
                               "in_store": {**stored, "languages": store_languages},
                               "seconds": round(result.seconds, 3)}))
        return
    table = Table("signal", "scored now", "in the store")
    for name, n in now.items():
        table.add_row(name, f"{n:,}", f"{stored[name]:,}")
    out.print(table)

    def languages(counts: dict[str, int]) -> str:
        return ", ".join(f"{code} {n:,}" for code, n in counts.items()) or "none"

    out.print(f"languages, top {_TOP_LANGUAGES}: now {languages(now_languages)}; in the store "
              f"{languages(store_languages)}", highlight=False)
    out.print(f"scored {result.rows:,} chat rows in {result.seconds:.1f}s, {result.skipped:,} unchanged since "
              "an earlier score; see the view signals", highlight=False)
