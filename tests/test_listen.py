"""curate listen: deliveries from the sandbox stored once, durably, and only when they are ours."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from curate.config import Settings
from curate.listen import Listener, ListenerConfig, ListenerServer
from curate.sandbox import Sandbox
from curate.sandbox.loadgen import envelopes
from curate.store import Store
from curate.synthetic import chat_request, generation_record
from tests.helpers import CURATE, held, listen_process

WID = "wh-AhALzdz8S"
FAST_SANDBOX = {"queue_delay": 0.01, "run_delay": 0.02, "delay_spread": 0.0, "webhook_backoff": 0.05}


LIVE: list[Listener] = []  # listeners serving in this test: reads wait until their spool is merged


def serve(store: Store, **config: Any) -> ListenerServer:
    settings = config.pop("settings", None)
    listener = Listener(store, ListenerConfig(webhook_ids=(WID,), **config), settings=settings)
    LIVE.append(listener)
    return ListenerServer(listener)


@pytest.fixture(autouse=True)
def forget_listeners() -> Iterator[None]:
    yield
    LIVE.clear()


def query(store: Store, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows of ``sql`` once every delivery acknowledged so far is merged (moments, with nobody else on the file)."""
    for listener in LIVE:
        assert listener.wait_merged(10), "acknowledged deliveries were not merged within 10 s"
    return store.arrow(sql, params).to_pylist()


@pytest.fixture
def listener(store: Store) -> Iterator[ListenerServer]:
    with serve(store) as srv:
        yield srv


def post(url: str, body: Any, webhook_id: str | None = WID, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    if webhook_id is not None:
        headers["X-Inference-Webhook-ID"] = webhook_id
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **headers}, timeout=30)


def envelope(seed: int, *, casing: str = "camel", webhook_id: str | None = WID) -> dict[str, Any]:
    record = generation_record(seed)
    wid, gid = ("webhookId", "generationId") if casing == "camel" else ("webhook_id", "generation_id")
    body = {"event": "generation.completed", "timestamp": record["finishedAt"], gid: record["id"], "data": record}
    if webhook_id is not None:
        body[wid] = webhook_id
    return body


def count(store: Store, sql: str = "select count(*) as n from generation_rows") -> int:
    return int(query(store, sql)[0]["n"])


def with_webhook(request: dict[str, Any]) -> dict[str, Any]:
    return {**request, "metadata": {**(request.get("metadata") or {}), "webhook_id": WID}}


def healthz(srv: ListenerServer) -> dict[str, Any]:
    return httpx.get(srv.base_url + "/healthz").json()


# -- what inference.net sends, through the sandbox ------------------------------------------------


def test_options_readiness_check_is_answered_2xx(listener: ListenerServer) -> None:
    assert httpx.options(listener.url).status_code == 200


@pytest.mark.parametrize("casing", ["camel", "snake"])
def test_generation_completed_deliveries_are_stored(store: Store, listener: ListenerServer, casing: str) -> None:
    with Sandbox(**FAST_SANDBOX, webhook_url=listener.url, webhook_casing=casing) as sb, sb.client() as client:
        ids = [client.post("/v1/slow/chat/completions", json=with_webhook(chat_request(i))).json()["id"]
               for i in range(3)]
        time.sleep(0.1)
        assert sb.wait_for_webhooks()
        assert sb.stats().webhook_acknowledged == 3
    rows = query(store, "select id, source, state from generation_rows order by id")
    assert rows == [{"id": i, "source": "webhook", "state": "Success"} for i in sorted(ids)]


def test_async_embedding_completed_is_stored(store: Store, listener: ListenerServer) -> None:
    with Sandbox(**FAST_SANDBOX, webhook_url=listener.url) as sb, sb.client() as client:
        body = {"model": "qwen/qwen3-embedding-4b", "input": ["a"], "metadata": {"webhook_id": WID}}
        generation_id = client.post("/v1/async/embeddings", json=body).json()["id"]
        time.sleep(0.1)
        assert sb.wait_for_webhooks()
    assert query(store, "select id from generation_rows") == [{"id": generation_id}]


