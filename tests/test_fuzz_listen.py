"""Fuzzing the webhook endpoint (issue 17): no body crashes the listener, and nothing it acknowledges is lost.

An in-process listener (as ``test_listen`` serves it) gets POSTs with a valid webhook id header
and bodies hypothesis makes: mutated envelopes of every event in both casings, any record shape,
random bytes, cut-off JSON, bytes that are not UTF-8. The properties:

* the answer is never a 5xx (a 503 is documented only for a spool that cannot be written, which
  does not happen here), and the server keeps answering;
* a 400 leaves its body in ``rejects`` with a non-empty reason;
* a body acknowledged 200 (``spooled``) is, once merged, in ``generation_rows`` under every id the
  merge gives it, or in ``rejects`` with a non-empty reason. What the merge makes of a body is
  worked out apart, by running the same recognition SQL on that body alone in a scratch DuckDB;
* rows stored before are still there, and those of the store's first rows unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curate import listen, records
from curate.listen import Listener, ListenerConfig, ListenerServer
from curate.store import Store
from tests.test_fuzz_records import (
    BAD_BYTES,
    KINDS,
    assert_nothing_lost,
    fuzz,
    record_texts,
    seeded,
    snapshot,
)

WID = "wh-fuzz-Zz9"
ENVELOPES = ("webhook-camel", "webhook-snake", "embedding", "slow-group", "webhook.test")


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """One POST body: mostly envelopes (mutated), else any record, random bytes or broken UTF-8."""
    kind = draw(st.sampled_from(["envelope"] * 5 + ["record"] * 2 + ["bytes", "broken"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    text = draw(record_texts(ENVELOPES if kind != "record" else KINDS))
    data = text.encode("utf-8")
    if kind == "broken":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(BAD_BYTES) + data[at:]
    return data


HEADERS = st.fixed_dictionaries({}, optional={
    "X-Inference-Generation-Id": st.sampled_from(["", "GENFROMHEADER0000001", "x" * 300]),
    "X-Inference-Group-Id": st.sampled_from(["", "GROUPFROMHEADER01"]),
    "X-Inference-Event": st.sampled_from(["generation.completed", "bogus"]),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
})


def _as_received(body: bytes) -> str:
    """The text the spool's merge reads of a body (``merge.apply`` decodes it so)."""
    return body.decode("utf-8", "backslashreplace")


def expected(text: str) -> tuple[str, set[str]]:
    """What merging ``text`` alone does: ("rejected", {}), ("skipped", {}) or ("stored", its ids).

    The recognition SQL of ``curate.records``, run on this one text in a scratch database.
    """
    con = duckdb.connect()
    try:
        con.execute(f"create temp table _curate_src as select 1::bigint as line, {records.masked('v')} as text "
                    "from (select ?::varchar as v)", [text])
        con.execute(records.PARSE_SQL)
        for statement in records.RARE_SQL:
            con.execute(statement)
        if con.execute(records.REJECTED_LINES).fetchall():
            return "rejected", set()
        (shape,) = con.execute("select shape from _curate_parsed").fetchone() or (None,)
        if shape in ("blank", "webhook.test"):
            return "skipped", set()
        ids = {row[0] for row in con.execute(
            f"select id from _curate_parsed where shape in {records.COMMON_SHAPES} and bad_id is null "
            "union select id from _curate_rare").fetchall()}
        return "stored", ids
    finally:
        con.close()


def reasons_for(store: Store, text: str) -> list[str]:
    """The reasons ``rejects`` gives for the listener's body ``text`` (stored with its webhook ids masked)."""
    with store.write() as con:
        return [row[0] for row in con.execute(
            f"select reason from rejects, (select ?::varchar as v) t where source = 'webhook' "
            f"and raw = {records.masked('t.v')}", [text]).fetchall()]


def stored_ids(store: Store, ids: set[str]) -> set[str]:
    with store.write() as con:
        return {row[0] for row in con.execute(
            "select id from generation_rows where list_contains(?, id)", [sorted(ids)]).fetchall()}


def test_no_body_crashes_the_listener_and_every_acknowledged_body_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Merge as soon as something is spooled, so that each example waits moments, not seconds.
    monkeypatch.setattr(listen, "MERGE_SECONDS", 0.01)
    monkeypatch.setattr(listen, "MERGE_DUTY", 0.0)
    store = seeded(tmp_path)
    baseline_ids = set(snapshot(store)[0])
    listener = Listener(store, ListenerConfig(webhook_ids=(WID,)))

    with ListenerServer(listener) as srv, httpx.Client(timeout=30) as client:

        @fuzz(30)
        @given(st.lists(st.tuples(bodies(), HEADERS), min_size=1, max_size=4))
        def check(posts: list[tuple[bytes, dict[str, str]]]) -> None:
            before = snapshot(store)
            answers: list[tuple[bytes, int, dict[str, Any]]] = []
            for body, headers in posts:
                response = client.post(srv.url, content=body, headers={**headers, "X-Inference-Webhook-ID": WID})
                answers.append((body, response.status_code, response.json()))
            assert listener.wait_merged(10), "acknowledged deliveries were not merged within 10 s"
            for body, status, answer in answers:
                text = _as_received(body)
                assert status in (200, 400), (status, answer, body[:300])
                if status == 400:
                    assert answer["detail"], answer
                    assert any(r.strip() for r in reasons_for(store, text)), ("400 but no reject", body[:300])
                    continue
                if answer["outcome"] == "test":  # webhook.test: acknowledged, stored nowhere
                    continue
                assert answer["outcome"] == "spooled", answer
                outcome, ids = expected(text)
                if outcome == "rejected":
                    assert any(r.strip() for r in reasons_for(store, text)), ("200 but no reject", body[:300])
                elif outcome == "stored":
                    assert ids and stored_ids(store, ids) == ids, ("200 but not stored", ids, body[:300])
            assert_nothing_lost(before, snapshot(store), baseline_ids)

        check()
        assert httpx.get(srv.base_url + "/healthz").json()["counters"].get("error", 0) == 0
