"""curate listen against hostile senders, as a real process: floods of unauthenticated bodies, and
where a webhook id (or the path token) could leak to disk or to the log."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from curate.sandbox import Sandbox
from curate.store import Store
from curate.synthetic import chat_request, generation_record
from tests.helpers import held, listen_process

WID = "wh-AhALzdz8S"
FAST_SANDBOX = {"queue_delay": 0.01, "run_delay": 0.02, "delay_spread": 0.0, "webhook_backoff": 0.05}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def envelope(seed: int, webhook_id: str | None = WID) -> dict[str, Any]:
    record = generation_record(seed)
    body = {"event": "generation.completed", "timestamp": record["finishedAt"], "generationId": record["id"],
            "data": record}
    if webhook_id is not None:
        body["webhookId"] = webhook_id
    return body


def post(url: str, body: Any, webhook_id: str | None = WID, timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if webhook_id is not None:
        headers["X-Inference-Webhook-ID"] = webhook_id
    return httpx.post(url, content=content, headers=headers, timeout=timeout)


# -- case 4: unauthenticated bodies are refused before they are parsed --------------------------


def test_a_flood_of_big_headerless_bodies_neither_delays_deliveries_nor_swells_the_listener(tmp_path: Path) -> None:
    # 10 MB of {"x":[{},{},...]}: the most objects per byte, and no webhook id anywhere.
    big = b'{"x":[' + b"{}," * 3_400_000 + b"{}]}"
    assert 10_000_000 < len(big) < 10 * 1024 * 1024
    log = tmp_path / "listen.log"
    with listen_process(tmp_path / "c.duckdb", "--webhook-id", WID, log=log) as (proc, url):
        assert post(url, envelope(0)).status_code == 200  # warm: imports, store, spool
        time.sleep(0.5)
        baseline = rss_mb(proc.pid)
        peak = [baseline]
        statuses: list[int | str] = []
        acks: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid))
                time.sleep(0.01)

        def flood(i: int) -> None:
            time.sleep(i / 16)  # 16 in a second
            try:
                statuses.append(post(url, big, webhook_id=None).status_code)
            except httpx.TransportError as exc:  # refused mid-body: the listener may stop reading
                statuses.append(type(exc).__name__)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=flood, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for seed in range(1, 6):  # valid deliveries while the flood goes on
            time.sleep(0.2)
            started = time.perf_counter()
            assert post(url, envelope(seed)).status_code == 200
            acks.append(time.perf_counter() - started)
        for thread in threads:
            thread.join(60)
        done.set()
        sampler.join()
    print(f"acks {[round(a, 3) for a in acks]} rss {baseline:.0f} -> peak {peak[0]:.0f} MB; statuses {statuses}")
    assert statuses == [401] * 16
    assert max(acks) < 1.0, acks
    assert peak[0] - baseline < 80, (baseline, peak[0])  # today: +440 MB
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert sum(1 for line in lines if line.get("status") == 401) == 16


def test_a_small_headerless_body_is_still_authenticated_by_its_webhook_id(tmp_path: Path) -> None:
    with listen_process(tmp_path / "c.duckdb", "--webhook-id", WID) as (_, url):
        assert post(url, envelope(1), webhook_id=None).status_code == 200
        # Past the limit, a body's own id no longer counts: the header is what inference.net sends.
        padded = {**envelope(2), "padding": "x" * 70_000}
        assert post(url, padded, webhook_id=None).status_code == 401
        assert post(url, padded).status_code == 200
    assert Store(tmp_path / "c.duckdb").arrow("select count(*) as n from generation_rows").to_pylist() == [{"n": 2}]


def test_large_authenticated_bodies_are_parsed_on_threads_a_few_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curate import listen

    loop_threads: set[int] = set()  # where small bodies are parsed: the event loop's thread
    seen: list[tuple[int, int]] = []  # (thread, bodies being parsed at once)
    lock = threading.Lock()
    at_once = [0]
    real = listen._parse

    def slow_parse(body: bytes) -> Any:
        if len(body) > listen.PARSE_ON_LOOP:
            with lock:
                at_once[0] += 1
                seen.append((threading.get_ident(), at_once[0]))
            time.sleep(0.3)
            with lock:
                at_once[0] -= 1
        else:
            loop_threads.add(threading.get_ident())
        return real(body)

    monkeypatch.setattr(listen, "_parse", slow_parse)
    listener = listen.Listener(store, listen.ListenerConfig(webhook_ids=(WID,)))
    big = json.dumps({**envelope(1), "padding": "x" * (listen.PARSE_ON_LOOP + 1)}).encode()
    with listen.ListenerServer(listener) as srv:
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(post(srv.url, big).status_code))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        started = time.perf_counter()
        assert post(srv.url, envelope(2)).status_code == 200  # a small one is not queued behind them
        small = time.perf_counter() - started
        for thread in threads:
            thread.join(30)
        assert listener.wait_merged(10)
    assert statuses == [200] * 6
    assert len(seen) == 6 and max(n for _, n in seen) == listen.PARSE_THREADS
    assert len(loop_threads) == 1 and not loop_threads & {thread for thread, _ in seen}
    assert small < 0.3, small
    assert store.arrow("select count(*) as n from generation_rows").to_pylist() == [{"n": 2}]


# -- webhook ids and the path token reach no byte on disk, and no log line -------------------------


TOKEN = "tok-9f3Kq2pathsecret"


def files_holding(folder: Path, *secrets: str) -> list[str]:
    """Where in ``folder``'s files any of ``secrets`` occurs: the file, and the bytes around it."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for secret in secrets:
            at = data.find(secret.encode())
            if at >= 0:
                found.append(f"{path.relative_to(folder)}: {data[max(0, at - 120):at + 40]!r}")
    return found


