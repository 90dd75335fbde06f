-- One row per cluster of near-duplicate chat rows, as the last `curate dedup near` found them.
--
-- `curate dedup near` compares the normalised text (lowercase, no punctuation, whitespace
-- collapsed) of each `chat` row's prompt (its request messages) or whole conversation, by
-- MinHash and LSH, and keeps in the table near_duplicate_rows every row of a cluster of two rows or
-- more. A cluster is named by its representative: the longest text, then the first finished,
-- then the smallest id. Rows come largest cluster first. Empty until the command has run.
--
-- cluster_id  varchar    the representative's generation id (the row to keep)
-- on_what     varchar    what was compared: prompt or conversation
-- n           bigint     rows in the cluster (2 or more), the representative included
-- ids         varchar[]  the rows' generation ids, the representative first, then by id
-- similarity  double     the lowest estimated Jaccard similarity of a member to the representative
select cluster_id, on_what, count(*) as n,
       list(id order by id <> cluster_id, id) as ids,
       min(similarity) as similarity
from near_duplicate_rows
group by cluster_id, on_what
order by n desc, on_what, cluster_id
