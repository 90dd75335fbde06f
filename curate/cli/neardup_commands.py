"""``curate dedup near``: cluster near-identical chat rows into the ``near_duplicate_rows`` table."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from curate.cli._shared import DbOption, QueriesOption, open_store, out, user_errors

__all__ = ["dedup_app"]

dedup_app = typer.Typer(
    help="Find duplicates beyond exact copies (exact ones are the duplicates view).",
    rich_markup_mode=None,
    no_args_is_help=True,
)


class CompareOn(str, Enum):
    prompt = "prompt"
    conversation = "conversation"


@dedup_app.command("near")
def near_command(
    threshold: Annotated[
        float, typer.Option(help="Estimated Jaccard similarity (0 to 1] of character 5-grams that joins two rows.")
    ] = 0.85,
    on: Annotated[
        CompareOn, typer.Option(help="Compare the request messages (prompt) or every message (conversation).")
    ] = CompareOn.prompt,
    full: Annotated[bool, typer.Option("--full", help="Compute again even if no chat row changed since the last run.")] = False,
    db: DbOption = None,
    queries: QueriesOption = None,
) -> None:
    """Cluster near-identical chat rows (MinHash + LSH); replace the clusters in near_duplicate_rows.

    Texts are compared lowercased, without punctuation, whitespace collapsed. Each cluster is
    named by its longest text (then the first finished, then the smallest id); see them with
    curate sql "select * from near_duplicates". A run with the settings of the last one does
    nothing when no chat row is new, changed or gone since; otherwise every row is compared again.
    """
    from curate.neardup import near_duplicates

    if not 0 < threshold <= 1:
        typer.echo(f"error: --threshold must be in (0, 1], not {threshold:g}", err=True)
        raise typer.Exit(2)
    with user_errors():
        result = near_duplicates(open_store(db, queries), threshold=threshold, on=on.value, full=full)
    if result.up_to_date:
        out.print(
            f"{result.rows:,} chat rows compared on {result.on} at threshold {result.threshold:g}, none changed "
            f"since: {result.clusters:,} clusters holding {result.rows_in_clusters:,} rows (use --full to compute again)",
            highlight=False,
        )
        return
    out.print(
        f"{result.rows:,} chat rows compared on {result.on} at threshold {result.threshold:g}: "
        f"{result.clusters:,} clusters holding {result.rows_in_clusters:,} rows ({result.seconds:.1f}s)",
        highlight=False,
    )
