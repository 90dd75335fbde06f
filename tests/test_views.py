"""The SQL views: what one row of each shipped view is, and how view files are loaded and installed.

The data tests share one small store: a 3-call conversation and a branch off its first call, a
tool call answered by a tool message, multi-part content, two exact duplicates, a Failed and an
In Progress generation, an embedding, and a line that is not JSON. Each test names the exact rows
its view gives for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from curate import views
from curate.store import Store

# --- The data -----------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SYSTEM = {"role": "system", "content": "You are terse."}
U1 = {"role": "user", "content": "Capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
U2 = {"role": "user", "content": "And of Italy?"}
A2 = {"role": "assistant", "content": "Rome."}
U3 = {"role": "user", "content": "And of Spain?"}
A3 = {"role": "assistant", "content": "Madrid."}
U2_BRANCH = {"role": "user", "content": "Its population?"}
A2_BRANCH = {"role": "assistant", "content": "About 2.1 million."}
ASK_WEATHER = {"role": "user", "content": "Weather in Zürich?"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}}],
}
# The client re-sends the call without its null content, and with its keys in another order.
CALL_RESENT = {
    "tool_calls": [{"type": "function", "id": "call_1",
                    "function": {"arguments": "{\"city\": \"Zürich\"}", "name": "get_weather"}}],
    "role": "assistant",
}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 4}"}
WEATHER_ANSWER = {"role": "assistant", "content": "4 °C in Zürich."}
PICTURE = {"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
]}
CAT = {"role": "assistant", "content": "A cat on a windowsill."}
HELLO = {"role": "user", "content": "Say hello."}
HELLO_ANSWER = {"role": "assistant", "content": "Hello!"}


def at(day: int, hh: int, mm: int, seconds: float = 0.0) -> datetime:
    return datetime(2026, 11, day, hh, mm, tzinfo=UTC) + timedelta(seconds=seconds)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def generation(
    id: str, messages: list[dict[str, Any]], answer: dict[str, Any] | None, *, model: str,
    dispatched: datetime, latency: float | None, state: str = "Success", tools: list[Any] | None = None,
    finish_reason: str = "stop", usage: tuple[int, int] = (0, 0), state_message: str = "Generation completed",
) -> dict[str, Any]:
    """A GenerationForClient, as GET /v1/generation/{id} returns it."""
    request: dict[str, Any] = {"model": model, "messages": messages, "metadata": {"custom_id": f"cid-{id}"}}
    if tools is not None:
        request["tools"] = tools
    response = None
    if answer is not None:
        response = {
            "id": f"chatcmpl-{id}", "object": "chat.completion", "created": 1793491200, "model": model,
            "choices": [{"index": 0, "message": answer, "finish_reason": finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }
    return {
        "id": id, "state": state, "stateMessage": state_message, "request": request, "response": response,
        "dispatchedAt": iso(dispatched),
        "finishedAt": iso(dispatched + timedelta(seconds=latency)) if latency is not None else None,
    }


HISTORY: dict[str, list[dict[str, Any]]] = {
    "conv-1": [SYSTEM, U1],
    "conv-2": [SYSTEM, U1, A1, U2],
    # conv-3 re-sends A1 with its keys the other way round: still the same message.
    "conv-3": [SYSTEM, U1, {"content": "Paris.", "role": "assistant"}, U2, A2, U3],
    "branch": [SYSTEM, U1, A1, U2_BRANCH],
    "tool-1": [ASK_WEATHER],
    "tool-2": [ASK_WEATHER, CALL_RESENT, TOOL_RESULT],
    "parts": [PICTURE],
    "dup-a": [HELLO],
    "dup-b": [HELLO],
}
ANSWER: dict[str, dict[str, Any]] = {"conv-1": A1, "conv-2": A2, "conv-3": A3, "branch": A2_BRANCH, "tool-1": CALL, "tool-2": WEATHER_ANSWER,
          "parts": CAT, "dup-a": HELLO_ANSWER, "dup-b": HELLO_ANSWER}

RECORDS = [
    generation("conv-1", HISTORY["conv-1"], A1, model="m1", dispatched=at(1, 10, 0), latency=1, usage=(10, 2)),
    generation("conv-2", HISTORY["conv-2"], A2, model="m1", dispatched=at(1, 10, 1), latency=2, usage=(20, 2)),
    generation("conv-3", HISTORY["conv-3"], A3, model="m1", dispatched=at(1, 10, 2), latency=3, usage=(30, 2)),
    generation("branch", HISTORY["branch"], A2_BRANCH, model="m1", dispatched=at(1, 10, 3), latency=4,
               usage=(21, 5)),
    generation("tool-1", HISTORY["tool-1"], CALL, model="m2", dispatched=at(1, 11, 0), latency=1,
               tools=[WEATHER], finish_reason="tool_calls", usage=(40, 9)),
    generation("tool-2", HISTORY["tool-2"], WEATHER_ANSWER, model="m2", dispatched=at(1, 11, 1), latency=1,
               tools=[WEATHER], usage=(60, 6)),
    generation("parts", HISTORY["parts"], CAT, model="m2", dispatched=at(2, 9, 0), latency=2,
               finish_reason="length", usage=(300, 7)),
    # Exact duplicates: the same messages and tools; dup-b finished first, so it is the one kept.
    generation("dup-a", HISTORY["dup-a"], HELLO_ANSWER, model="m2", dispatched=at(2, 9, 10), latency=5,
               tools=[WEATHER], usage=(5, 1)),
    generation("dup-b", HISTORY["dup-b"], HELLO_ANSWER, model="m2", dispatched=at(2, 9, 5), latency=1,
               tools=[WEATHER], usage=(5, 1)),
    generation("failed-1", [HELLO], None, model="m1", dispatched=at(2, 10, 0), latency=10, state="Failed",
               state_message="Model worker error: context length exceeded"),
    generation("running-1", [HELLO], None, model="m1", dispatched=at(2, 10, 30), latency=None,
               state="In Progress", state_message="Generating"),
    {
        "id": "embed-1", "state": "Success", "stateMessage": "Generation completed",
        "request": {"model": "e1", "input": "hello", "metadata": {"custom_id": "cid-embed-1"}},
        "response": {"object": "list", "model": "e1", "data": [{"object": "embedding", "index": 0,
                                                                "embedding": [0.25, -0.5]}],
                     "usage": {"prompt_tokens": 3, "total_tokens": 3}},
        "dispatchedAt": iso(at(2, 11, 0)), "finishedAt": iso(at(2, 11, 0, 0.5)),
    },
]
NOT_JSON = '{"id": "cut-off", "state": "Succ'
NOT_JSON_LINE = len(RECORDS) + 1


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def messages(id: str) -> str:
    """A chat row's messages: the history sent, then the answer, each as received."""
    return compact([*HISTORY[id], ANSWER[id]])


