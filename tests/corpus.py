"""The harness of the reliability corpus: bad entries ingested in one run together with good slides.

A :class:`Case` builds one bad entry (files under its own folder, plus the manifest rows that name
them) and says which ``rejects`` reason it must end with. :func:`run_corpus` writes one manifest with
every case and the good slides of the small synthetic dataset, ingests it once, and records what the
run wrote outside the lake. Tests then check, per case, its reject row, and once per run that the good
slides landed byte-identical to a clean run of the good slides alone (:func:`baseline_run`).

Good rows are the dataset's own manifest rows with absolute paths; a case usually copies one good
slide (:func:`copy_slide`) and damages one file.
"""
from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

#: One good slide per layout (and two STimage technologies): they must land in every corpus run.
GOOD_SLIDES = ("stimage_st_1", "stimage_visium_1", "visium_1", "visiumhd_1", "st_1")
#: Columns that differ between runs by design.
RUN_COLUMNS = ("run_id", "ingested_at", "rejected_at")

Row = dict[str, str]


@dataclass(frozen=True)
class Case:
    """One bad entry: ``build(folder, dataset)`` writes its files under ``folder`` and returns its manifest rows.

    ``reason`` is the ``rejects`` reason the entry must end with (``severity`` error: the slide does not
    land; warning: it lands and the warning is recorded). ``slide_id`` is the id its reject row names
    (default: the case id).
    """

    id: str
    build: Callable[[Path, dict], list[Row]]
    reason: str
    severity: str = "error"
    slide_id: Optional[str] = None

    @property
    def rejected_id(self) -> str:
        """The slide id of the case's ``rejects`` row."""
        return self.slide_id or self.id


@dataclass
class CorpusRun:
    """What one corpus ingest did."""

    lake: Path
    report: Any  # stlake.ingestion.IngestReport
    rejects: list[dict[str, Any]]
    written_outside_lake: list[str]
    error: Optional[BaseException] = None
    cases: dict[str, Case] = field(default_factory=dict)

    def rejects_of(self, slide_id: str) -> list[dict[str, Any]]:
        """The ``rejects`` rows naming ``slide_id``."""
        return [row for row in self.rejects if row["slide_id"] == slide_id]


# ---------------------------------------------------------------- building cases

def good_rows(dataset: dict, slides: Iterable[str] = GOOD_SLIDES) -> list[Row]:
    """The dataset manifest's rows of ``slides``, with absolute paths."""
    root = Path(dataset["root"])
    with open(dataset["manifest"], newline="") as handle:
        rows = {row["slide_id"]: row for row in csv.DictReader(handle)}
    return [{k: (str(root / v) if k == "path" and v else v) for k, v in rows[slide].items() if v}
            for slide in slides]


def copy_slide(dataset: dict, slide: str, folder: Path) -> Path:
    """A copy of a folder-layout slide (visium, visiumhd, st) of the dataset at ``folder``."""
    [row] = good_rows(dataset, [slide])
    shutil.copytree(row["path"], folder)
    return folder


def stimage_files(dataset: dict, slide: str, folder: Path) -> Row:
    """Copies of an STimage slide's image, coords and counts in ``folder``; their role paths."""
    root = Path(dataset["root"]) / "stimage"
    tech = next(t for t in ("ST", "Visium", "VisiumHD") if (root / t / "coord" / f"{slide}_coord.csv").exists())
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"image": root / tech / "image" / f"{slide}.png", "coords": root / tech / "coord" / f"{slide}_coord.csv",
             "counts": root / tech / "gene_exp" / f"{slide}_count.csv"}
    roles = {}
    for role, source in paths.items():
        shutil.copy(source, folder / source.name)
        roles[role] = str(folder / source.name)
    return {"technology": tech, **roles}


def entry(slide_id: str, layout: str, **fields: str) -> Row:
    """One manifest row."""
    return {"slide_id": slide_id, "layout": layout, **fields}


# ---------------------------------------------------------------- running

