"""Export formats: each reads as a specification of one behaviour of ``curate.formats``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.formats import (
    _NOT_TEXT_CONTENT,
    FORMATS,
    JSONL_FORMATS,
    ROW_FORMATS,
    SCHEMAS,
    _tool_answers_nothing,
    convert,
    dumps,
    messages_from_arrow,
    typed_messages,
    validate_openai,
)
from curate.importer import import_files
from curate.store import Store
from curate.synthetic import generation_record

PICTURE: list[dict[str, Any]] = [
    {"type": "text", "text": "Qu'est-ce que c'est ? 這是什麼？"},
    {"type": "image_url", "image_url": {"url": "https://example.com/chat.png", "detail": "low"}},
]
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Zürich","unit":"c"}'},
}
CALL_ODD: dict[str, Any] = {
    "id": "call_2",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": ["東京"], "n": 3}'},
}
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
_DELETE = object()  # a mutation that removes the key


def _record(seed: int, messages: list[dict[str, Any]] | None = None, answer: dict[str, Any] | None = None) -> str:
    record = generation_record(seed, state="Success")
    if messages is not None:
        record["request"]["messages"] = messages
    if answer is not None:
        record["response"]["choices"][0]["message"] = answer
    return json.dumps(record, ensure_ascii=False)


def _fixture_texts() -> list[str]:
    texts = [_record(seed) for seed in range(12)]  # seed 3 and 10 answer with tool calls
    texts.append(
        _record(
            100,
            [  # a whole tool round trip, then a final text answer
                {"role": "system", "content": "Réponds en français."},
                {"role": "user", "content": "Météo à Zürich et 東京 ?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL, CALL_ODD]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c":4}'},
                {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c":12}'},
            ],
            {"role": "assistant", "content": "Il fait 4 °C à Zürich et 12 °C à 東京."},
        )
    )
    texts.append(_record(101, [{"role": "user", "content": PICTURE}], {"role": "assistant", "content": "Un chat 🐱."}))
    texts.append(
        _record(
            102,
            [{"role": "user", "content": [{"type": "text", "text": "Salut"}, {"type": "text", "text": "ça va ?"}]}],
            {"role": "assistant", "content": "Très bien, merci."},
        )
    )
    return texts


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """The fixture records' rows of the ``chat`` view. Built once: every test only reads the table."""
    store = Store(tmp_path_factory.mktemp("chat") / "curate.duckdb", lock_timeout=5)
    store.ingest_texts(_fixture_texts(), source="t")
    return store.arrow("select * from chat order by id")


def _rows(*conversations: list[Any], tools: list[Any] | None = None, ascii_only: bool = False) -> pa.Table:
    """A ``chat``-like table: one row per conversation (ids r0, r1, ...), all offered ``tools``."""
    texts = [json.dumps(c, ensure_ascii=ascii_only) for c in conversations]
    return pa.table(
        {
            "id": pa.array([f"r{i}" for i in range(len(texts))], pa.string()),
            "messages": pa.array(texts, pa.string()),
            "tools": pa.array([None if tools is None else json.dumps(tools)] * len(texts), pa.string()),
        }
    )


def _reasons(table: pa.Table, fmt: str) -> dict[str, int]:
    _, invalid = convert(table, fmt)
    return dict(invalid.counts)


def _by_id(rows: pa.Table) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows.to_pylist()}


def _originals(chat: pa.Table) -> dict[str, list[dict[str, Any]]]:
    return {row["id"]: json.loads(row["messages"]) for row in chat.to_pylist()}


def _id_of(chat: pa.Table, predicate: Any) -> str:
    for row in chat.to_pylist():
        if predicate(json.loads(row["messages"])):
            return str(row["id"])
    raise AssertionError("no fixture row fits")


def _has_parts(msgs: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) for m in msgs)


def _has_image(msgs: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p["type"] == "image_url" for p in m["content"]) for m in msgs)


