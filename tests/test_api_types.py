"""pydantic models at the edges: both key casings, unknown fields kept."""

from __future__ import annotations

from curate.api_types import GenerationForClient, WebhookEnvelope
from curate.synthetic import generation_record


def test_generation_reads_camel_case_and_keeps_unknown_fields() -> None:
    body = generation_record(1) | {"cost": 0.002}
    generation = GenerationForClient.model_validate(body)
    assert (generation.id, generation.state, generation.is_terminal) == (body["id"], "Success", True)
    assert generation.custom_id == "req-00000001"
    assert generation.model_extra == {"cost": 0.002}


def test_generation_reads_snake_case() -> None:
    generation = GenerationForClient.model_validate(
        {"generation_id": "g1", "state": "Queued", "state_message": "waiting", "finished_at": None}
    )
    assert (generation.id, generation.state_message, generation.is_terminal) == ("g1", "waiting", False)


def test_webhook_envelope_in_both_casings_gives_its_generation() -> None:
    data = generation_record(2)
    del data["id"]
    for keys in (("webhookId", "generationId"), ("webhook_id", "generation_id")):
        envelope = WebhookEnvelope.model_validate(
            {"event": "generation.completed", keys[0]: "AhALzdz8S", keys[1]: "G2", "data": data}
        )
        assert envelope.webhook_id == "AhALzdz8S"
        (generation,) = envelope.generations()
        assert generation.id == "G2"


def test_group_envelope_gives_every_generation_and_test_event_none() -> None:
    items = [{"generationId": f"G{i}", "state": "Success"} for i in range(3)]
    group = WebhookEnvelope.model_validate(
        {"event": "slow-group.completed", "group_id": "grp", "data": {"generations": items}}
    )
    assert [g.id for g in group.generations()] == ["G0", "G1", "G2"]
    assert group.group_id == "grp"
    test = WebhookEnvelope.model_validate({"event": "webhook.test", "webhook_id": "w"})
    assert test.generations() == []
