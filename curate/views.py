"""The store's SQL views: one ``.sql`` file per view, read from folders, created per connection.

This module owns the views as files: finding them (the shipped ``queries/`` folder, then any user
folders, a later folder replacing a view of the same name), reading the comment header that says
what one row is, creating each view as a temporary view of one connection, and telling which file
and line a broken view fails on. It does not decide when that happens (``Store.read`` does) nor
print anything (the ``curate views`` command does). Nothing here writes to the store's file.

A view file holds a header of ``--`` comment lines, whose first line is the view's one-line
description, then a single query (``select ...`` or ``with ... select ...``). The view is named
after the file (``chat.sql`` makes ``chat``) and the loader wraps the query itself, so a file
can define that view and do nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from curate import messages
from curate.errors import MissingFile

__all__ = [
    "MACROS",
    "MARKER",
    "QUERIES_DIR",
    "View",
    "ViewError",
    "describe",
    "install",
    "load",
    "shipped_dir",
]

# Views that curate before its schema migration m007 created inside the store's file carry a
# comment starting with this; m007 drops them (views now live in each connection).
MARKER = "curate view"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Macros every connection has before its views, so a view file states a rule by calling it rather
# than by restating it: ``message_text(m)`` is the text of one chat message given as JSON
# (``curate.messages``' one rule; '' when it has none), ``message_reasoning(m)`` its reasoning (NULL when none).
MACROS = {"message_text": f"(m) as ({messages.json_message_text('m')})",
          "message_reasoning": f"(m) as ({messages.json_message_reasoning('m')})"}
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
            raise MissingFile(f"{folder}: no such folder of views")
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


def _protected(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Names a view file may not take: every table and view the store's file holds."""
    rows = con.execute(
        "select table_name, 'table' from duckdb_tables() where not temporary and schema_name = 'main' "
        "and database_name = current_database() "
        "union all select view_name, 'view' from duckdb_views() "
        "where not internal and not temporary and schema_name = 'main' and database_name = current_database()"
    ).fetchall()
    return {name.lower(): kind for name, kind in rows}


def _create(con: duckdb.DuckDBPyConnection, view: View, protected: dict[str, str]) -> None:
    query = _query(con, view)
    kind = protected.get(view.name.lower())
    if kind is not None:
        raise ViewError(view.path, None, f"{view.name} is the store's own {kind}: name the file otherwise",
                        view=view.name)
    try:
        con.execute(f'create or replace temp view "{view.name}" as {query}')
    except duckdb.Error as exc:
        raise _error(view, exc) from exc


def install(con: duckdb.DuckDBPyConnection, views: Sequence[View]) -> list[ViewError]:
    """Create every view as a temporary view of ``con``; return the views that failed, as errors.

    Temporary views live in the connection, never in the store's file: a read-only connection
    can make them, any number of readers each have their own, and a user's folder changes only
    the session that named it. A broken view never stops the others. A view may read another
    view: views that fail are tried again as long as others succeed, so their order does not
    matter. Creating a view binds it (reads no rows), so an error names the file and line.
    """
    for name, macro in MACROS.items():
        con.execute(f"create or replace temporary macro {name}{macro}")
    protected = _protected(con)
    pending = list(views)
    failed: list[tuple[View, ViewError]] = []
    while pending:
        failed = []
        for view in pending:
            try:
                _create(con, view, protected)
            except ViewError as exc:
                failed.append((view, exc))
        if len(failed) == len(pending):
            break
        pending = [view for view, _ in failed]
    return [error for _, error in failed]


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