def _has_tool_round_trip(msgs: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" for m in msgs)


def _normalised(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each tool call's arguments as minified JSON text: formats keep JSON values, not bytes."""
    out = copy.deepcopy(messages)
    for m in out:
        for call in m.get("tool_calls") or []:
            args = call["function"]["arguments"]
            call["function"]["arguments"] = dumps(json.loads(args) if isinstance(args, str) else args)
    return out


def _as_written(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as JSONL lines write them: arguments normalised, null members left out."""
    return [{k: v for k, v in m.items() if v is not None} for m in _normalised(messages)]


def _strings(value: Any) -> list[str]:
    """Every string in a value, JSON text included both as text and as the strings it holds."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, str):
        if value[:1] in ("{", "["):
            try:
                return [value, *_strings(json.loads(value))]
            except json.JSONDecodeError:
                pass
        return [value]
    return []


def _text(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "\n".join(p["text"] for p in content)


def _output_schema(fmt: str) -> pa.Schema:
    return pa.schema([pa.field("id", pa.string()), *SCHEMAS[fmt]])


# ---------------------------------------------------------------- every format


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_schema_is_the_id_then_the_format_columns(chat: pa.Table, fmt: str) -> None:
    rows, _ = convert(chat, fmt)
    assert rows.schema == _output_schema(fmt)
    assert "id" not in SCHEMAS[fmt].names


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_record_batch_converts_like_a_table(chat: pa.Table, fmt: str) -> None:
    from_table, _ = convert(chat, fmt)
    from_batch, _ = convert(chat.combine_chunks().to_batches()[0], fmt)
    assert from_batch.equals(from_table)


# One row out per row in: the row formats' (a preference format pairs rows: tests/test_preference_export.py).
@pytest.mark.parametrize("fmt", ROW_FORMATS)
def test_every_input_row_is_either_kept_or_counted_as_dropped(chat: pa.Table, fmt: str) -> None:
    rows, invalid = convert(chat, fmt)
    assert rows.num_rows + invalid.total == chat.num_rows
    assert sorted(rows.column("id").to_pylist() + invalid.ids) == sorted(chat.column("id").to_pylist())


@pytest.mark.parametrize("fmt", FORMATS)
def test_kept_rows_keep_their_input_order(chat: pa.Table, fmt: str) -> None:
    rows, _ = convert(chat, fmt)
    order = chat.column("id").to_pylist()
    kept = rows.column("id").to_pylist()
    assert kept == [i for i in order if i in set(kept)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_input_gives_the_same_bytes(chat: pa.Table, fmt: str, tmp_path: Path) -> None:
    first, _ = convert(chat, fmt)
    second, _ = convert(chat, fmt)
    pq.write_table(first, tmp_path / "a.parquet")
    pq.write_table(second, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_input_gives_an_empty_table_of_the_same_schema(chat: pa.Table, fmt: str) -> None:
    rows, invalid = convert(chat.slice(0, 0), fmt)
    assert rows.num_rows == 0 and rows.schema == _output_schema(fmt) and invalid.total == 0


@pytest.mark.parametrize("fmt", ROW_FORMATS)
def test_optional_columns_may_be_missing_or_all_null(fmt: str) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    bare = pa.table({"id": ["x"], "messages": [json.dumps(msgs)]})
    nulls = bare.append_column("tools", pa.nulls(1)).append_column("model", pa.nulls(1))
    nulls = nulls.append_column("finish_reason", pa.nulls(1))
    assert nulls.schema.field("tools").type == pa.null()
    from_bare, _ = convert(bare, fmt)
    from_nulls, _ = convert(nulls, fmt)
    assert from_bare.num_rows == 1 and from_nulls.equals(from_bare)


def test_unknown_format_is_refused(chat: pa.Table) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        convert(chat, "csv")


def test_malformed_rows_are_dropped_with_a_count_per_reason() -> None:
    batch = pa.table(
        {
            "id": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "messages": [
                "not json",
                "[]",
                '[{"content":"x"}]',
                '[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]},{"role":"assistant","content":"ok"}]',
                '[{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}]',
                '[{"role":"user","content":[{"text":"no type"}]},{"role":"assistant","content":"ok"}]',
                '[{"role":"user","content":"hi"},{"role":"assistant","content":""}]',
                '[{"role":"assistant","content":"hi"},{"role":"user","content":"ok"}]',
            ],
            "tools": [None, None, None, None, "{}", None, None, None],
        }
    )
    rows, invalid = convert(batch, "messages")
    assert rows.num_rows == 0
    assert dict(invalid.counts) == {
        "messages is not a non-empty JSON array": 2,
        "message without a role": 1,
        "unsupported content part": 2,
        "tools is not a JSON array": 1,
        "empty answer": 1,
        "last message is not an assistant answer": 1,
    }
    assert invalid.dropped[2] == ("c", "message without a role")


@pytest.mark.parametrize("messages", ['{"role":"user"}', '"hello"', "42", "null", "[{\"role\":\"user\",", "[1, 2",
                                      '[{"role":"user","content":[{"type":"text","text":"hi"}]}', None])
def test_messages_that_are_not_a_json_array_are_dropped_not_raised(messages: str | None) -> None:
    batch = pa.table({"id": ["a", "b"], "messages": [messages, '[{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}]'],
                      "tools": [None, None]})
    rows, invalid = convert(batch, "messages")
    assert rows.num_rows == 1
    assert invalid.dropped == [("a", "messages is not a non-empty JSON array")]


def test_running_out_of_memory_while_typing_is_an_error_not_a_row_dropped_as_not_json() -> None:
    # typed_messages reads bad JSON as NULL through try(): DuckDB's TRY must not swallow an out of
    # memory as if the row were bad (the row would be dropped and counted under a wrong reason).
    con = duckdb.connect()
    con.execute("set memory_limit = '150MB'")
    con.execute("set threads = 1")
    con.execute("""create table big as select '[' || repeat('{"role":"user","content":"' || repeat('x', 200) || '"},', 300000)
                   || '{"role":"assistant","content":"ok"}]' as messages""")
    with pytest.raises(duckdb.OutOfMemoryException):
        con.execute(f"select len({typed_messages('messages')}) from big").fetchall()


@pytest.mark.parametrize("fmt", ROW_FORMATS)
def test_non_ascii_text_survives_every_format_unchanged(fmt: str) -> None:
    system, question, answer = "Réponds en français, s'il te plaît.", "東京の天気は？ 🌧️ naïve 👩‍💻", "Il pleut à 東京 ☔ — 12 °C 🐱."
    city = "Zürich 東京 🐱"
    text_row = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": json.dumps({"city": city})}}
    call_row = [{"role": "user", "content": question}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    # The input escapes every non-ASCII character (\u00e9, surrogate pairs for emoji): the output must not.
    rows, _ = convert(_rows(text_row, call_row, ascii_only=True), fmt)
    by_id = _by_id(rows)
    assert {system, question, answer} <= set(_strings(by_id["r0"]))
    if fmt not in ("sharegpt", "alpaca"):  # the formats that hold tool calls
        assert city in _strings(by_id["r1"])
    if fmt in JSONL_FORMATS:
        for line in rows.column("json").to_pylist():
            assert "\\u" not in line


# ---------------------------------------------------------------- reading messages into typed columns


@pytest.mark.parametrize("content", [7, 1.5, True, {"text": "x"}])
def test_content_that_is_a_number_or_an_object_is_dropped(content: Any) -> None:
    msgs = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
    assert _reasons(_rows(msgs), "messages") == {"content is neither text nor parts": 1}


@pytest.mark.parametrize("tool_calls", ["call_1", {"id": "call_1"}, 5])
def test_tool_calls_that_is_not_a_list_is_dropped(tool_calls: Any) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "tool_calls": tool_calls}]
    assert _reasons(_rows(msgs), "messages") == {"tool_calls is not a list": 1}


def test_an_empty_tool_calls_list_is_read_as_none() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "tool_calls": []}]
    rows, invalid = convert(_rows(msgs), "messages")
    assert invalid.total == 0
    assert rows.to_pylist()[0]["messages"][1]["tool_calls"] is None
    assert _reasons(_rows(msgs), "sharegpt") == {}


@pytest.mark.parametrize("arguments", ["{city", "", _DELETE])
def test_tool_call_arguments_that_are_missing_or_do_not_parse_make_the_row_invalid(arguments: Any) -> None:
    call = copy.deepcopy(CALL)
    if arguments is _DELETE:
        del call["function"]["arguments"]
    else:
        call["function"]["arguments"] = arguments
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    for fmt in ("messages", "openai", "catalyst"):
        assert _reasons(_rows(msgs), fmt) == {"tool call arguments are not valid JSON": 1}


def _takes_slow_path(table: pa.Table) -> list[bool]:
    con = duckdb.connect()
    try:
        con.register("src", table)
        got = con.sql(f"select regexp_matches(messages, '{_NOT_TEXT_CONTENT}') from src").fetchall()
    finally:
        con.close()
    return [bool(x) for (x,) in got]


def test_fast_and_slow_content_paths_agree() -> None:
    tricky = 'Quote " backslash \\ newline\n tab\t — é 東京 🐱 and a fake key: "content":[1, 2] "content": 5'
    text_only: list[dict[str, Any]] = [
        {"role": "system", "content": tricky},
        {"role": "user", "content": '{"content":[{"type":"text","text":"not parts"}]}'},
        {"role": "assistant", "content": None, "tool_calls": [CALL, CALL_ODD]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"content": 4}'},
        {"role": "tool", "tool_call_id": "call_2", "content": ""},
        {"role": "assistant", "content": "fin"},
    ]
    with_parts = [*text_only[:1], {"role": "user", "content": PICTURE}, *text_only[1:]]
    table = _rows(text_only, with_parts)
    assert _takes_slow_path(table) == [False, True]  # the premise: each row takes the path this test means

    rows, invalid = convert(table, "messages")
    assert invalid.total == 0
    fast, slow = rows.column("messages").to_pylist()
    assert slow[1]["content_parts"] is not None
    assert fast == slow[:1] + slow[2:]
    # A string holding `"content":[` (escaped in the JSON text) is text on either path.
    assert [m["content"] for m in fast] == [m["content"] for m in text_only]
    assert all(m["content_parts"] is None for m in fast)


# ---------------------------------------------------------------- messages


def test_messages_round_trip_to_the_same_conversations(chat: pa.Table) -> None:
    rows, invalid = convert(chat, "messages")
    assert invalid.total == 0
    originals = _originals(chat)
    for row in rows.to_pylist():
        assert messages_from_arrow(row["messages"]) == _normalised(originals[row["id"]])


def test_messages_keep_tool_call_arguments_as_json_whatever_their_shape(chat: pa.Table) -> None:
    rows, _ = convert(chat, "messages")
    assert pa.types.is_list(rows.schema.field("messages").type)
    row = _by_id(rows)[_id_of(chat, _has_tool_round_trip)]
    calls = row["messages"][2]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Zürich", "unit": "c"},
        {"city": ["東京"], "n": 3},
    ]
    assert calls[1]["function"]["arguments"] == '{"city":["東京"],"n":3}'  # minified


def test_messages_keep_content_parts_typed_and_content_null_beside_them(chat: pa.Table) -> None:
    rows, _ = convert(chat, "messages")
    user = _by_id(rows)[_id_of(chat, _has_image)]["messages"][0]
    assert user["content"] is None
    assert user["content_parts"] == [
        {"type": "text", "text": PICTURE[0]["text"], "image_url": None},
        {"type": "image_url", "text": None, "image_url": {"url": "https://example.com/chat.png", "detail": "low"}},
    ]


def test_messages_keep_tools_as_json_and_null_when_none_offered(chat: pa.Table) -> None:
    rows, _ = convert(chat, "messages")
    assert rows.schema.field("tools").type == pa.json_()
    tools = {r["id"]: r["tools"] for r in chat.to_pylist()}
    for row in rows.to_pylist():
        if tools[row["id"]] is None:
            assert row["tools"] is None
        else:
            assert json.loads(row["tools"]) == json.loads(tools[row["id"]])
    assert any(row["tools"] is not None for row in rows.to_pylist())


def test_tool_call_arguments_sent_as_objects_stay_objects_and_are_strings_in_jsonl() -> None:
    msgs = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": "é"}}}],
        },
    ]
    rows, _ = convert(_rows(msgs), "messages")
    arguments = rows.to_pylist()[0]["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"a": "é"}
    rows, _ = convert(_rows(msgs), "openai")
    line = json.loads(rows.column("json")[0].as_py())
    assert line["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"a":"é"}'


# ---------------------------------------------------------------- openai


def test_openai_lines_pass_the_fine_tuning_rules(chat: pa.Table) -> None:
    rows, invalid = convert(chat, "openai")
    assert invalid.total == 0
    for line in rows.column("json").to_pylist():
        assert validate_openai(json.loads(line)) == []


def test_openai_lines_are_minified_utf8_with_the_original_messages(chat: pa.Table) -> None:
    rows, _ = convert(chat, "openai")
    originals = _originals(chat)
    for row in rows.to_pylist():
        example = json.loads(row["json"])
        assert example["messages"] == _as_written(originals[row["id"]])
        assert row["json"] == dumps(example)
    assert any("東京" in line for line in rows.column("json").to_pylist())


def test_openai_lines_carry_tools_only_when_offered(chat: pa.Table) -> None:
    rows, _ = convert(chat, "openai")
    tools = {r["id"]: r["tools"] for r in chat.to_pylist()}
    for row in rows.to_pylist():
        example = json.loads(row["json"])
        if tools[row["id"]] is None:
            assert "tools" not in example
        else:
            assert example["tools"] == json.loads(tools[row["id"]])


def test_openai_rows_breaking_a_rule_are_dropped_with_the_rule_as_reason() -> None:
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "nope", "content": "x"},
        {"role": "assistant", "content": "ok"},
    ]
    rows, invalid = convert(_rows(msgs), "openai")
    assert rows.num_rows == 0
    assert dict(invalid.counts) == {"openai: tool message does not answer an earlier tool call": 1}


