"""Gene panels: the top-k highly variable genes per species, computed once by a Spark job.

Statistics (Spark, over the ``expression`` table joined with ``slides.species``): for every
(species, gene) the sum and sum of squares of ``y = log1p(count / total_counts * target_sum)`` over
the spots where the gene is non-zero, and the number of spots of the species. Zeros contribute
nothing to either sum, so mean and (unbiased) variance *including zeros* follow exactly:
``mean = S1 / n``, ``var = (S2 - n * mean^2) / (n - 1)``.

Ranking (driver, a few thousand rows per species) — Seurat flavour, simplified: dispersion
``var / mean`` on the log-normalised values (no ``expm1`` round trip), genes grouped into up to 20
equal-frequency bins of mean (at least 10 genes each), and the log-dispersion turned into a *robust*
z-score within its bin, ``(log_disp - median) / (1.4826 * MAD)`` as in scanpy's ``cell_ranger``
flavour, so one extreme gene cannot inflate its own bin's spread. Genes detected in fewer than
``min_spots`` spots are left out. The top ``k`` per species are stored as panel ``hvg{k}`` in the
``gene_panels`` table (replacing that panel's previous rows), ``score`` = the normalised dispersion.

Panel names and run ids follow :data:`stlake.lake.tables.SAFE_NAME` (1-128 letters, digits, ``.``,
``_``, ``-``, starting with a letter or digit); any other name raises ``ValueError`` before any work.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from stlake.constants import DEFAULT_TARGET_SUM
from stlake.lake import schemas, tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MAX_BINS = 20
MIN_GENES_PER_BIN = 10


# ---------------------------------------------------------------- statistics (Spark)

def gene_stats(spark: SparkSession, lake: str, target_sum: float = DEFAULT_TARGET_SUM) -> pd.DataFrame:
    """Per (species, gene_id): ``n`` spots of the species, ``n_nonzero``, ``s1``, ``s2`` of log1p(CP-target)."""
    from pyspark.sql import functions as F

    from stlake.sql import read_table
    expression = read_table(spark, lake, "expression").select("slide_id", "gene_ids", "counts", "total_counts")
    slides = read_table(spark, lake, "slides").select("slide_id", "species")
    spots = expression.join(F.broadcast(slides), "slide_id")
    per_species = spots.groupBy("species").agg(F.count(F.lit(1)).alias("n"))
    values = spots.where(F.col("total_counts") > 0).select(
        "species", "total_counts", F.explode(F.arrays_zip("gene_ids", "counts")).alias("g"))
    y = F.log1p(F.col("g.counts").cast("double") / F.col("total_counts") * F.lit(float(target_sum)))
    sums = values.groupBy("species", F.col("g.gene_ids").alias("gene_id")).agg(
        F.count(F.lit(1)).alias("n_nonzero"), F.sum(y).alias("s1"), F.sum(y * y).alias("s2"))
    return sums.join(F.broadcast(per_species), "species").toPandas()


# ---------------------------------------------------------------- ranking (driver)

def mean_var(stats: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance including zeros, from the sums over non-zeros and the spot count."""
    n = stats["n"].to_numpy(np.float64)
    mean = stats["s1"].to_numpy(np.float64) / n
    var = (stats["s2"].to_numpy(np.float64) - n * mean ** 2) / np.maximum(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def _robust_z(values: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 * MAD)`` of the finite values (the std when the MAD is 0)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, np.nan)
    median = np.median(finite)
    scale = 1.4826 * np.median(np.abs(finite - median))
    if not scale > 0:
        scale = finite.std(ddof=1) if finite.size > 1 else 0.0
    return (values - median) / (scale if scale > 0 else 1.0)


