"""The ingest job's driver: discover -> plan (stage 1) -> units (stage 2) -> one commit per table.

Every slide is judged on its own: an entry discovery refused (bad id, bad manifest row, duplicate id,
unreachable source), a slide whose plan or any unit failed, or whose spots and expression rows do not
match, is written to ``rejects`` and its files are deleted; the other slides land. Re-ingesting a slide
replaces its rows in every table in the same commit that adds the new ones. Only a source that cannot
be opened or a lake path that cannot hold a lake stops the run before it starts (``RunError``).
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from stlake.ingestion.discover import Discovery, find_slides, no_slides_message
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.plan import (
    SlidePlan,
    fill_cores,
    internal_error_detail,
    key_genes_by_symbol,
    longest_first,
    plan_slide,
)
from stlake.ingestion.readers.common import preview
from stlake.ingestion.readers.labels import check_label_map
from stlake.ingestion.records import EntryRejection, Rejection, Remark, RunError, SlideRef
from stlake.ingestion.units import UnitResult, run_unit
from stlake.lake import genes, schemas, storage, tables
from stlake.progress import LogProgress, Meter, Progress, count, spark_tasks
from stlake.spark import default_parallelism, forward_storage_environment
from stlake.tasks import run_each

log = logging.getLogger(__name__)

# Commit order: the slides row is the last thing to land for a slide.
COMMIT_ORDER = ("genes", "expression", "annotations", "spots", "slides", "rejects")


class CommitFailed(RuntimeError):
    """A table commit failed; earlier tables of the run are committed.

    ``health`` (:func:`stlake.lake.tables.table_health`, probed after the failure) tells the cases apart:
    storage that does not answer (a re-run lands everything once it does), a table whose Delta log
    cannot be read (a re-run fails the same way until the log is repaired), or a transient failure.
    """

    def __init__(self, table: str, committed: dict[str, int], cause: Exception,
                 health: tables.TableHealth = "readable", why: str = "", lake: str = "") -> None:
        done = ", ".join(f"{name} v{version}" for name, version in committed.items()) or "none"
        landed = ("The run's slides are listed in 'slides'; only its rejects rows are missing. " if "slides" in
                  committed else "The run's slides are not listed in 'slides', so none looks complete. ")
        cause_text = storage.describe_error(cause)
        super().__init__(f"committing table '{table}' failed ({cause_text}). Committed before it in this run: "
                         f"{done}. {landed}{commit_advice(lake, table, health, '' if why == cause_text else why)}")
        self.table, self.committed, self.health = table, dict(committed), health


def commit_advice(lake: str, table: str, health: tables.TableHealth, why: str = "") -> str:
    """What to do after a failed commit, by the table's health (``why``: the probe's error, if worth saying)."""
    because = f" ({why})" if why else ""
    if health == "unreachable":
        return (f"The lake's storage does not answer{because}: re-run the job once it does (the run's rows are "
                "replaced, never duplicated).")
    if health == "log_unreadable":
        log_uri = storage.join(tables.table_uri(lake, table), "_delta_log") if lake else "_delta_log"
        return (f"The table's Delta log cannot be read{because}, so a re-run fails the same way: repair it "
                f"first (e.g. restore the latest commit file under {log_uri} from a backup), then re-run.")
    return "Re-run the job to land them (their rows are replaced, never duplicated)."


@dataclass
class SlideOutcome:
    """The driver's verdict on one slide after stage 2."""

    plan: SlidePlan
    results: list[UnitResult] = field(default_factory=list)
    error: Rejection | None = None
    warnings: list[Remark] = field(default_factory=list)
    unexpressed: list[str] = field(default_factory=list)  # spots without an expression row, dropped

    @property
    def slide_id(self) -> str:
        """The slide's id."""
        return self.plan.ref.slide_id


