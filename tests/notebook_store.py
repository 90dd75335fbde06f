"""A small but varied store for the notebooks: harvested from the sandbox, groups and singles,
failures, tool calls, `length` finishes, multi-turn follow-ups (prefix folding) and duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate import harvester
from curate.config import Settings
from curate.harvester import harvest
from curate.sandbox import Sandbox
from curate.store import Store
from curate.submit import SubmitOptions, submit_file
from curate.synthetic import chat_request
from tests.conftest import write_jsonl

HARVEST_MODULE = harvester
FAST = {"backoff": 0.01, "max_backoff": 0.1}


def build_store(path: Path, *, grouped: int = 60, single: int = 20, follow_ups: int = 8) -> Store:
    """Submit and harvest ``grouped`` + ``single`` synthetic requests, then follow-ups and duplicates."""
    store = Store(path, lock_timeout=10)
    work = path.parent
    with pytest.MonkeyPatch.context() as mp, Sandbox(
        queue_delay=0.05, run_delay=0.1, delay_spread=0.3, failure_rate=0.15
    ) as sandbox:
        mp.setattr(HARVEST_MODULE, "FIRST_DELAY", 0.1)
        mp.setattr(HARVEST_MODULE, "MAX_DELAY", 0.3)
        settings = Settings(api_key=sandbox.api_key, base_url=sandbox.url)
        requests = [chat_request(seed) for seed in range(grouped + single)]
        submit_file(store, settings, write_jsonl(work / "grouped.jsonl", requests[:grouped]),
                    SubmitOptions(group_size=25, rpm=None))
        submit_file(store, settings, write_jsonl(work / "single.jsonl", requests[grouped:]),
                    SubmitOptions(group_size=1, rpm=None))
        harvest(store, settings, rpm=None, client_options=FAST)

        # Follow-ups: a client re-sends a finished conversation with one more user turn, so the
        # first call is a prefix of the second and `conversations` folds them into one.
        rows = store.arrow(
            "select custom_id, model, messages from chat where finish_reason = 'stop' "
            f"order by custom_id limit {follow_ups}").to_pylist()
        more = [{"model": row["model"],
                 "messages": [*json.loads(row["messages"]), {"role": "user", "content": "Tell me more."}],
                 "metadata": {"custom_id": f"{row['custom_id']}-followup"}} for row in rows]
        if more:
            submit_file(store, settings, write_jsonl(work / "followups.jsonl", more),
                        SubmitOptions(group_size=1, rpm=None))
            harvest(store, settings, rpm=None, client_options=FAST)

    # Exact duplicates: the same conversation logged again under other ids.
    copies = store.arrow("select messages from chat where finish_reason = 'stop' order by id limit 3").to_pylist()
    store.ingest_texts([json.dumps({"id": f"dup-{i}-{copy}", "messages": json.loads(row["messages"])})
                        for i, row in enumerate(copies) for copy in range(2)], source="import:duplicates.jsonl")
    return store
