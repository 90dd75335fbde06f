"""A pass covers what an export uses (issue 17, case 3).

Import, run a pass, import more rows, export acting on the pass: the new rows must have been seen
by the pass (the export brings it up to date first), or the export refuses with ``--no-rescan``.
A re-run of a pass reads only what is new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import decontaminate as dc
from curate import neardup, pii, synthetic
from curate.cli import app
from curate.exporter import ExportError, export
from curate.store import Store

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
PROMPT = ("Please summarise the quarterly report on regional sales, highlighting the three product lines "
          "that grew fastest and the two regions where returns rose above the yearly average.")
OTHER = "Write a short poem about autumn leaves falling on a quiet village street at dusk."
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


def record(seed: int, text: str) -> dict[str, Any]:
    r = synthetic.generation_record(seed, state="Success")
    r["request"]["messages"] = [{"role": "user", "content": text}]
    return r


def jsonl(path: Path, *records: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def curate(*args: str) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def run(*args: str) -> Any:
    result = curate(*args)
    assert result.exit_code == 0, result.output
    return result


def exported_ids(folder: Path) -> set[str]:
    return set(pq.read_table(folder / "lineage.parquet").column("id").to_pylist())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "curate.duckdb"


# ---------------------------------------------------------------- case 3, once per pass


def test_pii_drop_scans_the_rows_imported_after_the_scan(db: Path, tmp_path: Path) -> None:
    run("import", jsonl(tmp_path / "a.jsonl", record(1, OTHER), record(2, PROMPT)), "--db", db)
    run("scan", "pii", "--db", db)
    run("import", jsonl(tmp_path / "b.jsonl", record(3, f"My card is {CARD}, mail me at {EMAIL}.")), "--db", db)
    run("export", "chat", "--out", tmp_path / "out", "--pii", "drop", "--test-size", "0", "--db", db)
    new = synthetic.generation_id(3)
    assert new not in exported_ids(tmp_path / "out")
    assert exported_ids(tmp_path / "out") == {synthetic.generation_id(1), synthetic.generation_id(2)}
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "| without PII | 2 |" in card
    assert "PII (`curate scan pii`): every exported row was scanned" in card
    kinds = Store(db).arrow("select kind from pii_findings where id = ? order by kind", [new]).column(0).to_pylist()
    assert kinds == ["credit_card", "email"]


def test_dedup_near_clusters_the_rows_imported_after_the_run(db: Path, tmp_path: Path) -> None:
    run("import", jsonl(tmp_path / "a.jsonl", record(1, PROMPT), record(2, OTHER)), "--db", db)
    run("dedup", "near", "--db", db)
    run("import", jsonl(tmp_path / "b.jsonl", record(3, PROMPT + " Thanks!")), "--db", db)
    run("export", "chat", "--out", tmp_path / "out", "--dedup", "near", "--test-size", "0", "--db", db)
    ids = exported_ids(tmp_path / "out")
    # One of the two near-copies is exported, not both.
    assert len(ids & {synthetic.generation_id(1), synthetic.generation_id(3)}) == 1
    assert synthetic.generation_id(2) in ids and len(ids) == 2


def test_exclude_contaminated_checks_the_rows_imported_after_the_run(db: Path, tmp_path: Path) -> None:
    evals = jsonl(tmp_path / "gsm8k.jsonl", {"id": "q1", "question": QUESTION, "answer": "72"})
    run("import", jsonl(tmp_path / "a.jsonl", record(1, PROMPT), record(2, OTHER)), "--db", db)
    run("decontaminate", evals, "--db", db)
    run("import", jsonl(tmp_path / "b.jsonl", record(3, f"Solve: {QUESTION}")), "--db", db)
    run("export", "chat", "--out", tmp_path / "out", "--exclude-contaminated", "--test-size", "0", "--db", db)
    assert exported_ids(tmp_path / "out") == {synthetic.generation_id(1), synthetic.generation_id(2)}
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "| gsm8k.jsonl | 1 |" in card


# ---------------------------------------------------------------- --no-rescan


@pytest.mark.parametrize(("flags", "command"), [
    (["--pii", "drop"], "`curate scan pii`"),
    (["--pii", "redact"], "`curate scan pii`"),
    (["--dedup", "near"], "`curate dedup near --on prompt --threshold 0.85`"),
    (["--exclude-contaminated"], "`curate decontaminate "),
])
def test_no_rescan_refuses_in_one_sentence_naming_the_command(db: Path, tmp_path: Path, flags: list[str],
                                                              command: str) -> None:
    evals = jsonl(tmp_path / "gsm8k.jsonl", {"id": "q1", "question": QUESTION})
    run("import", jsonl(tmp_path / "a.jsonl", record(1, PROMPT)), "--db", db)
    run("scan", "pii", "--db", db)
    run("dedup", "near", "--db", db)
    run("decontaminate", evals, "--db", db)
    run("import", jsonl(tmp_path / "b.jsonl", record(2, f"My card is {CARD}.")), "--db", db)
    refused = curate("export", "chat", "--out", tmp_path / "out", *flags, "--no-rescan", "--db", db)
    assert refused.exit_code != 0
    message = " ".join(refused.output.split())
    assert command in message and "--no-rescan" in message and "1 chat rows" in message
    assert message.count(". ") <= 1  # one sentence
    assert not (tmp_path / "out").exists()
    # Once the pass has run, the same export goes through.
    store = Store(db)
    pii.scan(store)
    neardup.near_duplicates(store)
    dc.decontaminate(store, [evals])
    run("export", "chat", "--out", tmp_path / "out", *flags, "--no-rescan", "--test-size", "0", "--db", db)


def test_exclude_contaminated_with_no_eval_set_checked_is_refused(store: Store, tmp_path: Path) -> None:
    store.ingest_texts([json.dumps(record(1, PROMPT))], source="t")
    with pytest.raises(ExportError, match=r"no eval set has been checked.*`curate decontaminate EVAL_FILE\.\.\.`"):
        export(store, "chat", tmp_path / "out", test_size=0, exclude_contaminated=True)


# ---------------------------------------------------------------- a re-run reads only what is new


def test_a_rescan_reads_only_the_new_and_changed_rows(store: Store, tmp_path: Path) -> None:
    store.ingest_texts([json.dumps(record(s, OTHER + f" {s}")) for s in range(1, 4)], source="t")
    first = pii.scan(store)
    assert (first.rows, first.skipped) == (3, 0)
    assert (pii.scan(store).rows, pii.pending(store)) == (0, 0)
    store.ingest_texts([json.dumps(record(4, f"Mail {EMAIL}"))], source="t")
    # A changed body is read again, and its old findings go.
    changed = record(1, f"Card {CARD}")
    changed["finishedAt"] = "2031-01-01T00:00:00Z"
    store.ingest_texts([json.dumps(changed)], source="t")
    assert pii.pending(store) == 2
    again = pii.scan(store)
    assert (again.rows, again.skipped, again.findings) == (2, 2, {"email": 1, "credit_card": 1})
    assert pii.scan(store, full=True).rows == 4

    evals = jsonl(tmp_path / "evals.jsonl", {"question": QUESTION})
    assert dc.decontaminate(store, [evals]).rows_scanned == 4
    store.ingest_texts([json.dumps(record(5, QUESTION))], source="t")
    rerun = dc.decontaminate(store, [evals])
    assert (rerun.rows_scanned, rerun.contaminated) == (1, {"evals.jsonl": 1})
    assert dc.decontaminate(store, [evals]).rows_scanned == 0
    # Other settings: every row again.
    assert dc.decontaminate(store, [evals], ngram=8).rows_scanned == 5

    assert not neardup.near_duplicates(store).up_to_date
    assert neardup.near_duplicates(store).up_to_date
    store.ingest_texts([json.dumps(record(6, OTHER + " 2"))], source="t")
    assert neardup.pending(store) == 1
    recomputed = neardup.near_duplicates(store)
    assert not recomputed.up_to_date and recomputed.rows == 6 and recomputed.clusters >= 1


# ---------------------------------------------------------------- the card does not claim what is not so


def test_rows_imported_while_the_export_runs_are_not_exported_as_scanned(store: Store, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store.ingest_texts([json.dumps(record(1, OTHER))], source="t")
    real_scan = pii.scan

    def scan_then_import(*args: Any, **kwargs: Any) -> pii.PiiScanSummary:
        result = real_scan(*args, **kwargs)
        store.ingest_texts([json.dumps(record(2, f"Card {CARD}"))], source="t")  # lands after the scan
        return result

    monkeypatch.setattr(pii, "scan", scan_then_import)
    result = export(store, "chat", tmp_path / "out", test_size=0, pii="drop")
    assert exported_ids(tmp_path / "out") == {synthetic.generation_id(1)}
    assert result.counts["scanned for PII"] == 1 and result.counts["without PII"] == 1
    assert "| scanned for PII | 1 |" in result.card


def test_results_recorded_without_coverage_are_named_as_such_on_the_card(store: Store, tmp_path: Path) -> None:
    store.ingest_texts([json.dumps(record(1, PROMPT)), json.dumps(record(2, OTHER))], source="t")
    with store.write() as con:  # what an older curate decontaminate left: rows, no coverage
        con.execute("insert into contamination values (?, 'old-set', 'q1', 3, 13, now())", [synthetic.generation_id(1)])
    result = export(store, "chat", tmp_path / "out", test_size=0, exclude_contaminated=True)
    assert exported_ids(tmp_path / "out") == {synthetic.generation_id(2)}
    assert "Eval set `old-set`: rows recorded by an older curate" in result.card
    assert "rows added since were not checked against it" in result.card
