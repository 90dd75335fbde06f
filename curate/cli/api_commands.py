"""Commands that talk to inference.net: ``curate submit`` (and ``curate submissions``, what became of
its lines), ``curate harvest``, ``curate fetch``."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, LakeOption, err, lake_uri, open_api, open_store, out, user_errors

if TYPE_CHECKING:
    from curate.client import Fetched
    from curate.config import Settings
    from curate.harvester import HarvestSummary
    from curate.submit import SubmitSummary

__all__ = ["fetch_command", "harvest_command", "judge_command", "report_submit", "sample_command",
           "submissions_command", "submit_command"]

# curate.submissions.STATES, for --help without importing duckdb and pyarrow (tests/test_imports.py
# checks that the two agree).
SUBMISSION_STATES = ("claimed", "sending", "submitted", "uncertain", "failed")


def fetch_command(
    generation_ids: Annotated[list[str], typer.Argument(help="Generation ids.", show_default=False)],
    db: DbOption = None,
) -> None:
    """Fetch generations by id from inference.net once and store them (needs INFERENCE_API_KEY)."""
    import asyncio

    from curate.records import WriteCounts

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
    concurrency: Annotated[int, typer.Option(help="POSTs in flight at once (within --rpm).")] = 4,
    max_failures: Annotated[
        int, typer.Option(help="Stop after this many POSTs in a row fail (5xx, timeouts): the API is down.")
    ] = 5,
    resend_uncertain: Annotated[
        bool, typer.Option(help="Also send lines whose earlier answer never came (may pay twice).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Submit chat requests to inference.net's background API; no line is ever sent twice.

    Exit status: 0 every line is submitted (or being sent by another run that still runs); 1 the
    run stopped before the end (the API looks down, or refused the key); 3 the run ended but some
    lines are uncertain or failed (`curate submissions` lists them) or reuse a custom_id sent
    before with another request; 2 the file or an option is wrong (nothing was sent).
    """
    from curate.submit import SubmitOptions, submit_file

    with user_errors():
        settings, store = open_api(db)
        options = SubmitOptions(group_size=group_size, webhook_id=webhook_id, rpm=rpm, concurrency=concurrency,
                                max_failures=max_failures, resend_uncertain=resend_uncertain)
        summary = submit_file(store, settings, path, options)
    report_submit(summary, store.path, as_json=as_json)


def report_submit(summary: SubmitSummary, db: Path, *, as_json: bool = False, prefix: str = "",
                  noun: str = "lines") -> None:
    """Print what a submit did (``curate submit``, ``sample``, ``judge``) and exit with its status."""
    if as_json:
        out.print_json(json.dumps({**summary.model_dump(), "exit_code": summary.exit_code}))
    else:
        parts = [f"{summary.submitted:,} submitted in {summary.posts:,} POST(s)",
                 f"{summary.already_submitted:,} already submitted", f"{summary.uncertain:,} uncertain",
                 f"{summary.failed:,} failed"]
        if summary.elsewhere:
            parts.append(f"{summary.elsewhere:,} being sent by another run")
        if summary.not_sent:
            parts.append(f"{summary.not_sent:,} not sent")
        if summary.changed:
            parts.append(f"{summary.changed:,} not sent: custom_id already used")
        out.print(prefix + "; ".join(parts) + f" (of {summary.lines:,} {noun})", soft_wrap=True)
    if summary.stopped:
        typer.echo(f"error: stopped: {summary.stopped}", err=True)
    if summary.changed:
        shown = ", ".join(str(n) for n in summary.changed_lines)
        typer.echo(f"{summary.changed:,} {noun} reuse a custom_id that was sent before with another request, so "
                   f"they were not sent ({noun} {shown}{', ...' if summary.changed > 20 else ''}): give them a new "
                   f"custom_id to send them", err=True)
    if summary.uncertain or summary.failed:
        typer.echo(f"{summary.uncertain + summary.failed:,} {noun} need attention: "
                   f"curate submissions --db {db} --state uncertain --state failed", err=True)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


