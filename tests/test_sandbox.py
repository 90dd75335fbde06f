"""The sandbox behaves like inference.net's background-generation API, faults included.

Every test runs a real server on 127.0.0.1 and talks to it with a real httpx client; delays are
tens of milliseconds so that the file runs in seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from curate.sandbox import Sandbox, SandboxProcess, WebhookRecorder
from curate.synthetic import chat_request, generation_id

FAST: dict[str, Any] = {
    "visibility_delay": 0.0,
    "queue_delay": 0.01,
    "run_delay": 0.01,
    "delay_spread": 0.0,
    "webhook_backoff": 0.01,
    "webhook_timeout": 2.0,
}
STATES = ("Queued", "In Progress", "Success", "Failed")
TOOLS_SEED = 3  # synthetic.chat_request offers tools when seed % 7 == 3


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def make(**overrides: Any) -> Sandbox:
        sb = Sandbox(**{**FAST, **overrides}).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def recorder() -> Iterator[WebhookRecorder]:
    with WebhookRecorder() as hook:
        yield hook


def submit(client: httpx.Client, seed: int = 0, *, mode: str = "slow", **metadata: Any) -> str:
    body = chat_request(seed)
    body["metadata"].update(metadata)
    resp = client.post(f"/v1/{mode}/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    gid: str = resp.json()["id"]
    return gid


def wait_terminal(client: httpx.Client, gid: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get(f"/v1/generation/{gid}")
        body: dict[str, Any] = resp.json() if resp.status_code == 200 else {}
        if body.get("state") in ("Success", "Failed"):
            return body
        time.sleep(0.005)
    raise AssertionError(f"{gid} not terminal after {timeout}s")


def assert_openai_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["message"]


# -- submission and state ---------------------------------------------------------------


def test_submit_answers_a_21_char_id_at_once(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(queue_delay=5.0)
    with sb.client() as client:
        resp = client.post("/v1/slow/chat/completions", json=chat_request(1))
    assert resp.status_code == 200
    assert set(resp.json()) == {"id"} and len(resp.json()["id"]) == 21
    assert resp.elapsed.total_seconds() < 1.0


def test_generation_moves_queued_in_progress_success(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(queue_delay=0.15, run_delay=0.15)
    with sb.client() as client:
        gid = submit(client, 1, custom_id="abc")
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            body = client.get(f"/v1/generation/{gid}").json()
            if not seen or seen[-1]["state"] != body["state"]:
                seen.append(body)
            if body["state"] == "Success":
                break
            time.sleep(0.01)
    queued, running, done = seen
    assert [b["state"] for b in seen] == ["Queued", "In Progress", "Success"]
    assert queued["dispatchedAt"] is None and queued["finishedAt"] is None
    assert queued["response"] is None
    assert running["dispatchedAt"] is not None and running["finishedAt"] is None
    assert running["response"] is None
    assert done["dispatchedAt"] == running["dispatchedAt"]
    assert done["finishedAt"] > done["dispatchedAt"]
    assert done["finishedAt"].endswith("Z") and len(done["finishedAt"]) == 24  # ms precision
    assert set(done) == {
        "id",
        "state",
        "stateMessage",
        "request",
        "response",
        "dispatchedAt",
        "finishedAt",
    }
    assert done["id"] == gid
    assert done["request"]["metadata"]["custom_id"] == "abc"
    assert done["response"]["object"] == "chat.completion"


def test_generation_is_404_until_visible(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(visibility_delay=0.3)
    with sb.client() as client:
        gid = submit(client)
        assert_openai_error(client.get(f"/v1/generation/{gid}"), 404)
        time.sleep(0.35)
        assert client.get(f"/v1/generation/{gid}").status_code == 200


def test_unknown_id_is_404(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        for _ in range(2):
            assert_openai_error(client.get("/v1/generation/XBKcs7F1s2oJ_AHiLMbF4"), 404)
            time.sleep(0.05)


def test_state_follows_the_clock_not_polling(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(queue_delay=0.05, run_delay=0.05)
    with sb.client() as client:
        gid = submit(client)
        time.sleep(0.2)
        body = client.get(f"/v1/generation/{gid}").json()
    assert body["state"] == "Success"
    assert sb.stats().calls_per_generation[gid] == 1


def test_same_seed_gives_same_ids_timings_and_contents(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    runs = []
    for seed in (42, 42, 43):
        sb = make_sandbox(seed=seed, queue_delay=0.02, run_delay=0.05, delay_spread=0.8)
        with sb.client() as client:
            ids = [submit(client, i) for i in range(5)]
            bodies = [wait_terminal(client, gid) for gid in ids]
        runs.append((ids, bodies))

    def run_ms(body: dict[str, Any]) -> float:
        times = [datetime.fromisoformat(body[k]) for k in ("dispatchedAt", "finishedAt")]
        return (times[1] - times[0]).total_seconds() * 1000

    (ids_a, a), (ids_b, b), (ids_c, _) = runs
    assert ids_a == ids_b and not set(ids_a) & set(ids_c)
    assert ids_a[0] == generation_id(43 * 10**9)  # as the module docstring promises
    assert [x["response"]["choices"] for x in a] == [x["response"]["choices"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert abs(run_ms(x) - run_ms(y)) <= 2  # ms-rounded instants
    assert len({round(run_ms(x)) for x in a}) > 1  # the spread does spread


def test_failure_rate_gives_failed_with_state_message(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox(failure_rate=1.0)
    with sb.client() as client:
        body = wait_terminal(client, submit(client))
    assert body["state"] == "Failed"
    assert body["stateMessage"] and body["response"] is None
    assert body["finishedAt"] is not None


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/slow/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/slow/chat/completions", {"model": "m", "messages": []}),
        ("/v1/async/group/chat/completions", {"requests": []}),
        ("/v1/slow/group/chat/completions", {"requests": [chat_request(0)] * 51}),
        ("/v1/slow/group/chat/completions", {"requests": [chat_request(0), {"model": "m"}]}),
        ("/v1/slow/embeddings", {"model": "m"}),
        ("/v1/slow/chat/completions", "not json"),
    ],
)
def test_invalid_submissions_are_400(
    make_sandbox: Callable[..., Sandbox], path: str, payload: Any
) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        if isinstance(payload, str):
            resp = client.post(path, content=payload)
        else:
            resp = client.post(path, json=payload)
    assert_openai_error(resp, 400)
    assert sb.stats().submitted == 0


def test_group_404_until_all_done_then_generations(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(queue_delay=0.05, run_delay=0.1, delay_spread=1.0)
    with sb.client() as client:
        resp = client.post(
            "/v1/async/group/chat/completions",
            json={"requests": [chat_request(i) for i in range(4)]},
        )
        assert resp.status_code == 200
        group = resp.json()
        assert set(group) == {"groupId", "groupSize"} and group["groupSize"] == 4
        url = f"/v1/async/group/{group['groupId']}/generations"
        assert_openai_error(client.get(url), 404)
        deadline = time.monotonic() + 5
        while (resp := client.get(url)).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.01)
        gens = resp.json()["generations"]
        assert [g["state"] for g in gens] == ["Success"] * 4
        assert [g["id"] for g in gens] == sb.generation_ids()
        # slow and async are aliases
        assert client.get(f"/v1/slow/group/{group['groupId']}/generations").status_code == 200
    assert sb.group_ids() == [group["groupId"]]
    assert len(sb.generation_ids()) == 4


def test_unknown_route_and_wrong_method_answer_json_errors(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        assert_openai_error(client.get("/v1/slow/nothing"), 404)
        wrong = client.post("/v1/generation/abc", json={})
    assert_openai_error(wrong, 405)
    assert wrong.headers["allow"] == "GET"


# -- content ----------------------------------------------------------------------------


def test_tools_request_gets_tool_calls(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        request = chat_request(TOOLS_SEED)
        assert request.get("tools")
        gid = client.post("/v1/slow/chat/completions", json=request).json()["id"]
        choice = wait_terminal(client, gid)["response"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])


def test_some_responses_stop_on_length_and_text_is_not_ascii(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        ids = [submit(client, i) for i in range(12)]
        time.sleep(0.05)
        raw = [client.get(f"/v1/generation/{gid}").content for gid in ids]
    reasons = [json.loads(r)["response"]["choices"][0]["finish_reason"] for r in raw]
    assert "length" in reasons and "stop" in reasons
    assert any(max(r) > 127 for r in raw)  # UTF-8 on the wire, not \\u escapes


def test_embeddings_are_accepted(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        resp = client.post(
            "/v1/async/embeddings", json={"model": "qwen/qwen3-embedding-4b", "input": ["a", "b"]}
        )
        assert resp.status_code == 200
        body = wait_terminal(client, resp.json()["id"])
    data = body["response"]["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert all(isinstance(x, float) for x in data[0]["embedding"])


# -- auth and rate limit ----------------------------------------------------------------


@pytest.mark.parametrize("header", [{"Authorization": "Bearer wrong"}, {}])
def test_wrong_bearer_is_401(make_sandbox: Callable[..., Sandbox], header: dict[str, str]) -> None:
    sb = make_sandbox()
    with httpx.Client(base_url=sb.url, headers=header, trust_env=False) as client:
        assert_openai_error(client.post("/v1/slow/chat/completions", json=chat_request(0)), 401)
        assert_openai_error(client.get("/v1/generation/x"), 401)
    assert sb.stats().unauthorized == 2 and sb.stats().submitted == 0


def test_rate_limit_answers_429_with_retry_after(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(rpm_limit=3)
    with sb.client() as client:
        statuses = [client.get("/v1/generation/x").status_code for _ in range(3)]
        resp = client.post("/v1/slow/chat/completions", json=chat_request(0))
    assert statuses == [404, 404, 404]
    assert_openai_error(resp, 429)
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    stats = sb.stats()
    assert stats.rate_limit_violations == 1 and stats.throttled == 1 and stats.submitted == 0


def test_rate_limit_window_slides(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(rpm_limit=2, rate_window=0.3)
    with sb.client() as client:
        assert [client.get("/v1/generation/x").status_code for _ in range(3)] == [404, 404, 429]
        time.sleep(0.35)
        assert client.get("/v1/generation/x").status_code == 404


def test_early_answers_drain_the_body_on_a_kept_alive_connection(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox(rpm_limit=2)
    sb.inject(kind="error", path="/v1/slow/chat/completions", times=1)
    big = json.dumps({**chat_request(0), "pad": "x" * 200_000}).encode()
    host, port = sb.url.removeprefix("http://").split(":")

    def request(sock: socket.socket, line: str, key: str, body: bytes = b"") -> int:
        head = (
            f"{line} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        length = 0
        while (header := reader.readline()) != b"\r\n":
            name, _, value = header.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        json.loads(reader.read(length))
        reader.close()
        return status

    with socket.create_connection((host, int(port)), timeout=5) as sock:
        post = "POST /v1/slow/chat/completions"
        assert request(sock, post, "wrong", big) == 401
        assert request(sock, post, sb.api_key, big) == 503  # injected, before the handler
        assert request(sock, post, sb.api_key, big) == 200
        assert request(sock, post, sb.api_key, big) == 429  # the limit is 2
        assert request(sock, "GET /_sandbox/health", "-") == 200


# -- faults -----------------------------------------------------------------------------


def test_injected_503_then_recovers(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        gid = submit(client)
        sb.inject(kind="error", status=503, method="GET", path="/v1/generation/*", times=2)
        statuses = [client.get(f"/v1/generation/{gid}").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert sb.stats().faults_served == {"error": 2}
    assert sb.faults() == []


@pytest.mark.parametrize("status", [500, 502])
def test_injected_5xx_status_is_served(make_sandbox: Callable[..., Sandbox], status: int) -> None:
    sb = make_sandbox()
    sb.inject(kind="error", status=status, path="/v1/slow/*")
    with sb.client() as client:
        assert_openai_error(client.post("/v1/slow/chat/completions", json=chat_request(0)), status)
        assert client.post("/v1/slow/chat/completions", json=chat_request(0)).status_code == 200
    assert sb.stats().submitted == 1  # the faulted call created nothing


def test_fault_only_hits_matching_method_and_path(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.inject(kind="error", method="GET", path="/v1/slow/group/*")
    with sb.client() as client:
        gid = submit(client)
        assert client.get(f"/v1/generation/{gid}").status_code == 200
        assert client.get("/v1/slow/group/nope/generations").status_code == 503


def test_truncated_body_fault(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        gid = submit(client)
        full = wait_terminal(client, gid)
        sb.inject(kind="truncate", path="/v1/generation/*")
        resp = client.get(f"/v1/generation/{gid}")
        again = client.get(f"/v1/generation/{gid}")
    whole = json.dumps(full, ensure_ascii=False, separators=(",", ":")).encode()
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.content == whole[: len(whole) // 2]
    with pytest.raises(json.JSONDecodeError):
        resp.json()
    assert again.json() == full


def test_slow_fault_exceeds_client_timeout(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.inject(kind="slow", delay=5.0, path="/v1/generation/*")
    with sb.client(timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get("/v1/generation/x")
        assert time.monotonic() - started < 1.0
        assert client.get("/v1/generation/x").status_code == 404


def test_stop_releases_a_call_stalled_by_a_slow_fault() -> None:
    sb = Sandbox(**FAST).start()
    sb.inject(kind="slow", delay=30.0)
    result: list[int] = []
    with sb.client(timeout=10) as client:
        caller = threading.Thread(
            target=lambda: result.append(client.get("/v1/generation/x").status_code)
        )
        caller.start()
        time.sleep(0.1)
        started = time.monotonic()
        sb.stop()
        caller.join(5)
    assert result == [503]
    assert time.monotonic() - started < 2.0


def test_injected_429_carries_retry_after_seconds_or_date(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox()
    sb.inject(kind="rate_limit", retry_after=7)
    sb.inject(kind="rate_limit", retry_after=30, retry_after_http_date=True)
    with sb.client() as client:
        first, second = client.get("/v1/generation/x"), client.get("/v1/generation/x")
    assert_openai_error(first, 429)
    assert first.headers["retry-after"] == "7"
    assert_openai_error(second, 429)
    when = parsedate_to_datetime(second.headers["retry-after"]).timestamp()
    assert 20 < when - time.time() <= 31
    assert sb.stats().throttled == 2 and sb.stats().rate_limit_violations == 0


def test_probabilistic_fault_is_seeded(make_sandbox: Callable[..., Sandbox]) -> None:
    patterns = []
    for _ in range(2):
        sb = make_sandbox(seed=7)
        sb.inject(kind="error", probability=0.5)
        with sb.client() as client:
            patterns.append([client.get("/v1/generation/x").status_code for _ in range(20)])
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {404, 503}


def test_faults_can_be_set_over_http(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        resp = client.post(
            "/_sandbox/faults",
            json=[
                {"kind": "error", "status": 502, "method": "GET", "times": 3},
                {"kind": "truncate", "path": "/v1/slow/*"},
            ],
        )
        assert resp.status_code == 200 and len(resp.json()["faults"]) == 2
        assert client.get("/v1/generation/x").status_code == 502
        assert client.get("/_sandbox/faults").json()["faults"][0]["times"] == 2
        assert client.delete("/_sandbox/faults").json() == {"faults": []}
        assert client.get("/v1/generation/x").status_code == 404
        assert_openai_error(client.post("/_sandbox/faults", json={"kind": "nope"}), 400)


# -- counters ---------------------------------------------------------------------------


def test_stats_count_calls_per_generation(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with sb.client() as client:
        a, b = submit(client, 0), submit(client, 1)
        for gid in (a, a, a, b):
            client.get(f"/v1/generation/{gid}")
        with httpx.Client(base_url=sb.url, trust_env=False) as anonymous:
            over_http = anonymous.get("/_sandbox/stats")
    stats = sb.stats()
    assert stats.calls_per_generation == {a: 3, b: 1}
    assert stats.calls_by_endpoint == {
        "POST /v1/slow/chat/completions": 2,
        "GET /v1/generation/{id}": 4,
    }
    assert stats.calls_total == 6 and stats.submitted == 2
    assert over_http.status_code == 200  # no key needed
    assert over_http.json()["calls_per_generation"] == {a: 3, b: 1}
    sb.reset_stats()
    assert sb.stats().calls_total == 0


# -- webhooks ---------------------------------------------------------------------------


def test_webhook_delivered_with_options_check_and_headers(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url)
    with sb.client() as client:
        gid = submit(client, 2, webhook_id="AhALzdz8S", custom_id="c-2")
        recorder.wait_for_posts(1)
        fetched = client.get(f"/v1/generation/{gid}").json()
    options, post = recorder.requests
    assert options.method == "OPTIONS" and options.received_at <= post.received_at
    assert post.path == "/hook"
    assert post.headers["x-inference-event"] == "generation.completed"
    assert post.headers["x-inference-webhook-id"] == "AhALzdz8S"
    assert post.headers["x-inference-generation-id"] == gid
    assert post.headers["user-agent"] == "Kuzco-Webhook/1.0"
    assert post.headers["content-type"] == "application/json"
    body = post.json()
    assert set(body) == {"event", "timestamp", "webhookId", "generationId", "data"}
    assert body["event"] == "generation.completed" and body["timestamp"].endswith("Z")
    assert body["webhookId"] == "AhALzdz8S" and body["generationId"] == gid
    assert body["data"] == fetched
    assert body["data"]["request"]["metadata"]["custom_id"] == "c-2"


def test_no_webhook_without_webhook_id(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url)
    with sb.client() as client:
        wait_terminal(client, submit(client))
    assert sb.wait_for_webhooks(2)
    assert recorder.requests == []


def test_webhook_snake_casing(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url, webhook_casing="snake")
    with sb.client() as client:
        gid = submit(client, webhook_id="wh1")
    body = recorder.wait_for_posts(1)[0].json()
    assert body["webhook_id"] == "wh1" and body["generation_id"] == gid
    assert "webhookId" not in body


def test_failed_generation_is_delivered_too(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url, failure_rate=1.0)
    with sb.client() as client:
        submit(client, webhook_id="wh1")
    body = recorder.wait_for_posts(1)[0].json()
    assert body["data"]["state"] == "Failed" and body["data"]["response"] is None


def test_webhook_retried_on_500(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    recorder.script(500, 503)
    sb = make_sandbox(webhook_url=recorder.url)
    with sb.client() as client:
        submit(client, webhook_id="wh1")
    posts = recorder.wait_for_posts(3)
    assert [p.status for p in posts] == [500, 503, 200]
    assert posts[0].body == posts[2].body
    assert sb.wait_for_webhooks(2)
    stats = sb.stats()
    assert (stats.webhook_attempts, stats.webhook_acknowledged, stats.webhook_retries) == (3, 1, 2)
    assert stats.webhook_events_delivered == 1 and stats.webhook_events_failed == 0


def test_webhook_gives_up_after_three_retries(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    recorder.script(500, 500, 500, 500, 500)
    sb = make_sandbox(webhook_url=recorder.url)
    with sb.client() as client:
        submit(client, webhook_id="wh1")
    recorder.wait_for_posts(4)
    assert sb.wait_for_webhooks(2)
    assert len(recorder.posts()) == 4
    assert sb.stats().webhook_events_failed == 1


def test_webhook_not_retried_on_4xx(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    recorder.script(410)
    sb = make_sandbox(webhook_url=recorder.url)
    with sb.client() as client:
        submit(client, webhook_id="wh1")
    recorder.wait_for_posts(1)
    assert sb.wait_for_webhooks(2)
    assert [p.status for p in recorder.posts()] == [410]
    assert sb.stats().webhook_events_failed == 1


def test_webhook_retried_on_timeout(make_sandbox: Callable[..., Sandbox]) -> None:
    with WebhookRecorder(post_delay=0.5) as slow_hook:
        sb = make_sandbox(webhook_url=slow_hook.url, webhook_timeout=0.1, webhook_retries=1)
        with sb.client() as client:
            submit(client, webhook_id="wh1")
        slow_hook.wait_for_posts(2)
        assert sb.wait_for_webhooks(3)
        assert [r.method for r in slow_hook.requests] == ["OPTIONS", "POST", "POST"]
        assert sb.stats().webhook_events_failed == 1


def test_webhook_not_posted_when_options_check_fails(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    with WebhookRecorder(options_status=404) as hook:
        sb = make_sandbox(webhook_url=hook.url)
        with sb.client() as client:
            submit(client, webhook_id="wh1")
        hook.wait_for(lambda rs: len(rs) >= 1)
        assert sb.wait_for_webhooks(2)
        assert [r.method for r in hook.requests] == ["OPTIONS"]


def test_webhook_duplicates(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url, webhook_duplicate_rate=1.0)
    with sb.client() as client:
        gid = submit(client, webhook_id="wh1")
    first, second = recorder.wait_for_posts(2)
    assert first.body == second.body
    assert second.headers["x-inference-generation-id"] == gid
    assert sb.wait_for_webhooks(2)
    assert sb.stats().webhook_duplicates == 1 and sb.stats().webhook_acknowledged == 2


def test_webhook_duplicate_rate_is_seeded(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url, webhook_duplicate_rate=0.5, seed=3)
    with sb.client() as client:
        ids = [submit(client, i, webhook_id="wh1") for i in range(16)]
    assert sb.wait_for_webhooks(5)
    per_id = [
        sum(p.headers["x-inference-generation-id"] == gid for p in recorder.posts()) for gid in ids
    ]
    assert set(per_id) == {1, 2}
    assert sb.stats().webhook_duplicates == per_id.count(2)


def test_group_webhook_is_delivered_once_all_are_done(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url)
    requests = [chat_request(i) for i in range(3)]
    with sb.client() as client:
        group = client.post(
            "/v1/slow/group/chat/completions",
            json={"requests": requests, "metadata": {"webhook_id": "wh1"}},
        ).json()
    posts = recorder.wait_for_posts(1)
    assert sb.wait_for_webhooks(2)
    post = posts[0]
    assert post.headers["x-inference-event"] == "slow-group.completed"
    assert post.headers["x-inference-group-id"] == group["groupId"]
    body = post.json()
    assert body["group_id"] == group["groupId"]
    assert body["data"]["group_size"] == 3 and body["data"]["status"] == "completed"
    items = body["data"]["generations"]
    assert [g["generationId"] for g in items] == sb.generation_ids()
    assert {g["state"] for g in items} == {"Success"}


def test_group_members_with_webhook_ids_get_their_own_events(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url)
    requests = [chat_request(i) for i in range(2)]
    for r in requests:
        r["metadata"]["webhook_id"] = "wh1"
    with sb.client() as client:
        client.post("/v1/slow/group/chat/completions", json={"requests": requests})
    recorder.wait_for_posts(3)
    assert sb.wait_for_webhooks(2)
    events = sorted(p.headers["x-inference-event"] for p in recorder.posts())
    assert events == ["generation.completed", "generation.completed", "slow-group.completed"]


def test_embedding_webhook_event(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url)
    with sb.client() as client:
        client.post(
            "/v1/slow/embeddings",
            json={"model": "m", "input": "héllo", "metadata": {"webhook_id": "wh1"}},
        )
    body = recorder.wait_for_posts(1)[0].json()
    assert body["event"] == "async-embedding.completed"
    assert body["data"]["response"]["object"] == "list"


def test_webhook_test_event(
    make_sandbox: Callable[..., Sandbox], recorder: WebhookRecorder
) -> None:
    sb = make_sandbox(webhook_url=recorder.url)
    sb.send_test_webhook("AhALzdz8S")
    with httpx.Client(base_url=sb.url, trust_env=False) as client:
        assert client.post("/_sandbox/webhook-test", json={"webhook_id": "other"}).is_success
    first, second = recorder.wait_for_posts(2)
    assert first.headers["x-inference-event"] == "webhook.test"
    assert first.json()["event"] == "webhook.test"
    assert first.json()["webhook_id"] == "AhALzdz8S"  # documented: snake case for this event
    assert second.headers["x-inference-webhook-id"] == "other"


def test_slow_receiver_does_not_block_the_api(make_sandbox: Callable[..., Sandbox]) -> None:
    with WebhookRecorder(post_delay=1.0) as hook:
        sb = make_sandbox(webhook_url=hook.url)
        with sb.client() as client:
            submit(client, webhook_id="wh1")
            hook.wait_for_posts(1)  # the receiver now sits on this POST
            started = time.monotonic()
            submit(client, 1)
            assert time.monotonic() - started < 0.5


# -- as a separate process ----------------------------------------------------------------


def test_runs_as_a_separate_process() -> None:
    with SandboxProcess(**FAST) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        proc.inject(kind="error", status=502, path="/v1/generation/*")
        with httpx.Client(base_url=proc.url, headers=proc.headers, trust_env=False) as client:
            assert client.get("/v1/generation/x").status_code == 502
            gid = submit(client)
            assert wait_terminal(client, gid)["state"] == "Success"
        assert proc.stats().calls_per_generation[gid] >= 1
