"""`curate decontaminate`: chat rows sharing 13-word shingles with eval items are flagged, others not.

Each test plants chat rows (synthetic Success generations whose request messages are replaced)
and eval items, and names the exact (row, item) pairs it expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from curate.cli.decontaminate_commands import decontaminate_command
from curate.decontaminate import decontaminate, item_text, read_eval_set
from curate.store import Store
from curate.synthetic import generation_record
from tests.conftest import write_jsonl

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
            "in May. How many clips did Natalia sell altogether in April and May?")
OTHER = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"
# 12 consecutive words of QUESTION, then words of its own: one word short of a 13-gram.
NEAR_MISS = "Please tell me: natalia sold clips to 48 of her friends in april and then bought pencils."


def chat_row(seed: int, *user: str) -> dict[str, Any]:
    record = generation_record(seed, state="Success")
    record["request"]["messages"] = [{"role": "user", "content": text} for text in user]
    return record


def ingest(store: Store, *records: dict[str, Any]) -> list[str]:
    store.ingest_texts([json.dumps(r) for r in records], source="t")
    return [r["id"] for r in records]


def pairs(store: Store) -> list[tuple[str, str, str, int, int]]:
    return [tuple(r.values()) for r in store.arrow(
        "select id, eval_set, eval_item, shared_ngrams, ngram from contamination order by all").to_pylist()]


def gsm8k(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": QUESTION, "answer": "Natalia sold 48/2 = 24 clips in May. #### 72"},
        {"question": OTHER, "answer": "#### 10"},
    ])


def test_a_row_quoting_an_eval_question_verbatim_is_caught(store: Store, tmp_path: Path) -> None:
    hit, clean = ingest(store, chat_row(1, f"Solve this. {QUESTION}"), chat_row(2, "What is 2 + 2?"))
    result = decontaminate(store, [gsm8k(tmp_path)])
    assert result.items == {"gsm8k.jsonl": 2}
    assert result.contaminated == {"gsm8k.jsonl": 1}
    assert result.rows_scanned == 2
    # The question's 31 words make 19 13-grams, all shared.
    assert pairs(store) == [(hit, "gsm8k.jsonl", "1", 19, 13)]
    assert clean not in {p[0] for p in pairs(store)}


def test_case_punctuation_and_whitespace_do_not_hide_a_copy(store: Store, tmp_path: Path) -> None:
    mangled = QUESTION.upper().replace(",", " ;").replace(" ", "\n  ").replace("?", "!!")
    (hit,) = ingest(store, chat_row(1, mangled))
    decontaminate(store, [gsm8k(tmp_path)])
    assert [p[:3] for p in pairs(store)] == [(hit, "gsm8k.jsonl", "1")]


def test_an_answer_in_the_assistant_message_or_content_parts_counts(store: Store, tmp_path: Path) -> None:
    record = chat_row(3, "hi")
    record["request"]["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": OTHER},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]
    (hit,) = ingest(store, record)
    decontaminate(store, [gsm8k(tmp_path)])
    assert [p[:3] for p in pairs(store)] == [(hit, "gsm8k.jsonl", "2")]


def test_twelve_shared_words_are_a_near_miss_not_a_match(store: Store, tmp_path: Path) -> None:
    ingest(store, chat_row(1, NEAR_MISS))
    result = decontaminate(store, [gsm8k(tmp_path)])
    assert result.contaminated == {"gsm8k.jsonl": 0}
    assert pairs(store) == []
    # With 12-grams the same row is caught, by exactly one shared shingle.
    decontaminate(store, [gsm8k(tmp_path)], ngram=12)
    assert [p[2:] for p in pairs(store)] == [("1", 1, 12)]


def test_min_shared_asks_for_more_shingles(store: Store, tmp_path: Path) -> None:
    words = QUESTION.split()
    (part,) = ingest(store, chat_row(1, " ".join(words[:14])))  # 2 13-grams of the question
    evals = gsm8k(tmp_path)
    assert decontaminate(store, [evals], min_shared=2).contaminated == {"gsm8k.jsonl": 1}
    assert pairs(store) == [(part, "gsm8k.jsonl", "1", 2, 13)]
    assert decontaminate(store, [evals], min_shared=3).contaminated == {"gsm8k.jsonl": 0}
    assert pairs(store) == []


def test_a_short_item_must_appear_whole(store: Store, tmp_path: Path) -> None:
    evals = write_jsonl(tmp_path / "short.jsonl", [
        {"id": "capital", "question": "What is the capital of Burkina Faso?"},  # 7 words
        {"id": "empty", "question": "?!", "label": 3},
    ])
    whole, partial = ingest(store, chat_row(1, "quick one: WHAT is the capital of burkina-faso"),
                            chat_row(2, "what is the capital of France?"))
    # A short item is one shingle: min_shared larger than that still lets it match.
    result = decontaminate(store, [evals], min_shared=5)
    assert result.items == {"short.jsonl": 2}
    assert result.empty_items == {"short.jsonl": 1}
    assert [p[:4] for p in pairs(store)] == [(whole, "short.jsonl", "capital", 1)]
    assert partial not in {p[0] for p in pairs(store)}


def test_jsonl_parquet_and_a_dataset_folder_all_load(store: Store, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records = {"task_id": ["t/0", "t/1"], "prompt": [QUESTION, OTHER], "canonical_solution": ["72", "10"]}
    pq.write_table(pa.table(records), tmp_path / "evals.parquet")
    folder = tmp_path / "hf-evals"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(records).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    jsonl = gsm8k(tmp_path)
    hit, other = ingest(store, chat_row(1, QUESTION), chat_row(2, OTHER))
    result = decontaminate(store, [jsonl, tmp_path / "evals.parquet", folder])
    assert result.items == {"gsm8k.jsonl": 2, "evals.parquet": 2, "hf-evals": 2}
    assert result.contaminated == {"gsm8k.jsonl": 2, "evals.parquet": 2, "hf-evals": 2}
    assert [p[:3] for p in pairs(store)] == sorted([
        (hit, "gsm8k.jsonl", "1"), (other, "gsm8k.jsonl", "2"),
        (hit, "evals.parquet", "t/0"), (other, "evals.parquet", "t/1"),
        (hit, "hf-evals", "t/0"), (other, "hf-evals", "t/1"),
    ])


def test_item_text_takes_prompt_and_answer_fields_and_skips_the_rest() -> None:
    record = {
        "id": 7, "question": "Which gas?", "choices": {"text": ["Oxygen", "Argon"], "label": ["A", "B"]},
        "answerKey": "A", "messages": [{"role": "user", "content": "hello there"}], "meta": {"text": "no"},
    }
    assert item_text(record) == "Which gas?\nOxygen\nArgon\nhello there"


def test_an_item_is_named_by_its_id_else_its_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"question": "a b"}\n\n{"id": 5, "question": "c"}\n{"task_id": "x/1", "prompt": "d"}\n')
    assert [(i.item, i.text) for i in read_eval_set(path)] == [("1", "a b"), ("5", "c"), ("x/1", "d")]


def test_rerunning_a_set_replaces_its_rows_and_keeps_other_sets(store: Store, tmp_path: Path) -> None:
    (hit,) = ingest(store, chat_row(1, QUESTION))
    evals = gsm8k(tmp_path)
    other_set = write_jsonl(tmp_path / "other.jsonl", [{"question": QUESTION}])
    decontaminate(store, [evals, other_set])
    decontaminate(store, [evals])
    assert [p[:3] for p in pairs(store)] == [(hit, "gsm8k.jsonl", "1"), (hit, "other.jsonl", "1")]
    # The eval set no longer holds the question: its row is gone, the other set's stays.
    write_jsonl(evals, [{"question": OTHER}])
    assert decontaminate(store, [evals]).contaminated == {"gsm8k.jsonl": 0}
    assert [p[:3] for p in pairs(store)] == [(hit, "other.jsonl", "1")]


def test_two_sets_with_one_name_are_refused(store: Store, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first, second = gsm8k(tmp_path), gsm8k(tmp_path / "a")
    with pytest.raises(ValueError, match="same name: gsm8k.jsonl"):
        decontaminate(store, [first, second])


def test_a_bad_eval_line_is_named_and_the_earlier_findings_stay(store: Store, tmp_path: Path) -> None:
    ingest(store, chat_row(1, QUESTION))
    evals = gsm8k(tmp_path)
    decontaminate(store, [evals])
    before = pairs(store)
    with evals.open("a", encoding="utf-8") as out:
        out.write('{"question": "cut off\n')
    with pytest.raises(ValueError, match=r"gsm8k.jsonl:3: not JSON"):
        decontaminate(store, [evals])
    assert pairs(store) == before and before


def test_the_contaminated_view_has_one_row_per_flagged_chat_row(store: Store, tmp_path: Path) -> None:
    both, one, _ = ingest(store, chat_row(1, QUESTION, OTHER), chat_row(2, OTHER), chat_row(3, "Hello."))
    other_set = write_jsonl(tmp_path / "other.jsonl", [{"question": QUESTION}])
    decontaminate(store, [gsm8k(tmp_path), other_set])
    rows = store.arrow("select * from contaminated").to_pylist()
    assert rows == [
        {"id": both, "eval_sets": ["gsm8k.jsonl", "other.jsonl"], "items": 3, "max_shared_ngrams": 19},
        {"id": one, "eval_sets": ["gsm8k.jsonl"], "items": 1, "max_shared_ngrams": 8},
    ]


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(decontaminate_command)
    return app


def test_the_command_prints_items_and_contaminated_rows_per_set(store: Store, tmp_path: Path) -> None:
    ingest(store, chat_row(1, QUESTION), chat_row(2, "Hello."))
    evals = gsm8k(tmp_path)
    runner = CliRunner()
    done = runner.invoke(cli(), [str(evals), "--db", str(store.path), "--json"])
    assert done.exit_code == 0, done.output
    printed = json.loads(done.stdout)
    assert printed["sets"] == [{"eval_set": "gsm8k.jsonl", "items": 2, "contaminated_rows": 1, "pairs": 1}]
    assert (printed["rows_scanned"], printed["ngram"], printed["min_shared"]) == (2, 13, 1)
    table = runner.invoke(cli(), [str(evals), "--db", str(store.path), "--ngram", "20"])
    assert table.exit_code == 0, table.output
    assert "gsm8k.jsonl" in table.output and "2 chat rows scanned for 20-grams" in table.stdout
    missing = runner.invoke(cli(), [str(tmp_path / "nope.jsonl"), "--db", str(store.path)])
    assert missing.exit_code == 1 and "no such eval file" in missing.stderr
