"""ExportOptions: every export option once, with its default and its check; export() and the CLI take it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from curate import card, exporter, formats
from curate.cli import app, export_commands
from curate.errors import UsageError
from curate.exporter import DEDUP, PII, ExportError, ExportOptions, export
from curate.store import Store
from curate.synthetic import generation_record

FIELDS = [f.name for f in dataclasses.fields(ExportOptions)]


class Stop(Exception):
    """Raised by a stand-in to end an export once it has shown what it was given."""


def _resolved(store: Store, folder: Path, *args: Any, **kwargs: Any) -> ExportOptions:
    """What export(store, "chat", folder, *args, **kwargs) would export with; nothing is read or written."""
    calls: list[ExportOptions] = []

    def stand_in(store: Store, options: ExportOptions, say: Any) -> None:
        calls.append(options)
        raise Stop

    with pytest.MonkeyPatch.context() as patch:
        # The first step after the options are resolved, before the store is read.
        patch.setattr(exporter, "_bring_passes_up_to_date", stand_in)
        with pytest.raises(Stop):
            export(store, "chat", folder, *args, **kwargs)
    [options] = calls
    return options


# ---------------------------------------------------------------- the value


def test_options_are_frozen_and_keyword_only() -> None:
    options = ExportOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fmt = "openai"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ExportOptions("openai")  # type: ignore[call-arg]
    assert ExportOptions(fmt="openai", seed=3) == ExportOptions(seed=3, fmt="openai")
    assert hash(ExportOptions()) == hash(ExportOptions())


def test_the_defaults_are_the_documented_ones() -> None:
    assert dataclasses.asdict(ExportOptions()) == {
        "fmt": "messages", "where": None, "limit": None, "test_size": 0.1, "split_by": None, "seed": 0,
        "dedup": "exact", "near_on": "prompt", "exclude_contaminated": False, "pii": "keep", "strict": False,
        "license_id": card.PLACEHOLDER_LICENSE, "shard_bytes": exporter.DEFAULT_SHARD_BYTES, "rescan": True,
        "rank_by": exporter.DEFAULT_RANK_BY, "min_margin": None, "reasoning": None, "think_tags": ("<think>", "</think>"),
        "tokenizer": None, "max_tokens": None,
    }


@pytest.mark.parametrize(("changes", "message"), [
    ({"fmt": "parquet"}, f"--format parquet: expected one of {', '.join(formats.FORMATS)}"),
    ({"test_size": 1.5}, "--test-size 1.5: expected a fraction from 0 (no test split) to below 1"),
    ({"test_size": -0.1}, "--test-size -0.1: expected a fraction"),
    ({"test_size": 1}, "--test-size 1: expected a fraction"),
    ({"limit": 0}, "--limit 0: expected a positive number of rows"),
    ({"dedup": "fuzzy"}, "--dedup fuzzy: expected one of exact, near, none"),
    ({"pii": "hide"}, "--pii hide: expected one of keep, drop, redact"),
    ({"shard_bytes": 0}, "shard_bytes must be positive"),
    ({"max_tokens": 100}, "--max-tokens 100 needs --tokenizer"),
    ({"tokenizer": "tok", "max_tokens": 0}, "--max-tokens 0: expected a positive number of tokens"),
    ({"tokenizer": "tok", "max_tokens": True}, "--max-tokens True: expected a positive number of tokens"),
    ({"tokenizer": " "}, "--tokenizer: expected a local folder or a Hugging Face Hub id"),
])
def test_a_bad_value_is_refused_when_the_options_are_made(changes: dict[str, Any], message: str,
                                                           store: Store, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=re.escape(message)) as made:
        ExportOptions(**changes)
    assert isinstance(made.value, UsageError) and made.value.exit_code == 2
    with pytest.raises(ExportError, match=re.escape(message)):
        dataclasses.replace(ExportOptions(), **changes)
    with pytest.raises(ExportError, match=re.escape(message)):
        export(store, "chat", tmp_path / "out", **changes)
    assert not (tmp_path / "out").exists()


def test_the_edges_of_each_range_are_accepted() -> None:
    ExportOptions(test_size=0, limit=1, shard_bytes=1)
    ExportOptions(test_size=0.999)
    ExportOptions(tokenizer="org/model", max_tokens=1)
    for fmt in formats.FORMATS:
        ExportOptions(fmt=fmt)
    for dedup in DEDUP:
        ExportOptions(dedup=dedup)
    for pii in PII:
        ExportOptions(pii=pii)


# ---------------------------------------------------------------- export(): an options object, or its fields


def test_no_options_means_every_default(store: Store, tmp_path: Path) -> None:
    assert _resolved(store, tmp_path / "out") == ExportOptions()


def test_keyword_arguments_are_the_options_fields(store: Store, tmp_path: Path) -> None:
    keywords: dict[str, Any] = {"fmt": "openai", "where": "model is not null", "limit": 5, "test_size": 0.2, "split_by": "model",
                "seed": 7, "dedup": "none", "near_on": "conversation", "exclude_contaminated": True,
                "pii": "redact", "strict": True, "license_id": "mit", "shard_bytes": 1000, "rescan": False,
                # rank_by and min_margin are for the preference formats only (tests/test_preference_export.py)
                "rank_by": exporter.DEFAULT_RANK_BY, "min_margin": None, "reasoning": "inline",
                "think_tags": ("<t>", "</t>"), "tokenizer": "org/model", "max_tokens": 2048}
    assert set(keywords) == set(FIELDS)  # every field can be given as a keyword
    assert _resolved(store, tmp_path / "out", **keywords) == ExportOptions(**keywords)


def test_keyword_arguments_override_an_options_object(store: Store, tmp_path: Path) -> None:
    base = ExportOptions(fmt="openai", seed=3, test_size=0.3)
    assert _resolved(store, tmp_path / "out", base) == base
    assert _resolved(store, tmp_path / "out", base, seed=4, dedup="none") == dataclasses.replace(
        base, seed=4, dedup="none")
    assert _resolved(store, tmp_path / "out", options=base, fmt="catalyst") == dataclasses.replace(
        base, fmt="catalyst")
    assert base == ExportOptions(fmt="openai", seed=3, test_size=0.3)  # the caller's object is left as it was


@pytest.mark.parametrize("name", ["test_szie", "format", "progres", "folder_name"])
def test_an_unknown_keyword_names_itself(name: str, store: Store, tmp_path: Path) -> None:
    unknown: dict[str, Any] = {name: 1}
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{name}'"):
        export(store, "chat", tmp_path / "out", test_size=0, **unknown)
    assert not (tmp_path / "out").exists()


def test_the_first_unknown_keyword_is_named(store: Store, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'zeta'"):
        export(store, "chat", tmp_path / "out", zeta=1, alpha=2)


def test_options_that_are_not_an_options_object_are_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ExportOptions, not str"):
        export(store, "chat", tmp_path / "out", "openai")  # type: ignore[arg-type]


def test_every_default_is_stated_once() -> None:
    # export() gives no option a default of its own: they are ExportOptions' fields' only.
    parameters = inspect.signature(export).parameters
    assert [name for name in parameters if name in FIELDS] == []
    assert {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty} == {
        "options": None, "progress": None}
    assert parameters["changes"].kind is inspect.Parameter.VAR_KEYWORD
    # Nor does any function behind it, or the card's.
    for module in (exporter, card):
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__:
                continue
            defaulted = [p for p, v in inspect.signature(function).parameters.items()
                         if p in FIELDS and v.default is not inspect.Parameter.empty]
            assert defaulted == [], f"{module.__name__}.{name} gives {defaulted} a default of its own"


def _fill(store: Store) -> Store:
    store.ingest_texts([json.dumps(generation_record(seed), ensure_ascii=False) for seed in range(30)],
                       source="fixture")
    return store


def _written(folder: Path) -> dict[str, bytes]:
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in sorted([*folder.glob("data/*"), folder / "lineage.parquet"])}
    # The card names the minute it was written: the only thing two equal exports may differ in.
    files["README.md"] = re.sub(rb"Exported [^\n]* UTC by", b"Exported WHEN by", (folder / "README.md").read_bytes())
    return files


def test_an_options_object_and_its_keywords_export_the_same_bytes(store: Store, tmp_path: Path) -> None:
    _fill(store)
    by_keywords = export(store, "chat", tmp_path / "a" / "out", fmt="openai", test_size=0.3, seed=7, dedup="none")
    by_object = export(store, "chat", tmp_path / "b" / "out", ExportOptions(fmt="openai", test_size=0.3, seed=7,
                                                                            dedup="none"))
    assert by_keywords.counts == by_object.counts and by_keywords.format == by_object.format == "openai"
    assert _written(tmp_path / "a" / "out") == _written(tmp_path / "b" / "out")
    assert "- Split: test fraction 0.3, seed 7, by the conversation" in by_object.card


# ---------------------------------------------------------------- the command line


def _export_command() -> Any:
    return typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]


def _help() -> str:
    result = CliRunner().invoke(app, ["export", "--help"], terminal_width=500)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("option", "library"), [("--format", formats.FORMATS), ("--dedup", DEDUP), ("--pii", PII)])
def test_the_command_lines_choices_are_the_librarys(option: str, library: tuple[str, ...]) -> None:
    shown = re.search(rf"{option} <([^>]+)>", _help())
    assert shown is not None, f"--help shows no choices for {option}"
    assert tuple(shown.group(1).split("|")) == library


def test_the_command_lines_defaults_are_the_options_defaults() -> None:
    defaults = {p.name: p.default for p in _export_command().params}
    as_options = {
        "fmt": defaults["fmt"].value, "where": defaults["where"], "limit": defaults["limit"],
        "test_size": defaults["test_size"], "split_by": defaults["split_by"], "seed": defaults["seed"],
        "dedup": defaults["dedup"].value, "exclude_contaminated": defaults["exclude_contaminated"],
        "pii": defaults["pii"].value, "strict": defaults["strict"], "license_id": defaults["license_id"],
        "rescan": not defaults["no_rescan"], "rank_by": defaults["rank_by"], "min_margin": defaults["min_margin"],
        "reasoning": defaults["reasoning"], "think_tags": export_commands._tags(defaults["think_tags"]),
        "tokenizer": defaults["tokenizer"], "max_tokens": defaults["max_tokens"],
    }
    defaults_of_the_library = dataclasses.asdict(ExportOptions())
    assert as_options == {name: defaults_of_the_library[name] for name in as_options}
    # What the command line does not offer stays at the library's default.
    assert set(FIELDS) - set(as_options) == {"near_on", "shard_bytes"}
    assert export_commands.DEDUP_MODES == DEDUP and export_commands.PII_MODES == PII
    assert export_commands.DEFAULT_RANK_BY == exporter.DEFAULT_RANK_BY
    assert export_commands.REASONING_MODES == formats.REASONING
    assert export_commands._tags(export_commands.THINK_TAGS) == formats.THINK


def test_the_command_builds_one_options_object(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def stand_in(store: Store, source: str, folder: Path, options: ExportOptions | None = None,
                 **keywords: Any) -> None:
        calls.append((source, folder, options, sorted(keywords)))
        raise ExportError("stopped")

    monkeypatch.setattr(exporter, "export", stand_in)
    result = CliRunner().invoke(app, [
        "export", "chat", "--out", str(tmp_path / "out"), "--format", "sharegpt", "--where", "true", "--limit", "9",
        "--test-size", "0.25", "--split-by", "model", "--seed", "5", "--dedup", "none", "--exclude-contaminated",
        "--pii", "drop", "--no-rescan", "--strict", "--license", "mit", "--tokenizer", "org/model", "--max-tokens", "512",
        "--db", str(store.path)])
    assert result.exit_code == 2, result.output
    assert calls == [("chat", tmp_path / "out", ExportOptions(
        fmt="sharegpt", where="true", limit=9, test_size=0.25, split_by="model", seed=5, dedup="none",
        exclude_contaminated=True, pii="drop", strict=True, license_id="mit", rescan=False, tokenizer="org/model",
        max_tokens=512), ["progress"])]


def test_the_command_line_with_no_options_asks_for_the_defaults(store: Store, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[ExportOptions | None] = []

    def stand_in(store: Store, source: str, folder: Path, options: ExportOptions | None = None,
                 **keywords: Any) -> None:
        calls.append(options)
        raise ExportError("stopped")

    monkeypatch.setattr(exporter, "export", stand_in)
    CliRunner().invoke(app, ["export", "chat", "--out", str(tmp_path / "out"), "--db", str(store.path)])
    assert calls == [ExportOptions()]


# ---------------------------------------------------------------- the card, apart


def test_card_does_not_import_the_exporter() -> None:
    # exporter → card, never back: the card reads the options through card.Options.
    tree = ast.parse(Path(card.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "curate.exporter" not in imported and "exporter" not in names
