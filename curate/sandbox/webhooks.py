"""Webhook deliveries of the sandbox, shaped like inference.net's.

Each completion is scheduled as a timer on the server's loop for the instant the generation (or
the last generation of a group) finishes, so delivery does not depend on anyone polling. A
delivery is its own task: an OPTIONS readiness check, then the POST, each retried with
exponential backoff on 5xx, timeouts and connection errors but never on 4xx, as documented.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import ssl
import time
from typing import Any

import httpx

from curate.sandbox.config import SandboxConfig
from curate.sandbox.state import Core, Generation, Group, iso

__all__ = ["USER_AGENT", "WebhookDispatcher", "shared_ssl_context"]

USER_AGENT = "Kuzco-Webhook/1.0"


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one costs ~30 ms, per client."""
    return ssl.create_default_context()


class WebhookDispatcher:
    """Schedules and sends deliveries; lives and dies with the server's event loop."""

    def __init__(self, core: Core, config: SandboxConfig) -> None:
        self._core = core
        self._config = config
        self._client: httpx.AsyncClient | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Deliveries scheduled or in flight."""
        return len(self._timers) + len(self._tasks)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # made on first use: most sandboxes never deliver
            # trust_env=False: a proxy set in the environment must not capture loopback calls.
            self._client = httpx.AsyncClient(
                timeout=self._config.webhook_timeout,
                trust_env=False,
                follow_redirects=False,
                verify=shared_ssl_context(),
            )
        return self._client

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- scheduling (loop thread) ---------------------------------------------------------

    def on_generation(self, gen: Generation) -> None:
        if gen.webhook_id and self._config.webhook_url:
            self._at(gen.finish_at, self._generation_delivery, gen)

    def on_group(self, group: Group) -> None:
        if group.webhook_id and self._config.webhook_url:
            self._at(group.finish_at, self._group_delivery, group)

    def send_test(self, webhook_id: str) -> None:
        if not self._config.webhook_url:
            raise RuntimeError("the sandbox has no webhook_url")
        payload = {
            "event": "webhook.test",
            "timestamp": iso(time.time()),
            # Documented quirk: the test event keeps snake_case whatever the other events use.
            "webhook_id": webhook_id,
            "data": {"event": "webhook.test", "message": "Test webhook from the curate sandbox"},
        }
        self._spawn(self._deliver("webhook.test", webhook_id, {}, payload, duplicate=False))

    def _at(self, finish_at: float, build: Any, item: Any) -> None:
        delay = max(0.0, finish_at + self._config.webhook_delay - time.time())
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._spawn(build(item))

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- payloads -------------------------------------------------------------------------

    def _duplicate(self, key: str) -> bool:
        rate = self._config.webhook_duplicate_rate
        return rate > 0 and random.Random(f"dup-{self._config.seed}-{key}").random() < rate

    async def _generation_delivery(self, gen: Generation) -> None:
        snake = self._config.webhook_casing == "snake"
        event = "generation.completed" if gen.kind == "chat" else "async-embedding.completed"
        assert gen.webhook_id is not None
        payload = {
            "event": event,
            "timestamp": iso(time.time()),
            "webhook_id" if snake else "webhookId": gen.webhook_id,
            "generation_id" if snake else "generationId": gen.id,
            "data": gen.record(time.time()),
        }
        headers = {"X-Inference-Generation-ID": gen.id}
        await self._deliver(event, gen.webhook_id, headers, payload, self._duplicate(gen.id))

    async def _group_delivery(self, group: Group) -> None:
        now = time.time()
        assert group.webhook_id is not None
        payload = {
            "event": "slow-group.completed",
            "timestamp": iso(now),
            "group_id": group.id,
            "data": {
                "group_size": len(group.generations),
                "status": "completed",
                "generations": [{"generationId": g.id, **g.record(now)} for g in group.generations],
            },
        }
        headers = {"X-Inference-Group-ID": group.id}
        dup = self._duplicate(group.id)
        await self._deliver("slow-group.completed", group.webhook_id, headers, payload, dup)

    # -- delivery -------------------------------------------------------------------------

    async def _deliver(
        self,
        event: str,
        webhook_id: str,
        extra_headers: dict[str, str],
        payload: dict[str, Any],
        duplicate: bool,
    ) -> None:
        counts = self._core.webhook
        base = {"User-Agent": USER_AGENT, "X-Inference-Webhook-ID": webhook_id}
        if not await self._send("OPTIONS", base, None):
            counts["events_failed"] += 1
            return
        headers = {
            **base,
            "X-Inference-Event": event,
            "Content-Type": "application/json",
            **extra_headers,
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        if not await self._send("POST", headers, body):
            counts["events_failed"] += 1
            return
        counts["events_delivered"] += 1
        if duplicate:
            counts["duplicates"] += 1
            await self._send("POST", headers, body)

    async def _send(self, method: str, headers: dict[str, str], body: bytes | None) -> bool:
        """One request with retries; True once the receiver answered 2xx."""
        url = self._config.webhook_url
        assert url is not None
        client, counts, cfg = self._http(), self._core.webhook, self._config
        for attempt in range(cfg.webhook_retries + 1):
            if attempt:
                counts["retries"] += 1
                await asyncio.sleep(cfg.webhook_backoff * 2 ** (attempt - 1))
            counts["options_checks" if method == "OPTIONS" else "attempts"] += 1
            try:
                resp = await client.request(method, url, headers=headers, content=body)
            except httpx.TransportError:  # timeouts and connection errors alike
                continue
            if 200 <= resp.status_code < 300:
                if method == "POST":
                    counts["acknowledged"] += 1
                return True
            if resp.status_code < 500:
                return False
        return False
