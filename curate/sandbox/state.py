"""The sandbox's in-memory world: generations, groups, the rate window, faults and counters.

Everything here is touched only from the server's event loop thread, which is why there are no
locks; :class:`~curate.sandbox.server.Sandbox` hops onto that loop for reads from other threads.
A generation's state is a pure function of the wall clock and of its seeded timings, so polling
more often never makes it finish sooner, and two runs with one seed draw the same timings.
"""

from __future__ import annotations

import fnmatch
import json
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from curate.sandbox.config import Fault, SandboxConfig, SandboxStats
from curate.synthetic import chat_response, generation_id

__all__ = ["Core", "Generation", "Group", "RequestError", "iso"]

QUEUED, IN_PROGRESS, SUCCESS, FAILED = "Queued", "In Progress", "Success", "Failed"
TERMINAL = frozenset((SUCCESS, FAILED))

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_FAILURE_MESSAGES = (
    "Model worker error: context length exceeded",
    "Model worker error: upstream timeout",
    "Generation failed: worker crashed while decoding",
)
_STATE_MESSAGES = {
    QUEUED: "Waiting for an available worker",
    IN_PROGRESS: "Generation in progress",
    SUCCESS: "Generation completed",
}
# Ids of generation k under seed s come from synthetic.generation_id((s + 1) * _SEED_STRIDE + k):
# never the ids of synthetic.generation_record(k), which the samples, tests and benchmarks use
# for other contents, so a store holding both never sees one id with two meanings.
_SEED_STRIDE = 1_000_000_000
MAX_GROUP = 50


def iso(ts: float) -> str:
    """ISO 8601 with milliseconds and a ``Z``, as inference.net formats instants."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class RequestError(Exception):
    """A client error, answered as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, type_: str, code: str) -> None:
        super().__init__(message)
        self.status, self.type, self.code = status, type_, code

    def body(self) -> bytes:
        return error_body(str(self), self.type, self.code)


def error_body(message: str, type_: str, code: str) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "code": code}})


def _bad_request(message: str) -> RequestError:
    return RequestError(400, message, "invalid_request_error", "invalid_request")


@dataclass(slots=True, eq=False)
class Generation:
    id: str
    item_seed: int
    kind: Literal["chat", "embedding"]
    request: dict[str, Any]
    submitted: float
    visible_at: float
    dispatch_at: float
    finish_at: float
    failure: str | None
    webhook_id: str | None
    group_id: str | None = None
    # One body per state: a state's body never changes, so GET serialises it once.
    bodies: dict[str, bytes] = field(default_factory=dict)
    response: dict[str, Any] | None = None

    def state(self, now: float) -> str:
        if now < self.dispatch_at:
            return QUEUED
        if now < self.finish_at:
            return IN_PROGRESS
        return FAILED if self.failure else SUCCESS

    def record(self, now: float) -> dict[str, Any]:
        """The GenerationForClient body at ``now``."""
        state = self.state(now)
        terminal = state in TERMINAL
        if state == SUCCESS and self.response is None:
            self.response = self._make_response()
        return {
            "id": self.id,
            "state": state,
            "stateMessage": self.failure if state == FAILED else _STATE_MESSAGES[state],
            "request": self.request,
            "response": self.response if state == SUCCESS else None,
            "dispatchedAt": iso(self.dispatch_at) if state != QUEUED else None,
            "finishedAt": iso(self.finish_at) if terminal else None,
        }

    def body(self, now: float) -> bytes:
        state = self.state(now)
        cached = self.bodies.get(state)
        if cached is None:
            cached = self.bodies[state] = _dumps(self.record(now))
        return cached

    def _make_response(self) -> dict[str, Any]:
        created = int(self.finish_at)
        if self.kind == "chat":
            return chat_response(self.item_seed, self.request, created=created)
        return embedding_response(self.item_seed, self.request, created=created)


