"""Harvest: every terminal generation stored once, by group or by id, and resumable after a kill."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from curate import harvester
from curate.config import Settings
from curate.harvester import harvest
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl

FAST = {"backoff": 0.01, "max_backoff": 0.1}


@pytest.fixture
def sandbox() -> Any:
    with Sandbox(queue_delay=0.1, run_delay=0.2, delay_spread=0.3, failure_rate=0.2) as sb:
        yield sb


def settings(sandbox: Sandbox) -> Settings:
    return Settings(api_key=sandbox.api_key, base_url=sandbox.url)


def submitted(store: Store, sandbox: Sandbox, tmp_path: Path, n: int, group_size: int) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(n)])
    submit_file(store, settings(sandbox), path, SubmitOptions(group_size=group_size, rpm=None))


def stored_states(store: Store) -> dict[str, int]:
    return {r["state"]: r["n"] for r in
            store.arrow("select state, count(*) as n from generations group by all").to_pylist()}


HARVEST_MODULE = harvester


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HARVEST_MODULE, "FIRST_DELAY", 0.1)
    monkeypatch.setattr(HARVEST_MODULE, "MAX_DELAY", 0.5)


def test_grouped_submission_is_harvested_one_get_per_group(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    submitted(store, sandbox, tmp_path, 100, 50)
    summary = harvest(store, settings(sandbox), rpm=None, client_options=FAST)
    assert summary.pending == 0
    states = stored_states(store)
    assert sum(states.values()) == 100 and states.get("Failed", 0) > 0
    assert summary.succeeded + summary.failed == 100
    stats = sandbox.stats()
    # Two groups, each fetched with a few GETs while it finishes, never per generation.
    assert sum(stats.calls_per_group.values()) == stats.calls_by_endpoint[
        "GET /v1/slow/group/{groupId}/generations"]
    assert stats.calls_by_endpoint.get("GET /v1/generation/{id}", 0) == 0
    assert store.arrow("select count(*) as n from ledger where done_at is null").to_pylist() == [{"n": 0}]


def test_single_submissions_are_harvested_with_failures_and_their_messages(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    submitted(store, sandbox, tmp_path, 20, 1)
    summary = harvest(store, settings(sandbox), rpm=None, client_options=FAST)
    assert (summary.pending, sum(stored_states(store).values())) == (0, 20)
    failed = store.arrow("select state_message from generations where state = 'Failed'").to_pylist()
    assert failed and all(row["state_message"] for row in failed)


def test_ids_file_is_harvested(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    with sandbox.client() as http:
        ids = [http.post("/v1/slow/chat/completions", json=chat_request(i)).json()["id"] for i in range(5)]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    summary = harvest(store, settings(sandbox), ids_file=ids_file, rpm=None, client_options=FAST)
    assert summary.pending == 0
    assert {r["id"] for r in store.arrow("select id from generations").to_pylist()} == set(ids)


def test_once_makes_one_pass_and_leaves_the_rest_pending(store: Store, tmp_path: Path) -> None:
    with Sandbox(queue_delay=30.0, delay_spread=0.0) as slow:  # nothing finishes during the test
        submitted(store, slow, tmp_path, 5, 1)
        summary = harvest(store, settings(slow), rpm=None, once=True, client_options=FAST)
    assert summary.pending == 5 and summary.calls == 5


def test_faults_are_ridden_out_and_nothing_is_lost(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    submitted(store, sandbox, tmp_path, 10, 1)
    sandbox.inject(kind="error", status=503, method="GET", probability=0.3)
    sandbox.inject(kind="truncate", method="GET", probability=0.2)
    summary = harvest(store, settings(sandbox), rpm=None, client_options=FAST)
    assert (summary.pending, sum(stored_states(store).values())) == (0, 10)


HARVEST = """
import sys
from curate import harvester as h
h.FIRST_DELAY, h.MAX_DELAY, h.FLUSH_EVERY, h.FLUSH_SECONDS = 0.1, 0.5, 5, 0.2
from curate.config import Settings
from curate.store import Store
h.harvest(Store(sys.argv[1]), Settings(api_key=sys.argv[2], base_url=sys.argv[3]), rpm=None,
          client_options={"backoff": 0.01, "max_backoff": 0.1})
"""


@pytest.mark.slow
def test_harvest_killed_at_random_moments_ends_with_every_generation_stored_once(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    with Sandbox(queue_delay=0.3, run_delay=0.6, delay_spread=0.5, failure_rate=0.1) as sandbox:
        for trial in range(3):
            db = tmp_path / f"t{trial}.duckdb"
            store = Store(db)
            path = write_jsonl(tmp_path / f"r{trial}.jsonl",
                               [chat_request(1000 * trial + i) for i in range(40)])
            submit_file(store, settings(sandbox), path, SubmitOptions(group_size=rng.choice((1, 10)), rpm=None))
            argv = [sys.executable, "-c", HARVEST, str(db), sandbox.api_key, sandbox.url]
            for _ in range(2):
                proc = subprocess.Popen(argv)
                time.sleep(rng.uniform(0.5, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            subprocess.run(argv, check=True, timeout=120)
            row = Store(db).arrow(
                "select count(*) as n, count(distinct id) as ids from generations").to_pylist()[0]
            assert row == {"n": 40, "ids": 40}, trial


def test_a_body_the_store_refuses_goes_to_rejects_and_its_id_is_polled_again(
    store: Store, tmp_path: Path
) -> None:
    import httpx

    from curate import ledger
    from curate.synthetic import generation_record

    good = generation_record(3)
    answers = [{**good, "id": {"not": "a string"}}, good]  # the first body has a broken id

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0) if answers else good)

    with store.write() as con:
        ledger.add(con, [good["id"]], kind="generation", source="ids:test")
    summary = harvest(store, Settings(api_key="k", base_url="http://inference.test"), rpm=None,
                      client_options={**FAST, "transport": httpx.MockTransport(handle)})
    assert (summary.rejected, summary.stored, summary.pending, summary.calls) == (1, 1, 0, 2)
    assert store.arrow("select reason from rejects").to_pylist()[0]["reason"].startswith("field id")
    assert store.arrow("select id from generations").to_pylist() == [{"id": good["id"]}]
