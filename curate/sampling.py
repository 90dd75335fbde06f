"""``curate sample``: a teacher model answers the prompts of stored traffic, K times each, each request paid once.

This is the distillation path: prompts from traffic, answers from a stronger model. For each row
of SOURCE (``curate.prompts``: its messages before the final answer, and its tools), K requests
go to MODEL through ``curate submit``'s claim-then-send path (``submit.submit_requests``): groups
of up to 50, every answer's id made durable before anything else, a request never sent twice.

What makes that hold across runs is each request's ``metadata.custom_id``::

    sample:<24 hex digits of sha256 of the request less its metadata (prompt, tools, model, temperature, max_tokens)>:<k>

so running the same sample again finds every request sent, a larger ``--n`` sends only the
samples ``k`` it did not send before, and other parameters (or a changed prompt) make new
requests. Rows sharing a prompt are sampled once; the teacher's answers (in ``chat`` once
harvested) are left out of SOURCE, and would share their source row's prompt anyway. A sample
that came back Failed is sent again only when asked (``retry_failed``), as a new attempt
(``submissions.attempt_id``). The request's metadata also names its origin, all as strings (OpenAI-style metadata
holds string values): ``curate_task`` = ``sample``, ``curate_source_id``, ``curate_sample_index``,
``curate_params`` (JSON of model, temperature, max_tokens). The answers come back through
``curate harvest`` or ``curate listen`` like any generation; the ``samples`` view joins each
answer to its prompt's row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from curate import submissions
from curate.config import Settings
from curate.errors import UsageError
from curate.prompts import SAMPLE_TASK, Row, source_rows
from curate.store import FOREVER, Store
from curate.submit import SubmitOptions, SubmitSummary, submit_requests

__all__ = ["TASK", "SampleOptions", "SampleSummary", "requests_for", "sample"]

TASK = SAMPLE_TASK  # metadata.curate_task of a sample request


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
    retried: int = 0  # samples whose every attempt had failed, sent again (--retry-failed)


def _params(options: SampleOptions) -> dict[str, Any]:
    return {"model": options.model, "temperature": options.temperature, "max_tokens": options.max_tokens}


def prompt_digest(row: Row, options: SampleOptions) -> str:
    """What a sample request is keyed on: the request as sent, less its metadata (prompt, tools,
    model and parameters). Two rows with one prompt share their samples; a sample's own row (whose
    prompt is its source's) finds its prompt already sampled."""
    return submissions.request_digest(_body(row, options), 24)


def _body(row: Row, options: SampleOptions) -> dict[str, Any]:
    body: dict[str, Any] = {"model": options.model, "messages": row.prompt}
    if row.tools:
        body["tools"] = row.tools
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.max_tokens is not None:
        body["max_tokens"] = options.max_tokens
    return body


def requests_for(row: Row, options: SampleOptions, retries: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The ``options.n`` request bodies of one row, sample index 0 to n - 1 (``retries``: the first
    custom_ids to send again, with their last attempt; see ``sample``)."""
    return _requests(row, options, prompt_digest(row, options), retries or {})


def _requests(row: Row, options: SampleOptions, digest: str, retries: dict[str, int]) -> list[dict[str, Any]]:
    body = _body(row, options)
    params_text = json.dumps(_params(options), sort_keys=True, separators=(",", ":"))
    return [{**body, "metadata": {
        "custom_id": submissions.next_attempt(f"sample:{digest}:{k}", retries), "curate_task": TASK,
        "curate_source_id": row.id, "curate_sample_index": str(k), "curate_params": params_text}}
        for k in range(options.n)]


def sample(store: Store, settings: Settings, source: str, options: SampleOptions, *,
           retry_failed: bool = False) -> SampleSummary:
    """Send ``options.n`` teacher requests per prompt of ``source`` that no run has sent; see the module.

    Rows sharing a prompt (and the teacher's own answers, whose prompt is their source row's) are
    sampled once, as the first of them by id. ``retry_failed``: also send again, as a new attempt,
    each sample whose every attempt came back Failed (each attempt is paid for; none is sent twice)."""
    counted: dict[str, int] = {}
    retries: dict[str, int] = {}
    if retry_failed:
        with store.read(wait=FOREVER) as con:
            retries = submissions.failed_attempts(con, "sample:", "g.state = 'Success'")

    with source_rows(store, source, options.where) as rows:
        def bodies() -> Iterator[dict[str, Any]]:
            prompts, retried, seen = 0, 0, set()
            for row in rows():
                digest = prompt_digest(row, options)
                if digest in seen:
                    continue
                seen.add(digest)
                prompts += 1
                for body in _requests(row, options, digest, retries):
                    retried += submissions.RETRY_SEPARATOR in body["metadata"]["custom_id"]
                    yield body
            counted["prompts"], counted["retried"] = prompts, retried

        summary = submit_requests(store, settings, bodies, f"sample:{options.model}", options.submit)
    prompts = counted.get("prompts", 0)
    return SampleSummary(prompts=prompts, requests=prompts * options.n, submit=summary,
                         retried=counted.get("retried", 0))