def test_openai_refuses_an_assistant_message_with_neither_content_nor_tool_calls() -> None:
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok"},
    ]
    assert _reasons(_rows(msgs), "openai") == {"openai: content is null or missing outside an assistant tool call": 1}
    assert _reasons(_rows(msgs), "messages") == {}


def test_openai_writes_null_content_of_other_roles_as_empty_text() -> None:
    # validate_openai refuses null content on a user or tool message; the export writes "" instead.
    msgs = [
        {"role": "user", "content": None},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "ok"},
    ]
    rows, invalid = convert(_rows(msgs), "openai")
    assert invalid.total == 0
    example = json.loads(rows.column("json")[0].as_py())
    assert [m.get("content") for m in example["messages"]] == ["", None, "", "ok"]
    assert "content" not in example["messages"][1]
    assert validate_openai(example) == []


# ---------------------------------------------------------------- validate_openai, rule by rule

GOOD: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{}"},
        {"role": "assistant", "content": "a", "weight": 1},
    ],
    "tools": [WEATHER_TOOL],
}


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    example = copy.deepcopy(GOOD)
    target: Any = example
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return example


def _tool_before_its_call() -> dict[str, Any]:
    example = copy.deepcopy(GOOD)
    msgs = example["messages"]
    msgs[2], msgs[3] = msgs[3], msgs[2]
    return example


