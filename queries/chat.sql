-- One row per Success chat generation: the messages sent, followed by the model's answer.
--
-- A row is a generation whose state is 'Success', whose request holds `messages` and whose
-- response holds a chat completion (`choices[0].message`). Embeddings (a response with `data`,
-- no `choices`), OpenAI batch output lines (which keep no request) and the answers of `curate judge`
-- (request.metadata.curate_task = 'judge': see `judgments`) are not chat rows.
-- JSON columns hold JSON text (plain strings in Arrow and Hugging Face datasets), each value as
-- received, minified, its keys in their order. Rows come in no particular order.
--
-- id                 varchar      the generation id
-- custom_id          varchar      request.metadata.custom_id
-- model              varchar      the model asked for (request.model, else response.model)
-- messages           json         a JSON array: request.messages, then choices[0].message; every message whole (tool_calls, tool_call_id, content parts, any other key)
-- tools              json         request.tools, a JSON array; NULL when the request offered none
-- finish_reason      varchar      choices[0].finish_reason: stop, length, tool_calls, ...
-- prompt_tokens      bigint       response.usage.prompt_tokens
-- completion_tokens  bigint       response.usage.completion_tokens
-- finished_at        timestamptz  when the generation finished (finishedAt)
-- metadata           json         request.metadata, a JSON object; NULL when absent
-- reasoning          varchar      the answer's reasoning (a reasoning model's thinking): choices[0].message.reasoning_content, else .reasoning, the first that is a string (curate.messages.REASONING_KEYS); NULL when none. The answer in messages keeps it under the key it came with

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
           nullif(f[3], 'null') as metadata,
           message_reasoning(f[4]) as reasoning
    from fields
    where starts_with(f[1], '[') and starts_with(f[4], '{')
      -- A judge's answer (`curate judge`) is a score of another row, not a conversation to train
      -- on: it is read by `judgments`, not here. (custom_id, a stored column, rules out the rest cheaply.)
      and not coalesce(starts_with(custom_id, 'judge:') and f[3] ->> '$.curate_task' = 'judge', false)
)
select * from calls
