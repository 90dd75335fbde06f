"""Sample and judge: a teacher answers stored prompts K times, a judge scores answers by a rubric, each paid once.

Every test runs against the sandbox on loopback (real HTTP) and a real DuckDB file: requests are
counted where they would be paid, at the sandbox, by their custom_id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from curate import judging
from curate.config import Settings
from curate.errors import UsageError
from curate.harvester import harvest
from curate.judging import JudgeOptions, judge, rubric
from curate.prompts import render, split_answer
from curate.sampling import SampleOptions, sample
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl
from tests.helpers import CURATE

TEACHER = "teacher/big-model"
JUDGE = "judge/strict-model"
FAST = SubmitOptions(rpm=None)
HARVEST_FAST = {"backoff": 0.01, "max_backoff": 0.1}


@pytest.fixture
def sandbox() -> Any:
    with Sandbox(queue_delay=0.02, run_delay=0.02) as sb:
        yield sb


def settings(sandbox: Sandbox) -> Settings:
    return Settings(api_key=sandbox.api_key, base_url=sandbox.url)


def traffic(store: Store, sandbox: Sandbox, tmp_path: Path, n: int = 12) -> None:
    """n chat rows in the store, as curate submit + harvest leave them."""
    path = write_jsonl(tmp_path / "traffic.jsonl", [chat_request(seed) for seed in range(n)])
    submit_file(store, settings(sandbox), path, FAST)
    collect(store, sandbox)


def collect(store: Store, sandbox: Sandbox) -> None:
    harvest(store, settings(sandbox), rpm=None, client_options=HARVEST_FAST)


def sent(sandbox: Sandbox) -> Counter[str]:
    """How many times each custom_id reached the sandbox: what would have been paid."""
    return Counter(sandbox.generation(i)["request"]["metadata"]["custom_id"]  # type: ignore[index]
                   for i in sandbox.generation_ids())


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return store.arrow(sql).to_pylist()


def test_split_answer_takes_the_final_assistant_message_only() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert split_answer(messages) == (messages[:1], messages[1])
    assert split_answer(messages[:1]) == (messages[:1], None)


def test_sample_sends_each_prompt_k_times_with_its_origin(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path)
    summary = sample(store, settings(sandbox), "chat", SampleOptions(model=TEACHER, n=3, temperature=0.7, submit=FAST))
    assert (summary.prompts, summary.requests, summary.submit.submitted) == (12, 36, 36)
    collect(store, sandbox)
    samples = rows(store, "select s.*, c.messages as source_messages from samples s join chat c on c.id = s.source_id")
    assert len(samples) == 36
    assert Counter(r["sample_index"] for r in samples) == {0: 12, 1: 12, 2: 12}
    for r in samples:
        assert r["model"] == TEACHER and r["temperature"] == 0.7
        # the sample's prompt is the source row's messages before its answer
        assert json.loads(r["messages"])[:-1] == json.loads(r["source_messages"])[:-1]


def test_sample_keeps_the_tools_the_prompt_offered(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path)
    sample(store, settings(sandbox), "chat", SampleOptions(model=TEACHER, submit=FAST))
    collect(store, sandbox)
    pairs = rows(store, "select s.tools as sampled, c.tools as source from samples s join chat c on c.id = s.source_id")
    assert any(p["source"] for p in pairs)
    assert all(p["sampled"] == p["source"] for p in pairs)


def test_running_sample_again_sends_nothing(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path)
    options = SampleOptions(model=TEACHER, n=2, temperature=0.5, submit=FAST)
    sample(store, settings(sandbox), "chat", options)
    again = sample(store, settings(sandbox), "chat", options)
    assert (again.submit.submitted, again.submit.already_submitted) == (0, 24)
    assert max(sent(sandbox).values()) == 1


def test_a_larger_n_sends_only_the_missing_samples(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path)
    sample(store, settings(sandbox), "chat", SampleOptions(model=TEACHER, n=2, temperature=0.5, submit=FAST))
    more = sample(store, settings(sandbox), "chat", SampleOptions(model=TEACHER, n=3, temperature=0.5, submit=FAST))
    assert (more.submit.submitted, more.submit.already_submitted) == (12, 24)
    assert max(sent(sandbox).values()) == 1


def test_samples_differ_by_index_above_temperature_zero(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path, n=4)
    sample(store, settings(sandbox), "select * from chat where tools is null",
           SampleOptions(model=TEACHER, n=3, temperature=1.0, submit=FAST))
    sample(store, settings(sandbox), "select * from chat where tools is null",
           SampleOptions(model=TEACHER, n=2, temperature=0.0, submit=FAST))
    collect(store, sandbox)
    distinct = rows(store, """select temperature, source_id, count(distinct messages) as answers from samples
                              group by all order by all""")
    assert {(r["temperature"], r["answers"]) for r in distinct} == {(0.0, 1), (1.0, 3)}


def test_sample_refuses_a_source_without_messages(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path, n=2)
    with pytest.raises(UsageError, match="no column messages"):
        sample(store, settings(sandbox), "select id from chat", SampleOptions(model=TEACHER, submit=FAST))
    assert sandbox.stats().submitted == 2


def test_sample_refuses_a_source_listing_an_id_twice(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path, n=2)
    with pytest.raises(UsageError, match="more than once"):
        sample(store, settings(sandbox), "select * from chat union all select * from chat",
               SampleOptions(model=TEACHER, submit=FAST))


def test_judge_scores_each_row_once_and_keeps_unparseable_answers(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    traffic(store, sandbox, tmp_path, n=40)
    traffic_ids = {r["id"] for r in rows(store, "select id from chat")}
    options = JudgeOptions(model=JUDGE, rubric=rubric("helpfulness"), submit=FAST)
    first = judge(store, settings(sandbox), "chat", options)
    assert (first.rows, first.submit.submitted) == (40, 40)
    again = judge(store, settings(sandbox), "chat", options)
    assert (again.submit.submitted, again.submit.already_submitted) == (0, 40)
    collect(store, sandbox)
    judged = rows(store, "select * from judgments")
    assert len(judged) == 40
    assert {r["judged_id"] for r in judged} == traffic_ids
    # a judge's answer is not a conversation to train on: chat holds the traffic alone
    assert {r["id"] for r in rows(store, "select id from chat")} == traffic_ids
    assert {(r["rubric"], r["judge_model"]) for r in judged} == {("helpfulness", JUDGE)}
    parsed = [r for r in judged if r["parse_error"] is None]
    broken = [r for r in judged if r["parse_error"] is not None]
    assert parsed and broken  # the sandbox answers one in twelve in prose
    assert all(1 <= r["score"] <= 10 and r["rationale"] for r in parsed)
    assert all(r["score"] is None and r["parse_error"] == "no JSON object in the answer" for r in broken)


def test_stats_counts_the_judgments_and_the_unparseable_ones(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    from curate.stats import stats

    traffic(store, sandbox, tmp_path, n=40)
    judge(store, settings(sandbox), "chat", JudgeOptions(model=JUDGE, rubric=rubric("correctness"), submit=FAST))
    collect(store, sandbox)
    broken = rows(store, "select count(*) as n from judgments where parse_error is not null")[0]["n"]
    overview = stats(store)
    assert broken > 0
    assert (overview.judgments, overview.unparseable_judgments) == (40, broken)
    shown = subprocess.run([CURATE, "stats", "--db", str(store.path)], capture_output=True, text=True, check=True)
    assert f"40 ({broken} unparseable" in shown.stdout


def test_an_edited_rubric_judges_again(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path, n=3)
    mine = tmp_path / "tone.md"
    mine.write_text("# Tone\n\nIs the answer polite?\n")
    judge(store, settings(sandbox), "chat", JudgeOptions(model=JUDGE, rubric=rubric(mine), submit=FAST))
    mine.write_text("# Tone\n\nIs the answer polite and warm?\n")
    edited = judge(store, settings(sandbox), "chat", JudgeOptions(model=JUDGE, rubric=rubric(mine), submit=FAST))
    assert edited.submit.submitted == 3
    collect(store, sandbox)
    assert rows(store, "select rubric, count(distinct rubric_hash) as n from judgments group by all") == [
        {"rubric": "tone", "n": 2}]


def test_judge_asks_for_json_by_schema_unless_told_not_to(store: Store) -> None:
    from curate.prompts import Row

    row = Row("g1", [{"role": "user", "content": "hi"}], {"role": "assistant", "content": "hello"}, None)
    with_schema = judging.request_for(row, JudgeOptions(model=JUDGE, rubric=rubric("correctness")))
    without = judging.request_for(row, JudgeOptions(model=JUDGE, rubric=rubric("correctness"), response_format=False))
    assert with_schema["response_format"]["json_schema"]["name"] == "judgment"
    assert "response_format" not in without
    assert without["messages"][0]["content"].startswith(judging.INSTRUCTIONS)


def test_the_judge_sees_tool_calls_and_results() -> None:
    prompt = [{"role": "user", "content": "weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "12 C"}]
    text = render(prompt, {"role": "assistant", "content": "It is 12 C."},
                  [{"type": "function", "function": {"name": "get_weather"}}])
    assert 'get_weather({"city":"Paris"})' in text and "result of call c1" in text and "12 C" in text
    assert text.index("THE ANSWER TO JUDGE") > text.index("12 C")


def test_an_unknown_rubric_names_the_shipped_ones() -> None:
    with pytest.raises(UsageError, match="correctness, helpfulness"):
        rubric("kindness")


def test_the_judgments_view_reads_scores_defensively(store: Store) -> None:
    from curate.synthetic import generation_record

    answers = ['{"score": 7, "rationale": "ok"}', 'Sure!\n```json\n{"score": "8", "rationale": "fine"}\n```',
               '{"score": 11, "rationale": "x"}', '{"rationale": "no score"}', '{"score": "high"}', "{not json}",
               "", '{"score": 3.5}']
    records = []
    for i, answer in enumerate(answers):
        record = generation_record(i, state="Success")
        record["request"]["metadata"] = {"custom_id": f"judge:h:m:row{i}", "curate_task": "judge",
                                         "curate_judged_id": f"row{i}", "curate_rubric": "r", "curate_rubric_hash": "h"}
        record["response"]["choices"][0]["message"] = {"role": "assistant", "content": answer}
        records.append(json.dumps(record))
    store.ingest_texts(records, source="test")
    got = {r["judged_id"]: (r["score"], r["parse_error"]) for r in rows(store, "select * from judgments")}
    assert got == {
        "row0": (7.0, None), "row1": (8.0, None), "row2": (None, "the score is outside 1-10: 11"),
        "row3": (None, 'no "score" in the answer\'s JSON'), "row4": (None, 'the score is not a number: "high"'),
        "row5": (None, "the answer's JSON object does not parse"), "row6": (None, "the judge gave no text"),
        "row7": (3.5, None),
    }


def test_the_score_range_the_view_checks_is_the_judges() -> None:
    sql = (Path(__file__).resolve().parent.parent / "queries" / "judgments.sql").read_text()
    low, high = judging.SCORE_RANGE
    assert f"number < {low} or number > {high}" in sql and f"outside {low}-{high}" in sql


@pytest.mark.parametrize(("command", "expected"), [
    (["sample", "chat", "--model", TEACHER, "--n", "3", "--temperature", "0.9"], 90),
    (["judge", "chat", "--rubric", "helpfulness", "--model", JUDGE], 30),
])
def test_killed_mid_run_and_run_again_pays_each_request_once(tmp_path: Path, command: list[str], expected: int) -> None:
    db = tmp_path / "c.duckdb"
    with Sandbox(queue_delay=0.02, run_delay=0.02) as sandbox:
        store = Store(db)
        traffic(store, sandbox, tmp_path, n=30)
        before = set(sandbox.generation_ids())
        env = {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url, "PATH": "/usr/bin:/bin"}
        argv = [CURATE, *command, "--db", str(db), "--group-size", "3", "--rpm", "6000", "--json"]
        sandbox.inject(kind="slow", method="POST", delay=0.3, probability=1.0)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(set(sandbox.generation_ids()) - before) < expected // 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # some POSTs answered, some in flight, some not sent
        proc.communicate()
        sandbox.clear_faults()
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode in (0, 3), again.stderr
        paid = Counter(sandbox.generation(i)["request"]["metadata"]["custom_id"]  # type: ignore[index]
                       for i in set(sandbox.generation_ids()) - before)
    assert max(paid.values()) == 1 and len(paid) <= expected
    summary = json.loads(again.stdout)
    # every request was sent once, or is reported as possibly sent (its POST had begun when it was killed)
    assert len(paid) + summary["uncertain"] >= expected
    assert summary["submitted"] + summary["already_submitted"] + summary["uncertain"] == expected


def test_scored_has_each_rows_signals_and_latest_score_and_exports_filtered(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    from curate.exporter import export
    from curate.signals import score

    traffic(store, sandbox, tmp_path, n=30)
    judge(store, settings(sandbox), "chat", JudgeOptions(model=JUDGE, rubric=rubric("helpfulness"), submit=FAST))
    collect(store, sandbox)
    score(store)
    scored = rows(store, "select * from scored")
    judged = {r["judged_id"]: r["score"] for r in rows(store, "select * from judgments")}
    assert len(scored) == 30
    for r in scored:
        assert r["judge_helpfulness"] == judged[r["id"]]  # None where the judgment did not parse
        assert r["judge_correctness"] is None
        assert r["refusal"] is not None and r["answer_words"] is not None
    wanted = rows(store, "select count(*) as n from scored where judge_helpfulness >= 5 and not refusal")[0]["n"]
    assert 0 < wanted < 30
    result = export(store, "scored", tmp_path / "best", where="judge_helpfulness >= 5 and not refusal", test_size=0)
    assert result.counts["filtered"] == wanted
    assert "judge_helpfulness >= 5 and not refusal" in (tmp_path / "best" / "README.md").read_text()


def test_scored_has_a_column_for_each_shipped_rubric() -> None:
    sql = (Path(__file__).resolve().parent.parent / "queries" / "scored.sql").read_text()
    for name in judging.shipped_rubrics():
        assert f"judge_scores['{name}'] as judge_{name}" in sql


def test_sample_and_harvest_run_inside_a_running_event_loop(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    """A Jupyter cell runs inside the kernel's event loop: asyncio.run() alone would refuse."""
    import asyncio

    traffic(store, sandbox, tmp_path, n=3)

    async def cell() -> int:
        summary = sample(store, settings(sandbox), "chat", SampleOptions(model=TEACHER, submit=FAST))
        collect(store, sandbox)
        return summary.submit.submitted

    assert asyncio.run(cell()) == 3
    assert rows(store, "select count(*) as n from samples")[0]["n"] == 3


