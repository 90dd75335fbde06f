"""Near-duplicate clusters: planted near-copies are found, distinct texts are not, re-runs replace."""

from __future__ import annotations

import json
from typing import Any

import typer
from typer.testing import CliRunner

from curate import views
from curate.cli.neardup_commands import dedup_app
from curate.neardup import near_duplicates
from curate.store import Store
from curate.synthetic import generation_id, generation_record

BASE = (
    "Please write a short summary of the quarterly sales report for the northern region and "
    "explain why revenue from the new subscription product grew faster than expected while "
    "hardware sales declined slightly over the same period compared with last year overall"
)
OTHER = (
    "Translate the following recipe for a traditional apple pie into French and keep the oven "
    "temperatures in both celsius and fahrenheit so that readers in every country can follow "
    "each step of the baking instructions without confusion or guesswork at all"
)
THIRD = (
    "Describe the life cycle of a monarch butterfly from egg to adult and mention the long "
    "migration between canada and mexico along with the threats the species faces today from "
    "habitat loss pesticides and a changing climate across north america in recent decades"
)


def record(seed: int, user: str, system: str = "You are a helpful assistant.") -> str:
    body: dict[str, Any] = generation_record(seed, state="Success")
    body["request"]["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return json.dumps(body)


def clusters(store: Store, on: str = "prompt") -> dict[str, set[str]]:
    rows = store.arrow("select id, cluster_id from near_duplicate_rows where on_what = ?", [on]).to_pylist()
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row["cluster_id"], set()).add(row["id"])
    return out


def test_near_copies_cluster_together_and_distinct_texts_do_not(store: Store) -> None:
    store.ingest_texts([
        record(1, BASE),
        record(2, "  " + BASE.replace(" ", "   \n ", 3) + "\t"),          # whitespace only
        record(3, BASE.replace(" and ", ", and ").replace("year", "year!") + "."),  # punctuation
        record(4, BASE.replace("quarterly", "annual")),  # one word of ~40, near the start
        record(5, OTHER),
        record(6, THIRD),
    ], source="t")
    result = near_duplicates(store)
    assert (result.rows, result.clusters, result.rows_in_clusters) == (6, 1, 4)
    assert list(clusters(store).values()) == [{generation_id(s) for s in (1, 2, 3, 4)}]


def test_the_representative_is_the_longest_text_then_the_first_finished(store: Store) -> None:
    longer = BASE + " thanks"
    store.ingest_texts([record(10, BASE), record(11, BASE), record(12, longer), record(13, longer)], source="t")
    near_duplicates(store, threshold=0.8)
    finished = {r["id"]: r["finished_at"] for r in store.arrow("select id, finished_at from chat").to_pylist()}
    first = min((generation_id(12), generation_id(13)), key=lambda i: (finished[i], i))
    assert clusters(store) == {first: {generation_id(s) for s in (10, 11, 12, 13)}}
    similarity = store.arrow("select similarity from near_duplicate_rows where id = ?", [first]).to_pylist()
    assert similarity == [{"similarity": 1.0}]


def test_running_again_replaces_the_rows_of_the_same_comparison(store: Store) -> None:
    store.ingest_texts([record(1, BASE), record(2, BASE + "."), record(3, OTHER)], source="t")
    near_duplicates(store)
    first = store.arrow("select id, cluster_id, similarity from near_duplicate_rows order by id").to_pylist()
    near_duplicates(store)
    assert store.arrow("select id, cluster_id, similarity from near_duplicate_rows order by id").to_pylist() == first
    assert len(first) == 2


def test_conversation_compares_the_answer_too_and_prompt_does_not(store: Store) -> None:
    # The synthetic answers differ by seed: the same prompt is a cluster on prompt only.
    store.ingest_texts([record(21, BASE), record(22, BASE)], source="t")
    assert near_duplicates(store, on="prompt").clusters == 1
    conversation = near_duplicates(store, on="conversation")
    answers = store.arrow("select messages->>'$[-1].content' as a from chat").column("a").to_pylist()
    assert conversation.clusters == (1 if answers[0] == answers[1] else 0)
    assert set(store.arrow("select distinct on_what from near_duplicate_rows").column(0).to_pylist()) <= {
        "prompt", "conversation"}
    assert len(clusters(store, "prompt")) == 1


def test_the_view_has_one_row_per_cluster(store: Store) -> None:
    store.ingest_texts([record(1, BASE), record(2, BASE + "!"), record(3, OTHER), record(4, OTHER.upper())],
                       source="t")
    near_duplicates(store)
    # The view file's query (its name collides with the table's, so it is run as written).
    view = next(v for v in views.load([views.QUERIES_DIR]) if v.name == "near_duplicates")
    rows = store.arrow(view.sql).to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["n"] == 2 and row["ids"][0] == row["cluster_id"] and row["on_what"] == "prompt"
        assert row["ids"] == [row["ids"][0], *sorted(row["ids"][1:])]
        assert 0.85 <= row["similarity"] <= 1.0


def test_the_cli_runs_and_prints_what_it_found(store: Store) -> None:
    store.ingest_texts([record(1, BASE), record(2, BASE + ".")], source="t")
    app = typer.Typer()
    app.add_typer(dedup_app, name="dedup")  # as curate registers it
    result = CliRunner().invoke(app, ["dedup", "near", "--db", str(store.path), "--threshold", "0.9", "--on", "prompt"])
    assert result.exit_code == 0, result.output
    assert "2 chat rows compared on prompt at threshold 0.9: 1 clusters holding 2 rows" in result.output
    bad = CliRunner().invoke(app, ["dedup", "near", "--db", str(store.path), "--threshold", "1.5"])
    assert bad.exit_code == 2
