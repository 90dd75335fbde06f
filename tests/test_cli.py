"""The curate command, run as a user runs it: a real process, a real store file."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from curate.sandbox import Sandbox
from curate.store import Store
from curate.synthetic import generation_record
from tests.conftest import write_jsonl
from tests.helpers import held

CURATE = str(Path(sys.executable).parent / "curate")


def curate(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("INFERENCE_API_KEY", "CURATE_DB")}
    return subprocess.run(
        [CURATE, *args], capture_output=True, text=True, env=base | (env or {}), cwd=cwd, timeout=120, check=False
    )


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "sample.jsonl",
                       [generation_record(1), generation_record(2), "{not json"])


def test_import_then_sql_as_json(tmp_path: Path, sample: Path) -> None:
    db = tmp_path / "c.duckdb"
    imported = curate("import", str(sample), "--db", str(db), "--json")
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert (summary["stored"], summary["rejected"]) == (2, 1)
    result = curate("sql", "select count(*) as n from generations", "--db", str(db), "--format", "json")
    assert json.loads(result.stdout) == [{"n": 2}]


def test_import_summary_table_points_at_the_rejects(tmp_path: Path, sample: Path) -> None:
    result = curate("import", str(sample), "--db", str(tmp_path / "c.duckdb"))
    assert result.returncode == 0
    assert "stored" in result.stdout and "1 line(s) refused" in result.stdout


def test_curate_db_environment_variable_names_the_store(tmp_path: Path, sample: Path) -> None:
    db = tmp_path / "env.duckdb"
    assert curate("import", str(sample), env={"CURATE_DB": str(db)}).returncode == 0
    assert Store(db).arrow("select count(*) as n from generations").to_pylist() == [{"n": 2}]


def test_default_store_is_curate_duckdb_in_the_working_directory(tmp_path: Path, sample: Path) -> None:
    assert curate("import", str(sample), cwd=tmp_path).returncode == 0
    assert (tmp_path / "curate.duckdb").is_file()


def test_sql_as_csv(tmp_path: Path, sample: Path) -> None:
    db = tmp_path / "c.duckdb"
    curate("import", str(sample), "--db", str(db))
    result = curate("sql", "select id, state from generations order by id", "--db", str(db), "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(r["id"] for r in rows) == sorted([generation_record(1)["id"], generation_record(2)["id"]])


def test_sql_table_lists_rows(tmp_path: Path, sample: Path) -> None:
    db = tmp_path / "c.duckdb"
    curate("import", str(sample), "--db", str(db))
    result = curate("sql", "select state, count(*) as n from generations group by all", "--db", str(db))
    assert "Success" in result.stdout and "1 row(s)" in result.stdout


def test_bad_sql_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = curate("sql", "select nope from nowhere", "--db", str(tmp_path / "c.duckdb"))
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_sql_cannot_write(tmp_path: Path, sample: Path) -> None:
    db = tmp_path / "c.duckdb"
    curate("import", str(sample), "--db", str(db))
    result = curate("sql", "delete from generations", "--db", str(db))
    assert result.returncode == 1
    assert Store(db).arrow("select count(*) as n from generations").to_pylist() == [{"n": 2}]


def test_import_of_a_missing_file_names_it(tmp_path: Path) -> None:
    result = curate("import", str(tmp_path / "nope.jsonl"), "--db", str(tmp_path / "c.duckdb"))
    assert result.returncode == 1
    assert "nope.jsonl: no such file" in result.stderr


def test_import_into_a_held_store_waits_saying_who_holds_it_then_imports_whole(tmp_path: Path, sample: Path) -> None:
    db = tmp_path / "c.duckdb"
    Store(db)
    with held(db, 6.5) as holder:
        result = subprocess.run(
            [CURATE, "import", str(sample), "--db", str(db)], capture_output=True, text=True,
            env={**os.environ, "CURATE_LOCK_TIMEOUT": "1"}, timeout=120, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "waiting for" in result.stderr and f"(PID {holder.pid}) to let go of {db}" in result.stderr
    assert "Traceback" not in result.stderr
    assert Store(db).arrow("select count(*) as n from imports").to_pylist() == [{"n": 1}]


def test_api_command_without_a_key_fails_with_one_sentence_exit_2(tmp_path: Path) -> None:
    result = curate("fetch", "abc", "--db", str(tmp_path / "c.duckdb"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: INFERENCE_API_KEY is not set: export your inference.net API key "
        "(export INFERENCE_API_KEY=...) and run the command again."
    )


def test_fetch_stores_generations_from_the_sandbox_and_never_the_key(tmp_path: Path) -> None:
    secret = "sk-test-9f8e7d6c5b4a-never-store-me"
    db = tmp_path / "c.duckdb"
    with Sandbox(api_key=secret, queue_delay=0.01, run_delay=0.01, delay_spread=0.0) as sandbox:
        with httpx.Client(base_url=sandbox.url, headers=sandbox.headers) as client:
            generation_id = client.post(
                "/v1/slow/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            ).json()["id"]
        time.sleep(0.3)
        env = {"INFERENCE_API_KEY": secret, "INFERENCE_BASE_URL": sandbox.url}
        result = curate("fetch", generation_id, "unknown-id", "--db", str(db), env=env)
    assert result.returncode == 0, result.stderr
    assert "unknown-id: not visible yet" in result.stdout
    store = Store(db)
    assert store.arrow("select state, source from generations").to_pylist() == [
        {"state": "Success", "source": "poll"}]
    # DuckDB compresses strings, so grep over the file proves nothing: ask every text column (of
    # the tables and of the views, which a reading connection has), all on one connection.
    with store.read() as con:
        columns = con.execute(
            "select table_name, column_name from information_schema.columns "
            "where data_type in ('VARCHAR', 'JSON')"
        ).fetchall()
        assert columns
        for table, column in columns:
            found = con.execute(
                f'select count(*) as n from "{table}" where "{column}"::varchar like ?', [f"%{secret}%"]
            ).fetchall()
            assert found == [(0,)], (table, column)


def test_version(tmp_path: Path) -> None:
    from curate import __version__

    assert curate("version").stdout.strip() == __version__


def test_submit_then_harvest_from_the_command_line(tmp_path: Path) -> None:
    from curate.synthetic import chat_request

    requests = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(30)])
    db = str(tmp_path / "c.duckdb")
    with Sandbox(queue_delay=0.05, run_delay=0.1, delay_spread=0.0) as sandbox:
        env = {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url}
        sent = curate("submit", str(requests), "--db", db, "--group-size", "10", env=env)
        assert sent.returncode == 0, sent.stderr
        assert "30 submitted in 3 POST(s)" in sent.stdout
        harvested = curate("harvest", "--db", db, "--json", env=env)
    assert harvested.returncode == 0, harvested.stderr
    summary = json.loads(harvested.stdout)
    assert (summary["stored"], summary["pending"]) == (30, 0)


def test_submit_of_a_bad_file_names_the_line_and_sends_nothing(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "requests.jsonl", [{"model": "m"}])
    with Sandbox() as sandbox:
        env = {"INFERENCE_API_KEY": sandbox.api_key, "INFERENCE_BASE_URL": sandbox.url}
        result = curate("submit", str(bad), "--db", str(tmp_path / "c.duckdb"), env=env)
        assert sandbox.stats().calls_total == 0
    assert result.returncode == 2
    assert "line 1: no messages" in result.stderr
