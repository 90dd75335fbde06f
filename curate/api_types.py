"""pydantic models of inference.net's bodies, for the edges where a body is read in Python.

Field names beyond the documented ones are unknown, so every model keeps extra fields
(``extra="allow"``) and reads both key casings; nothing here is the stored form: the store keeps
the raw body, and these models only help code that must look inside one (the client, the
listener) do so defensively.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

__all__ = ["GENERATION_STATES", "TERMINAL_STATES", "GenerationForClient", "WebhookEnvelope"]

GENERATION_STATES = ("Queued", "In Progress", "Success", "Failed")
TERMINAL_STATES = ("Success", "Failed")

_MODEL_CONFIG = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class GenerationForClient(BaseModel):
    """``GET /v1/generation/{id}``, and the ``data`` of a completion webhook."""

    model_config = _MODEL_CONFIG

    id: str | None = Field(
        default=None, validation_alias=AliasChoices("id", "generationId", "generation_id")
    )
    state: str | None = None
    state_message: str | None = Field(
        default=None, validation_alias=AliasChoices("stateMessage", "state_message")
    )
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    dispatched_at: str | None = Field(
        default=None, validation_alias=AliasChoices("dispatchedAt", "dispatched_at")
    )
    finished_at: str | None = Field(
        default=None, validation_alias=AliasChoices("finishedAt", "finished_at")
    )

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def custom_id(self) -> str | None:
        metadata = (self.request or {}).get("metadata") or {}
        value = metadata.get("custom_id") if isinstance(metadata, dict) else None
        return value if isinstance(value, str) else None


WebhookEvent = Literal[
    "generation.completed", "async-embedding.completed", "slow-group.completed", "webhook.test"
]


class WebhookEnvelope(BaseModel):
    """A webhook delivery's body, in either key casing."""

    model_config = _MODEL_CONFIG

    event: str
    timestamp: str | None = None
    webhook_id: str | None = Field(
        default=None, validation_alias=AliasChoices("webhook_id", "webhookId")
    )
    generation_id: str | None = Field(
        default=None, validation_alias=AliasChoices("generation_id", "generationId")
    )
    group_id: str | None = Field(default=None, validation_alias=AliasChoices("group_id", "groupId"))
    data: dict[str, Any] | None = None

    def generations(self) -> list[GenerationForClient]:
        """The generations the delivery carries: none, one, or a group's."""
        if self.data is None or self.event == "webhook.test":
            return []
        if self.event == "slow-group.completed":
            items = self.data.get("generations") or []
            return [GenerationForClient.model_validate(item) for item in items if isinstance(item, dict)]
        generation = GenerationForClient.model_validate(self.data)
        if generation.id is None and self.generation_id is not None:
            generation = generation.model_copy(update={"id": self.generation_id})
        return [generation]