def test_no_webhook_id_or_path_token_reaches_the_spool_the_store_or_the_log(tmp_path: Path) -> None:
    db, log = tmp_path / "c.duckdb", tmp_path / "listen.log"
    store = Store(db)
    env = {"CURATE_WEBHOOK_IDS": f"wh-other,{WID}", "CURATE_PATH_TOKEN": TOKEN}
    with listen_process(db, env=env, log=log) as (proc, printed):
        assert printed.endswith("/webhook/<path-token>")  # the ready line does not print it
        url = printed.replace("<path-token>", TOKEN)
        health = printed.replace("/webhook/<path-token>", "/healthz")
        with held(db, 60, "rw") as holder, Sandbox(**FAST_SANDBOX, webhook_url=url) as sb, sb.client() as client:
            for i in range(3):
                request = chat_request(i)
                client.post("/v1/slow/chat/completions",
                            json={**request, "metadata": {**(request.get("metadata") or {}), "webhook_id": WID}})
            client.post("/v1/slow/group/chat/completions",
                        json={"requests": [chat_request(i) for i in range(3, 5)], "metadata": {"webhook_id": WID}})
            sb.send_test_webhook(WID)
            time.sleep(0.2)
            assert sb.wait_for_webhooks(20)
            assert sb.stats().webhook_acknowledged == 5
            generation_ids = sb.generation_ids()
            snake = {**envelope(10, webhook_id=None), "webhook_id": WID}
            answers = [
                post(url, envelope(11), webhook_id=None).status_code,  # the body's id authenticates it
                post(url, snake, webhook_id=None).status_code,
                post(url, {**envelope(12), "request": {"metadata": {"webhookId": WID}}}).status_code,
                post(url, b'{"webhookId": "' + WID.encode() + b'", "event": ').status_code,  # a reject
                post(url, {**envelope(13), "event": WID}).status_code,  # a reject whose reason quotes it
                post(url, {"event": "generation.completed", "webhook_id": WID, "data": {"request": {"metadata": {"webhook_id": WID}}}}).status_code,
                post(url, envelope(14), webhook_id="wh-" + WID).status_code,
                post(url.replace(TOKEN, TOKEN[:-1]), envelope(15)).status_code,
                httpx.post(url, content=b"x", headers={"X-Inference-Event": f"{WID} {TOKEN}"}).status_code,
            ]
            assert answers == [200, 200, 200, 400, 400, 400, 401, 401, 401]
            # Everything is in the spool still, since the store is held.
            spooled = b"".join(p.read_bytes() for p in store.spool_dir.rglob("*") if p.is_file())
            assert all(g.encode() in spooled for g in generation_ids) and generation_record(11)["id"].encode() in spooled
            assert files_holding(store.spool_dir, WID, TOKEN) == []
            holder.kill()
        deadline = time.monotonic() + 20
        while httpx.get(health).json()["spool"]["records"]:
            assert time.monotonic() < deadline, "the spool was not merged"
            time.sleep(0.1)
        assert proc.poll() is None
    rows = store.arrow(f"select (select count(*) from generation_rows) as n, "
                       f"(select count(*) from generation_rows where contains(raw::varchar, '{WID}')) as leaked, "
                       f"(select count(*) from rejects) as rejects, "
                       f"(select count(*) from rejects where contains(raw::varchar, '{WID}') "
                       f"or contains(reason, '{WID}')) as rejects_leaked").to_pylist()
    assert rows == [{"n": 8, "leaked": 0, "rejects": 3, "rejects_leaked": 0}]
    text = log.read_text()
    assert text.count('"status":') >= 14 and generation_ids[0] in text  # the log has its lines
    assert files_holding(tmp_path, WID, TOKEN) == []  # the store's file, the spool and the log
