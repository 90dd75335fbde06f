-- One row per judgment: the last judge generation of each (judged row, rubric text, judge model), with its score or why it has none.
--
-- A judgment is a generation `curate judge` asked for (request.metadata.curate_task = 'judge')
-- that has finished, Success or Failed. Its answer is read defensively: the JSON object is the
-- text from its first '{' to its last '}' (so prose or a ```json fence around it does no harm),
-- or, when that is not an object with a "score", the last brace-delimited object in the text
-- that is (so braces in the prose before it do no harm either); its "score" must be a number, or
-- a string holding one, from 1 to 10 (curate.judging.SCORE_RANGE). When it is not, the row is
-- kept, its score NULL and parse_error saying what is wrong. A row judged more than once by one
-- rubric text and one judge model (`curate judge --retry-failed`, an edited conversation) counts
-- its last finished judgment that gave a score, else its last finished one.
-- Rows come in no particular order.
--
-- judged_id            varchar      the id of the row judged (request.metadata.curate_judged_id)
-- rubric               varchar      the rubric's name (curate_rubric): a shipped name or the file's stem
-- rubric_hash          varchar      the hash of the rubric's text (curate_rubric_hash): an edited rubric judges again
-- judge_model          varchar      the model that judged
-- score                double       the score, 1 to 10; NULL when parse_error says why there is none
-- rationale            varchar      the judge's reason as it wrote it; NULL when it gave none
-- parse_error          varchar      NULL when parsed; else: the judge generation failed (its message), no text, no JSON object, JSON that does not parse, no score, a score that is not a number, a score out of 1-10
-- judge_generation_id  varchar      the judge's generation id
-- finished_at          timestamptz  when the judge finished

with judge as (
    select id, state, state_message, model, finished_at,
           json_extract(coalesce(request_built, json_extract(raw, request_path)), '$.metadata') as metadata,
           message_text(json_extract(coalesce(response_built, json_extract(raw, response_path)),
                                     '$.choices[0].message')) as answer
    from generation_rows
    where custom_id like 'judge:%' and state in ('Success', 'Failed')
),
read as (
    select *,
           coalesce(
               list_filter(list_prepend(regexp_extract(answer, '(?s)\{.*\}'),
                                        list_reverse(regexp_extract_all(answer, '\{[^{}]*\}'))),
                           lambda o: case when json_valid(o) then json_type(o) = 'OBJECT' and json_exists(o, '$.score')
                                          else false end)[1],
               nullif(regexp_extract(answer, '(?s)\{.*\}'), '')) as object
    from judge
    where metadata ->> '$.curate_task' = 'judge'
),
parsed as (
    select *,
           case when json_valid(object) and json_type(object) = 'OBJECT' then object end as json_object
    from read
),
scored as (
    select *,
           json_object -> '$.score' as score_json,
           case when json_type(json_object, '$.score') in ('BIGINT', 'UBIGINT', 'DOUBLE')
                then (json_object ->> '$.score')::double
                when json_type(json_object, '$.score') = 'VARCHAR'
                then try_cast(trim(json_object ->> '$.score') as double) end as number
    from parsed
)
select metadata ->> '$.curate_judged_id' as judged_id,
       metadata ->> '$.curate_rubric' as rubric,
       metadata ->> '$.curate_rubric_hash' as rubric_hash,
       model as judge_model,
       case when parse_error is null then number end as score,
       case when json_type(json_object, '$.rationale') = 'VARCHAR' then json_object ->> '$.rationale' end as rationale,
       parse_error,
       id as judge_generation_id,
       finished_at
from (
    select *,
           case when state = 'Failed' then 'the judge generation failed' || coalesce(': ' || state_message, '')
                when coalesce(trim(answer), '') = '' then 'the judge gave no text'
                when object is null then 'no JSON object in the answer'
                when json_object is null then 'the answer''s JSON object does not parse'
                when score_json is null then 'no "score" in the answer''s JSON'
                when number is null or isnan(number) then 'the score is not a number: ' || score_json::varchar
                when number < 1 or number > 10 then 'the score is outside 1-10: ' || score_json::varchar
           end as parse_error
    from scored
)
qualify row_number() over (partition by judged_id, rubric_hash, judge_model
                           order by score is not null desc, finished_at desc nulls last, judge_generation_id desc) = 1
