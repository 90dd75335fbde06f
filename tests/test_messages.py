"""The one rule for a chat message's text (``curate.messages``), held in all its forms.

Each explicit case states one behaviour of the rule and checks it in every form: Python
(``message_text``), SQL over a JSON message (``json_message_text``) and SQL over the message as
``curate.formats`` types it (``typed_message_text``), each run in a real DuckDB. The hypothesis
tests then ask the forms to agree on many generated shapes, whole conversations too.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.formats import typed_messages
from curate.messages import (
    SEPARATOR,
    JsonObject,
    conversation_text,
    json_message_text,
    loads_first_wins,
    message_text,
    typed_message_text,
)

CURATE = Path(__file__).resolve().parents[1] / "curate"


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def sql_json_texts(con: duckdb.DuckDBPyConnection, messages: list[Any], *, ascii_only: bool = True) -> list[str]:
    """Each message's text by ``json_message_text``, the messages given as one JSON array."""
    sql = f"select list_transform(json_extract(?::json, '$[*]'), lambda m: {json_message_text('m')})"
    return con.execute(sql, [json.dumps(messages, ensure_ascii=ascii_only)]).fetchone()[0]  # type: ignore[index]


def sql_typed_texts(con: duckdb.DuckDBPyConnection, messages: list[Any], *, ascii_only: bool = True) -> list[str]:
    """Each message's text by ``typed_message_text``, over the messages typed as an export types them."""
    sql = (f"select list_transform(t, lambda m: {typed_message_text('m')}) "
           f"from (select {typed_messages('messages')} as t from (select ?::varchar as messages))")
    return con.execute(sql, [json.dumps(messages, ensure_ascii=ascii_only)]).fetchone()[0]  # type: ignore[index]


def sql_conversation_text(con: duckdb.DuckDBPyConnection, messages: list[Any]) -> str:
    sql = "select " + conversation_text("json_extract(?::json, '$[*]')")
    return con.execute(sql, [json.dumps(messages)]).fetchone()[0]  # type: ignore[index]


def every_form(con: duckdb.DuckDBPyConnection, message: Any) -> dict[str, str]:
    return {"python": message_text(message), "json sql": sql_json_texts(con, [message])[0],
            "typed sql": sql_typed_texts(con, [message])[0]}


def assert_text(con: duckdb.DuckDBPyConnection, message: Any, expected: str) -> None:
    assert every_form(con, message) == {"python": expected, "json sql": expected, "typed sql": expected}


def text_part(text: Any) -> dict[str, Any]:
    return {"type": "text", "text": text}


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


# ---------------------------------------------------------------- the rule, one behaviour per test


def test_string_content_is_the_text(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": "What is 2 + 2?"}, "What is 2 + 2?")


def test_empty_string_content_is_empty_text(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "assistant", "content": ""}, "")


def test_text_parts_are_joined_by_a_newline(con: duckdb.DuckDBPyConnection) -> None:
    assert SEPARATOR == "\n"
    assert_text(con, {"role": "user", "content": [text_part("first"), text_part("second")]}, "first\nsecond")


def test_a_single_text_part_is_the_text(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": [text_part("only")]}, "only")


def test_empty_text_parts_still_take_their_place(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": [text_part(""), text_part("b"), text_part("")]}, "\nb\n")


def test_image_parts_add_nothing(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": [text_part("look:"), IMAGE, text_part("a cat?")]}, "look:\na cat?")


def test_a_text_member_on_a_part_of_another_type_adds_nothing(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": [{**IMAGE, "text": "caption"}, text_part("q")]}, "q")


def test_a_part_without_a_type_adds_nothing(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": [{"text": "untyped"}, text_part("typed")]}, "typed")


@pytest.mark.parametrize("text", [5, 4111111111111111, 1.5, True, None, {"a": 1}, ["x"]],
                         ids=["int", "card-like int", "float", "bool", "null", "object", "list"])
def test_text_that_is_not_a_string_adds_nothing(con: duckdb.DuckDBPyConnection, text: Any) -> None:
    assert_text(con, {"role": "user", "content": [text_part("kept"), text_part(text)]}, "kept")


@pytest.mark.parametrize("part", ["a string", 7, None, ["text", "x"]], ids=["string", "number", "null", "list"])
def test_a_part_that_is_not_an_object_adds_nothing(con: duckdb.DuckDBPyConnection, part: Any) -> None:
    assert_text(con, {"role": "user", "content": [part, text_part("kept")]}, "kept")


def test_an_empty_list_of_parts_has_no_text(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "content": []}, "")


def test_null_content_has_no_text(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "assistant", "content": None}, "")


def test_missing_content_has_no_text(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "assistant"}, "")


@pytest.mark.parametrize("content", [7, 1.5, True, {"text": "hidden"}], ids=["int", "float", "bool", "object"])
def test_content_that_is_a_number_or_an_object_has_no_text(con: duckdb.DuckDBPyConnection, content: Any) -> None:
    assert_text(con, {"role": "user", "content": content}, "")


def test_tool_call_arguments_are_not_text(con: duckdb.DuckDBPyConnection) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "secret"}'}}
    assert_text(con, {"role": "assistant", "content": None, "tool_calls": [call]}, "")


def test_a_tool_message_text_is_its_content(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "tool", "tool_call_id": "c1", "name": "f", "content": '{"temp": 12}'}, '{"temp": 12}')


