"""The alias table: one list of each field's keys, which the store's SQL and the listener both read by.

``records`` builds its SQL from ``ALIASES`` and ``api_types.first_id``/``first_value`` state the
same rule in Python; hypothesis checks that the two pick the same value for the same bodies
(every shape that reads an alias, both casings, values of every JSON type, keys missing), and
that the listener's stricter rule picks what the store picks whenever the values are names.
No other module may spell a camelCase key, so the table stays the only place that knows them.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curate import listen, records
from curate.api_types import ALIASES, TERMINAL_STATES, first_id, first_str, first_value, id_text
from tests.test_fuzz_records import fuzz

PACKAGE = Path(__file__).resolve().parents[1] / "curate"
CAMEL = sorted({key for keys in ALIASES.values() for key in keys if key != key.lower()})
TEXT_FIELDS = ("state_message", "dispatched_at", "finished_at")
TIMES = ("dispatched_at", "finished_at")

# -- the table -----------------------------------------------------------------------------------


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def test_every_camel_case_key_is_read_beside_its_snake_case_twin() -> None:
    assert CAMEL == ["dispatchedAt", "finishedAt", "generationId", "groupId", "groupSize", "stateMessage", "webhookId"]
    for field, keys in ALIASES.items():
        assert len(set(keys)) == len(keys), field
        for key in keys:
            assert key == _snake(key) or _snake(key) in keys, (field, key)


def test_the_helpers_read_both_casings_in_the_table_s_order() -> None:
    assert first_str({"generationId": "camel", "generation_id": "snake"}, "generation_id") == "camel"
    assert first_str({"generation_id": "snake"}, "generation_id") == "snake"
    assert first_str({"group_id": "snake", "groupId": "camel"}, "group_id") == "snake"
    assert first_str({"webhook_id": "w"}, "webhook_id") == "w"
    # A GenerationForClient names itself "id" first; a group's member "generationId" first.
    both = {"id": "plain", "generationId": "camel", "generation_id": "snake"}
    assert (first_id(both, "id"), first_id(both, "member_id")) == ("plain", "camel")
    assert first_value({"stateMessage": None, "state_message": "m"}, "state_message") == "m"


def test_what_each_rule_takes() -> None:
    # The store's id: a string (even empty) or a 64-bit integer, as text; the first that is one.
    assert first_id({"id": 12, "generationId": "G"}, "id") == "12"
    assert first_id({"id": "", "generationId": "G"}, "id") == ""
    assert first_id({"id": True, "generationId": 1.5, "generation_id": {"x": 1}}, "id") is None
    assert [id_text(v) for v in (2**64 - 1, 2**64, -(2**63), -(2**63) - 1, False)] == [
        str(2**64 - 1), None, str(-(2**63)), None, None]
    # The listener's: a non-empty string only.
    assert first_str({"id": 12, "generationId": "", "generation_id": "G"}, "id") == "G"
    # Missing keys, nulls and bodies that are no object give nothing.
    nothing: tuple[object, ...] = ({}, {"id": None}, [], "id", None)
    for body in nothing:
        assert (first_id(body, "id"), first_str(body, "id"), first_value(body, "state_message")) == (None,) * 3


def test_every_webhook_id_key_is_masked_before_it_is_stored() -> None:
    # records' masking rule is its own (wider) pattern: it must still cover every key in the table.
    con = duckdb.connect()
    for key in ALIASES["webhook_id"]:
        body = json.dumps({key: "SECRET-1", "data": {"request": {"metadata": {key: "SECRET-2"}}}})
        assert b"SECRET" not in records.mask_webhook_ids(body.encode()), key
        ((sql_masked,),) = con.execute(f"select {records.masked('t')} from (select ?::varchar as t)",
                                       [body]).fetchall()
        assert "SECRET" not in sql_masked, key


# -- the store's SQL and the Python rule agree -------------------------------------------------------

# Values of every JSON type, the ids' edge cases included (no floats where the store reads text:
# DuckDB and Python print some differently, and that is no question of which key is read).
NAMES = st.text(alphabet="abXY09-_", max_size=5)  # "" included; never mistaken for a sha256- id
ID_VALUES = st.one_of(
    NAMES, st.integers(-5, 5), st.sampled_from([2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from("ab"), NAMES, max_size=2),
)
TEXT_VALUES = st.one_of(
    NAMES, st.sampled_from(["2026-01-02T03:04:05Z", "2026-02-03T04:05:06.789Z", "not a time"]),
    st.integers(-5, 5), st.booleans(), st.none(), st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from("ab"), NAMES, max_size=2),
)


def _generation(required: dict[str, Any], id_field: str) -> st.SearchStrategy[dict[str, Any]]:
    """A GenerationForClient-like object: any of ``id_field``'s keys and of the text fields' keys."""
    optional: dict[str, st.SearchStrategy[Any]] = {key: ID_VALUES for key in ALIASES[id_field]}
    optional |= {key: TEXT_VALUES for field in TEXT_FIELDS for key in ALIASES[field]}
    return st.fixed_dictionaries(required, optional=optional)


GENERATIONS = _generation({"state": st.sampled_from(TERMINAL_STATES)}, "id")
ENVELOPES = st.fixed_dictionaries(
    {"event": st.sampled_from(["generation.completed", "async-embedding.completed"]),
     "data": _generation({}, "id")},
    optional={key: ID_VALUES for key in ALIASES["generation_id"]} | {key: NAMES for key in ALIASES["webhook_id"]},
)
GROUPS = st.builds(
    lambda members, group: {"event": "slow-group.completed", **group,
                            "data": {"generations": [m | {"n": n} for n, m in enumerate(members)]}},
    st.lists(_generation({}, "member_id"), min_size=1, max_size=3),
    st.fixed_dictionaries({}, optional={key: NAMES for key in ALIASES["group_id"]}),
)


def _text(value: Any) -> str | None:
    """A value as the store reads a text field: a string as it is, anything else as its JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _store(bodies: list[dict[str, Any]]) -> tuple[duckdb.DuckDBPyConnection, dict[int, dict[str, Any]]]:
    """Run the store's first pass and its slow-group assembly over ``bodies`` (line n+1 each)."""
    con = duckdb.connect()
    con.register("_curate_src", pa.table({
        "line": pa.array(range(1, len(bodies) + 1), pa.int64()),
        "text": pa.array([json.dumps(b, ensure_ascii=False) for b in bodies], pa.string()),
    }))
    con.execute(records.PARSE_SQL)
    for sql in records.RARE_SQL:
        con.execute(sql)
    rows = con.execute(
        f"select line, shape, bad_id, id, state_message, dispatched_at, finished_at "
        f"from ({records.records_sql('_curate_src')})").fetchall()
    return con, {row[0]: dict(zip(("line", "shape", "bad_id", "id", *TEXT_FIELDS), row, strict=True))
                 for row in rows}


