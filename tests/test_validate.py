"""curate validate: dataset folders read as trainers read them, real files loaded by real ``datasets``.

Every format curate writes passes, exported from stores built as tests/test_export.py and
tests/test_preference_export.py build theirs. Folders written by hand, as someone else (or the
Hub) would, each plant one defect in a known row, and the report names that row with the
expected reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import formats
from curate.cli import app, validate_commands
from curate.exporter import export
from curate.importer import import_files
from curate.store import Store
from curate.validate import (
    DEFAULT_MAX_EXAMPLES,
    NO_SHARED_PROMPT,
    NOT_BOOL,
    PROMPTS_DIFFER,
    NotADataset,
    detect,
    validate,
)
from tests import test_export, test_preference_export
from tests.conftest import write_jsonl

datasets = pytest.importorskip("datasets")

CURATE = str(Path(sys.executable).parent / "curate")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' cache in the test's folder, not the user's (the CLI passes no cache_dir)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["validate", *args])


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _call(call_id: str | None, arguments: str = '{"city": "Bern"}', name: str = "get_weather") -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


def _hub(folder: Path, rows: list[dict[str, Any]], name: str = "train.jsonl") -> Path:
    """A folder as a Hub dataset holds one: data files and no curate card."""
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), folder / name)
    else:
        write_jsonl(folder / name, rows)
    return folder


def _found(report: Any) -> dict[str, list[tuple[str, int]]]:
    return {reason: report.examples[reason] for reason in report.counts}


# ---------------------------------------------------------------- every format curate writes passes


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One folder per format: the row formats from test_export's fixtures, the preference formats
    from test_preference_export's ranked answers (tool calls, images, non-ASCII, planted rows)."""
    root = tmp_path_factory.mktemp("exports")
    rows = Store(root / "rows.duckdb", lock_timeout=5)
    rows.ingest_texts([json.dumps(r, ensure_ascii=False) for r in test_export._fixtures()], source="fixture")
    folders = {}
    for fmt in formats.ROW_FORMATS:
        export(rows, "chat", root / fmt, fmt=fmt, test_size=0.3)
        folders[fmt] = root / fmt
    ranked = Store(root / "ranked.duckdb", lock_timeout=5)
    answers = test_preference_export._answers()
    import_files(ranked, [write_jsonl(root / "generations.jsonl",
                                      [test_preference_export._record(a, seed) for seed, a in enumerate(answers)])])
    for fmt in formats.PREFERENCE_FORMATS:
        export(ranked, test_preference_export._source(answers), root / fmt, fmt=fmt, test_size=0.3, dedup="none")
        folders[fmt] = root / fmt
    yield folders


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_every_format_curate_writes_passes(exported: dict[str, Path], fmt: str) -> None:
    result = _invoke(str(exported[fmt]), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["format"], report["told_by"], report["broken"], report["reasons"]) == (fmt, "card", 0, {})
    loaded = datasets.load_dataset(str(exported[fmt]))
    assert report["splits"] == {name: len(split) for name, split in loaded.items()} and report["rows"] > 0
    assert report["ignored_columns"] == []


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion", "dpo", "kto"])
def test_curates_parquet_formats_are_told_by_their_columns_too(exported: dict[str, Path], tmp_path: Path,
                                                                 fmt: str) -> None:
    # The data without curate's card, as a trainer given the files alone reads them.
    bare = tmp_path / fmt
    bare.mkdir()
    for path in (exported[fmt] / "data").iterdir():
        (bare / path.name).write_bytes(path.read_bytes())
    report = validate(bare)
    assert (report.format, report.told_by, report.form, report.broken) == (fmt, "columns", "conversational", 0)


