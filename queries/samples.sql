-- One row per sampled answer: a chat row `curate sample` asked a teacher for, with the row whose prompt it answers.
--
-- A sample is a Success chat generation whose request.metadata.curate_task is 'sample'. Its
-- messages are its prompt's (the source row's messages before their answer) followed by the
-- teacher's answer. Join source_id to `chat.id` for the original answer.
-- Rows come in no particular order.
--
-- id                 varchar      the sample's generation id
-- custom_id          varchar      request.metadata.custom_id: sample:<digest of row, prompt, parameters>:<index>
-- model              varchar      the teacher model
-- messages           json         the prompt's messages, then the teacher's answer (as in `chat`)
-- tools              json         the tools the prompt offered; NULL when none
-- finish_reason      varchar      choices[0].finish_reason
-- prompt_tokens      bigint       response.usage.prompt_tokens
-- completion_tokens  bigint       response.usage.completion_tokens
-- finished_at        timestamptz  when the sample finished
-- metadata           json         request.metadata: curate_task, curate_source_id, curate_sample_index, curate_params
-- reasoning          varchar      the teacher's reasoning (as in `chat`); NULL when none
-- source_id          varchar      the id of the row whose prompt was sent (request.metadata.curate_source_id)
-- sample_index       integer      which of the K samples of that prompt (0 to K - 1)
-- temperature        double       the temperature asked for; NULL when the API's default was used
-- max_tokens         bigint       the max_tokens asked for; NULL when none was set

select chat.*,
       metadata ->> '$.curate_source_id' as source_id,
       try_cast(metadata ->> '$.curate_sample_index' as integer) as sample_index,
       try_cast(json_extract(metadata ->> '$.curate_params', '$.temperature') as double) as temperature,
       try_cast(json_extract(metadata ->> '$.curate_params', '$.max_tokens') as bigint) as max_tokens
from chat
where metadata ->> '$.curate_task' = 'sample'
