"""curate export: a view or SELECT to a Hugging Face dataset folder, read back with ``datasets``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import card, exporter
from curate.cli import app
from curate.exporter import ExportError, export
from curate.formats import dumps, messages_from_arrow, validate_openai
from curate.importer import import_files
from curate.store import Store
from curate.synthetic import chat_response, generation_id, generation_record

datasets = pytest.importorskip("datasets")

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}
CALL_ODD = {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": ["東京"], "n": 3}'}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "default": None}}}]


def _record(seed: int, messages: list[dict[str, Any]] | None = None, answer: dict[str, Any] | None = None,
            tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    record = generation_record(seed, state="Success")
    if messages is not None:
        record["request"]["messages"] = messages
        record["request"].pop("tools", None)
    if tools is not None:
        record["request"]["tools"] = tools
    if answer is not None:
        record["response"]["choices"][0]["message"] = answer
    return record


def _follow_up(previous: dict[str, Any], seed: int, text: str) -> dict[str, Any]:
    """The next call of ``previous``'s conversation: its history re-sent, plus a new user turn."""
    history = [*previous["request"]["messages"], previous["response"]["choices"][0]["message"],
               {"role": "user", "content": text}]
    record = generation_record(seed, state="Success")
    record["request"] = dict(previous["request"], messages=history)
    record["response"] = chat_response(seed, record["request"], created=0)
    return record


def _fixtures() -> list[dict[str, Any]]:
    records = [generation_record(seed) for seed in range(40)]  # tool calls, ~2 Failed, non-ASCII
    records.append(_record(100, [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "Météo à Zürich et 東京 ?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL, CALL_ODD]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c":4}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c":12}'},
    ], {"role": "assistant", "content": "Il fait 4 °C à Zürich et 12 °C à 東京 🙂."}, tools=TOOLS))
    records.append(_record(101, [{"role": "user", "content": [
        {"type": "text", "text": "Qu'est-ce que c'est ? 這是什麼？"},
        {"type": "image_url", "image_url": {"url": "https://example.com/chat.png", "detail": "low"}},
    ]}], {"role": "assistant", "content": "Un chat 🐱."}))
    first = _record(200, [{"role": "user", "content": "Plan a trip to Kyōto."}])
    second = _follow_up(first, 201, "And the second day?")
    third = _follow_up(second, 202, "Thanks, ありがとう!")
    records += [first, second, third]
    return records


CONVERSATION = [generation_id(200), generation_id(201), generation_id(202)]


@pytest.fixture
def filled(store: Store) -> Store:
    store.ingest_texts([json.dumps(r, ensure_ascii=False) for r in _fixtures()], source="fixture")
    return store


