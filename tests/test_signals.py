"""Heuristic signals (``curate score``): each signal on planted answers, incremental scoring, the view, the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from curate import signals, synthetic
from curate.cli import app
from curate.store import Store

# --- the signals of one answer -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "phrase"), [
    ("I'm sorry, but I can't help with that request.", "i can't help with"),
    ("I cannot assist with creating malware.", "i can't assist"),
    ("  **Sorry** \u2014 I won\u2019t be able to help with that.", "i won't be able to help"),
    ("I apologize, but as an AI language model, I am unable to provide that.", "i'm unable to provide"),
    ("Unfortunately, I can not comply with this request.", "i can't comply"),
    ("Je suis désolé, mais je ne peux pas vous aider avec cela.", "je ne peux pas vous aider"),
    ("Es tut mir leid, aber ich kann dir dabei nicht helfen.", "ich kann dir dabei nicht helfen"),
    ("Leider kann ich Ihnen dabei nicht helfen.", "kann ich ihnen dabei nicht helfen"),
    ("Lo siento, pero no puedo ayudarte con eso.", "no puedo ayudarte con"),
])
def test_a_refusal_at_the_start_is_found_with_its_phrase(text: str, phrase: str) -> None:
    assert signals.refusal(text) == phrase
    assert phrase in {p for listed in signals.REFUSAL_PHRASES.values() for p in listed}


@pytest.mark.parametrize("text", [
    "I can't stress enough how important backups are.",
    "I can't help but notice the off-by-one error in line 3.",
    "I'm sorry for the confusion! Here is the corrected code.",
    "Unfortunately there is no closed form, but here is a numerical method.",
    "Here is the answer. However, I can't help with the second part.",  # a refusal after the start
    "Sorry, maybe I can help with that: try restarting.",
])
def test_answers_that_start_like_a_refusal_but_are_not_one_are_not_flagged(text: str) -> None:
    assert signals.refusal(text) is None


def test_repetition_is_the_share_of_repeated_word_4grams() -> None:
    assert signals.REPETITION_NGRAM == 4
    assert signals.repetition(signals.words("one two three")) == 0.0  # fewer than 4 words
    assert signals.repetition(signals.words("a b c d e f")) == 0.0
    # 12 words, 9 four-grams, 4 distinct ("a b c d", "b c d a", "c d a b", "d a b c"): 5 repeat.
    assert signals.repetition(signals.words("A b c d a b c d a B c d")) == pytest.approx(5 / 9)


def test_words_are_runs_of_letters_and_each_cjk_character() -> None:
    assert signals.words("Hello, world! x+1 snake_case") == ["hello", "world", "x", "1", "snake_case"]
    assert signals.words("東京は大きい") == ["東", "京", "は", "大", "き", "い"]


def test_empty_short_truncated_and_language() -> None:
    empty = signals.measure("  \n", "tool_calls")
    assert (empty.empty, empty.short, empty.language, empty.answer_words, empty.refusal) == (True, False, None, 0, False)
    short = signals.measure("Paris.", "stop")
    assert (short.empty, short.short, short.language, short.answer_words) == (False, True, None, 1)
    long = signals.measure("The capital of France is Paris, a city on the Seine.", "length")
    assert (long.truncated, long.short, long.language) == (True, False, "en")
    assert long.language_score is not None and 0.5 < long.language_score <= 1.0


# --- scoring a store ---------------------------------------------------------------------------------

FRENCH = "Bonjour ! Pour faire une tarte aux pommes, il faut des pommes, de la farine, du sucre et du beurre."
GERMAN = "Die Hauptstadt von Deutschland ist Berlin, eine große Stadt mit vielen Museen und Parks."
ANSWERS: dict[str, tuple[Any, str]] = {  # name: (the answer's content, finish_reason)
    "refusal_en": ("I'm sorry, but I can't help with that request.", "stop"),
    "refusal_de": ("Es tut mir leid, aber ich kann dir dabei nicht helfen.", "stop"),
    "stress": ("I can't stress enough how important it is to keep three copies of your backups.", "stop"),
    "looping": ("Buy now and save big today. " * 20, "stop"),
    "cut": ("The history of the Roman Empire spans many centuries and begins with the founding of", "length"),
    "tools": (None, "tool_calls"),
    "short": ("Paris.", "stop"),
    "french": (FRENCH, "stop"),
    "german": ([{"type": "text", "text": GERMAN[:40]}, {"type": "image_url", "image_url": {"url": "https://x.y/z.png"}},
                {"type": "text", "text": GERMAN[40:]}], "stop"),
}
SEED = {name: 100 + i for i, name in enumerate(ANSWERS)}


def record(name: str, content: Any = None, finish_reason: str | None = None) -> dict[str, Any]:
    planted, reason = ANSWERS[name]
    rec = synthetic.generation_record(SEED[name], state="Success")
    rec["request"].pop("tools", None)
    choice = rec["response"]["choices"][0]
    choice["message"] = {"role": "assistant", "content": planted if content is None else content}
    if name == "tools" and content is None:
        choice["message"]["tool_calls"] = [{"id": "call_1", "type": "function",
                                            "function": {"name": "f", "arguments": "{}"}}]
    choice["finish_reason"] = finish_reason or reason
    return rec


@pytest.fixture
def planted(store: Store) -> Store:
    records = [record(name) for name in ANSWERS]
    records.append(synthetic.generation_record(900, state="Failed"))  # not a chat row: never scored
    store.ingest_texts([json.dumps(r, ensure_ascii=False) for r in records], source="t")
    return store


def by_name(store: Store) -> dict[str, dict[str, Any]]:
    ids = {synthetic.generation_id(seed): name for name, seed in SEED.items()}
    return {ids[r["id"]]: r for r in store.arrow("select * from signals").to_pylist()}


def test_score_measures_each_planted_answer(planted: Store) -> None:
    raw_before = planted.arrow("select id, raw from generation_rows order by id").to_pylist()
    assert signals.pending(planted) == len(ANSWERS)
    result = signals.score(planted)
    assert (result.rows, result.skipped) == (len(ANSWERS), 0)
    assert (result.refusals, result.truncated, result.empty, result.short) == (2, 1, 1, 1)
    got = by_name(planted)
    assert set(got) == set(ANSWERS)

    assert {n: r["refusal_phrase"] for n, r in got.items() if r["refusal"]} == {
        "refusal_en": "i can't help with", "refusal_de": "ich kann dir dabei nicht helfen"}
    assert all(r["refusal_phrase"] is None for n, r in got.items() if not r["refusal"])
    assert not got["stress"]["refusal"]

    assert got["looping"]["repetition"] > 0.8
    assert all(r["repetition"] == 0.0 for n, r in got.items() if n != "looping")

    assert [n for n, r in got.items() if r["truncated"]] == ["cut"]
    assert [n for n, r in got.items() if r["empty"]] == ["tools"]
    assert [n for n, r in got.items() if r["short"]] == ["short"]
    assert got["tools"]["answer_chars"] == got["tools"]["answer_words"] == 0
    assert (got["short"]["answer_chars"], got["short"]["answer_words"]) == (6, 1)

    assert got["french"]["language"] == "fr" and got["german"]["language"] == "de"
    assert got["refusal_de"]["language"] == "de" and got["refusal_en"]["language"] == "en"
    assert got["tools"]["language"] is None and got["short"]["language"] is None
    assert got["german"]["language_score"] > 0.9
    # Content parts: their texts joined by a newline (curate.messages' rule), the image left out.
    assert got["german"]["answer_chars"] == len(GERMAN) + 1
    assert result.languages["en"] >= 4 and result.languages["fr"] == 1 and result.languages["de"] == 2
    assert {r["version"] for r in got.values()} == {signals.SIGNALS_VERSION}
    assert planted.arrow("select id, raw from generation_rows order by id").to_pylist() == raw_before


def test_a_second_run_scores_nothing(planted: Store) -> None:
    signals.score(planted)
    before = planted.arrow("select * from signal_rows order by id").to_pylist()
    assert signals.pending(planted) == 0
    again = signals.score(planted)
    assert (again.rows, again.skipped, again.refusals) == (0, len(ANSWERS), 0)
    assert planted.arrow("select * from signal_rows order by id").to_pylist() == before


def test_a_changed_row_is_scored_again_and_replaces_its_signals(planted: Store) -> None:
    signals.score(planted)
    changed = record("stress", content="I'm unable to help with that.")
    counts = planted.ingest_texts([json.dumps(changed)], source="t2")
    assert counts.updated == 1
    gid = changed["id"]
    # Until it is scored again, the view leaves out what was measured of the old body.
    assert "stress" not in by_name(planted)
    assert signals.pending(planted) == 1
    result = signals.score(planted)
    assert (result.rows, result.skipped, result.refusals) == (1, len(ANSWERS) - 1, 1)
    rows = planted.arrow("select id, refusal, refusal_phrase from signal_rows where id = ?", [gid]).to_pylist()
    assert rows == [{"id": gid, "refusal": True, "refusal_phrase": "i'm unable to help"}]
    assert planted.arrow("select count(*) as n from signals").to_pylist() == [{"n": len(ANSWERS)}]


def test_rows_scored_by_an_older_version_are_scored_again(planted: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    signals.score(planted)
    monkeypatch.setattr(signals, "SIGNALS_VERSION", signals.SIGNALS_VERSION + 1)
    assert signals.pending(planted) == len(ANSWERS)
    assert signals.score(planted).rows == len(ANSWERS)
    assert planted.arrow("select distinct version from signal_rows").to_pylist() == [
        {"version": signals.SIGNALS_VERSION}]
    assert signals.score(planted, full=True).rows == len(ANSWERS)  # --full: every row, still one row per id
    assert planted.arrow("select count(*) as n, count(distinct id) as ids from signal_rows").to_pylist() == [
        {"n": len(ANSWERS), "ids": len(ANSWERS)}]


def test_the_cli_prints_counts(planted: Store) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["score", "--db", str(planted.path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {k: report[k] for k in ("rows", "refusals", "truncated", "empty", "short", "skipped")} == {
        "rows": len(ANSWERS), "refusals": 2, "truncated": 1, "empty": 1, "short": 1, "skipped": 0}
    assert next(iter(report["languages"])) == "en" and report["languages"]["de"] == 2
    assert report["in_store"]["rows"] == len(ANSWERS)
    table = runner.invoke(app, ["score", "--db", str(planted.path)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "refusals" in table.stdout and "languages, top 5" in table.stdout
    assert "scored 0 chat rows" in table.stdout and f"{len(ANSWERS)} unchanged" in table.stdout
