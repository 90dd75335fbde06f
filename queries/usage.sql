-- One row per model and day: how many generations, how many succeeded, the tokens they used and how long they took.
--
-- The day is the UTC date the generation was dispatched (dispatchedAt; for a record without it,
-- finishedAt, else the day curate first stored it). Every generation counts, whatever its state
-- or kind (chat or embedding). Latency is finishedAt - dispatchedAt, over the generations that
-- have both. Sorted by day, then model.
--
-- day                date     UTC day of dispatch
-- model              varchar  the model asked for (NULL when the record names none)
-- generations        bigint   generations of this model that day, in any state
-- succeeded          bigint   of which Success
-- failed             bigint   of which Failed
-- success_rate       double   succeeded / (succeeded + failed); NULL while none has finished
-- prompt_tokens      bigint   sum of response.usage.prompt_tokens
-- completion_tokens  bigint   sum of response.usage.completion_tokens
-- latency_p50_s      double   median latency, in seconds (interpolated)
-- latency_p90_s      double   90th percentile latency, in seconds
-- latency_p99_s      double   99th percentile latency, in seconds

with timed as (
    select model, state, prompt_tokens, completion_tokens,
           (coalesce(dispatched_at, finished_at, first_seen_at) at time zone 'UTC')::date as day,
           epoch(finished_at - dispatched_at) as latency
    from generation_rows
),
daily as (
    select day, model, count(*) as generations,
           count(*) filter (where state = 'Success') as succeeded,
           count(*) filter (where state = 'Failed') as failed,
           sum(prompt_tokens)::bigint as prompt_tokens,
           sum(completion_tokens)::bigint as completion_tokens,
           quantile_cont(latency, [0.5, 0.9, 0.99]) as q
    from timed
    group by day, model
)
select day, model, generations, succeeded, failed,
       succeeded / nullif(succeeded + failed, 0) as success_rate,
       prompt_tokens, completion_tokens,
       q[1] as latency_p50_s, q[2] as latency_p90_s, q[3] as latency_p99_s
from daily
order by day, model
