"""The whole loop on the sandbox: sample (K = 3) -> harvest -> judge -> harvest -> score -> preference and SFT exports.

One store is built once for the module (it takes the sandbox ~10 s); each test reads it or
exports from it. Every export is loaded back with ``datasets.load_dataset``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest

from curate.config import Settings
from curate.exporter import export
from curate.harvester import harvest
from curate.judging import JudgeOptions, judge, rubric
from curate.sampling import SampleOptions, sample
from curate.sandbox import Sandbox
from curate.signals import score
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl

FAST = SubmitOptions(rpm=None)
HARVEST_FAST = {"backoff": 0.01, "max_backoff": 0.1}
PROMPTS = 25


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    folder = tmp_path_factory.mktemp("loop")
    store = Store(folder / "loop.duckdb", lock_timeout=30)
    with Sandbox(queue_delay=0.02, run_delay=0.02) as sandbox:
        settings = Settings(api_key=sandbox.api_key, base_url=sandbox.url)

        def collect() -> None:
            harvest(store, settings, rpm=None, client_options=HARVEST_FAST)

        path = write_jsonl(folder / "traffic.jsonl", [chat_request(seed) for seed in range(PROMPTS)])
        submit_file(store, settings, path, FAST)
        collect()
        sample(store, settings, "chat", SampleOptions(model="teacher/big", n=3, temperature=0.8, submit=FAST))
        collect()
        judge(store, settings, "chat", JudgeOptions(model="judge/strict", rubric=rubric("helpfulness"), submit=FAST))
        collect()
    score(store)
    yield store


def load(path: Path, **kwargs: Any) -> Any:
    """datasets.load_dataset with a cache of the test's own (a shared cache can serve an older folder's rows)."""
    return datasets.load_dataset(str(path), cache_dir=str(path.parent / f"hf-cache-{path.name}"), **kwargs)


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return store.arrow(sql).to_pylist()


def test_every_prompt_has_its_three_samples_and_every_answer_a_judgment(loop: Store) -> None:
    assert rows(loop, "select count(*) as n from samples")[0]["n"] == PROMPTS * 3
    assert rows(loop, "select count(*) as n from chat")[0]["n"] == PROMPTS * 4
    assert rows(loop, "select count(*) as n from judgments")[0]["n"] == PROMPTS * 4
    assert rows(loop, "select count(*) as n from signals")[0]["n"] == PROMPTS * 4


def test_dpo_pairs_are_what_the_scores_imply(loop: Store, tmp_path: Path) -> None:
    # Independently of the exporter: per prompt (messages before the answer, and the tools), a pair
    # when at least two answers have a score and the best beats the worst.
    expected = rows(loop, """
        select count(*) as n from (
            select md5(json_normalize(json_strip_nulls(json_extract(messages, '$[*]')[1:-2]::json)::varchar)
                       || coalesce(json_normalize(tools)::varchar, '')) as prompt,
                   max(judge_helpfulness) - min(judge_helpfulness) as margin
            from scored where judge_helpfulness is not null group by prompt)
        where margin > 0""")[0]["n"]
    result = export(loop, "scored", tmp_path / "dpo", fmt="dpo", test_size=0.2)
    assert expected > 0 and result.pairing["pairs"] == expected
    loaded = load(tmp_path / "dpo")
    assert sum(len(split) for split in loaded.values()) == expected
    row = loaded["train"][0]
    assert {"prompt", "chosen", "rejected", "tools"} <= set(loaded["train"].column_names)
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    assert row["prompt"][-1]["role"] in ("user", "tool")


def test_a_pairs_sides_name_their_generations_and_scores(loop: Store, tmp_path: Path) -> None:
    export(loop, "scored", tmp_path / "dpo", fmt="dpo", test_size=0)
    scores = {r["id"]: r["judge_helpfulness"] for r in rows(loop, "select id, judge_helpfulness from scored")}
    lineage = datasets.load_dataset("parquet", data_files=str(tmp_path / "dpo" / "lineage.parquet"),
                                    cache_dir=str(tmp_path / "hf-cache-lineage"))["train"]
    for pair in lineage:
        assert scores[pair["chosen_id"]] == pair["chosen_rank"] > pair["rejected_rank"] == scores[pair["rejected_id"]]


def test_kto_and_openai_preference_load_with_datasets(loop: Store, tmp_path: Path) -> None:
    kto = export(loop, "scored", tmp_path / "kto", fmt="kto", test_size=0)
    openai = export(loop, "scored", tmp_path / "oai", fmt="openai-preference", test_size=0)
    loaded = load(tmp_path / "kto")["train"]
    assert {"prompt", "completion", "label"} <= set(loaded.column_names)
    assert sorted(set(loaded["label"])) == [False, True] and len(loaded) == 2 * kto.pairing["pairs"]
    lines = [json.loads(line) for line in (tmp_path / "oai" / "data" / "train.jsonl").read_text().splitlines()]
    assert len(lines) == openai.splits["train"] > 0
    assert all(set(line) == {"input", "preferred_output", "non_preferred_output"} for line in lines)
    assert load(tmp_path / "oai")["train"].num_rows == len(lines)


def test_the_best_answers_export_as_sft_data_filtered_on_scores_and_signals(loop: Store, tmp_path: Path) -> None:
    where = "judge_helpfulness >= 7 and not refusal and not truncated"
    wanted = rows(loop, f"select count(*) as n from scored where {where}")[0]["n"]
    result = export(loop, "scored", tmp_path / "sft", where=where, test_size=0, dedup="none")
    assert 0 < wanted == result.counts["filtered"]
    assert load(tmp_path / "sft")["train"].num_rows == result.splits["train"]
    assert where in (tmp_path / "sft" / "README.md").read_text()
