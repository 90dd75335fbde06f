"""Prompts from stored traffic: the rows of a SOURCE, each conversation cut into prompt and answer.

``curate sample`` and ``curate judge`` both start here. A SOURCE is a view or a SELECT (as for
``curate export``) with ``id`` and ``messages`` (a JSON array of chat messages whose last one is
normally the answer) and, when it has them, ``tools``. Its rows are unloaded once to a Parquet
file beside the store (the store is held only for that copy), in id order, and read back one
batch at a time, as often as the caller needs: a request set is checked in full before the
first is sent, then read again to send.

What a prompt is: the row's messages before its final answer (system, user, earlier assistant
turns, tool calls and tool results, as the original request sent them); when the last message
is not an assistant's, the row holds no answer and all its messages are the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UsageError
from curate.messages import loads_first_wins, message_text
from curate.store import QueryError, ReadableStore, source_query

__all__ = ["SAMPLE_TASK", "Row", "render", "source_rows", "split_answer"]

SAMPLE_TASK = "sample"  # metadata.curate_task of the requests curate sample makes


@dataclass(frozen=True)
class Row:
    """One SOURCE row: its id, its messages cut into prompt and answer, and its tools (or None)."""

    id: str
    prompt: list[dict[str, Any]]
    answer: dict[str, Any] | None
    tools: list[Any] | None


def split_answer(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``(prompt, answer)``: the messages before a final assistant message, and that message (None
    when the last message is not an assistant's: then every message is the prompt)."""
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1]
    return messages, None


def _row(id_: str | None, messages_text: str | None, tools_text: str | None) -> Row:
    if id_ is None:
        raise UsageError("SOURCE has a row whose id is NULL: each row must be one generation, named by its id")
    try:
        messages = loads_first_wins(messages_text) if messages_text is not None else None
    except ValueError as exc:
        raise UsageError(f"SOURCE row {id_}: messages is not JSON ({exc})") from None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise UsageError(f"SOURCE row {id_}: messages is not a JSON array of message objects")
    prompt, answer = split_answer(messages)
    if not prompt:
        raise UsageError(f"SOURCE row {id_}: no prompt (its messages hold only an answer)")
    try:
        tools = loads_first_wins(tools_text) if tools_text else None
    except ValueError as exc:
        raise UsageError(f"SOURCE row {id_}: tools is not JSON ({exc})") from None
    if tools is not None and (not isinstance(tools, list) or not all(
            isinstance(t, dict) and (t.get("type") != "function" or isinstance(t.get("function"), dict)) for t in tools)):
        raise UsageError(f"SOURCE row {id_}: tools is not a JSON array of tool objects (a function tool needs a "
                         "\"function\" object)")
    return Row(id_, prompt, answer, tools or None)


@contextmanager
def source_rows(store: ReadableStore, source: str, where: str | None = None, *,
                include_samples: bool = False) -> Iterator[Callable[[], Iterator[Row]]]:
    """Unload SOURCE's rows (``where``: a SQL condition over its columns) and yield a function that
    reads them, in id order, each call from the start. The file is removed on exit.

    Refuses, before anything else, a SOURCE without ``id`` or ``messages``, one that lists an id
    twice (each row is one generation) and a SOURCE or ``where`` DuckDB cannot run (exit 2, as a
    bad argument). Rows ``curate sample`` asked a teacher for are not prompts of their own (their
    prompt is their source row's), so they are left out unless ``include_samples``."""
    query = source_query(source)
    try:
        columns = store.arrow(f"select * from ({query}) as source limit 0").column_names
    except QueryError as exc:
        raise UsageError(f"SOURCE: {exc}") from None
    missing = [name for name in ("id", "messages") if name not in columns]
    if missing:
        raise UsageError(f"SOURCE has no column {' or '.join(missing)}: it needs id and messages (as the chat and "
                         f"conversations views have); it has {', '.join(columns) or 'no columns'}")
    tools = "source.tools::varchar" if "tools" in columns else "null::varchar"
    conditions = [f"coalesce(({where}), false)"] if where else []
    if "metadata" in columns and not include_samples:
        conditions.append(f"coalesce(try(source.metadata::json ->> '$.curate_task'), '') <> {SAMPLE_TASK!r}")
    selected = (f"select source.id::varchar as id, source.messages::varchar as messages, {tools} as tools "
                f"from ({query}) as source" + (" where " + " and ".join(conditions) if conditions else ""))
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with store.scratch() as folder:
        path = Path(folder) / "source.parquet"
        try:
            store.unload(f"{selected} order by id", path, row_group_rows=2000)
        except QueryError as exc:
            raise UsageError(f"SOURCE{' or --where' if where else ''}: {exc}") from None
        ids = pq.read_table(path, columns=["id"]).column("id")
        if pc.count_distinct(ids, mode="all").as_py() != len(ids):
            counts = pc.value_counts(ids)
            twice = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:3]
            raise UsageError(f"SOURCE lists an id more than once ({', '.join(map(str, twice))}): each row must be "
                             "one generation")

        def rows() -> Iterator[Row]:
            reading = pq.ParquetFile(path)
            for batch in reading.iter_batches(batch_size=2000):
                for record in batch.to_pylist():
                    yield _row(record["id"], record["messages"], record["tools"])

        yield rows


def _call_text(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return json.dumps(call, ensure_ascii=False)
    return f"{function.get('name')}({function.get('arguments') or ''})"


def render(prompt: list[dict[str, Any]], answer: dict[str, Any] | None, tools: list[Any] | None) -> str:
    """The conversation as plain text for a judge: the tools offered, each message under its role
    (tool calls with their arguments, tool results with the call they answer), then the answer."""
    parts: list[str] = []
    if tools:
        names = [t.get("function", {}).get("name") if isinstance(t, dict) else None for t in tools]
        parts.append("Tools offered: " + ", ".join(str(n) for n in names if n) + "\n")

    def one(message: dict[str, Any], heading: str) -> str:
        text = message_text(message)
        calls = message.get("tool_calls")
        lines = [heading]
        if text:
            lines.append(text)
        if isinstance(calls, list):
            lines += [f"-> calls {_call_text(call)}" for call in calls]
        return "\n".join(lines)

    for message in prompt:
        role = str(message.get("role", "?"))
        heading = f"### {role}"
        if role == "tool" and message.get("tool_call_id"):
            heading += f" (result of call {message['tool_call_id']})"
        parts.append(one(message, heading))
    if answer is not None:
        parts.append(one(answer, "### assistant: THE ANSWER TO JUDGE"))
    return "\n\n".join(parts)