def test_slow_group_completed_stores_every_generation(store: Store, listener: ListenerServer) -> None:
    with Sandbox(**FAST_SANDBOX, webhook_url=listener.url) as sb, sb.client() as client:
        answer = client.post(
            "/v1/slow/group/chat/completions",
            json={"requests": [chat_request(i) for i in range(4)], "metadata": {"webhook_id": WID}},
        ).json()
        time.sleep(0.1)
        assert sb.wait_for_webhooks()
        members = sb.generation_ids()
    assert count(store) == 4
    assert sorted(r["id"] for r in query(store, "select id from generation_rows")) == sorted(members)
    group = query(store, "select kind, done_at is not null as done from ledger where id = ?", [answer["groupId"]])
    assert group == [{"kind": "group", "done": True}]


def test_webhook_test_is_acknowledged_and_stored_nowhere(store: Store, listener: ListenerServer) -> None:
    with Sandbox(**FAST_SANDBOX, webhook_url=listener.url) as sb:
        sb.send_test_webhook(WID)
        assert sb.wait_for_webhooks()
        assert sb.stats().webhook_acknowledged == 1
    assert count(store) == 0
    assert count(store, "select count(*) as n from rejects") == 0
    assert healthz(listener)["counters"]["test"] == 1


def test_duplicate_deliveries_are_one_row(store: Store, listener: ListenerServer) -> None:
    with Sandbox(**FAST_SANDBOX, webhook_url=listener.url, webhook_duplicate_rate=1.0) as sb, sb.client() as client:
        for i in range(3):
            client.post("/v1/slow/chat/completions", json=with_webhook(chat_request(i)))
        time.sleep(0.1)
        assert sb.wait_for_webhooks()
        assert sb.stats().webhook_duplicates == 3
    assert count(store) == 3
    assert healthz(listener)["counters"]["duplicate"] == 3


def test_ids_delivered_leave_the_ledger_pending_list(store: Store, listener: ListenerServer) -> None:
    with Sandbox(**FAST_SANDBOX, webhook_url=listener.url) as sb, sb.client() as client:
        generation_id = client.post("/v1/slow/chat/completions", json=with_webhook(chat_request(0))).json()["id"]
        with store.write() as con:  # as curate submit records it
            con.execute("insert into ledger (id, kind, source, added_at, next_poll_at) "
                        "values (?, 'generation', 'submit', now(), now())", [generation_id])
        time.sleep(0.1)
        assert sb.wait_for_webhooks()
    entry = query(store, "select source, last_state, done_at is not null as done from ledger")
    assert entry == [{"source": "submit", "last_state": "Success", "done": True}]


# -- authentication --------------------------------------------------------------------------------


def test_wrong_webhook_id_is_401_and_nothing_stored(store: Store, listener: ListenerServer) -> None:
    # The body names the right id: the header, when present, is what counts.
    response = post(listener.url, envelope(1), webhook_id="wh-guessed")
    assert response.status_code == 401
    assert count(store) == 0 and count(store, "select count(*) as n from rejects") == 0


def test_missing_webhook_id_is_401_and_nothing_stored(store: Store, listener: ListenerServer) -> None:
    response = post(listener.url, envelope(1, webhook_id=None), webhook_id=None)
    assert response.status_code == 401
    assert count(store) == 0 and count(store, "select count(*) as n from rejects") == 0


def test_unauthenticated_garbage_is_401_not_a_reject(store: Store, listener: ListenerServer) -> None:
    assert post(listener.url, b"{not json", webhook_id=None).status_code == 401
    assert count(store, "select count(*) as n from rejects") == 0


@pytest.mark.parametrize("casing", ["camel", "snake"])
def test_webhook_id_in_the_body_authenticates_without_the_header(
    store: Store, listener: ListenerServer, casing: str
) -> None:
    assert post(listener.url, envelope(1, casing=casing), webhook_id=None).status_code == 200
    assert count(store) == 1


def test_any_of_several_webhook_ids_is_accepted(store: Store) -> None:
    with ListenerServer(Listener(store, ListenerConfig(webhook_ids=("wh-one", "wh-two")))) as srv:
        assert post(srv.url, envelope(1), webhook_id="wh-two").status_code == 200
        assert post(srv.url, envelope(2), webhook_id=WID).status_code == 401
    assert count(store) == 1


