"""A dataset exported with ``--pii drop|redact`` holds none of the personal data its rows carried,
in any field any format ships.

Each planted row hides a secret somewhere an export format ships it besides a message's plain
text: tool-call arguments (escaped too), a message's name, a tool call's id, the tools offered,
an image part's URL, the model, and message text behind a repeated JSON key (DuckDB, and so the
export, reads a repeated key's first occurrence; Python's ``json.loads`` its last). After
``curate scan pii``, every format is exported with ``--pii drop`` and with ``--pii redact``, and
the folder's files are read back (bytes, and each Parquet and JSON line decoded): no secret is
left, and the clean rows are all there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from curate import pii, synthetic
from curate.exporter import export
from curate.formats import ROW_FORMATS
from curate.store import Store

CALL_ARGS = "dave.calls@example.com"
ESCAPED_ARGS = "erin.escaped@example.com"
NAME = "frank.named@example.com"
CALL_ID_KEY = "AKIAIOSFODNN7EXAMPLE"
TOOLS_DESCRIPTION = "grace.tools@example.com"
TOOLS_ENUM = "+44 20 7946 0958"
IMAGE_URL = "https://img.example.com/u/heidi.image@example.com/a.png"
IMAGE_EMAIL = "heidi.image@example.com"
MODEL = "ivan.model@example.com"
DUP_CONTENT = "judy.dupcontent@example.com"
DUP_PART_TEXT = "mallory.duppart@example.com"
DUP_PART_TYPE = "niaj.duptype@example.com"
DUP_ARGS = "olivia.dupargs@example.com"
PLAIN = "peggy.plain@example.com"

SECRETS = [CALL_ARGS, ESCAPED_ARGS, NAME, CALL_ID_KEY, TOOLS_DESCRIPTION, TOOLS_ENUM, IMAGE_EMAIL, MODEL,
           DUP_CONTENT, DUP_PART_TEXT, DUP_PART_TYPE, DUP_ARGS, PLAIN]


def record(n: int, question: str) -> dict[str, Any]:
    r = synthetic.generation_record(n, state="Success")
    r["id"] = f"row-{n}"
    r["request"]["messages"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    r["response"]["choices"][0]["message"] = {"role": "assistant", "content": f"Answer number {n}."}
    r["response"]["choices"][0]["finish_reason"] = "stop"
    return r


def tool_call_record(n: int, call_id: str, arguments: str) -> dict[str, Any]:
    r = record(n, f"Please send mail number {n}.")
    r["response"]["choices"][0]["message"] = {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "send", "arguments": arguments}}]}
    r["response"]["choices"][0]["finish_reason"] = "tool_calls"
    return r


def planted_lines() -> tuple[list[str], dict[str, str]]:
    """The store's JSON lines, and the id of each planted row by what it plants."""
    lines: list[str] = []
    planted: dict[str, str] = {}

    def add(what: str, r: dict[str, Any], raw: str | None = None) -> None:
        planted[what] = r["id"]
        lines.append(raw if raw is not None else json.dumps(r))

    add("arguments", tool_call_record(101, "call_1", json.dumps({"to": CALL_ARGS})))
    # Escaped in the arguments' JSON text: the export decodes it ("\\u0040" becomes "@").
    add("escaped arguments", tool_call_record(102, "call_2", json.dumps({"to": ESCAPED_ARGS}).replace("@", "\\u0040")))
    add("repeated argument key", tool_call_record(103, "call_3", f'{{"to": "{DUP_ARGS}", "to": "nobody"}}'))
    add("tool call id", tool_call_record(104, f"call_{CALL_ID_KEY}", '{"to": "the team"}'))
    named = record(105, "Who am I?")
    named["request"]["messages"][1]["name"] = NAME
    add("name", named)
    tools = record(106, "Which tool would you use?")
    tools["request"]["tools"] = [{"type": "function", "function": {
        "name": "lookup", "description": f"Looks up {TOOLS_DESCRIPTION}",
        "parameters": {"type": "object", "properties": {"who": {"type": "string", "enum": [TOOLS_ENUM]}}}}}]
    add("tools", tools)
    image = record(107, "unused")
    image["request"]["messages"][1]["content"] = [{"type": "text", "text": "What is in this picture?"},
                                                  {"type": "image_url", "image_url": {"url": IMAGE_URL}}]
    add("image url", image)
    model = record(108, "Which model are you?")
    model["request"]["model"] = MODEL
    model["response"]["model"] = MODEL
    add("model", model)
    # Repeated keys, written into the JSON text itself: DuckDB reads the first.
    dup = record(109, "DUP-CONTENT")
    add("repeated content", dup, json.dumps(dup).replace(
        '"content": "DUP-CONTENT"', f'"content": "{DUP_CONTENT}", "content": "A clean question about trains."'))
    dup_part = record(110, "unused")
    dup_part["request"]["messages"][1]["content"] = [{"type": "text", "text": "DUP-PART"}]
    add("repeated part text", dup_part, json.dumps(dup_part).replace(
        '"text": "DUP-PART"', f'"text": "{DUP_PART_TEXT}", "text": "A clean question about boats."'))
    dup_type = record(111, "unused")
    dup_type["request"]["messages"][1]["content"] = [{"type": "DUP-TYPE", "text": DUP_PART_TYPE}]
    add("repeated part type", dup_type, json.dumps(dup_type).replace(
        '"type": "DUP-TYPE"', '"type": "text", "type": "image_url"'))
    add("plain text", record(112, f"Write to {PLAIN} today."))
    return lines, planted


