"""Attacks on `curate submit`'s promises, from a hostile review: each test is one promise an attack broke once."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from curate import migrations, spool, submissions
from curate.config import Settings
from curate.importer import import_file
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import InvalidRequests, SubmitOptions, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl
from tests.helpers import CURATE
from tests.test_submit import without_custom_id


@pytest.fixture
def sandbox() -> Any:
    with Sandbox(queue_delay=0.05, run_delay=0.05) as sb:
        yield sb


def settings(sandbox: Sandbox) -> Settings:
    return Settings(api_key=sandbox.api_key, base_url=sandbox.url)


def fast(**options: Any) -> SubmitOptions:
    return SubmitOptions(rpm=None, **options)


def sent_per_custom_id(sandbox: Sandbox) -> Counter[str]:
    return Counter(sandbox.generation(i)["request"]["metadata"]["custom_id"]  # type: ignore[index]
                   for i in sandbox.generation_ids())


def cli_submit(sandbox: Sandbox, db: Path, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INFERENCE_API_KEY", "INFERENCE_BASE_URL", "CURATE_DB")}
    env |= {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url}
    return subprocess.run([CURATE, "submit", str(path), "--db", str(db), "--rpm", "100000", "--json", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


# -- promise 1: no line is ever sent twice ---------------------------------------------------------


def test_a_line_resent_with_the_custom_id_curate_sent_it_with_is_not_paid_twice(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    # A line without custom_id goes out with metadata.custom_id = its key ("sha256:..."). The same
    # request, as the API saw it (e.g. copied back from its generation's request), is the same line.
    (body,) = without_custom_id(1)
    submit_file(store, settings(sandbox), write_jsonl(tmp_path / "a.jsonl", [body]), fast(group_size=1))
    as_sent = {**body, "metadata": {"custom_id": submissions.line_key(body)}}
    submit_file(store, settings(sandbox), write_jsonl(tmp_path / "b.jsonl", [as_sent]), fast(group_size=1))
    assert max(sent_per_custom_id(sandbox).values()) == 1


def test_a_copied_back_line_edited_under_curates_custom_id_is_not_reported_submitted(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    # A generation's request, copied back and edited (another model), still carries the
    # "sha256:..." custom_id curate gave the original: a new request, not "already submitted".
    (body,) = without_custom_id(1)
    submit_file(store, settings(sandbox), write_jsonl(tmp_path / "a.jsonl", [body]), fast(group_size=1))
    edited = {**body, "model": body["model"] + "-bigger", "metadata": {"custom_id": submissions.line_key(body)}}
    try:
        summary = submit_file(store, settings(sandbox), write_jsonl(tmp_path / "b.jsonl", [edited]),
                              fast(group_size=1))
    except InvalidRequests:
        return
    assert (summary.already_submitted, summary.exit_code) != (1, 0)


def test_a_line_whose_custom_id_was_sent_with_another_request_is_not_reported_submitted(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    # custom_ids like "req-1" are reused from file to file; a different request under the same
    # custom_id is not "already submitted", and a run that never sent it must not exit 0.
    first, second = chat_request(1), chat_request(2)
    first["metadata"] = {"custom_id": "req-1"}
    second["metadata"] = {"custom_id": "req-1"}
    submit_file(store, settings(sandbox), write_jsonl(tmp_path / "a.jsonl", [first]), fast(group_size=1))
    try:
        summary = submit_file(store, settings(sandbox), write_jsonl(tmp_path / "b.jsonl", [second]),
                              fast(group_size=1))
    except InvalidRequests:
        return  # refusing the file, naming the line, would keep the promise
    assert (summary.already_submitted, summary.exit_code) != (1, 0)


def spool_refuses_once(monkeypatch: pytest.MonkeyPatch, state: str) -> list[bool]:
    """The disk fills when the spool is first asked to write a ``state`` record; the list says it did."""
    real = spool.SpoolWriter.append
    refused: list[bool] = []

    def full_disk_once(self: spool.SpoolWriter, frames: Any) -> int:
        if not refused and any(f'"state":"{state}"'.encode() in f for f in frames):
            refused.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, frames)

    monkeypatch.setattr(spool.SpoolWriter, "append", full_disk_once)
    return refused


# -- promise 2: every id the API answered ends up in the ledger ------------------------------------


def test_an_id_answered_while_the_spool_disk_is_full_still_reaches_the_ledger(
    sandbox: Sandbox, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(3)])
    refused = spool_refuses_once(monkeypatch, "submitted")
    try:
        submit_file(store, settings(sandbox), path, fast(group_size=1, concurrency=1))
    except OSError:
        pass
    monkeypatch.undo()
    ledgered = {r["id"] for r in store.arrow("select id from ledger").to_pylist()}
    assert refused and set(sandbox.generation_ids()) <= ledgered


# -- promise 3: lines a run claimed and never sent go back ----------------------------------------


def test_a_run_that_ends_in_an_error_gives_back_the_lines_it_never_sent(
    sandbox: Sandbox, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that ends on an error, in a process that lives on (a notebook's kernel), must not
    # leave lines `claimed` that it never sent: the next run would take them for another's.
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(8)])
    refused = spool_refuses_once(monkeypatch, "submitted")
    try:
        submit_file(store, settings(sandbox), path, SubmitOptions(rpm=120, group_size=1, concurrency=4))
    except OSError:
        pass
    monkeypatch.undo()
    assert refused
    never_posted = store.arrow("select count(*) as n from submissions where state = 'claimed'").to_pylist()
    assert never_posted == [{"n": 0}]


FULL_DISK_RUN = """
import errno, sys
from curate import spool
from curate.config import Settings
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
real = spool.SpoolWriter.append
def full_disk(self, frames):
    if any(b'"state":"sending"' in f for f in frames):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, frames)
