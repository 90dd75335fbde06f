"""Fuzzing submit's line check (issue 17): every refused line is named, and what passes can be sent.

``curate submit`` checks the whole file before anything is sent (``_check``, over ``_parse``), then
reads it again as it sends (``_read``). Hypothesis writes request files of valid, mutated and
hostile lines: random JSON values, NaN and Infinity tokens, numbers past a double or past Python's
digit limit, escaped lone surrogates and their raw (not UTF-8) bytes, other bytes that are not
UTF-8, ``\\r`` inside a line, nesting deeper than the parser's recursion limit, blank lines and
repeated lines. The properties:

* ``_parse`` never raises, and ``_check`` raises nothing but ``InvalidRequests``;
* a refused file names each refused line by its number (once), with a reason; a line refused
  in the file is one refused on its own, or a repeat of an earlier line it names;
* a file that passes is read by ``_read`` without error, every non-blank line once, in order,
  and every body encodes as the client sends it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.submit import InvalidRequests, _check, _parse, _read
from curate.synthetic import chat_request
from tests.test_fuzz_records import VALUES, _dump, mutate

# Pure Python, no store: many examples fit in a few seconds. Fixed and derandomized for CI.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HOSTILE = [
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 400 + b"}",
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 5000 + b"}",
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "\\udfff\\ud800"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # a surrogate's raw bytes
    b'{"model": "caf\xe9", "messages": [{"role": "user", "content": "hi"}]}',
    b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',  # a BOM
    b'{"model": "m",\r"messages": [{"role": "user", "content": "hi"}]}\r',
    b'{"model": "m", "messages": [{"role": "user", "content": "a\rb"}]}',  # a raw \r inside a string
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {"custom_id": 7}}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": []}',
    b'{"model": "", "messages": [{"role": "user"}]}',
    b'{"model": "m", "messages": []}',
    b'{"model": "m", "messages": [1], "model": 5}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000,
    b"NaN", b"null", b"[]", b"\x00", b"\xff\xfe", b"\r", b" \t ", b"",
]


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    """One line of a request file (no ``\\n`` inside)."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "value", "hostile", "bytes"]))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE))
    if kind == "bytes":
        return draw(st.binary(max_size=80)).replace(b"\n", b" ")
    if kind == "value":
        return _dump(draw(VALUES), ascii_only=draw(st.booleans())).encode("utf-8").replace(b"\n", b" ")
    seed = draw(st.integers(0, 30))
    body: Any = copy.deepcopy(chat_request(seed, custom_id=draw(st.sampled_from([None, f"c-{seed}"]))))
    if kind == "mutated":
        mutate(draw, body, draw(st.integers(1, 3)), ("drop", "replace", "replace", "recase"))
    return _dump(body, ascii_only=draw(st.booleans())).encode("utf-8").replace(b"\n", b" ")


@st.composite
def request_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(request_lines(), min_size=1, max_size=8))
    if len(lines) > 1 and draw(st.booleans()):  # a line repeated later in the file
        lines.insert(draw(st.integers(1, len(lines))), lines[draw(st.integers(0, len(lines) - 1))])
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


def _refused_alone(tmp: Path, line: bytes) -> bool:
    tmp.write_bytes(line)
    try:
        _check(tmp)
    except InvalidRequests:
        return True
    return False


def check_file(folder: Path, data: bytes) -> None:
    """The properties, for one request file's bytes."""
    path = folder / "requests.jsonl"
    path.write_bytes(data)
    lines = data.split(b"\n")
    non_blank = [n for n, line in enumerate(lines, start=1) if line.strip()]

    parsed = list(_parse(path))  # never raises: a line it cannot take is a reason
    assert [n for n, _ in parsed] == non_blank

    try:
        _check(path)
    except InvalidRequests as exc:
        problems = exc.problems
        numbers = [n for n, _ in problems]
        assert problems and len(set(numbers)) == len(numbers), problems
        assert set(numbers) <= set(non_blank), (numbers, non_blank)
        for n, why in problems[:20]:
            assert isinstance(why, str) and why.strip()
            assert f"line {n}: " in str(exc)
        for n, why in problems:
            if not _refused_alone(folder / "alone.jsonl", lines[n - 1]):
                # refused only in this file: a repeat of an earlier line that passed, named
                assert why.startswith("the same request as line "), (n, why)
                first = int(why.removeprefix("the same request as line ").split(" ", 1)[0])
                assert first < n and first not in numbers, (n, why)
        for n in set(non_blank) - set(numbers):
            assert not _refused_alone(folder / "alone.jsonl", lines[n - 1]), n
        return

    # Passed: the whole file reads and encodes as it is sent.
    read = list(_read(path))
    assert [line.number for line in read] == non_blank
    assert len({line.key for line in read}) == len(read)
    for line in read:
        assert isinstance(line.body, dict)
        json.dumps(line.body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


GOOD = json.dumps(chat_request(1)).encode()


@pytest.mark.parametrize("line", HOSTILE, ids=[repr(h[:40]) for h in HOSTILE])
def test_each_hostile_line_alone_and_between_good_lines(tmp_path: Path, line: bytes) -> None:
    check_file(tmp_path, line)
    check_file(tmp_path, GOOD + b"\n" + line + b"\r\n" + json.dumps(chat_request(2)).encode() + b"\n")


def test_a_line_nested_past_the_parsers_depth_is_named_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_bytes(GOOD + b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(InvalidRequests) as refused:
        _check(path)
    assert refused.value.problems == [(2, "not valid JSON (nested too deeply to read)")]


@FUZZ
@given(request_files())
def test_the_line_check_names_every_refused_line_and_what_passes_can_be_sent(tmp_path_factory: Any,
                                                                              data: bytes) -> None:
    check_file(tmp_path_factory.mktemp("fuzz-submit"), data)
