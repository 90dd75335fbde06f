"""``curate lake push|maintain|info``: the Iceberg lake that several writers share."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from curate.cli._shared import DbOption, LakeOption, err, lake_uri, open_store, out, user_errors

if TYPE_CHECKING:
    from curate.lake.table import Lake

__all__ = ["lake_app"]

lake_app = typer.Typer(
    help="Share generations past one machine: push a store to an Iceberg lake, maintain it, describe it. "
    "Reading commands (sql, views, stats, snapshot, export) take --lake too.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _require(lake: str | None) -> str:
    from curate.lake.table import LakeError

    uri = lake_uri(lake)
    if not uri:
        raise LakeError("give --lake (or set CURATE_LAKE): a folder, or postgresql://USER@HOST/DB?warehouse=DIR")
    return uri


@lake_app.command("push")
def push_command(
    db: DbOption = None,
    lake: LakeOption = None,
    batch_rows: Annotated[
        int | None,
        typer.Option(help="Rows per commit; the catalog takes ~10 commits/s [env: CURATE_LAKE_BATCH_ROWS; default: 5000].",
                     show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Append the store's terminal generations that the lake does not have yet.

    harvest, listen and import push by themselves with --lake; this sends what a stopped or
    killed writer left, and settles its unfinished commits (found in the lake, or sent again).
    """
    from curate.lake.table import push

    with user_errors():
        uri = _require(lake)
        summary = push(open_store(db), uri, batch_rows=batch_rows)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(summary)))
        return
    out.print(
        f"pushed {summary.rows:,} generation(s) in {summary.batches:,} commit(s); "
        f"{summary.recovered:,} unfinished commit(s) found in the lake, {summary.released:,} sent again; "
        f"{summary.pending:,} pending"
    )


@lake_app.command("pull")
def pull_command(db: DbOption = None, lake: LakeOption = None, as_json: JsonOption = False) -> None:
    """Merge the lake's generations (one per id) into a local store, for the curation passes.

    dedup near, scan pii and decontaminate write their findings into a store; pull the lake into
    one, run them there, and export from it with --db.
    """
    from curate.lake.reader import pull

    with user_errors():
        uri = _require(lake)
        store = open_store(db)
        counts = pull(uri, store)
    if as_json:
        typer.echo(counts.model_dump_json())
        return
    out.print(
        f"pulled {counts.lines:,} generation(s) into {store.path}: stored {counts.stored:,}, "
        f"updated {counts.updated:,}, duplicate {counts.duplicate:,}, rejected {counts.rejected:,}"
    )


@lake_app.command("maintain")
def maintain_command(
    lake: LakeOption = None,
    expire_minutes: Annotated[
        float, typer.Option(help="Expire snapshots that stopped being current this many minutes ago "
                            "(readers and appends that started from one need it meanwhile).")
    ] = 30.0,
    compact: Annotated[bool, typer.Option(help="Rewrite small files into large ones, one row per id.")] = True,
    target_file_mb: Annotated[int, typer.Option(help="Size of the files compaction writes.")] = 128,
    orphans: Annotated[bool, typer.Option(help="Delete files no snapshot references.")] = True,
    orphan_minutes: Annotated[
        float, typer.Option(help="Only delete unreferenced files older than this; keep it above the longest "
                            "commit (10 minutes at most), since a commit in flight writes its files first.")
    ] = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Expire old snapshots, compact small files and delete orphans; safe while writers append."""
    from curate.lake.maintain import maintain

    with user_errors():
        report = maintain(
            _require(lake), expire_older_than=timedelta(minutes=expire_minutes), compact=compact,
            target_file_bytes=target_file_mb * 2**20, orphans=orphans,
            orphans_older_than=timedelta(minutes=orphan_minutes),
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), default=str))
        return
    table = Table("", "before", "after", title="lake maintenance", show_header=True)
    table.add_row("snapshots", f"{report.snapshots_before:,}", f"{report.snapshots_after:,}")
    table.add_row("data files", f"{report.data_files_before:,}", f"{report.data_files_after:,}")
    table.add_row("rows (with copies)", f"{report.rows_before:,}", f"{report.rows_after:,}")
    out.print(table)
    out.print(
        f"compacted {report.files_compacted:,} file(s) into {report.files_written:,}, "
        f"{report.duplicates_removed:,} duplicate copies removed; "
        f"{report.orphans_deleted:,} orphan file(s) deleted ({report.orphan_bytes / 2**20:,.1f} MiB); "
        f"{report.seconds:.1f}s"
    )


@lake_app.command("info")
def info_command(lake: LakeOption = None, as_json: JsonOption = False) -> None:
    """The lake's table: snapshots, data files, rows (copies included) and bytes."""
    from curate.lake.table import Lake

    with user_errors():
        handle = Lake(_require(lake), read_only=True)
        try:
            info = _info(handle)
        finally:
            handle.close()
    if as_json:
        typer.echo(json.dumps(info))
        return
    table = Table(show_header=False, title=str(handle.config))
    for key, value in info.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and key != "current_snapshot" else str(value))
    out.print(table)
    if not info["data_files"]:
        err.print("the lake is empty: push to it with curate import/harvest/listen --lake", style="yellow")


def _info(handle: Lake) -> dict[str, object]:
    from curate.lake.table import masked

    table = handle.load()
    if table is None:
        return {"table": handle.config.table, "snapshots": 0, "data_files": 0, "rows": 0, "bytes": 0}
    current = table.current_snapshot()
    summary = current.summary if current is not None and current.summary is not None else None

    def total(key: str) -> int:
        return int(summary.get(key, 0) or 0) if summary is not None else 0

    return {
        "table": handle.config.table,
        "location": masked(table.location()),
        "snapshots": len(table.metadata.snapshots),
        "current_snapshot": current.snapshot_id if current is not None else None,
        "data_files": total("total-data-files"),
        "rows": total("total-records"),
        "bytes": total("total-files-size"),
    }
