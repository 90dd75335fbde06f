"""curate: turn inference.net background generations into fine-tuning datasets.

The loop is submit → harvest → DuckDB store → SQL views → export → publish. This package's
functions are what the ``curate`` command calls, so a notebook can do everything the CLI does::

    import curate
    store = curate.open("curate.duckdb")
    curate.import_files(store, ["generations.jsonl"])
    settings = curate.Settings.from_env()
    curate.submit_file(store, settings, "requests.jsonl")
    curate.harvest(store, settings)
    store.query("select state, count(*) from generations group by all")
"""

from __future__ import annotations

import os

from curate.client import InferenceClient
from curate.config import MissingApiKey, Settings
from curate.harvest import HarvestSummary, harvest
from curate.importer import ImportSummary, import_file, import_files
from curate.models import GenerationForClient, WebhookEnvelope
from curate.records import WriteCounts
from curate.store import Store, StoreLocked
from curate.submit import InvalidRequests, SubmitSummary, submit_file

__version__ = "0.1.0"

__all__ = [
    "GenerationForClient",
    "HarvestSummary",
    "ImportSummary",
    "InferenceClient",
    "InvalidRequests",
    "MissingApiKey",
    "Settings",
    "Store",
    "StoreLocked",
    "SubmitSummary",
    "WebhookEnvelope",
    "WriteCounts",
    "__version__",
    "harvest",
    "import_file",
    "import_files",
    "open",
    "submit_file",
]


def open(path: str | os.PathLike[str] | None = None) -> Store:  # noqa: A001 - curate.open reads well
    """Open (creating or migrating as needed) the store at ``path``, else ``$CURATE_DB``."""
    return Store(Settings.from_env(db=path).db)