@dataclass
class IngestReport:
    """What a run did; printed as JSON by the CLI."""

    run_id: str
    landed: list[str]
    rejected: dict[str, str]  # slide -> reason
    rows: dict[str, int]  # table -> rows written by this run
    versions: dict[str, int]  # table -> version after the run
    tasks: dict[str, int]  # stage -> number of Spark tasks
    peak_decoded_bytes: dict[str, int]  # slide -> largest decoded image region held by one task
    seconds: float
    unit_seconds: dict[str, float] = field(default_factory=dict)  # unit kind -> summed wall time of its units

    def to_json(self) -> str:
        """The report as indented JSON with sorted keys."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# ---------------------------------------------------------------- Spark stages

def plan_slides(spark: SparkSession, refs: list[SlideRef], options: IngestOptions) -> list[SlidePlan]:
    """Stage 1: one task per slide."""
    return run_each(spark, refs, partial(plan_slide, options=options))


def run_units(spark: SparkSession, plans: list[SlidePlan], lake: str, run_id: str) -> list[UnitResult]:
    """Stage 2: one task per unit (tile regions and expression chunks of every slide), the longest first."""
    fill_cores(plans, default_parallelism(spark))
    return run_each(spark, longest_first(plans), partial(run_unit, lake=lake, run_id=run_id))


# ---------------------------------------------------------------- judging slides

def check_expression_coverage(outcome: SlideOutcome, require_expression: bool = False) -> None:
    """Every spot has at most one expression row; spots without one are dropped (``unexpressed``), like scanpy.

    The slide is rejected (``spots_without_expression``) when no spot has a row, or when any spot lacks
    one and ``require_expression`` is set. Units whose rows the planner checked (10x matrices, whose
    spots without a row the planner already dropped or rejected) return no ids: their rows must add up
    to the spots.
    """
    record, _ = outcome.plan.ready()
    expr = [r for r in outcome.results if r.kind == "expression"]
    if expr and all(r.spot_ids is None for r in expr):
        if sum(r.rows for r in expr) != len(record.spots):
            outcome.error = Rejection("expression", "spots_without_expression",
                                      f"{sum(r.rows for r in expr)} expression rows for {len(record.spots)} spots")
        return
    written = [r.spot_ids for r in expr if r.spot_ids is not None]
    spot_ids = np.concatenate(written) if written else np.zeros(0, dtype=object)
    unique, counts = np.unique(spot_ids.astype(str), return_counts=True)
    if (counts > 1).any():
        outcome.error = Rejection("expression", "duplicate_spot_ids",
                                  f"spot ids with more than one expression row: {preview(unique[counts > 1])}")
        return
    expected = record.spots.spot_id.astype(str)
    missing = np.setdiff1d(expected, unique)
    if not len(missing):
        return
    detail = (f"{len(missing)} of {len(expected)} spots have no expression row in {record.expression.uri}: "
              f"{preview(missing)}")
    if require_expression or len(missing) == len(expected):
        outcome.error = Rejection("expression", "spots_without_expression", detail)
        return
    outcome.unexpressed = [str(spot) for spot in missing]
    outcome.warnings.append(("spots_without_expression", f"{detail}; dropped"))


def drop_unexpressed(lake: str, outcome: SlideOutcome) -> None:
    """Rewrite a landing slide's ``spots`` and ``annotations`` files without its ``unexpressed`` spots.

    A failure rejects the slide (``internal_error``); the files written so far are deleted with it.
    """
    if outcome.error is not None or not outcome.unexpressed:
        return
    for result in outcome.results:
        if result.kind != "tiles":
            continue
        kept: list[tables.DataFile] = []
        for number, data_file in enumerate(result.files):
            try:
                copy = tables.rewrite_without(lake, data_file.table, data_file.path, "spot_id", outcome.unexpressed,
                                              f"{data_file.path}-expressed-{number}")
            except Exception as error:
                outcome.error = Rejection("expression", "internal_error", internal_error_detail(error))
                result.files = kept + result.files[number:]
                return
            if copy is None:
                kept.append(data_file)
            else:
                kept += copy
                tables.discard(lake, [data_file])
        result.files = kept


def collect_warnings(outcome: SlideOutcome) -> None:
    """Things that did not sink the slide but a user should see in ``rejects``."""
    outcome.warnings.extend(outcome.plan.warnings)
    dropped = [s for r in outcome.results for s in r.dropped_spots]
    if dropped:
        outcome.warnings.append(("border_spots_dropped", f"{len(dropped)} spots too close to the image border "
                                                         f"were dropped: {preview(dropped)}"))
    unknown = sum(r.unknown_rows for r in outcome.results)
    if unknown:
        outcome.warnings.append(("expression_rows_without_spot", f"{unknown} expression rows name spots that are "
                                                                 "not in the coordinates (or not in tissue)"))
    tiles = sum(r.rows for r in outcome.results if r.kind == "tiles")
    if tiles and sum(r.uniform_tiles for r in outcome.results) == tiles:
        image = outcome.plan.record.image_uri if outcome.plan.record else "the image"
        outcome.warnings.append(("uniform_tiles", f"all {tiles} tiles are (near) one colour: {image} looks blank, "
                                                  "or the spots do not lie on the tissue"))


def judge(plans: list[SlidePlan], results: list[UnitResult], require_expression: bool = False) -> list[SlideOutcome]:
    """Group unit results by slide and decide which slides land (see :func:`check_expression_coverage`)."""
    by_slide: dict[str, list[UnitResult]] = defaultdict(list)
    for result in results:
        by_slide[result.slide_id].append(result)
    outcomes = []
    for plan in plans:
        outcome = SlideOutcome(plan, by_slide.get(plan.ref.slide_id, []), error=plan.error)
        failed = [r for r in outcome.results if r.error]
        if outcome.error is None and failed:
            outcome.error = failed[0].error
        if outcome.error is None:
            check_expression_coverage(outcome, require_expression)
        if outcome.error is None:
            collect_warnings(outcome)
        outcomes.append(outcome)
    return outcomes


# ---------------------------------------------------------------- driver-side rows

def slide_row(outcome: SlideOutcome, options: IngestOptions, run_id: str, now: datetime) -> dict[str, Any]:
    """The ``slides`` row of a landed slide: its source, image, scale, tiling and what its units wrote."""
    plan = outcome.plan
    record, image = plan.ready()
    tiles = [r for r in outcome.results if r.kind == "tiles"]
    expr = [r for r in outcome.results if r.kind == "expression"]
    detected = np.unique(np.concatenate([r.detected_gene_ids for r in expr])) if expr else []
    border = {s for r in tiles for s in r.dropped_spots}
    unexpressed = set(record.unexpressed) | set(outcome.unexpressed)  # dropped by the planner / by the driver
    meta = dict(plan.ref.meta)
    res = plan.resolution
    return {
        "slide_id": plan.ref.slide_id, "technology": plan.ref.technology, "layout": plan.ref.layout,
        "species": genes.normalise_species(plan.ref.species), "tissue": plan.ref.tissue,
        "source_uri": plan.ref.paths.get("root") or plan.ref.paths.get("counts") or record.image_uri,
        "image_uri": record.image_uri, "image_format": image.format,
        "image_width": image.width, "image_height": image.height,
        "image_source": record.image_source, "coord_scale": record.coord_scale,
        "spot_diameter_px": float(record.spot_diameter_px), "microns_per_pixel": record.microns_per_pixel,
        "tile_size_px": plan.tile_size_px, "tile_resize_px": res.resize_px if res else options.resize_px,
        "tile_microns_per_pixel": res.tile_mpp if res else None, "pyramid_level": res.level if res else 0,
        "scale_source": res.scale_source if res else None,
        "n_spots": sum(f.num_records for r in tiles for f in r.files if f.table == "spots"),
        "n_spots_dropped": len(border | unexpressed), "n_spots_without_expression": len(unexpressed),
        "n_genes": len(detected), "total_counts": sum(r.total_counts for r in expr),
        "meta_json": json.dumps(meta, sort_keys=True), "run_id": run_id, "ingested_at": now,
    }


def reject_rows(outcomes: list[SlideOutcome], run_id: str, now: datetime) -> list[dict[str, Any]]:
    """The ``rejects`` rows of a run: one per slide error and one per slide warning."""
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        source = outcome.plan.ref.paths.get("root") or next(iter(outcome.plan.ref.paths.values()), None)
        base = {"run_id": run_id, "slide_id": outcome.slide_id, "source_uri": source, "rejected_at": now}
        found = [outcome.error] if outcome.error else []
        found += [Rejection("read", reason, detail, "warning") for reason, detail in outcome.warnings]
        rows.extend({**base, **asdict(rejection)} for rejection in found)
    return rows


def refused_rows(refused: list[EntryRejection], run_id: str, now: datetime) -> list[dict[str, Any]]:
    """The ``rejects`` rows of the entries discovery refused (stage ``discover``)."""
    return [{"run_id": run_id, "slide_id": entry.slide_id, "source_uri": entry.source_uri, "rejected_at": now,
             **asdict(entry.rejection)} for entry in refused]


# ---------------------------------------------------------------- commit

def files_by_table(outcomes: list[SlideOutcome]) -> dict[str, list[tables.DataFile]]:
    """The data files the units of ``outcomes`` wrote, grouped by table."""
    grouped: dict[str, list[tables.DataFile]] = defaultdict(list)
    for outcome in outcomes:
        for result in outcome.results:
            for data_file in result.files:
                grouped[data_file.table].append(data_file)
    return grouped


def commit_table(lake: str, name: str, files: list[tables.DataFile], new_genes: list[pa.Table],
                 landed_ids: set[str], run_id: str) -> int | None:
    """One table's commit of a run; the new version, or None when there is nothing to do.

    Genes are merged, the landed slides' old rows are replaced, rejects only ever appended.
    """
    if name == "genes":
        if not new_genes:
            return None
        return tables.overwrite_small_table(lake, "genes", lambda current: genes.merge_gene_rows(current, new_genes),
                                           run_id)
    replace = () if name == "rejects" else landed_ids
    if not files and not replace:
        return None
    return tables.commit(lake, name, files, replace, run_id)


def discard_rejected(lake: str, outcomes: list[SlideOutcome]) -> None:
    """Delete the files of rejected slides (files left behind are never in a snapshot, so only logged)."""
    for outcome in outcomes:
        if outcome.error is not None:
            try:
                tables.discard(lake, (f for r in outcome.results for f in r.files))
            except OSError as error:
                log.warning("files of rejected slide %s not deleted: %s", outcome.slide_id,
                            storage.describe_error(error))


def driver_files(lake: str, name: str, rows: list[dict[str, Any]], run_id: str) -> list[tables.DataFile]:
    """The data files of a table whose rows the driver builds (``slides``, ``rejects``); none without rows."""
    if not rows:
        return []
    return tables.write_data_files(lake, name, pa.Table.from_pylist(rows, schemas.TABLES[name]), f"{run_id}-{name}")


def commit_failure(lake: str, table: str, committed: dict[str, int], error: Exception) -> CommitFailed:
    """The ``CommitFailed`` of a table, its advice chosen by probing the table's storage and log."""
    health, why = tables.table_health(lake, table)
    return CommitFailed(table, committed, error, health, why, lake)


