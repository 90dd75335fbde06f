"""Migrations: a blank store and a store at an earlier schema end at the same exact columns."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from curate import migrations, views
from curate.store import Store
from curate.synthetic import generation_record

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
        ("updated_at", "TIMESTAMP WITH TIME ZONE"),
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
}


def columns(store: Store) -> dict[str, list[tuple[str, str]]]:
    """Every table's and view's columns, but the views from queries/ (tests/test_views.py owns those)."""
    found: dict[str, list[tuple[str, str]]] = {}
    shipped = [view.name for view in views.load([views.QUERIES_DIR])]
    for row in store.query(
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_name not in (select unnest(?::varchar[])) order by table_name, ordinal_position",
        [shipped],
    ).to_pylist():
        found.setdefault(row["table_name"], []).append((row["column_name"], row["data_type"]))
    return found


def test_blank_store_has_exactly_the_expected_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "blank.duckdb")
    assert columns(store) == EXPECTED
    applied = [r["name"] for r in store.query("select name from _curate_migrations").to_pylist()]
    assert applied == [m.__name__ for m in migrations.MIGRATIONS]


def test_store_at_the_previous_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    migrations.apply(con, migrations.MIGRATIONS[:-1])
    record = generation_record(1)
    con.execute(
        "insert into generation_rows (id, raw, raw_hash, shape, source, first_seen_at, updated_at, "
        "request_path) values (?, ?, hash(?), 'generation', 'poll', now(), now(), '$.request')",
        [record["id"], json.dumps(record), json.dumps(record)],
    )
    con.close()

    store = Store(path)

    assert columns(store) == EXPECTED
    (row,) = store.query("select id, request from generations").to_pylist()
    assert (row["id"], json.loads(row["request"])) == (record["id"], record["request"])


def test_migrating_twice_runs_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    assert store.migrate() == []
