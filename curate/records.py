"""Every record shape inference.net produces, and how each becomes a ``generations`` row.

Records arrive as raw text (a JSONL line, an HTTP body) and are normalised in DuckDB, in bulk,
by the SQL built here: parsing in Python costs more than DuckDB's whole ingest
(../shared/docs/duckdb-and-datasets.md, B.3). Recognised shapes, first match wins:

``webhook``       a ``generation.completed`` / ``async-embedding.completed`` envelope
``slow-group``    a ``slow-group.completed`` envelope: one row per generation inside it
(skipped)         a ``webhook.test`` envelope: acknowledged, nothing to store
``generation``    a GenerationForClient, as ``GET /v1/generation/{id}`` returns it
``openai-batch``  an OpenAI batch output line ``{custom_id, response: {status_code, body}, error}``
``catalyst``      an inference.net dataset row, source-backed ``{request, response}``
``hf-messages``   a Hugging Face conversational row ``{id?, messages, tools?}``

Both key casings are read (``generationId``/``generation_id``, ...): the SQL here is built from
``api_types.ALIASES``, which lists each field's keys in the order they are read, and which the
listener reads deliveries by. A record with no generation id gets ``sha256-`` plus 32 hex digits
of a hash of its minified JSON, so importing it again finds the same row. Whatever does not fit
goes to the rejects with a reason that names the field.

The raw text is stored once, in ``generation_rows``. The ``generations`` view adds ``request``
and ``response``, read from it through ``request_path``/``response_path``; only ``hf-messages``
rows, whose request and response curate assembles from the messages, store them
(``request_built``/``response_built``).

Everything reads the relation ``_curate_src(line BIGINT, text VARCHAR)`` (a view over DuckDB's
reader of a file, or an Arrow batch) and the variable ``curate_source``. Whoever makes that
relation passes the text through ``masked``: a webhook id is a credential (deliveries are not
signed; the id is their only proof), so the value of every ``webhookId``/``webhook_id`` key is
replaced by ``WEBHOOK_ID_MARKER`` before anything is stored. It is the one deliberate exception
to "raw is the record byte for byte", as the API key is never stored either. Two ways write it:

* ``fast_insert_sql``: one pass, parse and insert, for a clean file of new ids; it raises on
  anything else, and the caller rolls back and merges instead;
* the merge (``store.merge_source``): PARSE_SQL keeps every line's small fields in a narrow
  table, RARE_SQL assembles the rare shapes, MERGE_SQL decides per id, ``insert_sql`` writes the
  chosen rows beside their text (which is read again, never copied into temporary tables), and
  ``rejects_sql`` explains what was refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from curate.api_types import ALIASES

__all__ = [
    "COMMON_SHAPES",
    "DUPLICATE_IDS_SQL",
    "FAST_PATH_PROBE_SQL",
    "FAST_PATH_REFUSED",
    "LINE_OUTCOMES",
    "MERGE_SQL",
    "PARSE_SQL",
    "RARE_SHAPES",
    "RARE_SQL",
    "REJECTED_LINES",
    "SHAPES",
    "TEMP_TABLES",
    "WEBHOOK_ID_MARKER",
    "WriteCounts",
    "fast_insert_sql",
    "insert_sql",
    "mask_webhook_ids",
    "masked",
    "records_sql",
    "rejects_sql",
]

WEBHOOK_ID_MARKER = "[webhook-id]"
# The value of a "webhookId"/"webhook_id" key at any depth (RE2: linear in the text). A quote
# inside a string value is escaped, so a key's name only ever follows an unescaped quote. The
# underscore may be written as its escape (every JSON reader reads "webhook\u005fid" as
# webhook_id), and a value cut off by the end of the text (a truncated line, a long line's kept
# head) is masked to the end. It is wider than ALIASES["webhook_id"] on purpose (any casing of
# "id"): a credential is masked under spellings inference.net has not sent yet, too.
_WEBHOOK_ID_VALUE = r'("webhook(?:_|\\u005[fF])?[iI][dD]"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)'


_WEBHOOK_ID_BYTES = re.compile(_WEBHOOK_ID_VALUE.encode())


def mask_webhook_ids(data: bytes) -> bytes:
    """``data`` with every webhook id replaced, by the same rule as ``masked`` (for bytes that are
    written before they reach DuckDB, such as a delivery in the spool)."""
    if b"ebhook" not in data:
        return data
    return _WEBHOOK_ID_BYTES.sub(rb'\1"' + WEBHOOK_ID_MARKER.encode() + b'"', data)


def masked(text: str) -> str:
    """The SQL expression of ``text`` (a column or expression) with every webhook id replaced.

    Only a line that mentions a webhook at all pays for the regular expression.
    """
    return (f"case when contains({text}, 'ebhook') then regexp_replace({text}, '{_WEBHOOK_ID_VALUE}', "
            f"'\\1\"{WEBHOOK_ID_MARKER}\"', 'g') else {text} end")


TEMP_TABLES = ("_curate_parsed", "_curate_rare", "_curate_rejected", "_curate_merge")


@dataclass(frozen=True)
class WriteCounts:
    """What one write did with its records."""

    stored: int = 0
    updated: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    lines: int = 0  # records read, blank lines included
    # Per line, when asked for (``merge_source(per_line=True)``): (outcome, reason) where outcome
    # is stored, updated, duplicate, rejected or skipped, and reason says why a line was refused.
    outcomes: Mapping[int, tuple[str, str | None]] = field(default_factory=dict, compare=False, repr=False)


# Every key a generation's id may be under (a GenerationForClient's, a group member's, an
# envelope's: one set, each read in its own order), and the aliased text fields.
_ID_KEYS = tuple(dict.fromkeys(ALIASES["id"] + ALIASES["member_id"] + ALIASES["generation_id"]))
_TEXT_FIELDS = ("state_message", "dispatched_at", "finished_at")


def _keys(kind: str, keys: tuple[str, ...]) -> str:
    return ",".join(f'"{key}":"{kind}"' for key in keys)


# The small fields of a GenerationForClient. Ids are read as JSON so that a non-string id is
# seen as such rather than coerced.
_USAGE = '"usage":{"prompt_tokens":"BIGINT","completion_tokens":"BIGINT","total_tokens":"BIGINT"}'
_GFC = (
    _keys("JSON", _ID_KEYS) + ","
    '"state":"VARCHAR",' + ",".join(_keys("VARCHAR", ALIASES[f]) for f in _TEXT_FIELDS) + ","
    '"request":{"model":"VARCHAR","metadata":{"custom_id":"VARCHAR"}}'
)
_GFC_STRUCT = "{" + _GFC + ',"response":{"model":"VARCHAR",' + _USAGE + "}}"
# The top level adds the envelope keys and the OpenAI batch line's keys.
_TOP_STRUCT = (
    "{" + _GFC + ',"event":"VARCHAR","custom_id":"VARCHAR","messages":"JSON",'
    '"data":' + _GFC_STRUCT + ","
    '"error":{"message":"VARCHAR"},'
    '"response":{"model":"VARCHAR",' + _USAGE + ',"status_code":"BIGINT",'
    '"body":{"model":"VARCHAR",' + _USAGE + ',"error":{"message":"VARCHAR"}}}}'
)
# What kind of value a part holds, without parsing the line again: ids are JSON fragments, so
# their json_type is cheap; an object-valued part is "there" when its struct is not NULL (absent
# and JSON null both give NULL). Only an envelope's data is typed from the text, on those lines.
_ID_PATHS = {path: f"t.{path}" for key in _ID_KEYS for path in (key, f"data.{key}")}
_OBJECT_PATHS = {
    "request": "t.request", "response": "t.response", "error": "t.error",
    "response.body": "t.response.body", "data.request": "t.data.request",
    "data.response": "t.data.response",
}


def _ty(path: str) -> str:
    """The JSON type of a part of the line, as far as deciding its shape needs it."""
    if path in _ID_PATHS:
        return f"json_type({_ID_PATHS[path]})"
    if path == "messages":
        return "json_type(t.messages)"
    if path == "data":
        return "json_type(text, '$.data')"
    return f"case when {_OBJECT_PATHS[path]} is not null then 'OBJECT' end"


_ID_OK = "in ('VARCHAR', 'UBIGINT', 'BIGINT')"
_RANK = """
    case when {s} in ('Success', 'Failed') then 3
         when {s} = 'In Progress' then 2
         when {s} is not null then 1
         else 0 end
