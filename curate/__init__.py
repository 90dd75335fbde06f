"""curate: turn inference.net background generations into fine-tuning datasets.

The loop is submit → harvest → DuckDB store → SQL views → export → publish. This package's
functions are what the ``curate`` command calls, so a notebook can do everything the CLI does::

    import curate
    store = curate.open("curate.duckdb")
    curate.import_files(store, ["generations.jsonl"])
    settings = curate.Settings.from_env()
    curate.submit_file(store, settings, "requests.jsonl")
    curate.harvest(store, settings)
    db = curate.open("curate.duckdb")
    db.sql("select model, count(*) from chat group by all").df()   # or .pl(), .arrow()
    db.table("conversations").pl()
    db.views()                                                      # name, what a row is, rows
    db.snapshot("snapshot/")                                        # Parquet, read with no lock
    curate.export(db, "conversations", "out/", fmt="messages")      # a Hugging Face dataset folder
    lake = curate.open(lake="postgresql://me@db/curate?warehouse=/shared/lake")  # many writers' lake
    curate.publish("out/", "ORG/NAME")                              # to the Hub

Every call opens the store read-only for its one query and lets go, so a notebook never stops a
harvest, an import or a listener from writing, and never changes the file: the views are made
in each reading connection. A store an older curate wrote is refused until a writer migrates it
(``curate migrate``, or ``store.migrate()``).
"""

from __future__ import annotations

from curate._version import __version__
from curate.api_types import GenerationForClient, WebhookEnvelope
from curate.client import InferenceClient
from curate.config import MissingApiKey, Settings
from curate.errors import CurateError, UsageError
from curate.exporter import ExportError, ExportSummary, export
from curate.harvester import HarvestSummary, harvest
from curate.importer import ImportSummary, import_file, import_files
from curate.lake.reader import open_store as open  # the notebook's front door: a store, or the lake read as one
from curate.publisher import PublishError, PublishSummary, publish
from curate.records import WriteCounts
from curate.store import Result, Store, StoreBehind, StoreLocked, ViewInfo
from curate.submit import InvalidRequests, SubmitOptions, SubmitSummary, submit_file
from curate.views import ViewError

# The names these had before the result types were named by one rule (<Operation>Summary).
ExportResult = ExportSummary
PublishResult = PublishSummary

__all__ = [
    "CurateError",
    "ExportError",
    "ExportResult",
    "ExportSummary",
    "GenerationForClient",
    "HarvestSummary",
    "ImportSummary",
    "InferenceClient",
    "InvalidRequests",
    "MissingApiKey",
    "PublishError",
    "PublishResult",
    "PublishSummary",
    "Result",
    "Settings",
    "Store",
    "StoreBehind",
    "StoreLocked",
    "SubmitOptions",
    "SubmitSummary",
    "UsageError",
    "ViewError",
    "ViewInfo",
    "WebhookEnvelope",
    "WriteCounts",
    "__version__",
    "export",
    "harvest",
    "import_file",
    "import_files",
    "open",
    "publish",
    "submit_file",
]