CLEAN = [f"row-{n}" for n in range(1, 9)]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, str]]:
    store = Store(tmp_path_factory.mktemp("store") / "curate.duckdb", lock_timeout=5)
    lines, planted = planted_lines()
    clean = [json.dumps(record(n, f"Tell me fact number {n} about rivers.")) for n in range(1, 9)]
    store.ingest_texts([*clean, *lines], source="t")
    assert pii.scan(store).rows == len(clean) + len(lines)
    return store, planted


def texts_of(folder: Path) -> str:
    """Everything the folder's files hold: their bytes as text, Parquet and JSON lines decoded."""
    chunks: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        chunks.append(path.read_bytes().decode("utf-8", errors="replace"))
        if path.suffix == ".parquet":
            chunks.append(json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str))
        elif path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                chunks.append(json.dumps(json.loads(line), ensure_ascii=False))
    text = "\n".join(chunks)
    # Arguments and tools come back as JSON text inside the decoded values: decode once more.
    return text + "\n" + text.replace("\\u0040", "@").replace('\\"', '"')


def exported_ids(folder: Path) -> set[str]:
    [lineage] = list(folder.rglob("lineage.parquet"))
    return set(pq.read_table(lineage).column("id").to_pylist())


def test_the_scan_records_where_each_planted_secret_is(scanned: tuple[Store, dict[str, str]]) -> None:
    store, planted = scanned
    rows = store.arrow("select id, message_index, field from pii_findings order by all").to_pylist()
    by_id: dict[str, list[tuple[Any, str]]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append((r["message_index"], r["field"]))
    assert set(by_id) == set(planted.values())  # every planted row, no clean one
    assert (None, "messages[2].tool_calls[0].function.arguments.to") in by_id[planted["arguments"]]
    assert (None, "messages[2].tool_calls[0].function.arguments.to") in by_id[planted["escaped arguments"]]
    assert (None, "messages[2].tool_calls[0].id") in by_id[planted["tool call id"]]
    assert (None, "messages[1].name") in by_id[planted["name"]]
    assert {f for _, f in by_id[planted["tools"]]} == {"tools[0].function.description",
                                                       "tools[0].function.parameters.properties.who.enum[0]"}
    assert (None, "messages[1].content[1].image_url.url") in by_id[planted["image url"]]
    assert (None, "model") in by_id[planted["model"]]
    # Behind a repeated key, the first occurrence is the text: a finding in it, redactable.
    for what in ("repeated content", "repeated part text", "repeated part type", "plain text"):
        assert by_id[planted[what]] == [(1, "text")], what


def test_a_scan_before_this_version_is_stale(scanned: tuple[Store, dict[str, str]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = scanned
    assert pii.pending(store) == 0
    monkeypatch.setattr(pii, "SCAN_VERSION", 1)
    assert pii.pending(store) == len(CLEAN) + 12


@pytest.mark.parametrize("mode", ["drop", "redact"])
# The preference formats, which pair rows: tests/test_preference_export.py, with the same planted rows.
@pytest.mark.parametrize("fmt", ROW_FORMATS)
def test_no_planted_secret_is_exported(scanned: tuple[Store, dict[str, str]], tmp_path: Path,
                                       fmt: str, mode: str) -> None:
    store, planted = scanned
    out = tmp_path / "out"
    export(store, "chat", out, fmt=fmt, pii=mode, test_size=0.3)
    text = texts_of(out)
    assert [s for s in SECRETS if s in text] == []
    ids = exported_ids(out)
    assert set(CLEAN) <= ids  # the clean rows are all kept
    # Only a finding in a message's string content is redacted (the row kept, its span replaced);
    # a row with a finding anywhere else (another field, content parts) is dropped, as with drop.
    redacted = {planted["repeated content"], planted["plain text"]}
    assert ids & set(planted.values()) == (set() if mode == "drop" else redacted)
    if mode == "redact":
        assert planted["plain text"] in ids and "[EMAIL]" in text


def test_the_repeated_key_rows_are_exported_as_duckdb_reads_them(scanned: tuple[Store, dict[str, str]],
                                                                 tmp_path: Path) -> None:
    """Without --pii, the export ships each repeated key's first occurrence: what the scan read."""
    store, _ = scanned
    export(store, "chat", tmp_path / "keep", fmt="messages", test_size=0)
    text = texts_of(tmp_path / "keep")
    assert DUP_CONTENT in text and DUP_PART_TEXT in text and DUP_PART_TYPE in text
    assert "A clean question about trains." not in text