def test_a_well_formed_example_passes() -> None:
    assert validate_openai(GOOD) == []


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (["messages", 1, "role"], "robot", "role is not one of system, developer, user, assistant, tool"),
        (["messages", 4, "role"], "user", "weight is only allowed on assistant messages"),
        (["messages"], [{"role": "user", "content": "u"}], "no assistant message"),
        (["messages"], [], "messages is missing or empty"),
        (["extra"], 1, "unexpected top-level key extra"),
        (["messages", 1, "refusal"], None, "unexpected message key refusal"),
        (["messages", 1, "content"], None, "content is null or missing outside an assistant tool call"),
        (["messages", 4, "content"], 7, "content is not a string"),
        (
            ["messages", 4, "content"],
            [{"type": "text", "text": "a"}],
            "content parts are only allowed in user messages",
        ),
        (["messages", 4, "weight"], 0.5, "weight must be 0 or 1"),
        (["messages", 2, "tool_calls", 0, "id"], "", "tool call has no id"),
        (["messages", 2, "tool_calls", 0, "type"], "code", 'tool call type is not "function"'),
        (["messages", 2, "tool_calls", 0, "function", "name"], _DELETE, "tool call has no function name"),
        (
            ["messages", 2, "tool_calls", 0, "function", "arguments"],
            {"city": "x"},
            "tool call arguments are not a JSON string",
        ),
        (
            ["messages", 2, "tool_calls", 0, "function", "arguments"],
            "{city",
            "tool call arguments do not parse as JSON",
        ),
        (["messages", 2, "tool_calls"], [], "tool_calls must be a non-empty list"),
        (["messages", 3, "tool_call_id"], "call_9", "tool message does not answer an earlier tool call"),
        (["tools"], [{"type": "function", "function": {}}], "tools must be a list of function definitions with a name"),
    ],
)
def test_validate_openai_catches_each_rule(path: list[Any], value: Any, error: str) -> None:
    assert error in validate_openai(_broken(path, value))