def test_unicode_text_is_kept_as_it_is(con: duckdb.DuckDBPyConnection) -> None:
    text = "東京の天気は？ 🌧️ naïve 👩‍💻 Zürich"
    assert_text(con, {"role": "user", "content": [text_part(text), text_part("ok")]}, f"{text}\nok")


def test_escapes_in_the_json_are_read_as_the_characters_they_stand_for(con: duckdb.DuckDBPyConnection) -> None:
    text = 'line one\nline "two"\t\\ é 🐱'
    assert_text(con, {"role": "user", "content": text}, text)


@pytest.mark.parametrize("message", ["just a string", 42, None, [{"content": "nested"}]],
                         ids=["string", "number", "null", "list"])
def test_a_message_that_is_not_an_object_has_no_text(con: duckdb.DuckDBPyConnection, message: Any) -> None:
    assert_text(con, message, "")


def test_a_content_key_in_another_case_is_not_content(con: duckdb.DuckDBPyConnection) -> None:
    assert_text(con, {"role": "user", "Content": "not read"}, "")


# ---------------------------------------------------------------- a conversation, as the passes compare it


def test_a_conversation_text_is_its_message_texts_joined_by_a_space(con: duckdb.DuckDBPyConnection) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [text_part("a"), IMAGE]},
                {"role": "assistant", "content": None}, {"role": "assistant", "content": "b"}]
    assert sql_conversation_text(con, messages) == "Be brief. a  b"


# ---------------------------------------------------------------- the forms agree on any shape

_TEXT = st.text(max_size=30)
_JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         _TEXT)
_JSON = st.recursive(_JSON_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=6)
_PART = st.one_of(
    st.builds(text_part, _TEXT),
    st.builds(text_part, _JSON),
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "TEXT", ""])},
                          optional={"text": _JSON, "image_url": st.fixed_dictionaries({"url": _TEXT})}),
    st.fixed_dictionaries({}, optional={"text": _TEXT}),
    _JSON,
)
_CONTENT = st.one_of(_TEXT, st.lists(_PART, max_size=5), _JSON)
_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
        optional={"content": _CONTENT, "name": _TEXT, "tool_call_id": _TEXT,
                  "tool_calls": st.lists(st.fixed_dictionaries({"id": _TEXT, "type": st.just("function"),
                                                                "function": st.fixed_dictionaries(
                                                                    {"name": _TEXT, "arguments": _TEXT})}),
                                         max_size=2)},
    ),
    _JSON,
)
_CONVERSATION = st.lists(_MESSAGE, min_size=1, max_size=6)
_AGREE = settings(max_examples=300, deadline=None, derandomize=True, database=None)


@_AGREE
@given(messages=_CONVERSATION, ascii_only=st.booleans())
def test_sql_over_json_messages_gives_the_python_text(con: duckdb.DuckDBPyConnection, messages: list[Any],
                                                     ascii_only: bool) -> None:
    assert sql_json_texts(con, messages, ascii_only=ascii_only) == [message_text(m) for m in messages]


@_AGREE
@given(messages=_CONVERSATION, ascii_only=st.booleans())
def test_sql_over_typed_messages_gives_the_python_text(con: duckdb.DuckDBPyConnection, messages: list[Any],
                                                      ascii_only: bool) -> None:
    assert sql_typed_texts(con, messages, ascii_only=ascii_only) == [message_text(m) for m in messages]


@_AGREE
@given(messages=_CONVERSATION)
def test_a_conversation_text_joins_the_python_texts_with_a_space(con: duckdb.DuckDBPyConnection,
                                                                 messages: list[Any]) -> None:
    assert sql_conversation_text(con, messages) == " ".join(message_text(m) for m in messages)


# ---------------------------------------------------------------- a key the JSON text repeats
# Python's json.loads keeps a repeated key's LAST value, DuckDB its FIRST: the scan read
# {"content": "a", "content": "b"} as "b" while every export shipped "a". Python parses stored
# JSON with loads_first_wins, and these cases hold it to the SQL forms over the raw text itself.


def every_form_raw(con: duckdb.DuckDBPyConnection, raw: str) -> dict[str, str]:
    """The text of one message given as raw JSON text, in every form."""
    json_sql = con.execute(f"select {json_message_text('m')} from (select ?::json as m)",
                           [raw]).fetchone()[0]  # type: ignore[index]
    typed_sql = con.execute(f"select {typed_message_text('t[1]')} from (select {typed_messages('r')} as t "
                            "from (select ?::varchar as r))", [f"[{raw}]"]).fetchone()[0]  # type: ignore[index]
    return {"python": message_text(loads_first_wins(raw)), "json sql": json_sql, "typed sql": typed_sql}


