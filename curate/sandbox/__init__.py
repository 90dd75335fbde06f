"""The sandbox: a local fake of inference.net's background-generation API.

It owns everything the tests, the demo and the benchmarks need to stand in for the real
service: a real HTTP server on 127.0.0.1 answering the documented endpoints (single and group
submit on ``/v1/slow`` and ``/v1/async``, ``GET /v1/generation/{id}``, group results, async
embeddings) with the documented shapes; generations moving Queued -> In Progress ->
Success/Failed on a seeded clock; Bearer auth; a sliding-window rate limit answering 429 with
Retry-After; injectable faults (5xx, stalls past client timeouts, truncated bodies, 429s);
webhook deliveries with the OPTIONS check, the ``X-Inference-*`` headers, retries and
duplicates; and counters of every call it served. Response contents come from
:mod:`curate.synthetic`, so they are deterministic per seed.

Ways to run it:

* in-process, for tests: ``with Sandbox(queue_delay=0.01, run_delay=0.02) as sb: ...``;
* in the foreground: :func:`run_forever` (what ``curate sandbox`` calls);
* as a child process: ``python -m curate.sandbox --port 8123`` or :class:`SandboxProcess`.

Semantics worth knowing before relying on them:

* Every request body is read to its end before any answer, so early answers never leave bytes
  on a kept-alive connection. Then, for ``/v1/...`` calls: count the call, check the Bearer key
  (401), the rate window (429), the injected faults, and only then route.
* Rate limit: a sliding window of ``rate_window`` seconds (default 60) over all authenticated
  ``/v1`` calls, every endpoint together; off unless ``rpm_limit`` is set. Refused calls do not
  use up quota, and ``Retry-After`` is the whole seconds (>= 1) until the oldest counted call
  leaves the window, so a client that honours it gets through.
* Timing: each generation draws its queue and run times from a log-normal around
  ``queue_delay`` / ``run_delay`` (sigma ``delay_spread``), seeded by ``seed`` and its submission
  index; state is a function of the wall clock. Generation k of seed s has the id
  ``synthetic.generation_id((s + 1) * 10**9 + k)`` and the response ``synthetic.chat_response`` of that
  same number.
* Faults apply to ``/v1`` calls only; the first active match, in injection order, wins.
  ``truncate`` sends the real answer, status unchanged, with its body cut in half and a
  Content-Length matching the half (valid HTTP, invalid JSON).
* Webhooks go to ``webhook_url`` for requests whose ``metadata.webhook_id`` is set, when the
  generation finishes (plus ``webhook_delay``): OPTIONS check, then POST; both retried up to
  ``webhook_retries`` times on 5xx, timeouts and connection errors, never on other statuses.
  A group whose body ``metadata`` or any member carries a webhook id also gets one
  ``slow-group.completed`` (documented snake_case envelope, whatever ``webhook_casing`` says).

Control endpoints, without auth: ``GET /_sandbox/stats``, ``POST /_sandbox/reset``,
``GET|POST|DELETE /_sandbox/faults``, ``POST /_sandbox/webhook-test``, ``GET /_sandbox/health``.
:class:`WebhookRecorder` is a loopback webhook receiver for tests.
"""

from curate.sandbox.config import Fault, FaultKind, SandboxConfig, SandboxStats
from curate.sandbox.recorder import RecordedRequest, WebhookRecorder
from curate.sandbox.server import READY_PREFIX, Sandbox, SandboxProcess, run_forever

__all__ = [
    "READY_PREFIX",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "Sandbox",
    "SandboxConfig",
    "SandboxProcess",
    "SandboxStats",
    "WebhookRecorder",
    "run_forever",
]
