"""Deterministic synthetic inference.net traffic: requests, responses and GenerationForClient bodies.

One generator serves the sandbox, the demo, the tests and the benchmarks, so that what they
exercise looks alike: multi-turn chats, tool offers answered with ``tool_calls``, some
``finish_reason == "length"``, some ``Failed`` generations, and non-ASCII text. Everything is a
pure function of its integer seed, so a test can name the record it expects.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "JUDGE_MARK",
    "MODELS",
    "THINKING_MARK",
    "chat_request",
    "chat_response",
    "generation_id",
    "generation_record",
]

MODELS = (
    "meta-llama/llama-3.2-3b-instruct/fp-16",
    "meta-llama/llama-3.1-8b-instruct/fp-8",
    "mistralai/mistral-nemo-12b-instruct/fp-8",
    "qwen/qwen3-8b/bf-16",
)

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

_TOPICS = (
    "the capital of France",
    "how photosynthesis works",
    "a haiku about autumn rain",
    "the difference between TCP and UDP",
    "why the sky is blue",
    "a recipe for crème brûlée",
    "the history of the Zürich Hauptbahnhof",
    "東京の天気について",
    "the proof that √2 is irrational",
    "a summary of Don Quixote",
    "how to sort a list in Python",
    "Привет — how do you say hello in Russian",
)

_WORDS = [
    "the", "model", "answers", "with", "care", "and", "precision", "while", "keeping", "every", "detail",
    "of", "the", "request", "in", "view", "so", "that", "the", "reader", "can", "follow", "each", "step",
    "of", "the", "reasoning", "from", "the", "first", "premise", "to", "the", "final", "conclusion",
    "without", "losing", "track", "of", "the", "argument", "café", "naïve", "déjà", "vu", "über", "straße",
    "漢字", "emoji", "🙂",
]

_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}

_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


def generation_id(seed: int) -> str:
    """A 21-character nanoid-style id, as inference.net issues them, unique per seed."""
    rng = random.Random(f"id-{seed}")
    return "".join(rng.choice(_ALPHABET) for _ in range(21))


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words)).capitalize() + "."


def chat_request(seed: int, *, custom_id: str | None = None) -> dict[str, Any]:
    """An OpenAI chat request body as a client would submit it to ``/v1/slow/chat/completions``."""
    rng = random.Random(f"req-{seed}")
    topic = rng.choice(_TOPICS)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. " + _sentence(rng, 12)}
    ]
    for turn in range(rng.choice((0, 0, 1, 2))):
        messages.append({"role": "user", "content": f"Tell me about {topic}, part {turn + 1}."})
        messages.append({"role": "assistant", "content": _sentence(rng, rng.randint(20, 60))})
    messages.append({"role": "user", "content": f"Tell me about {topic}. " + _sentence(rng, 25)})
    body: dict[str, Any] = {
        "model": rng.choice(MODELS),
        "messages": messages,
        "max_tokens": rng.choice((256, 512, 1024)),
        "temperature": round(rng.random(), 2),
        "metadata": {"custom_id": custom_id if custom_id is not None else f"req-{seed:08d}"},
    }
    if seed % 7 == 3:
        body["tools"] = [_WEATHER_TOOL]
    return body


# A model whose name holds this answers as a reasoning model does: its thinking beside the answer,
# in choices[0].message.reasoning_content (DeepSeek's and vLLM's key).
THINKING_MARK = "think"

# What marks a judge's request (curate.judging renders the judged answer under this heading): the
# sandbox answers it as a judge would, without reading curate's metadata, as a real model could not.
JUDGE_MARK = "THE ANSWER TO JUDGE"


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).digest()[:8])


def _judgment(judged: str, rng_key: int) -> str:
    """A judge's answer to a judged text: a score from the text (longer answers score higher, and
    the text's digest spreads them), usually as the JSON asked for; some wrapped in a code fence,
    some with the score as a string, and one in twelve not JSON at all."""
    score = 1 + rng_key % 6 + min(4, len(judged.split()) // 40)
    rationale = f"The answer covers {len(judged.split())} words of the request."
    shape = rng_key % 12
    if shape == 0:
        return f"I would rate this answer {score} out of ten. {rationale}"
    if shape == 1:
        return f"```json\n{json.dumps({'score': score, 'rationale': rationale})}\n```"
    if shape == 2:
        return json.dumps({"score": str(score), "rationale": rationale})
    return json.dumps({"score": score, "rationale": rationale})


def chat_response(seed: int, request: dict[str, Any], *, created: int) -> dict[str, Any]:
    """The ChatCompletion a model would return for ``request``: tool calls when tools are offered,
    a judgment when asked to judge (``JUDGE_MARK``), and with ``reasoning_content`` beside the answer
    when the model's name holds ``THINKING_MARK``. A request ``curate sample`` made is answered
    from its messages, model, temperature and, above temperature 0, its sample index (a model at
    temperature 0 answers alike every time), so its K samples differ as a teacher's would."""
    metadata: dict[str, Any] = request["metadata"] if isinstance(request.get("metadata"), dict) else {}
    messages = request["messages"]
    last = str(messages[-1].get("content") or "") if messages and isinstance(messages[-1], dict) else ""
    if metadata.get("curate_task") == "sample":
        temperature = request.get("temperature")
        index = metadata.get("curate_sample_index") if temperature != 0 else "0"
        seed = _digest(messages, request.get("model"), temperature, index)
    rng = random.Random(f"resp-{seed}")
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request["messages"]) * 4 // 3
    message: dict[str, Any] = {"role": "assistant"}
    if JUDGE_MARK in last:
        judged = last.split(JUDGE_MARK, 1)[1]
        message["content"] = _judgment(judged, _digest(judged))
        finish_reason = "stop"
        completion_tokens = 30
    elif request.get("tools"):
        city = rng.choice(("Paris", "Zürich", "東京", "São Paulo"))
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": f"call_{generation_id(seed)[:12]}",
                "type": "function",
                "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
            }
        ]
        finish_reason = "tool_calls"
        completion_tokens = 18
    else:
        n_words = rng.randint(40, 160)
        message["content"] = _sentence(rng, n_words)
        finish_reason = "length" if seed % 11 == 5 else "stop"
        completion_tokens = n_words * 4 // 3
    if THINKING_MARK in str(request.get("model", "")).lower():
        message["reasoning_content"] = "Let me think. " + _sentence(rng, rng.randint(15, 40))
        completion_tokens += 30
    return {
        "id": f"chatcmpl-{generation_id(seed)}",
        "object": "chat.completion",
        "created": created,
        "model": request["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def generation_record(seed: int, *, state: str | None = None) -> dict[str, Any]:
    """A GenerationForClient body as ``GET /v1/generation/{id}`` returns it.

    About one in twenty-three seeds is ``Failed``; pass ``state`` to force one
    (``Queued`` and ``In Progress`` have no response and no ``finishedAt``).
    """
    request = chat_request(seed)
    dispatched = _EPOCH + timedelta(seconds=seed * 7 % (30 * 86400), milliseconds=seed % 1000)
    finished = dispatched + timedelta(milliseconds=400 + (seed * 37) % 9000)
    if state is None:
        state = "Failed" if seed % 23 == 17 else "Success"
    record: dict[str, Any] = {
        "id": generation_id(seed),
        "state": state,
        "stateMessage": "",
        "request": request,
        "response": None,
        "dispatchedAt": _iso(dispatched) if state != "Queued" else None,
        "finishedAt": None,
    }
    if state == "Success":
        record["stateMessage"] = "Generation completed"
        record["response"] = chat_response(seed, request, created=int(finished.timestamp()))
        record["finishedAt"] = _iso(finished)
    elif state == "Failed":
        record["stateMessage"] = "Model worker error: context length exceeded"
        record["finishedAt"] = _iso(finished)
    return record
