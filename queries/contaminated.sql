-- One row per chat row that shares word n-grams with an eval item (as `curate decontaminate` found).
--
-- A row is a chat row id with at least one `contamination` row: `curate decontaminate EVAL_FILE...`
-- writes one per (chat row, eval item) pair sharing at least --min-shared 13-word shingles
-- (lowercased words, punctuation ignored; an item shorter than 13 words must appear whole). Each
-- run replaces its eval sets' rows. Drop these rows from an export with
-- --where "id not in (select id from contaminated)". Rows come most shared first.
--
-- id                 varchar    the generation id (a row of chat)
-- eval_sets          varchar[]  the eval sets (file or folder names) it shares n-grams with, sorted
-- items              bigint     how many eval items (over all those sets) it shares n-grams with
-- max_shared_ngrams  integer    the most distinct n-grams it shares with one eval item

select id,
       list_sort(list(distinct eval_set)) as eval_sets,
       count(distinct (eval_set, eval_item)) as items,
       max(shared_ngrams) as max_shared_ngrams
from contamination
group by id
order by max_shared_ngrams desc, id