def test_duckdb_reads_the_first_of_a_repeated_key(con: duckdb.DuckDBPyConnection) -> None:
    raw = '{"a": "first", "a": "second"}'
    assert con.execute("select ?::json ->> '$.a', json_extract_string(?, '$.a'), "
                       """json_transform(?, '{"a": "VARCHAR"}').a""", [raw, raw, raw]).fetchone() == (
        "first", "first", "first")
    # Unescaped first: a key spelled with an escape is the same key, in both.
    escaped = r'{"cont\u0065nt": "first", "content": "second"}'
    assert con.execute("select ?::json ->> '$.content'", [escaped]).fetchone() == ("first",)
    assert loads_first_wins(escaped) == {"content": "first"}
    # Python's own json.loads keeps the last: the reason loads_first_wins exists.
    assert json.loads(raw) == {"a": "second"}
    assert loads_first_wins(raw) == {"a": "first"}


def test_loads_first_wins_keeps_every_pair_too() -> None:
    parsed = loads_first_wins('[{"k": 1, "j": {"x": "a", "x": "b"}, "k": 2}]')
    obj = parsed[0]
    assert isinstance(obj, JsonObject) and obj == {"k": 1, "j": {"x": "a"}}
    assert obj.pairs[0] == ("k", 1) and obj.pairs[2] == ("k", 2)
    assert obj["j"].pairs == [("x", "a"), ("x", "b")]


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"role":"user","content":"a","content":"b"}', "a"),
    ('{"role":"user","content":"a","content":null}', "a"),
    ('{"role":"user","content":null,"content":"b"}', ""),
    ('{"role":"user","content":"a","content":[{"type":"text","text":"b"}]}', "a"),
    ('{"role":"user","content":[{"type":"text","text":"b"}],"content":"a"}', "b"),
    ('{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}', "a"),
    ('{"role":"user","content":[{"type":"text","text":"a","text":5}]}', "a"),
    ('{"role":"user","content":[{"type":"text","text":5,"text":"b"}]}', ""),
    ('{"role":"user","content":[{"type":"text","type":"image_url","text":"t"}]}', "t"),
    ('{"role":"user","content":[{"type":"image_url","type":"text","text":"t"}]}', ""),
    ('{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b","text":"c"}]}', "a\nb"),
    (r'{"role":"user","cont\u0065nt":"a","content":"b"}', "a"),
    (r'{"role":"user","content":"a","cont\u0065nt":"b"}', "a"),
    (r'{"role":"user","content":[{"t\u0079pe":"text","text":"a","type":"image_url"}]}', "a"),
], ids=["content twice", "then null", "null first", "then parts", "parts first", "part text twice",
        "then a number", "a number first", "part type twice", "image type first", "second part", "escaped key first",
        "escaped key second", "escaped part type"])
def test_a_repeated_key_is_read_as_duckdb_reads_it(con: duckdb.DuckDBPyConnection, raw: str, expected: str) -> None:
    assert every_form_raw(con, raw) == {"python": expected, "json sql": expected, "typed sql": expected}


def _raw_json(value: Any) -> str:
    """JSON text of ``value``, a tuple of (key, value) pairs standing for an object whose keys may repeat."""
    if isinstance(value, tuple):
        return "{" + ",".join(f"{json.dumps(k)}:{_raw_json(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_raw_json(v) for v in value) + "]"
    return json.dumps(value)


_DUP_SCALAR = st.one_of(st.none(), st.integers(), _TEXT)
_DUP_PART = st.lists(st.tuples(st.sampled_from(["type", "text"]),
                               st.one_of(st.sampled_from(["text", "image_url"]), _DUP_SCALAR)),
                     max_size=5).map(tuple)
_DUP_MESSAGE = st.lists(st.tuples(st.sampled_from(["role", "content"]),
                                  st.one_of(_DUP_SCALAR, st.lists(_DUP_PART, max_size=3))),
                        max_size=5).map(lambda pairs: (("role", "user"), *pairs))


@_AGREE
@given(message=_DUP_MESSAGE)
def test_the_forms_agree_on_raw_json_with_repeated_keys(con: duckdb.DuckDBPyConnection, message: Any) -> None:
    got = every_form_raw(con, _raw_json(message))
    assert got["json sql"] == got["python"] == got["typed sql"]


# ---------------------------------------------------------------- one rule, one place


def test_the_curation_passes_take_message_text_from_curate_messages_not_the_export() -> None:
    imported = {}
    for name in ("neardup", "decontaminate", "pii"):
        tree = ast.parse((CURATE / f"{name}.py").read_text(encoding="utf-8"))
        imported[name] = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name: sorted(m for m in modules if m in ("curate.formats", "curate.exporter"))
            for name, modules in imported.items()} == {"neardup": [], "decontaminate": [], "pii": []}
    assert all("curate.messages" in modules for modules in imported.values())
