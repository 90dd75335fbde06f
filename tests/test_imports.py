"""The house's imports: the command line starts without the heavy libraries its other commands use."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("huggingface_hub", "datasets", "pyiceberg", "rensa", "starlette")


def test_importing_the_command_line_loads_none_of_the_heavy_libraries() -> None:
    # A fresh interpreter: this test process has long imported them all.
    done = subprocess.run(
        [sys.executable, "-c",
         f"import sys, json, curate.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(done.stdout) == []


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
