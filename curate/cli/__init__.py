"""The ``curate`` command: a thin typer shell over functions a notebook can call too.

Each command parses its options, calls one library function and prints the result. Commands
live in modules by group (store, API, serving) and are registered here, in the order ``--help``
lists them.
"""

from __future__ import annotations

from curate._version import __version__
from curate.cli import (
    api_commands,
    export_commands,
    publish_commands,
    serve_commands,
    stats_commands,
    store_commands,
    view_commands,
)
from curate.cli._shared import app, out
from curate.cli.decontaminate_commands import decontaminate_command
from curate.cli.lake_commands import lake_app
from curate.cli.neardup_commands import dedup_app
from curate.cli.pii_commands import scan_app
from curate.cli.score_commands import score_command
from curate.cli.validate_commands import validate_command

__all__ = ["app", "main"]


def version_command() -> None:
    """Print curate's version."""
    out.print(__version__)


for _name, _command in (
    ("import", store_commands.import_command),
    ("sql", store_commands.sql_command),
    ("migrate", store_commands.migrate_command),
    ("stats", stats_commands.stats_command),
    ("snapshot", view_commands.snapshot_command),
    ("export", export_commands.export_command),
    ("validate", validate_command),
    ("publish", publish_commands.publish_command),
    ("decontaminate", decontaminate_command),
    ("score", score_command),
    ("submit", api_commands.submit_command),
    ("submissions", api_commands.submissions_command),
    ("sample", api_commands.sample_command),
    ("judge", api_commands.judge_command),
    ("harvest", api_commands.harvest_command),
    ("fetch", api_commands.fetch_command),
    ("listen", serve_commands.listen_command),
    ("sandbox", serve_commands.sandbox_command),
    ("version", version_command),
):
    app.command(_name)(_command)
app.add_typer(view_commands.views_app, name="views")
app.add_typer(dedup_app, name="dedup")
app.add_typer(scan_app, name="scan")
app.add_typer(lake_app, name="lake")


def main() -> None:
    """The console script's entry point."""
    app()