def test_a_tool_message_before_its_call_does_not_answer_it() -> None:
    assert "tool message does not answer an earlier tool call" in validate_openai(_tool_before_its_call())


# Examples for the SQL rules, each a mutation of GOOD that the chat messages can carry. Left out: keys the
# typed messages do not carry (unexpected keys, weight), and two inputs the export repairs rather than drops
# (null content outside an assistant message, written as ""; arguments sent as an object, written as a
# string): their lines pass validate_openai, see the tests above.
_OPENAI_CASES: dict[str, dict[str, Any]] = {
    "good": GOOD,
    "a name on a message": _broken(["messages", 1, "name"], "bob"),
    "a developer message": _broken(["messages", 0, "role"], "developer"),
    "empty text content": _broken(["messages", 1, "content"], ""),
    "user content parts": _broken(["messages", 1, "content"], PICTURE),
    "no tools": _broken(["tools"], _DELETE),
    "an empty tools list": _broken(["tools"], []),
    "unknown role": _broken(["messages", 1, "role"], "robot"),
    "a role that is not a string": _broken(["messages", 1, "role"], 5),
    "no role": _broken(["messages", 1, "role"], _DELETE),
    "no assistant message": _broken(["messages"], [{"role": "user", "content": "u"}]),
    "no messages": _broken(["messages"], []),
    "content a number": _broken(["messages", 4, "content"], 7),
    "content parts on an assistant message": _broken(["messages", 4, "content"], [{"type": "text", "text": "a"}]),
    "content parts on a system message": _broken(["messages", 0, "content"], [{"type": "text", "text": "s"}]),
    "an assistant message with neither content nor tool calls": _broken(["messages", 2, "tool_calls"], _DELETE),
    "an empty tool_calls list": _broken(["messages", 2, "tool_calls"], []),
    "tool_calls not a list": _broken(["messages", 2, "tool_calls"], "x"),
    "tool_calls on a user message": _broken(["messages", 1, "tool_calls"], [CALL]),
    "tool call with an empty id": _broken(["messages", 2, "tool_calls", 0, "id"], ""),
    "tool call without id": _broken(["messages", 2, "tool_calls", 0, "id"], _DELETE),
    "a non-function tool call type": _broken(["messages", 2, "tool_calls", 0, "type"], "code"),
    "tool call without type": _broken(["messages", 2, "tool_calls", 0, "type"], _DELETE),
    "tool call without a function name": _broken(["messages", 2, "tool_calls", 0, "function", "name"], _DELETE),
    "arguments that do not parse": _broken(["messages", 2, "tool_calls", 0, "function", "arguments"], "{city"),
    "tool message answering no call": _broken(["messages", 3, "tool_call_id"], "call_9"),
    "tool message without tool_call_id": _broken(["messages", 3, "tool_call_id"], _DELETE),
    "tool message before its call": _tool_before_its_call(),
    "tools without a function": _broken(["tools"], [{"type": "function"}]),
    "tools without a name": _broken(["tools"], [{"type": "function", "function": {}}]),
    "tools with an empty name": _broken(["tools"], [{"type": "function", "function": {"name": ""}}]),
    "a second tool without a type": _broken(["tools"], [WEATHER_TOOL, {"function": {"name": "g"}}]),
    "a second tool without a name": _broken(["tools"], [WEATHER_TOOL, {"type": "function", "function": {}}]),
    "a tool that is a string": _broken(["tools"], ["get_weather"]),
    "tools not a list": _broken(["tools"], {"type": "function"}),
}

