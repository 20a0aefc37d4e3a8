"""Notebooks: stored stripped, and executed end to end with nbclient on a small synthetic lake.

The executed copies land in ``$STLAKE_NB_WORKDIR/executed`` (a pytest temp dir) for inspection.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_sql_exploration.ipynb", "03_training.ipynb"]
KERNEL = "stlake-test-python"
CELL_TIMEOUT_S = 300


def load_strip():
    spec = importlib.util.spec_from_file_location("nb_strip", NOTEBOOK_DIR / "strip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- stored form

def test_notebooks_are_stored_without_outputs():
    strip = load_strip()
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert set(NOTEBOOKS) <= set(found), found
    for name in found:
        nb = json.loads((NOTEBOOK_DIR / name).read_text())
        assert strip.is_stripped(nb), f"{name} carries outputs: run python notebooks/strip.py"
        assert nb["nbformat"] == 4 and nb["cells"], name


def test_strip_removes_outputs_and_counts(tmp_path):
    strip = load_strip()
    nb = {"cells": [{"cell_type": "code", "execution_count": 3, "metadata": {"execution": {"x": 1}},
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi"}], "source": "print(1)"},
                    {"cell_type": "markdown", "metadata": {}, "source": "# t"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert strip.main(["--check", str(path)]) == 1
    assert strip.main([str(path)]) == 0
    cleaned = json.loads(path.read_text())
    assert strip.is_stripped(cleaned) and cleaned["cells"][0]["metadata"] == {}
    assert strip.main(["--check", str(path)]) == 0


def figures_in(nb) -> int:
    """How many PNG outputs the notebook's code cells carry."""
    return sum(1 for cell in nb["cells"] if cell["cell_type"] == "code"
               for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))


def test_executed_copies_with_figures_are_kept_in_docs():
    docs = ROOT / "docs" / "notebooks"
    for name in NOTEBOOKS:
        assert (docs / name).exists(), f"docs/notebooks/{name} missing: run make notebooks-docs"
        nb = json.loads((docs / name).read_text())
        assert figures_in(nb) >= 1 and not load_strip().is_stripped(nb), name


# ---------------------------------------------------------------- executed

@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec pointing at this interpreter, found through JUPYTER_PATH, and a shared workdir."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_dir / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "stlake tests", "language": "python"}))
    workdir = tmp_path_factory.mktemp("nb-work")
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "STLAKE_NB_WORKDIR", "PYTHONPATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_dir), saved["JUPYTER_PATH"]]))
    os.environ["STLAKE_NB_WORKDIR"] = str(workdir)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "lib"), saved["PYTHONPATH"]]))
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend
    yield workdir
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.perf_counter()
    try:
        client.execute()
    finally:
        executed = kernel_env / "executed"
        executed.mkdir(exist_ok=True)
        nbformat.write(nb, executed / name)
    seconds = time.perf_counter() - started
    print(f"\n{name}: {seconds:.1f} s")
    assert figures_in(nb) >= 1, f"{name} drew no figure"