def test_path_token_is_required_when_configured(store: Store) -> None:
    with serve(store, path_token="s3cret-segment") as srv:
        assert srv.url.endswith("/webhook/s3cret-segment")
        assert post(srv.base_url + "/webhook", envelope(1)).status_code == 404
        assert post(srv.base_url + "/webhook/guess", envelope(2)).status_code == 401
        assert post(srv.url, envelope(3)).status_code == 200
    assert query(store, "select id from generation_rows") == [{"id": generation_record(3)["id"]}]


def test_listener_refuses_a_config_without_webhook_ids() -> None:
    with pytest.raises(ValueError, match="webhook id"):
        ListenerConfig(webhook_ids=(" ",))


# -- bad input -------------------------------------------------------------------------------------


def test_body_over_10_mb_is_413_and_nothing_stored(store: Store, listener: ListenerServer) -> None:
    body = json.dumps({**envelope(1), "padding": "x" * 11_000_000}).encode()
    try:
        status = post(listener.url, body).status_code
    except httpx.WriteError:  # the listener may close before the client has sent it all
        status = 413
    assert status == 413
    assert healthz(listener)["counters"]["too_large"] == 1
    assert count(store) == 0


def test_body_over_10_mb_without_content_length_is_413(listener: ListenerServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b" " * 1_000_000

    try:
        status = httpx.post(listener.url, content=chunks(), headers={"X-Inference-Webhook-ID": WID}).status_code
    except httpx.WriteError:
        status = 413
    assert status == 413
    assert healthz(listener)["counters"]["too_large"] == 1


def test_malformed_json_is_400_with_a_reject_row(store: Store, listener: ListenerServer) -> None:
    response = post(listener.url, b'{"event": "generation.completed", "data": {')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
    rejects = query(store, "select source, reason, raw from rejects")
    assert len(rejects) == 1 and rejects[0]["source"] == "webhook"
    assert rejects[0]["raw"] == '{"event": "generation.completed", "data": {'
    assert "not valid JSON" in rejects[0]["reason"]


def test_unknown_event_is_400_with_a_reject_row(store: Store, listener: ListenerServer) -> None:
    response = post(listener.url, {**envelope(1), "event": "generation.exploded"})
    assert response.status_code == 400
    assert count(store) == 0
    [reject] = query(store, "select reason from rejects")
    assert "generation.exploded" in reject["reason"] and "event" in reject["reason"]


def test_delivery_without_a_generation_id_is_400_with_a_reject_row(store: Store, listener: ListenerServer) -> None:
    body = envelope(1)
    del body["generationId"]
    body["data"]["id"] = {"not": "a string"}
    response = post(listener.url, body)
    assert response.status_code == 400
    assert "no generation id" in response.json()["detail"]
    assert count(store, "select count(*) as n from rejects where reason like 'no generation id%'") == 1


def test_delivery_the_store_refuses_is_acknowledged_and_kept_in_rejects_with_its_reason(
    store: Store, listener: ListenerServer
) -> None:
    body = envelope(1)
    body["data"] = "not an object"  # the envelope names its generation, but carries no body
    response = post(listener.url, body)
    assert (response.status_code, response.json()["outcome"]) == (200, "spooled")
    [reject] = query(store, "select source, reason from rejects")
    assert reject["source"] == "webhook" and "field data of generation.completed" in reject["reason"]
    assert count(store) == 0


def test_no_delivery_crashes_the_listener(store: Store, listener: ListenerServer) -> None:
    nasty = [b"", b"\xff\xfe\x00garbage", b"[]", b"42", b'"text"', b"null", b"[" * 100_000,
             json.dumps({"event": "generation.completed"}).encode(),
             json.dumps({"event": "generation.completed", "data": "text"}).encode(),
             json.dumps({"event": "slow-group.completed", "data": {"generations": 7}}).encode()]
    statuses = [post(listener.url, body).status_code for body in nasty]
    assert statuses == [400] * len(nasty)
    assert post(listener.url, envelope(1)).status_code == 200
    assert count(store) == 1
    assert count(store, "select count(*) as n from rejects") == len(nasty)


# -- durability ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_a_held_store_costs_no_503_and_the_delivery_is_merged_once_it_is_let_go(tmp_path: Path, mode: str) -> None:
    store = Store(tmp_path / "curate.duckdb", lock_timeout=5)
    with serve(store) as srv, Sandbox(**FAST_SANDBOX, webhook_url=srv.url) as sb:
        with held(store.path, 3.0, mode):
            with sb.client() as client:
                generation_id = client.post("/v1/slow/chat/completions",
                                            json=with_webhook(chat_request(0))).json()["id"]
            assert sb.wait_for_webhooks(10)
            stats = sb.stats()
            assert (stats.webhook_retries, stats.webhook_acknowledged) == (0, 1)
            body = healthz(srv)
            assert body["ready"] is True and body["spool"]["records"] == 1 and body["spool"]["oldest_seconds"] >= 0
        let_go = time.monotonic()
        assert srv.listener.wait_merged(10)
        assert time.monotonic() - let_go < 10
        assert query(store, "select id from generation_rows") == [{"id": generation_id}]


def test_readers_get_turns_while_deliveries_keep_coming(store: Store, listener: ListenerServer) -> None:
    import asyncio
    import threading

    from curate.sandbox.loadgen import deliver

    items = envelopes(3000, webhook_id=WID, start=10_000)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        report=asyncio.run(deliver(listener.url, items, webhook_id=WID, connections=64, duration=4.0))))
    thread.start()
    reader = Store(store.path, lock_timeout=5)
    reads = 0
    while thread.is_alive():
        reader.arrow("select count(*) from generation_rows")  # raises StoreLocked after 5 s
        reads += 1
    thread.join()
    assert reads >= 5
    assert result["report"].statuses.get(200, 0) == len(result["report"].acked) > 0
    assert count(store) == len(set(result["report"].acked))