"""


def _gfc(field: str) -> str:
    """A GenerationForClient field, from the envelope's ``data`` or from the top level."""
    return f"case when shape = 'webhook' then t.data.{field} else t.{field} end"


def _coalesce_gfc(name: str) -> str:
    """A text field of a GenerationForClient (``_gfc``), under the first of its keys present."""
    return f"coalesce({', '.join(_gfc(key) for key in ALIASES[name])})"


def _present(path: str) -> str:
    return f"coalesce({_ty(path)}, 'NULL') <> 'NULL'"


def _first_id(*fields: tuple[str, str]) -> str:
    """The first id among (struct field, path) pairs that holds a string or a number."""
    whens = " ".join(
        f"when {_ty(path)} {_ID_OK} then json_extract_string({field}, '$')" for field, path in fields
    )
    return f"case {whens} end"


def _bad_id(*fields: tuple[str, str]) -> str:
    """The json type of the first id field present whose value is neither a string nor a number."""
    whens = " ".join(
        f"when {_present(path)} then case when {_ty(path)} {_ID_OK} then null else {_ty(path)} end"
        for _, path in fields
    )
    return f"case {whens} end"


# (struct field, path) of each key an id is read from, in order: an envelope's own, then its
# data's; a GenerationForClient's at the top level.
_ENVELOPE_IDS = tuple((f"t.{key}", key) for key in ALIASES["generation_id"]) + tuple(
    (f"t.data.{key}", f"data.{key}") for key in ALIASES["id"])
