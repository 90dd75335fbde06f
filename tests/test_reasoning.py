"""Reasoning: what a reasoning model thought, read from both keys into the views, and exported as --reasoning says.

Each rule is tested on a real DuckDB file and on files written by a real export, loaded back
with ``datasets`` or read as JSON lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest

from curate import formats
from curate.exporter import ExportError, export
from curate.importer import import_file
from curate.messages import message_reasoning
from curate.store import Store
from curate.synthetic import chat_response, generation_record

THOUGHT = "The user wants the capital. It is Paris."


def record(seed: int, *, reasoning: dict[str, Any] | None = None, earlier: str | None = None) -> dict[str, Any]:
    """A Success chat generation (no tools), its answer carrying ``reasoning`` keys; ``earlier``: an
    earlier assistant turn in the request with that reasoning_content."""
    rec = generation_record(seed, state="Success")
    rec["request"].pop("tools", None)
    rec["request"]["messages"] = [{"role": "user", "content": f"Capital of France? ({seed})"}]
    if earlier is not None:
        rec["request"]["messages"] += [{"role": "assistant", "content": "Paris.", "reasoning_content": earlier},
                                       {"role": "user", "content": "Are you sure?"}]
    rec["response"] = chat_response(seed, rec["request"], created=0)
    rec["response"]["choices"][0]["message"].update(reasoning or {})
    return rec


@pytest.fixture
def thinking(store: Store) -> Store:
    store.ingest_texts([json.dumps(r) for r in [
        record(1, reasoning={"reasoning_content": THOUGHT}),
        record(2, reasoning={"reasoning": "vLLM's newer key."}),
        record(3, reasoning={"reasoning_content": "first key wins", "reasoning": "not this"}),
        record(4, reasoning={"reasoning_content": {"not": "a string"}, "reasoning": "a string, so this"}),
        record(5),
        record(6, reasoning={"reasoning_content": "answer's"}, earlier="an earlier turn's"),
    ]], source="test")
    return store


def by_custom_id(store: Store, sql: str) -> dict[str, Any]:
    return {r["custom_id"]: r for r in store.arrow(sql).to_pylist()}


def ids(store: Store) -> dict[str, str]:
    return {r["custom_id"]: r["id"] for r in store.arrow("select id, custom_id from chat").to_pylist()}


def test_chat_reads_reasoning_from_both_keys_first_string_wins(thinking: Store) -> None:
    got = {k: r["reasoning"] for k, r in by_custom_id(thinking, "select custom_id, reasoning from chat").items()}
    assert got == {"req-00000001": THOUGHT, "req-00000002": "vLLM's newer key.", "req-00000003": "first key wins",
                   "req-00000004": "a string, so this", "req-00000005": None, "req-00000006": "answer's"}


def test_the_answer_in_messages_keeps_its_reasoning_under_the_key_it_came_with(thinking: Store) -> None:
    rows = by_custom_id(thinking, "select custom_id, messages from chat")
    assert json.loads(rows["req-00000002"]["messages"])[-1]["reasoning"] == "vLLM's newer key."
    assert json.loads(rows["req-00000001"]["messages"])[-1]["reasoning_content"] == THOUGHT


def test_the_python_and_sql_rules_agree(thinking: Store) -> None:
    rows = thinking.arrow("select reasoning, messages from chat").to_pylist()
    for row in rows:
        assert message_reasoning(json.loads(row["messages"])[-1]) == row["reasoning"]


def answers(folder: Path, column: str = "messages") -> dict[str, list[dict[str, Any]]]:
    loaded = datasets.load_dataset(str(folder), cache_dir=str(folder.parent / f"hf-cache-{folder.name}"))["train"]
    lineage = pq.read_table(folder / "lineage.parquet").to_pylist()
    return {row["id"]: loaded[row["row"]][column] for row in lineage}


def test_messages_keep_reasoning_as_reasoning_content_on_every_assistant_turn(thinking: Store, tmp_path: Path) -> None:
    export(thinking, "chat", tmp_path / "out", test_size=0, dedup="none")
    got = answers(tmp_path / "out")
    named = ids(thinking)
    assert got[named["req-00000001"]][-1]["reasoning_content"] == THOUGHT
    assert got[named["req-00000002"]][-1]["reasoning_content"] == "vLLM's newer key."
    assert got[named["req-00000005"]][-1]["reasoning_content"] is None
    turns = got[named["req-00000006"]]
    assert [m["reasoning_content"] for m in turns if m["role"] == "assistant"] == ["an earlier turn's", "answer's"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "5 exported rows have it, kept as `reasoning_content`" in card


def test_data_without_reasoning_exports_without_the_field(store: Store, tmp_path: Path) -> None:
    store.ingest_texts([json.dumps(record(seed)) for seed in range(5)], source="test")
    export(store, "chat", tmp_path / "keep", test_size=0)
    export(store, "chat", tmp_path / "drop", test_size=0, reasoning="drop")
    schema = pq.read_schema(next((tmp_path / "keep" / "data").glob("*.parquet")))
    assert "reasoning_content" not in str(schema.field("messages").type)
    for keep, drop in zip(sorted((tmp_path / "keep" / "data").iterdir()), sorted((tmp_path / "drop" / "data").iterdir()),
                          strict=True):
        assert keep.read_bytes() == drop.read_bytes()


def test_inline_writes_the_thinking_before_the_content_between_think_tags(thinking: Store, tmp_path: Path) -> None:
    export(thinking, "chat", tmp_path / "out", test_size=0, dedup="none", reasoning="inline")
    got = answers(tmp_path / "out")
    answer = got[ids(thinking)["req-00000001"]][-1]
    assert "reasoning_content" not in answer
    assert answer["content"].startswith(f"<think>\n{THOUGHT}\n</think>\n\n")
    assert answer["content"].endswith(json.loads(thinking.arrow(
        "select messages from chat where custom_id = 'req-00000001'").to_pylist()[0]["messages"])[-1]["content"])
    assert not got[ids(thinking)["req-00000005"]][-1]["content"].startswith("<think>")


def test_inline_takes_other_tags(thinking: Store, tmp_path: Path) -> None:
    export(thinking, "chat", tmp_path / "out", test_size=0, dedup="none", reasoning="inline",
           think_tags=("<reasoning>", "</reasoning>"))
    answer = answers(tmp_path / "out")[ids(thinking)["req-00000001"]][-1]
    assert answer["content"].startswith(f"<reasoning>\n{THOUGHT}\n</reasoning>\n\n")


def test_openai_never_carries_reasoning_unless_inline(thinking: Store, tmp_path: Path) -> None:
    export(thinking, "chat", tmp_path / "out", fmt="openai", test_size=0, dedup="none")
    text = (tmp_path / "out" / "data" / "train.jsonl").read_text()
    assert "reasoning_content" not in text and THOUGHT not in text and "newer key" not in text
    with pytest.raises(ExportError, match="no field for reasoning"):
        export(thinking, "chat", tmp_path / "keep", fmt="openai", reasoning="keep")
    export(thinking, "chat", tmp_path / "inline", fmt="openai", test_size=0, dedup="none", reasoning="inline")
    lines = [json.loads(line) for line in (tmp_path / "inline" / "data" / "train.jsonl").read_text().splitlines()]
    assert any(m["content"].startswith(f"<think>\n{THOUGHT}") for line in lines for m in line["messages"])
    assert all(formats.validate_openai(line) == [] for line in lines)


def test_prompt_completion_keeps_the_answers_reasoning(thinking: Store, tmp_path: Path) -> None:
    export(thinking, "chat", tmp_path / "out", fmt="prompt-completion", test_size=0, dedup="none")
    got = answers(tmp_path / "out", "completion")
    assert got[ids(thinking)["req-00000001"]][0]["reasoning_content"] == THOUGHT


def test_catalyst_keeps_reasoning_and_import_reads_it_back(thinking: Store, tmp_path: Path) -> None:
    export(thinking, "chat", tmp_path / "out", fmt="catalyst", test_size=0, dedup="none")
    again = Store(tmp_path / "again.duckdb")
    import_file(again, tmp_path / "out" / "data" / "train.jsonl")
    before = sorted(r["reasoning"] or "" for r in thinking.arrow("select reasoning from chat").to_pylist())
    after = sorted(r["reasoning"] or "" for r in again.arrow("select reasoning from chat").to_pylist())
    assert after == before and THOUGHT in after


def test_the_sandbox_thinking_model_answers_with_reasoning() -> None:
    request = {"model": "acme/r1-thinking", "messages": [{"role": "user", "content": "hi"}]}
    message = chat_response(7, request, created=0)["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]
    assert "reasoning_content" not in chat_response(7, {**request, "model": "acme/plain"}, created=0)["choices"][0]["message"]


def test_an_export_loads_itself_as_a_dataset_dict(thinking: Store, tmp_path: Path) -> None:
    result = export(thinking, "chat", tmp_path / "out", test_size=0, dedup="none")
    loaded = result.load(cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(loaded, datasets.DatasetDict) and loaded["train"].num_rows == result.splits["train"] == 6


def test_rows_differing_only_in_reasoning_are_duplicates_where_reasoning_is_dropped(store: Store, tmp_path: Path) -> None:
    same = [record(1, reasoning={"reasoning_content": thought}) for thought in ("one way", "another way", "")]
    for rec in same:  # one request and one answer, three thoughts
        rec["id"] = f"{rec['id']}-{len(rec['response']['choices'][0]['message']['reasoning_content'])}"
    store.ingest_texts([json.dumps(r) for r in same], source="test")
    dropped = export(store, "chat", tmp_path / "openai", fmt="openai", test_size=0)
    kept = export(store, "chat", tmp_path / "messages", test_size=0)
    assert dropped.counts["deduplicated"] == 1  # the files would hold three identical lines
    assert kept.counts["deduplicated"] == 3  # the files hold three different thoughts


def test_answers_differing_only_in_reasoning_make_no_pair_where_it_is_dropped(store: Store, tmp_path: Path) -> None:
    a = record(1, reasoning={"reasoning_content": "careful"})
    b = record(1, reasoning={"reasoning_content": "hasty"})
    b["id"] = a["id"] + "-b"
    a["response"]["usage"]["completion_tokens"], b["response"]["usage"]["completion_tokens"] = 50, 10
    store.ingest_texts([json.dumps(a), json.dumps(b)], source="test")
    with pytest.raises(ExportError, match="the chosen and rejected answers are the same"):
        export(store, "chat", tmp_path / "pref", fmt="openai-preference", rank_by="completion_tokens", test_size=0)
    result = export(store, "chat", tmp_path / "dpo", fmt="dpo", rank_by="completion_tokens", test_size=0)
    assert result.pairing["pairs"] == 1  # dpo keeps the reasoning, so the two answers differ
