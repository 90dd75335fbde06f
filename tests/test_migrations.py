"""Migrations: a blank store and a store at an earlier schema end at the same exact columns.

Only a writer migrates (``Store.migrate``, ``curate migrate``, any import or harvest); a reader
refuses a store that is behind and leaves its file as it found it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from curate import migrations, submissions, views
from curate.store import Store, StoreBehind
from curate.synthetic import generation_record

CURATE = str(Path(sys.executable).parent / "curate")
LAST = migrations.MIGRATIONS[-1].__name__

EXPECTED = {
    "generation_rows": [
        ("id", "VARCHAR"), ("raw", "JSON"), ("raw_hash", "UBIGINT"), ("shape", "VARCHAR"),
        ("state", "VARCHAR"), ("state_message", "VARCHAR"), ("model", "VARCHAR"),
        ("custom_id", "VARCHAR"), ("dispatched_at", "TIMESTAMP WITH TIME ZONE"),
        ("finished_at", "TIMESTAMP WITH TIME ZONE"), ("prompt_tokens", "BIGINT"),
        ("completion_tokens", "BIGINT"), ("total_tokens", "BIGINT"), ("source", "VARCHAR"),
        ("first_seen_at", "TIMESTAMP WITH TIME ZONE"), ("updated_at", "TIMESTAMP WITH TIME ZONE"),
        ("request_path", "VARCHAR"), ("response_path", "VARCHAR"), ("request_built", "JSON"),
        ("response_built", "JSON"),
    ],
    "generations": [
        ("id", "VARCHAR"), ("raw", "JSON"), ("raw_hash", "UBIGINT"), ("shape", "VARCHAR"),
        ("state", "VARCHAR"), ("state_message", "VARCHAR"), ("model", "VARCHAR"),
        ("custom_id", "VARCHAR"), ("dispatched_at", "TIMESTAMP WITH TIME ZONE"),
        ("finished_at", "TIMESTAMP WITH TIME ZONE"), ("prompt_tokens", "BIGINT"),
        ("completion_tokens", "BIGINT"), ("total_tokens", "BIGINT"), ("source", "VARCHAR"),
        ("first_seen_at", "TIMESTAMP WITH TIME ZONE"), ("updated_at", "TIMESTAMP WITH TIME ZONE"),
        ("request_path", "VARCHAR"), ("response_path", "VARCHAR"), ("request", "JSON"),
        ("response", "JSON"),
    ],
    "rejects": [
        ("source", "VARCHAR"), ("line", "BIGINT"), ("reason", "VARCHAR"), ("raw", "VARCHAR"),
        ("raw_md5", "VARCHAR"), ("rejected_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "imports": [
        ("import_id", "BIGINT"), ("source", "VARCHAR"), ("started_at", "TIMESTAMP WITH TIME ZONE"),
        ("finished_at", "TIMESTAMP WITH TIME ZONE"), ("lines", "BIGINT"), ("stored", "BIGINT"),
        ("updated", "BIGINT"), ("duplicate", "BIGINT"), ("rejected", "BIGINT"),
        ("skipped", "BIGINT"),
    ],
    "_curate_migrations": [("name", "VARCHAR"), ("applied_at", "TIMESTAMP WITH TIME ZONE")],
    "submissions": [
        ("key", "VARCHAR"), ("source", "VARCHAR"), ("line", "BIGINT"), ("request", "JSON"),
        ("state", "VARCHAR"), ("generation_id", "VARCHAR"), ("group_id", "VARCHAR"),
        ("error", "VARCHAR"), ("created_at", "TIMESTAMP WITH TIME ZONE"),
        ("updated_at", "TIMESTAMP WITH TIME ZONE"), ("custom_id", "VARCHAR"), ("claimed_by", "VARCHAR"),
    ],
    "ledger": [
        ("id", "VARCHAR"), ("kind", "VARCHAR"), ("group_id", "VARCHAR"), ("source", "VARCHAR"),
        ("added_at", "TIMESTAMP WITH TIME ZONE"), ("attempts", "INTEGER"),
        ("next_poll_at", "TIMESTAMP WITH TIME ZONE"), ("last_state", "VARCHAR"),
        ("last_seen_at", "TIMESTAMP WITH TIME ZONE"), ("done_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "near_duplicate_rows": [
        ("id", "VARCHAR"), ("on_what", "VARCHAR"), ("cluster_id", "VARCHAR"), ("similarity", "DOUBLE"),
        ("threshold", "DOUBLE"), ("computed_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "pii_findings": [
        ("id", "VARCHAR"), ("message_index", "INTEGER"), ("kind", "VARCHAR"), ("span_start", "INTEGER"),
        ("span_end", "INTEGER"), ("detector", "VARCHAR"), ("scanned_at", "TIMESTAMP WITH TIME ZONE"),
        ("field", "VARCHAR"),
    ],
    "contamination": [
        ("id", "VARCHAR"), ("eval_set", "VARCHAR"), ("eval_item", "VARCHAR"), ("shared_ngrams", "INTEGER"),
        ("ngram", "INTEGER"), ("found_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "lake_sent": [
        ("lake", "VARCHAR"), ("id", "VARCHAR"), ("raw_hash", "UBIGINT"), ("batch_id", "VARCHAR"),
        ("state", "VARCHAR"), ("claimed_by", "VARCHAR"), ("claimed_at", "TIMESTAMP WITH TIME ZONE"),
        ("snapshot_id", "BIGINT"), ("committed_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "spool_merged": [
        ("segment", "VARCHAR"), ("merged_to", "BIGINT"), ("records", "BIGINT"),
        ("merged_at", "TIMESTAMP WITH TIME ZONE"),
    ],    "pass_coverage": [
        ("pass", "VARCHAR"), ("id", "VARCHAR"), ("raw_hash", "UBIGINT"), ("settings", "VARCHAR"),
        ("scanned_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "pass_settings": [
        ("pass", "VARCHAR"), ("settings", "VARCHAR"), ("params", "JSON"), ("updated_at", "TIMESTAMP WITH TIME ZONE"),
    ],
    "signal_rows": [
        ("id", "VARCHAR"), ("raw_hash", "UBIGINT"), ("version", "INTEGER"), ("refusal", "BOOLEAN"),
        ("refusal_phrase", "VARCHAR"), ("repetition", "DOUBLE"), ("truncated", "BOOLEAN"), ("empty", "BOOLEAN"),
        ("short", "BOOLEAN"), ("language", "VARCHAR"), ("language_score", "DOUBLE"), ("answer_chars", "BIGINT"),
        ("answer_words", "BIGINT"), ("scored_at", "TIMESTAMP WITH TIME ZONE"),
    ],
}


def columns(store: Store) -> dict[str, list[tuple[str, str]]]:
    """Every table's and view's columns, but the views from queries/ (tests/test_views.py owns those)."""
    found: dict[str, list[tuple[str, str]]] = {}
    shipped = [view.name for view in views.load([views.QUERIES_DIR])]
    for row in store.arrow(
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_name not in (select unnest(?::varchar[])) order by table_name, ordinal_position",
        [shipped],
    ).to_pylist():
        found.setdefault(row["table_name"], []).append((row["column_name"], row["data_type"]))
    return found


def test_blank_store_has_exactly_the_expected_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "blank.duckdb")
    assert columns(store) == EXPECTED
    applied = [r["name"] for r in store.arrow("select name from _curate_migrations").to_pylist()]
    assert applied == [m.__name__ for m in migrations.MIGRATIONS]


def old_store(path: Path, before: str = LAST) -> duckdb.DuckDBPyConnection:
    """A store at the schema before migration ``before``, as that older curate left it (open)."""
    con = duckdb.connect(str(path))
    names = [m.__name__ for m in migrations.MIGRATIONS]
    migrations.apply(con, migrations.MIGRATIONS[: names.index(before)])
    return con


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_at_the_previous_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = old_store(path)
    record = generation_record(1)
    con.execute(
        "insert into generation_rows (id, raw, raw_hash, shape, source, first_seen_at, updated_at, "
        "request_path) values (?, ?, hash(?), 'generation', 'poll', now(), now(), '$.request')",
        [record["id"], json.dumps(record), json.dumps(record)],
    )
    con.close()

    store = Store(path)
    assert store.migrate() == [LAST]

    assert columns(store) == EXPECTED
    (row,) = store.arrow("select id, request from generations").to_pylist()
    assert (row["id"], json.loads(row["request"])) == (record["id"], record["request"])


def test_migrating_drops_the_views_curate_made_in_the_file_and_keeps_the_users_own(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = old_store(path, before="m007_views_per_connection_and_spool")
    # What curate before m007 left in the file: the views, each marked by its comment.
    con.execute("create view chat as select id, model from generations where state = 'Success'")
    con.execute("comment on view chat is 'curate view 0123456789abcdef'")
    con.execute("create view usage as select model, count(*) as n from generations group by model")
    con.execute("comment on view usage is 'curate view fedcba9876543210'")
    # A user's own views: one bare, one with a comment of their own.
    con.execute("create view my_ids as select id from generation_rows")
    con.execute("create view my_models as select distinct model from generation_rows")
    con.execute("comment on view my_models is 'the models we pay for'")
    con.close()

    names = [m.__name__ for m in migrations.MIGRATIONS]
    assert Store(path).migrate() == names[names.index("m007_views_per_connection_and_spool"):]

    con = duckdb.connect(str(path), read_only=True)
    try:
        left = con.execute(
            "select view_name, comment from duckdb_views() where not internal order by view_name").fetchall()
    finally:
        con.close()
    assert left == [("generations", None), ("my_ids", None), ("my_models", "the models we pay for")]
    # The reader's own chat and usage take their place, and the user's views still read.
    store = Store(path)
    assert store.arrow("select count(*) as n from chat").to_pylist() == [{"n": 0}]
    assert store.arrow("select count(*) as n from my_ids").to_pylist() == [{"n": 0}]
    assert store.view_errors == []


def test_lines_keyed_with_their_webhook_id_are_rekeyed_without_it_and_keep_one_row(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = old_store(path, before="m008_submission_claims")
    line = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with_webhook = {**line, "metadata": {"webhook_id": "w1"}}

    def old_key(body: dict[str, object]) -> str:  # the rule before m008: a hash of the body as sent
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    rows = [  # the same line sent without, then with --webhook-id (paid twice), and a custom_id line
        (old_key(line), json.dumps(line), "submitted", "g1"),
        (old_key(with_webhook), json.dumps(with_webhook), "uncertain", None),
        ("custom_id:c7", json.dumps({**line, "metadata": {"custom_id": "c7"}}), "submitted", "g2"),
    ]
    for key, request, state, gid in rows:
        con.execute("insert into submissions (key, source, line, request, state, generation_id, created_at, "
                    "updated_at) values (?, 'submit:f', 1, ?, ?, ?, now(), now())", [key, request, state, gid])
    con.close()

    Store(path).migrate()

    after = Store(path).arrow("select key, state, generation_id, custom_id from submissions order by key").to_pylist()
    assert after == [
        {"key": "custom_id:c7", "state": "submitted", "generation_id": "g2", "custom_id": "c7"},
        {"key": submissions.line_key(with_webhook), "state": "submitted", "generation_id": "g1", "custom_id": None},
    ]
    assert submissions.line_key(with_webhook) == submissions.line_key(line) == old_key(line)


def test_a_reader_refuses_a_store_that_needs_a_migration_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old_store(path).close()
    before = sha256(path)

    store = Store(path)
    for read in (lambda: store.sql("select 1"), lambda: store.views(), lambda: store.snapshot(tmp_path / "snap")):
        with pytest.raises(StoreBehind) as caught:
            read()
        message = str(caught.value)
        assert f"run `curate migrate --db {path}`" in message
        assert LAST in message and "\n" not in message

    assert sha256(path) == before
    assert not path.with_name(path.name + ".wal").exists()


def curate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CURATE_DB", "CURATE_QUERIES")}
    return subprocess.run([CURATE, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_curate_migrate_applies_what_is_pending_then_says_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old_store(path).close()

    refused = curate_cli("sql", "select 1", "--db", str(path))
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {path} was written by an older curate")
    assert f"run `curate migrate --db {path}`" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr

    first = curate_cli("migrate", "--db", str(path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied 1 migration(s) to {path}:", f"  {LAST}"]
    assert columns(Store(path)) == EXPECTED

    again = curate_cli("migrate", "--db", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{path} is up to date"
    assert curate_cli("sql", "select 1 as one", "--db", str(path), "-f", "json").stdout.strip() == '[{"one": 1}]'


def test_migrating_twice_runs_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    assert store.migrate() == []


def test_webhook_ids_stored_before_are_masked_and_a_redelivery_is_still_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = old_store(path, before="m009_mask_webhook_ids")
    data = generation_record(2)
    data["request"]["metadata"] = {"webhook_id": "SECRETw1", "custom_id": "c2"}
    envelope = {"event": "generation.completed", "timestamp": "2026-11-01T00:00:00Z", "webhookId": "SECRETw1",
                "generationId": data["id"], "data": data}
    text = json.dumps(envelope)
    con.execute("insert into generation_rows (id, raw, raw_hash, shape, state, source, first_seen_at, updated_at, "
                "request_path) values (?, ?, hash(?), 'webhook', 'Success', 'webhook', now(), now(), "
                "'$.data.request')", [data["id"], text, text])
    con.execute("insert into rejects values ('webhook', 1, 'no id', ?, md5(?), now())",
                ['{"webhook_id": "SECRETw1"}', '{"webhook_id": "SECRETw1"}'])
    con.close()

    store = Store(path)
    store.migrate()

    held = store.arrow("select count(*) as n from generation_rows where contains(raw::varchar, 'SECRETw1')")
    rejected = store.arrow("select raw from rejects").to_pylist()
    assert held.to_pylist() == [{"n": 0}] and rejected == [{"raw": '{"webhook_id": "[webhook-id]"}'}]
    again = store.ingest_texts([text], source="webhook")
    assert (again.duplicate, again.updated, again.stored) == (1, 0, 0)


def test_pass_coverage_starts_empty_and_an_older_scans_findings_stay(tmp_path: Path) -> None:
    from curate import pii

    path = tmp_path / "old.duckdb"
    con = old_store(path, before="m010_pass_coverage")
    record = generation_record(1)
    record["request"]["messages"] = [{"role": "user", "content": "Mail jane.doe@example.com"}]
    con.execute(
        "insert into generation_rows (id, raw, raw_hash, shape, state, source, first_seen_at, updated_at, "
        "request_path, response_path) values (?, ?, hash(?), 'generation', 'Success', 'poll', now(), now(), "
        "'$.request', '$.response')",
        [record["id"], json.dumps(record), json.dumps(record)],
    )
    # What `curate scan pii` of an older curate left: its findings, and no record of what it read.
    con.execute("insert into pii_findings values (?, 0, 'email', 5, 25, 'regex', now())", [record["id"]])
    con.close()

    store = Store(path)
    names = [m.__name__ for m in migrations.MIGRATIONS]
    assert store.migrate() == names[names.index("m010_pass_coverage"):]
    assert store.arrow("select count(*) as n from pass_coverage").to_pylist() == [{"n": 0}]
    # The first scan reads every row (none is covered) and records the finding once.
    assert pii.scan(store).rows == 1
    assert store.arrow("select count(*) as n from pii_findings").to_pylist() == [{"n": 1}]
    assert store.arrow("select pass, id from pass_coverage").to_pylist() == [{"pass": "pii", "id": record["id"]}]


def test_a_new_store_whose_first_migration_is_cut_short_is_left_with_no_schema_at_all(tmp_path: Path) -> None:
    # A writer killed while it creates a store must not leave half a schema that every reader
    # then refuses as "written by an older curate" (seen under load in the import kill test).
    def cut_short(con: duckdb.DuckDBPyConnection) -> None:
        raise KeyboardInterrupt  # stands in for the kill: nothing after it runs

    cut_short.__name__ = "m999_cut_short"
    path = tmp_path / "new.duckdb"
    with duckdb.connect(str(path)) as con, pytest.raises(KeyboardInterrupt):
        migrations.apply(con, [*migrations.MIGRATIONS[:5], cut_short])
    with duckdb.connect(str(path)) as con:
        assert migrations.applied(con) == []
        assert con.execute("select count(*) from duckdb_tables() where database_name = current_database()"
                           ).fetchall() == [(0,)]


def test_a_writer_killed_while_it_creates_a_store_leaves_no_file_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_apply = migrations.apply

    def killed_halfway(con: duckdb.DuckDBPyConnection, todo: list[migrations.Migration] | None = None) -> list[str]:
        real_apply(con, migrations.MIGRATIONS[:5])  # committed, as a migration-at-a-time store would be
        raise KeyboardInterrupt

    monkeypatch.setattr(migrations, "apply", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        Store(tmp_path / "new.duckdb")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert Store(tmp_path / "new.duckdb").arrow("select count(*) as n from generations").to_pylist() == [{"n": 0}]