def by_record(id: str) -> dict[str, Any]:
    return next(r for r in RECORDS if r["id"] == id)


def chat_row(id: str) -> dict[str, Any]:
    record = by_record(id)
    usage = record["response"]["usage"]
    tools = record["request"].get("tools")
    return {
        "id": id, "custom_id": f"cid-{id}", "model": record["request"]["model"], "messages": messages(id),
        "tools": compact(tools) if tools is not None else None,
        "finish_reason": record["response"]["choices"][0]["finish_reason"],
        "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
        "finished_at": datetime.fromisoformat(record["finishedAt"]), "metadata": compact({"custom_id": f"cid-{id}"}),
        "reasoning": None,
    }


@pytest.fixture
def db(store: Store) -> Store:
    """The store holding RECORDS and the bad line; every shipped view creates without an error."""
    store.ingest_texts([*(compact(r) for r in RECORDS), NOT_JSON], source="test")
    with store.read():
        assert store.view_errors == []
    return store


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return store.arrow(sql).to_pylist()


# --- chat ---------------------------------------------------------------------------------------


def test_chat_has_one_row_per_success_chat_generation_with_its_messages_and_answer(db: Store) -> None:
    got = rows(db, "select * from chat order by id")
    chat_ids = sorted(ANSWER)
    assert [r["id"] for r in got] == chat_ids  # not failed-1, running-1 nor the embedding
    assert got == [chat_row(id) for id in chat_ids]


def test_chat_keeps_tool_calls_tool_call_id_and_content_parts_as_sent(db: Store) -> None:
    got = {r["id"]: json.loads(r["messages"]) for r in rows(db, "select id, messages from chat")}
    assert got["tool-1"][-1] == CALL  # the answer: tool_calls, and its null content, intact
    assert got["tool-2"][1:] == [CALL_RESENT, TOOL_RESULT, WEATHER_ANSWER]
    assert got["parts"][0]["content"] == PICTURE["content"]


