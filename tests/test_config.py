"""Configuration: every environment variable curate reads is read in one place and documented in one table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from curate.config import ENVIRONMENT, BadSetting, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_table_lists_exactly_the_variables_settings_reads() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", (ROOT / "README.md").read_text(), re.MULTILINE))
    assert documented == set(ENVIRONMENT.values())


def test_no_module_but_the_configuration_reads_the_environment() -> None:
    readers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "curate").rglob("*.py")
                     if "sandbox" not in p.parts and p.name != "config.py"
                     and re.search(r"os\.environ|getenv", p.read_text()))
    assert readers == []


def test_every_variable_is_read_into_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"INFERENCE_API_KEY": "k", "INFERENCE_BASE_URL": "http://x/", "CURATE_DB": "s.duckdb",
              "CURATE_LOCK_TIMEOUT": "7", "CURATE_MEMORY_LIMIT": "2GB", "CURATE_QUERIES": "a:b",
              "CURATE_WEBHOOK_IDS": "w1, w2", "CURATE_PATH_TOKEN": "t", "HF_TOKEN": "hf",
              "CURATE_LAKE": "lake", "CURATE_LAKE_BATCH_ROWS": "10", "CURATE_LAKE_PUSH_SECONDS": "0.5"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = Settings.from_env()
    assert (s.base_url, s.db, s.lock_timeout, s.memory_limit, s.queries, s.webhook_ids, s.path_token, s.lake,
            s.lake_batch_rows, s.lake_push_seconds) == (
        "http://x", Path("s.duckdb"), 7.0, "2GB", (Path("a"), Path("b")), ("w1", "w2"), "t", "lake", 10, 0.5)
    assert s.require_api_key() == "k" and s.hf_token is not None and s.hf_token.get_secret_value() == "hf"
    assert "w1" not in repr(s) and "'k'" not in repr(s)


def test_a_value_curate_cannot_use_is_named_with_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_LAKE_BATCH_ROWS", "many")
    with pytest.raises(BadSetting, match="CURATE_LAKE_BATCH_ROWS='many'"):
        Settings.from_env()


@pytest.mark.parametrize("url", ["ftp://example.com", "http://[::1", "example.com", "http://host:port", "https://"])
def test_a_base_url_that_is_not_an_http_url_is_refused_before_any_request(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("INFERENCE_BASE_URL", url)
    with pytest.raises(BadSetting, match=r"^INFERENCE_BASE_URL=.*: not (a URL|an http)"):
        Settings.from_env()


@pytest.mark.parametrize(("variable", "value"), [
    ("CURATE_MEMORY_LIMIT", "lots"), ("CURATE_MEMORY_LIMIT", "100000"),
    ("CURATE_LOCK_TIMEOUT", "-1"), ("CURATE_LOCK_TIMEOUT", "nan"),
])
def test_a_memory_limit_or_wait_duckdb_cannot_use_is_refused_by_name(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(BadSetting, match=rf"^{variable}='{value}': "):
        Settings.from_env()


def test_a_memory_limit_as_duckdb_writes_it_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_MEMORY_LIMIT", "512 MiB")
    monkeypatch.setenv("CURATE_LOCK_TIMEOUT", "inf")
    settings = Settings.from_env()
    assert (settings.memory_limit, settings.lock_timeout) == ("512 MiB", float("inf"))
