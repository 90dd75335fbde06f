"""Commands that serve HTTP on this machine: ``curate sandbox`` and ``curate listen``."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.cli._shared import out

__all__ = ["sandbox_command"]


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
