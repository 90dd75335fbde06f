"""Fine-tuning dataset formats, as DuckDB SQL over the ``chat`` view's columns.

This module owns what one exported row is in each format: how a row's ``messages`` JSON text
(and ``tools``, ``model``, ``finish_reason``) becomes typed columns, which rows a format cannot
hold and why, the Arrow schema and Hugging Face features of each format, OpenAI's published
chat fine-tuning rules (``validate_openai``) and preference fine-tuning rules
(``validate_openai_preference``), and how the preference formats pair answers (``pairs``).
Reading stores, splitting, and writing files, cards and lineage belong to ``exporter.py``.

Everything per row is SQL, so an export streams Arrow batches out of DuckDB and never builds a
Python object per row. ``convert(batch, fmt)`` runs the same SQL over one Arrow batch (tests,
notebooks). A row goes through three expressions:

* ``typed_messages(col)``: the messages JSON parsed once into ``MESSAGE_TYPE``;
* ``drop_reason(fmt)``: NULL when the row fits ``fmt``, else a fixed sentence (counted per reason);
* ``columns(fmt, reasoning)``: the format's output columns, computed from the typed messages.

The same rules, and a few of TRL's, say what a trainer needs of any dataset's messages, curate's
or not (``MESSAGE_RULES``, ``CONVERSATION_RULES``, ``SFT_RULES``, ``PROMPT_RULES``,
``ANSWER_RULES``, which ``curate validate`` runs with ``first_reason``); ``message_list_json``
turns a dataset's list of message structs back into the JSON text ``typed_messages`` reads.

Typing decisions
----------------
* **Content** is ``content: string`` when the message sent a string (NULL when it sent null) and
  ``content_parts: list<struct<type, text, image_url: struct<url, detail>>>`` when it sent a list
  of parts (``content`` is then NULL). Chat templates read ``content`` as text; a JSON-typed
  content would show analysts quoted strings. Parts other than ``text`` and ``image_url`` are
  refused ("unsupported content part"), and so is a ``text`` part whose text is not a string
  (``{"type": "text", "text": 5}``): it is no text by ``curate.messages``' rule, so exporting its
  JSON as text would export what ``curate scan pii`` never read.
* **A message's text** (sharegpt's ``value``, alpaca's columns) is ``curate.messages``' rule:
  its content, or its text parts joined by a newline.
* **Tool-call arguments** are parsed JSON in ``messages`` and ``prompt-completion``: Arrow's
  ``arrow.json`` extension type, which ``datasets`` reads as its ``Json()`` feature, so
  ``row["messages"][i]["tool_calls"][0]["function"]["arguments"]`` is a dict, and calls whose
  arguments have different shapes (``{"n": 1}`` beside ``{"n": "one"}``) sit in one column,
  which a struct type cannot do. Arguments that do not parse are refused. In ``openai`` and
  ``catalyst`` they are JSON strings, as OpenAI's API sends and its fine-tuning expects.
* **Tools** are JSON (``Json()``): JSON schemas are arbitrary. NULL when none were offered.
* **Reasoning** (``curate.messages``' rule: ``reasoning_content``, else ``reasoning``) is read into
  ``reasoning_content`` on every message, and each format writes it as ``--reasoning`` says
  (``REASONING``): ``keep`` as a ``reasoning_content`` key on the assistant messages (the key
  TRL's chat templates read; for the Parquet formats the messages' struct has the field only
  when some exported row has reasoning, so data without any exports as before), ``inline`` as
  ``THINK[0]\nREASONING\nTHINK[1]\n\n`` before the content (what DeepSeek-R1 and Qwen3 templates
  render; tags configurable; a message whose content is a list of parts keeps its parts and
  loses the reasoning), ``drop`` not at all. Earlier assistant turns follow the same rule as the
  answer; what a chat template then does with them is the template's (Qwen3's drops the
  reasoning of turns before the last user message; TRL passes messages as they are).
  ``default_reasoning(fmt)``: ``drop`` where the format has no place for it (openai,
  openai-preference, sharegpt, alpaca: ``keep`` is refused there, ``inline`` works), ``keep``
  elsewhere.
* Message keys other than role, content, tool_calls, tool_call_id, name and the reasoning keys
  (refusal, legacy function_call, ...) are not carried. An empty ``tool_calls`` list is read as none.
* JSON text is minified by DuckDB, so a round trip gives the same JSON values, not the same bytes.

Preference formats (``PREFERENCE_FORMATS``)
-------------------------------------------
``dpo``, ``kto`` and ``openai-preference`` are made of *pairs*, not of rows: two answers to one
prompt, one preferred. The rows (each a conversation whose last message is its answer) are
grouped by **prompt**: the messages before the answer, compared as JSON values with keys sorted
and null members dropped (as the ``conversations`` view compares messages), together with the
tools offered (none and an empty list are the same) (``prompt_key``). Within a prompt, the rows
are ranked by a number (``--rank-by``, higher is better; a NULL or NaN rank takes no part), and
``pairs`` makes at most one pair per prompt:

* **chosen** is the highest-ranked row, **rejected** the lowest-ranked; ties among the top (or
  among the bottom) go to the first finished, then the smallest id, so the choice is the same on
  every run;
* no pair when no row or one row has a rank, when the ranks all tie (equal ranks are no
  preference), when chosen's rank minus rejected's is below ``--min-margin`` (default: any
  positive margin), or when the two answers are the same typed message (``NO_PAIR``).

A row the format cannot hold (``drop_reason``) takes no part, as if it had no rank. What a pair
becomes:

* ``dpo`` (TRL's conversational preference type, what ``DPOTrainer`` reads): ``prompt`` (the
  messages before the answer), ``chosen`` and ``rejected`` (each a list holding the one
  assistant answer), and ``tools`` (JSON, as in ``messages``; DPOTrainer passes them to the
  chat template). Tool calls and tool results in the prompt are kept, typed as in ``messages``.
* ``kto`` (TRL's unpaired preference type, what ``KTOTrainer`` reads): two rows per pair,
  ``prompt``, ``completion`` (a list holding the answer), ``label`` (true for the chosen side,
  false for the rejected) and ``tools``.
* ``openai-preference`` (OpenAI's preference fine-tuning JSONL): ``{"input": {"messages": [...],
  "tools": [...]}, "preferred_output": [answer], "non_preferred_output": [answer]}``, messages
  written as the ``openai`` format writes them. The rows must pass OpenAI's published chat rules
  (as ``openai``) and the preference ones (``validate_openai_preference``): text only (DPO takes
  no image input), a prompt before the answer.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from curate.messages import REASONING_KEYS, typed_message_text

__all__ = [
    "ANSWER_RULES",
    "BELOW_MARGIN",
    "CONVERSATION_RULES",
    "FEATURES",
    "FORMATS",
    "JSONL_FORMATS",
    "MESSAGE_RULES",
    "MESSAGE_TYPE",
    "NO_PAIR",
    "NO_RANK",
    "ONE_RANK",
    "PREFERENCE_FORMATS",
    "PROMPT_RULES",
    "REASONING",
    "ROW_FORMATS",
    "SAME_ANSWER",
    "SCHEMAS",
    "SFT_RULES",
    "THINK",
    "TIE",
    "Invalid",
    "Rule",
    "columns",
    "convert",
    "default_reasoning",
    "drop_reason",
    "dumps",
    "first_reason",
    "message_hash",
    "message_list_json",
    "messages_from_arrow",
    "pairs",
    "prompt_key",
    "schema",
    "typed_messages",
    "validate_openai",
    "validate_openai_preference",
]

# One exported row per source row.
ROW_FORMATS = ("messages", "openai", "prompt-completion", "sharegpt", "alpaca", "catalyst")
# One exported row per pair of answers to one prompt (kto: one per side): see "Preference formats".
PREFERENCE_FORMATS = ("dpo", "kto", "openai-preference")
FORMATS = (*ROW_FORMATS, *PREFERENCE_FORMATS)
# Written as one JSON line per example, as OpenAI's and inference.net's uploads read them.
JSONL_FORMATS = ("openai", "catalyst", "openai-preference")

# What --reasoning can do with a message's reasoning; the formats with no field for it; the tags inline writes.
REASONING = ("drop", "keep", "inline")
NO_REASONING_FIELD = ("openai", "openai-preference", "sharegpt", "alpaca")
THINK = ("<think>", "</think>")


def message_hash(m: str, reasoning: str) -> str:
    """SQL: the hash of one typed message as the files hold it, by which exact duplicates and equal
    answers are found: with ``drop``, two messages that differ only in reasoning are the same."""
    return f"hash(struct_update({m}, reasoning_content := null::varchar))" if reasoning == "drop" else f"hash({m})"


def default_reasoning(fmt: str) -> str:
    """What ``fmt`` does with reasoning unless told: ``drop`` where it has no field for it, else ``keep``."""
    return "drop" if fmt in NO_REASONING_FIELD else "keep"

_TOOL_CALL = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.json_())])),
    ]
)
_PART = pa.struct(
    [
        ("type", pa.string()),
        ("text", pa.string()),
        ("image_url", pa.struct([("url", pa.string()), ("detail", pa.string())])),
    ]
)
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("content_parts", pa.list_(_PART)),
        ("tool_calls", pa.list_(_TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
_MESSAGES = pa.list_(MESSAGE_TYPE)
_MESSAGES_WITH_REASONING = pa.list_(pa.struct([*MESSAGE_TYPE, ("reasoning_content", pa.string())]))

# The columns each format writes (lineage is kept apart, in lineage.parquet).
SCHEMAS: dict[str, pa.Schema] = {
    "messages": pa.schema([("messages", _MESSAGES), ("tools", pa.json_())]),
    "openai": pa.schema([("json", pa.string())]),
    "prompt-completion": pa.schema([("prompt", _MESSAGES), ("completion", _MESSAGES), ("tools", pa.json_())]),
    "sharegpt": pa.schema([("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])))]),
    "alpaca": pa.schema(
        [("instruction", pa.string()), ("input", pa.string()), ("output", pa.string()), ("system", pa.string())]
    ),
    "catalyst": pa.schema([("json", pa.string())]),
    "dpo": pa.schema([("prompt", _MESSAGES), ("chosen", _MESSAGES), ("rejected", _MESSAGES), ("tools", pa.json_())]),
    "kto": pa.schema([("prompt", _MESSAGES), ("completion", _MESSAGES), ("label", pa.bool_()), ("tools", pa.json_())]),
    "openai-preference": pa.schema([("json", pa.string())]),
}



def schema(fmt: str, reasoning: str = "drop") -> pa.Schema:
    """``fmt``'s columns when its messages carry reasoning as ``reasoning`` says (``SCHEMAS[fmt]`` but for ``keep``)."""
    if reasoning != "keep":
        return SCHEMAS[fmt]
    return pa.schema([pa.field(f.name, _MESSAGES_WITH_REASONING) if f.type == _MESSAGES else f for f in SCHEMAS[fmt]])