def commit_run(lake: str, outcomes: list[SlideOutcome], options: IngestOptions, run_id: str,
               refused: list[EntryRejection] | None = None) -> dict[str, int]:
    """Delete the files of rejected slides, then commit every table once, in ``COMMIT_ORDER``.

    ``refused`` (entries discovery refused) become ``rejects`` rows too. Any failure from here on,
    writing the driver's own rows included, raises ``CommitFailed``.
    """
    now = datetime.now(timezone.utc)
    landed = [o for o in outcomes if o.error is None]
    discard_rejected(lake, outcomes)
    landed_ids = {o.slide_id for o in landed}
    grouped = files_by_table(landed)
    rows = {"slides": [slide_row(o, options, run_id, now) for o in landed],
            "rejects": reject_rows(outcomes, run_id, now) + refused_rows(refused or [], run_id, now)}
    versions: dict[str, int] = {}
    new_genes = [o.plan.gene_rows for o in landed if o.plan.gene_rows is not None]
    for name in COMMIT_ORDER:
        try:
            files = grouped.get(name, []) + driver_files(lake, name, rows.get(name, []), run_id)
            version = commit_table(lake, name, files, new_genes, landed_ids, run_id)
        except Exception as error:
            raise commit_failure(lake, name, versions, error) from error
        if version is not None:
            versions[name] = version
    return versions