_TOP_IDS = tuple((f"t.{key}", key) for key in ALIASES["id"])
_BATCH_IDS = (("t.id", "id"),)  # an OpenAI batch line's own key, not one of inference.net's aliases

COMMON_SHAPES = ("generation", "webhook", "catalyst", "openai-batch")
RARE_SHAPES = ("slow-group", "hf-messages")
SHAPES = COMMON_SHAPES + RARE_SHAPES


def records_sql(source: str, *, tolerant: bool = True) -> str:
    """One row per line of ``source`` (a relation with ``line`` and ``text``), blank ones included.

    Every line gets its ``shape`` (``blank``, ``invalid``, ``not-object``, ``bad-envelope``, ``webhook.test``,
    one of ``SHAPES``, or NULL when no shape fits), and the lines of the common shapes get every
    column of their ``generations`` row. The same text serves the narrow first pass (DuckDB drops
    the columns a query does not use) and the final insert, so the two can never disagree.
    ``tolerant=False`` lets malformed JSON raise instead of becoming an ``invalid`` line, which
    saves try()'s cost where any such line refuses the whole statement anyway.
    """
    transform = f"json_transform(text, '{_TOP_STRUCT}')"
    if tolerant:
        transform = f"try({transform})"
    return f"""
    with lines as (
        select line, text, starts_with(ltrim(text, ' \t'), '{{') as brace,
               ltrim(coalesce(text, ''), ' \t\r\n') = '' as blank
        from {source}
    ),
    parsed as (
        -- one parse per line: try() turns malformed JSON into NULL instead of an error
        select line, text, blank, hash(text) as raw_hash,
               case when brace then {transform} end as t
        from lines
    ),
    objects as (select *, t is not null as ok from parsed),
    classified as (
        select *,
            case
                when blank then 'blank'
                when not ok then case when json_valid(text) then 'not-object' else 'invalid' end
                when t.event = 'webhook.test' then 'webhook.test'
                when t.event is not null and {_ty('data')} = 'OBJECT' then
                    case when t.event = 'slow-group.completed' then 'slow-group' else 'webhook' end
                when t.event is not null then 'bad-envelope'
                when t.state is not null then 'generation'
                when t.custom_id is not null
                     and ({_ty('response')} = 'OBJECT' or {_ty('error')} = 'OBJECT')
                    then 'openai-batch'
                when {_ty('request')} = 'OBJECT' then 'catalyst'
                when {_ty('messages')} = 'ARRAY' then 'hf-messages'
            end as shape
        from objects
    ),
    fields as (
    select line, raw_hash, shape, t.event as event, text,
        case shape
            when 'webhook' then {_bad_id(*_ENVELOPE_IDS)}
            when 'generation' then {_bad_id(*_TOP_IDS)}
        end as bad_id,
        case
            when shape = 'webhook' then {_first_id(*_ENVELOPE_IDS)}
            when shape = 'generation' then {_first_id(*_TOP_IDS)}
            when shape = 'openai-batch' then {_first_id(*_BATCH_IDS)}
        end as given_id,
        case shape
            when 'openai-batch' then
                case when t.error.message is null and {_ty('error')} is distinct from 'OBJECT'
                      and t.response.status_code between 200 and 299
                     then 'Success' else 'Failed' end
            when 'catalyst' then case when {_present('response')} then 'Success' end
            else {_gfc('state')}
        end as state,
        case shape
            when 'openai-batch' then coalesce(t.error.message, t.response.body.error.message)
            else {_coalesce_gfc('state_message')}
        end as state_message,
        case shape
            when 'openai-batch' then t.response.body.model
            else coalesce({_gfc('request.model')}, {_gfc('response.model')})
        end as model,
        case shape
            when 'openai-batch' then t.custom_id
            else {_gfc('request.metadata.custom_id')}
        end as custom_id,
        {_coalesce_gfc('dispatched_at')} as dispatched,
        {_coalesce_gfc('finished_at')} as finished,
        case shape
            when 'openai-batch' then t.response.body.usage
            when 'webhook' then t.data.response.usage
            else t.response.usage
        end as usage,
        case
            when shape = 'webhook' and {_present('data.request')} then '$.data.request'
            when shape in ('generation', 'catalyst') and {_present('request')} then '$.request'
        end as request_path,
        case
            when shape = 'webhook' and {_present('data.response')} then '$.data.response'
            when shape in ('generation', 'catalyst') and {_present('response')} then '$.response'
            when shape = 'openai-batch' and {_present('response.body')} then '$.response.body'
        end as response_path
    from classified
    )
    select * exclude (given_id, dispatched, finished, usage),
        coalesce(given_id, case when shape in ('generation', 'webhook', 'catalyst',
                                               'openai-batch', 'hf-messages')
                           then 'sha256-' || left(sha256(json(text)), 32) end) as id,
        {_RANK.format(s="state")} as rank,
        try_cast(dispatched as timestamptz) as dispatched_at,
        try_cast(finished as timestamptz) as finished_at,
        usage.prompt_tokens as prompt_tokens, usage.completion_tokens as completion_tokens,
        usage.total_tokens as total_tokens,
        null::json as request_built, null::json as response_built
    from fields
    """