spool.SpoolWriter.append = full_disk
try:
    submit_file(Store(sys.argv[1]), Settings(api_key=sys.argv[3], base_url=sys.argv[4]), sys.argv[2],
                SubmitOptions(rpm=250, group_size=1, concurrency=1))
except OSError as exc:
    print("ended:", exc)
else:
    print("ended")
"""


def test_a_run_whose_spool_refuses_a_write_ends_instead_of_hanging(sandbox: Sandbox, tmp_path: Path) -> None:
    # A full disk refuses the `sending` record before the first POST: the run must end with the
    # error, not wait forever for a worker that is gone.
    path = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(40)])
    proc = subprocess.Popen([sys.executable, "-c", FULL_DISK_RUN, str(tmp_path / "c.duckdb"), str(path),
                             sandbox.api_key, sandbox.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("submit hung after the spool refused a write")
    assert "ended" in out


# -- promise 4: exit codes --------------------------------------------------------------------------


def test_a_valid_line_with_a_carriage_return_between_tokens_is_submitted(sandbox: Sandbox, tmp_path: Path) -> None:
    # "\r" is JSON whitespace: a line holding one is one line, for the check and the sender alike.
    text = json.dumps(chat_request(1)).replace(', "messages"', ',\r"messages"', 1)
    path = tmp_path / "r.jsonl"
    path.write_bytes(text.encode() + b"\n")
    done = cli_submit(sandbox, tmp_path / "c.duckdb", path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr[-500:]


@pytest.mark.parametrize("line", [
    '{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',
    '{"model":"m","messages":[{"role":"user","content":"x"}],"metadata":{"custom_id":"\\ud800"}}',
], ids=["in-content", "in-custom-id"])
def test_a_line_with_a_lone_surrogate_is_refused_as_bad_input(sandbox: Sandbox, tmp_path: Path, line: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    done = cli_submit(sandbox, tmp_path / "c.duckdb", path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2 and "line 1" in done.stderr


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
def test_a_line_with_a_number_json_cannot_carry_is_refused_as_bad_input(
    sandbox: Sandbox, tmp_path: Path, value: str
) -> None:
    # Python's json reads NaN/Infinity (and 1e400 as inf), which no request body can carry: such
    # a line is bad input, named before anything is sent.
    lines = [json.dumps(chat_request(seed)) for seed in range(3)]
    lines.append('{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":' + value + "}")
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = cli_submit(sandbox, tmp_path / "c.duckdb", path, "--group-size", "1")
    assert "Traceback" not in done.stderr
    assert done.returncode == 2 and "line 4" in done.stderr
    assert sandbox.stats().calls_total == 0


def test_a_line_that_never_left_is_not_reported_uncertain(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    # A body that cannot be encoded never leaves, so it must not be written down as `sending`
    # (reported "may be paid", never re-sent without --resend-uncertain).
    path = tmp_path / "r.jsonl"
    path.write_text('{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}\n')
    try:
        submit_file(store, settings(sandbox), path, fast(group_size=1))
    except (ValueError, InvalidRequests):
        pass
    assert sandbox.stats().calls_total == 0
    assert store.arrow("select count(*) as n from submissions where state in ('sending', 'uncertain')"
                       ).to_pylist() == [{"n": 0}]


# -- promise 5: the webhook id is never stored in submissions.request ------------------------------


def test_migrating_an_old_store_removes_the_webhook_id_from_stored_requests(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    names = [m.__name__ for m in migrations.MIGRATIONS]
    migrations.apply(con, migrations.MIGRATIONS[: names.index("m008_submission_claims")])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {"webhook_id": "SECRETw1"}}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    old_key = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()  # how curate before m008 keyed it
    con.execute("insert into submissions (key, source, line, request, state, generation_id, created_at, updated_at) "
                "values (?, 'submit:f', 1, ?, 'submitted', 'g1', now(), now())", [old_key, json.dumps(body)])
    con.close()
    Store(path).migrate()
    stored = Store(path).arrow("select request::varchar as r from submissions").to_pylist()
    assert stored and not any("SECRETw1" in row["r"] for row in stored)


# -- promise 6: a generation with an open line's custom_id settles it ------------------------------


def test_an_uncertain_line_is_not_settled_by_an_older_generation_of_another_request(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    # A generation of an unrelated request that happens to share the custom_id (an earlier
    # batch, another project's export) is in the store before the line is sent.
    older = chat_request(1)
    older["metadata"] = {"custom_id": "req-1"}
    elsewhere = Store(tmp_path / "elsewhere.duckdb")
    submit_file(elsewhere, settings(sandbox), write_jsonl(tmp_path / "old.jsonl", [older]), fast(group_size=1))
    (foreign,) = sandbox.generation_ids()
    import_file(store, write_jsonl(tmp_path / "export.jsonl", [sandbox.generation(foreign)]))

    line = chat_request(2)
    line["metadata"] = {"custom_id": "req-1"}
    path = write_jsonl(tmp_path / "r.jsonl", [line])
    sandbox.inject(kind="error", status=503, method="POST", times=1)  # not created: nothing to find
    assert submit_file(store, settings(sandbox), path, fast(group_size=1)).uncertain == 1
    submit_file(store, settings(sandbox), path, fast(group_size=1))
    (row,) = store.arrow("select state, generation_id from submissions").to_pylist()
    assert row["generation_id"] != foreign and row["state"] == "uncertain"