def _cast_time(con: duckdb.DuckDBPyConnection, text: str | None) -> datetime | None:
    ((value,),) = con.execute("select try_cast(?::varchar as timestamptz)", [text]).fetchall()
    return value


def _expect_id(row: dict[str, Any], picked: str | None) -> None:
    if picked is None:
        assert row["id"].startswith("sha256-"), row
    else:
        assert row["id"] == picked, row


def _expect_texts(con: duckdb.DuckDBPyConnection, row: dict[str, Any], generation: dict[str, Any]) -> None:
    assert row["state_message"] == _text(first_value(generation, "state_message")), row
    for field in TIMES:
        assert row[field] == _cast_time(con, _text(first_value(generation, field))), (field, row)


@fuzz(60)
@given(st.lists(st.one_of(GENERATIONS, ENVELOPES), min_size=1, max_size=12))
def test_the_store_and_the_python_rule_pick_the_same_id_and_fields(bodies: list[dict[str, Any]]) -> None:
    con, rows = _store(bodies)
    for line, body in enumerate(bodies, start=1):
        row = rows[line]
        if "event" in body:  # the envelope's own keys first, then its data's
            assert row["shape"] == "webhook"
            generation = body["data"]
            firsts = [first_value(body, "generation_id"), first_value(generation, "id")]
            first = next((v for v in firsts if v is not None), None)
            own = first_id(body, "generation_id")
            picked = own if own is not None else first_id(generation, "id")
        else:
            assert row["shape"] == "generation"
            generation = body
            first = first_value(body, "id")
            picked = first_id(body, "id")
        # The first id present decides whether the record is refused: any kind but an id is.
        assert (row["bad_id"] is not None) == (first is not None and id_text(first) is None), row
        _expect_id(row, picked)
        _expect_texts(con, row, generation)


