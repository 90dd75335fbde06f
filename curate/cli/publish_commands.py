"""``curate publish``: an export folder to a Hugging Face dataset repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli._shared import user_errors

__all__ = ["publish_command"]


def publish_command(
    folder: Annotated[
        Path, typer.Argument(help="An export folder: README.md, data/, lineage.parquet.", show_default=False)
    ],
    repo: Annotated[str, typer.Option(help="The dataset repository, ORG/NAME.", show_default=False)],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository private (an existing one keeps its visibility).")
    ] = False,
    revision: Annotated[
        str | None, typer.Option(help="The branch to commit to, created from main if missing.", show_default=False)
    ] = None,
    message: Annotated[
        str | None, typer.Option(help="The commit message [default: one counting the rows].", show_default=False)
    ] = None,
) -> None:
    """Publish an export folder to a Hugging Face dataset repository in one commit.

    Uploads every file, merges the dataset card with the one on the Hub (prose and keys written
    there by hand are kept), and deletes data files an earlier export left that this one has not.
    Log in first with `hf auth login`, or set HF_TOKEN.
    """
    from curate.publisher import publish

    with user_errors():
        result = publish(folder, repo, private=private, revision=revision, message=message)
    # Plain lines, not rich: paths and URLs stay whole and unstyled for scripts that read them.
    for path in result.uploaded:
        typer.echo(f"uploaded {path}")
    for path in result.deleted:
        typer.echo(f"deleted {path}")
    typer.echo(result.url)

