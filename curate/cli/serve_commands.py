"""Commands that serve HTTP on this machine: ``curate sandbox`` and ``curate listen``."""

from __future__ import annotations

import logging
import queue
import sys
from contextlib import nullcontext
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Annotated

import typer

from curate.cli._shared import DbOption, LakeOption, lake_uri, lock_timeout, out, user_errors

__all__ = ["listen_command", "sandbox_command"]


def listen_command(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to bind (put a TLS proxy in front of a public one).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8000,
    webhook_id: Annotated[
        list[str] | None,
        typer.Option(
            help="A webhook id deliveries must carry; repeat for several "
            "[env: CURATE_WEBHOOK_IDS, comma-separated, which keeps them out of `ps`].",
            show_default=False,
        ),
    ] = None,
    path_token: Annotated[
        str | None,
        typer.Option(help="Also require POST /webhook/TOKEN (else $CURATE_PATH_TOKEN).", show_default=False),
    ] = None,
    verify_by_fetch: Annotated[
        bool, typer.Option(help="Store the API's copy of each generation, fetched with INFERENCE_API_KEY.")
    ] = False,
    rpm: Annotated[int, typer.Option(help="API calls per minute for --verify-by-fetch.")] = 250,
    health_details: Annotated[
        bool, typer.Option(help="GET /healthz also shows the store's path, the process id and the last error.")
    ] = False,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate, to serve HTTPS.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key.")] = None,
    lake: LakeOption = None,
) -> None:
    """Receive inference.net webhooks; each delivery is on disk (the store's spool) before it is acknowledged.

    Register the printed URL in inference.net's dashboard and pass its webhook id; deliveries
    carrying any other id are answered 401. GET /healthz reports readiness, counters and what
    waits (no paths or process details without --health-details). One JSON line per delivery goes
    to stderr.
    """
    from pydantic import ValidationError

    from curate.config import Settings
    from curate.lake.table import LakePusher
    from curate.listen import Listener, ListenerConfig, run_forever
    from curate.store import Store

    ids = [*(webhook_id or []), *_env_ids()]
    if not ids:
        typer.echo("error: give at least one --webhook-id (or CURATE_WEBHOOK_IDS): without one, "
                   "every delivery would be refused", err=True)
        raise typer.Exit(2)
    with user_errors():
        settings = Settings.from_env(db=db)
        try:
            config = ListenerConfig(webhook_ids=tuple(ids), path_token=path_token or settings.path_token,
                                    verify_by_fetch=verify_by_fetch, rpm=rpm, health_details=health_details)
        except ValidationError as exc:
            typer.echo(f"error: {exc.errors()[0]['msg']}", err=True)
            raise typer.Exit(2) from None
        store = Store(settings.db, lock_timeout=lock_timeout())
        listener = Listener(store, config, settings=settings)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # The access log's lines are written by a thread of their own: a write to stderr per delivery
    # on the event loop cost ~15 % of the deliveries per second (docs/benchmarks.md).
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = QueueListener(lines, handler)
    access = logging.getLogger("curate.listen")
    access.addHandler(QueueHandler(lines))
    access.setLevel(logging.INFO)
    access.propagate = False
    writer.start()
    tls = {"ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile)} if ssl_certfile else {}
    uri = lake_uri(lake)
    try:
        with user_errors(), LakePusher(store, uri) if uri else nullcontext():
            run_forever(listener, host=host, port=port, announce=lambda line: out.print(line, highlight=False),
                        **tls)
    finally:
        writer.stop()


def _env_ids() -> list[str]:
    from curate.config import Settings

    return list(Settings.from_env().webhook_ids)


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

    with user_errors():
        run_forever(
            SandboxConfig(
                port=port, api_key=api_key, queue_delay=queue_delay, run_delay=run_delay,
                failure_rate=failure_rate, rpm_limit=rpm, webhook_url=webhook_url,
            ),
            announce=lambda line: out.print(line, highlight=False),
        )