def normalized_dispersion(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dispersion, normalised dispersion) of one species' genes (see the module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.where(mean > 0, var / mean, np.nan)
        log_disp = np.where(dispersion > 0, np.log(dispersion), np.nan)
    n_bins = int(max(1, min(MAX_BINS, len(mean) // MIN_GENES_PER_BIN)))
    bins = np.zeros(len(mean), int) if n_bins == 1 else \
        pd.qcut(pd.Series(mean).rank(method="first"), n_bins, labels=False).to_numpy()
    normalized = np.full(len(mean), np.nan)
    for b in np.unique(bins):
        members = bins == b
        normalized[members] = _robust_z(log_disp[members])
    return dispersion, normalized


def rank_hvg(stats: pd.DataFrame, k: int, min_spots: int = 3) -> pd.DataFrame:
    """Top ``k`` genes per species: columns species, gene_id, rank (1 = most variable), score, mean, var."""
    out = []
    for species, group in stats[stats["n_nonzero"] >= min_spots].groupby("species", sort=True):
        mean, var = mean_var(group)
        dispersion, normalized = normalized_dispersion(mean, var)
        frame = pd.DataFrame({"species": species, "gene_id": group["gene_id"].to_numpy(np.int64),
                              "score": normalized, "dispersion": dispersion, "mean": mean, "var": var})
        frame = frame[np.isfinite(frame["score"])]
        frame = frame.sort_values(["score", "dispersion", "gene_id"], ascending=[False, False, True]).head(k)
        frame["rank"] = np.arange(1, len(frame) + 1, dtype=np.int32)
        out.append(frame)
    columns = ["species", "gene_id", "rank", "score", "dispersion", "mean", "var"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


# ---------------------------------------------------------------- the gene_panels table

def _species_values(species: pd.Series) -> list[Optional[str]]:
    """Species as strings, a missing species kept null (``astype(str)`` would store ``"None"``)."""
    return [None if pd.isna(value) else str(value) for value in species]


def gene_labels(genes: pa.Table) -> dict[int, str]:
    """gene_id -> what to show for it: its symbol, else its Ensembl id, else its key (never the hashed id)."""
    names = ("symbol", "ensembl_id", "gene_key")
    columns = [genes.column(c).to_pylist() if c in genes.column_names else [None] * genes.num_rows for c in names]
    return {gid: next((v for v in values if v), str(gid))
            for gid, *values in zip(genes.column("gene_id").to_pylist(), *columns)}


def panel_rows(name: str, ranked: pd.DataFrame, genes: pa.Table) -> pa.Table:
    """``gene_panels`` rows of a ranked frame, labelled by :func:`gene_labels` of the ``genes`` table."""
    symbols = gene_labels(genes)
    return pa.table({
        "panel": [name] * len(ranked),
        "rank": pa.array(ranked["rank"].to_numpy(np.int32), pa.int32()),
        "gene_id": pa.array(ranked["gene_id"].to_numpy(np.int64), pa.int64()),
        "species": _species_values(ranked["species"]),
        "symbol": [symbols.get(int(g)) for g in ranked["gene_id"]],
        "score": pa.array(ranked["score"].to_numpy(np.float64), pa.float64()),
    }, schema=schemas.GENE_PANELS)


def write_panel(lake: str, name: str, rows: pa.Table, run_id: Optional[str] = None) -> int:
    """Replace panel ``name``'s rows of ``gene_panels`` by ``rows`` (one commit); returns the version.

    ``run_id`` defaults to a new ``hvg-...`` run id (:func:`stlake.lake.tables.new_run_id`). ``ValueError``
    when ``name`` or ``run_id`` is not a safe name.
    """
    import pyarrow.compute as pc
    tables.check_name("panel name", name)
    run_id = tables.check_name("run id", run_id) if run_id else tables.new_run_id("hvg")

    def build(current: Optional[pa.Table]) -> pa.Table:
        """The other panels' current rows and the new ones."""
        rows_cast = rows.cast(schemas.GENE_PANELS)
        if current is None or current.num_rows == 0:
            return rows_cast
        others = current.filter(pc.not_equal(current.column("panel"), name)).cast(schemas.GENE_PANELS)
        return pa.concat_tables([others, rows_cast])

    return tables.overwrite_small_table(lake, "gene_panels", build, run_id=run_id)


def read_panel(lake: str, name: str) -> pa.Table:
    """Rows of panel ``name`` ordered by (rank, species); empty when absent."""
    import pyarrow.compute as pc
    rows = tables.read_table(lake, "gene_panels")
    rows = rows.filter(pc.equal(rows.column("panel"), name)) if rows.num_rows else rows
    return rows.sort_by([("rank", "ascending"), ("species", "ascending")])


def panel_names(lake: str) -> list[str]:
    """Names of the panels stored in ``gene_panels`` (sorted)."""
    rows = tables.read_table(lake, "gene_panels", columns=["panel"])
    return sorted(set(rows.column("panel").to_pylist()))


def compute_hvg(spark: SparkSession, lake: str, k: int = 256, name: Optional[str] = None,
                target_sum: float = DEFAULT_TARGET_SUM, min_spots: int = 3, run_id: Optional[str] = None) -> pa.Table:
    """Spark job: the top-``k`` highly variable genes per species, stored as panel ``name`` (``hvg{k}``).

    ``ValueError`` before any work when ``name`` or ``run_id`` is not a safe name (see the module docstring).
    """
    name = tables.check_name("panel name", name or f"hvg{k}")
    if run_id:
        tables.check_name("run id", run_id)
    ranked = rank_hvg(gene_stats(spark, lake, target_sum), k, min_spots)
    rows = panel_rows(name, ranked, tables.read_table(lake, "genes",
                                                      columns=["gene_id", "symbol", "ensembl_id", "gene_key"]))
    write_panel(lake, name, rows, run_id)
    return rows
