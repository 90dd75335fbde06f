"""The text of a chat message: one rule, in Python and in DuckDB SQL, defined side by side.

This module owns what "the text of a message" means everywhere in curate, and what the curation
passes compare of a conversation:

* **A message's text** is its ``content`` when that is a string; when ``content`` is a list of
  parts, the ``text`` of each part whose ``type`` is ``"text"`` and whose ``text`` is a string,
  in order, joined by ``SEPARATOR`` (a newline, as chat templates and the export's sharegpt and
  alpaca text put parts on lines of their own); else (content null, missing, a number, an
  object; a message that is not an object) the empty string. Image parts, parts without a
  ``type``, parts that are not objects and text that is not a string (``{"type": "text",
  "text": 5}``) add nothing. Tool-call arguments, names and other keys are not text.
* **A conversation's text, as the passes compare it** (near-duplicates, decontamination) is its
  messages' texts, in order, joined by a space. Both passes treat any run of whitespace as one
  word break, so the space only keeps the last word of one message apart from the first of the
  next. Which messages (the request's or all of them) and how the text is normalised are each
  pass's own.

The forms, which tests/test_messages.py holds together on many message shapes:

* ``message_text(message)``: Python, over a message parsed by ``loads_first_wins`` (``curate scan
  pii``, whose spans are offsets into this text);
* ``json_message_text(m)``: SQL over ``m``, one message as a JSON value (the passes that read
  ``chat`` without typing it);
* ``typed_message_text(m)``: SQL over ``m``, one message typed as ``curate.formats`` types it
  (``content`` text, ``content_parts`` a list of ``struct(type, text, ...)``; a part's ``text``
  is NULL unless the JSON held a string there);
* ``conversation_text(messages)``: SQL over a list of JSON messages.

**A message's reasoning** (what a reasoning model thought before answering) is the string under
its first key of ``REASONING_KEYS`` that holds a string: ``reasoning_content`` (DeepSeek, vLLM,
SGLang and what TRL's chat templates read), else ``reasoning`` (newer vLLM, OpenRouter); NULL (None)
when neither does. Reasoning is not text: the passes do not compare it. Its forms:
``message_reasoning(message)`` (Python) and ``json_message_reasoning(m)`` (SQL over a JSON message).

**Duplicate keys.** JSON text may repeat a key (``{"content": "a", "content": "b"}``). DuckDB's
JSON functions (``->>``, ``json_extract``, ``json_transform``, and so every export format) take
the FIRST occurrence; Python's ``json.loads`` keeps the LAST. Python code that must see what the
SQL exports parses stored JSON with ``loads_first_wins``, which keeps the first, as DuckDB does
(keys compared once unescaped, as both do: ``"cont\\u0065nt"`` is ``content``). Its objects are
``JsonObject``: a ``dict`` of the first occurrences that also keeps every ``(key, value)`` pair in
``pairs``, for code that must read every string the JSON text holds (DuckDB's ``json()`` keeps
duplicate keys, and a reader of the exported JSON may take either).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "REASONING_KEYS",
    "SEPARATOR",
    "JsonObject",
    "conversation_text",
    "json_message_reasoning",
    "json_message_text",
    "loads_first_wins",
    "message_reasoning",
    "message_text",
    "typed_message_text",
]

# Where a message carries its reasoning, in the order they are read.
REASONING_KEYS = ("reasoning_content", "reasoning")

# Between the text parts of one message.
SEPARATOR = "\n"
# Between the messages of a conversation, as the passes compare it (any whitespace would do).
_MESSAGE_SEPARATOR = " "

# SEPARATOR as SQL (a SQL string literal has no escape for a newline).
_SQL_SEPARATOR = f"chr({ord(SEPARATOR)})"


class JsonObject(dict[str, Any]):
    """A JSON object as ``loads_first_wins`` reads it: the first value of each key (as DuckDB reads
    it), and in ``pairs`` every ``(key, value)`` of the text, duplicates included, in order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        for key, value in pairs:
            if key not in self:
                self[key] = value
        self.pairs = pairs


def loads_first_wins(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads(text)``, each object's repeated keys read as DuckDB reads them: the first
    occurrence wins (``json.loads`` alone keeps the last). Objects are ``JsonObject``s; ``kwargs``
    go to ``json.loads`` (``parse_float``, ...)."""
    return json.loads(text, object_pairs_hook=JsonObject, **kwargs)


def message_text(message: Any) -> str:
    """The text of one chat message (a parsed JSON value): see the module's rule; ``''`` when it has none."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return SEPARATOR.join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def message_reasoning(message: Any) -> str | None:
    """The reasoning of one chat message (a parsed JSON value), by ``REASONING_KEYS``; None when it has none."""
    if not isinstance(message, dict):
        return None
    for key in REASONING_KEYS:
        if isinstance(message.get(key), str):
            return str(message[key])
    return None


def json_message_reasoning(m: str) -> str:
    """SQL: the reasoning of ``m``, one chat message as a JSON value (NULL when it has none)."""
    return "coalesce(" + ", ".join(f"case when json_type({m}, '$.{key}') = 'VARCHAR' then {m} ->> '$.{key}' end"
                                   for key in REASONING_KEYS) + ")"


def json_message_text(m: str) -> str:
    """SQL: the text of ``m``, one chat message as a JSON value (``''`` when it has none)."""
    # json_type is NULL for a path that is missing or inside a value that is not an object, so a
    # message or part that is not an object falls through to '' or is filtered out. The type is
    # checked to be a JSON string too: ->> would give any value's JSON text.
    return f"""case json_type({m}, '$.content')
        when 'VARCHAR' then {m} ->> '$.content'
        when 'ARRAY' then array_to_string(list_transform(list_filter(json_extract({m}, '$.content[*]'),
            lambda part: json_type(part, '$.type') = 'VARCHAR' and part ->> '$.type' = 'text'
                         and json_type(part, '$.text') = 'VARCHAR'),
            lambda part: part ->> '$.text'), {_SQL_SEPARATOR})
        else '' end"""


def typed_message_text(m: str) -> str:
    """SQL: the text of ``m``, one message typed as ``curate.formats.MESSAGE_TYPE`` (``''`` when it has none).

    ``curate.formats.typed_messages`` reads a part's text as NULL unless the JSON held a string,
    and content that is neither a string nor a list as NULL, so the rule needs nothing more here."""
    parts = f"list_filter({m}.content_parts, lambda part: part.type = 'text' and part.text is not null)"
    return f"coalesce({m}.content, array_to_string(list_transform({parts}, lambda part: part.text), {_SQL_SEPARATOR}), '')"


def conversation_text(messages: str) -> str:
    """SQL: the text of ``messages``, a list of JSON messages, as the curation passes compare it:
    each message's text, in order, joined by a space."""
    return (f"array_to_string(list_transform({messages}, lambda m: {json_message_text('m')}), "
            f"'{_MESSAGE_SEPARATOR}')")
