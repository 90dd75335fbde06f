"""The shipped notebooks run top to bottom against a store harvested from the sandbox."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient

from tests.notebook_store import build_store

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sandbox_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("notebook-store") / "curate.duckdb"
    build_store(path)
    return path


@pytest.fixture
def notebook_env(sandbox_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment the kernel inherits: a copy of the store, an output folder, headless plots."""
    db = tmp_path / "curate.duckdb"
    shutil.copyfile(sandbox_store, db)
    monkeypatch.setenv("CURATE_DB", str(db))
    monkeypatch.setenv("CURATE_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("CURATE_SAVE_FIGS", raising=False)
    monkeypatch.delenv("CURATE_QUERIES", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def run(notebook: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_every_notebook_runs_against_a_sandbox_store(notebook: Path, notebook_env: Path) -> None:
    nb = run(notebook, notebook_env)  # a failing cell raises CellExecutionError
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    assert any((notebook_env / "out").rglob("README.md"))  # the kernel saw CURATE_OUT (and CURATE_DB)


def test_notebook_plots_are_saved_as_png_when_asked(
    notebook_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figs = notebook_env / "figs"
    monkeypatch.setenv("CURATE_SAVE_FIGS", str(figs))
    run(NOTEBOOKS / "explore.ipynb", notebook_env)
    pngs = sorted(figs.glob("*.png"))
    assert len(pngs) >= 5, pngs
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
        assert png.stat().st_size > 5_000, png
        assert matplotlib.image.imread(png).std() > 0, f"{png} is blank"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_saved_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