@fuzz(40)
@given(st.lists(GROUPS, min_size=1, max_size=6))
def test_a_group_s_members_are_read_alike_by_the_store_the_python_rule_and_the_listener(
    groups: list[dict[str, Any]],
) -> None:
    con, _ = _store(groups)
    rows = con.execute(
        "select line, json_extract(raw, '$.data.generations[0].n')::int as n, id, state_message, "
        "dispatched_at, finished_at from _curate_rare").fetchall()
    assert len(rows) == sum(len(g["data"]["generations"]) for g in groups)
    for line, n, *picked in rows:
        member = groups[line - 1]["data"]["generations"][n]
        row = dict(zip(("id", *TEXT_FIELDS), picked, strict=True))
        _expect_id(row, first_id(member, "member_id"))
        _expect_texts(con, row, member)
        # The listener settles the id the store stored whenever the member's ids are names.
        values = [member.get(key) for key in ALIASES["member_id"]]
        if any(values) and all(v is None or (isinstance(v, str) and v) for v in values):
            assert (first_str(member, "member_id"), row["id"]) == (row["id"], row["id"])
    for group in groups:
        listened = [i for i, _ in listen._members(group["data"])]
        assert listened == [i for m in group["data"]["generations"] if (i := first_str(m, "member_id"))]


def test_each_key_of_each_field_is_read_by_the_store_in_the_table_s_order() -> None:
    # Every key holds its own value; dropping the keys one by one from the front walks the order.
    cases: list[tuple[str, dict[str, Any], str, str]] = []  # (field, body, key, where the store says)
    for field, keys, wrap in (
        ("id", ALIASES["id"], lambda g: g | {"state": "Success"}),
        ("generation_id", ALIASES["generation_id"], lambda g: {"event": "generation.completed", **g, "data": {}}),
        ("member_id", ALIASES["member_id"],
         lambda g: {"event": "slow-group.completed", "data": {"generations": [g]}}),
        *((f, ALIASES[f], lambda g: g | {"state": "Success"}) for f in TEXT_FIELDS),
    ):
        for start in range(len(keys)):
            values = {key: f"2026-01-0{i + 1}T00:00:00Z" for i, key in enumerate(keys[start:])}
            cases.append((field, wrap(values), keys[start], values[keys[start]]))
    con, rows = _store([body for _, body, _, _ in cases])
    rare = dict(con.execute("select line, id from _curate_rare").fetchall())
    for line, (field, _, key, value) in enumerate(cases, start=1):
        if field == "member_id":
            assert rare[line] == value, (field, key)
        elif field in TIMES:
            assert rows[line][field] == _cast_time(con, value), (field, key)
        else:
            assert rows[line]["id" if field.endswith("id") else field] == value, (field, key)


# -- nobody else spells a camelCase key --------------------------------------------------------------

# Modules that write bodies as inference.net does rather than read them; sandbox/ (a fake
# inference.net) is left out whole for the same reason.
PRODUCERS = {"synthetic.py": "writes synthetic GenerationForClient bodies, camelCase keys and all"}
# Modules that still read a camelCase key by hand; each is to read through api_types, and then
# leaves this list (the test fails while an entry here is no longer true).
NOT_YET: dict[str, str] = {}


def _string_constants(tree: ast.AST) -> list[str]:
    """Every string literal (f-strings' parts included) but docstrings, which may name keys."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_module_but_api_types_spells_a_camel_case_key() -> None:
    pattern = re.compile(r"\b(" + "|".join(CAMEL) + r")\b")
    offenders: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE))
        if name == "api_types.py" or name.startswith("sandbox/") or name in PRODUCERS:
            continue
        found = [s for s in _string_constants(ast.parse(path.read_text())) if pattern.search(s)]
        if found:
            offenders[name] = found
    assert set(offenders) == set(NOT_YET), offenders


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_the_producers_left_out_exist(name: str) -> None:
    assert (PACKAGE / name).is_file()
