"""Configuration: every environment variable curate reads, read here and nowhere else.

``Settings.from_env()`` reads them all (``ENVIRONMENT`` maps each field to its variable, and the
README's table is held equal to it by a test); a value given explicitly (the CLI's ``--db``, a
notebook's argument) wins over the environment. Secrets (the API key, the Hub token, webhook
ids, the path token, a lake URI that may carry a password) never show in a repr or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from curate.errors import UsageError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_DB",
    "DEFAULT_LAKE_BATCH_ROWS",
    "DEFAULT_MEMORY_LIMIT",
    "ENVIRONMENT",
    "BadSetting",
    "MissingApiKey",
    "Settings",
    "environment_set",
]

DEFAULT_BASE_URL = "https://api.inference.net"
DEFAULT_DB = Path("curate.duckdb")
DEFAULT_MEMORY_LIMIT = "1GB"
DEFAULT_LAKE_BATCH_ROWS = 5_000  # rows per lake commit: the catalog takes ~10 commits a second in all  # DuckDB spills to disk past it, so an import's memory does not grow with its file

# The variable each setting is read from.
ENVIRONMENT: dict[str, str] = {
    "api_key": "INFERENCE_API_KEY",
    "base_url": "INFERENCE_BASE_URL",
    "db": "CURATE_DB",
    "lock_timeout": "CURATE_LOCK_TIMEOUT",
    "memory_limit": "CURATE_MEMORY_LIMIT",
    "queries": "CURATE_QUERIES",
    "webhook_ids": "CURATE_WEBHOOK_IDS",
    "path_token": "CURATE_PATH_TOKEN",
    "hf_token": "HF_TOKEN",
    "lake": "CURATE_LAKE",
    "lake_batch_rows": "CURATE_LAKE_BATCH_ROWS",
    "lake_push_seconds": "CURATE_LAKE_PUSH_SECONDS",
}


_SECRET = frozenset({"api_key", "webhook_ids", "path_token", "hf_token", "lake"})  # never printed


class BadSetting(UsageError):
    """An environment variable holds a value curate cannot use."""


class MissingApiKey(UsageError, RuntimeError):
    """An API command ran without ``INFERENCE_API_KEY``."""

    def __init__(self) -> None:
        super().__init__(
            "INFERENCE_API_KEY is not set: export your inference.net API key "
            "(export INFERENCE_API_KEY=...) and run the command again."
        )


class Settings(BaseModel):
    """What curate needs to know about where it talks, where it stores and how it behaves."""

    api_key: SecretStr | None = None
    base_url: str = DEFAULT_BASE_URL
    db: Path = DEFAULT_DB
    lock_timeout: float = 30.0  # seconds a reader waits for a writer to let go of the store
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    queries: tuple[Path, ...] = ()  # folders of the user's own view files
    webhook_ids: tuple[str, ...] = Field(default=(), repr=False)  # what `curate listen` accepts
    path_token: str | None = Field(default=None, repr=False)  # the path segment `curate listen` requires
    hf_token: SecretStr | None = None
    lake: str | None = Field(default=None, repr=False)  # may hold a password
    lake_batch_rows: int = Field(default=DEFAULT_LAKE_BATCH_ROWS, ge=1)
    lake_push_seconds: float = Field(default=5.0, gt=0)

    @field_validator("lock_timeout")
    @classmethod
    def _a_wait(cls, value: float) -> float:
        if not value >= 0:  # NaN too
            raise ValueError("expected seconds, 0 or more (inf: wait for ever)")
        return value

    @field_validator("memory_limit")
    @classmethod
    def _a_size_duckdb_reads(cls, value: str) -> str:
        if value == DEFAULT_MEMORY_LIMIT:
            return value
        import duckdb  # only for a limit someone set: the command that reads it opens DuckDB anyway

        try:  # DuckDB's own rule ("1GB", "512 MiB", "80%"), asked of a connection that holds nothing
            duckdb.connect(config={"memory_limit": value}).close()
        except duckdb.Error as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, value: str) -> str:
        # Refused here, with the variable's name, rather than as a traceback from the first request.
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL with a host")
        return value

    @classmethod
    def from_env(cls, *, db: str | os.PathLike[str] | None = None) -> Settings:
        """Every setting from its environment variable (``ENVIRONMENT``), else its default; ``db``
        overrides ``CURATE_DB``. A value that cannot be used raises ``BadSetting`` naming it."""
        given: dict[str, Any] = {}
        for field, variable in ENVIRONMENT.items():
            value = os.environ.get(variable, "").strip()
            if not value:
                continue
            if field == "queries":
                given[field] = tuple(Path(p) for p in value.split(os.pathsep) if p)
            elif field == "webhook_ids":
                given[field] = tuple(i.strip() for i in value.split(",") if i.strip())
            elif field == "base_url":
                given[field] = value.rstrip("/")
            else:
                given[field] = value
        if db is not None:
            given["db"] = Path(db)
        try:
            return cls(**given)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0])
            variable = ENVIRONMENT.get(field, field)
            shown = "" if field in _SECRET else f"={os.environ.get(variable, '')!r}"
            raise BadSetting(f"{variable}{shown}: {first['msg'].removeprefix('Value error, ')}") from None

    def require_api_key(self) -> str:
        """The API key, or ``MissingApiKey`` with the one sentence that says what to do."""
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise MissingApiKey()
        return self.api_key.get_secret_value()


@contextmanager
def environment_set(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` in the environment while the block runs, then as it was: for a
    library that reads the environment itself (transformers' advice that PyTorch is missing, which
    a tokenizer does not need). Here so that the environment is touched in one module."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
