"""What the sandbox's servers share: the lifecycle of ``curate.serving``, and the Bearer key."""

from __future__ import annotations

from typing import Any

from curate.serving import BackgroundServed, StartStop

__all__ = ["BackgroundServed", "Keyed", "StartStop"]


class Keyed:
    """The Bearer key of a sandbox's ``config``, and the headers that carry it."""

    config: Any

    @property
    def api_key(self) -> str:
        return str(self.config.api_key)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"}