# --- found by review: each a defect first, then fixed ----------------------------------------


def test_sample_again_after_the_answers_are_harvested_sends_nothing(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    traffic(store, sandbox, tmp_path, n=10)
    options = SampleOptions(model=TEACHER, n=3, temperature=0.8, submit=FAST)
    sample(store, settings(sandbox), "chat", options)
    collect(store, sandbox)  # the teacher's answers are chat rows now, with the same prompts
    again = sample(store, settings(sandbox), "chat", options)
    assert (again.prompts, again.submit.submitted, again.submit.already_submitted) == (10, 0, 30)
    assert max(sent(sandbox).values()) == 1


def test_rows_sharing_a_prompt_are_sampled_once(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path, n=4)
    twice = "select * from chat union all select * replace ('copy-' || id as id) from chat"
    summary = sample(store, settings(sandbox), twice, SampleOptions(model=TEACHER, n=2, submit=FAST))
    assert (summary.prompts, summary.submit.submitted) == (4, 8)


def test_retry_failed_asks_again_once_for_samples_that_failed(store: Store, tmp_path: Path) -> None:
    with Sandbox(queue_delay=0.02, run_delay=0.02, failure_rate=0.3) as sandbox:
        traffic(store, sandbox, tmp_path, n=20)
        options = SampleOptions(model=TEACHER, n=2, temperature=0.5, submit=FAST)
        sample(store, settings(sandbox), "chat", options)
        collect(store, sandbox)
        failed = rows(store, "select count(*) as n from generation_rows where starts_with(custom_id, 'sample:') "
                             "and state = 'Failed'")[0]["n"]
        assert failed > 0
        plain = sample(store, settings(sandbox), "chat", options)
        assert plain.submit.submitted == 0  # never without asking: each attempt is paid for
        retried = sample(store, settings(sandbox), "chat", options, retry_failed=True)
        assert retried.retried == retried.submit.submitted == failed
        again = sample(store, settings(sandbox), "chat", options, retry_failed=True)
        assert again.submit.submitted == 0  # the new attempts are not back yet: nothing is asked twice
        assert max(sent(sandbox).values()) == 1


def test_retry_failed_asks_again_for_unreadable_judgments_and_the_score_wins(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    traffic(store, sandbox, tmp_path, n=40)
    options = JudgeOptions(model=JUDGE, rubric=rubric("helpfulness"), submit=FAST)
    judge(store, settings(sandbox), "chat", options)
    collect(store, sandbox)
    unreadable = rows(store, "select count(*) as n from judgments where parse_error is not null")[0]["n"]
    assert unreadable > 0
    retried = judge(store, settings(sandbox), "chat", options, retry_failed=True)
    assert retried.retried == retried.submit.submitted == unreadable
    assert max(sent(sandbox).values()) == 1


def test_a_changed_conversation_or_request_shape_is_judged_again(
    sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    traffic(store, sandbox, tmp_path, n=3)
    base = JudgeOptions(model=JUDGE, rubric=rubric("correctness"), submit=FAST)
    judge(store, settings(sandbox), "chat", base)
    plain = judge(store, settings(sandbox), "chat", JudgeOptions(model=JUDGE, rubric=rubric("correctness"),
                                                                 response_format=False, submit=FAST))
    edited = judge(store, settings(sandbox), "select * replace (replace(messages::varchar, 'Tell', 'TELL') as messages) "
                   "from chat", base)
    assert (plain.submit.submitted, plain.submit.changed) == (3, 0)
    assert (edited.submit.submitted, edited.submit.changed) == (3, 0)


def test_a_later_failed_judgment_does_not_hide_an_earlier_score(store: Store) -> None:
    from curate.synthetic import generation_record

    def judgment(seed: int, custom_id: str, state: str, finished: str) -> str:
        record = generation_record(seed, state=state)
        record["finishedAt"] = finished
        record["request"]["metadata"] = {"custom_id": custom_id, "curate_task": "judge", "curate_judged_id": "row1",
                                         "curate_rubric": "r", "curate_rubric_hash": "h"}
        record["request"]["model"] = "j"
        if state == "Success":
            record["response"]["choices"][0]["message"] = {"role": "assistant", "content": '{"score": 8}'}
        return json.dumps(record)

    store.ingest_texts([judgment(1, "judge:h:d:row1", "Success", "2026-11-01T10:00:00Z"),
                        judgment(2, "judge:h:d:row1~retry1", "Failed", "2026-11-02T10:00:00Z")], source="test")
    assert [(r["score"], r["parse_error"]) for r in rows(store, "select * from judgments")] == [(8.0, None)]


def test_braces_in_the_prose_before_the_json_do_no_harm(store: Store) -> None:
    from curate.synthetic import generation_record

    record = generation_record(1, state="Success")
    record["request"]["metadata"] = {"custom_id": "judge:h:d:row1", "curate_task": "judge", "curate_judged_id": "row1",
                                     "curate_rubric": "r", "curate_rubric_hash": "h"}
    record["response"]["choices"][0]["message"] = {
        "role": "assistant", "content": 'It builds a dict {a: 1} on a scale {1-10}. {"score": 9, "rationale": "good"}'}
    store.ingest_texts([json.dumps(record)], source="test")
    assert [(r["score"], r["rationale"]) for r in rows(store, "select * from judgments")] == [(9.0, "good")]


@pytest.mark.parametrize(("tools", "why"), [
    ("'nope'", "tools is not JSON"),
    ("'{\"a\": 1}'", "tools is not a JSON array"),
    ("'[{\"type\": \"function\", \"function\": null}]'", "tools is not a JSON array"),
])
def test_bad_tools_in_a_source_are_refused_naming_the_row(
    sandbox: Sandbox, store: Store, tmp_path: Path, tools: str, why: str
) -> None:
    traffic(store, sandbox, tmp_path, n=2)
    before = sandbox.stats().submitted
    with pytest.raises(UsageError, match=f"SOURCE row .*: {why}"):
        sample(store, settings(sandbox), f"select * replace ({tools} as tools) from chat",
               SampleOptions(model=TEACHER, submit=FAST))
    assert sandbox.stats().submitted == before


def test_a_bad_where_is_a_usage_error_exit_2(sandbox: Sandbox, store: Store, tmp_path: Path) -> None:
    traffic(store, sandbox, tmp_path, n=2)
    env = {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([CURATE, "judge", "chat", "--rubric", "helpfulness", "--model", JUDGE, "--db",
                           str(store.path), "--where", "nosuch = 1"], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and "nosuch" in done.stderr


def test_a_binary_rubric_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.md"
    path.write_bytes(b"# R\n\x00\x01binary")
    with pytest.raises(UsageError, match="control characters"):
        rubric(path)
