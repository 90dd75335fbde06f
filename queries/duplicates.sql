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

-- The rows of `chat` (yours, if a queries folder replaces chat.sql).
with calls as not materialized (select * from chat),
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
