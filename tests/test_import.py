"""Import: every record shape inference.net produces lands in one row per generation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from curate.importer import import_files
from curate.store import Store
from curate.synthetic import generation_record
from tests.conftest import write_jsonl


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return store.arrow(sql).to_pylist()


def one(store: Store, generation_id: str) -> dict[str, Any]:
    found = rows(store, f"select * from generations where id = '{generation_id}'")
    assert len(found) == 1, found
    return found[0]


def test_generation_for_client_is_stored_with_typed_columns(store: Store, tmp_path: Path) -> None:
    record = generation_record(1)
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [record])])
    row = one(store, record["id"])
    assert row["shape"] == "generation"
    assert row["state"] == "Success"
    assert row["state_message"] == record["stateMessage"]
    assert row["model"] == record["request"]["model"]
    assert row["custom_id"] == "req-00000001"
    assert row["prompt_tokens"] == record["response"]["usage"]["prompt_tokens"]
    assert row["completion_tokens"] == record["response"]["usage"]["completion_tokens"]
    assert row["total_tokens"] == record["response"]["usage"]["total_tokens"]
    assert row["dispatched_at"].isoformat().startswith(record["dispatchedAt"][:19])
    assert row["finished_at"].isoformat().startswith(record["finishedAt"][:19])
    assert json.loads(row["request"]) == record["request"]
    assert json.loads(row["response"]) == record["response"]
    assert row["source"] == f"import:{(tmp_path / 'g.jsonl').resolve()}"


def test_raw_body_is_kept_byte_for_byte_with_unknown_fields(store: Store, tmp_path: Path) -> None:
    record = generation_record(2) | {"undocumentedField": {"nested": [1, 2, "ü"]}, "cost": 0.0012}
    line = json.dumps(record, ensure_ascii=False, indent=None, separators=(", ", ": "))
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [line])])
    assert one(store, record["id"])["raw"] == line


def test_failed_generation_keeps_its_state_message(store: Store, tmp_path: Path) -> None:
    record = generation_record(3, state="Failed")
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [record])])
    row = one(store, record["id"])
    assert (row["state"], row["state_message"], row["response"]) == (
        "Failed", record["stateMessage"], None)


def test_snake_case_generation_fields_are_read(store: Store, tmp_path: Path) -> None:
    record = {"generation_id": "snake-1", "state": "Success", "state_message": "ok",
              "request": {"model": "m"}, "response": None,
              "dispatched_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:05Z"}
    import_files(store, [write_jsonl(tmp_path / "g.jsonl", [record])])
    row = one(store, "snake-1")
    assert (row["state_message"], row["finished_at"].second) == ("ok", 5)


@pytest.mark.parametrize("casing", ["camel", "snake"])
def test_webhook_envelope_in_either_casing(store: Store, tmp_path: Path, casing: str) -> None:
    data = generation_record(4)
    del data["id"]  # webhook data carries the id only in the envelope
    keys = ("webhookId", "generationId") if casing == "camel" else ("webhook_id", "generation_id")
    envelope = {"event": "generation.completed", "timestamp": "2026-11-01T00:00:00Z",
                keys[0]: "AhALzdz8S", keys[1]: "GENWEBHOOK0000000001", "data": data}
    import_files(store, [write_jsonl(tmp_path / "w.jsonl", [envelope])])
    row = one(store, "GENWEBHOOK0000000001")
    assert row["shape"] == "webhook"
    assert row["state"] == "Success"
    assert json.loads(row["request"]) == without_webhook_ids(data["request"])
    assert json.loads(row["response"]) == data["response"]
    assert json.loads(row["raw"]) == without_webhook_ids(envelope)
    assert "AhALzdz8S" not in row["raw"]


def without_webhook_ids(value: Any) -> Any:
    """``value`` as the store keeps it: every webhook id (a credential) replaced by the marker."""
    if isinstance(value, dict):
        return {k: "[webhook-id]" if k in ("webhookId", "webhook_id") else without_webhook_ids(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [without_webhook_ids(v) for v in value]
    return value


def test_async_embedding_envelope_is_stored(store: Store, tmp_path: Path) -> None:
    envelope = {"event": "async-embedding.completed", "webhookId": "w", "generationId": "EMB1",
                "data": {"state": "Success", "request": {"model": "qwen/qwen3-embedding-4b",
                                                         "input": "hi"},
                         "response": {"object": "list", "data": [{"embedding": [0.1, 0.2]}],
                                      "model": "qwen/qwen3-embedding-4b",
                                      "usage": {"prompt_tokens": 1, "total_tokens": 1}}}}
    import_files(store, [write_jsonl(tmp_path / "e.jsonl", [envelope])])
    row = one(store, "EMB1")
    assert (row["model"], row["total_tokens"]) == ("qwen/qwen3-embedding-4b", 1)


def test_slow_group_envelope_becomes_one_row_per_generation(store: Store, tmp_path: Path) -> None:
    items = []
    for seed in (5, 6, 7):
        item = generation_record(seed)
        item["generationId"] = item.pop("id")
        items.append(item)
    envelope = {"event": "slow-group.completed", "timestamp": "2026-11-01T00:00:00Z",
                "group_id": "GROUP1", "data": {"group_size": 3, "status": "completed",
                                               "generations": items}}
    summary = import_files(store, [write_jsonl(tmp_path / "g.jsonl", [envelope])])
    assert summary.stored == 3
    for item in items:
        row = one(store, item["generationId"])
        assert row["shape"] == "slow-group"
        assert json.loads(row["request"]) == item["request"]
        raw = json.loads(row["raw"])
        # Each row keeps the whole envelope with only its own item.
        assert raw["group_id"] == "GROUP1"
        assert raw["data"]["generations"] == [item]


def test_webhook_test_event_is_skipped_not_rejected(store: Store, tmp_path: Path) -> None:
    test_event = {"event": "webhook.test", "timestamp": "2026-11-01T00:00:00Z", "webhook_id": "w"}
    summary = import_files(store, [write_jsonl(tmp_path / "t.jsonl", [test_event])])
    assert (summary.skipped, summary.stored, summary.rejected) == (1, 0, 0)


def test_catalyst_source_backed_row(store: Store, tmp_path: Path) -> None:
    record = generation_record(8)
    row_in = {"request": record["request"], "response": record["response"]}
    import_files(store, [write_jsonl(tmp_path / "c.jsonl", [row_in])])
    (row,) = rows(store, "select * from generations")
    assert row["id"].startswith("sha256-") and len(row["id"]) == len("sha256-") + 32
    assert (row["shape"], row["state"], row["model"]) == ("catalyst", "Success", record["request"]["model"])
    assert json.loads(row["response"]) == record["response"]


def test_hugging_face_messages_row_splits_the_last_assistant_turn(store: Store, tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}}]},
    ]
    import_files(store, [write_jsonl(tmp_path / "h.jsonl", [{"id": "row-7", "messages": messages}])])
    (row,) = rows(store, "select * from generations")
    assert (row["shape"], row["state"]) == ("hf-messages", "Success")
    request = json.loads(row["request"])
    assert request["messages"] == messages[:2]
    assert request["metadata"] == {"importOriginalRowId": "row-7"}
    choice = json.loads(row["response"])["choices"][0]
    assert choice["message"] == messages[2]
    assert choice["finish_reason"] == "tool_calls"


def test_openai_batch_output_lines_success_and_error(store: Store, tmp_path: Path) -> None:
    body = generation_record(9)["response"]
    ok = {"id": "batch_req_1", "custom_id": "chat-1",
          "response": {"status_code": 200, "request_id": "r1", "body": body}, "error": None}
    failed = {"id": "batch_req_2", "custom_id": "chat-2",
              "response": {"status_code": 400, "request_id": "r2",
                           "body": {"error": {"message": "bad model"}}}, "error": None}
    errored = {"id": "batch_req_3", "custom_id": "chat-3", "response": None,
               "error": {"code": "timeout", "message": "expired"}}
    import_files(store, [write_jsonl(tmp_path / "b.jsonl", [ok, failed, errored])])
    got = {r["id"]: r for r in rows(store, "select * from generations")}
    assert (got["batch_req_1"]["state"], got["batch_req_1"]["custom_id"]) == ("Success", "chat-1")
    assert json.loads(got["batch_req_1"]["response"]) == body
    assert (got["batch_req_2"]["state"], got["batch_req_2"]["state_message"]) == ("Failed", "bad model")
    assert (got["batch_req_3"]["state"], got["batch_req_3"]["state_message"]) == ("Failed", "expired")


def test_same_record_twice_is_one_row(store: Store, tmp_path: Path) -> None:
    record = generation_record(10)
    path = write_jsonl(tmp_path / "g.jsonl", [record, record])
    first = import_files(store, [path])
    second = import_files(store, [path])
    assert (first.stored, first.duplicate) == (1, 1)
    assert (second.stored, second.updated, second.duplicate) == (0, 0, 2)
    assert rows(store, "select count(*) as n from generations") == [{"n": 1}]


def test_rows_without_an_id_get_the_same_derived_id_on_reimport(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "yo"}]}])
    import_files(store, [path])
    again = import_files(store, [path])
    assert (again.stored, again.duplicate) == (0, 1)


def test_terminal_state_is_not_regressed_by_an_older_record(store: Store, tmp_path: Path) -> None:
    done = generation_record(11)
    queued = generation_record(11, state="Queued")
    import_files(store, [write_jsonl(tmp_path / "a.jsonl", [done])])
    summary = import_files(store, [write_jsonl(tmp_path / "b.jsonl", [queued])])
    assert (summary.updated, summary.duplicate) == (0, 1)
    assert one(store, done["id"])["state"] == "Success"


def test_terminal_state_within_one_file_wins_whatever_the_order(store: Store, tmp_path: Path) -> None:
    done = generation_record(12)
    running = generation_record(12, state="In Progress")
    import_files(store, [write_jsonl(tmp_path / "a.jsonl", [done, running])])
    assert one(store, done["id"])["state"] == "Success"


def test_progress_updates_a_stored_row_and_keeps_first_seen(store: Store, tmp_path: Path) -> None:
    queued = generation_record(13, state="Queued")
    done = generation_record(13)
    import_files(store, [write_jsonl(tmp_path / "a.jsonl", [queued])])
    before = one(store, done["id"])
    summary = import_files(store, [write_jsonl(tmp_path / "b.jsonl", [done])])
    after = one(store, done["id"])
    assert summary.updated == 1
    assert (after["state"], after["first_seen_at"]) == ("Success", before["first_seen_at"])
    assert after["updated_at"] >= before["updated_at"]
    assert json.loads(after["response"]) == done["response"]


BAD_LINES = [
    ('{"id": "truncated", "state": "Succ', "not valid JSON"),
    ("[1, 2, 3]", "not a JSON object (found array)"),
    ('"just a string"', "not a JSON object (found varchar)"),
    ('{"hello": "world"}', "no known record shape"),
    ('{"id": {"nested": 1}, "state": "Success"}', "field id is object, not a string"),
    ('{"event": "generation.completed", "data": "not an object"}',
     "field data of generation.completed is missing or not an object"),
    ('{"event": "slow-group.completed", "data": {"generations": 5}}',
     "field data.generations of slow-group.completed is not an array of objects"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_line_is_rejected_with_its_line_number_and_import_goes_on(
    store: Store, tmp_path: Path, bad: str, reason: str
) -> None:
    good = [generation_record(20), generation_record(21)]
    path = write_jsonl(tmp_path / "mixed.jsonl", [good[0], bad, good[1]])
    summary = import_files(store, [path])
    assert (summary.stored, summary.rejected) == (2, 1)
    (reject,) = rows(store, "select * from rejects")
    assert reject["line"] == 2
    assert reject["reason"].startswith(reason)
    assert reject["raw"] == bad
    assert reject["source"] == f"import:{path.resolve()}"


def test_reimporting_a_bad_file_keeps_one_reject_per_line(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", "[1]"])
    import_files(store, [path])
    import_files(store, [path])
    assert rows(store, "select count(*) as n from rejects") == [{"n": 2}]


def test_no_known_shape_reason_names_the_keys_found(store: Store, tmp_path: Path) -> None:
    import_files(store, [write_jsonl(tmp_path / "x.jsonl", ['{"prompt": "a", "completion": "b"}'])])
    (reject,) = rows(store, "select reason from rejects")
    assert reject["reason"].endswith("found keys prompt, completion")


def test_invalid_utf8_line_is_rejected_and_neighbours_stored(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(generation_record(22)).encode()
    path.write_bytes(good + b"\n" + b'{"id": "caf\xe9", "state": "Success"}\n' + good + b"\n")
    summary = import_files(store, [path])
    assert (summary.stored, summary.duplicate, summary.rejected) == (1, 1, 1)
    (reject,) = rows(store, "select line, raw from rejects")
    assert reject["line"] == 2
    assert "\\xe9" in reject["raw"]


def test_blank_lines_and_crlf_endings_are_accepted(store: Store, tmp_path: Path) -> None:
    a, b = generation_record(23), generation_record(24)
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(f"{json.dumps(a)}\r\n\r\n   \r\n{json.dumps(b)}\r\n".encode())
    summary = import_files(store, [path])
    assert (summary.stored, summary.rejected) == (2, 0)
    assert one(store, b["id"])["raw"] == json.dumps(b)


def test_gzip_file_is_imported(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for seed in range(30, 40):
            out.write(json.dumps(generation_record(seed)) + "\n")
    assert import_files(store, [path]).stored == 10


def test_line_numbers_stay_right_across_batches(store: Store, tmp_path: Path) -> None:
    records: list[Any] = [generation_record(seed) for seed in range(40, 100)]
    records[47] = "{broken"
    summary = import_files(store, [write_jsonl(tmp_path / "g.jsonl", records)], batch_bytes=4096)
    assert (summary.stored, summary.rejected) == (59, 1)
    assert rows(store, "select line from rejects") == [{"line": 48}]


def test_missing_file_fails_before_anything_is_stored(store: Store, tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "g.jsonl", [generation_record(1)])
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        import_files(store, [good, tmp_path / "nope.jsonl"])
    assert rows(store, "select count(*) as n from generations") == [{"n": 0}]


def test_each_import_is_recorded_with_its_counts(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [generation_record(1), "{bad"])
    import_files(store, [path])
    (imp,) = rows(store, "select * from imports")
    assert (imp["lines"], imp["stored"], imp["rejected"]) == (2, 1, 1)
    assert imp["finished_at"] is not None


def _many(n: int) -> list[Any]:
    # Small distinct records, more than the one-pass insert's probe of 1,000 lines.
    return [{"id": f"gen-{i:06d}", "state": "Success", "request": {"model": "m"}} for i in range(n)]


def test_a_bad_line_past_the_first_thousand_is_still_rejected_alone(store: Store, tmp_path: Path) -> None:
    records = _many(1200)
    records[1100] = "{cut off"
    summary = import_files(store, [write_jsonl(tmp_path / "late.jsonl", records)])
    assert (summary.stored, summary.rejected) == (1199, 1)
    assert rows(store, "select line from rejects") == [{"line": 1101}]


def test_a_repeated_id_past_the_first_thousand_is_one_row(store: Store, tmp_path: Path) -> None:
    records = _many(1200)
    records[1150] = records[3]
    summary = import_files(store, [write_jsonl(tmp_path / "dup.jsonl", records)])
    assert (summary.stored, summary.duplicate) == (1199, 1)
    assert rows(store, "select count(*) as n, count(distinct id) as ids from generations") == [
        {"n": 1199, "ids": 1199}]


def test_a_file_overlapping_the_store_past_its_first_lines_stores_only_the_new(
    store: Store, tmp_path: Path
) -> None:
    records = _many(1500)
    import_files(store, [write_jsonl(tmp_path / "tail.jsonl", records[1200:])])
    summary = import_files(store, [write_jsonl(tmp_path / "all.jsonl", records)])
    assert (summary.stored, summary.duplicate) == (1200, 300)
    assert rows(store, "select count(distinct id) as ids, count(*) as n from generations") == [
        {"ids": 1500, "n": 1500}]


def test_python_reader_keeps_line_numbers_across_blocks(store: Store, tmp_path: Path) -> None:
    # Invalid UTF-8 makes DuckDB's reader refuse the file, so Python reads it, in 4 KB blocks.
    path = tmp_path / "mixed.jsonl.gz"
    with gzip.open(path, "wb") as out:
        for seed in range(40, 100):
            line = b"{broken \xff" if seed == 87 else json.dumps(generation_record(seed)).encode()
            out.write(line + b"\n")
    summary = import_files(store, [path], batch_bytes=4096)
    assert (summary.stored, summary.rejected, summary.lines) == (59, 1, 60)
    assert rows(store, "select line from rejects") == [{"line": 48}]
