-- One row per chat row with personal data or secrets found by `curate scan pii` in anything an
-- export can ship of it: its messages' text, names, tool calls (arguments too), image URLs, and
-- its tools definitions, model and finish_reason (`pii_findings.field` says where each is).
--
-- Reads the `pii_findings` table that `curate scan pii` fills (each run scans only the rows new
-- or changed since, `--full` all of them): a row here is a generation of `chat` with at least
-- one finding; rows without findings, and rows not scanned yet, are not listed. An export with
-- `--pii drop|redact` scans what is new first.
--
-- id          varchar    the generation id (a row of chat)
-- n_findings  bigint     findings in the row, of every kind, in every field
-- kinds       varchar[]  the kinds found, sorted, each once: credit_card, email, ip_address, phone, secret

select id, count(*) as n_findings, list_sort(list_distinct(list(kind))) as kinds
from pii_findings
where id in (select id from chat)
group by id
order by id