def write_manifest(path: Path, rows: list[Row]) -> Path:
    """A CSV manifest with the union of the rows' columns (``slide_id`` and ``layout`` first)."""
    columns = list(dict.fromkeys(["slide_id", "layout", *(k for row in rows for k in row)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` (paths as strings)."""
    return {os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names}


def ingest_manifest(spark: Any, manifest: Path, lake: Path, **options: Any) -> Any:
    """``stlake.ingest`` of a manifest into ``lake``."""
    from stlake.ingestion import IngestOptions, ingest
    return ingest(spark, IngestOptions(source=str(manifest), lake=str(lake), **options))


def run_corpus(spark: Any, root: Path, dataset: dict, cases: Iterable[Case], **options: Any) -> CorpusRun:
    """Ingest every case together with the good slides, once; ``root`` must be a fresh folder."""
    cases = {case.id: case for case in cases}
    work, lake = root / "work", root / "work" / "lake"
    rows = good_rows(dataset) + [row for case in cases.values() for row in case.build(work / "cases" / case.id,
                                                                                      dataset)]
    manifest = write_manifest(work / "manifest.csv", rows)
    before = files_under(root)
    report, error = None, None
    try:
        report = ingest_manifest(spark, manifest, lake, **options)
    except Exception as caught:  # the test says whether a run-level error was expected
        error = caught
    outside = sorted(p for p in files_under(root) - before if not p.startswith(str(lake) + os.sep))
    return CorpusRun(lake, report, read_rows(lake, "rejects"), outside, error, cases)


def baseline_run(spark: Any, root: Path, dataset: dict) -> Path:
    """A lake holding only the good slides: what every corpus run must reproduce for them."""
    lake = root / "lake"
    ingest_manifest(spark, write_manifest(root / "manifest.csv", good_rows(dataset)), lake)
    return lake


# ---------------------------------------------------------------- reading back

def read_rows(lake: Path, table: str) -> list[dict[str, Any]]:
    """The current rows of a lake table (empty when it does not exist)."""
    from stlake.lake import tables
    data = tables.read_table(str(lake), table) if tables.open_table(str(lake), table) is not None else None
    return data.to_pylist() if data is not None else []


def landed(lake: Path, table: str, slides: Iterable[str] = GOOD_SLIDES) -> pa.Table:
    """The rows of ``slides`` in ``table`` without run columns, sorted: comparable across runs."""
    from stlake.lake import tables
    data = tables.read_table(str(lake), table)
    data = data.filter(pa.compute.is_in(data["slide_id"], pa.array(list(slides))))
    data = data.drop([c for c in RUN_COLUMNS if c in data.column_names])
    return data.sort_by([(c, "ascending") for c in row_key(data)])


def row_key(data: pa.Table) -> list[str]:
    """The columns that identify one row of a unit table: a spot, and its annotation set where there is one."""
    return [c for c in ("slide_id", "spot_id", "set") if c in data.column_names]


def assert_good_slides_identical(run: CorpusRun, baseline: Path) -> None:
    """The good slides landed in ``run`` exactly as in the clean baseline (tiles and counts byte for byte)."""
    assert run.report is not None, f"the run failed: {run.error!r}"
    assert set(GOOD_SLIDES) <= set(run.report.landed), sorted(set(GOOD_SLIDES) - set(run.report.landed))
    for table in ("spots", "expression", "annotations"):
        assert landed(run.lake, table).equals(landed(baseline, table)), table


def case_row(run: CorpusRun, case: Case) -> dict:
    """The one ``rejects`` row of the case with the case's reason."""
    [row] = [row for row in run.rejects_of(case.rejected_id) if row["reason"] == case.reason]
    return row


def assert_case(run: CorpusRun, case: Case) -> None:
    """The case ended with its reason, at its severity; an error case did not land."""
    rows = run.rejects_of(case.rejected_id)
    found = [(row["reason"], row["severity"]) for row in rows]
    assert (case.reason, case.severity) in found, f"{case.id}: expected {case.reason}/{case.severity}, got {found}"
    if case.severity == "error":
        assert case.rejected_id not in run.report.landed
