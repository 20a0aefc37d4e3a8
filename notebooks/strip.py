"""Strip outputs, execution counts and run metadata from notebooks (keep git diffs to the code).

    python notebooks/strip.py                 # every notebooks/*.ipynb, in place
    python notebooks/strip.py --check a.ipynb # exit 1 and name the files that still carry outputs
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip_notebook(nb: dict) -> dict:
    """The notebook without outputs, execution counts, per-cell run metadata and widget state."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in RUN_METADATA:
            cell.get("metadata", {}).pop(key, None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def is_stripped(nb: dict) -> bool:
    """True when no code cell has outputs or an execution count."""
    return all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in nb.get("cells", []) if cell.get("cell_type") == "code")


def dump(nb: dict) -> str:
    """nbformat's on-disk style: 1-space indent, sorted keys, trailing newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks that carry outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(Path(__file__).resolve().parent.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = json.loads(path.read_text())
        if args.check:
            if not is_stripped(nb):
                dirty.append(path)
            continue
        text = dump(strip_notebook(nb))
        if text != path.read_text():
            path.write_text(text)
            print(f"stripped {path}")
    for path in dirty:
        print(f"{path}: has outputs (run python notebooks/strip.py)")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