# What the first pass keeps of every line: everything but the text, in the order of the lines.
PARSE_SQL = f"""
    create or replace temp table _curate_parsed as
    select * exclude (text) from ({records_sql("_curate_src")}) order by line
"""

# A group member is typed once, every id key and its request and response in one json_type call;
# its id is the first of ALIASES["member_id"] holding a string or a number.
_MEMBER_TYPED = (*_ID_KEYS, "request", "response")
_MEMBER_PATHS = ", ".join(f"'$.{key}'" for key in _MEMBER_TYPED)
_MEMBER_ID = "\n".join(
    f"               case when ty[{_MEMBER_TYPED.index(key) + 1}] {_ID_OK} "
    f"then json_extract_string(g.{key}, '$') end," for key in ALIASES["member_id"])


def _coalesce_member(name: str) -> str:
    """A text field of a group member (``g``), under the first of its keys present."""
    return f"coalesce({', '.join(f'g.{key}' for key in ALIASES[name])})"


# The rare shapes, assembled from their text into full rows (raw or built columns included).
RARE_SQL: tuple[str, ...] = (
    """
    create or replace temp table _curate_rare (
        line bigint, id varchar, raw varchar, raw_hash ubigint, shape varchar, state varchar,
        state_message varchar, model varchar, custom_id varchar, dispatched_at timestamptz,
        finished_at timestamptz, prompt_tokens bigint, completion_tokens bigint,
        total_tokens bigint, request_path varchar, response_path varchar, request_built json,
        response_built json
    )
    """,
    # A group envelope becomes one row per item, each keeping the envelope with only its own
    # item (so its request and response sit at generations[0]).
    f"""
insert into _curate_rare by name
    with items as (
        select b.line, b.text,
               unnest(json_extract(b.text, '$.data.generations[*]')) as item
        from _curate_src b
        where b.line in (select line from _curate_parsed where shape = 'slow-group')
    ),
    envelopes as (
        select line,
               json_merge_patch(text, json_object('data', json_merge_patch(text -> '$.data',
                   json_object('generations', json_array(item)))))::varchar as raw,
               json_transform(item, '{_GFC_STRUCT}') as g,
               json_type(item, [{_MEMBER_PATHS}]) as ty
        from items where json_type(item) = 'OBJECT'
    )
    select line, 'slow-group' as shape, raw, hash(raw) as raw_hash,
           coalesce(
{_MEMBER_ID}
               'sha256-' || left(sha256(json(raw)), 32)) as id,
           g.state as state, {_coalesce_member('state_message')} as state_message,
           coalesce(g.request.model, g.response.model) as model,
           g.request.metadata.custom_id as custom_id,
           try_cast({_coalesce_member('dispatched_at')} as timestamptz) as dispatched_at,
           try_cast({_coalesce_member('finished_at')} as timestamptz) as finished_at,
           g.response.usage.prompt_tokens as prompt_tokens,
           g.response.usage.completion_tokens as completion_tokens,
           g.response.usage.total_tokens as total_tokens,
           case when coalesce(ty[{_MEMBER_TYPED.index('request') + 1}], 'NULL') <> 'NULL'
                then '$.data.generations[0].request' end as request_path,
           case when coalesce(ty[{_MEMBER_TYPED.index('response') + 1}], 'NULL') <> 'NULL'
                then '$.data.generations[0].response' end as response_path
    from envelopes
    """,
    # A Hugging Face row: the last assistant message is the response, the rest the request.
    """
insert into _curate_rare by name
    select line, 'hf-messages' as shape, text as raw, raw_hash, id,
           case when last_role = 'assistant' then 'Success' end as state,
           json_merge_patch('{}', json_object(
               'messages', case when last_role = 'assistant' then to_json(msgs[1:-2])
                                else to_json(msgs) end,
               'tools', text -> '$.tools',
               'metadata', json_object('importOriginalRowId', text -> '$.id'))) as request_built,
           case when last_role = 'assistant' then json_object(
               'object', 'chat.completion',
               'choices', json_array(json_object(
                   'index', 0, 'message', msgs[-1],
                   'finish_reason', case when json_exists(msgs[-1], '$.tool_calls')
                                         then 'tool_calls' else 'stop' end))) end
               as response_built
    from (select p.line, p.raw_hash, p.id, b.text,
                 json_extract(b.text, '$.messages[*]') as msgs,
                 json_extract_string(b.text, '$.messages[-1].role') as last_role
          from _curate_parsed p join _curate_src b on b.line = p.line
          where p.shape = 'hf-messages')
    """,
)

