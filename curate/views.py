"""The store's SQL views: one ``.sql`` file per view, read from folders, created in the store.

This module owns the views as files: finding them (the shipped ``queries/`` folder, then any user
folders, a later folder replacing a view of the same name), reading the comment header that says
what one row is, creating or replacing each view in a store, and telling which file and line a
broken view fails on. It does not decide when that happens (opening the store does) nor print
anything (the ``curate views`` command does).

A view file holds a header of ``--`` comment lines, whose first line is the view's one-line
description, then a single query (``select ...`` or ``with ... select ...``). The view is named
after the file (``chat.sql`` makes ``chat``) and the loader wraps the query itself, so a file
can define that view and do nothing else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

__all__ = [
    "MARKER",
    "QUERIES_DIR",
    "View",
    "ViewError",
    "describe",
    "load",
    "refresh",
    "shipped_dir",
]

# Views curate created carry a comment "curate view <digest of the file>": so that a refresh
# leaves a view whose file has not changed as it is, ``refresh(prune=True)`` drops only curate's
# own views, and a view file can never replace the store's own objects (the ``generations`` view).
MARKER = "curate view"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE = re.compile(r"\nLINE (\d+): .*", re.DOTALL)


def shipped_dir() -> Path:
    """The folder of the views curate ships.

    A wheel carries them inside the package (``curate/queries``); a source checkout or an
    editable install keeps them at the top of the project (``queries/``).
    """
    inside = Path(__file__).resolve().parent / "queries"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent / "queries"


QUERIES_DIR = shipped_dir()


@dataclass(frozen=True)
class View:
    """One view file: its name (the file's stem), its header's first line, where it is, its text."""

    name: str
    description: str
    path: Path
    sql: str

    @property
    def comment(self) -> str:
        """What the store's view carries once created from this file: MARKER and the text's digest."""
        return f"{MARKER} {hashlib.sha256(self.sql.encode()).hexdigest()[:16]}"


class ViewError(ValueError):
    """A view file that could not be created: the file, the line (when known) and DuckDB's message."""

    def __init__(self, path: Path, line: int | None, message: str, *, view: str | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.view = view if view is not None else path.stem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def _description(sql: str) -> str:
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("--"):
            return stripped.lstrip("-").strip()
        break
    return ""


def load(dirs: Sequence[Path]) -> list[View]:
    """Every ``*.sql`` file of ``dirs``, by name; a later folder's file replaces an earlier one's.

    Names compare as DuckDB compares them, ignoring case (``Chat.sql`` replaces ``chat.sql``).
    A folder that does not exist is an error (a mistyped ``--queries`` should not pass silently).
    The views come sorted by name.
    """
    found: dict[str, View] = {}
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of views")
        for path in sorted(folder.glob("*.sql")):
            sql = path.read_text(encoding="utf-8")
            found[path.stem.lower()] = View(path.stem, _description(sql), path, sql)
    return [found[key] for key in sorted(found)]


def _error(view: View, exc: duckdb.Error) -> ViewError:
    """DuckDB's message, with its "LINE n:" excerpt replaced by the file's line.

    Every statement curate runs starts with a prefix on the file's first line and then the
    file's text as it is, so DuckDB's line numbers are the file's.
    """
    text = str(exc)
    match = _LINE.search(text)
    if match is None:
        return ViewError(view.path, None, text, view=view.name)
    line = int(match.group(1))
    message = text[: match.start()].rstrip()
    lines = view.sql.splitlines()
    if 1 <= line <= len(lines):
        message += f"\n    {lines[line - 1].strip()}"
    return ViewError(view.path, line, message, view=view.name)


def _query(con: duckdb.DuckDBPyConnection, view: View) -> str:
    """The view's query, checked to be exactly one SELECT (parsing only, no transaction touched)."""
    if not _NAME.fullmatch(view.name):
        raise ViewError(view.path, None, f"{view.name!r} is not a view name: use letters, digits and _",
                        view=view.name)
    try:
        statements = con.extract_statements(view.sql)
    except duckdb.Error as exc:
        raise _error(view, exc) from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.type.name for s in statements) or "nothing"
        raise ViewError(view.path, None, f"a view file holds one query (select ... or with ... select ...); "
                                         f"found {kinds}", view=view.name)
    body = view.sql.rstrip()
    return body[:-1].rstrip() if body.endswith(";") else body


def _ours(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str]]:
    """The views curate created in this store: lower-cased name -> (name, comment)."""
    rows = con.execute(
        "select view_name, comment from duckdb_views() "
        "where not internal and not temporary and schema_name = 'main' and starts_with(comment, ?)",
        [MARKER + " "],
    ).fetchall()
    return {name.lower(): (name, comment) for name, comment in rows}