# Problems every format refuses, so the export names them with its common reason before openai's rules.
_COMMON_REASON = {
    "messages is missing or empty": "messages is not a non-empty JSON array",
    "role is not one of system, developer, user, assistant, tool": "message without a role",
    "content is not a string": "content is neither text nor parts",
    "tool_calls must be a non-empty list": "tool_calls is not a list",
    "tool call has no function name": "tool call without a function name",
    "tool call arguments do not parse as JSON": "tool call arguments are not valid JSON",
    "tools must be a list of function definitions with a name": "tools is not a JSON array",
    "no assistant message": "last message is not an assistant answer",
}


@pytest.mark.parametrize("case", list(_OPENAI_CASES))
def test_sql_openai_rules_agree_with_validate_openai(case: str) -> None:
    example = _OPENAI_CASES[case]
    errors = validate_openai(example)
    rows, invalid = convert(_rows(example["messages"], tools=example.get("tools")), "openai")
    if errors:
        assert rows.num_rows == 0 and invalid.total == 1
        allowed = {f"openai: {e}" for e in errors} | {_COMMON_REASON[e] for e in errors if e in _COMMON_REASON}
        assert invalid.dropped[0][1] in allowed
    else:
        assert invalid.total == 0 and rows.num_rows == 1
    for line in rows.column("json").to_pylist():
        assert validate_openai(json.loads(line)) == []


# ---------------------------------------------------------------- prompt-completion


def test_prompt_completion_splits_off_the_final_assistant_message(chat: pa.Table) -> None:
    rows, invalid = convert(chat, "prompt-completion")
    assert invalid.total == 0
    originals = _originals(chat)
    for row in rows.to_pylist():
        prompt, completion = messages_from_arrow(row["prompt"]), messages_from_arrow(row["completion"])
        assert len(completion) == 1 and completion[0]["role"] == "assistant"
        assert prompt + completion == _normalised(originals[row["id"]])


def test_prompt_completion_needs_a_prompt_before_the_answer() -> None:
    assert _reasons(_rows([{"role": "assistant", "content": "hi"}]), "prompt-completion") == {
        "no prompt before the answer": 1
    }