# The lines rejects_sql explains: their text is read only when there are some.
REJECTED_LINES = (
    "select line from _curate_parsed where shape is null or shape in ('invalid', 'not-object', 'bad-envelope') "
    "or bad_id is not null "
    "or (shape = 'slow-group' and line not in (select line from _curate_rare))"
)

# One outcome per line that became candidate rows (a slow-group line makes several): the best of
# what happened to its rows, so a group delivery with one new generation counts as stored.
LINE_OUTCOMES = """
    select line, case max(case action when 'insert' then 3 when 'update' then 2 else 1 end)
                 when 3 then 'stored' when 2 then 'updated' else 'duplicate' end
    from _curate_merge group by line
    union all
    select line, 'skipped' from _curate_parsed where shape in ('blank', 'webhook.test')
"""


def rejects_sql(lines: list[int] | None = None) -> str:
    """Explain every refused line, reading the text of those lines only.

    With ``lines`` (the refused line numbers, when there are few) the text is fetched by a plain
    filter on the reader; otherwise by a join.
    """
    text = "_curate_src" if lines is None else (
        f"(select line, text from _curate_src where line in ({', '.join(map(str, lines))}))"
    )
    return _REJECTS_SQL.replace("{text}", text)


_REJECTS_SQL = """
    create or replace temp table _curate_rejected as
    with reasons as (
        select line, case shape
            when 'invalid' then 'not valid JSON (malformed or truncated line)'
            when 'not-object' then 'not a JSON object'
            when 'bad-envelope' then 'field data of ' || event || ' is missing or not an object'
            else case when shape is null
                      then 'no known record shape: expected a GenerationForClient, a webhook '
                           || 'envelope, a {request, response} row, a {messages} row or an '
                           || 'OpenAI batch output line'
                      else 'field id is ' || lower(bad_id) || ', not a string' end
            end as reason
        from _curate_parsed
        where shape is null or shape in ('invalid', 'not-object', 'bad-envelope')
              or bad_id is not null
        union all
        select line, 'field data.generations of slow-group.completed is not an array of objects'
        from _curate_parsed p
        where shape = 'slow-group' and not exists (
            select 1 from _curate_rare r where r.line = p.line)
    )
    select r.line, b.text,
        case when r.reason = 'not a JSON object'
             then r.reason || ' (found ' || lower(json_type(b.text)) || ')'
             when r.reason like 'no known record shape%'
             then r.reason || '; found keys '
                  || array_to_string(list_slice(json_keys(b.text), 1, 12), ', ')
             else r.reason end as reason
    from reasons r join {text} b on b.line = r.line
"""