# ---------------------------------------------------------------- the job

def known_genes(lake: str) -> Optional[pa.Table]:
    """The lake's ``genes`` rows (their Ensembl id <-> symbol pairs key Ensembl-only genes); None if unreadable."""
    try:
        return tables.read_table(lake, "genes", columns=["species", "gene_key", "symbol", "ensembl_id"])
    except Exception as error:  # the commit reports storage trouble; here only the pairs are lost
        log.warning("genes table not read (%s): Ensembl-only genes are keyed by this run's pairs only",
                    storage.describe_error(error))
        return None


def check_lake(lake: str) -> None:
    """``RunError`` when ``lake`` cannot hold a lake: a file, below a file, not writable, storage silent."""
    problem = storage.folder_problem(lake)
    if problem:
        raise RunError(f"lake {storage.normalize(lake)} {problem}")


def prepare_run(options: IngestOptions) -> Discovery:
    """What a run checks before any Spark work (lake path, label map, discovery); ``RunError`` when it cannot go on."""
    check_lake(options.lake)
    check_label_map(options.label_map)
    return find_slides(options.source, options.layouts)


def discovered_line(found: Discovery) -> str:
    """``12 slides in data/demo/manifest.csv: stimage 8, visium 2, visiumhd 1, st 1 (2 entries refused)``."""
    layouts: dict[str, int] = defaultdict(int)
    for ref in found.refs:
        layouts[ref.layout] += 1
    per_layout = ", ".join(f"{layout} {n}" for layout, n in sorted(layouts.items()))
    refused = f" ({len(found.rejected)} refused)" if found.rejected else ""
    found_line = f"found {count(len(found.refs), 'slide')} in {found.source}"
    return found_line + (f": {per_layout}" if per_layout else "") + refused


