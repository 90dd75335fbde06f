"""Publishing an export folder to a Hugging Face dataset repository, in one commit.

This module owns the trip from a local export folder (``README.md``, ``data/``, ``lineage.parquet``;
see ``curate.export``) to the Hub: checking the folder before any network call, finding a token,
creating the repository (and branch), merging the Hub's dataset card with the local one
(``curate.card.merge``: hand-written prose and keys on the Hub survive), and one commit that uploads
every file and deletes the data files an earlier, bigger export left behind.

The local folder is only read: the merged card goes to the Hub, not back to disk, so the folder
stays what the export wrote and a second publish merges the same way again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx2

from curate import card
from curate.config import Settings
from curate.errors import UsageError

__all__ = ["HubApi", "HubError", "PublishError", "PublishSummary", "publish"]

CARD = "README.md"
DATA = "data"
LINEAGE = "lineage.parquet"
DEFAULT_MESSAGE = "Publish dataset with curate"
LOGIN_HINT = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"

# What the Hub accepts as a repository id, with the namespace curate requires.
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"{_NAME}/{_NAME}", re.ASCII)


class PublishError(UsageError, ValueError):
    """The folder, repository name or login is not ready to publish; nothing was sent."""


class HubError(PublishError):
    """The Hub refused a request or could not be reached; the message names the repository."""

    exit_code = 1  # the Hub's failure, not the user's input


class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` that publishing uses (tests pass a fake)."""

    def create_repo(self, repo_id: str, *, repo_type: str | None = ..., private: bool | None = ...,
                    exist_ok: bool = ...) -> Any: ...

    def create_branch(self, repo_id: str, *, branch: str, repo_type: str | None = ...,
                      exist_ok: bool = ...) -> None: ...

    def list_repo_files(self, repo_id: str, *, revision: str | None = ...,
                        repo_type: str | None = ...) -> list[str]: ...

    def hf_hub_download(self, repo_id: str, filename: str, *, repo_type: str | None = ...,
                        revision: str | None = ...) -> Any: ...

    def create_commit(self, repo_id: str, operations: Iterable[Any], *, commit_message: str,
                      repo_type: str | None = ..., revision: str | None = ...) -> Any: ...


@dataclass(frozen=True)
class PublishSummary:
    """What one publish did: where, which paths it uploaded and deleted, and the card the Hub now has."""

    repo: str
    revision: str
    url: str
    commit_url: str
    uploaded: tuple[str, ...]
    deleted: tuple[str, ...]
    card: str


def publish(
    folder: Path | str,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
    api: HubApi | None = None,
) -> PublishSummary:
    """Publish an export folder to the dataset repository ``repo`` (``ORG/NAME``) in one commit.

    The repository is created if missing (``private`` applies only then); ``revision`` names a
    branch, created from ``main`` if missing. The commit uploads every file of the folder (hidden
    files and ``.cache`` excepted; a folder holding a symbolic link anywhere is refused), the card merged with the Hub's current one, and deletes every
    file under ``data/`` (and a ``lineage.parquet``) the Hub has and the folder does not, so no stale
    shard matches the card's ``data/<split>-*`` globs. ``message`` defaults to one counting the
    card's rows.

    The token is ``token``, else ``HF_TOKEN``, else the stored login; with ``api`` (an ``HfApi`` or a
    fake), ``token`` is not used. Raises PublishError before any network call when the folder,
    ``repo`` or the login is not right, and HubError (a PublishError) when the Hub fails.
    """
    folder = Path(folder)
    files, local_card = _check_folder(folder)
    if not _REPO.fullmatch(repo) or "--" in repo or ".." in repo:
        raise PublishError(f"repo must be ORG/NAME, like my-org/my-dataset, not {repo!r}")
    message = message or _default_message(card.split(local_card)[0])
    if api is None:
        from huggingface_hub import get_token  # imported when used: `curate --help` need not load it

        env_token = Settings.from_env().hf_token
        token = token or (env_token.get_secret_value() if env_token else None) or get_token()
        if not token:
            raise PublishError(f"no Hugging Face token to publish {repo} with: {LOGIN_HINT}, then run again")
        from huggingface_hub import HfApi

        api = HfApi(token=token)

    with _hub_errors(repo):
        repo_url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True)
        remote = _remote_files(api, repo, revision)
        remote_card = _remote_card(api, repo, revision) if CARD in remote else ""
    try:
        merged = card.merge(remote_card, local_card)
    except ValueError as exc:
        raise PublishError(f"{repo}: the {CARD} on the Hub cannot be merged: {exc}") from None

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    stale = sorted(p for p in remote if (p.startswith(f"{DATA}/") or p == LINEAGE) and p not in files)
    adds = [CommitOperationAdd(CARD, merged.encode()) if path == CARD else CommitOperationAdd(path, str(files[path]))
            for path in sorted(files)]
    with _hub_errors(repo):
        commit = api.create_commit(
            repo, [*(CommitOperationDelete(p) for p in stale), *adds], commit_message=message,
            repo_type="dataset", revision=revision,
        )
    url = str(repo_url).rstrip("/") + (f"/tree/{revision}" if revision else "")
    return PublishSummary(
        repo=repo, revision=revision or "main", url=url, commit_url=str(getattr(commit, "commit_url", commit)),
        uploaded=tuple(sorted(files)), deleted=tuple(stale), card=merged,
    )


