"""HTTP to inference.net: the one place that knows its URLs, its auth and its answers.

For now it fetches generations by id, one request each, with a timeout on every call. The
harvester's concerns (retries, backoff, the client-side rate limit, groups) arrive with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx

from curate.config import Settings

__all__ = ["Fetched", "fetch_generations"]

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@dataclass(frozen=True)
class Fetched:
    """One ``GET /v1/generation/{id}``: the status and the body exactly as received."""

    generation_id: str
    status: int
    body: bytes

    @property
    def visible(self) -> bool:
        """False for a 404: inference.net does not show the generation yet."""
        return self.status != 404


def fetch_generations(
    settings: Settings,
    generation_ids: Iterable[str],
    *,
    transport: httpx.BaseTransport | None = None,
) -> Iterator[Fetched]:
    """Fetch each generation once; raise ``httpx.HTTPStatusError`` on answers other than 2xx/404."""
    key = settings.require_api_key()
    with httpx.Client(
        base_url=settings.base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
        transport=transport,
    ) as client:
        for generation_id in generation_ids:
            response = client.get(f"/v1/generation/{generation_id}")
            if response.status_code != 404:
                response.raise_for_status()
            yield Fetched(generation_id, response.status_code, response.content)