def report_outcomes(progress: Progress, outcomes: list[SlideOutcome], landed: bool) -> None:
    """One line per slide: the rejected ones (``landed=False``), or the landed ones with their spot counts."""
    for outcome in outcomes:
        if outcome.error is not None and not landed:
            detail = outcome.error.detail.splitlines()[0] if outcome.error.detail else ""
            progress.warn(f"rejected {outcome.slide_id}: {outcome.error.reason}" + (f" ({detail})" if detail else ""))
        elif outcome.error is None and landed:
            spots = sum(r.rows for r in outcome.results if r.kind == "tiles")
            warned = f", {count(len(outcome.warnings), 'warning')} in rejects" if outcome.warnings else ""
            progress.note(f"landed {outcome.slide_id}: {count(spots, 'spot')}{warned}")


def count_results(meter: Meter, results: list[UnitResult]) -> None:
    """The units' exact counts, once their results are back."""
    meter.update(done=len(results), tiles=sum(r.rows for r in results if r.kind == "tiles"),
                 expression=sum(r.rows for r in results if r.kind == "expression"),
                 failed=sum(r.error is not None for r in results))


def ingest(spark: SparkSession, options: IngestOptions, run_id: str | None = None,
           found: Optional[Discovery] = None, progress: Optional[Progress] = None) -> IngestReport:
    """Run the whole ingest job; returns what landed, what was rejected and why.

    ``found`` is :func:`prepare_run`'s result when the caller already has it (the CLI checks a run
    before it starts Spark). A source without any entry logs "no slides found" and lands nothing.
    ``progress`` hears what happens as it happens (default: log records).
    """
    started = time.time()
    progress = progress or LogProgress(log)
    run_id = tables.check_name("run id", run_id) if run_id else tables.new_run_id()
    found = prepare_run(options) if found is None else found
    if found.empty:
        log.warning(no_slides_message(found.source))
    forward_storage_environment(spark)
    refs = found.refs
    progress.note(f"run {run_id}: {discovered_line(found)}")
    with progress.meter("planning", len(refs), "slides") as meter, spark_tasks(spark, meter.tasks):
        plans = plan_slides(spark, refs, options)
        meter.update(done=len(plans), rejected=sum(p.error is not None for p in plans))
    key_genes_by_symbol(plans, known_genes(options.lake))
    with progress.meter("units", sum(len(p.units) for p in plans if p.error is None), "tasks", "tiles") as meter, \
            spark_tasks(spark, meter.tasks):
        results = run_units(spark, plans, options.lake, run_id)
        count_results(meter, results)
    outcomes = judge(plans, results, options.require_expression)
    for outcome in outcomes:
        drop_unexpressed(options.lake, outcome)
    report_outcomes(progress, outcomes, landed=False)
    versions = commit_run(options.lake, outcomes, options, run_id, found.rejected)
    report_outcomes(progress, outcomes, landed=True)
    landed = [o for o in outcomes if o.error is None]
    progress.note(f"run {run_id}: {count(len(landed), 'slide')} landed, "
                  f"{len(outcomes) - len(landed) + len(found.rejected)} rejected; committed "
                  + (", ".join(f"{name} v{version}" for name, version in versions.items()) or "nothing"))
    rows: dict[str, int] = defaultdict(int)
    for data_file in (f for o in landed for r in o.results for f in r.files):
        rows[data_file.table] += data_file.num_records
    unit_seconds: dict[str, float] = defaultdict(float)
    for result in results:
        unit_seconds[result.kind] += result.seconds
    return IngestReport(
        run_id=run_id, landed=sorted(o.slide_id for o in landed),
        rejected={**{entry.slide_id: entry.rejection.reason for entry in found.rejected},
                  **{o.slide_id: o.error.reason for o in outcomes if o.error is not None}},
        rows=dict(rows), versions=versions,
        tasks={"plan": len(refs), "units": len(results)},
        peak_decoded_bytes={o.slide_id: max([r.peak_decoded_bytes for r in o.results] or [0]) for o in landed},
        seconds=round(time.time() - started, 2),
        unit_seconds={kind: round(total, 3) for kind, total in sorted(unit_seconds.items())})
