"""What every command shares: the typer app, the consoles, ``--db``, and how errors end.

Errors a user can fix (a missing file, a locked store, a store to migrate, a missing API key, bad
SQL) end in one sentence on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, overload

import click
import typer
from rich.console import Console

from curate.errors import CurateError, from_environment

# Every command imports this module, `curate --help` and `curate version` too: the stages and the
# libraries they need (duckdb, pyarrow, pydantic, httpx) are imported by the functions that use them.
if TYPE_CHECKING:
    import pyarrow as pa

    from curate.config import Settings
    from curate.store import ReadableStore, Store

__all__ = [
    "DbOption", "LakeOption", "OutputFormat", "QueriesOption", "app", "err", "lake_uri", "lock_timeout", "open_api",
    "open_store", "out", "print_table", "user_errors",
]

app = typer.Typer(
    name="curate",
    help="Turn inference.net background generations into fine-tuning datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would swallow the [env: ...] notes in option help.
    rich_markup_mode=None,
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


LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake",
        help="An Iceberg lake: a folder, or postgresql://USER@HOST/DB?warehouse=DIR [env: CURATE_LAKE].",
        show_default=False,
    ),
]


def lake_uri(lake: str | None, db: Path | None = None) -> str | None:
    """The lake to use: ``--lake``, else ``$CURATE_LAKE`` unless ``--db`` names a store to read instead."""
    if lake:
        return lake
    if db is not None:
        return None
    from curate.config import Settings

    return Settings.from_env().lake


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


_opened: list[ReadableStore] = []  # the stores open_store gave out, whose broken views are yet to be told


def _warn_view_errors() -> None:
    """One warning per view file that did not create, for each store read since the last call.

    A store knows its broken views only once it has read (its views are made per connection),
    so this runs as a command's work ends, before its output or its error.
    """
    while _opened:
        for error in _opened.pop(0).view_errors:
            typer.echo(f"warning: view {error.view} not created: {error}", err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one line on stderr and an exit code.

    Broken view files of the stores opened inside (``open_store``) are warned about first.
    """
    try:
        try:
            yield
        finally:
            _warn_view_errors()
    except CurateError as exc:  # each says its own exit code (curate.errors)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # typer's own ways out: an exit code a command chose, a bad option
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if str(exc) == "Query interrupted":  # Ctrl-C, as DuckDB reports it from inside a query
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        refused = from_environment(exc)
        if refused is not None:
            typer.echo(f"error: {refused}", err=True)
            raise typer.Exit(refused.exit_code) from None
        # Not an error a user can act on, so not one line: the traceback is what a fix needs.
        typer.echo("curate stopped on an error it did not expect, a bug in curate or in a library it uses; "
                   "the traceback follows. Please report it with the command you ran.", err=True)
        raise


QueriesOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--queries",
        help="A folder of view files (NAME.sql) adding to or replacing the shipped views; repeatable "
        "[env: CURATE_QUERIES, folders separated by ':'].",
        show_default=False,
    ),
]


@overload
def open_store(db: Path | None, queries: list[Path] | None = None, lake: None = None) -> Store: ...


@overload
def open_store(db: Path | None, queries: list[Path] | None, lake: str | None) -> ReadableStore: ...


def open_store(db: Path | None, queries: list[Path] | None = None, lake: str | None = None) -> ReadableStore:
    """The store (or with ``lake``, the lake read as one, which only reads: a ``ReadableStore``).

    Any view file that fails to create when the store is read is reported on stderr as the
    enclosing ``user_errors`` block ends.
    """
    store: ReadableStore
    if not lake:  # without importing the lake's modules, which a store file does not need
        from curate.store import store_at

        store = store_at(db, queries=list(queries) if queries else None, lock_timeout=lock_timeout())
    else:
        from curate.lake import reader as lake_reader

        store = lake_reader.open_store(db, lake=lake, queries=list(queries) if queries else None, lock_timeout=lock_timeout())
    _opened.append(store)
    return store


def open_api(db: Path | None) -> tuple[Settings, Store]:
    """Settings with an API key (or MissingApiKey, exit 2) and the store, for API commands."""
    from curate.config import Settings
    from curate.store import Store

    settings = Settings.from_env(db=db)
    settings.require_api_key()
    return settings, Store(settings.db, lock_timeout=lock_timeout())


def lock_timeout() -> float:
    """How long a command's reader waits for another process to let go of the store."""
    from curate.config import Settings

    return Settings.from_env().lock_timeout


def print_table(result: pa.Table, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.csv:
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(result, sys.stdout.buffer)
        return
    rows = result.to_pylist()
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, default=str, indent=None) + "\n")
        return
    from rich.table import Table

    table = Table(*result.column_names)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(table)
    out.print(f"{result.num_rows:,} row(s)", style="dim")
