"""The sandbox's settings, its fault descriptions and its counters, as pydantic models.

They are models rather than plain dicts because they cross process boundaries: a config goes to
``python -m curate.sandbox --config-json``, a fault goes to ``POST /_sandbox/faults``, and stats
come back from ``GET /_sandbox/stats``; validation happens once, at those edges.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Fault", "FaultKind", "SandboxConfig", "SandboxStats"]

FaultKind = Literal["error", "slow", "truncate", "rate_limit"]


class SandboxConfig(BaseModel):
    """Everything that shapes one sandbox run; defaults suit an interactive demo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Interface to bind; keep it on loopback.")
    port: int = Field(default=0, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    api_key: str = Field(
        default="sandbox-key", min_length=1, description="The only Bearer key accepted."
    )
    seed: int = Field(
        default=0, description="Seeds ids, timings, failures, contents, faults, duplicates."
    )
    visibility_delay: float = Field(
        default=0.05, ge=0, description="Seconds after submit during which GET answers 404."
    )
    queue_delay: float = Field(default=0.5, ge=0, description="Mean seconds spent Queued.")
    run_delay: float = Field(default=1.5, ge=0, description="Mean seconds spent In Progress.")
    delay_spread: float = Field(
        default=0.5,
        ge=0,
        description="Sigma of the log-normal around each mean; 0 gives exact means.",
    )
    failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of generations that fail."
    )
    rpm_limit: int | None = Field(
        default=None,
        ge=1,
        description="API calls allowed per rate window (all endpoints); None is off.",
    )
    rate_window: float = Field(
        default=60.0, gt=0, description="Length in seconds of the sliding window."
    )
    webhook_url: str | None = Field(
        default=None, description="Where deliveries go for requests carrying metadata.webhook_id."
    )
    webhook_casing: Literal["camel", "snake"] = Field(
        default="camel",
        description="webhookId/generationId (camel) or webhook_id/generation_id (snake).",
    )
    webhook_duplicate_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of acknowledged deliveries sent a second time."
    )
    webhook_retries: int = Field(
        default=3, ge=0, description="Retries after a 5xx/timeout/conn error."
    )
    webhook_backoff: float = Field(
        default=0.5, ge=0, description="First retry wait in seconds; doubles at each retry."
    )
    webhook_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for the receiver."
    )
    webhook_delay: float = Field(
        default=0.0, ge=0, description="Seconds between a generation finishing and its delivery."
    )


class Fault(BaseModel):
    """A misbehaviour applied to matching API calls (``/v1/...`` only, never ``/_sandbox``).

    ``path`` is an ``fnmatch`` glob over the request path, ``method`` an optional HTTP method.
    With neither ``times`` nor ``probability`` the fault hits the next matching call only; with
    ``times`` it hits the next N; with ``probability`` each matching call is hit with that
    (seeded) chance, forever unless ``times`` also caps the number of hits.
    """

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    path: str = "/v1/*"
    method: str | None = None
    times: int | None = Field(default=None, ge=1)
    probability: float | None = Field(default=None, ge=0, le=1)
    status: Literal[500, 502, 503, 504] = Field(default=503, description="For kind='error'.")
    after: bool = Field(
        default=False,
        description="For kind='error': the call takes effect first (a POST creates its generations), "
        "then its answer is replaced by the error, as when a gateway times out after the API accepted.",
    )
    delay: float = Field(
        default=5.0, ge=0, description="For kind='slow': seconds before answering."
    )
    retry_after: int = Field(
        default=1, ge=0, description="For kind='rate_limit': Retry-After seconds."
    )
    retry_after_http_date: bool = Field(
        default=False, description="For kind='rate_limit': send Retry-After as an HTTP date."
    )

    @model_validator(mode="after")
    def _default_to_once(self) -> Fault:
        if self.times is None and self.probability is None:
            self.times = 1
        if self.method is not None:
            self.method = self.method.upper()
        return self


class SandboxStats(BaseModel):
    """A snapshot of what the sandbox served since start (or the last reset)."""

    calls_total: int = 0
    calls_by_endpoint: dict[str, int] = Field(default_factory=dict)
    responses_by_status: dict[str, int] = Field(default_factory=dict)
    calls_per_generation: dict[str, int] = Field(default_factory=dict)
    calls_per_group: dict[str, int] = Field(default_factory=dict)
    unauthorized: int = 0
    rate_limit_violations: int = 0
    throttled: int = Field(
        default=0, description="429s served: rate-limit violations plus 429 faults."
    )
    faults_served: dict[str, int] = Field(default_factory=dict)
    submitted: int = Field(default=0, description="Generations created (group members included).")
    groups_submitted: int = 0
    webhook_options_checks: int = 0
    webhook_attempts: int = Field(
        default=0, description="POSTs sent: retries and duplicates included."
    )
    webhook_acknowledged: int = Field(default=0, description="POSTs answered 2xx.")
    webhook_retries: int = 0
    webhook_duplicates: int = 0
    webhook_events_delivered: int = 0
    webhook_events_failed: int = 0