# ---------------------------------------------------------------- sharegpt


def test_sharegpt_maps_roles_and_drops_rows_with_tool_calls_or_images(chat: pa.Table) -> None:
    rows, invalid = convert(chat, "sharegpt")
    originals = _originals(chat)
    with_tools = [i for i, m in originals.items() if any(x.get("tool_calls") or x["role"] == "tool" for x in m)]
    assert invalid.counts["tool calls do not fit sharegpt"] == len(with_tools) > 0
    assert invalid.counts["non-text content does not fit sharegpt"] == 1
    for row in rows.to_pylist():
        msgs = originals[row["id"]]
        assert [t["from"] for t in row["conversations"]] == [
            {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]] for m in msgs
        ]


def test_sharegpt_joins_text_parts_with_a_newline(chat: pa.Table) -> None:
    rows, _ = convert(chat, "sharegpt")
    row = _by_id(rows)[_id_of(chat, lambda m: _has_parts(m) and not _has_image(m))]
    assert row["conversations"][0] == {"from": "human", "value": "Salut\nça va ?"}


def test_sharegpt_refuses_roles_it_has_no_name_for() -> None:
    msgs = [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "ok"}]
    assert _reasons(_rows(msgs), "sharegpt") == {"role does not fit sharegpt": 1}


# ---------------------------------------------------------------- alpaca


def test_alpaca_keeps_single_turns_with_the_system_prompt_apart(chat: pa.Table) -> None:
    rows, invalid = convert(chat, "alpaca")
    originals = _originals(chat)
    assert rows.num_rows > 0
    for row in rows.to_pylist():
        msgs = originals[row["id"]]
        assert row["output"] == msgs[-1]["content"] and row["input"] == ""
        assert row["instruction"] == _text(next(m for m in msgs if m["role"] == "user"))
        assert row["system"] == (msgs[0]["content"] if msgs[0]["role"] == "system" else None)
    assert invalid.counts["not a single turn: does not fit alpaca"] > 0
    assert invalid.counts["tool calls do not fit alpaca"] > 0


# ---------------------------------------------------------------- catalyst


def test_catalyst_lines_are_the_request_before_the_answer_and_the_answer_as_response(chat: pa.Table) -> None:
    rows, invalid = convert(chat, "catalyst")
    assert invalid.total == 0
    source = {r["id"]: r for r in chat.to_pylist()}
    for row in rows.to_pylist():
        line = json.loads(row["json"])
        assert row["json"] == dumps(line)
        original = source[row["id"]]
        msgs = _as_written(json.loads(original["messages"]))
        assert list(line) == ["request", "response"]
        assert line["request"]["model"] == original["model"] == line["response"]["model"]
        assert line["request"]["messages"] == msgs[:-1]
        assert line["request"].get("tools") == (original["tools"] and json.loads(original["tools"]))
        assert line["response"]["choices"] == [
            {"index": 0, "message": msgs[-1], "finish_reason": original["finish_reason"]}
        ]


def test_catalyst_rows_reimport_into_curate_with_the_same_messages(chat: pa.Table, tmp_path: Path) -> None:
    rows, invalid = convert(chat, "catalyst")
    assert invalid.total == 0
    path = tmp_path / "catalyst.jsonl"
    path.write_text("".join(line + "\n" for line in rows.column("json").to_pylist()), encoding="utf-8")
    fresh = Store(tmp_path / "fresh.duckdb", lock_timeout=5)
    import_files(fresh, [path])
    back = fresh.arrow("select model, messages, tools, finish_reason from chat").to_pylist()

    # Lines leave null members out (an assistant tool call's null content), so compare as written.
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        messages = _as_written(json.loads(r["messages"]))
        return (r["model"], messages, r["tools"] and json.loads(r["tools"]), r["finish_reason"])

    assert sorted(map(key, back), key=repr) == sorted(map(key, chat.to_pylist()), key=repr)


# ---------------------------------------------------------------- Hugging Face datasets


