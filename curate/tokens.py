"""Token lengths as the target model's trainer counts them: its own tokenizer, its own chat template.

The API's ``usage`` counts tokens with the serving model's tokenizer, not the model being trained,
and a row longer than a trainer's ``max_length`` is silently truncated (TRL) or dropped (Axolotl).
This module counts every row the way a trainer sees it, so that an export can report lengths and
drop the rows over a limit (``curate export --tokenizer NAME_OR_PATH --max-tokens N``), and a
notebook can plot them before choosing the limit (:func:`token_lengths`).

**Loading** (:func:`load`): ``transformers.AutoTokenizer.from_pretrained`` on a local folder (one
``save_pretrained`` wrote, or a model's folder) or a Hugging Face Hub id. ``transformers`` is
imported here and only here, on first use (the extra ``curate[tokenizer]``): ``import curate``,
the command line and an export without ``--tokenizer`` never load it. What was loaded is recorded
as a name and a revision: a Hub id's commit (from the Hugging Face cache the load went through),
or for a folder ``sha256:`` and the first 16 hex digits of a digest of its tokenizer files
(:data:`TOKENIZER_FILES`: every file ``AutoTokenizer`` may read to build the tokenizer, each by
name and content), so a card says which tokenizer counted. A tokenizer without a chat template is
refused: a trainer would fail on it, and a count without it would not be a trainer's.

**Counting** (:meth:`Tokenizer.count`): a row's length is exactly what a trainer gets from
``len(tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False))``
(transformers 5 returns a ``BatchEncoding`` unless ``return_dict=False``; its ``input_ids`` are
the same). A batch of conversations sharing tools is rendered in one
``apply_chat_template(conversations, tools=tools, tokenize=False)`` and the texts encoded in one
``tokenizer(texts, add_special_tokens=False)``, which a fast (Rust) tokenizer spreads over every
core. That is the same computation, not an approximation: ``apply_chat_template(tokenize=True)``
itself renders the text and encodes it with ``add_special_tokens=False`` (a template that writes
``{{ bos_token }}`` puts the BOS in the text once, and nothing adds another), with padding and
truncation off, as here; tests/test_tokens.py holds the two equal on a template that writes the
BOS and a tokenizer whose post-processor would add one. Rows are grouped by their tools' JSON
text, as ``apply_chat_template`` takes one ``tools`` per call. Two things make it cheaper and
change no count: a message's members that are None are dropped before the call when this
transformers drops them itself (asked once, of ``apply_chat_template``, with a template that shows
whether a None member is there), so its deep copy walks less; and each batch is encoded on a
second thread while the next one is read and rendered (``count_rows``). What is left beyond the
encode is transformers' rendering, ~20 % of a 32k BPE's encode on two cores
(bench/bench_tokens.py).

**What a row's messages are** (:func:`conversations`): plain dicts, as a trainer loads the
exported row, built from the format's own output columns (``curate.formats.columns``, the SQL the
writer writes, so whatever it writes, reasoning included, is what is counted):

* ``messages``: the ``messages`` column's dicts and ``tools``, as ``datasets`` loads them: every
  field of the message struct (``content_parts``, ``name``... None when unset; transformers drops
  None members before rendering), tool-call ``arguments`` and ``tools`` as parsed JSON (dicts and
  lists). HF chat templates expect arguments as a dict (``tool_call.arguments | tojson``, or
  ``arguments.items()``): a JSON string would be rendered quoted, or fail. The JSON formats
  (``openai``, ``catalyst``, ``openai-preference``) hold arguments as JSON strings, as OpenAI's API
  sends them; they are parsed to dicts for the template here too.
* ``prompt-completion`` and ``kto``: ``prompt + completion`` (TRL tokenizes the prompt and the
  whole conversation; the whole is what ``max_length`` cuts).
* ``dpo`` and ``openai-preference``: ``prompt + chosen`` and ``prompt + rejected``, both counted; a
  pair's length is the **larger** of the two, as the trainer cuts each side at ``max_length`` and
  a pair is only whole when both fit.
* ``openai``: the line's ``messages`` and ``tools``; ``catalyst``: the request's messages then the
  response's message, with the request's tools.
* ``sharegpt``: ``conversations`` as messages (human → user, gpt → assistant, system → system);
  ``alpaca``: ``system`` (when set), then ``instruction`` (and ``input`` after a blank line, when
  not empty) as the user's message, then ``output`` as the assistant's. No tools.

Caveats: a message whose content is a list of parts is exported with its parts in
``content_parts`` and ``content`` None (``curate.formats``), and counted as exported, so a template
reading only ``content`` counts no text for it: what the trainer would see. Keyword arguments a
trainer passes to the template (``chat_template_kwargs``, e.g. Qwen3's ``enable_thinking``) are not
passed: the template's defaults count.

**Statistics** (:func:`split_stats`): per split, rows, min, p50, p90, p99, max and total tokens;
the percentiles are nearest-rank (DuckDB's ``quantile_disc``: the smallest length that at least
that share of the rows do not exceed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from curate import formats
from curate.errors import UsageError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from curate.store import ReadableStore

__all__ = [
    "BATCH_ROWS",
    "EXTRA",
    "TOKENIZER_FILES",
    "Tokenizer",
    "TokenizerError",
    "conversations",
    "count_rows",
    "load",
    "split_stats",
    "token_lengths",
]

# Rows read from DuckDB, rendered and encoded at a time: large enough for a fast tokenizer to spread
# one encode call over every core, small enough that rendering the next batch overlaps most of the
# encoding (bench/bench_tokens.py: 512 beat 2048 by ~10 % on two cores).
BATCH_ROWS = 512
# What installs the libraries this module loads on first use.
EXTRA = "pip install 'curate[tokenizer]'"
# The files of a tokenizer folder whose names and contents make its revision: every file
# AutoTokenizer may read to build a tokenizer (config.json names the class when
# tokenizer_config.json does not), and the chat templates it renders.
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template*", "vocab*",
                   "merges*", "*.model", "*.tiktoken", "config.json", "additional_chat_templates/*")


class TokenizerError(UsageError, ValueError):
    """The tokenizer cannot be loaded or used as asked; the message says what is missing."""


@dataclass(frozen=True)
class Tokenizer:
    """A loaded tokenizer, with what a card says of it.

    ``name``: as given (a Hub id, or the folder's path); ``revision``: the Hub commit, or
    ``sha256:`` and 16 hex digits of the folder's tokenizer files; ``backend``: the
    ``transformers`` tokenizer."""

    name: str
    revision: str
    backend: Any = field(repr=False, compare=False)

    def count(self, conversations: Sequence[Sequence[Mapping[str, Any]]], tools: Any = None) -> list[int]:
        """The token count of each conversation (a list of message dicts), all offered ``tools``:
        ``len(apply_chat_template(conversation, tools=tools, tokenize=True, return_dict=False))``
        each, computed as one render and one batch encode (see the module's docstring)."""
        return self.lengths(self.render(conversations, tools))

    def render(self, conversations: Sequence[Sequence[Mapping[str, Any]]], tools: Any = None) -> list[str]:
        """Each conversation's text by the chat template: ``apply_chat_template(tokenize=False)``, one call."""
        if not conversations:
            return []
        if self._drops_none:
            # What apply_chat_template does first itself (it drops a message's members that are None):
            # done here on plain dicts, it leaves less for its deep copy to walk. The text is the same.
            conversations = [[{k: v for k, v in m.items() if v is not None} for m in c] for c in conversations]
        else:
            conversations = [list(c) for c in conversations]
        texts = self.backend.apply_chat_template(conversations, tools=tools, tokenize=False)
        return list(texts)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count as ``apply_chat_template(tokenize=True)`` encodes its text: one
        batch ``tokenizer(texts, add_special_tokens=False)``, no padding, no truncation."""
        if not texts:
            return []
        encoded = self.backend(list(texts), add_special_tokens=False, padding=False, truncation=False,
                               return_attention_mask=False, return_token_type_ids=False)
        return [len(ids) for ids in encoded["input_ids"]]

    @cached_property
    def _drops_none(self) -> bool:
        """Whether this transformers drops a message's None members before rendering (5.x does):
        asked of apply_chat_template itself, with a template that shows whether a None member is there."""
        try:
            shown = self.backend.apply_chat_template([{"role": "user", "content": "x", "name": None}],
                                                     chat_template="{{ 'name' in messages[0] }}", tokenize=False)
        except Exception:  # noqa: BLE001 - any failure: do not drop, apply_chat_template does what it does
            return False
        return str(shown).strip() == "False"


# ---------------------------------------------------------------- loading


def _transformers() -> Any:
    """The transformers module, imported now; its advice that PyTorch is missing is not shown (a
    tokenizer needs no PyTorch)."""
    from curate.config import environment_set

    with environment_set("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"):
        try:
            import transformers
        except ImportError as exc:
            raise TokenizerError(f"--tokenizer needs transformers, tokenizers and jinja2, which are not installed "
                                 f"({exc}): {EXTRA}") from None
    return transformers


def tokenizer_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that make its revision (``TOKENIZER_FILES``), sorted."""
    found = {p for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def folder_revision(folder: Path) -> str:
    """``sha256:`` and 16 hex digits of the tokenizer files' names and contents."""
    digest = hashlib.sha256()
    for path in tokenizer_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()[:16]


def _hub_commit(repo_id: str) -> str:
    """The commit of ``repo_id`` the Hugging Face cache holds (what the load just read), or "unknown"."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("tokenizer_config.json", "tokenizer.json", "config.json"):
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            parts = Path(path).parts
            if "snapshots" in parts[:-1]:
                return parts[parts.index("snapshots") + 1]
    return "unknown"


def _looks_like_a_path(text: str) -> bool:
    # A Hub id is NAME or ORG/NAME; anything else with a separator is meant as a folder.
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
            or (os.sep != "/" and os.sep in text))


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


def load(tokenizer: str | os.PathLike[str] | Tokenizer | Any) -> Tokenizer:
    """A tokenizer by local folder or Hub id (``AutoTokenizer.from_pretrained``), or a
    ``transformers`` tokenizer already loaded, with its name and revision (see the module's
    docstring). :class:`TokenizerError` names what is missing: transformers, the folder, its
    tokenizer files, the Hub id (and whether only the cache was read), the chat template."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if hasattr(tokenizer, "apply_chat_template"):  # a transformers tokenizer, loaded by the caller
        name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        folder = Path(name)
        revision = folder_revision(folder) if name and folder.is_dir() else _hub_commit(name) if name else "unknown"
        return _checked(Tokenizer(name=name, revision=revision, backend=tokenizer))
    text = os.fspath(tokenizer)
    if not text.strip():
        raise TokenizerError("--tokenizer: expected a local folder or a Hugging Face Hub id (org/name)")
    folder = Path(text).expanduser()
    transformers = _transformers()
    if folder.is_dir():
        if not tokenizer_files(folder):
            raise TokenizerError(f"--tokenizer {text}: the folder has no tokenizer files (tokenizer.json, "
                                 "tokenizer_config.json, ...): give the folder save_pretrained wrote, or a model's")
        try:
            backend = transformers.AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(f"--tokenizer {text}: transformers cannot load a tokenizer from this folder: "
                                 f"{_first_line(exc)}") from None
        return _checked(Tokenizer(name=text, revision=folder_revision(folder), backend=backend))
    if folder.exists():
        raise TokenizerError(f"--tokenizer {text}: is a file; give the folder that holds the tokenizer's files")
    if _looks_like_a_path(text):
        raise TokenizerError(f"--tokenizer {text}: no such folder")
    try:
        backend = transformers.AutoTokenizer.from_pretrained(text)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if _offline():
            hint = ("HF_HUB_OFFLINE is set, so only the Hugging Face cache was read and it does not hold it: "
                    f"download it where there is a network (`hf download {text}`), or give its folder")
        else:
            hint = ("check the id (org/name), the network, and HF_TOKEN for a gated model; or give the local "
                    "folder that holds its tokenizer files")
        raise TokenizerError(f"--tokenizer {text}: not a folder here, and the Hugging Face Hub did not give a "
                             f"tokenizer by that id ({_first_line(exc)}): {hint}") from None
    return _checked(Tokenizer(name=text, revision=_hub_commit(text), backend=backend))


def _checked(tokenizer: Tokenizer) -> Tokenizer:
    if not getattr(tokenizer.backend, "chat_template", None):
        raise TokenizerError(f"--tokenizer {tokenizer.name}: has no chat template (chat_template.jinja, or "
                             "chat_template in tokenizer_config.json); lengths are counted with the template a trainer "
                             "applies: give the target model's tokenizer, which has one")
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- a row's conversations, as a trainer loads it


_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _plain(messages: Sequence[Any]) -> list[Any]:
    """The messages with tool-call arguments as parsed JSON (what chat templates expect)."""
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                try:
                    function["arguments"] = orjson.loads(function["arguments"])
                except orjson.JSONDecodeError:
                    pass  # the formats refuse arguments that do not parse; left as they are if one did
    return list(messages)


def _sides(prompt: Sequence[Any], *answers: Sequence[Any] | None) -> list[list[Any]]:
    return [_plain([*prompt, *answer]) for answer in answers if answer is not None]


def _alpaca(row: Mapping[str, Any]) -> list[list[Any]]:
    user = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
    system = [{"role": "system", "content": row["system"]}] if row.get("system") is not None else []
    return [[*system, {"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]]


_CONVERSATIONS: dict[str, Callable[[Mapping[str, Any]], list[list[Any]]]] = {
    "messages": lambda row: [_plain(row["messages"])],
    "prompt-completion": lambda row: _sides(row["prompt"], row["completion"]),
    "kto": lambda row: _sides(row["prompt"], row["completion"]),
    "dpo": lambda row: _sides(row["prompt"], row["chosen"], row["rejected"]),
    "openai": lambda row: [_plain(row["messages"])],
    "openai-preference": lambda row: _sides(row["input"]["messages"], row["preferred_output"],
                                            row["non_preferred_output"]),
    "catalyst": lambda row: _sides(row["request"]["messages"], [row["response"]["choices"][0]["message"]]),
    "sharegpt": lambda row: [[{"role": _SHAREGPT_ROLES.get(turn["from"], turn["from"]), "content": turn["value"]}
                              for turn in row["conversations"]]],
    "alpaca": _alpaca,
}

# The row's tools as the format writes them (JSON text; the JSON lines leave an empty list out).
_TOOLS = {"messages": "tools::varchar", "prompt-completion": "tools::varchar", "dpo": "tools::varchar",
          "kto": "tools::varchar", "catalyst": "tools::varchar", "openai": "nullif(tools::varchar, '[]')",
          "openai-preference": "nullif(tools::varchar, '[]')", "sharegpt": "null::varchar", "alpaca": "null::varchar"}


def conversations(fmt: str, row: Mapping[str, Any]) -> list[list[Any]]:
    """The conversations a trainer builds from one exported row of ``fmt`` (its columns as loaded:
    ``{"messages": [...], ...}``, or a JSON line's object): one, or for ``dpo`` and
    ``openai-preference`` two (prompt + chosen, prompt + rejected). Tools are not part of them."""
    return _CONVERSATIONS[fmt](row)


def _row_json(fmt: str, columns: Mapping[str, str]) -> str:
    """SQL: one exported row of ``fmt`` as JSON text, from the format's output columns ``columns``."""
    if fmt in formats.JSONL_FORMATS:
        [(_, expr)] = columns.items()
        return f"({expr})"
    names = [name for name in columns if name != "tools"]
    return "to_json(struct_pack(" + ", ".join(f'"{name}" := {columns[name]}' for name in names) + "))"


def count_rows(con: duckdb.DuckDBPyConnection, rows: str, fmt: str, columns: Mapping[str, str],
               tokenizer: Tokenizer, *, key: str = "rowid",
               progress: Callable[[int], None] | None = None) -> pa.Table:
    """Each row's token count, as ``(key, tokens, refused)``: ``rows`` is a table or a subquery with
    the columns ``columns`` reads (``t``, ``tools``, ...; see ``curate.formats.columns``) and ``key``.
    A row the chat template refuses to render (Mistral's and Gemma's raise on roles they do not
    take) has no count (NULL) and ``refused`` says why, in one line; it does not stop the others.

    Read in Arrow batches of ``BATCH_ROWS``; each row becomes its format's conversations
    (:func:`conversations`), rendered per tools (:meth:`Tokenizer.render`), and the batch's texts
    encoded in one call (:meth:`Tokenizer.lengths`) on a second thread while the next batch is read
    and rendered (a fast tokenizer encodes without the GIL); a row with two conversations (a pair)
    takes the larger. ``progress`` is told the rows counted so far after each batch.
    """
    import pyarrow as pa

    if fmt not in _CONVERSATIONS:
        raise ValueError(f"unknown format {fmt!r}")
    reader = con.sql(f"select {key} as key, {_TOOLS[fmt]} as tools, {_row_json(fmt, columns)} as row "
                     f"from {rows} as rows").to_arrow_reader(BATCH_ROWS)
    keys: list[pa.Array] = []
    counts: list[pa.Array] = []
    refusals: list[pa.Array] = []
    parsed_tools: dict[str, Any] = {}
    done = 0

    def finish(batch_keys: pa.Array, owners: list[int], encoded: Future[list[int]], refused: dict[int, str]) -> None:
        nonlocal done
        lengths: list[int | None] = [0] * len(batch_keys)
        for i, n in zip(owners, encoded.result(), strict=True):
            lengths[i] = max(lengths[i] or 0, n)
        for i in refused:
            lengths[i] = None
        keys.append(batch_keys)
        counts.append(pa.array(lengths, pa.int64()))
        refusals.append(pa.array([refused.get(i) for i in range(len(batch_keys))], pa.string()))
        done += len(batch_keys)
        if progress is not None:
            progress(done)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-tokens") as encoder:
        pending: tuple[pa.Array, list[int], Future[list[int]], dict[int, str]] | None = None
        for batch in reader:
            groups: dict[str | None, tuple[list[int], list[list[Any]]]] = {}
            for i, (text, tools) in enumerate(zip(batch.column(2).to_pylist(), batch.column(1).to_pylist(),
                                                  strict=True)):
                members, convs = groups.setdefault(tools, ([], []))
                for conversation in conversations(fmt, orjson.loads(text)):
                    members.append(i)
                    convs.append(conversation)
            owners: list[int] = []
            texts: list[str] = []
            refused: dict[int, str] = {}
            for tools, (members, convs) in groups.items():
                if tools is not None and tools not in parsed_tools:
                    parsed_tools[tools] = orjson.loads(tools)
                offered = None if tools is None else parsed_tools[tools]
                try:
                    texts += tokenizer.render(convs, offered)
                    owners += members
                except Exception:  # noqa: BLE001 - a template may raise anything: find the rows, one by one
                    for member, conversation in zip(members, convs, strict=True):
                        try:
                            texts += tokenizer.render([conversation], offered)
                            owners.append(member)
                        except Exception as exc:  # noqa: BLE001 - the row is refused, with the template's words
                            refused.setdefault(member, _first_line(exc)[:120])
            encoded = encoder.submit(tokenizer.lengths, texts)
            if pending is not None:
                finish(*pending)
            pending = (batch.column(0), owners, encoded, refused)
        if pending is not None:
            finish(*pending)
    key_type = reader.schema.field(0).type
    return pa.table({"key": pa.chunked_array(keys, key_type), "tokens": pa.chunked_array(counts, pa.int64()),
                     "refused": pa.chunked_array(refusals, pa.string())})


def split_stats(con: duckdb.DuckDBPyConnection, table: str, lengths: str) -> list[tuple[Any, ...]]:
    """Per split of ``table``'s kept rows (train first): split, rows, min, p50, p90, p99, max,
    total tokens, from ``lengths`` (``rid``: the row's rowid, ``tokens``)."""
    return con.execute(f"""
        select r.split, count(*), min(n.tokens), quantile_disc(n.tokens, 0.5), quantile_disc(n.tokens, 0.9),
               quantile_disc(n.tokens, 0.99), max(n.tokens), sum(n.tokens)::bigint
        from {table} r join {lengths} n on n.rid = r.rowid
        where r.keep group by r.split order by r.split desc""").fetchall()


# ---------------------------------------------------------------- for a notebook


# The row formats a preference format's answer rows are counted as: one side of a pair is an
# answer row's whole conversation (prompt + answer), written the same way.
_SIDE_FORMAT = {"dpo": "messages", "kto": "messages", "openai-preference": "openai"}


def token_lengths(store: ReadableStore, source: str, tokenizer: str | os.PathLike[str] | Tokenizer | Any, *,
                  where: str | None = None, fmt: str = "messages") -> pa.Table:
    """Each row of ``source`` (a view name or a SELECT with ``id`` and ``messages``) matching
    ``where``, with its length in tokens as a trainer counts it with ``tokenizer`` (a folder, a Hub
    id, or a tokenizer already loaded): ``(id, tokens, refused)``, in the source's order, for plotting
    the distribution before choosing ``curate export --max-tokens``; ``tokens`` is NULL and
    ``refused`` says why for a row the chat template refuses to render.

    Counted as an export in ``fmt`` counts (default ``messages``): the rows ``fmt`` cannot hold are
    left out; nothing is deduplicated. For ``dpo``, ``kto`` and ``openai-preference`` each answer
    row is counted as one side of a pair (its prompt + its answer); a pair's length is the larger
    of its two sides'. The store is held only while the rows are copied out (``store.unload``).
    """
    import duckdb

    if fmt not in formats.FORMATS:
        raise UsageError(f"fmt {fmt!r}: expected one of {', '.join(formats.FORMATS)}")
    loaded = load(tokenizer)
    from curate.store import source_query

    query = source_query(source)
    described = store.arrow(f"describe select * from ({query}) as source")
    names = set(described.column("column_name").to_pylist())
    missing = [name for name in ("id", "messages") if name not in names]
    if missing:
        raise UsageError(f"SOURCE has no column {' or '.join(missing)}: lengths are counted from id and messages")
    optional = ", ".join(f"source.{name}::varchar as {name}" if name in names else f"null::varchar as {name}"
                         for name in ("tools", "model", "finish_reason"))
    matched = f"coalesce(({where}), false)" if where else "true"
    with store.scratch() as scratch:
        path = Path(scratch) / "rows.parquet"
        store.unload(f"""select row_number() over () as n, source.id::varchar as id,
                                source.messages::varchar as messages, {optional}
                         from ({query}) as source where {matched}""", path)
        con = duckdb.connect(config={"memory_limit": store.memory_limit})
        try:
            quoted = "'" + str(path).replace("'", "''") + "'"
            con.execute(f"""create temporary view typed as
                            select n, id, {formats.typed_messages("messages")} as t, tools::json as tools, model,
                                   finish_reason
                            from read_parquet({quoted})""")
            con.execute(f"create temporary view fitting as select * from typed "
                        f"where ({formats.drop_reason(fmt)}) is null")
            counted = _SIDE_FORMAT.get(fmt, fmt)
            lengths = count_rows(con, "fitting", counted, formats.columns(counted), loaded, key="n")
            con.register("lengths", lengths)
            return con.sql(f"""select rows.id, lengths.tokens, lengths.refused from read_parquet({quoted}) as rows
                               join lengths on lengths.key = rows.n order by rows.n""").to_arrow_table()
        finally:
            con.close()
