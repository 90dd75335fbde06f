"""What the sandbox's servers share: ``start``/``stop`` and ``with ... as x:``."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

__all__ = ["BackgroundServed", "Keyed", "StartStop"]


class StartStop:
    """Context-manager plumbing for anything that starts and stops."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BackgroundServed(StartStop):
    """An app served on loopback by a ``curate.serving.BackgroundServer`` held in ``self._server``."""

    _server: Any

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


class Keyed:
    """The Bearer key of a sandbox's ``config``, and the headers that carry it."""

    config: Any

    @property
    def api_key(self) -> str:
        return str(self.config.api_key)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"}
