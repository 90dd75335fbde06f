-- One row per chat row with personal data or secrets found in its messages by `curate scan pii`.
--
-- Reads the `pii_findings` table that `curate scan pii` fills (each run scans only the rows new
-- or changed since, `--full` all of them): a row here is a generation of `chat` with at least
-- one finding; rows without findings, and rows not scanned yet, are not listed. An export with
-- `--pii drop|redact` scans what is new first.
--
-- id          varchar    the generation id (a row of chat)
-- n_findings  bigint     findings in its messages, of every kind
-- kinds       varchar[]  the kinds found, sorted, each once: credit_card, email, ip_address, phone, secret

select id, count(*) as n_findings, list_sort(list_distinct(list(kind))) as kinds
from pii_findings
where id in (select id from chat)
group by id
order by id