def _check_folder(folder: Path) -> tuple[dict[str, Path], str]:
    """The folder's files by path in the repo, and its card's text; PublishError naming what is wrong."""
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such folder")
    _refuse_links(folder)
    card_path = folder / CARD
    if not card_path.is_file():
        raise PublishError(f"{card_path}: missing; an export folder has a dataset card")
    text = card_path.read_text(encoding="utf-8")
    try:
        card.split(text)
        has_block = card.block(text) is not None
    except ValueError as exc:
        raise PublishError(f"{card_path}: {exc}") from None
    if not has_block:
        raise PublishError(f"{card_path}: no {card.START} ... {card.END} block; is this a curate export?")
    files = {
        path.relative_to(folder).as_posix(): path
        for path in folder.rglob("*")
        # Hidden files include the .cache folder huggingface_hub keeps beside downloads.
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }
    if not any(name.startswith(f"{DATA}/") for name in files):
        raise PublishError(f"{folder / DATA}: no data files; an export folder has its rows under data/")
    return files, text


def _refuse_links(folder: Path) -> None:
    """PublishError at the first symbolic link in ``folder`` (hidden ones too), or path resolving outside it.

    Only what is inside the folder is published: a link could send any file of the machine (a
    key, another dataset) to the Hub. ``folder`` itself may be a link: the user named it.
    """
    root = folder.resolve()
    for parent, dirs, names in os.walk(folder):  # does not follow links to folders
        for name in sorted([*dirs, *names]):
            path = Path(parent) / name
            if path.is_symlink():
                raise PublishError(f"{path}: a symbolic link; publish uploads only files inside the folder, "
                                   f"so replace it with a copy of what it points to")
            if not path.resolve().is_relative_to(root):
                raise PublishError(f"{path}: resolves outside {folder}; publish uploads only files inside it")


def _default_message(header: dict[str, Any]) -> str:
    info = header.get("dataset_info")
    configs = info if isinstance(info, list) else [info]
    rows = [
        split.get("num_examples")
        for config in configs if isinstance(config, dict)
        for split in config.get("splits") or [] if isinstance(split, dict)
    ]
    counts = [n for n in rows if isinstance(n, int)]
    if not counts or len(counts) != len(rows):
        return DEFAULT_MESSAGE
    return f"curate export: {sum(counts)} rows"


def _remote_files(api: HubApi, repo: str, revision: str | None) -> list[str]:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return list(api.list_repo_files(repo, repo_type="dataset", revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return []


def _remote_card(api: HubApi, repo: str, revision: str | None) -> str:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = api.hf_hub_download(repo, CARD, repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return ""
    return Path(path).read_text(encoding="utf-8")


@contextmanager
def _hub_errors(repo: str) -> Iterator[None]:
    """Turn what huggingface_hub raises into one line that names the repository."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError:
        raise HubError(
            f"{repo}: the Hub has no such dataset repository, or your token may not write to it "
            f"(check the name, and who you are with `hf auth whoami`)"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code
        detail = next(iter((exc.server_message or str(exc)).strip().splitlines()), "no message")
        hint = f"; {LOGIN_HINT} with a token that may write to it" if status in (401, 403) else ""
        raise HubError(f"{repo}: the Hub answered {status}: {detail}{hint}") from None
    # huggingface_hub lets its transport's connection errors through unwrapped.
    except (httpx2.HTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise HubError(f"{repo}: cannot reach the Hugging Face Hub: {exc}") from None
