"""Errors a user can act on share one base, and each says the exit code the command line ends with."""

from __future__ import annotations

import pytest

from curate.client import ApiError, ApiUnavailable
from curate.config import MissingApiKey
from curate.errors import CurateError, MissingFile, NoSuchName
from curate.exporter import ExportError
from curate.lake.table import LakeError
from curate.publisher import HubError, PublishError
from curate.store import StoreBehind, StoreLocked
from curate.submit import InvalidRequests


@pytest.mark.parametrize(("error", "code"), [
    (MissingApiKey, 2), (ExportError, 2), (PublishError, 2), (LakeError, 2), (InvalidRequests, 2),
    (HubError, 1), (StoreLocked, 1), (StoreBehind, 1), (ApiError, 1), (ApiUnavailable, 1), (MissingFile, 1),
    (NoSuchName, 1),
])
def test_every_error_a_user_can_act_on_is_a_curate_error_with_its_exit_code(error: type, code: int) -> None:
    assert issubclass(error, CurateError) and error.exit_code == code


def test_a_missing_file_or_name_is_still_the_builtin_error_code_that_catches_it_expects() -> None:
    assert issubclass(MissingFile, FileNotFoundError) and issubclass(NoSuchName, KeyError)
    assert str(NoSuchName("chat2: no such view")) == "chat2: no such view"  # not quoted, as KeyError would
