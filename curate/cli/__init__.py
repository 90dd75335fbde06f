"""The ``curate`` command: a thin typer shell over functions a notebook can call too.

Each command parses its options, calls one library function and prints the result. Commands
live in modules by group (store, API, serving); importing them here registers them on ``app``.
"""

from __future__ import annotations

from curate import __version__
from curate.cli import api_commands, serve_commands, store_commands
from curate.cli._shared import app, out

__all__ = ["app", "main"]

_COMMAND_GROUPS = (api_commands, serve_commands, store_commands)


@app.command("version")
def version_command() -> None:
    """Print curate's version."""
    out.print(__version__)


def main() -> None:
    """The console script's entry point."""
    app()