# What the merge does with each candidate row. Within a batch the highest-ranked, then latest,
# record of an id wins; it replaces the stored row only if it ranks at least as high and
# differs from it. Only narrow columns are read from the store.
MERGE_SQL = f"""
    create or replace temp table _curate_merge as
    with candidates as (
        select line, id, shape, rank, raw_hash from _curate_parsed
        where shape in {COMMON_SHAPES} and bad_id is null
        union all
        select line, id, shape, {_RANK.format(s="state")}, raw_hash from _curate_rare
    ),
    picked as (
        select *, row_number() over (partition by id order by rank desc, line desc) as pick
        from candidates
    ),
    stored as (
        select g.id, g.raw_hash, {_RANK.format(s="g.state")} as rank
        from generation_rows g semi join candidates c on g.id = c.id
    )
    select p.line, p.id, p.shape,
        case when p.pick > 1 then 'duplicate'
             when s.id is null then 'insert'
             when p.rank < s.rank then 'duplicate'
             when p.rank = s.rank and p.raw_hash = s.raw_hash then 'duplicate'
             else 'update' end as action
    from picked p left join stored s on s.id = p.id
"""

COLUMNS = (
    "id", "raw", "raw_hash", "shape", "state", "state_message", "model", "custom_id",
    "dispatched_at", "finished_at", "prompt_tokens", "completion_tokens", "total_tokens",
    "source", "first_seen_at", "updated_at", "request_path", "response_path", "request_built",
    "response_built",
)
_FIXED = {"source": "getvariable('curate_source')", "first_seen_at": "now()", "updated_at": "now()"}


