"""Commands over the views: ``curate views``, ``curate views show NAME``, ``curate snapshot DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, LakeOption, QueriesOption, lake_uri, open_store, out, user_errors
from curate.errors import NoSuchName

__all__ = ["snapshot_command", "views_app"]

views_app = typer.Typer(
    help="List the views (what one row is, how many rows), or show one's SQL.",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,
)


@views_app.callback()
def views_command(
    ctx: typer.Context,
    db: DbOption = None,
    lake: LakeOption = None,
    queries: QueriesOption = None,
    count: Annotated[bool, typer.Option(help="Count each view's rows (a full query each).")] = True,
) -> None:
    """List the views: name, what one row is, and how many rows."""
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        infos = open_store(db, queries, lake_uri(lake, db)).views(count=count)
    table = Table("view", "one row is", "rows")
    for info in infos:
        table.add_row(info.name, info.description, "" if info.rows is None else f"{info.rows:,}")
    out.print(table)
    out.print("curate views show NAME prints a view's SQL; curate sql \"select * from NAME\" runs it", style="dim")


@views_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="The view's name.", show_default=False)],
    db: DbOption = None,
    lake: LakeOption = None,
    queries: QueriesOption = None,
) -> None:
    """Print a view's file: its header (what one row is, its columns) and its query."""
    with user_errors():
        files = {v.name: v for v in open_store(db, queries, lake_uri(lake, db)).view_files()}
        if name not in files:
            raise NoSuchName(f"{name}: no such view (there are: {', '.join(sorted(files))})")
    typer.echo(files[name].sql.rstrip())


def snapshot_command(
    folder: Annotated[Path, typer.Argument(help="Where to write NAME.parquet files.", show_default=False)],
    db: DbOption = None,
    lake: LakeOption = None,
    queries: QueriesOption = None,
    view: Annotated[list[str] | None, typer.Option(help="Only this view (repeatable).", show_default=False)] = None,
) -> None:
    """Write the views as Parquet files, for long notebook sessions that need no lock at all."""
    with user_errors():
        written = open_store(db, queries, lake_uri(lake, db)).snapshot(folder, view or None)
    for path in written:
        out.print(f"wrote {path}", highlight=False)
