"""Execute the notebooks (nbclient) on a fresh small synthetic lake and keep the executed copies.

    python notebooks/execute.py                          # all, into docs/notebooks/ (make notebooks-docs)
    python notebooks/execute.py --out /tmp/nb 03_training.ipynb

The stripped notebooks in notebooks/ stay the source; the copies (outputs and figures included) are
for readers of the repository. They run in order in one shared work dir, as in the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ["01_quickstart.ipynb", "02_sql_exploration.ipynb", "03_training.ipynb"]
KERNEL = "stlake-docs-python"
CELL_TIMEOUT_S = 600


def kernel_environment(scratch: Path) -> None:
    """A kernelspec for this interpreter on JUPYTER_PATH; the kernel imports this checkout's ``lib``."""
    spec_dir = scratch / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "stlake", "language": "python"}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(scratch / "jupyter"),
                                                               os.environ.get("JUPYTER_PATH")]))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))
    os.environ["STLAKE_NB_WORKDIR"] = str(scratch / "work")
    os.environ.pop("MPLBACKEND", None)


def execute(name: str, out_dir: Path) -> float:
    """Run one notebook from notebooks/ and write the executed copy to ``out_dir``; seconds taken."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(HERE / name, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, out_dir / name)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=NOTEBOOKS, help="notebooks to run (default: all, in order)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks", help="folder for the copies")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stlake-nb-docs-") as scratch:
        kernel_environment(Path(scratch))
        for name in args.names:
            print(f"{name}: {execute(name, args.out):.0f} s -> {args.out / name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