def test_chat_column_types_export_as_plain_arrow_types(db: Store) -> None:
    types = {f.name: str(f.type) for f in db.arrow("select * from chat limit 0").schema}
    assert types.pop("finished_at").startswith("timestamp[us, tz=")
    assert types == {
        "id": "string", "custom_id": "string", "model": "string", "messages": "string", "tools": "string",
        "finish_reason": "string", "prompt_tokens": "int64", "completion_tokens": "int64", "metadata": "string",
        "reasoning": "string",
    }


def test_chat_reads_webhook_group_and_hugging_face_records_like_the_others(store: Store) -> None:
    data = {k: v for k, v in by_record("conv-2").items() if k != "id"}  # the envelope carries the id
    item = {k: v for k, v in by_record("tool-2").items() if k != "id"} | {"generationId": "grp-tool-2"}
    store.ingest_texts([
        compact({"event": "generation.completed", "generationId": "wh-conv-2", "data": data}),
        compact({"event": "slow-group.completed", "group_id": "G1", "data": {"generations": [item]}}),
        compact({"messages": [PICTURE, CAT]}),  # a Hugging Face row: its id is derived from its content
    ], source="test")
    got = rows(store, "select * from chat order by id")
    assert got == [
        {**chat_row("tool-2"), "id": "grp-tool-2"},
        {"id": got[1]["id"], "custom_id": None, "model": None, "messages": compact([PICTURE, CAT]), "tools": None,
         "finish_reason": "stop", "prompt_tokens": None, "completion_tokens": None, "finished_at": None,
         "metadata": "{}", "reasoning": None},
        {**chat_row("conv-2"), "id": "wh-conv-2"},
    ]
    assert got[1]["id"].startswith("sha256-")


# --- conversations ------------------------------------------------------------------------------


def test_conversations_fold_each_call_into_the_longest_call_that_resends_it(db: Store) -> None:
    got = rows(db, "select * from conversations order by id")
    expected = {
        # conv-1 is a prefix of conv-2, branch and conv-3: it goes to the longest, conv-3.
        "conv-3": (3, ["conv-1", "conv-2"]),
        "branch": (1, []),
        # tool-1's answer was re-sent without its null content and with its keys reordered.
        "tool-2": (2, ["tool-1"]),
        "parts": (1, []),
        # Exact duplicates are not prefixes of each other: each is its own trajectory.
        "dup-a": (1, []),
        "dup-b": (1, []),
    }
    assert got == [
        {**chat_row(id), "n_calls": n, "folded_ids": folded} for id, (n, folded) in sorted(expected.items())
    ]


def test_conversations_break_a_length_tie_by_the_first_finished_call(store: Store) -> None:
    store.ingest_texts([compact(r) for r in (
        generation("first", [U1], A1, model="m1", dispatched=at(1, 9, 0), latency=1),
        # Two calls of the same length extend "first"; the one named last finished first.
        generation("a-late", [U1, A1, U2], A2, model="m1", dispatched=at(1, 9, 4), latency=120),
        generation("z-early", [U1, A1, U3], A3, model="m1", dispatched=at(1, 9, 5), latency=1),
    )], source="test")
    assert rows(store, "select id, n_calls, folded_ids from conversations order by id") == [
        {"id": "a-late", "n_calls": 1, "folded_ids": []},
        {"id": "z-early", "n_calls": 2, "folded_ids": ["first"]},
    ]


def test_conversations_fold_every_copy_of_a_call_into_the_call_that_extends_them(store: Store) -> None:
    store.ingest_texts([compact(r) for r in (
        generation("copy-1", [U1], A1, model="m1", dispatched=at(1, 9, 0), latency=1),
        generation("copy-2", [U1], A1, model="m2", dispatched=at(1, 9, 1), latency=1),
        generation("next", [U1, A1, U2], A2, model="m1", dispatched=at(1, 9, 2), latency=1),
    )], source="test")
    assert rows(store, "select id, n_calls, folded_ids from conversations") == [
        {"id": "next", "n_calls": 3, "folded_ids": ["copy-1", "copy-2"]},
    ]


def test_conversations_do_not_fold_a_call_whose_answer_was_altered(store: Store) -> None:
    store.ingest_texts([compact(r) for r in (
        generation("asked", [U1], A1, model="m1", dispatched=at(1, 9, 0), latency=1),
        generation("edited", [U1, {"role": "assistant", "content": "Paris!"}, U2], A2, model="m1",
                   dispatched=at(1, 9, 5), latency=1),
    )], source="test")
    assert rows(store, "select id, n_calls from conversations order by id") == [
        {"id": "asked", "n_calls": 1}, {"id": "edited", "n_calls": 1},
    ]


