"""No credential reaches data: after a whole webhook run, the webhook id is in no stored or shipped byte.

The run is the one a user makes: `curate listen` (a real process) receives inference.net's
deliveries from the sandbox, `curate submit --webhook-id` sends requests that carry the id,
`curate harvest` fetches the rest, then `curate snapshot`, `curate export` and `curate lake
push` write what others read. The id is then looked for in the store (through SQL: its columns
are compressed on disk), the spool, the snapshot, the export folder, the lake and the logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from curate.sandbox import Sandbox
from curate.store import Store
from curate.synthetic import chat_request
from tests.conftest import write_jsonl
from tests.helpers import CURATE, listen_process

WEBHOOK_ID = "wh-Sekr1tW3bh00kId"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([CURATE, *args], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    return done


def texts_of(folder: Path) -> list[str]:
    """Every file under ``folder`` as text: Parquet files read back (their pages are compressed),
    anything else as its bytes."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            found.append(json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False))
        found.append(path.read_bytes().decode("utf-8", "replace"))
    return found


def columns_holding(store: Store, needle: str) -> list[str]:
    """``table.column`` of every text column of the store's tables with ``needle`` in a row."""
    with store.read() as con:
        text_columns = con.execute(
            "select table_name, column_name from duckdb_columns() where database_name = current_database() "
            "and schema_name = 'main' and data_type in ('VARCHAR', 'JSON')"
        ).fetchall()
        return [f"{table}.{column}" for table, column in text_columns if con.execute(
            f'select count(*) from "{table}" where contains("{column}"::varchar, ?)', [needle]).fetchall()[0][0]]


def test_after_a_webhook_run_the_webhook_id_is_in_no_stored_or_shipped_byte(tmp_path: Path) -> None:
    db, log = tmp_path / "c.duckdb", tmp_path / "listen.log"
    Store(db)
    requests = write_jsonl(tmp_path / "requests.jsonl", [chat_request(seed) for seed in range(30)])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "CURATE_"))}
    with listen_process(db, env={"CURATE_WEBHOOK_IDS": WEBHOOK_ID}, log=log) as (_, url), \
            Sandbox(queue_delay=0.02, run_delay=0.05, webhook_url=url, webhook_backoff=0.05) as sandbox:
        env = base | {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url}
        run("submit", str(requests), "--db", str(db), "--webhook-id", WEBHOOK_ID, "--group-size", "10", env=env)
        deadline = time.monotonic() + 30
        while sandbox.stats().webhook_acknowledged < 33 and time.monotonic() < deadline:  # 30 + 3 groups
            time.sleep(0.1)
        assert sandbox.wait_for_webhooks()
    with Sandbox() as sandbox:  # nothing left to fetch: the harvest only settles what the listener left
        env = base | {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url}
        run("harvest", "--db", str(db), "--once", env=env)
    store = Store(db)
    assert store.arrow("select count(*) as n from generation_rows").to_pylist() == [{"n": 30}]

    run("snapshot", str(tmp_path / "snapshot"), "--db", str(db), env=base)
    run("export", "chat", "--out", str(tmp_path / "export"), "--db", str(db), env=base)
    run("lake", "push", "--db", str(db), "--lake", str(tmp_path / "lake"), env=base)

    assert columns_holding(store, WEBHOOK_ID) == []
    assert columns_holding(store, "[webhook-id]") != []  # the marker stands where the id was
    for folder in ("snapshot", "export", "lake", "c.duckdb.spool"):
        if (tmp_path / folder).exists():
            assert not any(WEBHOOK_ID in text for text in texts_of(tmp_path / folder)), folder
    assert WEBHOOK_ID not in log.read_text()