def test_the_human_report_says_what_was_checked(exported: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["validate", str(exported["dpo"])], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "dpo (named by curate's card), conversational" in result.stdout
    assert "is valid" in result.stdout


def test_forcing_openai_on_a_messages_folder_applies_openais_rules(exported: dict[str, Path]) -> None:
    # The messages format parses tool-call arguments; OpenAI wants them as JSON strings.
    report = validate(exported["messages"], fmt="openai")
    assert (report.told_by, report.form) == ("--format", "each row as a JSON line, OpenAI's rules")
    assert set(report.counts) == {"tool call arguments are not a JSON string"} and report.broken > 0


# ---------------------------------------------------------------- planted defects, found by row and reason


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _sft(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages)}


def test_a_hub_style_messages_folder_is_checked(tmp_path: Path) -> None:
    rows = [_sft(_user(f"Question {i}?"), _assistant(f"Answer {i}.")) for i in range(6)]
    rows[4] = _sft(_user("Hello?"), _user("Anyone?"))  # no assistant turn
    folder = _hub(tmp_path / "hub", rows)
    result = _invoke(str(folder), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["format"], report["told_by"], report["form"], report["splits"]) == (
        "messages", "columns", "conversational", {"train": 6})
    assert report["reasons"] == {"messages: no assistant message": {"rows": 1, "examples": [{"split": "train", "row": 4}]}}


