"""The house's imports: the command line starts without the heavy libraries its other commands use.

Every ``curate`` command imports ``curate`` (the package facade) and ``curate.cli``, so neither may
import a stage: each command imports what it runs (docs/benchmarks.md, "CLI start-up").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("huggingface_hub", "datasets", "pyiceberg", "rensa", "starlette", "transformers", "tokenizers")
# What the command line once imported as it started, and imports now only in the commands that use it.
LAZY = ("duckdb", "pyarrow", "numpy", "httpx", "pydantic", "tenacity", "yaml", "asyncio")
# curate's modules a bare `import curate` or `import curate.cli` may load: no stage.
LIGHT = ("curate", "curate._version", "curate.errors")


def _fresh(code: str) -> object:
    """What ``code`` prints as JSON, run in a fresh interpreter (this one has long imported everything)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_importing_the_command_line_loads_none_of_the_heavy_libraries() -> None:
    assert _fresh(f"import sys, json, curate.cli; print(json.dumps([m for m in {HEAVY + LAZY!r} if m in sys.modules]))") == []


def test_importing_the_command_line_loads_no_stage() -> None:
    loaded = _fresh("import sys, json, curate.cli; print(json.dumps(sorted(sys.modules)))")
    assert isinstance(loaded, list)
    assert [m for m in loaded if m.startswith("curate") and not m.startswith("curate.cli") and m not in LIGHT] == []


def test_import_curate_alone_loads_no_stage_until_a_name_is_used() -> None:
    loaded = _fresh(
        "import sys, json, curate; before = sorted(m for m in sys.modules if m.startswith('curate')); "
        f"heavy = [m for m in {HEAVY + LAZY!r} if m in sys.modules]; curate.Store; "
        "print(json.dumps([before, heavy, 'curate.store' in sys.modules, 'curate.exporter' in sys.modules]))"
    )
    assert loaded == [["curate", "curate._version"], [], True, False]


def test_every_public_name_of_the_facade_resolves() -> None:
    import curate
    from curate import exporter, publisher
    from curate.lake import reader

    assert len(set(curate.__all__)) == len(curate.__all__)
    assert set(curate.__all__) == {"__version__", *curate._LAZY}  # no name left out of either list
    for name in curate.__all__:
        assert getattr(curate, name) is not None, name
    assert set(curate.__all__) <= set(dir(curate))
    assert curate.open is reader.open_store
    assert curate.ExportResult is curate.ExportSummary is exporter.ExportSummary
    assert curate.PublishResult is curate.PublishSummary is publisher.PublishSummary
    assert curate.export is exporter.export
    # A submodule is still a submodule, and a name that is neither is an AttributeError.
    from curate import ledger

    assert ledger.__name__ == "curate.ledger"
    try:
        curate.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("curate.no_such_name resolved")


def test_the_command_lines_copies_of_stage_constants_agree() -> None:
    # --help shows these, so the command line keeps copies rather than import their stages.
    from curate import decontaminate, formats, submissions
    from curate.cli import api_commands, decontaminate_commands, export_commands

    assert api_commands.SUBMISSION_STATES == submissions.STATES
    assert export_commands.EXPORT_FORMATS == formats.FORMATS
    assert decontaminate_commands.DEFAULT_NGRAM == decontaminate.DEFAULT_NGRAM


def test_curate_sql_on_a_store_file_loads_no_lake_export_or_api_module(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        f"sys.argv = ['curate', 'sql', '--db', {str(tmp_path / 'store.duckdb')!r}, '--format', 'json', 'select 1 as one']\n"
        "from curate.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps([m for m in sys.modules if m.startswith(('curate.lake', 'curate.exporter', 'curate.client', "
        "'curate.importer', 'httpx', 'tenacity', 'pyiceberg'))]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    first, last = done.stdout.splitlines()[0], done.stdout.splitlines()[-1]
    assert json.loads(first) == [{"one": 1}]
    assert json.loads(last) == []


def test_no_module_of_curate_imports_the_package_facade() -> None:
    # `from curate import ledger` names a module; `import curate` or `from curate import open`
    # would run the facade (every stage) from inside a stage: an arrow back up the house.
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "curate"
    modules = {p.stem for p in package.glob("*.py")} | {p.name for p in package.iterdir() if p.is_dir()}
    offenders = []
    for path in package.rglob("*.py"):
        if path == package / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "curate" for a in node.names):
                offenders.append(f"{path.name}: import curate")
            if isinstance(node, ast.ImportFrom) and node.module == "curate":
                offenders += [f"{path.name}: from curate import {a.name}" for a in node.names if a.name not in modules]
    assert offenders == []


# The house's floors, from the bottom: each module imports only from its own floor or below, the
# command line (curate.cli) from every floor, and nothing from the command line.
FOUNDATION = {"errors", "config", "_version", "api_types", "messages"}
STORE_FLOOR = {"store", "merge", "migrations", "records", "views", "spool", "ledger", "submissions"}
CURATION = {"neardup", "pii", "decontaminate", "signals"}
EXPORT = {"exporter", "formats", "card", "publisher", "tokens"}


def _import_graph() -> dict[str, set[str]]:
    """Each module of curate (``store``, ``lake.table``, ``cli.store_commands``...) and the
    modules of curate it imports anywhere in its text, a command's lazy imports included."""
    import ast

    package = Path(__file__).resolve().parents[1] / "curate"
    names = {".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
             for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in names - {"__init__"}:
        path = package / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = package / name.replace(".", "/") / "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
                       if isinstance(node, ast.ImportFrom) else [])
            edges |= {t.removeprefix("curate.") for t in targets if t.startswith("curate.")} & names
        graph[name] = edges - {name}
    return graph


def _floor(module: str) -> int:
    if module in FOUNDATION:
        return 0
    if module in STORE_FLOOR:
        return 1
    return 3 if module == "cli" or module.startswith("cli.") else 2


def test_the_imports_have_no_circle() -> None:
    graph, done, path = _import_graph(), set(), []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(graph[module]):
            assert target not in path, " -> ".join([*path[path.index(target):], target])
            if target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)


def test_imports_flow_down_the_house_cli_then_stages_then_store() -> None:
    graph = _import_graph()
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets if _floor(t) > _floor(m)]
    assert upward == []


def test_curation_does_not_import_export() -> None:
    graph = _import_graph()
    assert [f"{m} -> {t}" for m in CURATION for t in graph[m] if t in EXPORT] == []