@dataclass(slots=True, eq=False)
class Group:
    id: str
    generations: list[Generation]
    webhook_id: str | None

    @property
    def finish_at(self) -> float:
        return max(g.finish_at for g in self.generations)

    @property
    def visible_at(self) -> float:
        return max(max(g.visible_at, g.finish_at) for g in self.generations)


def embedding_response(item_seed: int, request: dict[str, Any], *, created: int) -> dict[str, Any]:
    """A small deterministic OpenAI embeddings response (8 floats per input)."""
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    rng = random.Random(f"emb-{item_seed}")
    tokens = sum(len(str(x).split()) for x in inputs) * 4 // 3 or 1
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": [round(rng.uniform(-1, 1), 6) for _ in range(8)],
            }
            for i in range(len(inputs))
        ],
        "model": request["model"],
        "created": created,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def validate_chat(body: Any, where: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad_request(f"{where} must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad_request(f"{where}: 'model' is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad_request(f"{where}: messages[{i}] must be an object with a 'role'")
    _check_metadata(body, where)
    return body


def validate_embedding(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad_request("'model' is required")
    inp = body.get("input")
    if not (isinstance(inp, str) and inp) and not (isinstance(inp, list) and inp):
        raise _bad_request("'input' must be a non-empty string or list")
    _check_metadata(body, "body")
    return body


def validate_group(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise _bad_request("body must be an object with a 'requests' list")
    reqs = body["requests"]
    if not 1 <= len(reqs) <= MAX_GROUP:
        raise _bad_request(f"a group holds 1 to {MAX_GROUP} requests, got {len(reqs)}")
    _check_metadata(body, "body")
    return [validate_chat(r, f"requests[{i}]") for i, r in enumerate(reqs)]


def _check_metadata(body: dict[str, Any], where: str) -> None:
    md = body.get("metadata")
    if md is not None and not isinstance(md, dict):
        raise _bad_request(f"{where}: 'metadata' must be an object")


def webhook_id_of(body: dict[str, Any]) -> str | None:
    wid = (body.get("metadata") or {}).get("webhook_id")
    return wid if isinstance(wid, str) and wid else None


class _ActiveFault:
    __slots__ = ("fault", "left", "rng")

    def __init__(self, fault: Fault, rng: random.Random) -> None:
        self.fault, self.left, self.rng = fault, fault.times, rng


class Core:
    """Generations, groups, limits and counters of one sandbox."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.generations: dict[str, Generation] = {}
        self.groups: dict[str, Group] = {}
        self._n_generations = 0
        self._n_groups = 0
        self._n_faults = 0
        self._faults: list[_ActiveFault] = []
        self._window: deque[float] = deque()
        self.reset_stats()

    # -- counters -------------------------------------------------------------------------

    def reset_stats(self) -> None:
        self.calls_total = 0
        self.calls_by_endpoint: Counter[str] = Counter()
        self.responses_by_status: Counter[int] = Counter()
        self.calls_per_generation: Counter[str] = Counter()
        self.calls_per_group: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self.unauthorized = self.rate_limit_violations = 0
        self.submitted = self.groups_submitted = 0
        self.webhook: Counter[str] = Counter()

    def stats(self) -> SandboxStats:
        return SandboxStats(
            calls_total=self.calls_total,
            calls_by_endpoint=dict(self.calls_by_endpoint),
            responses_by_status={str(k): v for k, v in sorted(self.responses_by_status.items())},
            calls_per_generation=dict(self.calls_per_generation),
            calls_per_group=dict(self.calls_per_group),
            unauthorized=self.unauthorized,
            rate_limit_violations=self.rate_limit_violations,
            throttled=self.responses_by_status.get(429, 0),
            faults_served=dict(self.faults_served),
            submitted=self.submitted,
            groups_submitted=self.groups_submitted,
            **{f"webhook_{k}": v for k, v in self.webhook.items()},
        )

    # -- rate limit -----------------------------------------------------------------------

    def admit(self, now: float) -> int | None:
        """Record one call in the sliding window; over the limit, the Retry-After seconds.

        Refused calls are not recorded, so a client that honours Retry-After gets through.
        """
        limit = self.config.rpm_limit
        if limit is None:
            return None
        window, horizon = self._window, now - self.config.rate_window
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) < limit:
            window.append(now)
            return None
        self.rate_limit_violations += 1
        return max(1, math.ceil(window[0] - horizon))

    # -- faults ---------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        rng = random.Random(f"fault-{self.config.seed}-{self._n_faults}")
        self._n_faults += 1
        self._faults.append(_ActiveFault(fault, rng))

    def clear_faults(self) -> None:
        self._faults.clear()

    def active_faults(self) -> list[Fault]:
        return [a.fault.model_copy(update={"times": a.left}) for a in self._faults]

    def pick_fault(self, method: str, path: str) -> Fault | None:
        """The first active fault matching this call, consuming one of its hits."""
        for active in self._faults:
            f = active.fault
            if f.method is not None and f.method != method:
                continue
            if not fnmatch.fnmatchcase(path, f.path):
                continue
            if f.probability is not None and active.rng.random() >= f.probability:
                continue
            if active.left is not None:
                active.left -= 1
                if active.left <= 0:
                    self._faults.remove(active)
            self.faults_served[f.kind] += 1
            return f
        return None

    # -- generations ----------------------------------------------------------------------

    def _new_generation(
        self, kind: Literal["chat", "embedding"], request: dict[str, Any], now: float
    ) -> Generation:
        cfg = self.config
        index = self._n_generations
        self._n_generations += 1
        item_seed = (cfg.seed + 1) * _SEED_STRIDE + index
        gid = generation_id(item_seed)
        while gid in self.generations:  # astronomically unlikely, but ids must stay unique
            gid = _nanoid(random.Random(f"{gid}-again"))
        rng = random.Random(item_seed)
        dispatch_at = now + _draw(rng, cfg.queue_delay, cfg.delay_spread)
        finish_at = dispatch_at + _draw(rng, cfg.run_delay, cfg.delay_spread)
        failure = rng.choice(_FAILURE_MESSAGES) if rng.random() < cfg.failure_rate else None
        gen = Generation(
            id=gid,
            item_seed=item_seed,
            kind=kind,
            request=request,
            submitted=now,
            visible_at=now + cfg.visibility_delay,
            dispatch_at=dispatch_at,
            finish_at=finish_at,
            failure=failure,
            webhook_id=webhook_id_of(request),
        )
        self.generations[gid] = gen
        self.submitted += 1
        return gen

    def submit(self, kind: Literal["chat", "embedding"], request: dict[str, Any]) -> Generation:
        return self._new_generation(kind, request, time.time())

    def submit_group(self, requests: list[dict[str, Any]], group_body: dict[str, Any]) -> Group:
        now = time.time()
        gens = [self._new_generation("chat", r, now) for r in requests]
        group_id = _nanoid(random.Random(f"group-{self.config.seed}-{self._n_groups}"))
        self._n_groups += 1
        for g in gens:
            g.group_id = group_id
        wid = webhook_id_of(group_body) or next((g.webhook_id for g in gens if g.webhook_id), None)
        group = Group(group_id, gens, wid)
        self.groups[group_id] = group
        self.groups_submitted += 1
        return group

    def generation_body(self, gid: str, now: float) -> bytes | None:
        gen = self.generations.get(gid)
        if gen is None or now < gen.visible_at:
            return None
        return gen.body(now)

    def group_body(self, group_id: str, now: float) -> bytes | None:
        group = self.groups.get(group_id)
        if group is None or now < group.visible_at:
            return None
        return b'{"generations":[' + b",".join(g.body(now) for g in group.generations) + b"]}"


def _draw(rng: random.Random, mean: float, spread: float) -> float:
    """A log-normal delay whose mean is ``mean``: most are short, a few are long."""
    if mean <= 0:
        return 0.0
    if spread <= 0:
        return mean
    return mean * math.exp(rng.gauss(0.0, spread) - spread * spread / 2)


def _nanoid(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(21))
