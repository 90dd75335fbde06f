-- One row per failure: each Failed generation, and each record curate refused (a reject), with its reason.
--
-- Rows come in no particular order.
--
-- kind    varchar      'failed' (a generation whose state is Failed) or 'rejected' (a record curate could not store)
-- id      varchar      the generation id; NULL for a rejected record
-- source  varchar      where it came from: poll, group, webhook, or import:FILE
-- line    bigint       a rejected record's line in its file (or its place in its batch); NULL for a Failed generation
-- reason  varchar      the generation's stateMessage (or the batch line's error message); why curate refused the record
-- model   varchar      the model asked for; NULL for a rejected record
-- at      timestamptz  when it failed (finishedAt, else when curate first stored it); when curate refused it

select 'failed' as kind, id, source, null::bigint as line, state_message as reason, model,
       coalesce(finished_at, first_seen_at) as at
from generation_rows
where state = 'Failed'
union all
select 'rejected' as kind, null::varchar as id, source, line, reason, null::varchar as model,
       rejected_at as at
from rejects