# Hugging Face features, in the dataset card's YAML form, for the JSONL formats (the Parquet
# formats carry theirs in the files' schema). Each line is kept as sent: messages, tools,
# request and response decode to Python objects whatever their shapes.
FEATURES: dict[str, list[dict[str, Any]]] = {
    "openai": [{"name": "messages", "list": "json"}, {"name": "tools", "list": "json"}],
    "catalyst": [{"name": "request", "dtype": "json"}, {"name": "response", "dtype": "json"}],
    "openai-preference": [{"name": "input", "dtype": "json"}, {"name": "preferred_output", "list": "json"},
                          {"name": "non_preferred_output", "list": "json"}],
}


@dataclass
class Invalid:
    """Rows a format could not hold: ``counts`` per reason, and ``dropped`` as (id, reason) pairs."""

    counts: Counter[str] = field(default_factory=Counter)
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, row_id: str, reason: str) -> None:
        self.counts[reason] += 1
        self.dropped.append((row_id, reason))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ids(self) -> list[str]:
        return [row_id for row_id, _ in self.dropped]


def dumps(value: Any) -> str:
    """Minified UTF-8 JSON, keys in their given order: how curate writes JSON from Python."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- the SQL, stage by stage

# One json_transform parses each row's messages once. tool_calls comes out as JSON text, whose
# first character tells its type ('[' an array, 'n' null) without a second parse (json_transform
# would turn a string tool_calls into NULL). A role that is not a string is read as its JSON
# text (and fails openai's rules).
#
# Content: when every content in the row's text is a string or null (no `"content":` followed by
# anything but a quote or null, which a string's escaped quotes cannot fake), content is read as
# text by the same parse: the fast path, nearly every row. Otherwise content is read as JSON, so
# that a list of parts is told from text and a number or an object is refused.
_READ_REASONING = "".join(f',"{key}":"JSON"' for key in REASONING_KEYS)
_FAST_MESSAGE = (
    '[{"role":"VARCHAR","content":"VARCHAR","tool_calls":"JSON","tool_call_id":"VARCHAR","name":"VARCHAR"'
    + _READ_REASONING + '}]'
)
_SLOW_MESSAGE = (
    '[{"role":"VARCHAR","content":"JSON","tool_calls":"JSON","tool_call_id":"VARCHAR","name":"VARCHAR"'
    + _READ_REASONING + '}]'
)
# A message's reasoning: the first of REASONING_KEYS that holds a JSON string (curate.messages' rule).
_REASONING = "coalesce(" + ", ".join(f"case when starts_with(m.{key}, '\"') then m.{key} ->> '$' end"
                                     for key in REASONING_KEYS) + ")"
_RAW_CALLS = '[{"id":"VARCHAR","type":"VARCHAR","function":{"name":"VARCHAR","arguments":"JSON"}}]'
_RAW_PARTS = '[{"type":"VARCHAR","text":"JSON","image_url":{"url":"VARCHAR","detail":"VARCHAR"}}]'
_NOT_TEXT_CONTENT = r'"content"\s*:\s*[^"n\s]'
# A list of parts, its text read as JSON so that only a string is text: a number or an object
# would read as its JSON text, and curate.messages' rule (and so `scan pii`) counts neither.
_PARTS = f"""list_transform(json_transform(m.content, '{_RAW_PARTS}'), lambda p: struct_pack(type := p.type,
      text := case when p.type = 'text' and starts_with(p.text, '"') then p.text ->> '$' end, image_url := p.image_url))"""

# A tool call's arguments: parsed JSON (NULL when missing or when a string does not parse).
_CALLS = f"""case when starts_with(m.tool_calls, '[') and m.tool_calls <> '[]' then
      list_transform(json_transform(m.tool_calls, '{_RAW_CALLS}'), lambda c: struct_pack(
        id := c.id, type := c.type,
        function := struct_pack(name := c.function.name, arguments := case
          when not starts_with(c.function.arguments, '"') then c.function.arguments
          when json_valid(c.function.arguments ->> '$') then json(c.function.arguments ->> '$') end))) end"""


def typed_messages(col: str = "messages") -> str:
    """SQL: ``col`` (JSON text) as ``list<MESSAGE_TYPE>``; NULL unless a JSON array.

    Each message also carries ``_bad_content`` and ``_bad_calls`` flags for ``drop_reason``;
    ``columns`` leaves them out. Tool-call arguments that are missing or do not parse are NULL.
    """
    # try(): text that is not JSON reads as NULL, as does JSON that is not an array (json_transform's
    # own rule), without parsing every row twice more first (json_valid, then json_type).
    fast = f"""list_transform(try(json_transform({col}, '{_FAST_MESSAGE}')), lambda m: struct_pack(
    role := m.role, content := m.content, content_parts := null::{_PARTS_SQL},
    tool_calls := {_CALLS},
    tool_call_id := m.tool_call_id, name := m.name, reasoning_content := {_REASONING}, _bad_content := false,
    _bad_calls := left(m.tool_calls, 1) not in ('[', 'n')))"""
    slow = f"""list_transform(try(json_transform({col}, '{_SLOW_MESSAGE}')), lambda m: struct_pack(
    role := m.role,
    content := case when starts_with(m.content, '"') then m.content ->> '$' end,
    content_parts := case when starts_with(m.content, '[') then {_PARTS} end,
    tool_calls := {_CALLS},
    tool_call_id := m.tool_call_id, name := m.name, reasoning_content := {_REASONING},
    _bad_content := coalesce(left(m.content, 1) not in ('"', '[', 'n'), false),
    _bad_calls := left(m.tool_calls, 1) not in ('[', 'n')))"""
    return f"""case when regexp_matches({col}, '{_NOT_TEXT_CONTENT}') then {slow}
     else {fast} end"""


_PARTS_SQL = "struct(type varchar, text varchar, image_url struct(url varchar, detail varchar))[]"


def _any(msgs: str, predicate: str) -> str:
    return f"coalesce(list_bool_or(list_transform({msgs}, lambda m: {predicate})), false)"


_NON_TEXT = "list_bool_or(list_transform(coalesce(m.content_parts, []), lambda p: p.type <> 'text'))"
_HAS_CALLS = "m.tool_calls is not null or m.role = 'tool'"

# A rule: (SQL condition over the typed messages `t` and the tools JSON `tools`, the reason when it holds).
Rule = tuple[str, str]


def _tool_answers_nothing(*, id_required: bool) -> str:
    """SQL over ``t``: some tool message answers no tool call made before it. A tool message answers
    a call when its ``tool_call_id`` is the id of a call in an earlier message; without
    ``id_required`` (TRL's shape, where ids are optional) a tool message without a ``tool_call_id``
    answers whenever any earlier message made a call.

    Linear in the messages: the row's calls are listed once, with the message each is in, and a
    tool message looks its id up there (the first message making a call with that id must come
    before it). Reading every message before each tool message instead, as this rule first did, took
    4 s for one agent trace of 3,000 messages (0.04 s now), and 0.42 s of the 0.58 s that all of
    ``messages``' rules took over 200k conversations (0.11 s now). tests/test_formats.py holds it
    equal to that first definition."""
    calls = ("flatten(list_transform(range(1, len(t) + 1), lambda i: list_transform(coalesce(t[i].tool_calls, []), "
             "lambda c: struct_pack(id := c.id, at := i))))")
    made = (f"list_transform([{calls}], lambda cs: struct_pack(ids := list_transform(cs, lambda c: c.id), "
            "at := list_transform(cs, lambda c: c.at), "
            "first := coalesce(list_position(list_transform(t, lambda m: m.tool_calls is not null), true), len(t) + 1)))[1]")
    answered = "coalesce(k.at[list_position(k.ids, t[i].tool_call_id)] < i, false)"
    unanswered = (f"t[i].tool_call_id is null or not {answered}" if id_required
                  else f"i <= k.first or (t[i].tool_call_id is not null and not {answered})")
    return (f"list_transform([{made}], lambda k: coalesce(list_bool_or(list_transform(range(1, len(t) + 1), "
            f"lambda i: t[i].role = 'tool' and ({unanswered}))), false))[1]")

_UNKNOWN_ROLE: Rule = (_any("t", "m.role not in ('system', 'developer', 'user', 'assistant', 'tool')"),
                       "role is not one of system, developer, user, assistant, tool")
_CALLS_OFF_ASSISTANT: Rule = (_any("t", "m.tool_calls is not null and m.role <> 'assistant'"),
                              "tool_calls is only allowed on assistant messages")

# Each format's own rules, after the common ones, as (condition over the typed `t`, reason).
_OPENAI_RULES: list[tuple[str, str]] = [
    _UNKNOWN_ROLE,
    (_any("t", "m.role = 'assistant' and m.content is null and m.content_parts is null and m.tool_calls is null"),
     "content is null or missing outside an assistant tool call"),
    (_any("t", "m.content_parts is not null and m.role <> 'user'"), "content parts are only allowed in user messages"),
    _CALLS_OFF_ASSISTANT,
    (_any("t", "list_bool_or(list_transform(coalesce(m.tool_calls, []), lambda c: coalesce(c.id, '') = ''))"),
     "tool call has no id"),
    (_any("t", "list_bool_or(list_transform(coalesce(m.tool_calls, []), lambda c: c.type is distinct from 'function'))"),
     'tool call type is not "function"'),
    # Each tool message names a call made by an assistant message before it.
    (_tool_answers_nothing(id_required=True), "tool message does not answer an earlier tool call"),
    (("tools is not null and not coalesce(list_bool_and(list_transform(json_extract(tools, '$[*]'), lambda d: "
      "coalesce(d ->> '$.type' = 'function' and json_type(d, '$.function.name') = 'VARCHAR' "
      "and d ->> '$.function.name' <> '', false))), true)"),
     "tools must be a list of function definitions with a name"),
]

# A preference pair needs a prompt: the messages before the answer.
_PROMPT_RULE = ("len(t) < 2", "no prompt before the answer")

_RULES: dict[str, list[tuple[str, str]]] = {
    "messages": [],
    "openai": [(cond, f"openai: {reason}") for cond, reason in _OPENAI_RULES],
    "prompt-completion": [_PROMPT_RULE],
    "sharegpt": [
        (_any("t", _HAS_CALLS), "tool calls do not fit sharegpt"),
        (_any("t", "m.role not in ('system', 'developer', 'user', 'assistant')"), "role does not fit sharegpt"),
        (_any("t", _NON_TEXT), "non-text content does not fit sharegpt"),
    ],
    "alpaca": [
        (_any("t", _HAS_CALLS), "tool calls do not fit alpaca"),
        (("list_transform(list_filter(t, lambda m: m.role not in ('system', 'developer')), lambda m: m.role) "
          "<> ['user', 'assistant'] or (len(t) = 3 and t[1].role not in ('system', 'developer'))"),
         "not a single turn: does not fit alpaca"),
        (_any("t", _NON_TEXT), "non-text content does not fit alpaca"),
    ],
    "catalyst": [],
    "dpo": [_PROMPT_RULE],
    "kto": [_PROMPT_RULE],
    "openai-preference": [
        _PROMPT_RULE,
        *[(cond, f"openai-preference: {reason}") for cond, reason in _OPENAI_RULES],
        # "DPO is currently only supported for text inputs and outputs" (OpenAI's DPO guide).
        (_any("t", _NON_TEXT), "openai-preference: image content (preference fine-tuning takes text only)"),
    ],
}

_NOT_A_LIST: Rule = ("t is null or len(t) = 0", "messages is not a non-empty JSON array")
_NO_ROLE: Rule = (_any("t", "m.role is null"), "message without a role")
_BAD_CONTENT: Rule = (_any("t", "m._bad_content"), "content is neither text nor parts")
_CALLS_NOT_LIST: Rule = (_any("t", "coalesce(m._bad_calls, false)"), "tool_calls is not a list")
_NO_FUNCTION_NAME: Rule = (_any("t", "list_bool_or(list_transform(coalesce(m.tool_calls, []), lambda c: c.function.name is null))"),
                           "tool call without a function name")
# typed_messages leaves NULL arguments where they were missing or did not parse.
_BAD_ARGUMENTS: Rule = (
    _any("t", "list_bool_or(list_transform(coalesce(m.tool_calls, []), lambda c: c.function.arguments is null))"),
    "tool call arguments are not valid JSON")
_TOOLS_NOT_ARRAY: Rule = ("tools is not null and (not json_valid(tools) or json_type(tools) <> 'ARRAY')",
                          "tools is not a JSON array")
_EMPTY_ANSWER: Rule = ("t[-1].tool_calls is null and coalesce(t[-1].content, '') = '' and t[-1].content_parts is null",
                       "empty answer")

# The rules every format shares, in the order a row is tested (its first failure is its reason).
_COMMON: list[tuple[str, str]] = [
    _NOT_A_LIST,
    _NO_ROLE,
    _BAD_CONTENT,
    (_any("t", "list_bool_or(list_transform(coalesce(m.content_parts, []), lambda p: "
                "not coalesce((p.type = 'text' and p.text is not null) or (p.type = 'image_url' and p.image_url.url is not null), false)))"),
     "unsupported content part"),
    _CALLS_NOT_LIST,
    _NO_FUNCTION_NAME,
    _BAD_ARGUMENTS,
    _TOOLS_NOT_ARRAY,
    ("t[-1].role <> 'assistant'", "last message is not an assistant answer"),
    _EMPTY_ANSWER,
]


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def drop_reason(fmt: str) -> str:
    """SQL: why a row (typed messages ``t``, tools JSON ``tools``) does not fit ``fmt``; NULL if it fits.

    The common rules first, then the format's own; a row's first failure is its reason.
    """
    _check(fmt)
    return first_reason([*_COMMON, *_RULES[fmt]])


def first_reason(rules: Sequence[Rule]) -> str:
    """SQL: the reason of the first of ``rules`` whose condition holds; NULL when none does."""
    whens = "\n".join(f"  when {cond} then '{reason}'" for cond, reason in rules)
    return f"case\n{whens}\nend"


# ---------------------------------------------------------------- what a trainer reads (curate validate)

# What a trainer needs of the messages it reads (TRL's conversational dataset types, rendered by a
# chat template), whoever wrote the dataset: the rules above that hold for every list of messages,
# and these. They take the shape of a tool call as TRL's dataset guide shows it: an id is optional
# (its example has none, and answers by the tool's name), so a tool message must follow an assistant
# tool call and, when it names a call (tool_call_id), name one made before it. OpenAI's rules, which
# need ids, are `validate_openai`'s.
_TOOL_ANSWERS_NOTHING: Rule = (_tool_answers_nothing(id_required=False), "tool message does not answer an earlier tool call")
# What curate writes for TRL must pass what `curate validate` checks of it: the formats a trainer
# reads as conversations also drop a row with an unknown role, a tool call off an assistant turn,
# or a tool message answering nothing, and, where there is a prompt (all but the answer), one
# whose prompt ends in a role a chat template refuses (tests/test_validate.py holds them together).
_ANSWERED_PROMPT_END: Rule = ("len(t) > 1 and t[-2].role not in ('user', 'tool', 'assistant')",
                              "the prompt does not end with a user, tool or assistant message")
for _fmt in ("messages", "prompt-completion", "dpo", "kto"):
    _RULES[_fmt] += [_UNKNOWN_ROLE, _CALLS_OFF_ASSISTANT, _TOOL_ANSWERS_NOTHING]
for _fmt in ("prompt-completion", "dpo", "kto"):
    _RULES[_fmt].append(_ANSWERED_PROMPT_END)

# SFT trains on the assistant turns: a conversation with none teaches nothing (and TRL's
# assistant_only_loss stops on it).
_NO_ASSISTANT: Rule = ("not " + _any("t", "m.role = 'assistant'"), "no assistant message")
# TRL's apply_chat_template continues a prompt ending with an assistant message, adds the
# generation prompt after a user or tool message, and refuses any other last role.
_PROMPT_END: Rule = ("t[-1].role not in ('user', 'tool', 'assistant')",
                     "the prompt does not end with a user, tool or assistant message")
# What a prompt is answered with (completion, chosen, rejected): assistant turns, with the tool
# results between them, from an assistant message to an assistant message.
_ASSISTANT_TURNS: Rule = (
    "len(t) = 0 or t[1].role <> 'assistant' or t[-1].role <> 'assistant' or "
    + _any("t", "m.role not in ('assistant', 'tool')"),
    "not a list of assistant messages")

# Every list of messages (messages, prompt, completion, chosen, rejected), in this order.
MESSAGE_RULES: tuple[Rule, ...] = (_NOT_A_LIST, _NO_ROLE, _UNKNOWN_ROLE, _BAD_CONTENT, _CALLS_NOT_LIST,
                                   _CALLS_OFF_ASSISTANT, _NO_FUNCTION_NAME, _BAD_ARGUMENTS)
# A whole conversation (the prompt and one answer together) and the tools it was offered.
CONVERSATION_RULES: tuple[Rule, ...] = (_TOOLS_NOT_ARRAY, _TOOL_ANSWERS_NOTHING)
# A conversation trained on whole (TRL's language-modeling type, `messages`).
SFT_RULES: tuple[Rule, ...] = (_NO_ASSISTANT,)
# A prompt (prompt-completion, preference, unpaired preference).
PROMPT_RULES: tuple[Rule, ...] = (_PROMPT_END,)
# An answer to a prompt: completion, chosen, rejected.
ANSWER_RULES: tuple[Rule, ...] = (_ASSISTANT_TURNS, _EMPTY_ANSWER)


def message_list_json(col: str, fields: Sequence[str]) -> str:
    """SQL: the JSON text of ``col``, a list of messages as a dataset holds them (structs with
    ``fields``), shaped as OpenAI's API sends messages, which ``typed_messages`` reads: a message
    typed as the ``messages`` format types it has its ``content_parts`` back in ``content``. Other
    fields are kept as they are; JSON fields (tool-call arguments) stay JSON values."""
    if "content_parts" not in fields:
        return f"to_json({col})::varchar"

    def name(field: str) -> str:
        return '"' + field.replace('"', '""') + '"'

    kept = [f"{name(f)} := m.{name(f)}" for f in fields if f not in ("content", "content_parts")]
    text = "to_json(m.content)" if "content" in fields else "null::json"
    content = f"content := case when m.content_parts is not null then to_json(m.content_parts) else {text} end"
    return f"to_json(list_transform({col}, lambda m: struct_pack({', '.join([*kept, content])})))::varchar"


# ---------------------------------------------------------------- output columns per format

# A typed message as an OpenAI request body carries it: null members left out (an assistant's
# content beside its tool calls too), arguments as JSON strings.
def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _think(m: str, think: tuple[str, str]) -> str:
    """SQL: ``m``'s reasoning between the think tags, then a blank line (NULL when it has none)."""
    return f"({_sql_text(think[0])} || chr(10) || {m}.reasoning_content || chr(10) || {_sql_text(think[1])} || chr(10) || chr(10))"


def _content(m: str, reasoning: str, think: tuple[str, str]) -> str:
    """SQL: ``m``'s content as exported: with ``inline``, its reasoning first (not into a list of parts)."""
    if reasoning != "inline":
        return f"{m}.content"
    return (f"case when {m}.reasoning_content is not null and {m}.content_parts is null "
            f"then {_think(m, think)} || coalesce({m}.content, '') else {m}.content end")


def _text(m: str, reasoning: str, think: tuple[str, str]) -> str:
    """SQL: ``m``'s text (sharegpt, alpaca): with ``inline``, its reasoning first."""
    if reasoning != "inline":
        return typed_message_text(m)
    return f"coalesce({_think(m, think)}, '') || {typed_message_text(m)}"


def _plain(m: str, *, empty_content: bool, reasoning: str = "drop", think: tuple[str, str] = THINK) -> str:
    content = f"coalesce({_content(m, reasoning, think)}, '')" if empty_content else _content(m, reasoning, think)
    kept = f",\n    reasoning_content := {m}.reasoning_content" if reasoning == "keep" else ""
    return f"""json_strip_nulls(to_json(struct_pack(
    role := {m}.role,
    content := case when {m}.content_parts is not null then to_json(list_transform({m}.content_parts, lambda p:
        case when p.type = 'text' then to_json(struct_pack(type := p.type, text := p.text))
             else json_strip_nulls(to_json(struct_pack(type := p.type, image_url := p.image_url))) end))
      when {m}.role = 'assistant' and {m}.tool_calls is not null then to_json({_content(m, reasoning, think)})
      else to_json({content}) end,
    tool_calls := list_transform({m}.tool_calls, lambda c: struct_pack(id := c.id, type := c.type,
        function := struct_pack(name := c.function.name, arguments := c.function.arguments::varchar))),
    tool_call_id := {m}.tool_call_id,
    name := {m}.name{kept})))"""


def _json_list(items: str, each: str) -> str:
    return f"('[' || array_to_string(list_transform({items}, lambda m: {each}), ',') || ']')"


# The typed messages without the flags typed_messages adds for drop_reason, their reasoning as
# ``reasoning`` says (a field only for keep).
def _clean(msgs: str, reasoning: str = "drop", think: tuple[str, str] = THINK) -> str:
    kept = ", reasoning_content := m.reasoning_content" if reasoning == "keep" else ""
    return (f"list_transform({msgs}, lambda m: struct_pack(role := m.role, content := {_content('m', reasoning, think)}, "
            "content_parts := m.content_parts, tool_calls := m.tool_calls, tool_call_id := m.tool_call_id, "
            f"name := m.name{kept}))")


def columns(fmt: str, reasoning: str | None = None, think: tuple[str, str] = THINK) -> dict[str, str]:
    """SQL per output column of ``fmt``, over typed messages ``t``, ``tools`` JSON, ``model`` and
    ``finish_reason`` (NULL when the source has none). Arrow types as in ``schema(fmt, reasoning)``
    once cast (DuckDB gives JSON as text). ``reasoning``: ``REASONING``, default the format's
    (``default_reasoning``); ``keep`` where the format has no field for it is a ValueError.

    The preference formats read one pair (``dpo``, ``openai-preference``) or one side of it
    (``kto``): ``t`` is the chosen row's typed messages (kto: the side's), ``rejected_t`` the
    rejected row's, ``label`` the side's label (kto), ``tools`` the prompt's."""
    _check(fmt)
    mode = reasoning or default_reasoning(fmt)
    if mode not in REASONING:
        raise ValueError(f"reasoning must be one of {', '.join(REASONING)}, not {mode!r}")
    if mode == "keep" and fmt in NO_REASONING_FIELD:
        raise ValueError(f"--format {fmt} has no field for reasoning: --reasoning inline writes it into the content")
    clean = _clean("t", mode, think)

    def plain(m: str, empty_content: bool) -> str:
        return _plain(m, empty_content=empty_content, reasoning=mode, think=think)

    if fmt == "dpo":
        return {"prompt": f"{clean}[1:-2]", "chosen": f"{clean}[-1:]",
                "rejected": f"{_clean('rejected_t', mode, think)}[-1:]", "tools": "tools"}
    if fmt == "kto":
        return {"prompt": f"{clean}[1:-2]", "completion": f"{clean}[-1:]", "label": "label", "tools": "tools"}
    if fmt == "openai-preference":
        messages = _json_list("t[1:-2]", plain("m", True))
        return {"json": (f"'{{\"input\":{{\"messages\":' || {messages} || "
                         "coalesce(',\"tools\":' || nullif(tools::varchar, '[]'), '') || "
                         f"'}},\"preferred_output\":[' || {plain('t[-1]', True)} || "
                         f"'],\"non_preferred_output\":[' || {plain('rejected_t[-1]', True)} || ']}}'")}
    if fmt == "messages":
        return {"messages": clean, "tools": "tools"}
    if fmt == "prompt-completion":
        return {"prompt": f"{clean}[1:-2]", "completion": f"{clean}[-1:]", "tools": "tools"}
    if fmt == "sharegpt":
        return {"conversations": "list_transform(t, lambda m: struct_pack(\"from\" := case m.role when 'user' then "
                                 "'human' when 'assistant' then 'gpt' else 'system' end, value := "
                                 f"{_text('m', mode, think)}))"}
    if fmt == "alpaca":
        return {
            "instruction": typed_message_text("list_filter(t, lambda m: m.role = 'user')[1]"),
            "input": "''",
            "output": _text("t[-1]", mode, think),
            "system": f"case when t[1].role in ('system', 'developer') then {typed_message_text('t[1]')} end",
        }
    if fmt == "openai":
        messages = _json_list("t", plain("m", True))
        # An empty tools list says no more than none, and stricter validators refuse it: left out.
        return {"json": f"'{{\"messages\":' || {messages} || coalesce(',\"tools\":' || nullif(tools::varchar, '[]'), '') || '}}'"}
    # catalyst: {"request": {model, messages, tools}, "response": {choices: [{index, message, finish_reason}], model}}
    request = (f"'{{' || coalesce('\"model\":' || to_json(model) || ',', '') || '\"messages\":' || "
               f"{_json_list('t[1:-2]', plain('m', False))} || coalesce(',\"tools\":' || tools, '') || '}}'")
    response = (f"'{{\"choices\":[{{\"index\":0,\"message\":' || {plain('t[-1]', False)} || "
                "coalesce(',\"finish_reason\":' || to_json(finish_reason), '') || '}]' || "
                "coalesce(',\"model\":' || to_json(model), '') || '}'")
    return {"json": f"'{{\"request\":' || {request} || ',\"response\":' || {response} || '}}'"}


# ---------------------------------------------------------------- preference pairs

# Why a prompt makes no pair, in the order they are tested.
NO_RANK = "no answer has a rank"
ONE_RANK = "only one answer has a rank"
TIE = "the ranked answers tie"
BELOW_MARGIN = "margin below --min-margin"
SAME_ANSWER = "the chosen and rejected answers are the same"
NO_PAIR = (NO_RANK, ONE_RANK, TIE, BELOW_MARGIN, SAME_ANSWER)


def _canonical(json_text: str) -> str:
    # As the conversations view compares messages: keys sorted at every depth, null members dropped.
    return f"json_normalize(json_strip_nulls({json_text}))"


def prompt_key(messages: str, tools: str) -> str:
    """SQL: the key of a row's prompt (md5, 32 hex digits): its messages before the answer, as JSON
    values with keys sorted and null members dropped (``messages``: JSON text of the whole
    conversation, the answer last), and the tools offered (``tools``: JSON text; none and ``[]``
    are the same). NULL unless ``messages`` is a JSON array. Two rows answer the same prompt
    when their keys are equal."""
    return f"""case when json_valid({messages}) and json_type({messages}) = 'ARRAY' then md5(
      to_json(json_extract({_canonical(messages)}, '$[*]')[1:-2])::varchar || chr(30) ||
      coalesce(case when json_valid({tools}) then nullif({_canonical(tools)}, '[]') end, '')) end"""


def pairs(rows: str, min_margin: float | None) -> str:
    """SQL: each prompt of ``rows`` and the pair it makes, if any (see "Preference formats").

    ``rows`` is a table or a query with one row per answer: ``rid`` (a number naming it),
    ``prompt_key``, ``rank`` (any number; NULL or NaN: no part), ``finished_at``, ``id`` and
    ``content_hash`` (equal for equal answers to one prompt). One row per prompt: ``prompt_key``,
    ``answers``, ``ranked``, ``chosen_rid``, ``rejected_rid``, ``chosen_rank``, ``rejected_rank``
    (doubles) and ``no_pair``: NULL when the prompt makes a pair, else the first of ``NO_PAIR``
    that holds. ``min_margin`` None: any positive margin makes a pair."""
    if min_margin is not None and not (math.isfinite(min_margin) and min_margin > 0):
        raise ValueError(f"min_margin must be a positive number, not {min_margin!r}")
    margin = "" if min_margin is None else f"when chosen_rank - rejected_rank < {float(min_margin)!r} then '{BELOW_MARGIN}'"
    # The top and the bottom, ties to the first finished, then the smallest id (then rid: a total order).
    top = "order by rank desc, finished_at asc nulls last, id, rid) filter (where rank is not null)"
    bottom = "order by rank asc, finished_at asc nulls last, id, rid) filter (where rank is not null)"
    return f"""
select prompt_key, answers, ranked, chosen_rid, rejected_rid, chosen_rank, rejected_rank,
       case when ranked = 0 then '{NO_RANK}'
            when ranked = 1 then '{ONE_RANK}'
            when chosen_rank = rejected_rank then '{TIE}'
            {margin}
            when chosen_content = rejected_content then '{SAME_ANSWER}'
       end as no_pair
from (
    select prompt_key, count(*) as answers, count(rank) as ranked,
           first(rid {top} as chosen_rid, first(rid {bottom} as rejected_rid,
           max(rank) as chosen_rank, min(rank) as rejected_rank,
           first(content_hash {top} as chosen_content, first(content_hash {bottom} as rejected_content
    from (select rid, prompt_key, nullif(rank::double, 'nan'::double) as rank, finished_at, id, content_hash
          from ({rows}) as answers) as answers
    group by prompt_key) as prompts"""


# ---------------------------------------------------------------- one batch, for tests and notebooks


def convert(batch: pa.RecordBatch | pa.Table, fmt: str, *, min_margin: float | None = None,
            reasoning: str = "drop", think: tuple[str, str] = THINK) -> tuple[pa.Table, Invalid]:
    """Convert rows with ``id``, ``messages`` (JSON text) and optionally ``tools``, ``model`` and
    ``finish_reason`` to ``fmt``; rows keep their order.

    Returns the rows that fit (``id`` first, then ``schema(fmt, reasoning)``) and the ones dropped,
    with the reason of each. The same SQL as ``curate export``, in a private in-memory DuckDB.
    ``reasoning`` and ``think`` as ``--reasoning`` and its tags (here ``drop`` unless asked).

    A preference format (``PREFERENCE_FORMATS``) pairs the rows first (``pairs``), ranked by their
    ``rank`` column (none: no row is ranked, so no pair), ties broken by ``finished_at`` (when
    given) then id; ``min_margin`` as ``--min-margin``. A row out is then a pair (kto: a side),
    its ``id`` the chosen row's (kto: the side's), in the order of the chosen rows. The dropped
    rows are the ones the format cannot hold; rows that only made no pair are in neither.
    """
    _check(fmt)
    names = batch.schema.names
    optional = ", ".join(
        f"{name}::varchar as {name}" if name in names else f"null::varchar as {name}" for name in ("tools", "model", "finish_reason")
    )
    src = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    con = duckdb.connect()
    try:
        con.register("src", src)
        cols = columns(fmt, reasoning, think)
        if fmt in PREFERENCE_FORMATS:
            rows = _convert_pairs(con, fmt, names, optional, min_margin, cols, reasoning)
        else:
            rows = con.sql(f"""
            with r as (select row_number() over () as n, id, {typed_messages("messages")} as t, {optional} from src),
                 d as (select *, {drop_reason(fmt)} as reason from r)
            select id, reason, {", ".join(f'{expr} as "{name}"' for name, expr in cols.items())}
            from d order by n""").to_arrow_table()
    finally:
        con.close()
    invalid = Invalid()
    for row_id, reason in zip(rows.column("id").to_pylist(), rows.column("reason").to_pylist(), strict=True):
        if reason is not None:
            invalid.add(row_id, reason)
    kept = rows.filter(rows.column("reason").is_null()).drop_columns(["reason"])
    out = pa.schema([pa.field("id", pa.string()), *schema(fmt, reasoning)])
    return kept.select(out.names).cast(out), invalid


def _convert_pairs(con: duckdb.DuckDBPyConnection, fmt: str, names: list[str], optional: str,
                   min_margin: float | None, columns: dict[str, str], reasoning: str) -> pa.Table:
    """``convert`` for a preference format: the rows dropped (with their reason, columns NULL), then
    the pairs (reason NULL)."""
    rank = "rank" if "rank" in names else "null::double"
    finished = "finished_at" if "finished_at" in names else "null::timestamptz"
    cols = ", ".join(f'{expr} as "{name}"' for name, expr in columns.items())
    nulls = ", ".join(f'null as "{name}"' for name in columns)
    kto = "true" if fmt == "kto" else "false"
    answers = "select n as rid, prompt_key, rank, finished_at, id, content_hash from d where reason is null"
    return con.sql(f"""
        with r as (select row_number() over () as n, id, {typed_messages("messages")} as t, {optional},
                          messages::varchar as messages_text, {rank} as rank, {finished} as finished_at from src),
             d as (select *, {drop_reason(fmt)} as reason, {prompt_key("messages_text", "tools")} as prompt_key,
                          hash(list_transform(t, lambda m: {message_hash("m", reasoning)}), tools) as content_hash
                   from r),
             p as ({pairs(answers, min_margin)}),
             sides as (
                 select p.chosen_rid as pair, 0 as side, c.id, c.t, j.t as rejected_t, c.tools, c.model,
                        c.finish_reason, true as label
                 from p join d c on c.n = p.chosen_rid join d j on j.n = p.rejected_rid where p.no_pair is null
                 union all
                 select p.chosen_rid, 1, j.id, j.t, null, j.tools, j.model, j.finish_reason, false
                 from p join d j on j.n = p.rejected_rid where p.no_pair is null and {kto})
        select * from (select 0 as part, n as pair, 0 as side, id, reason, {nulls} from d where reason is not null
                       union all by name
                       select 1 as part, pair, side, id, null as reason, {cols} from sides)
        order by part, pair, side""").to_arrow_table().drop_columns(["part", "pair", "side"])


# ---------------------------------------------------------------- reading formats back


def _arguments(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _plain_py(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message["role"]}
    parts = message.get("content_parts")
    if parts is not None:
        out["content"] = [
            {"type": "text", "text": p["text"]}
            if p["type"] == "text"
            else {"type": p["type"], "image_url": {k: v for k, v in (p["image_url"] or {}).items() if v is not None}}
            for p in parts
        ]
    else:
        out["content"] = message.get("content")
    if message.get("tool_calls") is not None:
        out["tool_calls"] = [
            {
                "id": c["id"],
                "type": c["type"],
                "function": {"name": c["function"]["name"], "arguments": dumps(_arguments(c["function"]["arguments"]))},
            }
            for c in message["tool_calls"]
        ]
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def messages_from_arrow(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rebuild OpenAI chat messages from a ``messages`` value (``MESSAGE_TYPE`` items as dicts,
    e.g. a row of a loaded dataset): ``content`` always (a string, null, or the list of parts),
    the other keys only when set, tool-call arguments as minified JSON strings."""
    return [_plain_py(m) for m in messages]


# ---------------------------------------------------------------- OpenAI's fine-tuning rules

_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")
_OPENAI_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "weight")
_OPENAI_TOP_KEYS = ("messages", "tools", "parallel_tool_calls")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _function_tools(tools: Any) -> bool:
    return isinstance(tools, list) and all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        and bool(t["function"]["name"])
        for t in tools
    )


def validate_openai(example: Mapping[str, Any]) -> list[str]:
    """The problems OpenAI's chat fine-tuning checks would find in one JSONL example; [] if none.

    Rules: the example is ``{"messages": [...], "tools"?: [...], "parallel_tool_calls"?}``; each
    message is an object with a role in system/developer/user/assistant/tool and no other keys than
    role, content, name, tool_calls, tool_call_id, weight; content is a string (a list of parts is
    allowed for user messages), null only for an assistant message with tool_calls; at least one
    assistant message; ``weight`` only on assistant messages and 0 or 1; each tool call has a
    non-empty string ``id``, ``type == "function"``, a ``function.name`` and a ``function.arguments``
    string that parses as JSON; each tool message has a ``tool_call_id`` naming a call made by an
    earlier assistant message; tools are function definitions with a name.
    Each problem is a fixed sentence (no positions), so problems can be counted as reasons. The
    export's SQL (``drop_reason("openai")``) applies the same rules; a test holds them together.
    """
    errors: list[str] = []

    def err(text: str) -> None:
        if text not in errors:
            errors.append(text)

    if not isinstance(example, Mapping):
        return ["example is not an object"]
    for key in example:
        if key not in _OPENAI_TOP_KEYS:
            err(f"unexpected top-level key {key}")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*errors, "messages is missing or empty"]
    tools = example.get("tools")
    if tools is not None and not _function_tools(tools):
        err("tools must be a list of function definitions with a name")
    call_ids: set[str] = set()
    assistants = 0
    for m in messages:
        if not isinstance(m, dict):
            err("message is not an object")
            continue
        role = m.get("role")
        if role not in _OPENAI_ROLES:
            err("role is not one of system, developer, user, assistant, tool")
        for key in m:
            if key not in _OPENAI_MESSAGE_KEYS:
                err(f"unexpected message key {key}")
        if role == "assistant":
            assistants += 1
        content = m.get("content")
        calls = m.get("tool_calls")
        if content is None:
            if not (role == "assistant" and calls):
                err("content is null or missing outside an assistant tool call")
        elif isinstance(content, list):
            if role != "user":
                err("content parts are only allowed in user messages")
        elif not isinstance(content, str):
            err("content is not a string")
        if "weight" in m:
            if role != "assistant":
                err("weight is only allowed on assistant messages")
            elif m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                err("weight must be 0 or 1")
        if calls is not None:
            if role != "assistant":
                err("tool_calls is only allowed on assistant messages")
            if not isinstance(calls, list) or not calls:
                err("tool_calls must be a non-empty list")
                calls = []
            for call in calls:
                if not isinstance(call, dict):
                    err("tool call is not an object")
                    continue
                if not isinstance(call.get("id"), str) or not call["id"]:
                    err("tool call has no id")
                else:
                    call_ids.add(call["id"])
                if call.get("type") != "function":
                    err('tool call type is not "function"')
                fn = call.get("function")
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                    err("tool call has no function name")
                    continue
                args = fn.get("arguments")
                if not isinstance(args, str):
                    err("tool call arguments are not a JSON string")
                elif not _is_json(args):
                    err("tool call arguments do not parse as JSON")
        if role == "tool":
            answered = m.get("tool_call_id")
            if not isinstance(answered, str) or answered not in call_ids:
                err("tool message does not answer an earlier tool call")
    if assistants == 0:
        err("no assistant message")
    return errors


# ---------------------------------------------------------------- OpenAI's preference fine-tuning rules

_PREFERENCE_TOP_KEYS = ("input", "preferred_output", "non_preferred_output")
_PREFERENCE_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
_OUTPUT_MESSAGE_KEYS = ("role", "content", "name", "tool_calls")
_PREFERENCE_OUTPUTS = ("preferred_output", "non_preferred_output")


def validate_openai_preference(example: Mapping[str, Any]) -> list[str]:
    """The problems OpenAI's preference (DPO) fine-tuning checks would find in one JSONL example; [] if none.

    Rules, from OpenAI's DPO guide and its API reference's preference input object: the example is
    ``{"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
    "preferred_output": [message], "non_preferred_output": [message]}`` and nothing more; each
    output is a list of exactly one assistant message (keys role, content, name, tool_calls), the
    last assistant message of a one-turn example, its content text (or null beside tool calls);
    the input's messages, each followed by either output, obey the chat fine-tuning rules
    (``validate_openai``), except that ``weight`` belongs to supervised examples only; text only
    ("DPO is currently only supported for text inputs and outputs"): no image parts. And curate's
    own rule, a pair of equal answers teaching nothing: the two outputs differ.
    Each problem is a fixed sentence, so problems can be counted as reasons; the export's SQL
    (``drop_reason("openai-preference")``) applies the same rules, and a test holds them together.
    """
    errors: list[str] = []

    def err(text: str) -> None:
        if text not in errors:
            errors.append(text)

    if not isinstance(example, Mapping):
        return ["example is not an object"]
    for key in example:
        if key not in _PREFERENCE_TOP_KEYS:
            err(f"unexpected top-level key {key}")
    given = example.get("input")
    if not isinstance(given, Mapping):
        return [*errors, "input is missing or not an object"]
    for key in given:
        if key not in _PREFERENCE_INPUT_KEYS:
            err(f"unexpected input key {key}")
    if "parallel_tool_calls" in given and not isinstance(given["parallel_tool_calls"], bool):
        err("parallel_tool_calls must be true or false")
    messages = given.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*errors, "input.messages is missing or empty"]
    outputs = []
    for name in _PREFERENCE_OUTPUTS:
        output = example.get(name)
        if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
            err(f"{name} must be a list of one message")
            continue
        message = output[0]
        outputs.append(message)
        if message.get("role") != "assistant":
            err(f"{name} is not an assistant message")
        for key in message:
            if key not in _OUTPUT_MESSAGE_KEYS:
                err(f"{name}: unexpected message key {key}")
        content = message.get("content")
        if not (isinstance(content, str) or (content is None and message.get("tool_calls"))):
            err(f"{name}: content is not text")
        chat = {"messages": [*messages, message], **({"tools": given["tools"]} if "tools" in given else {})}
        for problem in validate_openai(chat):
            err(problem)
    for m in messages:
        if isinstance(m, dict) and "weight" in m:
            err("weight is only allowed in supervised examples")
    for m in [*messages, *outputs]:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            err("image content (preference fine-tuning takes text only)")
    if len(outputs) == 2 and outputs[0] == outputs[1]:
        err("preferred and non-preferred outputs are the same")
    return errors