def _protected(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Names a view file may not take: every table, and every view curate did not create."""
    rows = con.execute(
        "select table_name, 'table' from duckdb_tables() where not temporary and schema_name = 'main' "
        "union all select view_name, 'view' from duckdb_views() "
        "where not internal and not temporary and schema_name = 'main' "
        "and not starts_with(coalesce(comment, ''), ?)",
        [MARKER + " "],
    ).fetchall()
    return {name.lower(): kind for name, kind in rows}


def _create(
    con: duckdb.DuckDBPyConnection, view: View, protected: dict[str, str], ours: dict[str, tuple[str, str]]
) -> None:
    query = _query(con, view)
    kind = protected.get(view.name.lower())
    if kind is not None:
        raise ViewError(view.path, None, f"{view.name} is the store's own {kind}: name the file otherwise",
                        view=view.name)
    # Bind the query on a connection of its own first: an error inside the caller's transaction
    # would abort that transaction (DuckDB has no savepoints), but not on a cursor. Binding
    # reads no rows, and catches a view whose file is unchanged but whose tables have.
    cursor = con.cursor()
    try:
        cursor.execute(f"describe {query}")
    except duckdb.Error as exc:
        raise _error(view, exc) from exc
    finally:
        cursor.close()
    if ours.get(view.name.lower(), ("", ""))[1] == view.comment:
        return  # created from this very text already: nothing to write
    try:
        con.execute(f'create or replace view "{view.name}" as {query}')
        con.execute(f"comment on view \"{view.name}\" is '{view.comment}'")
    except duckdb.Error as exc:
        raise _error(view, exc) from exc


def refresh(con: duckdb.DuckDBPyConnection, views: Sequence[View], *, prune: bool = False) -> list[ViewError]:
    """Create or replace every view in ``con``'s store; return the views that failed, as errors.

    A broken view never stops the others, and the view it would have replaced is dropped, so no
    stale definition outlives its file. A view may read another view: views that fail are tried
    again as long as others succeed, so their order does not matter.

    ``con`` must be read-write. Each view is checked on a separate cursor before it is created,
    so a broken file does not abort the caller's transaction; that cursor sees only committed
    views, so a view that reads a view created in the same, still open transaction fails. Run
    refresh outside an explicit transaction (in autocommit, as ``Store.migrate`` does) when views
    read each other. ``prune`` also drops the views curate created earlier whose file is gone.
    """
    protected = _protected(con)
    ours = _ours(con)
    pending = list(views)
    failed: list[tuple[View, ViewError]] = []
    while pending:
        failed = []
        for view in pending:
            try:
                _create(con, view, protected, ours)
            except ViewError as exc:
                failed.append((view, exc))
        if len(failed) == len(pending):
            break
        pending = [view for view, _ in failed]
    errors = [error for _, error in failed]
    names = {view.name.lower() for view in views}
    broken = {error.view.lower() for error in errors}
    for key, (name, _) in _ours(con).items():
        if key in broken or (prune and key not in names):
            con.execute(f'drop view if exists "{name}"')
    return errors


def describe(con: duckdb.DuckDBPyConnection, views: Sequence[View]) -> list[tuple[str, str, int | None]]:
    """(name, description, row count) of each view, for ``curate views``.

    The count is None for a view the store does not have (a broken file) or that fails to run.
    Each count runs a query, so call this on a read-only connection or outside a transaction.
    """
    present = {row[0].lower() for row in con.execute(
        "select view_name from duckdb_views() where not internal"
    ).fetchall()}
    out: list[tuple[str, str, int | None]] = []
    for view in views:
        rows: int | None = None
        if view.name.lower() in present:
            try:
                rows = int(con.execute(f'select count(*) from "{view.name}"').fetchall()[0][0])
            except duckdb.Error:
                rows = None
        out.append((view.name, view.description, rows))
    return out
