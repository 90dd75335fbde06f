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
    curate.token_lengths(db, "conversations", "Qwen/Qwen3-8B")      # (id, tokens) by the target's chat template
    curate.sample(store, settings, "chat", curate.SampleOptions(model="big-teacher", n=3))   # a teacher's answers
    curate.judge(store, settings, "samples", curate.JudgeOptions(model="judge", rubric=curate.rubric("helpfulness")))
    curate.score(store)                                             # heuristic signals; then export `scored`
    lake = curate.open(lake="postgresql://me@db/curate?warehouse=/shared/lake")  # many writers' lake
    curate.publish("out/", "ORG/NAME")                              # to the Hub

Every call opens the store read-only for its one query and lets go, so a notebook never stops a
harvest, an import or a listener from writing, and never changes the file: the views are made
in each reading connection. A store an older curate wrote is refused until a writer migrates it
(``curate migrate``, or ``store.migrate()``).
"""

from __future__ import annotations

import typing as _typing

from curate._version import __version__

if _typing.TYPE_CHECKING:  # what mypy and editors see; at run time each name is imported on first use (__getattr__)
    from curate.client import InferenceClient
    from curate.config import MissingApiKey, Settings
    from curate.errors import CurateError, UsageError
    from curate.exporter import ExportError, ExportOptions, ExportSummary, export
    from curate.harvester import HarvestSummary, harvest
    from curate.importer import ImportSummary, import_file, import_files
    from curate.judging import JudgeOptions, JudgeSummary, judge, rubric
    from curate.lake.reader import open_store as open  # the notebook's front door: a store, or the lake read as one
    from curate.publisher import PublishError, PublishSummary, publish
    from curate.records import WriteCounts
    from curate.sampling import SampleOptions, SampleSummary, sample
    from curate.signals import ScoreSummary, score
    from curate.store import QueryError, ReadableStore, Result, Store, StoreBehind, StoreLocked, ViewInfo
    from curate.submit import InvalidRequests, SubmitOptions, SubmitSummary, submit_file
    from curate.tokens import token_lengths
    from curate.views import ViewError

    # The names these had before the result types were named by one rule (<Operation>Summary).
    ExportResult = ExportSummary
    PublishResult = PublishSummary

# Each public name: the module it lives in, and its name there. `import curate` (and so every
# `curate` command, which imports curate.cli inside this package) loads none of the stages until
# a name is used: the exporter alone brings pyarrow and numpy, the client httpx
# (tests/test_imports.py; docs/benchmarks.md, "CLI start-up").
_LAZY: dict[str, tuple[str, str]] = {
    "CurateError": ("curate.errors", "CurateError"),
    "ExportError": ("curate.exporter", "ExportError"),
    "ExportOptions": ("curate.exporter", "ExportOptions"),
    "ExportResult": ("curate.exporter", "ExportSummary"),
    "ExportSummary": ("curate.exporter", "ExportSummary"),
    "HarvestSummary": ("curate.harvester", "HarvestSummary"),
    "ImportSummary": ("curate.importer", "ImportSummary"),
    "InferenceClient": ("curate.client", "InferenceClient"),
    "InvalidRequests": ("curate.submit", "InvalidRequests"),
    "JudgeOptions": ("curate.judging", "JudgeOptions"),
    "JudgeSummary": ("curate.judging", "JudgeSummary"),
    "MissingApiKey": ("curate.config", "MissingApiKey"),
    "PublishError": ("curate.publisher", "PublishError"),
    "PublishResult": ("curate.publisher", "PublishSummary"),
    "PublishSummary": ("curate.publisher", "PublishSummary"),
    "QueryError": ("curate.store", "QueryError"),
    "ReadableStore": ("curate.store", "ReadableStore"),
    "Result": ("curate.store", "Result"),
    "SampleOptions": ("curate.sampling", "SampleOptions"),
    "SampleSummary": ("curate.sampling", "SampleSummary"),
    "ScoreSummary": ("curate.signals", "ScoreSummary"),
    "Settings": ("curate.config", "Settings"),
    "Store": ("curate.store", "Store"),
    "StoreBehind": ("curate.store", "StoreBehind"),
    "StoreLocked": ("curate.store", "StoreLocked"),
    "SubmitOptions": ("curate.submit", "SubmitOptions"),
    "SubmitSummary": ("curate.submit", "SubmitSummary"),
    "UsageError": ("curate.errors", "UsageError"),
    "ViewError": ("curate.views", "ViewError"),
    "ViewInfo": ("curate.store", "ViewInfo"),
    "WriteCounts": ("curate.records", "WriteCounts"),
    "export": ("curate.exporter", "export"),
    "harvest": ("curate.harvester", "harvest"),
    "import_file": ("curate.importer", "import_file"),
    "import_files": ("curate.importer", "import_files"),
    "judge": ("curate.judging", "judge"),
    "open": ("curate.lake.reader", "open_store"),
    "publish": ("curate.publisher", "publish"),
    "rubric": ("curate.judging", "rubric"),
    "sample": ("curate.sampling", "sample"),
    "score": ("curate.signals", "score"),
    "submit_file": ("curate.submit", "submit_file"),
    "token_lengths": ("curate.tokens", "token_lengths"),
}

__all__ = [
    "CurateError",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ExportSummary",
    "HarvestSummary",
    "ImportSummary",
    "InferenceClient",
    "InvalidRequests",
    "JudgeOptions",
    "JudgeSummary",
    "MissingApiKey",
    "PublishError",
    "PublishResult",
    "PublishSummary",
    "QueryError",
    "ReadableStore",
    "Result",
    "SampleOptions",
    "SampleSummary",
    "ScoreSummary",
    "Settings",
    "Store",
    "StoreBehind",
    "StoreLocked",
    "SubmitOptions",
    "SubmitSummary",
    "UsageError",
    "ViewError",
    "ViewInfo",
    "WriteCounts",
    "__version__",
    "export",
    "harvest",
    "import_file",
    "import_files",
    "judge",
    "open",
    "publish",
    "rubric",
    "sample",
    "score",
    "submit_file",
    "token_lengths",
]


def __getattr__(name: str) -> object:
    """A public name, imported from its module the first time it is used (PEP 562)."""
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        # Not a public name: `from curate import ledger` then imports the submodule.
        raise AttributeError(f"module 'curate' has no attribute {name!r}") from None
    from importlib import import_module

    value = getattr(import_module(module_name), attribute)
    globals()[name] = value  # later uses find it without coming here
    return value


def __dir__() -> list[str]:
    """The public names whether or not they have been used yet, and what the module holds."""
    return sorted(set(globals()) | set(__all__))
