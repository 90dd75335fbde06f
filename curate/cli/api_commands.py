"""Commands that talk to inference.net: ``curate submit``, ``curate harvest``, ``curate fetch``."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn

from curate.cli._shared import DbOption, LakeOption, err, lake_uri, open_api, out, user_errors
from curate.client import Fetched, InferenceClient
from curate.config import Settings
from curate.harvest import HarvestSummary, harvest
from curate.lake import LakePusher
from curate.records import WriteCounts
from curate.submit import submit_file

__all__ = ["fetch_command", "harvest_command", "submit_command"]


def fetch_command(
    generation_ids: Annotated[list[str], typer.Argument(help="Generation ids.", show_default=False)],
    db: DbOption = None,
) -> None:
    """Fetch generations by id from inference.net once and store them (needs INFERENCE_API_KEY)."""
    with user_errors():
        settings, store = open_api(db)
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
    with user_errors():
        settings, store = open_api(db)
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


def harvest_command(
    db: DbOption = None,
    ids: Annotated[Path | None, typer.Option(help="A file of generation ids, one per line, to add.")] = None,
    rpm: Annotated[int, typer.Option(help="Requests per minute the account allows.")] = 250,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    once: Annotated[bool, typer.Option(help="One pass over what is due, then stop.")] = False,
    lake: LakeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fetch every generation the ledger waits for, until all are done (groups with one GET each)."""
    with user_errors():
        settings, store = open_api(db)
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

            uri = lake_uri(lake)
            with LakePusher(store, uri) if uri else nullcontext() as pusher:
                summary = harvest(store, settings, ids_file=ids, rpm=rpm, concurrency=concurrency,
                                  once=once, progress=show)
    if as_json:
        body = summary.model_dump(mode="json")
        if pusher is not None:
            body["lake"] = {"rows": pusher.rows, "batches": pusher.batches}
        out.print_json(json.dumps(body))
        return
    if pusher is not None:
        out.print(f"pushed {pusher.rows:,} generation(s) to the lake in {pusher.batches:,} commit(s)")
    out.print(
        f"stored {summary.stored:,} (updated {summary.updated:,}, duplicate {summary.duplicate:,}); "
        f"{summary.succeeded:,} Success, {summary.failed:,} Failed; {summary.pending:,} pending; "
        f"{summary.calls:,} API calls in {summary.seconds:.1f}s"
    )


async def _fetch_all(settings: Settings, generation_ids: list[str]) -> list[Fetched]:
    async with InferenceClient(settings) as client:
        return [await client.get_generation(generation_id) for generation_id in generation_ids]
