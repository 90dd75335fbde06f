"""``curate stats``: the store's overview, each figure checked against a SQL count of the same store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from curate import ledger
from curate.cli.stats_commands import stats_command
from curate.stats import OTHER_MODELS, STATES, TOP_MODELS, stats
from curate.store import Store
from curate.synthetic import generation_id, generation_record

# Seeds 0-29 as generated (seed 17 is Failed), 30-32 forced Failed, 33-35 Queued, 36 In Progress.
RECORDS = (
    [generation_record(seed) for seed in range(30)]
    + [generation_record(seed, state="Failed") for seed in range(30, 33)]
    + [generation_record(seed, state="Queued") for seed in range(33, 36)]
    + [generation_record(36, state="In Progress")]
)


def ingest(store: Store, records: list[dict[str, Any]], source: str = "t") -> None:
    store.ingest_texts([json.dumps(r) for r in records], source=source)


def pairs(store: Store, sql: str) -> dict[str, int]:
    return {row["k"]: row["n"] for row in store.arrow(sql).to_pylist()}


@pytest.fixture
def filled(store: Store) -> Store:
    ingest(store, RECORDS[:20], source="a.jsonl")
    ingest(store, RECORDS[20:], source="b.jsonl")
    return store


def test_an_empty_store_counts_zero_everywhere_and_has_no_date_range(store: Store) -> None:
    s = stats(store)
    assert s.generations == s.rejects == s.ledger_pending == s.ledger_pending_groups == 0
    assert s.by_state == tuple((state, 0) for state in STATES)
    assert s.by_model == s.by_source == s.top_reject_reasons == ()
    assert (s.first_dispatched_at, s.last_dispatched_at, s.first_finished_at, s.last_finished_at) == (None,) * 4
    assert (s.prompt_tokens, s.completion_tokens, s.total_tokens, s.mean_tokens_per_success) == (0, 0, 0, None)
    assert (s.chat_rows, s.conversations) == (0, 0)


def test_every_state_is_listed_in_order_with_its_sql_count(filled: Store) -> None:
    expected = pairs(filled, "select state as k, count(*) as n from generations group by all")
    assert dict(stats(filled).by_state) == {state: expected.get(state, 0) for state in STATES}
    assert [state for state, _ in stats(filled).by_state] == list(STATES)
    assert dict(stats(filled).by_state) == {"Queued": 3, "In Progress": 1, "Success": 29, "Failed": 4}


def test_a_state_with_no_generation_is_listed_as_zero(store: Store) -> None:
    ingest(store, [generation_record(1), generation_record(2)])
    assert dict(stats(store).by_state) == {"Queued": 0, "In Progress": 0, "Success": 2, "Failed": 0}


def test_models_and_sources_match_a_sql_count(filled: Store) -> None:
    s = stats(filled)
    assert s.generations == len(RECORDS)
    assert dict(s.by_model) == pairs(filled, "select model as k, count(*) as n from generations group by all")
    assert dict(s.by_source) == {"a.jsonl": 20, "b.jsonl": len(RECORDS) - 20}
    assert [n for _, n in s.by_model] == sorted((n for _, n in s.by_model), reverse=True)


def test_models_past_the_top_ten_are_counted_together_as_other(store: Store) -> None:
    records = []
    for seed, model in [(seed, seed) for seed in range(TOP_MODELS + 3)] + [(100, TOP_MODELS + 2)]:
        record = generation_record(seed)
        record["request"]["model"] = f"model-{model:02d}"
        records.append(record)
    ingest(store, records)
    by_model = stats(store).by_model
    assert by_model[0] == (f"model-{TOP_MODELS + 2:02d}", 2)  # the most used first, then by name
    assert [name for name, _ in by_model[1:TOP_MODELS]] == [f"model-{i:02d}" for i in range(TOP_MODELS - 1)]
    assert by_model[TOP_MODELS:] == ((OTHER_MODELS, 3),)


def test_a_refused_line_shows_in_rejects_with_its_reason(store: Store) -> None:
    store.ingest_texts([json.dumps(generation_record(1)), "{not json", "{still not json"], source="t")
    s = stats(store)
    assert s.generations == 1
    assert s.rejects == 2
    assert s.top_reject_reasons == (("not valid JSON (malformed or truncated line)", 2),)


def test_ledger_pending_counts_the_entries_not_done_and_their_groups(store: Store) -> None:
    with store.write() as con:
        ledger.add(con, [generation_id(i) for i in range(5)], kind="generation", source="t")
        ledger.add(con, ["group-1", "group-2"], kind="group", source="t")
        ledger.settle(con, [(generation_id(0), "Success"), (generation_id(1), "Failed")], source="webhook")
        con.execute("update ledger set done_at = now() where id = 'group-2'")
    s = stats(store)
    assert (s.ledger_pending, s.ledger_pending_groups) == (4, 1)


def test_token_sums_and_the_mean_per_success_match_sql(filled: Store) -> None:
    row = filled.arrow(
        """
        select sum(prompt_tokens) as p, sum(completion_tokens) as c, sum(total_tokens) as t,
               avg(total_tokens) filter (where state = 'Success') as mean
        from generations
        """
    ).to_pylist()[0]
    s = stats(filled)
    assert (s.prompt_tokens, s.completion_tokens, s.total_tokens) == (row["p"], row["c"], row["t"])
    assert s.total_tokens > 0
    assert s.mean_tokens_per_success == pytest.approx(row["mean"])


def test_the_date_range_is_the_first_and_last_timestamp(filled: Store) -> None:
    row = filled.arrow(
        "select min(dispatched_at) as d0, max(dispatched_at) as d1, min(finished_at) as f0, max(finished_at) as f1 "
        "from generations"
    ).to_pylist()[0]
    s = stats(filled)
    assert (s.first_dispatched_at, s.last_dispatched_at) == (row["d0"], row["d1"])
    assert (s.first_finished_at, s.last_finished_at) == (row["f0"], row["f1"])
    assert s.first_finished_at is not None and s.last_finished_at is not None
    assert s.first_finished_at < s.last_finished_at


def test_chat_and_conversation_rows_match_their_views(filled: Store) -> None:
    s = stats(filled)
    assert s.chat_rows == filled.arrow("select count(*) as n from chat").to_pylist()[0]["n"] == 29
    assert s.conversations == filled.arrow("select count(*) as n from conversations").to_pylist()[0]["n"]


def test_a_broken_chat_view_leaves_its_count_unknown_and_the_rest_intact(tmp_path: Path) -> None:
    mine = tmp_path / "views"
    mine.mkdir()
    (mine / "chat.sql").write_text("-- broken on purpose\nselect no_such_column from generations\n")
    store = Store(tmp_path / "c.duckdb", lock_timeout=5, queries=[mine])
    ingest(store, [generation_record(1)])
    s = stats(store)
    assert s.chat_rows is None
    assert s.generations == 1


def test_to_dict_is_json_with_iso_dates_and_counts_by_name(filled: Store) -> None:
    s = stats(filled)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["by_state"] == dict(s.by_state)
    assert s.first_finished_at is not None
    assert data["first_finished_at"] == s.first_finished_at.isoformat()


# --- the command --------------------------------------------------------------------------------


def run_stats(store: Store, *args: str) -> Any:
    app = typer.Typer()
    app.command()(stats_command)
    result = CliRunner().invoke(app, ["--db", str(store.path), *args])
    assert result.exit_code == 0, result.output
    return result


def test_the_command_prints_parseable_json(filled: Store) -> None:
    data = json.loads(run_stats(filled, "--json").stdout)
    assert data["generations"] == len(RECORDS)
    assert data["by_state"] == dict(stats(filled).by_state)


def test_the_command_table_names_every_state_and_each_section(filled: Store) -> None:
    output = run_stats(filled).stdout
    for word in (*STATES, "Generations", "Models", "Sources", "ledger pending", "rejects", "tokens"):
        assert word in output


def test_submitted_lines_are_counted_by_state(store: Store) -> None:
    with store.write() as con:
        con.execute(
            "insert into submissions (key, source, line, request, state, created_at, updated_at) "
            "select 'k' || i, 'submit:f', i, '{}', case when i < 3 then 'uncertain' else 'submitted' end, now(), now() "
            "from range(5) t(i)"
        )
    assert stats(store).submissions == (("submitted", 2), ("uncertain", 3))
