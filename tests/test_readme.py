"""The README says what the code does: its quickstart is the demo, its commands exist as shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = README.index(heading)
    end = README.find("\n## ", start + len(heading))
    return README[start:end if end != -1 else None]


def _commands(block: str, prefix: str = "curate ") -> list[list[str]]:
    """The lines of a text that start with ``prefix``, as argument lists from ``curate`` on."""
    return [shlex.split(line.strip().removeprefix(prefix.removesuffix("curate ")), comments=True)
            for line in block.splitlines() if line.strip().startswith(prefix)]


def test_the_quickstart_is_what_make_demo_runs_line_for_line() -> None:
    demo = _commands((ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8"), prefix="step curate ")
    quickstart = _commands(_section("## Quickstart").split("### With a real API key")[0])
    assert demo and quickstart == demo


def _table_rows() -> list[str]:
    return re.findall(r"^\| `(curate [^`]+)`(?:, `(curate [^`]+)`)? \|", _section("## Commands"), re.MULTILINE)


def _documented() -> list[tuple[list[str], list[str]]]:
    """Each command of the README's table: its words, and the options it shows."""
    out = []
    for row in _table_rows():
        for usage in filter(None, row):
            words = [w for w in usage.split() if re.fullmatch(r"[a-z][a-z-]*", w)][1:]
            out.append((words, re.findall(r"--[a-z][a-z-]*", usage)))
    return out


@pytest.mark.parametrize(("words", "options"), _documented(), ids=lambda v: " ".join(v) if v else "")
def test_every_command_in_the_readme_takes_the_options_it_shows(words: list[str], options: list[str]) -> None:
    result = CliRunner().invoke(app, [*words, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output, f"curate {' '.join(words)} has no {option}"


def test_every_command_is_in_the_readme() -> None:
    documented = {" ".join(words[:1]) for words, _ in _documented()}
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert commands <= documented, f"not in README's Commands table: {sorted(commands - documented)}"


def test_the_module_table_names_every_module_and_only_modules_that_exist() -> None:
    table = re.findall(r"^\| (`curate/[^|]+)\|", README, re.MULTILINE)
    named = {path for row in table for path in re.findall(r"`(curate/[^`]+)`", row)}
    package = ROOT / "curate"
    modules = {str(p.relative_to(ROOT)) for p in package.glob("*.py")} | {
        str(p.relative_to(ROOT)) for p in package.glob("lake/*.py")}
    modules -= {"curate/__init__.py", "curate/_version.py", "curate/lake/__init__.py"}
    folders = {"curate/cli/", "curate/sandbox/", "curate/rubrics/"}
    assert named == modules | folders