GroupSizeOption = Annotated[int, typer.Option(help="Requests per POST (1 to 50; 1 submits singly).")]
WebhookOption = Annotated[str | None, typer.Option(help="Set metadata.webhook_id on every request.")]
RpmOption = Annotated[int, typer.Option(help="Requests per minute the account allows.")]
WhereOption = Annotated[str | None, typer.Option(help="Only SOURCE rows matching this SQL condition.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
RetryOption = Annotated[bool, typer.Option(
    "--retry-failed", help="Also ask again, as a new attempt (paid again), for each request whose every attempt "
                           "came back Failed (judge: or without a readable score).")]


def sample_command(
    source: Annotated[str, typer.Argument(help="A view name or a SELECT with id and messages (and tools).",
                                          show_default=False)],
    model: Annotated[str, typer.Option(help="The teacher model that answers.", show_default=False)],
    n: Annotated[int, typer.Option("--n", help="Answers per prompt (a larger N later sends only the new ones).")] = 1,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: the API's).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="max_tokens of each answer (default: the API's).")] = None,
    where: WhereOption = None,
    retry_failed: RetryOption = False,
    db: DbOption = None,
    group_size: GroupSizeOption = 50,
    webhook_id: WebhookOption = None,
    rpm: RpmOption = 250,
    as_json: JsonOption = False,
) -> None:
    """Ask a teacher model to answer each row's prompt (its messages before the answer) N times; never twice.

    The answers come back through `curate harvest` or `curate listen`; the `samples` view joins
    each to the row whose prompt it answers. Exit status as `curate submit`'s.
    """
    from curate.sampling import SampleOptions, sample
    from curate.submit import SubmitOptions

    with user_errors():
        settings, store = open_api(db)
        options = SampleOptions(model=model, n=n, temperature=temperature, max_tokens=max_tokens, where=where,
                                submit=SubmitOptions(group_size=group_size, webhook_id=webhook_id, rpm=rpm))
        summary = sample(store, settings, source, options, retry_failed=retry_failed)
    retried = f" ({summary.retried:,} failed before, asked again)" if summary.retried else ""
    report_submit(summary.submit, store.path, as_json=as_json, noun="requests",
                  prefix=f"{summary.prompts:,} prompts x {n}{retried}: ")


def judge_command(
    source: Annotated[str, typer.Argument(help="A view name or a SELECT with id and messages (and tools).",
                                          show_default=False)],
    rubric: Annotated[str, typer.Option(help="A rubric's Markdown file, or a shipped one: helpfulness, correctness.",
                                        show_default=False)],
    model: Annotated[str, typer.Option(help="The judge model.", show_default=False)],
    where: WhereOption = None,
    response_format: Annotated[bool, typer.Option(
        help="Ask for the JSON answer by response_format (a JSON schema); --no-response-format for a model "
             "without it.")] = True,
    retry_failed: RetryOption = False,
    db: DbOption = None,
    group_size: GroupSizeOption = 50,
    webhook_id: WebhookOption = None,
    rpm: RpmOption = 250,
    as_json: JsonOption = False,
) -> None:
    """Ask a judge model to score each row's answer by a rubric; each row once per rubric and judge.

    When the judge's generations are stored (`curate harvest`, `curate listen`), the `judgments`
    view holds each score and rationale, or why it could not be read. Exit status as `curate submit`'s.
    """
    from curate.judging import JudgeOptions, judge
    from curate.judging import rubric as load_rubric
    from curate.submit import SubmitOptions

    with user_errors():
        settings, store = open_api(db)
        options = JudgeOptions(model=model, rubric=load_rubric(rubric), where=where, response_format=response_format,
                               submit=SubmitOptions(group_size=group_size, webhook_id=webhook_id, rpm=rpm))
        summary = judge(store, settings, source, options, retry_failed=retry_failed)
    retried = f", {summary.retried:,} failed or unreadable before, asked again" if summary.retried else ""
    report_submit(summary.submit, store.path, as_json=as_json, noun="requests",
                  prefix=f"{summary.rows:,} rows, rubric {summary.rubric} ({summary.rubric_hash}){retried}: ")


def submissions_command(
    db: DbOption = None,
    state: Annotated[
        list[str] | None,
        typer.Option(help=f"Only lines in this state ({', '.join(SUBMISSION_STATES)}); repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per line.")] = False,
) -> None:
    """List submitted request lines by state, with the file and line they came from and why."""
    from curate import submissions
    from curate.store import FOREVER

    with user_errors():
        store = open_store(db)
        with store.read(wait=FOREVER) as con:
            rows = submissions.listing(con, state or ())
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, default=str, ensure_ascii=False))
        return
    table = Table("state", "file", "line", "id", "error / holder", box=None)
    for row in rows:
        why = row["error"] or ""
        if row["state"] == "sending":
            holder = {True: "running", False: "ended: may have been sent", None: "on another host"}[row["running"]]
            why = f"{row['claimed_by']} ({holder})"
        table.add_row(row["state"], str(row["file"]), str(row["line"]),
                      row["generation_id"] or row["group_id"] or "", why)
    out.print(table)
    out.print(f"{len(rows):,} line(s)")


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
    from rich.progress import BarColumn, Progress, TextColumn

    from curate.harvester import harvest
    from curate.lake.table import LakePusher

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
    from curate.client import InferenceClient

    async with InferenceClient(settings) as client:
        return [await client.get_generation(generation_id) for generation_id in generation_ids]
