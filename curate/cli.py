"""The ``curate`` command: a thin typer shell over functions a notebook can call too.

Each command parses its options, calls one library function and prints the result. Errors a
user can fix (a missing file, a locked store, a missing API key, bad SQL) end in one sentence on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import duckdb
import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from curate import __version__
from curate.client import ApiError, ApiUnavailable, Fetched, InferenceClient
from curate.config import MissingApiKey, Settings
from curate.harvest import HarvestSummary, harvest
from curate.importer import import_files
from curate.records import WriteCounts
from curate.store import Store, StoreLocked
from curate.submit import InvalidRequests, submit_file

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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (StoreLocked, FileNotFoundError, duckdb.Error, httpx.HTTPError, ApiError,
            ApiUnavailable, InvalidRequests) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _store(db: Path | None) -> Store:
    return Store(Settings.from_env(db=db).db, lock_timeout=_lock_timeout())


def _api(db: Path | None) -> tuple[Settings, Store]:
    """Settings with an API key (or MissingApiKey, exit 2) and the store, for API commands."""
    settings = Settings.from_env(db=db)
    settings.require_api_key()
    return settings, Store(settings.db, lock_timeout=_lock_timeout())


def _lock_timeout() -> float:
    # How long a command waits for another process to release the store.
    return float(os.environ.get("CURATE_LOCK_TIMEOUT") or 30)


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


@app.command("fetch")
def fetch_command(
    generation_ids: Annotated[list[str], typer.Argument(help="Generation ids.", show_default=False)],
    db: DbOption = None,
) -> None:
    """Fetch generations by id from inference.net once and store them (needs INFERENCE_API_KEY)."""
    with _user_errors():
        settings, store = _api(db)
        fetched = asyncio.run(_fetch_all(settings, generation_ids))
        bodies = [f.body.decode("utf-8", "backslashreplace") for f in fetched if f.visible]
        missing = [i for i, f in zip(generation_ids, fetched, strict=True) if not f.visible]
        counts = store.ingest_texts(bodies, source="poll") if bodies else WriteCounts()
    out.print(
        f"fetched {len(bodies)}: stored {counts.stored}, updated {counts.updated}, "
        f"duplicate {counts.duplicate}, rejected {counts.rejected}"
    )
    for generation_id in missing:
        out.print(f"{generation_id}: not visible yet (404)", style="yellow")


@app.command("submit")
def submit_command(
    path: Annotated[Path, typer.Argument(help="JSONL of OpenAI chat request bodies.", show_default=False)],
    db: DbOption = None,
    group_size: Annotated[int, typer.Option(help="Requests per POST (1 to 50; 1 submits singly).")] = 50,
    webhook_id: Annotated[str | None, typer.Option(help="Set metadata.webhook_id on every request.")] = None,
    rpm: Annotated[int, typer.Option(help="Requests per minute the account allows.")] = 250,
    resend_uncertain: Annotated[
        bool, typer.Option(help="Also send lines whose earlier answer never came (may pay twice).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Submit chat requests to inference.net's background API; a re-run sends nothing twice."""
    with _user_errors():
        settings, store = _api(db)
        summary = submit_file(
            store, settings, path, group_size=group_size, webhook_id=webhook_id, rpm=rpm,
            resend_uncertain=resend_uncertain,
        )
    if as_json:
        out.print_json(summary.model_dump_json())
    else:
        out.print(
            f"{summary.submitted:,} submitted in {summary.posts:,} POST(s); "
            f"{summary.already_submitted:,} already submitted; {summary.uncertain:,} uncertain; "
            f"{summary.failed:,} failed (of {summary.lines:,} lines)"
        )
    if summary.stopped:
        typer.echo(f"error: stopped: {summary.stopped}", err=True)
        raise typer.Exit(1)


@app.command("harvest")
def harvest_command(
    db: DbOption = None,
    ids: Annotated[Path | None, typer.Option(help="A file of generation ids, one per line, to add.")] = None,
    rpm: Annotated[int, typer.Option(help="Requests per minute the account allows.")] = 250,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    once: Annotated[bool, typer.Option(help="One pass over what is due, then stop.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fetch every generation the ledger waits for, until all are done (groups with one GET each)."""
    with _user_errors():
        settings, store = _api(db)
        with Progress(
            TextColumn("harvest"), BarColumn(),
            TextColumn("{task.fields[done]} stored · {task.fields[pending]} pending · "
                       "{task.fields[failed]} failed · {task.fields[rate]} calls/min"),
            console=err, transient=True, disable=as_json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("harvest", total=None, done=0, pending="?", failed=0, rate=0)
            started = time.monotonic()

            def show(s: HarvestSummary) -> None:
                rate = round(s.calls / max(time.monotonic() - started, 1e-6) * 60)
                bar.update(task, done=s.stored + s.updated, pending=s.pending, failed=s.failed,
                           rate=rate)

            summary = harvest(store, settings, ids_file=ids, rpm=rpm, concurrency=concurrency,
                              once=once, progress=show)
    if as_json:
        out.print_json(summary.model_dump_json())
        return
    out.print(
        f"stored {summary.stored:,} (updated {summary.updated:,}, duplicate {summary.duplicate:,}); "
        f"{summary.succeeded:,} Success, {summary.failed:,} Failed; {summary.pending:,} pending; "
        f"{summary.calls:,} API calls in {summary.seconds:.1f}s"
    )


async def _fetch_all(settings: Settings, generation_ids: list[str]) -> list[Fetched]:
    async with InferenceClient(settings) as client:
        return [await client.get_generation(generation_id) for generation_id in generation_ids]


@app.command("sandbox")
def sandbox_command(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8765,
    api_key: Annotated[str, typer.Option(help="The Bearer key it accepts.")] = "sandbox-key",
    queue_delay: Annotated[float, typer.Option(help="Mean seconds a generation stays Queued.")] = 0.5,
    run_delay: Annotated[float, typer.Option(help="Mean seconds it stays In Progress.")] = 1.5,
    failure_rate: Annotated[float, typer.Option(help="Share of generations that fail.")] = 0.05,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute before 429s.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where to deliver webhooks.")] = None,
) -> None:
    """Run a local fake of inference.net on 127.0.0.1, for demos and tests (no API key needed)."""
    from curate.sandbox import SandboxConfig, run_forever

    run_forever(
        SandboxConfig(
            port=port, api_key=api_key, queue_delay=queue_delay, run_delay=run_delay,
            failure_rate=failure_rate, rpm_limit=rpm, webhook_url=webhook_url,
        ),
        announce=lambda line: out.print(line, highlight=False),
    )


@app.command("version")
def version_command() -> None:
    """Print curate's version."""
    out.print(__version__)


def main() -> None:
    """The console script's entry point."""
    app()
