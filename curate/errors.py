"""The one base of the errors a user can act on, and the exit code each one means.

Every error curate raises for something a user can fix or should know (a file to correct, a
login to make, a store another process holds, an API that is down) derives from ``CurateError``
and says in ``exit_code`` how the command line ends: 2 for an argument, a file or a login to fix
(nothing was done), 1 for a failure of the moment or of a service (try again, or look). The
CLI prints such an error as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from typing import ClassVar

__all__ = ["CurateError", "EnvironmentRefused", "MissingFile", "NoSuchName", "UsageError", "from_environment"]


class CurateError(Exception):
    """An error a user can act on; the command line prints it as one line and exits with ``exit_code``."""

    exit_code: ClassVar[int] = 1


class UsageError(CurateError):
    """An argument, a file or a login to fix: nothing was done."""

    exit_code: ClassVar[int] = 2


class MissingFile(CurateError, FileNotFoundError):
    """A file or folder curate was told to read is not there (still a FileNotFoundError)."""


class NoSuchName(CurateError, KeyError):
    """A view, an eval set or another name curate was given names nothing (still a KeyError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote its message


class EnvironmentRefused(CurateError):
    """The machine refused what curate asked of it: a full disk, a path it may not write, a port
    already taken, too little memory. Nothing is wrong with curate; the message says what to fix."""


# What the operating system says when the fix is the user's (space, permissions, a path, a port).
_ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EISDIR,
    errno.ENOTDIR, errno.EEXIST, errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENAMETOOLONG,
})
# DuckDB's errors of the same kind: its file could not be written or read, its memory limit was met.
# By name, so that this module (which the command line imports first) does not load DuckDB.
_DUCKDB_ENVIRONMENT = frozenset({"IOException", "OutOfMemoryException", "PermissionException"})


def from_environment(exc: BaseException) -> EnvironmentRefused | None:
    """The one-line form of an error the machine raised rather than curate, or None.

    The one place that knows which foreign exceptions are the environment's: the command line
    prints these as one line instead of as a bug's traceback.
    """
    if isinstance(exc, OSError) and (exc.errno in _ENVIRONMENT_ERRNOS or type(exc).__name__ == "gaierror"):
        return EnvironmentRefused(str(exc))
    if type(exc).__module__.lstrip("_") == "duckdb":
        names = {c.__name__ for c in type(exc).__mro__}
        # A commit that could not write its file ("No space left on device") is a TransactionException.
        if names & _DUCKDB_ENVIRONMENT or ("TransactionException" in names and "Could not write" in str(exc)):
            hint = " (raise CURATE_MEMORY_LIMIT, or read fewer rows or columns)" if "OutOfMemoryException" in names else ""
            return EnvironmentRefused(f"{exc}{hint}")
    return None
