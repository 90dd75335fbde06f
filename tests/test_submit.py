"""Submit: every line paid once, in groups by default, and a run that keeps going past one bad answer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from curate import ledger, submissions
from curate.config import Settings
from curate.importer import import_file
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import InvalidRequests, SubmitOptions, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl


@pytest.fixture
def sandbox() -> Any:
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sb:
        yield sb


def settings(sandbox: Sandbox, key: str | None = None) -> Settings:
    return Settings(api_key=key or sandbox.api_key, base_url=sandbox.url)


def requests(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [chat_request(seed) for seed in range(start, start + n)]


def without_custom_id(n: int) -> list[dict[str, Any]]:
    """Requests as many users write them: no metadata, so each is keyed by its content."""
    return [{k: v for k, v in body.items() if k != "metadata"} for body in requests(n)]


def fast(**options: Any) -> SubmitOptions:
    return SubmitOptions(rpm=None, **options)


def states(store: Store) -> dict[str, int]:
    return {r["state"]: r["n"] for r in store.arrow("select state, count(*) as n from submissions group by all").to_pylist()}


def test_requests_go_in_groups_of_50_by_default(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(120))
    summary = submit_file(store, settings(sandbox), path, fast())
    assert (summary.submitted, summary.posts, summary.exit_code) == (120, 3, 0)
    assert sandbox.stats().groups_submitted == 3
    assert store.arrow("select kind, count(*) as n from ledger group by all").to_pylist() == [
        {"kind": "group", "n": 3}]
    assert store.arrow("select count(*) as n from submissions where state = 'submitted' "
                       "and group_id is not null").to_pylist() == [{"n": 120}]


def test_group_size_1_submits_singly_and_ledgers_each_generation(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(5))
    summary = submit_file(store, settings(sandbox), path, fast(group_size=1))
    assert (summary.submitted, summary.posts) == (5, 5)
    ids = {r["id"] for r in store.arrow("select id from ledger where kind = 'generation'").to_pylist()}
    assert ids == set(sandbox.generation_ids())


def test_rerunning_the_same_file_sends_nothing(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(60))
    submit_file(store, settings(sandbox), path, fast())
    again = submit_file(store, settings(sandbox), path, fast())
    assert (again.submitted, again.already_submitted, again.posts) == (0, 60, 0)
    assert sandbox.stats().submitted == 60


def test_lines_without_custom_id_are_keyed_by_content(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", without_custom_id(3))
    submit_file(store, settings(sandbox), path, fast())
    assert submit_file(store, settings(sandbox), path, fast()).submitted == 0


def test_a_line_without_custom_id_is_sent_with_its_key_as_custom_id(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    (body,) = without_custom_id(1)
    submit_file(store, settings(sandbox), write_jsonl(tmp_path / "r.jsonl", [body]), fast(group_size=1))
    (generation_id,) = sandbox.generation_ids()
    sent = sandbox.generation(generation_id)["request"]["metadata"]["custom_id"]  # type: ignore[index]
    assert sent == submissions.line_key(body)
    assert store.arrow("select key, custom_id from submissions").to_pylist() == [{"key": sent, "custom_id": sent}]


def test_webhook_id_does_not_change_a_lines_key(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", without_custom_id(4))
    submit_file(store, settings(sandbox), path, fast())
    again = submit_file(store, settings(sandbox), path, fast(webhook_id="AhALzdz8S"))
    assert (again.submitted, again.already_submitted) == (0, 4)
    assert sandbox.stats().submitted == 4


def test_bad_lines_refuse_the_file_before_anything_is_sent(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    lines: list[Any] = requests(4)
    lines[1] = "{not json"
    lines[2] = {"model": "m", "messages": []}
    lines.append(dict(lines[0]))  # the same custom_id again
    path = write_jsonl(tmp_path / "r.jsonl", lines)
    with pytest.raises(InvalidRequests) as caught:
        submit_file(store, settings(sandbox), path, fast())
    message = str(caught.value)
    assert "line 2: not valid JSON" in message
    assert "line 3: no messages" in message
    assert "line 5: the same request as line 1" in message
    assert sandbox.stats().calls_total == 0
    assert store.arrow("select count(*) as n from submissions").to_pylist() == [{"n": 0}]


def test_the_webhook_id_is_sent_on_every_request_and_never_stored(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(3))
    submit_file(store, settings(sandbox), path, fast(group_size=1, webhook_id="AhALzdz8S"))
    for generation_id in sandbox.generation_ids():
        assert sandbox.generation(generation_id)["request"]["metadata"]["webhook_id"] == "AhALzdz8S"  # type: ignore[index]
    stored = store.arrow("select request::varchar as r from submissions").to_pylist()
    assert stored and not any("AhALzdz8S" in row["r"] for row in stored)


def test_a_5xx_leaves_its_group_uncertain_and_the_run_goes_on(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(50))
    sandbox.inject(kind="error", status=503, method="POST", times=1)
    summary = submit_file(store, settings(sandbox), path, fast(group_size=10, concurrency=1))
    assert (summary.submitted, summary.uncertain, summary.posts, summary.stopped) == (40, 10, 4, None)
    assert summary.exit_code == 3
    assert states(store) == {"submitted": 40, "uncertain": 10}
    assert sandbox.stats().submitted == 40


def test_an_uncertain_line_is_not_sent_again_unless_asked(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(3))
    sandbox.inject(kind="error", status=503, method="POST", times=1)
    first = submit_file(store, settings(sandbox), path, fast(group_size=1, concurrency=1))
    assert (first.submitted, first.uncertain) == (2, 1)
    second = submit_file(store, settings(sandbox), path, fast(group_size=1))
    assert (second.submitted, second.already_submitted, second.uncertain) == (0, 2, 1)
    third = submit_file(store, settings(sandbox), path, fast(group_size=1, resend_uncertain=True))
    assert (third.submitted, third.exit_code) == (1, 0)
    assert sandbox.stats().submitted == 3


@pytest.mark.parametrize("group_size", [1, 10])
def test_a_line_the_api_refuses_is_failed_and_the_others_are_sent(
    sandbox: Sandbox, store: Store, tmp_path: Path, group_size: int
) -> None:
    lines = requests(10)
    lines[6]["messages"] = ["not an object"]
    path = write_jsonl(tmp_path / "r.jsonl", lines)
    summary = submit_file(store, settings(sandbox), path, fast(group_size=group_size))
    assert (summary.submitted, summary.failed, summary.stopped, summary.exit_code) == (9, 1, None, 3)
    (failed,) = store.arrow("select line, error from submissions where state = 'failed'").to_pylist()
    assert failed["line"] == 7
    assert "400" in failed["error"] and "messages[0] must be an object" in failed["error"]
    assert sandbox.stats().submitted == 9


def test_a_failed_line_is_sent_again_by_the_next_run(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    lines = requests(3)
    lines[1]["messages"] = ["not an object"]
    path = write_jsonl(tmp_path / "r.jsonl", lines)
    submit_file(store, settings(sandbox), path, fast(group_size=1))
    lines[1] = chat_request(1)  # fixed, same custom_id
    submit_file(store, settings(sandbox), write_jsonl(path, lines), fast(group_size=1))
    assert states(store) == {"submitted": 3}


def test_posts_failing_in_a_row_stop_the_run_and_give_back_what_was_not_sent(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(400))
    sandbox.inject(kind="error", status=502, method="POST", probability=1.0)
    summary = submit_file(store, settings(sandbox), path, fast(group_size=10, max_failures=3))
    assert summary.stopped is not None and "3 POSTs in a row failed" in summary.stopped
    assert summary.exit_code == 1
    assert summary.uncertain >= 30 and summary.submitted == 0
    assert summary.uncertain + summary.not_sent == 400
    assert states(store) == {"uncertain": summary.uncertain}  # what was never sent is not claimed


def test_a_refused_key_stops_the_run_at_once(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(100))
    summary = submit_file(store, settings(sandbox, key="wrong"), path, fast(group_size=10, concurrency=1))
    assert summary.stopped is not None and "401" in summary.stopped
    assert (summary.failed, summary.not_sent, summary.exit_code) == (10, 90, 1)
    assert states(store) == {"failed": 10}


def test_an_uncertain_line_settles_when_its_generation_is_imported(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(3))
    # The API creates the generation, and its answer is lost on the way back.
    sandbox.inject(kind="error", status=504, method="POST", after=True, times=1)
    summary = submit_file(store, settings(sandbox), path, fast(group_size=1, concurrency=1))
    assert (summary.submitted, summary.uncertain) == (2, 1)
    known = {r["id"] for r in store.arrow("select id from ledger").to_pylist()}
    (lost,) = set(sandbox.generation_ids()) - known
    export = write_jsonl(tmp_path / "dashboard.jsonl", [sandbox.generation(lost)])
    import_file(store, export)
    assert states(store) == {"submitted": 3}
    (line,) = store.arrow("select generation_id from submissions where generation_id = ?", [lost]).to_pylist()
    assert store.arrow("select count(*) as n from ledger where id = ?", [lost]).to_pylist() == [{"n": 1}]
    assert line["generation_id"] == lost


def test_an_uncertain_group_settles_when_its_members_reach_the_store(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(5))
    sandbox.inject(kind="error", status=504, method="POST", after=True, times=1)
    assert submit_file(store, settings(sandbox), path, fast()).uncertain == 5
    bodies = [json.dumps(sandbox.generation(i)) for i in sandbox.generation_ids()]
    store.ingest_texts(bodies, source="webhook")
    assert states(store) == {"submitted": 5}
    assert submit_file(store, settings(sandbox), path, fast()).exit_code == 0


def test_a_poll_never_reopens_an_id_a_webhook_settled(store: Store) -> None:
    with store.write() as con:
        ledger.add(con, ["g1"], kind="generation", source="submit")
        ledger.settle(con, [("g1", "Success")], source="webhook")
        ledger.record_polls(con, [], [("g1", "In Progress", 1, "2026-01-01T00:00:00+00:00")],
                            first_delay=1, max_delay=2)
    (row,) = store.arrow("select last_state, done_at is not null as done from ledger").to_pylist()
    assert row == {"last_state": "Success", "done": True}


def test_options_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="group size must be 1 to 50"):
        SubmitOptions(group_size=51)
    with pytest.raises(ValueError, match="at least 1"):
        SubmitOptions(concurrency=0)


def test_a_line_claimed_by_a_pid_that_now_names_another_process_is_taken_again(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", requests(2))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.write() as con:  # what a killed run left, its PID since given to another process
            line = submissions.Line(submissions.line_key(requests(1)[0]), 1, "{}", "c")
            submissions.claim(con, [line], by=f"{socket.gethostname()}:{other.pid}:1:dead", source="submit:x",
                              spooling=set)
        summary = submit_file(store, settings(sandbox), path, fast())
    finally:
        other.kill()
        other.wait()
    assert (summary.submitted, summary.elsewhere) == (2, 0)
