"""Commands over the store itself: ``curate import``, ``curate sql`` and ``curate migrate``."""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curate.cli._shared import (
    DbOption,
    LakeOption,
    OutputFormat,
    QueriesOption,
    err,
    lake_uri,
    lock_timeout,
    open_store,
    out,
    print_table,
    user_errors,
)
from curate.errors import MissingFile

__all__ = ["import_command", "migrate_command", "sql_command"]


def import_command(
    paths: Annotated[list[Path], typer.Argument(help="JSONL files, plain or .gz.", show_default=False)],
    db: DbOption = None,
    lake: LakeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Import JSONL files of generations, webhook deliveries or dataset rows into the store.

    Each line may be a GenerationForClient, a webhook envelope, a {request, response} or
    {messages} dataset row, or an OpenAI batch output line. Lines that are none of these are kept
    in the rejects table with their line number; the import goes on.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from curate.importer import import_files
    from curate.lake.table import Lake, push

    with user_errors():
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise MissingFile(f"{', '.join(missing)}: no such file")
        store = open_store(db)
        uri = lake_uri(lake)
        with Lake(uri) if uri else nullcontext() as target:
            if target is not None:
                target.table()  # before the import, so an unreachable catalog costs nothing
            total = sum(p.stat().st_size for p in paths)
            with Progress(
                TextColumn("importing"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
                disable=as_json or not err.is_terminal,
            ) as progress:
                task = progress.add_task("import", total=total)
                summary = import_files(
                    store, list(paths), progress=lambda done: progress.update(task, completed=done)
                )
            pushed = push(store, target) if target is not None else None
    if as_json:
        body = summary.model_dump(mode="json")
        if pushed is not None:
            body["lake"] = dataclasses.asdict(pushed)
        out.print_json(json.dumps(body))
        return
    table = Table(title=f"imported {len(summary.files)} file(s) into {store.path}", show_header=False)
    for name in ("lines", "stored", "updated", "duplicate", "rejected", "skipped"):
        table.add_row(name, f"{getattr(summary, name):,}")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    out.print(table)
    if pushed is not None:
        out.print(f"pushed {pushed.rows:,} generation(s) to the lake in {pushed.batches:,} commit(s)")
    if summary.rejected:
        out.print(
            f"{summary.rejected:,} line(s) refused: see them with "
            "[bold]curate sql \"select line, reason from rejects\"[/]"
        )


def sql_command(
    query: Annotated[str, typer.Argument(help="A SQL query, run read-only.", show_default=False)],
    db: DbOption = None,
    lake: LakeOption = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
    queries: QueriesOption = None,
) -> None:
    """Run a read-only SQL query against the store (and its views: curate views) and print the result."""
    with user_errors():
        result = open_store(db, queries, lake_uri(lake, db)).arrow(query)
    print_table(result, fmt)


def migrate_command(db: DbOption = None) -> None:
    """Bring the store's schema up to date (creating the store if there is none).

    Readers refuse a store an older curate wrote until it is migrated; writers (import, harvest,
    listen, submit) migrate it themselves. Waits for the file as long as another process
    writes it, saying every few seconds who holds it.
    """
    from curate import migrations
    from curate.config import Settings
    from curate.store import Store

    with user_errors():
        path = Settings.from_env(db=db).db
        if not path.exists():
            Store(path, lock_timeout=lock_timeout())  # a new file is made with every migration
            applied = [m.__name__ for m in migrations.MIGRATIONS]
        else:
            applied = Store(path, lock_timeout=lock_timeout()).migrate()
    if not applied:
        typer.echo(f"{path} is up to date")
        return
    typer.echo(f"applied {len(applied)} migration(s) to {path}:")
    for name in applied:
        typer.echo(f"  {name}")
