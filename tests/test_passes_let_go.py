"""The passes do not sit on the store: while one computes, another process can open it read-write.

Each test hooks a pass in its compute phase (the PII finder, the shingle function, the eval
matching, an export's progress after the read) and there starts a second *process* that opens
the store read-write and closes it. DuckDB lets one process hold a file read-write or many hold it
read-only, never both, so that process succeeds only if the pass has let go of the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from curate import decontaminate as decontaminate_module
from curate import neardup, pii, synthetic
from curate.exporter import export
from curate.store import Store

WRITER = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


def open_read_write_elsewhere(path: Path) -> subprocess.CompletedProcess[str]:
    """Open ``path`` read-write from another process and let go; its return code says if it could."""
    return subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=30,
                          check=False)


class Probe:
    """Once, at the first call of what it wraps, tries the store from another process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tried: subprocess.CompletedProcess[str] | None = None

    def __call__(self) -> None:
        if self.tried is None:
            self.tried = open_read_write_elsewhere(self.path)

    def assert_store_was_free(self) -> None:
        assert self.tried is not None, "the hook never ran: the pass computed nothing"
        assert self.tried.returncode == 0, f"another process could not open the store: {self.tried.stderr}"


def no_scratch_left(store: Store) -> bool:
    return not list(store.path.parent.glob(f".{store.path.name}.*"))


@pytest.fixture
def filled(store: Store) -> Store:
    records = [synthetic.generation_record(seed, state="Success") for seed in range(12)]
    records[0]["request"]["messages"] = [{"role": "user", "content": "Mail me at jane.doe@example.com."}]
    store.ingest_texts([json.dumps(r) for r in records], source="t")
    return store


def test_the_probe_fails_while_the_store_is_held(filled: Store) -> None:
    with filled.read():
        held = open_read_write_elsewhere(filled.path)
    assert held.returncode != 0 and "lock" in held.stderr
    assert open_read_write_elsewhere(filled.path).returncode == 0


def test_scan_pii_lets_go_while_it_searches(filled: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe(filled.path)
    real_find = pii.find

    def find(text: str) -> list[pii.Finding]:
        probe()
        return real_find(text)

    monkeypatch.setattr(pii, "find", find)
    result = pii.scan(filled)
    probe.assert_store_was_free()
    assert result.rows == 12 and result.findings == {"email": 1}
    assert filled.arrow("select kind from pii_findings").to_pylist() == [{"kind": "email"}]
    assert no_scratch_left(filled)


def test_dedup_near_lets_go_while_it_hashes(filled: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe(filled.path)
    real_shingles = neardup.shingles

    def shingles(texts: Sequence[str], size: int) -> tuple[pa.UInt64Array, array[int]]:
        probe()
        return real_shingles(texts, size)

    monkeypatch.setattr(neardup, "shingles", shingles)
    result = neardup.near_duplicates(filled, on="conversation")
    probe.assert_store_was_free()
    assert result.rows == 12
    assert no_scratch_left(filled)


def test_decontaminate_lets_go_while_it_matches(filled: Store, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe(filled.path)
    real_match = decontaminate_module._match

    def match(*args: Any, **kwargs: Any) -> Any:
        probe()
        return real_match(*args, **kwargs)

    monkeypatch.setattr(decontaminate_module, "_match", match)
    quoted = synthetic.generation_record(3, state="Success")["request"]["messages"][-1]["content"]
    evals = tmp_path / "evals.jsonl"
    evals.write_text(json.dumps({"id": "q1", "question": quoted}) + "\n", encoding="utf-8")
    result = decontaminate_module.decontaminate(filled, [evals], ngram=3)
    probe.assert_store_was_free()
    assert result.rows_scanned == 12 and result.contaminated["evals.jsonl"] >= 1
    assert no_scratch_left(filled)


def test_a_pass_that_fails_while_computing_leaves_no_scratch(filled: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def find(text: str) -> list[pii.Finding]:
        raise RuntimeError("boom")

    monkeypatch.setattr(pii, "find", find)
    with pytest.raises(RuntimeError, match="boom"):
        pii.scan(filled)
    assert no_scratch_left(filled)


def test_export_of_chat_lets_go_of_the_store_after_reading_it(filled: Store, tmp_path: Path) -> None:
    steps: list[tuple[str, int]] = []

    def progress(message: str) -> None:
        # The first message announces the read; every later one is after the store was detached.
        if steps or not message.startswith("reading"):
            steps.append((message, open_read_write_elsewhere(filled.path).returncode))
        else:
            steps.append((message, -1))

    result = export(filled, "chat", tmp_path / "out", fmt="messages", test_size=0, progress=progress)
    assert result.splits == {"train": 12}
    assert steps[0][0].startswith("reading chat")
    writing = [rc for message, rc in steps if message.startswith("writing")]
    assert writing == [0], steps
    assert all(rc == 0 for _, rc in steps[1:]), steps