# --- duplicates ---------------------------------------------------------------------------------


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def test_duplicates_group_rows_with_the_same_messages_and_tools(db: Store) -> None:
    canonical = json.dumps(_strip_nulls({"messages": json.loads(messages("dup-a")), "tools": [WEATHER]}),
                           ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    assert rows(db, "select * from duplicates") == [{
        "content_hash": hashlib.md5(canonical.encode()).hexdigest(),
        "n": 2,
        "ids": ["dup-b", "dup-a"],  # by finished_at: dup-b finished first
        "kept_id": "dup-b",
    }]


def test_duplicates_ignore_key_order_and_null_members(store: Store) -> None:
    answer = {"content": "4 °C in Zürich.", "role": "assistant", "refusal": None}
    store.ingest_texts([compact(r) for r in (
        generation("x", [ASK_WEATHER, CALL, TOOL_RESULT], WEATHER_ANSWER, model="m1", dispatched=at(1, 9, 0),
                   latency=1),
        generation("y", [ASK_WEATHER, CALL_RESENT, TOOL_RESULT], answer, model="m2", dispatched=at(1, 9, 1),
                   latency=1),
    )], source="test")
    assert rows(store, "select n, ids, kept_id from duplicates") == [{"n": 2, "ids": ["x", "y"], "kept_id": "x"}]


# --- failures -----------------------------------------------------------------------------------


def test_failures_list_failed_generations_and_rejected_records_with_their_reasons(db: Store) -> None:
    got = rows(db, "select * from failures order by kind")
    assert got[1].pop("at").tzinfo is not None  # when the line was refused: now
    assert got == [
        {"kind": "failed", "id": "failed-1", "source": "test", "line": None,
         "reason": "Model worker error: context length exceeded", "model": "m1", "at": at(2, 10, 0, 10)},
        {"kind": "rejected", "id": None, "source": "test", "line": NOT_JSON_LINE,
         "reason": "not valid JSON (malformed or truncated line)", "model": None},
    ]


# --- usage --------------------------------------------------------------------------------------


def test_usage_has_one_row_per_model_and_day(db: Store) -> None:
    def row(day: int, model: str, n: int, ok: int, failed: int, rate: float, prompt: int | None,
            completion: int | None, latency: tuple[float, float, float]) -> dict[str, Any]:
        p50, p90, p99 = (pytest.approx(x) for x in latency)
        return {"day": date(2026, 11, day), "model": model, "generations": n, "succeeded": ok, "failed": failed,
                "success_rate": rate, "prompt_tokens": prompt, "completion_tokens": completion,
                "latency_p50_s": p50, "latency_p90_s": p90, "latency_p99_s": p99}

    assert rows(db, "select * from usage") == [
        # conv-1..3 and branch: latencies 1, 2, 3, 4 s
        row(1, "m1", 4, 4, 0, 1.0, 81, 11, (2.5, 3.7, 3.97)),
        row(1, "m2", 2, 2, 0, 1.0, 100, 15, (1.0, 1.0, 1.0)),
        # the embedding: no completion tokens
        row(2, "e1", 1, 1, 0, 1.0, 3, None, (0.5, 0.5, 0.5)),
        # failed-1 (10 s) and running-1, still in progress: in the count, not in the rate
        row(2, "m1", 2, 0, 1, 0.0, None, None, (10.0, 10.0, 10.0)),
        # parts, dup-a, dup-b: latencies 2, 5, 1 s
        row(2, "m2", 3, 3, 0, 1.0, 310, 9, (2.0, 4.4, 4.94)),
    ]


# --- the shipped files --------------------------------------------------------------------------

SHIPPED = ["chat", "contaminated", "conversations", "duplicates", "failures", "judgments", "near_duplicates", "pii",
           "samples", "scored", "signals", "usage"]
_TYPES = {"timestamptz": "TIMESTAMP WITH TIME ZONE", "map(varchar,double)": "MAP(VARCHAR, DOUBLE)"}


def header_columns(sql: str) -> list[tuple[str, str]]:
    """The (name, type) pairs the header lists: lines of the form ``-- name  type  what it is``."""
    out = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        match = re.fullmatch(r"-- (\w+) {2,}(\S+) {2,}\S.*", line)
        if match:
            out.append((match.group(1), _TYPES.get(match.group(2), match.group(2).upper())))
    return out


def test_curate_ships_its_views_each_describing_its_row_and_every_column(db: Store) -> None:
    shipped = views.load([views.QUERIES_DIR])
    assert [v.name for v in shipped] == SHIPPED
    with db.read() as con:
        for view in shipped:
            assert view.description.startswith("One row per ")
            columns = [(name, type_) for name, type_, *_ in con.execute(f"describe {view.name}").fetchall()]
            assert header_columns(view.sql) == columns, view.name


def test_conversations_and_duplicates_follow_a_user_chat_view(db: Store, tmp_path: Path) -> None:
    # What an analyst narrows chat to is what conversations and duplicates (and exports) see.
    folder = tmp_path / "views"
    folder.mkdir()
    shipped = (views.QUERIES_DIR / "chat.sql").read_text()
    (folder / "chat.sql").write_text(shipped.rstrip() + "\nwhere false\n")
    narrowed = Store(db.path, queries=[folder])
    with narrowed.read() as con:
        assert narrowed.view_errors == []
        assert con.execute("select count(*) from conversations").fetchone() == (0,)
        assert con.execute("select count(*) from duplicates").fetchone() == (0,)


def test_describe_gives_each_view_its_description_and_row_count(db: Store) -> None:
    with db.read() as con:
        described = views.describe(con, views.load([views.QUERIES_DIR]))
    assert [(name, n) for name, _, n in described] == [
        ("chat", 9), ("contaminated", 0), ("conversations", 6), ("duplicates", 1), ("failures", 2),
        ("judgments", 0), ("near_duplicates", 0), ("pii", 0), ("samples", 0), ("scored", 9), ("signals", 0), ("usage", 5),
    ]
    assert described[0][1] == "One row per Success chat generation: the messages sent, followed by the model's answer."


# --- user folders and broken files -------------------------------------------------------------


def user_dir(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "my-queries"
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / f"{name}.sql").write_text(sql, encoding="utf-8")
    return folder


BROKEN = """\
-- Successes per model, with a typo.
--
-- model  varchar  the model
-- n      bigint   successes
select model, count(*) as n
from generations
where stat = 'Success'
group by model
"""


@contextmanager
def bare(store: Store, *, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the store's file with no views of curate's: the test installs them."""
    con = duckdb.connect(str(store.path), read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def view_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}


def test_views_are_temporary_views_of_the_reading_connection_never_in_the_file(db: Store) -> None:
    with db.read() as con:
        assert set(con.execute(
            "select view_name from duckdb_views() where not internal and temporary").fetchall()) == {
            (name,) for name in SHIPPED}
    with bare(db) as con:  # the file holds only the schema's own view
        assert view_names(con) == {"generations"}


def test_a_broken_view_names_its_file_and_line_and_the_shipped_views_still_work(db: Store, tmp_path: Path) -> None:
    folder = user_dir(tmp_path, broken=BROKEN)
    with bare(db) as con:
        errors = views.install(con, views.load([views.QUERIES_DIR, folder]))
        assert con.execute("select count(*) from chat").fetchall() == [(9,)]
        assert view_names(con) == {*SHIPPED, "generations"}  # no "broken"
    assert len(errors) == 1
    error = errors[0]
    assert (error.path, error.line, error.view) == (folder / "broken.sql", 7, "broken")
    assert str(error).startswith(f"{folder / 'broken.sql'}, line 7: Binder Error: Referenced column \"stat\" not found")
    assert str(error).endswith("\n    where stat = 'Success'")
    # The same through a Store given the folder: it reads, and keeps the error for the caller to show.
    mine = Store(db.path, queries=[folder])
    assert rows(mine, "select count(*) as n from chat") == [{"n": 9}]
    assert [str(e) for e in mine.view_errors] == [str(error)]


def test_a_syntax_error_names_its_line_too(db: Store, tmp_path: Path) -> None:
    folder = user_dir(tmp_path, typo="-- A typo.\nselect id\nfrom generations\nwher state = 'Failed'\n")
    with bare(db) as con:
        [error] = views.install(con, views.load([folder]))
    assert error.line == 4
    assert "Parser Error: syntax error at or near \"state\"" in error.message


def test_a_view_file_holds_one_query_and_nothing_else(db: Store, tmp_path: Path) -> None:
    folder = user_dir(tmp_path, sneaky="-- Two statements.\nselect 1 as one;\ndrop table rejects;\n",
                      creates="create view other as select 1")
    with bare(db, read_only=False) as con:  # read-write: a statement that ran would have dropped rejects
        errors = views.install(con, views.load([folder]))
        assert view_names(con) == {"generations"}
    assert sorted(e.view for e in errors) == ["creates", "sneaky"]
    assert all("a view file holds one query" in e.message for e in errors)
    assert rows(db, "select count(*) as n from rejects") == [{"n": 1}]


def test_a_view_file_cannot_take_the_name_of_the_stores_own_tables_and_views(db: Store, tmp_path: Path) -> None:
    folder = user_dir(tmp_path, generations="-- Mine.\nselect 1 as x\n", rejects="-- Mine.\nselect 1 as x\n")
    with bare(db) as con:
        errors = views.install(con, views.load([folder]))
        # Nothing shadows them in this connection either.
        assert con.execute("select count(*) from generations").fetchall() == [(len(RECORDS),)]
        assert con.execute("select count(*) from rejects").fetchall() == [(1,)]
        assert view_names(con) == {"generations"}
    assert sorted((e.view, e.message) for e in errors) == [
        ("generations", "generations is the store's own view: name the file otherwise"),
        ("rejects", "rejects is the store's own table: name the file otherwise"),
    ]
    mine = Store(db.path, queries=[folder])
    assert len(rows(mine, "select * from generations")) == len(RECORDS)
    assert sorted(e.view for e in mine.view_errors) == ["generations", "rejects"]


def test_a_user_folder_overrides_a_shipped_view_for_that_store_only(db: Store, tmp_path: Path) -> None:
    folder = user_dir(tmp_path, chat="-- Only the ids.\n--\n-- id  varchar  the generation id\n"
                                     "select id from generations where state = 'Success' and id like 'conv-%'\n")
    loaded = views.load([views.QUERIES_DIR, folder])
    assert [v.name for v in loaded] == SHIPPED
    assert loaded[0].path == folder / "chat.sql" and loaded[0].description == "Only the ids."
    mine = Store(db.path, queries=[folder])
    # Both read at once, each with its own chat.
    with mine.read() as ours, db.read() as theirs:
        assert ours.execute("select * from chat order by id").fetchall() == [("conv-1",), ("conv-2",), ("conv-3",)]
        assert theirs.execute("select count(*) from chat").fetchall() == [(9,)]
    # conversations, duplicates and samples read chat: an override without chat's columns breaks them, by name.
    assert sorted(e.view for e in mine.view_errors) == ["conversations", "duplicates", "samples"]
    assert db.view_errors == []
    # Nor does it outlive that Store: a Store opened after it has the shipped chat.
    assert rows(Store(db.path), "select count(*) as n from chat") == [{"n": 9}]


def test_a_broken_override_leaves_that_store_without_the_view_not_with_the_shipped_one(
    db: Store, tmp_path: Path
) -> None:
    folder = user_dir(tmp_path, chat="-- Broken.\nselect id from nowhere\n")
    mine = Store(db.path, queries=[folder])
    with mine.read() as con:
        assert "chat" not in view_names(con)
    [error] = [e for e in mine.view_errors if e.view == "chat"]
    assert (error.path, error.line) == (folder / "chat.sql", 2)
    assert "Table with name nowhere does not exist" in error.message
    assert rows(db, "select count(*) as n from chat") == [{"n": 9}]


def test_a_view_may_read_another_view_whatever_their_order(store: Store, tmp_path: Path) -> None:
    folder = user_dir(tmp_path, a_per_model="-- Chat rows per model.\nselect model, count(*) as n from chat "
                                            "group by model\n")
    store.ingest_texts([compact(by_record("conv-1"))], source="test")
    loaded = views.load([views.QUERIES_DIR, folder])
    assert loaded[0].name == "a_per_model"  # created before the chat it reads
    with bare(store) as con:
        assert views.install(con, loaded) == []
        assert con.execute("select * from a_per_model").fetchall() == [("m1", 1)]


def test_a_later_folder_replaces_an_earlier_ones_file_and_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "v.sql").write_text("-- First.\nselect 1 as x\n")
    (second / "v.sql").write_text("-- Second.\nselect 2 as x\n")
    assert [(v.name, v.description) for v in views.load([first, second])] == [("v", "Second.")]
    with pytest.raises(FileNotFoundError, match="no such folder of views"):
        views.load([tmp_path / "nope"])
