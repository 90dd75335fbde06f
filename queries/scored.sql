-- One row per chat row, with its heuristic signals and its latest score per rubric: the view to filter on before an export.
--
-- `chat`'s rows and columns, then the row's `signals` (NULL until `curate score` has measured it
-- as it is now) and its `judgments`: for each rubric, the score of the latest judgment that gave
-- one (any judge model, any version of the rubric's text; an unparseable judgment gives none and
-- does not hide an earlier score). The shipped rubrics have a column each; every rubric, yours
-- included, is in judge_scores by name:
--   curate export scored --where "judge_helpfulness >= 8 and not refusal" --out best/
--   curate export scored --where "judge_scores['tone'] >= 7" --out polite/
-- Rows come in no particular order.
--
-- id                 varchar               the generation id
-- custom_id          varchar               request.metadata.custom_id
-- model              varchar               the model asked for
-- messages           json                  the messages sent, then the model's answer
-- tools              json                  request.tools; NULL when none
-- finish_reason      varchar               choices[0].finish_reason
-- prompt_tokens      bigint                response.usage.prompt_tokens
-- completion_tokens  bigint                response.usage.completion_tokens
-- finished_at        timestamptz           when the generation finished
-- metadata           json                  request.metadata
-- reasoning          varchar               the answer's reasoning (as in `chat`); NULL when none
-- refusal            boolean               signals: the answer starts with a listed refusal phrase
-- refusal_phrase     varchar               signals: that phrase
-- repetition         double                signals: share of the answer's word 4-grams repeating an earlier one
-- truncated          boolean               signals: finish_reason = 'length'
-- empty              boolean               signals: the answer has no text
-- short              boolean               signals: fewer than 5 words
-- language           varchar               signals: the answer's language (ISO 639-1)
-- language_score     double                signals: the language's probability
-- answer_chars       bigint                signals: the answer's length in characters
-- answer_words       bigint                signals: the answer's words
-- judge_helpfulness  double                the latest score by the shipped helpfulness rubric, 1 to 10; NULL when none
-- judge_correctness  double                the latest score by the shipped correctness rubric, 1 to 10; NULL when none
-- judge_scores       map(varchar,double)   every rubric's latest score, by rubric name; empty when none

with latest as (
    select judged_id, rubric, arg_max(score, finished_at) as score
    from judgments
    where score is not null
    group by all
),
by_row as (
    select judged_id as id, map(list(rubric order by rubric), list(score order by rubric)) as judge_scores
    from latest
    group by all
)
select chat.*,
       s.refusal, s.refusal_phrase, s.repetition, s.truncated, s.empty, s.short, s.language, s.language_score,
       s.answer_chars, s.answer_words,
       j.judge_scores['helpfulness'] as judge_helpfulness,
       j.judge_scores['correctness'] as judge_correctness,
       coalesce(j.judge_scores, map()::map(varchar, double)) as judge_scores
from chat
left join signals as s using (id)
left join by_row as j using (id)