# -- verify by fetch -------------------------------------------------------------------------------


def test_verify_by_fetch_stores_the_api_copy_not_the_pushed_body(tmp_path: Path) -> None:
    store = Store(tmp_path / "curate.duckdb", lock_timeout=5)
    with Sandbox(**FAST_SANDBOX) as sb:
        settings = Settings(api_key=sb.api_key, base_url=sb.url)
        with serve(store, verify_by_fetch=True, settings=settings) as srv, sb.client() as client:
            generation_id = client.post("/v1/slow/chat/completions", json=chat_request(0)).json()["id"]
            time.sleep(0.2)
            real = sb.generation(generation_id)
            assert real is not None and real["state"] == "Success"
            forged = {**real, "response": {**real["response"], "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "pwned"}}]}}
            body = {"event": "generation.completed", "generationId": generation_id, "data": forged}
            assert post(srv.url, body).status_code == 200
            assert sb.stats().calls_by_endpoint.get("GET /v1/generation/{id}") == 1
    [row] = query(store, "select source, raw from generation_rows")
    assert row["source"] == "webhook-verified"
    assert "pwned" not in row["raw"]
    assert json.loads(row["raw"])["response"] == real["response"]


def test_verify_by_fetch_of_an_unknown_generation_is_503(tmp_path: Path) -> None:
    store = Store(tmp_path / "curate.duckdb", lock_timeout=5)
    with Sandbox(**FAST_SANDBOX) as sb:
        settings = Settings(api_key=sb.api_key, base_url=sb.url)
        with serve(store, verify_by_fetch=True, settings=settings) as srv:
            assert post(srv.url, envelope(1)).status_code == 503
    assert count(store) == 0


def test_verify_by_fetch_of_a_group_stores_every_member(tmp_path: Path) -> None:
    store = Store(tmp_path / "curate.duckdb", lock_timeout=5)
    with Sandbox(**FAST_SANDBOX) as sb, sb.client() as client:
        settings = Settings(api_key=sb.api_key, base_url=sb.url)
        group_id = client.post("/v1/slow/group/chat/completions",
                               json={"requests": [chat_request(i) for i in range(3)]}).json()["groupId"]
        time.sleep(0.2)
        with serve(store, verify_by_fetch=True, settings=settings) as srv:
            body = {"event": "slow-group.completed", "group_id": group_id,
                    "data": {"group_size": 3, "status": "completed", "generations": []}}
            assert post(srv.url, body).status_code == 200
    assert count(store, "select count(*) as n from generation_rows where source = 'webhook-verified'") == 3


def test_verify_by_fetch_of_a_group_without_its_id_fetches_and_stores_every_member(tmp_path: Path) -> None:
    store = Store(tmp_path / "curate.duckdb", lock_timeout=5)
    with Sandbox(**FAST_SANDBOX) as sb, sb.client() as client:
        settings = Settings(api_key=sb.api_key, base_url=sb.url)
        ids = [client.post("/v1/slow/chat/completions", json=chat_request(i)).json()["id"] for i in range(3)]
        time.sleep(0.2)
        members = [{"generationId": i, **(sb.generation(i) or {})} for i in ids]
        assert all(m["state"] == "Success" for m in members)
        forged = [{**m, "response": {**m["response"], "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "pwned"}}]}}
            for m in members]

        def group(generations: list[dict[str, Any]]) -> dict[str, Any]:  # no group id anywhere
            return {"event": "slow-group.completed",
                    "data": {"group_size": len(generations), "status": "completed", "generations": generations}}

        with serve(store, verify_by_fetch=True, settings=settings) as srv:
            # One member the API does not know: 503, and nothing stored until it shows them all.
            unknown = {**forged[2], "generationId": "not-a-generation", "id": "not-a-generation"}
            response = post(srv.url, group([*forged[:2], unknown]))
            assert (response.status_code, response.json()["outcome"]) == (503, "unverified")
            assert "1 of the 3" in response.json()["detail"]
            assert srv.listener.wait_merged(10)
            assert count(store) == 0
            calls_before = sb.stats().calls_by_endpoint.get("GET /v1/generation/{id}", 0)
            response = post(srv.url, group(forged))
            assert (response.status_code, response.json()["outcome"]) == (200, "spooled")
            assert sb.stats().calls_by_endpoint["GET /v1/generation/{id}"] - calls_before == 3
    rows = query(store, "select id, source, raw from generation_rows order by id")
    assert [(r["id"], r["source"]) for r in rows] == [(i, "webhook-verified") for i in sorted(ids)]
    assert not any("pwned" in r["raw"] for r in rows)


# -- what the operator sees ------------------------------------------------------------------------


def test_access_log_has_a_line_per_delivery_and_never_the_body(
    listener: ListenerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="curate.listen")
    post(listener.url, envelope(1))
    post(listener.url, envelope(2), webhook_id="wh-wrong")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "curate.listen"]
    assert [(line["event"], line["outcome"], line["status"]) for line in lines] == [
        ("generation.completed", "spooled", 200), (None, "unauthorized", 401)]
    assert lines[0]["generation_id"] == generation_record(1)["id"]
    text = caplog.text
    assert WID not in text and "wh-wrong" not in text
    assert generation_record(1)["response"]["choices"][0]["message"]["content"][:40] not in text


def test_healthz_reports_readiness_counters_and_the_spool(listener: ListenerServer) -> None:
    post(listener.url, envelope(1))
    post(listener.url, envelope(1))
    assert listener.listener.wait_merged(10)
    body = healthz(listener)
    assert body["ready"] is True and body["queued"] == 0 and body["ledger_pending"] == 0
    assert body["counters"]["spooled"] == 2
    assert body["counters"]["stored"] == 1 and body["counters"]["duplicate"] == 1
    assert body["spool"] == {"records": 0, "oldest_seconds": None, "merged": 2}


def test_healthz_names_no_path_or_process_unless_asked(store: Store, listener: ListenerServer) -> None:
    text = httpx.get(listener.base_url + "/healthz").text
    assert set(json.loads(text)) == {"ready", "queued", "spool", "ledger_pending", "counters"}
    assert str(store.path.parent) not in text and "pid" not in text
    with serve(store, health_details=True) as srv:
        details = healthz(srv)["details"]
    assert details == {"store": str(store.path), "spool_dir": str(store.spool_dir), "pid": os.getpid(),
                       "verify_by_fetch": False, "last_error": None}


# -- as a process: curate listen -------------------------------------------------------------------



def test_listen_refuses_to_start_without_a_webhook_id(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "CURATE_WEBHOOK_IDS"}
    result = subprocess.run([CURATE, "listen", "--db", str(tmp_path / "c.duckdb")], capture_output=True,
                            text=True, env=base, timeout=60, check=False)
    assert result.returncode == 2
    assert "--webhook-id" in result.stderr and "Traceback" not in result.stderr


def test_listen_takes_webhook_ids_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    with listen_process(db, env={"CURATE_WEBHOOK_IDS": f"wh-other, {WID}"}) as (_, url):
        assert post(url, envelope(1)).status_code == 200
        assert "details" not in httpx.get(url.replace("/webhook", "/healthz")).json()
    assert count(Store(db)) == 1


def test_listen_health_details_flag_adds_the_paths_and_pid(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    with listen_process(db, "--webhook-id", WID, "--health-details") as (proc, url):
        details = httpx.get(url.replace("/webhook", "/healthz")).json()["details"]
    assert details["pid"] == proc.pid and details["store"] == str(db)


def test_listener_killed_mid_load_keeps_every_acked_delivery(tmp_path: Path) -> None:
    import asyncio
    import threading

    from curate.sandbox.loadgen import deliver

    db = tmp_path / "c.duckdb"
    items = envelopes(20_000, webhook_id=WID, start=50_000)
    with listen_process(db, "--webhook-id", WID) as (proc, url):
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(
            report=asyncio.run(deliver(url, items, webhook_id=WID, connections=64, timeout=10))))
        thread.start()
        deadline = time.monotonic() + 20
        while not httpx.get(url.replace("/webhook", "/healthz")).json()["counters"].get("stored", 0) > 300:
            assert time.monotonic() < deadline, "the listener stored nothing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        thread.join(30)
    report = result["report"]
    assert 0 < len(report.acked) < len(items) and report.errors > 0  # it was cut off mid-load
    with listen_process(db, "--webhook-id", WID) as (_, url):  # a restart merges what the killed one spooled
        deadline = time.monotonic() + 20
        while httpx.get(url.replace("/webhook", "/healthz")).json()["spool"]["merged"] == 0:
            assert time.monotonic() < deadline, "the restarted listener merged nothing"
            time.sleep(0.05)
    stored = {r["id"] for r in Store(db).arrow("select id from generation_rows").to_pylist()}
    assert set(report.acked) <= stored
    assert count(Store(db), "select count(*) - count(distinct id) as n from generation_rows") == 0


def test_submit_with_webhook_id_and_listen_collect_a_run_without_polling(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(chat_request(i)) + "\n" for i in range(10)))
    with listen_process(db, "--webhook-id", WID) as (_, url), Sandbox(**FAST_SANDBOX, webhook_url=url) as sb:
        env = {"INFERENCE_API_KEY": sb.api_key, "INFERENCE_BASE_URL": sb.url}
        base = {k: v for k, v in os.environ.items() if k != "CURATE_DB"}
        for group_size in ("1", "25"):  # singles and groups alike
            submitted = subprocess.run(
                [CURATE, "submit", str(requests), "--db", str(db), "--webhook-id", WID, "--group-size", group_size, "--rpm", "6000"],
                capture_output=True, text=True, env=base | env, timeout=120, check=False)
            assert submitted.returncode == 0, submitted.stderr
            requests.write_text("".join(json.dumps(chat_request(i)) + "\n" for i in range(10, 110)))
        deadline = time.monotonic() + 30
        while httpx.get(url.replace("/webhook", "/healthz")).json()["ledger_pending"] != 0:
            assert time.monotonic() < deadline, "the ledger still waits for ids"
            time.sleep(0.1)
        calls = sb.stats().calls_by_endpoint
    assert not any(endpoint.startswith("GET") for endpoint in calls), calls
    assert count(Store(db)) == 110
    assert count(Store(db), "select count(*) as n from ledger where done_at is null") == 0
