"""The ``curate`` command: a thin typer shell over functions a notebook can call too.

Each command parses its options, calls one library function and prints the result. Errors a
user can fix (a missing file, a locked store, a missing API key, bad SQL) end in one sentence on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from curate import __version__
from curate.config import MissingApiKey, Settings
from curate.importer import import_files
from curate.store import Store, StoreLocked

__all__ = ["app", "main"]

app = typer.Typer(
    name="curate",
    help="Turn inference.net background generations into fine-tuning datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="The DuckDB store [env: CURATE_DB; default: ./curate.duckdb].",
        show_default=False,
    ),
]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one line on stderr and an exit code."""
    try:
        yield
    except MissingApiKey as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except (StoreLocked, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except duckdb.Error as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _store(db: Path | None) -> Store:
    return Store(Settings.from_env(db=db).db)


@app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help="JSONL files, plain or .gz.", show_default=False)],
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Import JSONL files of generations, webhook deliveries or dataset rows into the store.

    Each line may be a GenerationForClient, a webhook envelope, a {request, response} or
    {messages} dataset row, or an OpenAI batch output line. Lines that are none of these are kept
    in the rejects table with their line number; the import goes on.
    """
    with _user_errors():
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)}: no such file")
        store = _store(db)
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
    if as_json:
        out.print_json(summary.model_dump_json())
        return
    table = Table(title=f"imported {len(summary.files)} file(s) into {store.path}", show_header=False)
    for name in ("lines", "stored", "updated", "duplicate", "rejected", "skipped"):
        table.add_row(name, f"{getattr(summary, name):,}")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    out.print(table)
    if summary.rejected:
        out.print(
            f"{summary.rejected:,} line(s) refused: see them with "
            "[bold]curate sql \"select line, reason from rejects\"[/]"
        )


@app.command("sql")
def sql_command(
    query: Annotated[str, typer.Argument(help="A SQL query, run read-only.", show_default=False)],
    db: DbOption = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
) -> None:
    """Run a read-only SQL query against the store and print the result."""
    with _user_errors():
        result = _store(db).query(query)
    _print_table(result, fmt)


def _print_table(result: pa.Table, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.csv:
        pa_csv.write_csv(result, sys.stdout.buffer)
        return
    rows = result.to_pylist()
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, default=str, indent=None) + "\n")
        return
    table = Table(*result.column_names)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(table)
    out.print(f"{result.num_rows:,} row(s)", style="dim")


@app.command("version")
def version_command() -> None:
    """Print curate's version."""
    out.print(__version__)


def main() -> None:
    """The console script's entry point."""
    app()
