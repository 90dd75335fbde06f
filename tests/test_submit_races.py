"""Submit against real processes: two runs at once, a kill at any moment, a store held by another.

Each test runs ``curate submit`` as its own process against the sandbox on loopback and counts
what the sandbox created, which is what would have been paid. ``CURATE_SUBMIT_KILL_TRIALS``
scales the kill trials (the benchmark runs 20).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from curate.sandbox import Sandbox
from curate.store import Store
from curate.synthetic import chat_request
from tests.conftest import write_jsonl
from tests.helpers import CURATE, held

KILL_TRIALS = int(os.environ.get("CURATE_SUBMIT_KILL_TRIALS", "5"))


def environment(sandbox: Sandbox) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("INFERENCE_API_KEY", "INFERENCE_BASE_URL", "CURATE_DB")}
    return base | {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url}


def submit(sandbox: Sandbox, db: Path, path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([CURATE, "submit", str(path), "--db", str(db), "--rpm", "100000", "--json", *args],
                            env=environment(sandbox), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode in (0, 3), err
    return dict(json.loads(out))


def sent_per_line(sandbox: Sandbox, before: set[str] = frozenset()) -> Counter[str]:  # type: ignore[assignment]
    return Counter(sandbox.generation(i)["request"]["metadata"]["custom_id"]  # type: ignore[index]
                   for i in set(sandbox.generation_ids()) - before)


def states(db: Path) -> dict[str, int]:
    rows = Store(db).arrow("select state, count(*) as n from submissions group by all").to_pylist()
    return {r["state"]: r["n"] for r in rows}


@pytest.mark.parametrize("group_size", ["50", "1"])
def test_two_submits_of_one_file_at_once_pay_once(tmp_path: Path, group_size: str) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(500)])
    db = tmp_path / "c.duckdb"
    Store(db)  # created before either starts, as a team's shared store is
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sandbox:
        first, second = (submit(sandbox, db, path, "--group-size", group_size) for _ in range(2))
        a, b = summary(first), summary(second)
        sent = sent_per_line(sandbox)
    assert len(sent) == 500 and max(sent.values()) == 1
    assert a["submitted"] + b["submitted"] == 500
    assert states(db) == {"submitted": 500}


def test_a_group_id_answered_while_another_holds_the_store_survives_a_kill(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(10)])
    db = tmp_path / "c.duckdb"
    Store(db)
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sandbox:
        sandbox.inject(kind="slow", method="POST", delay=1.0)
        proc = submit(sandbox, db, path)
        deadline = time.monotonic() + 30
        while sandbox.stats().calls_total == 0 and time.monotonic() < deadline:  # the POST is in flight
            time.sleep(0.02)
        with held(db, 6.0, "rw"):  # the answer comes while a writer holds the file
            while not sandbox.group_ids() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)  # killed while it waits for the file
            proc.communicate()
        (group_id,) = sandbox.group_ids()
        harvested = subprocess.run([CURATE, "harvest", "--db", str(db), "--rpm", "100000", "--json"],
                                   env=environment(sandbox), capture_output=True, text=True, timeout=120, check=False)
    assert harvested.returncode == 0, harvested.stderr
    assert json.loads(harvested.stdout)["stored"] == 10
    assert Store(db).arrow("select id from ledger where kind = 'group'").to_pylist() == [{"id": group_id}]
    assert states(db) == {"submitted": 10}


def test_a_line_claimed_by_a_run_that_was_killed_is_reported_not_sent_again(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(20)])
    db = tmp_path / "c.duckdb"
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sandbox:
        sandbox.inject(kind="slow", method="POST", delay=30)
        proc = submit(sandbox, db, path, "--group-size", "10", "--concurrency", "1")
        deadline = time.monotonic() + 30
        while sandbox.stats().calls_total == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # the first group's POST is in flight: it may be paid for
        proc.communicate()
        sandbox.clear_faults()
        again = summary(submit(sandbox, db, path, "--group-size", "10"))
        listed = subprocess.run([CURATE, "submissions", "--db", str(db), "--state", "sending", "--json"], check=True,
                                capture_output=True, text=True, timeout=60)
        assert (again["uncertain"], again["exit_code"]) == (10, 3)
        assert max(sent_per_line(sandbox).values()) == 1
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert len(rows) == 10 and all(r["running"] is False and r["file"] == str(path.resolve()) for r in rows)
        resent = summary(submit(sandbox, db, path, "--group-size", "10", "--resend-uncertain"))
    assert (resent["submitted"], resent["exit_code"]) == (10, 0)
    assert states(db) == {"submitted": 20}


@pytest.mark.slow
def test_submit_killed_at_random_moments_never_sends_a_line_twice_nor_loses_an_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(120)])
    rng = random.Random(16)
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sandbox:
        for trial in range(KILL_TRIALS):
            db = tmp_path / f"t{trial}.duckdb"
            before_groups, before = set(sandbox.group_ids()), set(sandbox.generation_ids())
            sandbox.inject(kind="slow", method="POST", path="/v1/slow/group/*", delay=0.4, probability=1.0)
            proc = submit(sandbox, db, path, "--group-size", str(rng.choice((10, 20))))
            time.sleep(rng.uniform(0.3, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            sandbox.clear_faults()
            summary(submit(sandbox, db, path, "--group-size", "10"))
            sent = sent_per_line(sandbox, before)
            assert not sent or max(sent.values()) == 1, trial  # no line paid twice
            handed_out = set(sandbox.group_ids()) - before_groups
            ledgered = {r["id"] for r in Store(db).arrow("select id from ledger").to_pylist()}
            assert handed_out <= ledgered, (trial, handed_out - ledgered)  # no id lost
            found = states(db)
            # Every line is submitted, except the group whose answer the kill cut off.
            assert found.get("submitted", 0) + found.get("sending", 0) == 120, (trial, found)
            assert found.get("submitted", 0) == sum(sent.values()), (trial, found)


def test_with_5_percent_of_posts_failing_every_line_is_sent_or_reported_uncertain(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(1000)])
    db = tmp_path / "c.duckdb"
    with Sandbox(queue_delay=0.05, run_delay=0.05, seed=5) as sandbox:
        sandbox.inject(kind="error", status=503, method="POST", probability=0.05)
        proc = subprocess.run([CURATE, "submit", str(path), "--db", str(db), "--rpm", "100000",
                               "--group-size", "10"], env=environment(sandbox), capture_output=True, text=True,
                              timeout=180, check=False)
        faults = sandbox.stats().faults_served.get("error", 0)
        sent = sent_per_line(sandbox)
    assert faults > 0 and proc.returncode == 3, proc.stderr
    found = states(db)
    assert found == {"submitted": 1000 - 10 * faults, "uncertain": 10 * faults}
    assert len(sent) == found["submitted"] and max(sent.values()) == 1
    assert f"{10 * faults:,} uncertain" in proc.stdout
    assert f"curate submissions --db {db} --state uncertain" in proc.stderr
