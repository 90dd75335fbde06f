"""Preference exports (dpo, kto, openai-preference): answers sharing a prompt, paired by rank.

The store is built the way a user's is: GenerationForClient records written to a JSONL file and
imported. Each prompt is answered several times (as `curate sample` would), and the answers are
ranked by a SELECT that joins a small table of scores, standing in for the `scored` view's
`judge_helpfulness`. What the ranks imply (which prompts make a pair, and which answers) is
computed again here in SQL, apart from the exporter's, and the datasets are read back with
`datasets.load_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import formats
from curate.cli import app
from curate.exporter import DEFAULT_RANK_BY, ExportError, ExportOptions, ExportSummary, export
from curate.formats import convert, validate_openai_preference
from curate.importer import import_files
from curate.store import Store
from curate.synthetic import generation_record
from tests.conftest import write_jsonl

datasets = pytest.importorskip("datasets")

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}
TOOL_PROMPT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
]
_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]


def _answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


# (generation id, prompt messages, answer, rank, seconds after the epoch it finished, tools)
Answer = tuple[str, list[dict[str, Any]], dict[str, Any], float | None, int, list[dict[str, Any]] | None]


def _answers() -> list[Answer]:
    no_id = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    twin = _user("Summarise Don Quixote in one line.")
    twin_extra = [twin[0], {**twin[1], "x_note": "kept in the store, not exported"}]
    return [
        # p01: 9 > 5 > 2: a pair (a, c)
        ("p01-a", _user("What is the capital of France?"), _answer("Paris."), 9, 3, None),
        ("p01-b", _user("What is the capital of France?"), _answer("It is Paris, on the Seine."), 5, 2, None),
        ("p01-c", _user("What is the capital of France?"), _answer("Lyon."), 2, 1, None),
        # p02: equal ranks: no pair
        ("p02-a", _user("Why is the sky blue?"), _answer("Rayleigh scattering."), 7, 1, None),
        ("p02-b", _user("Why is the sky blue?"), _answer("Because of scattering of light."), 7, 2, None),
        # p03: one answer
        ("p03-a", _user("A haiku about rain, please."), _answer("Rain on the tin roof..."), 8, 1, None),
        # p04: one ranked answer, two unranked
        ("p04-a", _user("Sort a list in Python?"), _answer("sorted(xs)"), 8, 1, None),
        ("p04-b", _user("Sort a list in Python?"), _answer("xs.sort()"), None, 2, None),
        ("p04-c", _user("Sort a list in Python?"), _answer("Use a loop."), None, 3, None),
        # p05: nothing ranked
        ("p05-a", _user("Hello in Russian?"), _answer("Привет."), None, 1, None),
        ("p05-b", _user("Hello in Russian?"), _answer("Privet."), None, 2, None),
        # p06: tool calls and a tool result in the prompt, tools offered: a pair (a, b)
        ("p06-a", TOOL_PROMPT, _answer("4 °C in Zürich."), 6, 1, WEATHER),
        ("p06-b", TOOL_PROMPT, _answer("Cold."), 3, 2, WEATHER),
        # p07: the top ties: the first finished (b) is chosen
        ("p07-a", _user("TCP or UDP for games?"), _answer("UDP, mostly."), 9, 5, None),
        ("p07-b", _user("TCP or UDP for games?"), _answer("UDP, for latency."), 9, 4, None),
        ("p07-c", _user("TCP or UDP for games?"), _answer("TCP always."), 1, 6, None),
        # p08: a margin of 1
        ("p08-a", _user("Proof that sqrt 2 is irrational?"), _answer("Assume p/q in lowest terms..."), 5, 1, None),
        ("p08-b", _user("Proof that sqrt 2 is irrational?"), _answer("It just is."), 4, 2, None),
        # p09: the bottom ties: the first finished (c) is rejected; then the smallest id
        ("p09-a", _user("Crème brûlée recipe?"), _answer("Cream, yolks, sugar, vanilla..."), 8, 1, None),
        ("p09-b", _user("Crème brûlée recipe?"), _answer("Buy one."), 2, 9, None),
        ("p09-c", _user("Crème brûlée recipe?"), _answer("Ask a chef."), 2, 3, None),
        # p10: the best and the worst are the same answer: no pair
        ("p10-a", _user("2 + 2?"), _answer("4"), 9, 1, None),
        ("p10-b", _user("2 + 2?"), _answer("4"), 3, 2, None),
        # p11: the same messages as p01 but tools offered: another prompt, one answer
        ("p11-a", _user("What is the capital of France?"), _answer("Paris!"), 4, 1, WEATHER),
        # p12: the best answer breaks OpenAI's rules (a tool call without id): openai-preference pairs (b, c)
        ("p12-a", _user("Weather in Bern?"), no_id, 9, 1, WEATHER),
        ("p12-b", _user("Weather in Bern?"), _answer("Mild."), 5, 2, WEATHER),
        ("p12-c", _user("Weather in Bern?"), _answer("No idea."), 1, 3, WEATHER),
        # p13 and p14: prompts that differ only by a key no format exports: two pairs, the same content
        ("p13-a", twin, _answer("A knight tilts at windmills."), 8, 1, None),
        ("p13-b", twin, _answer("A book."), 2, 2, None),
        ("p14-a", twin_extra, _answer("A knight tilts at windmills."), 8, 3, None),
        ("p14-b", twin_extra, _answer("A book."), 2, 4, None),
    ]


def _record(answer: Answer, seed: int) -> dict[str, Any]:
    gid, prompt, message, _, seconds, tools = answer
    record = generation_record(seed, state="Success")
    record["id"] = gid
    record["request"]["messages"] = prompt
    record["request"].pop("tools", None)
    if tools is not None:
        record["request"]["tools"] = tools
    record["response"]["choices"][0]["message"] = message
    record["finishedAt"] = (_EPOCH + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return record


def _source(answers: list[Answer]) -> str:
    """A SELECT of chat with a judge_helpfulness column: the ranks, as the scored view would give them."""
    values = ", ".join(f"('{gid}', {'null' if rank is None else rank}::double)" for gid, _, _, rank, _, _ in answers)
    return (f"select c.*, s.score as {DEFAULT_RANK_BY} from chat c "
            f"left join (values {values}) as s(id, score) on s.id = c.id")


@pytest.fixture
def ranked(store: Store, tmp_path: Path) -> tuple[Store, str]:
    answers = _answers()
    path = write_jsonl(tmp_path / "generations.jsonl", [_record(a, seed) for seed, a in enumerate(answers)])
    import_files(store, [path])
    return store, _source(answers)


def _expected(store: Store, source: str, min_margin: float = 0) -> dict[str, tuple[str, str, float, float]]:
    """What the ranks imply, computed apart from the exporter: per prompt (the canonical messages
    before the answer, and the tools), the pair (chosen id, rejected id, their ranks), keyed by chosen id."""
    rows = store.arrow(f"""
        with s as ({source}),
        k as (select id, finished_at, judge_helpfulness as r,
                     json_normalize(json_strip_nulls(json_extract(messages, '$[*]')[1:-2]::json)) as prompt,
                     coalesce(json_normalize(json_strip_nulls(tools)), '[]') as tools,
                     json_normalize(json_strip_nulls(messages -> '$[-1]')) as answer
              from s where judge_helpfulness is not null),
        g as (select prompt, tools, count(*) as n, max(r) as hi, min(r) as lo from k group by all),
        top as (select k.*, row_number() over (partition by k.prompt, k.tools order by r desc, finished_at, id) as i
                from k),
        bottom as (select k.*, row_number() over (partition by k.prompt, k.tools order by r, finished_at, id) as i
                   from k)
        select t.id as chosen, b.id as rejected, t.r as chosen_rank, b.r as rejected_rank
        from g join top t on t.prompt = g.prompt and t.tools = g.tools and t.i = 1
               join bottom b on b.prompt = g.prompt and b.tools = g.tools and b.i = 1
        where g.n >= 2 and g.hi > g.lo and g.hi - g.lo >= {min_margin} and t.answer <> b.answer
        order by chosen""").to_pylist()
    return {r["chosen"]: (r["chosen"], r["rejected"], r["chosen_rank"], r["rejected_rank"]) for r in rows}


def _lineage(folder: Path) -> list[dict[str, Any]]:
    return pq.read_table(folder / "lineage.parquet").to_pylist()


def _pairs(folder: Path) -> dict[str, tuple[str, str, float, float]]:
    return {r["chosen_id"]: (r["chosen_id"], r["rejected_id"], r["chosen_rank"], r["rejected_rank"])
            for r in _lineage(folder)}


def _load(folder: Path) -> Any:
    return datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "hf-cache"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted([*folder.glob("data/*"), folder / "lineage.parquet"])}


def _lines(result: ExportSummary) -> list[dict[str, Any]]:
    return [json.loads(line) for path in result.files for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- which pairs


def test_the_pairs_are_the_ones_the_ranks_imply(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0, dedup="none")
    expected = _expected(store, source)
    assert _pairs(tmp_path / "out") == expected
    assert result.splits["train"] == len(expected) == result.pairing["pairs"]
    # The cases the fixture plants, by name.
    assert {chosen: rejected for chosen, rejected, _, _ in expected.values()} == {
        "p01-a": "p01-c", "p06-a": "p06-b", "p07-b": "p07-c", "p08-a": "p08-b", "p09-a": "p09-c",
        "p12-a": "p12-c", "p13-a": "p13-b", "p14-a": "p14-b"}
    lineage = {r["chosen_id"]: r for r in _lineage(tmp_path / "out")}
    assert lineage["p01-a"]["generation_ids"] == ["p01-a", "p01-c"]
    assert (lineage["p01-a"]["chosen_rank"], lineage["p01-a"]["rejected_rank"]) == (9, 2)


def test_prompts_without_a_pair_are_counted_by_reason(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0, dedup="none")
    assert result.pairing["prompts"] == 14
    assert result.pairing["no_pair"] == {
        formats.NO_RANK: 1,  # p05
        formats.ONE_RANK: 3,  # p03, p04, p11
        formats.TIE: 1,  # p02
        formats.SAME_ANSWER: 1,  # p10
    }
    chosen = {r["chosen_id"][:3] for r in _lineage(tmp_path / "out")}
    assert not chosen & {"p02", "p03", "p04", "p05", "p10", "p11"}


def test_min_margin_is_honoured(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0, dedup="none", min_margin=2)
    assert _pairs(tmp_path / "out") == _expected(store, source, min_margin=2)
    assert "p08-a" not in _pairs(tmp_path / "out") and "p06-a" in _pairs(tmp_path / "out")  # margins 1 and 3
    assert result.pairing["no_pair"][formats.BELOW_MARGIN] == 1
    export(store, source, tmp_path / "big", fmt="dpo", test_size=0, dedup="none", min_margin=6.5)
    assert _pairs(tmp_path / "big") == _expected(store, source, min_margin=6.5)
    assert set(_pairs(tmp_path / "big")) == {"p01-a", "p07-b", "p12-a"}
    assert "by at least 2 (`--min-margin`" in result.card


def test_where_filters_answers_before_they_are_paired(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    export(store, source, tmp_path / "out", fmt="dpo", test_size=0, where="messages not like '%Lyon.%'")
    assert _pairs(tmp_path / "out")["p01-a"] == ("p01-a", "p01-b", 9, 5)


def test_exact_duplicate_pairs_keep_the_first_finished(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0)
    pairs = _pairs(tmp_path / "out")
    assert "p13-a" in pairs and "p14-a" not in pairs  # the same prompt, answers and tools, as exported
    assert result.pairing["dropped"] == {"an exact duplicate of another pair": 1}
    kept = {r["chosen_id"]: r for r in _lineage(tmp_path / "out")}["p13-a"]
    assert kept["duplicate_ids"] == ["p14-a", "p14-b"]
    assert result.counts["pairs"] == result.counts["deduplicated"] + 1


def test_limit_samples_prompts_with_every_answer(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    one = export(store, source, tmp_path / "a", fmt="dpo", test_size=0, dedup="none", limit=6, seed=3)
    two = export(store, source, tmp_path / "b", fmt="dpo", test_size=0, dedup="none", limit=6, seed=3)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert one.pairing["prompts"] <= 6 and one.counts == two.counts
    # Each prompt sampled comes with all its answers, so its pair is the one the whole store gives.
    expected = _expected(store, source)
    assert all(expected[chosen] == pair for chosen, pair in _pairs(tmp_path / "a").items())


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("fmt", formats.PREFERENCE_FORMATS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_both_sides_of_a_pair_are_in_one_split(ranked: tuple[Store, str], tmp_path: Path, fmt: str, seed: int) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt=fmt, test_size=0.5, seed=seed, dedup="none")
    sides: dict[str, set[str]] = {}
    for row in _lineage(tmp_path / "out"):
        sides.setdefault(row["chosen_id"], set()).add(row["split"])
    assert len(sides) == len(_expected(store, source))
    assert all(len(splits) == 1 for splits in sides.values())
    assert result.shared_keys == result.shared_prompts == 0
    if fmt == "kto":
        assert sorted(r["label"] for r in _lineage(tmp_path / "out")) == [False] * len(sides) + [True] * len(sides)


def test_pairs_of_one_conversation_share_a_side(store: Store, tmp_path: Path) -> None:
    # Each conversation has two prompts (the second re-sends the first turn), each answered twice:
    # two pairs, whose prompts open the same way, so they share a side.
    answers: list[Answer] = []
    for k in range(8):
        first = _user(f"Plan a trip to Kyōto, plan number {k}.")
        second = [*first, _answer("Day 1: temples."), {"role": "user", "content": "And the second day?"}]
        for turn, prompt in enumerate((first, second)):
            answers += [(f"c{k}{turn}-{side}", prompt, _answer(f"Answer {k}.{turn} {side}."), rank, k, None)
                        for side, rank in (("a", 3), ("b", 1))]
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [_record(a, s) for s, a in enumerate(answers)])])
    result = export(store, _source(answers), tmp_path / "out", fmt="kto", test_size=0.5, seed=5, dedup="none")
    assert set(result.splits) == {"train", "test"} and result.pairing["pairs"] == 16
    sides: dict[str, set[str]] = {}
    for row in _lineage(tmp_path / "out"):
        sides.setdefault(row["id"][:2], set()).add(row["split"])
    assert len(sides) == 8 and all(len(splits) == 1 for splits in sides.values())


# ---------------------------------------------------------------- each format, loaded back


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m
                                                          for m in value)


def test_dpo_loads_with_the_columns_dpo_trainer_reads(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0.3, dedup="none")
    loaded = _load(tmp_path / "out")
    assert {name: len(split) for name, split in loaded.items()} == result.splits
    lineage = {(r["split"], r["row"]): r for r in _lineage(tmp_path / "out")}
    originals = {r["id"]: json.loads(r["messages"]) for r in store.arrow("select id, messages from chat").to_pylist()}
    for name, split in loaded.items():
        assert split.column_names == ["prompt", "chosen", "rejected", "tools"]
        for i, row in enumerate(split):
            # TRL's is_conversational: lists of {role, content} dicts; DPOTrainer joins prompt + chosen/rejected.
            assert _is_messages(row["prompt"]) and _is_messages(row["chosen"]) and _is_messages(row["rejected"])
            assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
            pair = lineage[(name, i)]
            chosen, rejected = originals[pair["chosen_id"]], originals[pair["rejected_id"]]
            assert [m["content"] for m in row["prompt"]] == [m.get("content") for m in chosen[:-1]]
            assert row["chosen"][0]["content"] == chosen[-1]["content"]
            assert row["rejected"][0]["content"] == rejected[-1]["content"]


def test_kto_loads_with_the_columns_kto_trainer_reads(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="kto", test_size=0, dedup="none")
    train = _load(tmp_path / "out")["train"]
    assert train.column_names == ["prompt", "completion", "label", "tools"]
    assert len(train) == 2 * result.pairing["pairs"] == result.splits["train"]
    lineage = _lineage(tmp_path / "out")
    answers = {r["id"]: json.loads(r["messages"])[-1] for r in store.arrow("select id, messages from chat").to_pylist()}
    for row, where in zip(train, lineage, strict=True):
        assert _is_messages(row["prompt"]) and [m["role"] for m in row["completion"]] == ["assistant"]
        assert isinstance(row["label"], bool) and row["label"] == (where["id"] == where["chosen_id"])
        assert row["completion"][0]["content"] == answers[where["id"]]["content"]
    assert [r["label"] for r in lineage[:2]] == [True, False]  # a pair's two rows together, the chosen first


def test_openai_preference_obeys_openai_rules_and_drops_the_row_breaking_them(ranked: tuple[Store, str],
                                                                             tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="openai-preference", test_size=0.3, dedup="none")
    lines = _lines(result)
    assert lines and all(validate_openai_preference(line) == [] for line in lines)
    assert all(set(line) == {"input", "preferred_output", "non_preferred_output"} for line in lines)
    # The planted row is dropped with its reason counted, and takes no part: p12 pairs its other two.
    assert result.invalid == {"openai-preference: tool call has no id": 1}
    assert result.invalid_examples == {"openai-preference: tool call has no id": ["p12-a"]}
    assert _pairs(tmp_path / "out")["p12-b"] == ("p12-b", "p12-c", 5, 1)
    assert "| openai-preference: tool call has no id | 1 |" in result.card
    with pytest.raises(ExportError, match="--strict: 1 rows do not fit openai-preference"):
        export(store, source, tmp_path / "strict", fmt="openai-preference", strict=True)
    loaded = _load(tmp_path / "out")
    assert sum(len(split) for split in loaded.values()) == len(lines)
    row = loaded["train"][0] if len(loaded["train"]) else loaded["test"][0]
    assert isinstance(row["input"]["messages"], list) and row["preferred_output"][0]["role"] == "assistant"


def test_tools_and_tool_calls_in_prompts_are_kept(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    export(store, source, tmp_path / "dpo", fmt="dpo", test_size=0, dedup="none")
    train = _load(tmp_path / "dpo")["train"]
    [row] = [r for i, r in enumerate(train) if _lineage(tmp_path / "dpo")[i]["chosen_id"] == "p06-a"]
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "tool"]
    call = row["prompt"][2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Zürich"}} and call["id"] == "call_1"
    assert row["prompt"][3]["tool_call_id"] == "call_1"
    assert row["tools"] == WEATHER
    result = export(store, source, tmp_path / "oai", fmt="openai-preference", test_size=0, dedup="none")
    [line] = [line for line in _lines(result) if line["input"]["messages"][0]["content"] == "Answer briefly."]
    assert line["input"]["tools"] == WEATHER
    assert line["input"]["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Zürich"}'
    assert line["input"]["messages"][3] == {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": "call_1"}


@pytest.mark.parametrize("fmt", formats.PREFERENCE_FORMATS)
def test_the_same_store_and_arguments_give_the_same_bytes(ranked: tuple[Store, str], tmp_path: Path, fmt: str) -> None:
    store, source = ranked
    export(store, source, tmp_path / "a", fmt=fmt, test_size=0.3, seed=7)
    export(store, source, tmp_path / "b", fmt=fmt, test_size=0.3, seed=7)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_parquet_shards_split_the_pairs_whole(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0, dedup="none", shard_bytes=600)
    assert len(result.files) > 1
    assert len(_load(tmp_path / "out")["train"]) == result.pairing["pairs"]


# ---------------------------------------------------------------- the card


def test_the_card_records_the_ranking_and_the_pairing(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = export(store, source, tmp_path / "out", fmt="dpo", test_size=0)
    text = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert text == result.card
    assert f"ranked by `{DEFAULT_RANK_BY}`" in text and "by any positive margin (`--min-margin`" in text
    assert "- Prompts seen: **14**." in text and "- Prompts with a pair: **8**." in text
    assert f"| {formats.ONE_RANK} | 3 |" in text and f"| {formats.TIE} | 1 |" in text
    assert "| an exact duplicate of another pair | 1 |" in text
    assert "| prompts | 14 |" in text and "| pairs | 8 |" in text and "| deduplicated | 7 |" in text
    assert "`chosen_id`, `rejected_id`, `chosen_rank` and `rejected_rank`" in text
    assert "- preference" in text  # a tag


# ---------------------------------------------------------------- the curation passes


def test_pii_drop_removes_an_answer_before_pairing(store: Store, tmp_path: Path) -> None:
    answers = [a for a in _answers() if a[0].startswith("p01")]
    gid, prompt, _, rank, seconds, tools = answers[2]
    answers[2] = (gid, prompt, _answer("Lyon. Write to carol.lyon@example.com"), rank, seconds, tools)
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [_record(a, s) for s, a in enumerate(answers)])])
    result = export(store, _source(answers), tmp_path / "out", fmt="dpo", test_size=0, pii="drop")
    assert _pairs(tmp_path / "out") == {"p01-a": ("p01-a", "p01-b", 9, 5)}
    assert result.counts["without PII"] == 2
    assert "carol.lyon" not in json.dumps(pq.read_table(next((tmp_path / "out" / "data").glob("*.parquet"))).to_pylist())


def test_dedup_near_keeps_one_pair_per_cluster_of_prompts(store: Store, tmp_path: Path) -> None:
    question = ("Please explain in a few sentences how photosynthesis turns sunlight water and carbon dioxide into "
                "sugar and oxygen inside the leaves of green plants")
    answers: list[Answer] = []
    for n, ending in enumerate(["", " today", " for me"]):
        answers += [(f"n{n}-a", _user(question + ending), _answer(f"Chlorophyll captures light ({n})."), 9 - n, n, None),
                    (f"n{n}-b", _user(question + ending), _answer(f"Plants eat sun ({n})."), 1, 10 + n, None)]
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [_record(a, s) for s, a in enumerate(answers)])])
    plain = export(store, _source(answers), tmp_path / "plain", fmt="dpo", test_size=0)
    near = export(store, _source(answers), tmp_path / "near", fmt="dpo", test_size=0, dedup="near")
    assert plain.pairing["pairs"] == 3
    assert _pairs(tmp_path / "near") == {"n0-a": ("n0-a", "n0-b", 9, 1)}  # the widest margin
    assert near.pairing["dropped"] == {"a near-duplicate prompt (--dedup near)": 2}


# ---------------------------------------------------------------- refused, clearly


def test_a_source_without_the_rank_is_refused_naming_it(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, _ = ranked
    with pytest.raises(ExportError, match=r"--rank-by judge_helpfulness: SOURCE cannot compute it \(judge_helpfulness, "
                                          r"the default, is the score the `scored` view gives"):
        export(store, "chat", tmp_path / "out", fmt="dpo")
    with pytest.raises(ExportError, match="--rank-by no_such: SOURCE cannot compute it"):
        export(store, "chat", tmp_path / "out", fmt="kto", rank_by="no_such")
    with pytest.raises(ExportError, match="--rank-by model: is VARCHAR, not a number"):
        export(store, "chat", tmp_path / "out", fmt="dpo", rank_by="model")
    assert not (tmp_path / "out").exists()


def test_any_numeric_expression_ranks(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    # The opposite order: the worst becomes chosen.
    export(store, source, tmp_path / "out", fmt="dpo", test_size=0, dedup="none", rank_by="-judge_helpfulness")
    assert _pairs(tmp_path / "out")["p01-c"] == ("p01-c", "p01-a", -2, -9)


def test_nothing_to_pair_says_why(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    with pytest.raises(ExportError, match=r"nothing to export: .* 14 prompts, 0 pairs \(only one answer has a rank: 2, "
                                          r"the ranked answers tie: 12\)"):
        export(store, source, tmp_path / "out", fmt="dpo", rank_by="1")


@pytest.mark.parametrize(("changes", "message"), [
    ({"fmt": "dpo", "min_margin": 0}, "--min-margin 0: expected a positive number (equal ranks never make a pair)"),
    ({"fmt": "dpo", "min_margin": -1.5}, "--min-margin -1.5: expected a positive number"),
    ({"fmt": "dpo", "min_margin": float("nan")}, "--min-margin nan: expected a positive number"),
    ({"fmt": "kto", "rank_by": " "}, "--rank-by: expected a SQL expression"),
    ({"fmt": "dpo", "split_by": "model"}, "--split-by: --format dpo splits by prompt"),
    ({"fmt": "dpo", "dedup": "near", "near_on": "conversation"}, "--dedup near: --format dpo keeps one pair per cluster"),
    ({"fmt": "messages", "rank_by": "score"}, ("--rank-by and --min-margin pair answers for --format dpo, kto, "
                                               "openai-preference; --format messages has no pairs")),
    ({"fmt": "openai", "min_margin": 1}, "--format openai has no pairs"),
])
def test_bad_preference_options_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=re.escape(message)):
        ExportOptions(**changes)


def test_the_options_defaults() -> None:
    options = ExportOptions(fmt="dpo")
    assert (options.rank_by, options.min_margin) == (DEFAULT_RANK_BY, None)
    assert dataclasses.replace(options, min_margin=0.5).min_margin == 0.5


# ---------------------------------------------------------------- the command line


def test_cli_exports_pairs_with_rank_by_and_min_margin(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, source = ranked
    result = CliRunner().invoke(app, [
        "export", source, "--out", str(tmp_path / "out"), "--format", "kto", "--rank-by", "judge_helpfulness * 2",
        "--min-margin", "4", "--test-size", "0", "--dedup", "none", "--json", "--db", str(store.path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert set(_pairs(tmp_path / "out")) == set(_expected(store, source, min_margin=2))
    assert shown["pairing"]["no_pair"][formats.BELOW_MARGIN] == 1 and shown["format"] == "kto"
    text = CliRunner().invoke(app, ["export", source, "--out", str(tmp_path / "out"), "--format", "dpo",
                                    "--db", str(store.path)], terminal_width=200)
    assert text.exit_code == 0, text.output
    assert "14 prompts, 8 with a pair" in text.stdout and formats.ONE_RANK in text.stdout


def test_cli_refuses_rank_by_for_a_row_format(ranked: tuple[Store, str], tmp_path: Path) -> None:
    store, _ = ranked
    result = CliRunner().invoke(app, ["export", "chat", "--out", str(tmp_path / "out"), "--rank-by", "x",
                                      "--db", str(store.path)])
    assert result.exit_code == 2 and "--format messages has no pairs" in result.output


# ---------------------------------------------------------------- one batch: convert, and the rules in SQL and Python


def _batch(*rows: tuple[str, list[dict[str, Any]], float | None]) -> pa.Table:
    return pa.table({"id": [r[0] for r in rows], "messages": [json.dumps(r[1]) for r in rows],
                     "rank": pa.array([r[2] for r in rows], pa.float64())})


def test_convert_pairs_a_batch_like_the_export(ranked: tuple[Store, str]) -> None:
    store, source = ranked
    rows = store.arrow(f"select id, messages, tools, finished_at, {DEFAULT_RANK_BY} as rank from ({source}) order by id")
    pairs, invalid = convert(rows, "dpo")
    assert pairs.column("id").to_pylist() == sorted(_expected(store, source))
    assert invalid.total == 0
    kto, _ = convert(rows, "kto", min_margin=6.5)
    assert kto.column("id").to_pylist() == ["p01-a", "p01-c", "p07-b", "p07-c", "p12-a", "p12-c"]
    assert kto.column("label").to_pylist() == [True, False] * 3


PROMPT = _user("Which is the best sorting algorithm?")
PLANTED = {
    "image in the prompt": ([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}], _answer("A cat.")),
    "tool message answering nothing": ([*PROMPT, {"role": "tool", "tool_call_id": "call_9", "content": "{}"}],
                                       _answer("Quicksort.")),
    "tool call type": (PROMPT, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "code", "function": {"name": "f", "arguments": "{}"}}]}),
    "unknown role": ([{"role": "critic", "content": "Be harsh."}, *PROMPT[1:]], _answer("Merge sort.")),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_sql_preference_rules_agree_with_validate_openai_preference(case: str) -> None:
    prompt, bad = PLANTED[case]
    good = _answer("It depends on the data.")
    pairs, invalid = convert(_batch(("bad", [*prompt, bad], 1), ("good", [*prompt, good], 9)), "openai-preference")
    assert "bad" in invalid.ids and pairs.num_rows == 0
    example = {"input": {"messages": prompt}, "preferred_output": [good], "non_preferred_output": [bad]}
    assert validate_openai_preference(example) != []
    # The reason SQL gives is among the problems Python finds (less the format's prefix).
    [reason] = [why for row_id, why in invalid.dropped if row_id == "bad"]
    assert reason.removeprefix("openai-preference: ") in validate_openai_preference(example)


def test_validate_openai_preference_rules() -> None:
    good = {"input": {"messages": PROMPT, "tools": WEATHER, "parallel_tool_calls": True},
            "preferred_output": [_answer("Timsort.")], "non_preferred_output": [_answer("Bogosort.")]}
    assert validate_openai_preference(good) == []
    assert validate_openai_preference({**good, "extra": 1}) == ["unexpected top-level key extra"]
    assert "preferred_output must be a list of one message" in validate_openai_preference(
        {**good, "preferred_output": [_answer("a"), _answer("b")]})
    assert "non_preferred_output is not an assistant message" in validate_openai_preference(
        {**good, "non_preferred_output": [{"role": "user", "content": "x"}]})
    assert validate_openai_preference({**good, "non_preferred_output": [_answer("Timsort.")]}) == [
        "preferred and non-preferred outputs are the same"]
    assert "weight is only allowed in supervised examples" in validate_openai_preference(
        {**good, "input": {"messages": [*PROMPT[:1], {**PROMPT[1], "weight": 1}]}})
    assert validate_openai_preference({"input": {"messages": []}}) == ["input.messages is missing or empty"]


def test_non_ascii_text_survives_every_preference_format(store: Store) -> None:
    question, good, bad = "東京の天気は？ 🌧️ naïve 👩‍💻", "Il pleut à 東京 ☔ — 12 °C 🐱.", "Zürich ist schön."
    rows = pa.table({"id": ["a", "b"], "rank": [2.0, 1.0],
                     "messages": [json.dumps([{"role": "user", "content": question}, _answer(text)], ensure_ascii=True)
                                  for text in (good, bad)]})
    for fmt in formats.PREFERENCE_FORMATS:
        pairs, _ = convert(rows, fmt)
        text = json.dumps(pairs.to_pylist(), ensure_ascii=False)
        assert question in text and good in text and (bad in text), fmt
        if fmt in formats.JSONL_FORMATS:
            assert "\\u" not in pairs.column("json")[0].as_py()


def test_convert_needs_no_optional_column_but_the_rank(store: Store) -> None:
    rows = _batch(("a", [{"role": "user", "content": "hi"}, _answer("Hello!")], 2),
                  ("b", [{"role": "user", "content": "hi"}, _answer("Go away.")], 1))
    for fmt in formats.PREFERENCE_FORMATS:
        pairs, invalid = convert(rows, fmt)
        assert pairs.num_rows == (2 if fmt == "kto" else 1) and invalid.total == 0
        assert pairs.schema == pa.schema([pa.field("id", pa.string()), *formats.SCHEMAS[fmt]])
        unranked, _ = convert(rows.drop_columns(["rank"]), fmt)
        assert unranked.num_rows == 0 and unranked.schema == pairs.schema


def test_exclude_contaminated_removes_answers_before_pairing(store: Store, tmp_path: Path) -> None:
    from curate.decontaminate import decontaminate

    question = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many clips "
                "in May how many clips did she sell altogether")
    answers = [a for a in _answers() if a[0][:3] in ("p01", "p08")]
    answers += [("q-a", _user(question), _answer("72 clips."), 9, 1, None),
                ("q-b", _user(question), _answer("48 clips."), 1, 2, None)]
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [_record(a, s) for s, a in enumerate(answers)])])
    decontaminate(store, [write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": question, "answer": "72"}])])
    result = export(store, _source(answers), tmp_path / "out", fmt="dpo", test_size=0, exclude_contaminated=True)
    assert set(_pairs(tmp_path / "out")) == {"p01-a", "p08-a"}
    assert result.counts["decontaminated"] == 5 and "| gsm8k.jsonl | 2 |" in result.card


# ---------------------------------------------------------------- no planted secret, in any preference format


def _twin(line: str, gid: str) -> str:
    """The record of ``line`` answered again, differently, as JSON text: the same request (repeated keys
    and all), another id, a plain answer."""
    answer = json.dumps(_answer(f"A second, clean answer to {gid}."))
    record = json.loads(line)
    old = json.dumps(record["response"]["choices"][0]["message"])
    twin = line.replace(f'"id": "{gid}"', f'"id": "{gid}-twin"', 1)
    assert old in twin, gid
    return twin.replace(old, answer, 1)


@pytest.mark.parametrize("mode", ["drop", "redact"])
@pytest.mark.parametrize("fmt", formats.PREFERENCE_FORMATS)
def test_no_planted_secret_is_exported_in_pairs(store: Store, tmp_path: Path, fmt: str, mode: str) -> None:
    from tests import test_pii_every_field as planted_pii

    lines, planted = planted_pii.planted_lines()
    clean = [json.dumps(planted_pii.record(n, f"Tell me fact number {n} about rivers.")) for n in range(1, 9)]
    ids = [json.loads(line)["id"] for line in [*clean, *lines]]
    store.ingest_texts([*clean, *lines, *(_twin(line, gid) for line, gid in zip([*clean, *lines], ids, strict=True))],
                       source="t")
    ranks = ", ".join(f"('{gid}', 5), ('{gid}-twin', 1)" for gid in ids)
    source = (f"select c.*, s.score as {DEFAULT_RANK_BY} from chat c "
              f"join (values {ranks}) as s(id, score) on s.id = c.id")
    export(store, source, tmp_path / "out", fmt=fmt, pii=mode, test_size=0.3)
    text = planted_pii.texts_of(tmp_path / "out")
    assert [s for s in planted_pii.SECRETS if s in text] == []
    chosen = {r["chosen_id"] for r in _lineage(tmp_path / "out")}
    assert set(planted_pii.CLEAN) <= chosen  # every clean prompt makes its pair
    # A secret in the prompt's text is redacted on both sides, the pair kept; any other finding
    # drops the row, and a prompt left with one answer makes no pair.
    redacted = {planted["repeated content"], planted["plain text"]}
    assert chosen & set(planted.values()) == (set() if mode == "drop" else redacted)
    if mode == "redact":
        assert "[EMAIL]" in text
