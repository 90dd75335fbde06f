"""``curate sample``: a teacher model answers the prompts of stored traffic, K times each, each request paid once.

This is the distillation path: prompts from traffic, answers from a stronger model. For each row
of SOURCE (``curate.prompts``: its messages before the final answer, and its tools), K requests
go to MODEL through ``curate submit``'s claim-then-send path (``submit.submit_requests``): groups
of up to 50, every answer's id made durable before anything else, a request never sent twice.

What makes that hold across runs is each request's ``metadata.custom_id``::

    sample:<24 hex digits of sha256 of (row id, prompt, tools, model, temperature, max_tokens)>:<k>

so running the same sample again finds every request sent, a larger ``--n`` sends only the
samples ``k`` it did not send before, and other parameters (or a changed prompt) make new
requests. The request's metadata also names its origin, all as strings (OpenAI-style metadata
holds string values): ``curate_task`` = ``sample``, ``curate_source_id``, ``curate_sample_index``,
``curate_params`` (JSON of model, temperature, max_tokens). The answers come back through
``curate harvest`` or ``curate listen`` like any generation; the ``samples`` view joins each
answer to its prompt's row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from curate.config import Settings
from curate.errors import UsageError
from curate.prompts import Row, source_rows
from curate.store import Store
from curate.submit import SubmitOptions, SubmitSummary, submit_requests

__all__ = ["TASK", "SampleOptions", "SampleSummary", "requests_for", "sample"]

TASK = "sample"  # metadata.curate_task of a sample request


@dataclass(frozen=True, kw_only=True)
class SampleOptions:
    """What to ask the teacher: ``model``, ``n`` answers per prompt, and the sampling parameters
    (None: the API's default, and not sent). ``where`` filters SOURCE's rows (SQL over its columns);
    ``submit`` says how requests are sent (group size, rate, webhook id)."""

    model: str
    n: int = 1
    temperature: float | None = None
    max_tokens: int | None = None
    where: str | None = None
    submit: SubmitOptions = field(default_factory=SubmitOptions)

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise UsageError("--model: give the teacher model's name")
        if not 1 <= self.n <= 100:
            raise UsageError(f"--n {self.n}: expected 1 to 100 samples per prompt")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise UsageError(f"--temperature {self.temperature}: expected 0 to 2")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"--max-tokens {self.max_tokens}: expected a positive number")


@dataclass(frozen=True)
class SampleSummary:
    """How many prompts were read and requests made; what the submit did with them."""

    prompts: int
    requests: int
    submit: SubmitSummary


def _params(options: SampleOptions) -> dict[str, Any]:
    return {"model": options.model, "temperature": options.temperature, "max_tokens": options.max_tokens}


def requests_for(row: Row, options: SampleOptions) -> list[dict[str, Any]]:
    """The ``options.n`` request bodies of one row, sample index 0 to n - 1."""
    params = _params(options)
    digest = hashlib.sha256(json.dumps([row.id, row.prompt, row.tools, params], sort_keys=True,
                                       ensure_ascii=False).encode()).hexdigest()[:24]
    base: dict[str, Any] = {"model": options.model, "messages": row.prompt}
    if row.tools:
        base["tools"] = row.tools
    if options.temperature is not None:
        base["temperature"] = options.temperature
    if options.max_tokens is not None:
        base["max_tokens"] = options.max_tokens
    params_text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return [
        {**base, "metadata": {"custom_id": f"sample:{digest}:{k}", "curate_task": TASK, "curate_source_id": row.id,
                              "curate_sample_index": str(k), "curate_params": params_text}}
        for k in range(options.n)
    ]


def sample(store: Store, settings: Settings, source: str, options: SampleOptions) -> SampleSummary:
    """Send ``options.n`` teacher requests per row of ``source`` that no run has sent; see the module."""
    counted: dict[str, int] = {}

    with source_rows(store, source, options.where) as rows:
        def bodies() -> Iterator[dict[str, Any]]:
            prompts = 0
            for row in rows():
                prompts += 1
                yield from requests_for(row, options)
            counted["prompts"] = prompts

        summary = submit_requests(store, settings, bodies, f"sample:{options.model}", options.submit)
    prompts = counted.get("prompts", 0)
    return SampleSummary(prompts=prompts, requests=prompts * options.n, submit=summary)
