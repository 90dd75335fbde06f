-- One row per group of exact duplicates: chat rows with the same messages and tools, by a canonical content hash.
--
-- Two rows of `chat` (same definition) are duplicates when their messages (request messages and
-- answer) and their tools are equal as JSON values, regardless of key order and of null members
-- ({"content": null, "role": "assistant"} equals {"role": "assistant"}). Model, metadata and
-- tokens do not count. Only groups of two rows or more are listed, largest first. An export
-- that keeps one row per group keeps kept_id and drops the others.
--
-- content_hash  varchar     md5 (32 hex digits) of the canonical JSON of {"messages": ..., "tools": ...}: keys sorted at every depth, null members removed
-- n             bigint      rows in the group (2 or more)
-- ids           varchar[]   the rows' generation ids, by finished_at then id
-- kept_id       varchar     the one to keep: the first of ids (the first finished, then the smallest id)

-- The rows of `chat`, as chat.sql reads them.
with fields as (
    select id, custom_id, model, prompt_tokens, completion_tokens, finished_at,
           case
               -- A GenerationForClient keeps request and response at its top: one parse of raw
               -- gives all five fields (a third of the time of reading request and response).
               when request_path = '$.request' and response_path = '$.response' then json_extract(raw, [
                   '$.request.messages', '$.request.tools', '$.request.metadata',
                   '$.response.choices[0].message', '$.response.choices[0].finish_reason'])
               -- Any other record: its request and response as the generations view reads them.
               else list_concat(
                   coalesce(json_extract(coalesce(request_built, json_extract(raw, request_path)),
                                         ['$.messages', '$.tools', '$.metadata']), [null, null, null]),
                   coalesce(json_extract(coalesce(response_built, json_extract(raw, response_path)),
                                         ['$.choices[0].message', '$.choices[0].finish_reason']), [null, null]))
           end as f
    from generation_rows
    where state = 'Success'
),
calls as (
    select id, custom_id, model,
           -- Both parts are minified JSON: the answer goes in before the closing bracket.
           (left(f[1], -1) || case when f[1] = '[]' then '' else ',' end || f[4] || ']')::json as messages,
           nullif(f[2], 'null') as tools,
           f[5] ->> '$' as finish_reason,
           prompt_tokens, completion_tokens, finished_at,
           nullif(f[3], 'null') as metadata
    from fields
    where starts_with(f[1], '[') and starts_with(f[4], '{')
),
hashed as (
    select id, finished_at,
           md5(json_normalize(json_strip_nulls(json_object('messages', messages, 'tools', tools)))) as content_hash
    from calls
)
select content_hash, n, ids, ids[1] as kept_id
from (select content_hash, count(*) as n, list(id order by finished_at, id) as ids
      from hashed
      group by content_hash
      having count(*) >= 2)
order by n desc, kept_id
