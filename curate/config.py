"""Configuration from the environment: the API key, the API's base URL and the store's path.

Every value can also be given explicitly (the CLI's ``--db``), which wins over the environment.
The API key is held as a secret so it never lands in a repr, a log line or the store.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, SecretStr

from curate.errors import UsageError

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_DB", "MissingApiKey", "Settings"]

DEFAULT_BASE_URL = "https://api.inference.net"
DEFAULT_DB = Path("curate.duckdb")


class MissingApiKey(UsageError, RuntimeError):
    """An API command ran without ``INFERENCE_API_KEY``."""

    def __init__(self) -> None:
        super().__init__(
            "INFERENCE_API_KEY is not set: export your inference.net API key "
            "(export INFERENCE_API_KEY=...) and run the command again."
        )


class Settings(BaseModel):
    """What curate needs to know about where it talks and where it stores."""

    api_key: SecretStr | None = None
    base_url: str = DEFAULT_BASE_URL
    db: Path = DEFAULT_DB

    @classmethod
    def from_env(cls, *, db: str | os.PathLike[str] | None = None) -> Settings:
        """Read ``INFERENCE_API_KEY``, ``INFERENCE_BASE_URL`` and ``CURATE_DB``; ``db`` overrides."""
        key = os.environ.get("INFERENCE_API_KEY") or None
        return cls(
            api_key=SecretStr(key) if key else None,
            base_url=(os.environ.get("INFERENCE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
            db=Path(db) if db is not None else Path(os.environ.get("CURATE_DB") or DEFAULT_DB),
        )

    def require_api_key(self) -> str:
        """The API key, or ``MissingApiKey`` with the one sentence that says what to do."""
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise MissingApiKey()
        return self.api_key.get_secret_value()