def _select(raw: str) -> str:
    return ", ".join(f"{raw if c == 'raw' else _FIXED.get(c, c)} as {c}" for c in COLUMNS)


def _write(rows: str, action: str) -> str:
    """Insert ``rows`` (a SELECT of COLUMNS), or for ``update`` replace the stored rows of their
    ids, every column but ``first_seen_at``."""
    if action == "insert":
        return f"insert into generation_rows ({', '.join(COLUMNS)}) {rows}"
    assignments = ", ".join(f"{c} = n.{c}" for c in COLUMNS if c not in ("id", "first_seen_at"))
    return f"update generation_rows as g set {assignments} from ({rows}) as n where g.id = n.id"


def insert_sql(action: str, *, every_clean_line: bool = False) -> tuple[str, str]:
    """The two writes of ``action`` (``insert`` or ``update``) the merge chose: the common shapes,
    and the rare ones from ``_curate_rare``.

    ``every_clean_line`` says the merge chose ``action`` for every common-shape line, as for a
    new file with a few bad lines: the rows then come from ``_curate_parsed`` and the text side
    by side (a positional join: both list every line, in order), with no second parse. Otherwise
    the chosen lines are found by a join and parsed again.
    """
    if every_clean_line:
        # error() guards the one assumption: both sides list the same lines in the same order.
        text = "if(p.line = s.line, s.text, error('curate: lines out of step'))"
        common = _write(
            f"select {_select(text)} from _curate_src s positional join _curate_parsed p "
            f"where p.shape in {COMMON_SHAPES} and p.bad_id is null",
            action,
        )
    else:
        keep = f"select line from _curate_merge where action = '{action}' and shape in {COMMON_SHAPES}"
        source = f"(select line, text from _curate_src where line in ({keep}))"
        common = _write(f"select {_select('text')} from ({records_sql(source)})", action)
    rare = _write(
        f"select {_select('raw')} from _curate_rare r semi join _curate_merge m "
        f"on m.line = r.line and m.id = r.id and m.action = '{action}'",
        action,
    )
    return common, rare


FAST_PATH_REFUSED = "curate: not a clean first import"


def fast_insert_sql() -> str:
    """One streaming insert of every line of ``_curate_src``, for a file that is all new and clean.

    It parses each line once and writes its row, with no first pass, no join and no filter (a
    filter on the parsed shape would make DuckDB parse twice). It refuses, by raising, as soon
    as a line is anything but a well-formed common-shape record with a usable id (``error()``
    names FAST_PATH_REFUSED). An id seen before, in the store or the file, is caught after it by
    DUPLICATE_IDS_SQL. Either way the caller rolls back and takes the two-pass merge.
    """
    guarded = (
        f"case when shape in {COMMON_SHAPES} and bad_id is null then id "
        f"else error('{FAST_PATH_REFUSED}') end"
    )
    columns = _select("text").replace("id as id", f"{guarded} as id", 1)
    return (
        f"insert into generation_rows ({', '.join(COLUMNS)}) "
        f"select {columns} from ({records_sql('_curate_src', tolerant=False)})"
    )


# Ids stored more than once. generation_rows has no primary key (its index cost a fifth of an
# import); one row per id holds by construction, and this is how the one-pass insert checks it.
DUPLICATE_IDS_SQL = "select count(*) from (select id from generation_rows group by id having count(*) > 1)"

# The first lines of a source that would refuse the one-pass insert: a re-import, or a file
# whose trouble starts early, then costs a glance instead of a whole wasted pass.
FAST_PATH_PROBE_SQL = f"""
    select count(*) from ({records_sql("(select * from _curate_src limit 1000)")}) p
    where p.shape not in {COMMON_SHAPES} or p.shape is null or p.bad_id is not null
       or exists (select 1 from generation_rows g where g.id = p.id)
"""
