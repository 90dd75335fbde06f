"""The one base of the errors a user can act on, and the exit code each one means.

Every error curate raises for something a user can fix or should know (a file to correct, a
login to make, a store another process holds, an API that is down) derives from ``CurateError``
and says in ``exit_code`` how the command line ends: 2 for an argument, a file or a login to fix
(nothing was done), 1 for a failure of the moment or of a service (try again, or look). The
CLI prints such an error as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["CurateError", "MissingFile", "NoSuchName", "UsageError"]


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