def test_messages_with_wrong_keys_have_no_role(tmp_path: Path) -> None:
    rows = [_sft(_user("Hi"), _assistant("Hello")) for _ in range(3)]
    rows[2] = {"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    assert _found(validate(_hub(tmp_path / "hub", rows))) == {"messages: message without a role": [("train", 2)]}


def test_a_column_datasets_types_as_json_is_checked_row_by_row(tmp_path: Path) -> None:
    # Values of several shapes in one column load as datasets' Json(): each row is judged on its own.
    folder = _hub(tmp_path / "mixed", [_sft(_user("hi"), _assistant("Hello!")), {"messages": 5},
                                       _sft({"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                            _assistant("Hello!"))])
    assert _found(validate(folder)) == {"messages: messages is not a non-empty JSON array": [("train", 1)]}


def test_unknown_roles_and_content_of_the_wrong_type(tmp_path: Path) -> None:
    rows = [_sft(_user("Hi"), _assistant("Hello")), _sft({"role": "critic", "content": "Be harsh."}, _assistant("No."))]
    assert _found(validate(_hub(tmp_path / "roles", rows))) == {
        "messages: role is not one of system, developer, user, assistant, tool": [("train", 1)]}
    numbers = [{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": 2}]}] * 2
    assert _found(validate(_hub(tmp_path / "numbers", numbers, "train.parquet"))) == {
        "messages: content is neither text nor parts": [("train", 0), ("train", 1)]}


def test_tool_calls_whose_arguments_do_not_parse(tmp_path: Path) -> None:
    rows = [
        _sft(_user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [_call("call_1")]}),
        _sft(_user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [_call("call_2", "{city: Bern")]}),
        _sft(_user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"arguments": "{}"}}]}),
    ]
    # tools as a string of JSON, as TRL also reads them
    report = validate(_hub(tmp_path / "args", [{**row, "tools": json.dumps(WEATHER)} for row in rows]))
    assert _found(report) == {"messages: tool call arguments are not valid JSON": [("train", 1)],
                              "messages: tool call without a function name": [("train", 2)]}
    broken_tools = [{**rows[0], "tools": json.dumps(WEATHER)}, {**rows[0], "tools": "{not json"}]
    assert _found(validate(_hub(tmp_path / "tools", broken_tools))) == {"messages: tools is not a JSON array": [("train", 1)]}
    # TRL's own example writes arguments as an object: that parses.
    objects = [_sft(_user("Weather?"), {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Bern"}}}]})]
    assert validate(_hub(tmp_path / "objects", objects)).ok


def test_a_tool_message_answering_nothing(tmp_path: Path) -> None:
    answered = _sft(_user("Weather?"), {"role": "assistant", "content": "", "tool_calls": [_call("call_1")]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "4 °C"}, _assistant("4 °C."))
    orphan = _sft(_user("Weather?"), {"role": "tool", "tool_call_id": "call_1", "content": "4 °C"}, _assistant("4 °C."))
    elsewhere = _sft(_user("Weather?"), {"role": "assistant", "content": "", "tool_calls": [_call("call_1")]},
                     {"role": "tool", "tool_call_id": "call_9", "content": "4 °C"}, _assistant("4 °C."))
    report = validate(_hub(tmp_path / "tools", [answered, orphan, answered, elsewhere]))
    assert _found(report) == {"messages: tool message does not answer an earlier tool call": [("train", 1), ("train", 3)]}


def test_tool_calls_without_ids_break_openai_rules_not_trls(tmp_path: Path) -> None:
    # TRL's dataset guide shows calls without ids, answered by the tool's name: fine for a trainer.
    trl = [_sft(_user("Weather?"), {"role": "assistant", "content": "", "tool_calls": [_call(None)]},
                {"role": "tool", "name": "get_weather", "content": "4 °C"}, _assistant("4 °C."))]
    assert validate(_hub(tmp_path / "trl", trl)).ok
    # OpenAI wants an id on every call.
    lines = [
        _sft(_user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [_call("call_1")]}),
        _sft(_user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [_call(None)]}),
        _sft(_user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [_call("call_3", "{nope")]}),
    ]
    report = validate(_hub(tmp_path / "openai", lines), fmt="openai")
    assert _found(report) == {"tool call has no id": [("train", 1)],
                              "tool call arguments do not parse as JSON": [("train", 2)]}


def test_an_openai_line_with_an_unknown_role(tmp_path: Path) -> None:
    lines = [_sft(_user(f"Q{i}"), _assistant(f"A{i}")) for i in range(4)]
    lines[2] = _sft({"role": "critic", "content": "Be harsh."}, _user("Q"), _assistant("A"))
    folder = _hub(tmp_path / "ft", lines)
    result = _invoke(str(folder), "--format", "openai", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["reasons"] == {"role is not one of system, developer, user, assistant, tool": {
        "rows": 1, "examples": [{"split": "train", "row": 2}]}}


def test_openai_preference_lines_obey_its_rules(tmp_path: Path) -> None:
    good = {"input": {"messages": [_user("Sort?")]}, "preferred_output": [_assistant("sorted(xs)")],
            "non_preferred_output": [_assistant("a loop")]}
    bad = {**good, "non_preferred_output": [_user("a loop")]}
    report = validate(_hub(tmp_path / "pref", [good, bad, good]))
    assert (report.format, report.told_by) == ("openai-preference", "columns")
    assert _found(report) == {"non_preferred_output is not an assistant message": [("train", 1)]}


def _pair(prompt: list[dict[str, Any]], chosen: str, rejected: str) -> dict[str, Any]:
    return {"chosen": [*prompt, _assistant(chosen)], "rejected": [*prompt, _assistant(rejected)]}


def test_a_dpo_row_whose_chosen_and_rejected_prompts_differ(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    rows = [_pair([system, _user("Capital of France?")], "Paris.", "Lyon.") for _ in range(5)]
    rows[3] = {"chosen": [system, _user("Capital of France?"), _assistant("Paris.")],
               "rejected": [system, _user("Capital of Italy?"), _assistant("Rome.")]}
    rows[4] = _pair([system, _user("2 + 2?")], "4", "4")
    # A multi-turn implicit prompt, and answers with a tool call: still one prompt.
    turns = [_user("Hi"), _assistant("Hello!"), _user("Weather?")]
    rows.append({"chosen": [*turns, {"role": "assistant", "content": "", "tool_calls": [_call("c1")]},
                            {"role": "tool", "tool_call_id": "c1", "content": "4 °C"}, _assistant("4 °C.")],
                 "rejected": [*turns, _assistant("No idea.")]})
    result = _invoke(str(_hub(tmp_path / "dpo", rows)), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["format"], report["form"]) == ("dpo", "conversational, implicit prompt")
    assert {reason: [(e["split"], e["row"]) for e in found["examples"]] for reason, found in report["reasons"].items()} == {
        PROMPTS_DIFFER: [("train", 3)], formats.SAME_ANSWER: [("train", 4)]}


def test_dpo_answers_must_be_assistant_messages(tmp_path: Path) -> None:
    prompt = [_user("Capital of France?")]
    rows = [{"prompt": prompt, "chosen": [_assistant("Paris.")], "rejected": [_assistant("Lyon.")]} for _ in range(3)]
    rows[1] = {"prompt": prompt, "chosen": [*prompt, _assistant("Paris.")], "rejected": [_assistant("Lyon.")]}
    rows[2] = {"prompt": [{"role": "system", "content": "x"}], "chosen": [_assistant("a")], "rejected": [_assistant("b")]}
    report = validate(_hub(tmp_path / "dpo", rows))
    assert report.form == "conversational"
    assert _found(report) == {"chosen: not a list of assistant messages": [("train", 1)],
                              "prompt: the prompt does not end with a user, tool or assistant message": [("train", 2)]}


def test_text_preference_rows(tmp_path: Path) -> None:
    rows = [{"chosen": "The sky is blue.", "rejected": "The sky is green."},
            {"chosen": "Blue.", "rejected": "Green."},
            {"chosen": "The sky is blue.", "rejected": None}]
    report = validate(_hub(tmp_path / "text", rows))
    assert report.form == "text, implicit prompt"
    assert _found(report) == {NO_SHARED_PROMPT: [("train", 1)], "rejected is not text": [("train", 2)]}


def test_a_bad_kto_label(tmp_path: Path) -> None:
    row = {"prompt": [_user("Capital of France?")], "completion": [_assistant("Paris.")]}
    report = validate(_hub(tmp_path / "nulls", [{**row, "label": True}, {**row, "label": False}, {**row, "label": None}]))
    assert (report.format, _found(report)) == ("kto", {NOT_BOOL: [("train", 2)]})
    ints = validate(_hub(tmp_path / "ints", [{**row, "label": 1}, {**row, "label": 0}], "train.parquet"))
    assert _found(ints) == {NOT_BOOL: [("train", 0), ("train", 1)]}


def test_wrong_column_names_are_refused_naming_them(tmp_path: Path) -> None:
    folder = _hub(tmp_path / "typo", [{"prompt": "The sky is", "chosen": " blue.", "rejectd": " green."}])
    result = _invoke(str(folder))
    assert result.exit_code == 2
    assert "cannot tell its format from its columns (prompt, chosen, rejectd)" in result.stderr
    with pytest.raises(NotADataset, match="rejectd"):
        validate(folder)


def test_missing_columns_of_a_format_told_are_each_rows_reason(tmp_path: Path) -> None:
    rows = [{"prompt": "The sky is", "completion": " blue.", "labels": True}] * 3
    report = validate(_hub(tmp_path / "kto", rows), fmt="kto")
    assert report.counts == {"missing column label": 3} and report.ignored == ["labels"]


def test_prompt_and_completion_must_be_alike(tmp_path: Path) -> None:
    rows = [{"prompt": "The sky is", "completion": [_assistant("blue")]}]
    assert _found(validate(_hub(tmp_path / "mixed", rows))) == {
        "prompt and completion are not all lists of messages or all text": [("train", 0)]}


# ---------------------------------------------------------------- refusals, counting, batches


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("not a dataset\n", encoding="utf-8")
    for folder, says in ((tmp_path / "empty", "datasets.load_dataset cannot read it"),
                         (tmp_path / "missing", "no such folder"),
                         (tmp_path / "notes", "cannot tell its format from its columns (text)")):
        result = _invoke(str(folder))
        assert result.exit_code == 2, result.output
        assert says in result.stderr and "Traceback" not in result.output


def test_a_folder_datasets_cannot_load_is_refused_with_its_reason(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n',
                                        encoding="utf-8")
    with pytest.raises(NotADataset, match="datasets.load_dataset cannot read it: .*JSON parse error"):
        validate(folder)


def test_max_examples_caps_the_rows_listed_not_the_count(tmp_path: Path) -> None:
    rows = [_sft(_user("Hello?")) for _ in range(7)]
    result = _invoke(str(_hub(tmp_path / "hub", rows)), "--max-examples", "2", "--json")
    assert result.exit_code == 1
    found = json.loads(result.stdout)["reasons"]["messages: no assistant message"]
    assert found["rows"] == 7 and [e["row"] for e in found["examples"]] == [0, 1]
    table = CliRunner().invoke(app, ["validate", str(tmp_path / "hub")], terminal_width=200)
    assert "messages: no assistant message" in table.stdout and "7 of 7 rows broken" in table.stdout


def test_rows_are_numbered_across_batches(tmp_path: Path) -> None:
    rows = [_sft(_user(f"Q{i}"), _assistant(f"A{i}")) for i in range(10)]
    for i in (2, 3, 7):
        rows[i] = _sft(_user(f"Q{i}"))
    folder = _hub(tmp_path / "hub", rows)
    one, small = validate(folder), validate(folder, batch_rows=3)
    assert _found(one) == _found(small) == {"messages: no assistant message": [("train", 2), ("train", 3), ("train", 7)]}


def test_detect_tells_the_formats_by_their_columns() -> None:
    assert detect(["prompt", "chosen", "rejected", "tools"]) == "dpo"
    assert detect(["chosen", "rejected", "score"]) == "dpo"
    assert detect(["prompt", "completion", "label"]) == "kto"
    assert detect(["prompt", "completion"]) == "prompt-completion"
    assert detect(["messages", "tools"]) == "messages"
    assert detect(["input", "preferred_output", "non_preferred_output"]) == "openai-preference"
    assert detect(["text"]) is None


def test_the_command_lines_copy_of_the_default_agrees() -> None:
    assert validate_commands.DEFAULT_MAX_EXAMPLES == DEFAULT_MAX_EXAMPLES


def test_the_exit_status_as_a_user_sees_it(exported: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    good = subprocess.run([CURATE, "validate", str(exported["kto"])], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert good.returncode == 0, good.stderr
    broken = _hub(tmp_path / "hub", [_sft(_user("Hello?"))])
    bad = subprocess.run([CURATE, "validate", str(broken)], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert bad.returncode == 1 and "no assistant message" in bad.stdout


def _malformed_records() -> list[dict[str, Any]]:
    """Conversations a store can hold that a trainer cannot read (found by review)."""
    from curate.synthetic import generation_record

    def with_messages(seed: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
        record = generation_record(seed, state="Success")
        record["id"] = f"malformed-{seed}"
        record["request"].pop("tools", None)
        record["request"]["messages"] = messages
        record["response"]["choices"][0]["message"] = {"role": "assistant", "content": "ok"}
        return record

    return [
        with_messages(1, [{"role": "user", "content": "hi"},
                          {"role": "tool", "tool_call_id": "call_nowhere", "content": "{}"}]),  # answers nothing
        with_messages(2, [{"role": "system", "content": "Be terse."}]),  # the prompt ends with a system message
        with_messages(3, [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"},
                          {"role": "user", "content": "and?"}]),  # an unknown role
    ]


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion"])
def test_what_curate_writes_of_malformed_conversations_passes_validate(store: Store, tmp_path: Path, fmt: str) -> None:
    from curate.synthetic import generation_record

    records = [generation_record(seed, state="Success") for seed in range(20)] + _malformed_records()
    store.ingest_texts([json.dumps(r) for r in records], source="test")
    result = export(store, "chat", tmp_path / "out", fmt=fmt, test_size=0, dedup="none")
    dropped = {i for ids in result.invalid_examples.values() for i in ids}
    assert {"malformed-1", "malformed-3"} <= dropped
    if fmt == "prompt-completion":
        assert "malformed-2" in dropped
    report = validate(tmp_path / "out", cache_dir=tmp_path / "hf-cache")
    assert report.broken == 0, report
