"""Attacks on issue 17's promises (hostile input and secrets), from a hostile review: each test is one
promise an input or sequence broke once."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import duckdb

from curate import migrations, spool
from curate.config import Settings
from curate.harvester import harvest
from curate.importer import MAX_LINE_BYTES, REJECT_HEAD_BYTES, import_file
from curate.lake.table import masked
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
from curate.synthetic import chat_request, generation_record
from tests.conftest import write_jsonl
from tests.helpers import CURATE, held, spooled_done

WEBHOOK_ID = "wh-Sekr1tW3bh00kId"


def store_holds(store: Store, needle: str) -> list[str]:
    """``table.column`` of every text column of the store holding ``needle`` in some row."""
    with store.read() as con:
        text_columns = con.execute(
            "select table_name, column_name from duckdb_columns() where database_name = current_database() "
            "and schema_name = 'main' and data_type in ('VARCHAR', 'JSON')").fetchall()
        return [f"{t}.{c}" for t, c in text_columns if con.execute(
            f'select count(*) from "{t}" where contains("{c}"::varchar, ?)', [needle]).fetchall()[0][0]]


# -- webhook ids: never in a stored byte -------------------------------------------------------


def test_an_import_line_cut_off_inside_a_webhook_id_keeps_no_webhook_id_in_rejects(tmp_path: Path) -> None:
    # A JSONL file cut short mid-write (a full disk, an interrupted download) ends inside a string:
    # the masking pattern wants the value's closing quote, so the id goes to rejects.raw as is.
    record = generation_record(1)
    record["request"]["metadata"] = {"custom_id": "c1", "webhook_id": WEBHOOK_ID}
    text = json.dumps(record)
    cut = text[: text.index(WEBHOOK_ID) + len(WEBHOOK_ID)]
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(generation_record(2)) + "\n" + cut + "\n")
    store = Store(tmp_path / "c.duckdb")
    summary = import_file(store, path)
    assert (summary.stored, summary.rejected) == (1, 1)
    assert store_holds(store, WEBHOOK_ID) == []


def test_the_4_kb_head_kept_of_an_over_long_line_holds_no_webhook_id(tmp_path: Path) -> None:
    # rejects.raw keeps the first REJECT_HEAD_BYTES of a line over MAX_LINE_BYTES; when the head
    # ends right after the id, the value has no closing quote and the masking pattern misses it.
    prefix, key = '{"event": "generation.completed", "pad": "', '", "webhookId": "'
    head = prefix + "p" * (REJECT_HEAD_BYTES - len(prefix) - len(key) - len(WEBHOOK_ID)) + key + WEBHOOK_ID
    assert len(head) == REJECT_HEAD_BYTES
    path = tmp_path / "big.jsonl"
    with path.open("w") as out:
        out.write(head + '", "data": {"x": "')
        out.write("x" * (MAX_LINE_BYTES + 10))
        out.write('"}}\n')
    store = Store(tmp_path / "c.duckdb")
    summary = import_file(store, path)
    assert summary.rejected == 1
    assert store_holds(store, WEBHOOK_ID) == []


def test_a_webhook_id_key_spelled_with_a_json_escape_is_masked_too(tmp_path: Path) -> None:
    # "webhook\u005fid" is the key webhook_id to every JSON reader (DuckDB's included), but not to
    # the masking pattern, which matches the key's bytes.
    record = generation_record(3)
    record["request"]["metadata"] = {"webhook_id": WEBHOOK_ID}
    line = json.dumps(record).replace('"webhook_id"', '"webhook\\u005fid"')
    path = tmp_path / "escaped.jsonl"
    path.write_text(line + "\n")
    store = Store(tmp_path / "c.duckdb")
    assert import_file(store, path).stored == 1
    assert store.arrow("select metadata->>'webhook_id' as w from chat").to_pylist() == [{"w": "[webhook-id]"}]
    assert store_holds(store, WEBHOOK_ID) == []


def test_a_harvest_spools_no_webhook_id_while_another_process_holds_the_store(tmp_path: Path) -> None:
    # The listener masks bodies before spooling ("no spool segment may hold a webhook id"); a
    # harvest spools the API's GenerationForClient, request.metadata.webhook_id and all, and a
    # notebook holding the file keeps it there (a Ctrl-C leaves it there for good).
    store = Store(tmp_path / "c.duckdb", lock_timeout=5)
    with Sandbox(queue_delay=0.01, run_delay=0.01) as sandbox:
        settings = Settings(api_key=sandbox.api_key, base_url=sandbox.url)
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_request(seed) for seed in range(3)])
        submit_file(store, settings, requests, SubmitOptions(group_size=1, rpm=None, webhook_id=WEBHOOK_ID))
        time.sleep(0.3)  # finished in the sandbox
        made = set(sandbox.generation_ids())
        leaked: list[str] = []
        with held(store.path, 60, mode="ro"):
            done = threading.Event()
            worker = threading.Thread(target=lambda: (harvest(store, settings, rpm=None, once=True,
                                                              client_options={"backoff": 0.01}), done.set()))
            worker.start()
            # Looked at until the harvest has spooled every generation (each body is in the write
            # that says it is done; then it only waits for the file), or for 10 s at most.
            deadline = time.monotonic() + 10
            while not leaked and time.monotonic() < deadline:
                time.sleep(0.1)
                spooled_all = made <= spooled_done(store.spool_dir)
                leaked = [p.name for p in store.spool_dir.glob("*") if WEBHOOK_ID.encode() in p.read_bytes()]
                if spooled_all:
                    break
        worker.join(timeout=30)
        assert done.is_set()
    assert leaked == []


# -- migrations on a store with real data -------------------------------------------------------


def test_m009_migrates_a_store_whose_rejects_differ_only_by_their_webhook_id(tmp_path: Path) -> None:
    # The same bad line of the same file imported twice, before and after the webhook id was
    # rotated: two rejects rows. Masked, they collide on (source, line, raw_md5): the migration
    # fails, rolls back, and the store can be neither written nor read again.
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    names = [m.__name__ for m in migrations.MIGRATIONS]
    migrations.apply(con, migrations.MIGRATIONS[: names.index("m009_mask_webhook_ids")])
    for webhook_id in ("OldWebhook1", "NewWebhook2"):
        raw = json.dumps({"webhook_id": webhook_id, "event": "mystery"})
        con.execute("insert into rejects values ('import:/data/deliveries.jsonl', 7, 'no known record shape', ?, "
                    "md5(?), now())", [raw, raw])
    con.close()
    store = Store(path)
    assert store.migrate()[:3] == ["m009_mask_webhook_ids", "m010_pass_coverage", "m011_pii_findings_field"]
    assert store.arrow("select count(*) as n from rejects where contains(raw, 'Webhook')").to_pylist() == [{"n": 0}]


# -- the spool: a record the store cannot merge never holds up the others -----------------------


def body_frame(seed: int) -> bytes:
    return spool.encode({"op": "body", "source": "spool-test", "line": seed, "at": time.time()},
                        json.dumps(generation_record(seed)).encode())


def stored_ids(store: Store) -> set[str]:
    return {r["id"] for r in store.arrow("select id from generation_rows").to_pylist()}


def test_a_record_with_an_unknown_op_in_the_middle_of_a_segment_does_not_hold_up_the_records_after_it(
    tmp_path: Path,
) -> None:
    # A well-framed record (checksum good) whose op this curate does not know, written by a newer
    # curate: the reader treats it as corruption and sets aside every record after it (.damaged).
    store = Store(tmp_path / "s.duckdb", lock_timeout=5)
    writer = spool.SpoolWriter(store.spool_dir)
    writer.append([body_frame(1), spool.encode({"op": "compact", "at": time.time()}), body_frame(2)])
    writer.close()
    spool.drain(store)
    assert stored_ids(store) == {generation_record(1)["id"], generation_record(2)["id"]}


def test_a_record_whose_fields_the_merge_cannot_use_goes_to_rejects_and_the_records_after_it_merge(
    tmp_path: Path,
) -> None:
    # The header passes merge.problem() (backoff is a list), but apply() unpacks it: ValueError,
    # which is not in spool.REFUSED, so every drain raises and nothing after it ever merges.
    store = Store(tmp_path / "s.duckdb", lock_timeout=5)
    writer = spool.SpoolWriter(store.spool_dir)
    writer.append([body_frame(1), spool.encode({"op": "polled", "backoff": [], "at": time.time()}), body_frame(2)])
    writer.close()
    spool.drain(store)
    assert stored_ids(store) == {generation_record(1)["id"], generation_record(2)["id"]}
    assert store.arrow("select count(*) as n from rejects").to_pylist() == [{"n": 1}]
    assert spool.segments(store.spool_dir) == []


# -- lake URIs: the password masked in every form ----------------------------------------------


def test_a_lake_password_holding_an_apostrophe_is_masked() -> None:
    # "'" is a sub-delimiter RFC 3986 allows in a URI's userinfo as is (SQLAlchemy takes it), but
    # the URI pattern stops at a quote, so the password is printed whole.
    uri = "postgresql://curate:it's-S3cret@127.0.0.1:1/lake?warehouse=/tmp/w"
    assert "S3cret" not in masked(uri)
    assert "S3cret" not in masked(f"could not open {uri}: refused")


def test_lake_push_to_an_unreachable_catalog_prints_no_password_with_an_apostrophe(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    Store(db).ingest_texts([json.dumps(generation_record(1))], source="t")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "CURATE_"))}
    done = subprocess.run(
        [CURATE, "lake", "push", "--db", str(db), "--lake",
         f"postgresql://curate:it's-S3cret@127.0.0.1:1/lake?warehouse={tmp_path / 'wh'}"],
        capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode != 0
    assert "S3cret" not in done.stdout + done.stderr
