"""``curate decontaminate EVAL_FILE...``: flag the chat rows that share word n-grams with eval items."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, QueriesOption, open_store, out, user_errors

__all__ = ["decontaminate_command"]

# curate.decontaminate.DEFAULT_NGRAM, for --help without importing duckdb and pyarrow
# (tests/test_imports.py checks that the two agree).
DEFAULT_NGRAM = 13


def decontaminate_command(
    eval_files: Annotated[
        list[Path],
        typer.Argument(help="Eval sets: JSONL or Parquet files, or Hugging Face dataset folders.", show_default=False),
    ],
    ngram: Annotated[int, typer.Option("--ngram", min=1, help="Words per n-gram.")] = DEFAULT_NGRAM,
    min_shared: Annotated[
        int, typer.Option("--min-shared", min=1, help="Distinct n-grams a chat row must share with an item.")
    ] = 1,
    full: Annotated[bool, typer.Option("--full", help="Check every chat row again, not only the rows not yet checked.")] = False,
    db: DbOption = None,
    queries: QueriesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Flag chat rows that share word n-grams with eval items (the contaminated view lists them).

    A set is checked only against the chat rows it has not checked as they are now (new or
    changed rows); when its items, --ngram or --min-shared change, every row is checked again and
    the set's rows replaced. The generations are never modified.
    """
    from curate.decontaminate import decontaminate

    with user_errors():
        try:
            result = decontaminate(open_store(db, queries), eval_files, ngram=ngram, min_shared=min_shared, full=full)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({
            "sets": [
                {"eval_set": name, "items": items, "contaminated_rows": result.contaminated[name],
                 "pairs": result.pairs[name]}
                for name, items in result.items.items()
            ],
            "rows_scanned": result.rows_scanned, "ngram": result.ngram, "min_shared": result.min_shared,
            "seconds": round(result.seconds, 3),
        }))
        return
    table = Table("eval set", "items", "contaminated rows", "pairs")
    for name, items in result.items.items():
        table.add_row(name, f"{items:,}", f"{result.contaminated[name]:,}", f"{result.pairs[name]:,}")
    out.print(table)
    out.print(
        f"{result.rows_scanned:,} chat rows scanned for {result.ngram}-grams in {result.seconds:.1f}s "
        "(rows checked before and unchanged are not read again); "
        'curate sql "select * from contaminated" lists them',
        style="dim", highlight=False,
    )