def test_messages_parquet_loads_with_datasets_and_round_trips(chat: pa.Table, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows, _ = convert(chat, "messages")
    pq.write_table(rows, tmp_path / "train.parquet")
    loaded = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "train.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    originals = _originals(chat)
    assert len(loaded) == chat.num_rows
    for row in loaded:
        assert messages_from_arrow(row["messages"]) == _normalised(originals[row["id"]])
    row = next(r for r in loaded if r["id"] == _id_of(chat, _has_tool_round_trip))
    assert row["messages"][2]["tool_calls"][1]["function"]["arguments"] == {"city": ["東京"], "n": 3}


def test_openai_jsonl_loads_with_datasets(chat: pa.Table, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows, _ = convert(chat, "openai")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(line + "\n" for line in rows.column("json").to_pylist()), encoding="utf-8")
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == rows.num_rows
    assert "messages" in loaded.column_names


def test_an_image_part_carries_no_text_into_the_export_that_pii_never_read() -> None:
    # curate.messages' rule: only a "text" part's text is text, so `scan pii` reads no other;
    # a stray "text" on an image part must not ship either.
    from curate.formats import typed_messages

    messages = json.dumps([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}, "text": "mail me: leak@example.com"},
        {"type": "text", "text": "what is this?"}]}])
    ((parts,),) = duckdb.sql(f"select {typed_messages('msgs')}[1].content_parts as p from (select ?::varchar as msgs)",
                          params=[messages]).fetchall()
    assert [p["text"] for p in parts] == [None, "what is this?"]


# ---------------------------------------------------------------- the tool-answer rule, linear
# The rule's first definitions, which read every message before each tool message (quadratic in a
# row's messages): the specification the linear SQL in curate.formats must agree with.
_TOOL_ANSWERS_NOTHING_FIRST = {
    False: ("coalesce(list_bool_or(list_transform(range(1, len(t) + 1), lambda i: t[i].role = 'tool' and ("
            "not coalesce(list_bool_or(list_transform(t[1:i - 1], lambda m: m.tool_calls is not null)), false) or "
            "(t[i].tool_call_id is not null and not coalesce(list_contains(flatten(list_transform(t[1:i - 1], "
            "lambda m: list_transform(coalesce(m.tool_calls, []), lambda c: c.id))), t[i].tool_call_id), false))))), false)"),
    True: ("coalesce(list_bool_or(list_transform(range(1, len(t) + 1), lambda i: t[i].role = 'tool' and not "
           "coalesce(list_contains(flatten(list_transform(t[1:i - 1], lambda m: list_transform(coalesce(m.tool_calls, []), "
           "lambda c: c.id))), t[i].tool_call_id), false))), false)"),
}
_IDS = st.sampled_from(["a", "b", "c", None])
_CALL_LIST = st.one_of(st.none(), st.lists(st.builds(lambda i: {"id": i}, _IDS), max_size=3))
_TOOL_MESSAGE = st.one_of(
    st.builds(lambda role, calls: {"role": role, "tool_calls": calls},
              st.sampled_from(["assistant", "user", "tool", None]), _CALL_LIST),
    st.builds(lambda i: {"role": "tool", "tool_call_id": i}, _IDS),
    # A tool message that also makes calls: its own calls come after it, not before.
    st.builds(lambda calls, i: {"role": "tool", "tool_calls": calls, "tool_call_id": i}, _CALL_LIST, _IDS),
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(t=st.one_of(st.none(), st.lists(_TOOL_MESSAGE, max_size=8)), id_required=st.booleans())
def test_the_tool_answer_rule_agrees_with_its_first_quadratic_definition(t: list[dict[str, Any]] | None,
                                                                          id_required: bool) -> None:
    kind = "struct(role varchar, tool_call_id varchar, tool_calls struct(id varchar)[])[]"
    linear = _tool_answers_nothing(id_required=id_required)
    ((got, want),) = duckdb.execute(f"select {linear}, {_TOOL_ANSWERS_NOTHING_FIRST[id_required]} "
                                    f"from (select ?::{kind} as t)", [t]).fetchall()
    assert got == want


def test_the_tool_answer_rule_reads_a_long_agent_trace_in_one_pass() -> None:
    # 3,000 messages, a call and its answer 1,500 times: 0.04 s here, where the first definition took 4 s.
    t = [m for k in range(1_500) for m in ({"role": "assistant", "tool_calls": [{"id": f"c{k}"}]},
                                           {"role": "tool", "tool_call_id": f"c{k}"})]
    t.append({"role": "tool", "tool_call_id": "c0"})
    t.append({"role": "tool", "tool_call_id": "nobody"})
    kind = "struct(role varchar, tool_call_id varchar, tool_calls struct(id varchar)[])[]"
    rows = duckdb.execute(f"select {_tool_answers_nothing(id_required=False)} from (select ?::{kind} as t) "
                          f"union all select {_tool_answers_nothing(id_required=False)} from (select ?::{kind} as t)",
                          [t[:-1], t]).fetchall()
    assert rows == [(False,), (True,)]
