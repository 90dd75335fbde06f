"""Submit: every line sent once, in groups by default, refused up front when a line is bad."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from curate.config import Settings
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import InvalidRequests, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl


@pytest.fixture
def sandbox() -> Any:
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sb:
        yield sb


def settings(sandbox: Sandbox) -> Settings:
    return Settings(api_key=sandbox.api_key, base_url=sandbox.url)


def requests(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [chat_request(seed) for seed in range(start, start + n)]


def test_requests_go_in_groups_of_50_by_default(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(120))
    summary = submit_file(store, settings(sandbox), path, rpm=None)
    assert (summary.submitted, summary.posts) == (120, 3)
    assert sandbox.stats().groups_submitted == 3
    assert store.query("select kind, count(*) as n from ledger group by all").to_pylist() == [
        {"kind": "group", "n": 3}]
    assert store.query("select count(*) as n from submissions where state = 'submitted' "
                       "and group_id is not null").to_pylist() == [{"n": 120}]


def test_group_size_1_submits_singly_and_ledgers_each_generation(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(5))
    summary = submit_file(store, settings(sandbox), path, group_size=1, rpm=None)
    assert (summary.submitted, summary.posts) == (5, 5)
    ids = {r["id"] for r in store.query("select id from ledger where kind = 'generation'").to_pylist()}
    assert ids == set(sandbox.generation_ids())


def test_rerunning_the_same_file_sends_nothing(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(60))
    submit_file(store, settings(sandbox), path, rpm=None)
    again = submit_file(store, settings(sandbox), path, rpm=None)
    assert (again.submitted, again.already_submitted, again.posts) == (0, 60, 0)
    assert sandbox.stats().submitted == 60


def test_lines_without_custom_id_are_keyed_by_content(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    bodies = requests(3)
    for body in bodies:
        del body["metadata"]
    path = write_jsonl(tmp_path / "r.jsonl", bodies)
    submit_file(store, settings(sandbox), path, rpm=None)
    assert submit_file(store, settings(sandbox), path, rpm=None).submitted == 0


def test_bad_lines_refuse_the_file_before_anything_is_sent(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    lines: list[Any] = requests(4)
    lines[1] = "{not json"
    lines[2] = {"model": "m", "messages": []}
    lines.append(dict(lines[0]))  # the same custom_id again
    path = write_jsonl(tmp_path / "r.jsonl", lines)
    with pytest.raises(InvalidRequests) as caught:
        submit_file(store, settings(sandbox), path, rpm=None)
    message = str(caught.value)
    assert "line 2: not valid JSON" in message
    assert "line 3: no messages" in message
    assert "line 5: the same request as line 1" in message
    assert sandbox.stats().calls_total == 0
    assert store.query("select count(*) as n from submissions").to_pylist() == [{"n": 0}]


def test_webhook_id_is_set_on_every_request(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(3))
    submit_file(store, settings(sandbox), path, group_size=1, webhook_id="AhALzdz8S", rpm=None)
    for generation_id in sandbox.generation_ids():
        assert sandbox.generation(generation_id)["request"]["metadata"]["webhook_id"] == "AhALzdz8S"


def test_an_answer_that_never_came_is_not_sent_again_unless_asked(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(3))
    sandbox.inject(kind="error", status=503, method="POST", times=1)
    first = submit_file(store, settings(sandbox), path, group_size=1, rpm=None)
    assert (first.submitted, first.uncertain, first.stopped is not None) == (0, 1, True)
    second = submit_file(store, settings(sandbox), path, group_size=1, rpm=None)
    assert (second.submitted, second.uncertain) == (2, 1)
    third = submit_file(store, settings(sandbox), path, group_size=1, rpm=None, resend_uncertain=True)
    assert third.submitted == 1


SUBMIT = """
import sys
from curate.config import Settings
from curate.store import Store
from curate.submit import submit_file
submit_file(Store(sys.argv[1]), Settings(api_key=sys.argv[3], base_url=sys.argv[4]), sys.argv[2],
            group_size=int(sys.argv[5]), rpm=None)
"""


@pytest.mark.slow
def test_submit_killed_at_random_moments_never_sends_a_line_twice(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(80))
    rng = random.Random(3)
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sandbox:
        for trial in range(4):
            db = tmp_path / f"t{trial}.duckdb"
            sandbox.reset_stats()
            before = set(sandbox.generation_ids())
            argv = [sys.executable, "-c", SUBMIT, str(db), str(path), sandbox.api_key, sandbox.url,
                    str(rng.choice((1, 4)))]
            proc = subprocess.Popen(argv)
            time.sleep(rng.uniform(0.6, 1.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            subprocess.run(argv, check=True, timeout=120)
            sent = Counter(
                sandbox.generation(i)["request"]["metadata"]["custom_id"]
                for i in set(sandbox.generation_ids()) - before
            )
            assert max(sent.values()) == 1, trial  # no line paid twice
            store = Store(db)
            states = dict(
                (r["state"], r["n"]) for r in
                store.query("select state, count(*) as n from submissions group by all").to_pylist())
            # Every line is sent, except at most the one batch whose answer the kill cut off.
            assert states.get("submitted", 0) + states.get("sending", 0) == 80, states
            assert len(sent) >= states["submitted"]
