"""The store's schema, as an ordered list of small migrations recorded in the database.

Each migration is a function named ``mNNN_what`` that takes an open read-write connection inside
a transaction. A migration that has been applied to anyone's store is never edited: a change of
schema is a new function appended to ``MIGRATIONS``. ``apply`` records each applied name in
``_curate_migrations`` so that opening a store runs only what it lacks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import duckdb
import pyarrow as pa

__all__ = ["MIGRATIONS", "applied", "apply", "pending"]

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def m001_generations(con: duckdb.DuckDBPyConnection) -> None:
    # One row per generation id. `raw` is the record exactly as received, stored once (zstd:
    # smaller and faster to write than DuckDB's default string compression for long JSON), and
    # every other column is derived from it, so a parser fix can always be replayed from `raw`.
    # `raw_hash` lets a re-delivery be recognised without reading `raw` back. The `generations`
    # view adds `request` and `response`, read from `raw` by path when asked for: as stored
    # columns they would double the store, and as generated columns DuckDB computes them on
    # every insert (a quarter of an import's time).
    con.execute(
        """
        create table generation_rows (
            id                varchar not null,
            raw               json not null using compression zstd,
            raw_hash          ubigint not null,
            shape             varchar not null,
            state             varchar,
            state_message     varchar,
            model             varchar,
            custom_id         varchar,
            dispatched_at     timestamptz,
            finished_at       timestamptz,
            prompt_tokens     bigint,
            completion_tokens bigint,
            total_tokens      bigint,
            source            varchar not null,
            first_seen_at     timestamptz not null,
            updated_at        timestamptz not null,
            request_path      varchar,
            response_path     varchar,
            request_built     json,
            response_built    json
        )
        """
    )
    con.execute(
        """
        create view generations as
        select id, raw, raw_hash, shape, state, state_message, model, custom_id, dispatched_at,
               finished_at, prompt_tokens, completion_tokens, total_tokens, source,
               first_seen_at, updated_at, request_path, response_path,
               coalesce(request_built, json_extract(raw, request_path)) as request,
               coalesce(response_built, json_extract(raw, response_path)) as response
        from generation_rows
        """
    )


def m002_rejects(con: duckdb.DuckDBPyConnection) -> None:
    # Every record curate refused, with where it came from. Keyed so that importing the same
    # bad file twice keeps one row per bad line.
    con.execute(
        """
        create table rejects (
            source      varchar not null,
            line        bigint not null,
            reason      varchar not null,
            raw         varchar not null,
            raw_md5     varchar not null,
            rejected_at timestamptz not null,
            primary key (source, line, raw_md5)
        )
        """
    )


def m003_imports(con: duckdb.DuckDBPyConnection) -> None:
    # One row per `curate import` of one file: what it brought, for stats and provenance.
    con.execute("create sequence imports_seq")
    con.execute(
        """
        create table imports (
            import_id   bigint primary key default nextval('imports_seq'),
            source      varchar not null,
            started_at  timestamptz not null,
            finished_at timestamptz,
            lines       bigint not null default 0,
            stored      bigint not null default 0,
            updated     bigint not null default 0,
            duplicate   bigint not null default 0,
            rejected    bigint not null default 0,
            skipped     bigint not null default 0
        )
        """
    )


def m004_submissions_and_ledger(con: duckdb.DuckDBPyConnection) -> None:
    # `submissions`: every request line curate sent or is about to send, keyed so a re-run never
    # sends it twice. A row is written as `sending` and committed before its POST goes out, so a
    # crash between the two leaves it `sending`: maybe billed, never sent again without asking.
    con.execute(
        """
        create table submissions (
            key           varchar primary key,
            source        varchar not null,
            line          bigint not null,
            request       json not null,
            state         varchar not null,
            generation_id varchar,
            group_id      varchar,
            error         varchar,
            created_at    timestamptz not null,
            updated_at    timestamptz not null
        )
        """
    )
    # `ledger`: every generation or group id curate waits for (there is no endpoint that lists
    # them), with its polling schedule, so a harvest resumes after any stop.
    con.execute(
        """
        create table ledger (
            id           varchar primary key,
            kind         varchar not null,
            group_id     varchar,
            source       varchar not null,
            added_at     timestamptz not null,
            attempts     integer not null default 0,
            next_poll_at timestamptz not null,
            last_state   varchar,
            last_seen_at timestamptz,
            done_at      timestamptz
        )
        """
    )


def m005_curation(con: duckdb.DuckDBPyConnection) -> None:
    # What the curation passes find, kept apart from the generations they describe: the store's
    # bodies are never modified, and each pass can be re-run (it replaces its own rows).
    # `near_duplicate_rows`: one row per member of a cluster of near-identical chat rows (compared on
    # their prompt or their whole conversation), the cluster named by its representative's id.
    con.execute(
        """
        create table near_duplicate_rows (
            id          varchar not null,
            on_what     varchar not null,
            cluster_id  varchar not null,
            similarity  double,
            threshold   double not null,
            computed_at timestamptz not null,
            primary key (on_what, id)
        )
        """
    )
    # `pii_findings`: one row per span of personal data or secret found in a message.
    con.execute(
        """
        create table pii_findings (
            id            varchar not null,
            message_index integer not null,
            kind          varchar not null,
            span_start    integer not null,
            span_end      integer not null,
            detector      varchar not null,
            scanned_at    timestamptz not null
        )
        """
    )
    # `contamination`: one row per (chat row, eval item) pair sharing enough n-grams.
    con.execute(
        """
        create table contamination (
            id            varchar not null,
            eval_set      varchar not null,
            eval_item     varchar not null,
            shared_ngrams integer not null,
            ngram         integer not null,
            found_at      timestamptz not null
        )
        """
    )


def m006_lake(con: duckdb.DuckDBPyConnection) -> None:
    # `lake_sent`: which generations this store has appended to an Iceberg lake (curate.lake), one
    # row per (lake, id, body). A row is claimed as `sending` before its commit and marked
    # `committed` after, so a writer killed in between leaves a claim the next push settles.
    con.execute(
        """
        create table lake_sent (
            lake         varchar not null,
            id           varchar not null,
            raw_hash     ubigint not null,
            batch_id     varchar not null,
            state        varchar not null,
            claimed_by   varchar not null,
            claimed_at   timestamptz not null,
            snapshot_id  bigint,
            committed_at timestamptz
        )
        """
    )


def m007_views_per_connection_and_spool(con: duckdb.DuckDBPyConnection) -> None:
    # Views now live in each reader's connection (curate.views.install), so a reader never writes
    # the file and one analyst's view folder never changes another's: the views that earlier
    # versions created inside the file (their comment starts "curate view ") are dropped.
    rows = con.execute(
        "select view_name from duckdb_views() where not internal and not temporary "
        "and schema_name = 'main' and starts_with(coalesce(comment, ''), 'curate view ')"
    ).fetchall()
    for (name,) in rows:
        con.execute(f'drop view "{name}"')
    # `spool_merged`: how far each spool segment (curate.spool) has been merged, committed in the
    # same transaction as what was merged, so a segment merged again after a crash starts where
    # the last commit ended and nothing is applied twice.
    con.execute(
        """
        create table spool_merged (
            segment   varchar primary key,
            merged_to bigint not null,
            records   bigint not null,
            merged_at timestamptz not null
        )
        """
    )


def _m008_key(request: str) -> str:
    # The key rule of m008, frozen here: a later change of rule is a later migration.
    body = json.loads(request)
    metadata = dict(body.get("metadata") or {})
    metadata.pop("webhook_id", None)
    if metadata:
        body["metadata"] = metadata
    else:
        body.pop("metadata", None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def m008_submission_claims(con: duckdb.DuckDBPyConnection) -> None:
    # A line is now claimed by one run (`claimed_by`: host, PID and a token) before its POST, so
    # two runs never send it twice, and it is sent with a `metadata.custom_id` (`custom_id`: the
    # user's, or curate's own for a line without one) so a generation that comes back by any way
    # names its line. Earlier runs sent lines without one: theirs stays NULL. This migration was
    # widened (the webhook ids below) before any release applied it.
    con.execute("alter table submissions add column custom_id varchar")
    con.execute("alter table submissions add column claimed_by varchar")
    con.execute(
        "update submissions set custom_id = substr(key, length('custom_id:') + 1) "
        "where starts_with(key, 'custom_id:')"
    )
    # A line without custom_id was keyed by a hash of the body *after* --webhook-id was added to
    # it, so the same line submitted with and without the flag had two keys (and was paid twice).
    # The key now leaves metadata.webhook_id out: re-key those rows, keeping one row per new key
    # (the furthest along; the ledger already holds every id the others got).
    rows = con.execute(
        "select key, request::varchar, state, updated_at from submissions where starts_with(key, 'sha256:')"
    ).fetchall()
    rank = {"submitted": 0, "sending": 1, "uncertain": 1, "failed": 2}
    best: dict[str, tuple[str, str, datetime]] = {}
    for key, request, state, updated_at in rows:
        new = _m008_key(request)
        held = best.get(new)
        if held is None or (rank.get(state, 3), -updated_at.timestamp()) < (rank.get(held[1], 3), -held[2].timestamp()):
            best[new] = (key, state, updated_at)
    keep = {old for old, _, _ in best.values()}
    dropped = [key for key, *_ in rows if key not in keep]
    if dropped:
        con.execute("delete from submissions where key in (select unnest(?::varchar[]))", [dropped])
    moves = [(old, new) for new, (old, _, _) in best.items() if old != new]
    if moves:
        con.register("_curate_rekey", pa.table({"old": [m[0] for m in moves], "new": [m[1] for m in moves]}))
        con.execute("update submissions set key = r.new from _curate_rekey r where submissions.key = r.old")
        con.unregister("_curate_rekey")
    # The webhook id is a credential (deliveries are not signed): it leaves the stored requests.
    con.execute(
        """
        update submissions set request = json_merge_patch(request, '{"metadata": {"webhook_id": null}}')
        where json_exists(request, '$.metadata.webhook_id')
        """
    )


def m009_mask_webhook_ids(con: duckdb.DuckDBPyConnection) -> None:
    # A webhook id is a credential (deliveries are not signed): stored records keep a marker in
    # its place from now on (curate.records.masked), and the rows stored before are masked here,
    # their hash with them, so a re-delivery is still recognised as a duplicate. The rule is
    # frozen here as it was on the day (widened, before any release applied it, to a cut-off value
    # and an escaped underscore).
    pattern = r'("webhook(?:_|\\u005[fF])?[iI][dD]"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)'
    marker = '\\1"[webhook-id]"'
    con.execute(
        f"""
        update generation_rows set raw = m.raw, raw_hash = hash(m.raw)
        from (select id, regexp_replace(raw::varchar, '{pattern}', '{marker}', 'g') as raw
              from generation_rows where contains(raw::varchar, 'ebhook')) m
        where generation_rows.id = m.id and m.raw <> generation_rows.raw::varchar
        """
    )
    # A reject's key holds the md5 of its text: two rejects of one line that differed only by
    # their webhook id become one (the same file imported before and after the id was changed).
    con.execute(
        f"""
        create temp table _m009_rejects as
        select source, line, raw_md5 as old_md5, reason, masked, md5(masked) as raw_md5, rejected_at
        from (select *, regexp_replace(raw, '{pattern}', '{marker}', 'g') as masked
              from rejects where contains(raw, 'ebhook'))
        where masked <> raw
        """
    )
    con.execute(
        "delete from rejects where (source, line, raw_md5) in "
        "(select (source, line, old_md5) from _m009_rejects)"
    )
    con.execute(
        """
        insert into rejects by name
        select source, line, reason, masked as raw, raw_md5, rejected_at from _m009_rejects
        qualify row_number() over (partition by source, line, raw_md5 order by rejected_at) = 1
        on conflict do nothing
        """
    )
    con.execute("drop table _m009_rejects")


def m010_pass_coverage(con: duckdb.DuckDBPyConnection) -> None:
    # What each curation pass has seen, so that a later run scans only what is new and an export
    # acting on a pass can tell which of its rows the pass never saw. `pass_coverage`: one row
    # per (pass, chat row) the pass has read, with the body it read (`raw_hash`, the generation's)
    # and a digest of its settings (detectors, threshold, eval file...); a row is covered when
    # both still match. `pass` names the pass and its scope: `pii`, `near:prompt`,
    # `near:conversation`, `decontaminate:<eval set>`. `pass_settings`: per pass, the digest in
    # force and the settings themselves (JSON), so that an export can run the pass again as it
    # was run (the eval file's path, the threshold).
    con.execute(
        """
        create table pass_coverage (
            pass       varchar not null,
            id         varchar not null,
            raw_hash   ubigint not null,
            settings   varchar not null,
            scanned_at timestamptz not null
        )
        """
    )
    con.execute(
        """
        create table pass_settings (
            pass       varchar not null,
            settings   varchar not null,
            params     json not null,
            updated_at timestamptz not null
        )
        """
    )


def m011_pii_findings_field(con: duckdb.DuckDBPyConnection) -> None:
    # `curate scan pii` reads every string an export ships, not only the messages' text.
    # `pii_findings.field`: where the span is: 'text' (every finding before this migration), the
    # text of message `message_index`, which `--pii redact` replaces; else the path of another
    # string of the row (`messages[3].tool_calls[0].function.arguments.to`, `tools[0].function.
    # description`, `model`), with `message_index` NULL: a NULL index names no message content,
    # so an export with `--pii redact` drops the row rather than ship it half-redacted.
    con.execute("alter table pii_findings alter column message_index drop not null")
    con.execute("alter table pii_findings add column field varchar default 'text'")
    con.execute("alter table pii_findings alter column field set not null")


def m012_signal_rows(con: duckdb.DuckDBPyConnection) -> None:
    # `signal_rows`: what `curate score` (curate.signals) measured of one chat row's answer, with
    # the body it read (`raw_hash`, the generation's) and the version of the signals' definitions
    # (`version`): a row whose body changed, or that an older version scored, is scored again.
    # One row per id. The view `signals` (queries/signals.sql) reads it; its header defines each
    # signal. (Not named `signals`: a view file cannot take the name of one of the store's tables.)
    con.execute(
        """
        create table signal_rows (
            id             varchar not null,
            raw_hash       ubigint not null,
            version        integer not null,
            refusal        boolean not null,
            refusal_phrase varchar,
            repetition     double not null,
            truncated      boolean not null,
            empty          boolean not null,
            short          boolean not null,
            language       varchar,
            language_score double,
            answer_chars   bigint not null,
            answer_words   bigint not null,
            scored_at      timestamptz not null
        )
        """
    )


MIGRATIONS: list[Migration] = [
    m001_generations, m002_rejects, m003_imports, m004_submissions_and_ledger, m005_curation, m006_lake,
    m007_views_per_connection_and_spool, m008_submission_claims, m009_mask_webhook_ids,
    m010_pass_coverage, m011_pii_findings_field, m012_signal_rows,
]


def _ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "create table if not exists _curate_migrations "
        "(name varchar primary key, applied_at timestamptz not null default now())"
    )


def applied(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the migrations this store has recorded, in the order they ran."""
    exists = con.execute(
        "select count(*) from duckdb_tables() where table_name = '_curate_migrations' "
        "and database_name = current_database() and schema_name = 'main'"
    ).fetchone()
    if not exists or not exists[0]:
        return []
    return [r[0] for r in con.execute("select name from _curate_migrations order by applied_at, name").fetchall()]


def pending(con: duckdb.DuckDBPyConnection, migrations: list[Migration] | None = None) -> list[Migration]:
    """The migrations not yet recorded in this store."""
    done = set(applied(con))
    return [m for m in (MIGRATIONS if migrations is None else migrations) if m.__name__ not in done]


def apply(con: duckdb.DuckDBPyConnection, migrations: list[Migration] | None = None) -> list[str]:
    """Run every pending migration, each in its own transaction; return the names it ran.

    A new store's migrations run in one transaction: a writer killed while it creates the store
    leaves no schema rather than half of one, which readers would refuse as behind.
    """
    ran: list[str] = []
    todo = pending(con, migrations)
    if not todo:
        return ran
    if not applied(con):
        with _transaction(con):
            _ensure_table(con)
            for migration in todo:
                _run(con, migration)
        return [m.__name__ for m in todo]
    _ensure_table(con)
    for migration in todo:
        with _transaction(con):
            _run(con, migration)
        ran.append(migration.__name__)
    return ran


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("begin transaction")
    try:
        yield
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


def _run(con: duckdb.DuckDBPyConnection, migration: Migration) -> None:
    migration(con)
    con.execute("insert into _curate_migrations (name) values (?)", [migration.__name__])
