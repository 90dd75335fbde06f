-- One row per conversation trajectory: every call whose messages another call re-sends is folded into the longest one.
--
-- A chat client or an agent re-sends the whole history with each call, so a conversation of n
-- turns is logged as n calls, each call's messages a prefix of the next call's. A row is one
-- trajectory: a chat call (a row of `chat`, same definition) that no other call extends, with
-- every call it extends folded into it.
--
-- Call A folds into call B when A's messages (its request messages followed by its answer, as
-- in `chat`) are a strict prefix of B's messages, compared message by message as JSON values
-- regardless of key order and of null members ({"role": "assistant", "content": null,
-- "tool_calls": [...]} equals the same message without "content"). Only messages count: A and
-- B may differ in model, tools or metadata. Two calls with the same messages do not fold into
-- each other (see `duplicates`), and a call whose answer the next call re-sent altered starts a
-- trajectory of its own. A call that several calls extend folds into the longest of them (ties:
-- the first finished, then the smallest id); no call extends that one, so every chat row is in
-- exactly one trajectory.
--
-- Cost: each message is normalised and hashed once; each distinct message list is then matched,
-- by an equi-join on (length, hash), against the prefixes of the calls that end with an
-- assistant message (the only ones a call's messages, which end with its answer, can equal).
-- Linear in the number of messages, times the assistant turns a call re-sends; never a
-- comparison of every pair, and a call logged many times costs what one copy costs. Rows come in
-- no particular order.
--
-- The columns of `chat`, for the trajectory's last (longest) call, then:
-- id                 varchar      the longest call's generation id
-- custom_id          varchar      its request.metadata.custom_id
-- model              varchar      its model
-- messages           json         its messages: the whole trajectory, as a JSON array
-- tools              json         its request.tools; NULL when it offered none
-- finish_reason      varchar      its choices[0].finish_reason
-- prompt_tokens      bigint       its response.usage.prompt_tokens
-- completion_tokens  bigint       its response.usage.completion_tokens
-- finished_at        timestamptz  when it finished
-- metadata           json         its request.metadata
-- reasoning          varchar      its answer's reasoning (as in `chat`); NULL when none
-- n_calls            bigint       calls in the trajectory: 1 + len(folded_ids)
-- folded_ids         varchar[]    ids of the calls folded into it, shortest first (then by finished_at, id); empty when none

-- The rows of `chat` (yours, if a queries folder replaces chat.sql).
with calls as not materialized (select * from chat),
-- Each call's messages in canonical form (keys sorted at every depth, null members dropped).
canonical as (
    select id, finished_at, json_extract(json_normalize(json_strip_nulls(messages)), '$[*]') as canon
    from calls
),
-- Each call: the hash of each message, of the whole list, and where its answers are (the prefix
-- of another call that can equal a whole call ends with an answer). The test is on the canonical
-- text, where an answer reads "role":"assistant" unescaped; one that reads otherwise is only
-- not folded. Computed once for both sides of the join.
hashed as materialized (
    select id, finished_at, len(hs) as n, hash(hs) as h, hs, ends
    from (select id, finished_at, list_transform(canon, lambda m: hash(m)) as hs,
                 list_filter(range(1, len(canon)), lambda k: contains(canon[k], '"role":"assistant"')) as ends
          from canonical)
),
-- Each prefix of a call's request messages that ends with an answer.
prefixes as (
    select id, finished_at, n, k, hash(hs[1:k]) as h, hs[1:k] as head
    from (select *, unnest(ends) as k from hashed)
),
-- Each distinct list of messages some call has whole, and the call it folds into: the longest
-- call that starts with it, then the first finished. Distinct first, so that many copies of one
-- call cost no more than one.
wholes as (
    select distinct n, h, hs from hashed
),
targets as (
    select w.n, w.h, w.hs, b.id as into_id
    from wholes w join prefixes b on b.k = w.n and b.h = w.h and b.head = w.hs
    qualify row_number() over (partition by w.n, w.h, w.hs order by b.n desc, b.finished_at, b.id) = 1
),
folded as (
    select a.id, a.finished_at, a.n, t.into_id
    from hashed a join targets t on t.n = a.n and t.h = a.h and t.hs = a.hs
),
trajectories as (
    select into_id, list(id order by n, finished_at, id) as folded_ids
    from folded
    group by into_id
)
select c.*, 1 + coalesce(len(t.folded_ids), 0) as n_calls, coalesce(t.folded_ids, []::varchar[]) as folded_ids
from calls c
left join trajectories t on t.into_id = c.id
where not exists (select 1 from folded f where f.id = c.id)