def _normal(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with tool-call arguments minified, as a round trip through JSON gives them."""
    out = json.loads(json.dumps(messages))
    for m in out:
        for call in m.get("tool_calls") or []:
            call["function"]["arguments"] = dumps(json.loads(call["function"]["arguments"]))
    return out


def _originals(store: Store) -> dict[str, list[dict[str, Any]]]:
    return {r["id"]: _normal(json.loads(r["messages"])) for r in store.arrow("select id, messages from chat").to_pylist()}


def _lineage(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["split"], r["row"]): r for r in pq.read_table(folder / "lineage.parquet").to_pylist()}


def _load(folder: Path) -> Any:
    return datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "hf-cache"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted([*folder.glob("data/*"), folder / "lineage.parquet"])}


# ---------------------------------------------------------------- each format, loaded back


def test_messages_export_loads_with_datasets_and_round_trips(filled: Store, tmp_path: Path) -> None:
    result = export(filled, "chat", tmp_path / "out", test_size=0.3)
    loaded = _load(tmp_path / "out")
    lineage, originals = _lineage(tmp_path / "out"), _originals(filled)
    assert {name: len(split) for name, split in loaded.items()} == result.splits
    for name, split in loaded.items():
        for i, row in enumerate(split):
            assert _normal(messages_from_arrow(row["messages"])) == originals[lineage[(name, i)]["id"]]


def test_messages_export_loads_tool_call_arguments_and_tools_as_objects(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out", test_size=0)
    rows = [r for r in _load(tmp_path / "out")["train"] if r["tools"] == TOOLS]
    assert len(rows) == 1
    calls = rows[0]["messages"][2]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Zürich"}, {"city": ["東京"], "n": 3}]


def test_messages_export_keeps_content_parts(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out", test_size=0)
    (row,) = [r for r in _load(tmp_path / "out")["train"] if r["messages"][0]["content_parts"]]
    assert row["messages"][0]["content"] is None
    assert [p["type"] for p in row["messages"][0]["content_parts"]] == ["text", "image_url"]
    assert row["messages"][0]["content_parts"][1]["image_url"]["url"] == "https://example.com/chat.png"


def test_prompt_completion_export_round_trips(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out", fmt="prompt-completion", test_size=0)
    lineage, originals = _lineage(tmp_path / "out"), _originals(filled)
    for i, row in enumerate(_load(tmp_path / "out")["train"]):
        prompt, completion = messages_from_arrow(row["prompt"]), messages_from_arrow(row["completion"])
        assert [m["role"] for m in completion] == ["assistant"]
        assert _normal(prompt + completion) == originals[lineage[("train", i)]["id"]]


def test_openai_export_passes_the_fine_tuning_rules_and_loads(filled: Store, tmp_path: Path) -> None:
    result = export(filled, "chat", tmp_path / "out", fmt="openai", test_size=0.3)
    lines = [line for split in result.splits for line in
             (tmp_path / "out" / "data" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == sum(result.splits.values()) == len(_originals(filled))
    for line in lines:
        assert validate_openai(json.loads(line)) == []
        assert "\\u" not in line  # UTF-8 as is, no escapes
    loaded = _load(tmp_path / "out")
    assert sum(len(s) for s in loaded.values()) == len(lines)
    assert all(isinstance(m, dict) for m in loaded["train"][0]["messages"])


def test_openai_export_keeps_the_original_messages(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out", fmt="openai", test_size=0)
    lineage, originals = _lineage(tmp_path / "out"), _originals(filled)
    lines = (tmp_path / "out" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        original = [{k: v for k, v in m.items() if v is not None} for m in originals[lineage[("train", i)]["id"]]]
        assert _normal(json.loads(line)["messages"]) == original


def test_catalyst_export_reimports_into_curate_with_the_same_conversations(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out", fmt="catalyst", test_size=0.3)
    fresh = Store(tmp_path / "fresh.duckdb", lock_timeout=5)
    import_files(fresh, sorted((tmp_path / "out" / "data").glob("*.jsonl")))

    def conversations(store: Store) -> list[Any]:
        rows = store.arrow("select model, messages, tools, finish_reason from chat").to_pylist()
        return sorted(([r["model"], [{k: v for k, v in m.items() if v is not None} for m in _normal(json.loads(r["messages"]))],
                        r["tools"] and json.loads(r["tools"]), r["finish_reason"]] for r in rows), key=repr)

    assert conversations(fresh) == conversations(filled)


@pytest.mark.parametrize(("fmt", "columns"), [("sharegpt", ["conversations"]),
                                              ("alpaca", ["instruction", "input", "output", "system"])])
def test_text_formats_load_with_datasets(filled: Store, tmp_path: Path, fmt: str, columns: list[str]) -> None:
    result = export(filled, "chat", tmp_path / "out", fmt=fmt, test_size=0)
    train = _load(tmp_path / "out")["train"]
    assert train.column_names == columns and len(train) == result.splits["train"] > 0
    assert result.invalid  # rows with tool calls do not fit these formats


# ---------------------------------------------------------------- reproducible, split without leaks


@pytest.mark.parametrize("fmt", ["messages", "openai"])
def test_same_store_and_arguments_give_the_same_bytes(filled: Store, tmp_path: Path, fmt: str) -> None:
    export(filled, "chat", tmp_path / "a", fmt=fmt, test_size=0.3, seed=7)
    export(filled, "chat", tmp_path / "b", fmt=fmt, test_size=0.3, seed=7)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_each_split_is_written_in_the_seeded_order(filled: Store, tmp_path: Path) -> None:
    # The order is md5(seed:id), then id: it is taken before the messages are typed (issue 19), so
    # this holds what the typing, checks and the split's filtered scan after it must keep.
    export(filled, "chat", tmp_path / "out", test_size=0.5, seed=7)
    written = duckdb.sql(f"select split, id from '{tmp_path / 'out' / 'lineage.parquet'}' order by split, row").fetchall()
    for split in ("train", "test"):
        ids = [i for s, i in written if s == split]
        assert len(ids) > 1
        keys = dict(duckdb.execute("select id, md5_number_lower('7:' || id) from unnest(?::varchar[]) as u(id)", [ids]).fetchall())
        assert ids == sorted(ids, key=lambda i: (keys[i], i))


def test_a_different_seed_moves_rows_between_splits_but_keeps_them_all(filled: Store, tmp_path: Path) -> None:
    one = export(filled, "chat", tmp_path / "a", test_size=0.5, seed=1)
    two = export(filled, "chat", tmp_path / "b", test_size=0.5, seed=2)
    sides = [{r["id"]: r["split"] for r in _lineage(tmp_path / name).values()} for name in ("a", "b")]
    assert sides[0].keys() == sides[1].keys()
    assert sides[0] != sides[1]
    assert one.counts["deduplicated"] == two.counts["deduplicated"]


def test_calls_of_one_conversation_stay_on_one_side(filled: Store, tmp_path: Path) -> None:
    for seed in range(6):
        result = export(filled, "chat", tmp_path / f"s{seed}", test_size=0.5, seed=seed)
        side = {r["id"]: r["split"] for r in _lineage(tmp_path / f"s{seed}").values()}
        assert len({side[i] for i in CONVERSATION}) == 1
        assert result.shared_keys == 0


def test_split_by_keeps_rows_sharing_its_value_together(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out", test_size=0.5, split_by="model")
    models = {r["id"]: r["model"] for r in filled.arrow("select id, model from chat").to_pylist()}
    sides: dict[str, set[str]] = {}
    for row in _lineage(tmp_path / "out").values():
        sides.setdefault(models[row["id"]], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())


def test_a_row_keeps_its_side_as_the_store_grows(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "before", test_size=0.3)
    filled.ingest_texts([json.dumps(generation_record(seed)) for seed in range(1000, 1100)], source="more")
    export(filled, "chat", tmp_path / "after", test_size=0.3)
    before = {r["id"]: r["split"] for r in _lineage(tmp_path / "before").values()}
    after = {r["id"]: r["split"] for r in _lineage(tmp_path / "after").values()}
    assert {i: after[i] for i in before} == before


def test_the_card_reports_the_split_check(filled: Store, tmp_path: Path) -> None:
    result = export(filled, "chat", tmp_path / "out", test_size=0.5)
    assert (result.shared_keys, result.shared_prompts) == (0, 0)
    assert "Split-key values found in more than one split: **0**" in result.card


# ---------------------------------------------------------------- validation, dedup, lineage


def _bad_rows(store: Store) -> None:
    store.ingest_texts([
        json.dumps(_record(300, [{"role": "user", "content": "hi"}], {"role": "assistant", "content": ""})),
        json.dumps(_record(301, [{"role": "user", "content": "call it"}], {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]})),
    ], source="bad")


def test_invalid_rows_are_dropped_with_a_count_per_reason(filled: Store, tmp_path: Path) -> None:
    _bad_rows(filled)
    result = export(filled, "chat", tmp_path / "out", test_size=0)
    assert result.invalid == {"empty answer": 1, "tool call arguments are not valid JSON": 1}
    assert result.invalid_examples["empty answer"] == [generation_id(300)]
    assert result.counts["valid"] == result.counts["filtered"] - 2
    assert "| empty answer | 1 |" in result.card


def test_strict_refuses_and_leaves_the_folder_as_it_was(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out")
    before = {**_files(tmp_path / "out"), "README.md": (tmp_path / "out" / "README.md").read_bytes()}
    _bad_rows(filled)
    with pytest.raises(ExportError, match=rf"--strict: 2 rows do not fit messages: .*{generation_id(300)}"):
        export(filled, "chat", tmp_path / "out", strict=True)
    assert {**_files(tmp_path / "out"), "README.md": (tmp_path / "out" / "README.md").read_bytes()} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "data", "lineage.parquet"]


def test_a_failure_while_writing_leaves_the_previous_export(filled: Store, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    export(filled, "chat", tmp_path / "out")
    before = _files(tmp_path / "out")

    def broken(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(exporter, "_write_lineage", broken)
    with pytest.raises(OSError, match="disk full"):
        export(filled, "chat", tmp_path / "out", seed=3)
    assert _files(tmp_path / "out") == before
    assert not (tmp_path / "out" / ".curate-export").exists()


def test_exact_duplicates_keep_the_first_finished(filled: Store, tmp_path: Path) -> None:
    copies = []
    for seed, finished in ((400, "2026-01-02T00:00:00Z"), (401, "2026-01-01T00:00:00Z")):
        record = _record(seed, [{"role": "user", "content": "Same question"}], {"role": "assistant", "content": "Same"})
        record["finishedAt"] = finished
        copies.append(json.dumps(record))
    filled.ingest_texts(copies, source="dups")
    result = export(filled, "chat", tmp_path / "out", test_size=0)
    assert result.counts["deduplicated"] == result.counts["valid"] - 1
    rows = {r["id"]: r for r in _lineage(tmp_path / "out").values()}
    assert generation_id(400) not in rows
    assert rows[generation_id(401)]["duplicate_ids"] == [generation_id(400)]
    kept_all = export(filled, "chat", tmp_path / "all", test_size=0, dedup="none")
    assert kept_all.counts["deduplicated"] == kept_all.counts["valid"]


def test_lineage_maps_a_conversation_to_every_call_in_it(filled: Store, tmp_path: Path) -> None:
    export(filled, "conversations", tmp_path / "out", test_size=0)
    rows = {r["id"]: r for r in _lineage(tmp_path / "out").values()}
    assert rows[CONVERSATION[-1]]["generation_ids"] == CONVERSATION
    assert CONVERSATION[0] not in rows and CONVERSATION[1] not in rows
    assert len(rows) == filled.arrow("select count(*) as n from conversations").to_pylist()[0]["n"]


def test_where_and_limit_take_a_seeded_sample(filled: Store, tmp_path: Path) -> None:
    model = filled.arrow("select model from chat limit 1").to_pylist()[0]["model"]
    one = export(filled, "chat", tmp_path / "a", where=f"model = '{model}'", limit=3, test_size=0)
    export(filled, "chat", tmp_path / "b", where=f"model = '{model}'", limit=3, test_size=0)
    assert one.counts["filtered"] == 3 and one.counts["source"] > 3
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    models = {r["id"]: r["model"] for r in filled.arrow("select id, model from chat").to_pylist()}
    assert {models[r["id"]] for r in _lineage(tmp_path / "a").values()} == {model}


def test_a_select_is_a_source(filled: Store, tmp_path: Path) -> None:
    result = export(filled, "select id, messages from chat where tools is null", tmp_path / "out", test_size=0)
    assert result.counts["source"] == filled.arrow("select count(*) as n from chat where tools is null").to_pylist()[0]["n"]


# ---------------------------------------------------------------- the card


def test_the_card_has_the_hub_header_and_the_provenance(filled: Store, tmp_path: Path) -> None:
    result = export(filled, "chat", tmp_path / "out", test_size=0.3, license_id="cc-by-4.0")
    header, body = card.split((tmp_path / "out" / "README.md").read_text(encoding="utf-8"))
    assert header["license"] == "cc-by-4.0" and "text-generation" in header["task_categories"]
    assert header["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}]
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]} == result.splits
    for text in ('select * from "chat"', result.fingerprint, "| source |", "| deduplicated |", "## Models",
                 "## Tokens", "lineage.parquet"):
        assert text in body


def test_datasets_reads_the_cards_splits_whole(filled: Store, tmp_path: Path) -> None:
    from datasets.info import DatasetInfosDict

    result = export(filled, "chat", tmp_path / "out", test_size=0.3)
    header, _ = card.split((tmp_path / "out" / "README.md").read_text(encoding="utf-8"))
    infos = DatasetInfosDict.from_dataset_card_data(header)  # what load_dataset reads; it ignores a bad one
    assert {name: s.num_examples for name, s in infos["default"].splits.items()} == result.splits


def test_reexport_keeps_hand_written_prose(filled: Store, tmp_path: Path) -> None:
    export(filled, "chat", tmp_path / "out")
    readme = tmp_path / "out" / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\n## Intended use\n\nOur own words.\n", encoding="utf-8")
    result = export(filled, "chat", tmp_path / "out", fmt="openai")
    text = readme.read_text(encoding="utf-8")
    assert text.endswith("## Intended use\n\nOur own words.\n")
    assert "`openai` format" in text and text.count(card.START) == 1
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == sorted(p.name for p in result.files)


def test_parquet_is_sharded_by_size_and_loads_whole(filled: Store, tmp_path: Path) -> None:
    result = export(filled, "chat", tmp_path / "out", test_size=0, shard_bytes=20_000)
    names = sorted(p.name for p in result.files)
    assert len(names) > 1 and names[0] == f"train-00000-of-{len(names):05d}.parquet"
    assert len(_load(tmp_path / "out")["train"]) == result.splits["train"]


# ---------------------------------------------------------------- mistakes, named


def test_a_source_without_messages_is_refused_naming_the_column(filled: Store, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no column messages"):
        export(filled, "select id from chat", tmp_path / "out")


def test_a_bad_where_is_named(filled: Store, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--where"):
        export(filled, "chat", tmp_path / "out", where="no_such_column = 1")


def test_a_folder_that_is_not_an_export_is_refused(filled: Store, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a curate export"):
        export(filled, "chat", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------- the CLI and the notebook API


def test_cli_export_prints_the_steps_and_writes_the_folder(filled: Store, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "conversations", "--out", str(tmp_path / "out"), "--format",
                                      "openai", "--db", str(filled.path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"]["source"] == report["counts"]["deduplicated"] > 0
    assert (tmp_path / "out" / "data" / "train.jsonl").exists()


def test_cli_export_names_a_bad_format_option(filled: Store, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "chat", "--out", str(tmp_path / "out"), "--test-size", "1.5",
                                      "--db", str(filled.path)])
    assert result.exit_code == 2
    assert "--test-size 1.5" in result.output


# ---------------------------------------------------------------- what the curation passes found


def _chat_ids(store: Store) -> list[str]:
    return [r["id"] for r in store.arrow("select id from chat order by id").to_pylist()]


def test_dedup_near_keeps_one_row_per_cluster_its_representative(filled: Store, tmp_path: Path) -> None:
    ids = _chat_ids(filled)
    with filled.write() as con:  # what `curate dedup near` writes
        con.executemany("insert into near_duplicate_rows values (?, 'prompt', ?, 0.9, 0.85, now())",
                        [(ids[0], ids[0]), (ids[1], ids[0]), (ids[2], ids[0])])
    result = export(filled, "chat", tmp_path / "out", test_size=0, dedup="near")
    kept = {r["id"] for r in _lineage(tmp_path / "out").values()}
    assert ids[0] in kept and ids[1] not in kept and ids[2] not in kept
    assert result.counts["near-deduplicated"] == result.counts["deduplicated"] - 2


def test_a_near_duplicate_cluster_stays_on_one_side_of_the_split(filled: Store, tmp_path: Path) -> None:
    ids = _chat_ids(filled)
    with filled.write() as con:
        con.executemany("insert into near_duplicate_rows values (?, 'prompt', ?, 0.9, 0.85, now())",
                        [(i, ids[0]) for i in ids[:10]])
    for seed in range(4):
        result = export(filled, "chat", tmp_path / f"s{seed}", test_size=0.5, seed=seed)
        side = {r["id"]: r["split"] for r in _lineage(tmp_path / f"s{seed}").values()}
        assert len({side[i] for i in ids[:10]}) == 1
        assert result.card.count("Near-duplicate clusters (`curate dedup near`) found in more than one split: **0**") == 1


def test_exclude_contaminated_drops_rows_an_eval_set_holds_and_names_the_set(filled: Store, tmp_path: Path) -> None:
    ids = _chat_ids(filled)
    with filled.write() as con:  # what `curate decontaminate` writes
        con.executemany("insert into contamination values (?, ?, 'q1', 3, 13, now())",
                        [(ids[0], "gsm8k"), (ids[1], "mmlu"), (ids[1], "gsm8k")])
    result = export(filled, "chat", tmp_path / "out", test_size=0, exclude_contaminated=True)
    kept = {r["id"] for r in _lineage(tmp_path / "out").values()}
    assert not kept & {ids[0], ids[1]}
    assert result.counts["decontaminated"] == result.counts["deduplicated"] - 2
    assert "| gsm8k | 2 |" in result.card and "| mmlu | 1 |" in result.card


def test_pii_drop_removes_rows_with_findings_and_keep_keeps_them(filled: Store, tmp_path: Path) -> None:
    ids = _chat_ids(filled)
    with filled.write() as con:  # what `curate scan pii` writes
        con.execute("insert into pii_findings (id, message_index, kind, span_start, span_end, detector, scanned_at) values (?, 0, 'email', 3, 20, 'regex', now())", [ids[0]])
    dropped = export(filled, "chat", tmp_path / "drop", test_size=0, pii="drop")
    kept = export(filled, "chat", tmp_path / "keep", test_size=0)
    assert ids[0] not in {r["id"] for r in _lineage(tmp_path / "drop").values()}
    assert dropped.counts["without PII"] == kept.counts["deduplicated"] - 1


def _mailing_store(store: Store) -> Store:
    """60 single-turn chats, every third asking to be mailed at an address, and an exact duplicate
    of the first (which has an address): what `curate scan pii` then finds."""
    from curate.pii import scan

    records = [_record(600 + k, [{"role": "user", "content": f"mail me at person{k}@example.com please"
                                   if k % 3 == 0 else f"plain question {k}"}],
                       {"role": "assistant", "content": f"answer {k}"}) for k in range(60)]
    duplicate = json.loads(json.dumps(records[0]))
    duplicate["id"] = "a-duplicate-of-the-first"
    store.ingest_texts([json.dumps(r) for r in [*records, duplicate]], source="t")
    scan(store)
    return store


def test_pii_redact_keeps_the_seeded_order(store: Store, tmp_path: Path) -> None:
    # DuckDB moves a row whose list column is updated to the end of its table: redacted rows were
    # written last in their split.
    export(_mailing_store(store), "chat", tmp_path / "out", test_size=0, pii="redact", seed=1)
    ids = [i for (i,) in duckdb.sql(f"select id from '{tmp_path / 'out' / 'lineage.parquet'}' order by row").fetchall()]
    keys = dict(duckdb.execute("select id, md5_number_lower('1:' || id) from unnest(?::varchar[]) as u(id)", [ids]).fetchall())
    assert ids == sorted(ids, key=lambda i: (keys[i], i))


def test_pii_redact_reads_the_texts_a_window_of_rows_at_a_time_with_the_same_result(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mailing_store(store)
    export(store, "chat", tmp_path / "whole", test_size=0.3, pii="redact", seed=3)
    monkeypatch.setattr(exporter, "_REDACT_WINDOW", 7)
    export(store, "chat", tmp_path / "windows", test_size=0.3, pii="redact", seed=3)
    assert _files(tmp_path / "windows") == _files(tmp_path / "whole")
    assert "@example.com" not in json.dumps([row["messages"] for split in _load(tmp_path / "windows").values()
                                             for row in split])


def test_pii_redact_keeps_the_duplicates_a_row_stands_for_in_lineage(store: Store, tmp_path: Path) -> None:
    result = export(_mailing_store(store), "chat", tmp_path / "out", test_size=0, pii="redact", seed=1)
    assert result.counts["deduplicated"] == result.counts["valid"] - 1
    lineage = {lin["id"]: lin["duplicate_ids"] for lin in _lineage(tmp_path / "out").values()}
    assert {i: d for i, d in lineage.items() if d} == {generation_id(600): ["a-duplicate-of-the-first"]}


_LONGER_OPENING = ("select * replace (replace(messages::varchar, 'mail me at', "
                   "'please would you be so kind as to mail me at')::json as messages) from chat")


def test_pii_redact_never_ships_an_address_a_select_moved_away_from_its_scanned_span(store: Store, tmp_path: Path) -> None:
    # The scan's spans are offsets into the stored text: applied to a rewritten text they would
    # replace the wrong characters and ship the address.
    result = export(_mailing_store(store), _LONGER_OPENING, tmp_path / "out", test_size=0, pii="redact")
    shipped = json.dumps([row["messages"] for row in _load(tmp_path / "out")["train"]])
    assert "@example.com" not in shipped
    assert result.counts["as the passes saw them"] == result.counts["valid"] - 1 - 20
    assert "20 rows left out: SOURCE changed their messages" in result.card


def test_pii_drop_never_ships_an_address_a_select_wrote_into_a_row_without_findings(store: Store, tmp_path: Path) -> None:
    injected = ("select * replace (replace(messages::varchar, 'plain question 1', "
                "'write to someone@example.com about 1')::json as messages) from chat")
    result = export(_mailing_store(store), injected, tmp_path / "out", test_size=0, pii="drop")
    shipped = [row["messages"] for row in _load(tmp_path / "out")["train"]]
    assert "@example.com" not in json.dumps(shipped)
    assert result.counts["as the passes saw them"] == result.counts["deduplicated"] - 8  # k = 1, 10, 11, 13, 14, 16, 17, 19


def test_a_select_that_keeps_the_messages_loses_no_row_to_the_passes_check(store: Store, tmp_path: Path) -> None:
    same = export(_mailing_store(store), "select * from chat where true", tmp_path / "select", test_size=0, pii="redact")
    export(store, "chat", tmp_path / "view", test_size=0, pii="redact")
    assert same.counts["as the passes saw them"] == same.counts["valid"] - 1
    assert _files(tmp_path / "select") == _files(tmp_path / "view")


def test_conversations_export_the_text_the_passes_read(filled: Store, tmp_path: Path) -> None:
    # A trajectory is its longest call's chat row: nothing is rewritten, so nothing is dropped.
    result = export(filled, "conversations", tmp_path / "out", test_size=0, pii="redact")
    assert result.counts["as the passes saw them"] == result.counts["deduplicated"]
    assert "as the passes saw them" in result.card


def test_pii_redact_replaces_the_spans_in_the_export_and_leaves_the_store_alone(store: Store, tmp_path: Path) -> None:
    from curate.pii import scan

    record = _record(500, [{"role": "user", "content": "Write to jane.doe@example.com or call +1 415-555-2671."}],
                     {"role": "assistant", "content": "Sure, I will email jane.doe@example.com."})
    store.ingest_texts([json.dumps(record), json.dumps(generation_record(501))], source="t")
    scan(store)
    result = export(store, "chat", tmp_path / "out", test_size=0, pii="redact")
    rows = {lin["id"]: i for (_, i), lin in _lineage(tmp_path / "out").items()}
    messages = _load(tmp_path / "out")["train"][rows[generation_id(500)]]["messages"]
    assert [m["content"] for m in messages] == ["Write to [EMAIL] or call [PHONE].", "Sure, I will email [EMAIL]."]
    assert result.counts["PII redacted"] == 2
    assert "| email | 2 |" in result.card
    raw = store.arrow("select raw from generation_rows where id = ?", [generation_id(500)]).to_pylist()[0]["raw"]
    assert "jane.doe@example.com" in raw
