"""Synthetic genes and counts: a shared gene universe, one expression program per tissue domain.

Counts are negative-binomial (gamma-Poisson) integers: mean = library size x the domain's gene profile.
The library size varies per spot (log-normal), with the domain and with the share of the spot covered by
tissue; the overall scale is calibrated so that the expected share of non-zero entries matches a target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stlake.synth.image import DOMAINS

HOUSEKEEPING = (("ACTB", "ENSG00000075624"), ("GAPDH", "ENSG00000111640"), ("TP53", "ENSG00000141510"),
                ("B2M", "ENSG00000166710"), ("MALAT1", "ENSG00000251562"), ("EEF1A1", "ENSG00000156508"),
                ("TPT1", "ENSG00000133112"), ("FTL", "ENSG00000087086"), ("RPL13", "ENSG00000167526"),
                ("RPS18", "ENSG00000231500"))
MITO = (("MT-CO1", "ENSG00000198804"), ("MT-CO2", "ENSG00000198712"), ("MT-CO3", "ENSG00000198938"),
        ("MT-ND1", "ENSG00000198888"), ("MT-ATP6", "ENSG00000198899"), ("MT-CYB", "ENSG00000198727"))
#: Marker genes strongly up in each domain (same order as ``DOMAINS``).
MARKERS = {
    "tumor": (("EPCAM", "ENSG00000119888"), ("KRT8", "ENSG00000170421"), ("KRT18", "ENSG00000111057"),
              ("MKI67", "ENSG00000148773"), ("CEACAM5", "ENSG00000105388"), ("ERBB2", "ENSG00000141736")),
    "stroma": (("COL1A1", "ENSG00000108821"), ("COL1A2", "ENSG00000164692"), ("COL3A1", "ENSG00000168542"),
               ("DCN", "ENSG00000011465"), ("LUM", "ENSG00000139329"), ("ACTA2", "ENSG00000107796")),
    "immune": (("PTPRC", "ENSG00000081237"), ("CD3E", "ENSG00000198851"), ("CD74", "ENSG00000019582"),
               ("HLA-DRA", "ENSG00000204287"), ("MS4A1", "ENSG00000156738"), ("LYZ", "ENSG00000090382")),
    "normal": (("PIGR", "ENSG00000162896"), ("TFF3", "ENSG00000160180"), ("MUC2", "ENSG00000198788"),
               ("CLDN4", "ENSG00000189143"), ("SLC26A3", "ENSG00000091138"), ("CA2", "ENSG00000104267")),
}
NAMED = HOUSEKEEPING + MITO + tuple(g for d in DOMAINS for g in MARKERS[d])
MARKER_UP = 25.0  # fold change of a domain's markers in that domain
DOMAIN_LIBRARY = (1.3, 0.7, 1.1, 1.0)  # library size factor per domain
DISPERSION = 1.5  # negative binomial shape r (variance = mu + mu^2 / r)


@dataclass(frozen=True)
class GeneUniverse:
    """All genes a dataset draws from, with per-domain expression profiles."""

    symbols: tuple[str, ...]
    ids: tuple[str, ...]  # Ensembl gene ids (unversioned)
    versions: np.ndarray  # a version number per gene, for versioned ids
    profiles: np.ndarray  # (len(DOMAINS), n) float64 relative expression per domain

    def __len__(self) -> int:
        return len(self.symbols)

    def versioned_id(self, index: int) -> str:
        """``ENSG...`` id with its version suffix, e.g. ``ENSG00000141510.12``."""
        return f"{self.ids[index]}.{int(self.versions[index])}"

    def markers(self, domain: str) -> list[int]:
        """Universe indices of the marker genes of ``domain``."""
        names = {s for s, _ in MARKERS[domain]}
        return [i for i, s in enumerate(self.symbols[:len(NAMED)]) if s in names]


def gene_universe(n_genes: int, seed: int) -> GeneUniverse:
    """``n_genes`` genes: the named ones first, then ``GENE00001``... (Ensembl-like ids), with profiles."""
    if n_genes < len(NAMED) + 10:
        raise ValueError(f"need at least {len(NAMED) + 10} genes (got {n_genes})")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6E3E]))
    n_fill = n_genes - len(NAMED)
    symbols = tuple([s for s, _ in NAMED] + [f"GENE{i:05d}" for i in range(1, n_fill + 1)])
    ids = tuple([e for _, e in NAMED] + [f"ENSG00000{300000 + i:06d}" for i in range(1, n_fill + 1)])
    base = np.exp(rng.normal(0.0, 1.3, n_genes))
    n_hk, n_mt = len(HOUSEKEEPING), len(MITO)
    base[:n_hk] *= rng.uniform(15, 50, n_hk)
    base[n_hk:n_hk + n_mt] *= rng.uniform(20, 60, n_mt)
    base[n_hk + n_mt:len(NAMED)] = np.exp(rng.normal(0.5, 0.4, len(NAMED) - n_hk - n_mt))
    profiles = np.tile(base, (len(DOMAINS), 1))
    marker_start = n_hk + n_mt
    per = len(MARKERS[DOMAINS[0]])
    for d in range(len(DOMAINS)):
        for e in range(len(DOMAINS)):
            block = slice(marker_start + e * per, marker_start + (e + 1) * per)
            profiles[d, block] *= MARKER_UP if d == e else 0.4
        up = rng.random(n_fill) < 0.04
        down = (rng.random(n_fill) < 0.04) & ~up
        profiles[d, len(NAMED):][up] *= 4.0
        profiles[d, len(NAMED):][down] *= 0.3
    versions = rng.integers(1, 21, n_genes)
    return GeneUniverse(symbols, ids, versions, profiles)


def choose_genes(universe: GeneUniverse, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted universe indices of ``n`` genes: all named genes plus a random choice of the others."""
    n = min(n, len(universe))
    named = np.arange(len(NAMED))
    others = rng.choice(np.arange(len(NAMED), len(universe)), size=max(n - len(NAMED), 0), replace=False)
    return np.sort(np.concatenate([named, others]))


def library_multipliers(rng: np.random.Generator, domain: np.ndarray, tissue_fraction: np.ndarray) -> np.ndarray:
    """Relative library size per spot."""
    factor = np.asarray(DOMAIN_LIBRARY)[np.asarray(domain, np.int64)]
    return np.exp(rng.normal(0.0, 0.35, len(domain))) * factor * (0.35 + 0.65 * np.asarray(tissue_fraction))


def _density(scale: float, mean_unit: np.ndarray) -> float:
    return float(np.mean(1.0 - (1.0 + scale * mean_unit / DISPERSION) ** (-DISPERSION)))


def calibrate_library(profiles: np.ndarray, domain: np.ndarray, multipliers: np.ndarray, density: float,
                      rng: np.random.Generator, sample: int = 48) -> float:
    """Library size scale at which the expected share of non-zero counts is ``density``."""
    if len(domain) == 0:
        return 1.0
    pick = rng.choice(len(domain), size=min(sample, len(domain)), replace=False)
    mean_unit = profiles[np.asarray(domain)[pick]] * np.asarray(multipliers)[pick, None]
    lo, hi = np.log(1e-3), np.log(1e9)
    for _ in range(45):
        mid = 0.5 * (lo + hi)
        if _density(np.exp(mid), mean_unit) < density:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


def sample_counts(rng: np.random.Generator, universe: GeneUniverse, genes: np.ndarray, domain: np.ndarray,
                  tissue_fraction: np.ndarray, active: np.ndarray, density: float) -> sp.csr_matrix:
    """Spots x genes int64 CSR counts; rows of inactive spots (not under tissue / not written) stay empty."""
    n = len(domain)
    profiles = universe.profiles[:, genes]
    profiles = profiles / profiles.sum(axis=1, keepdims=True)
    multipliers = library_multipliers(rng, domain, tissue_fraction)
    rows = np.flatnonzero(np.asarray(active, bool))
    scale = calibrate_library(profiles, np.asarray(domain)[rows], multipliers[rows], density, rng)
    chunk = max(1, 4_000_000 // max(len(genes), 1))
    indptr = np.zeros(n + 1, np.int64)
    pieces_idx: list[np.ndarray] = []
    pieces_val: list[np.ndarray] = []
    row_nnz = np.zeros(n, np.int64)
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]
        mean = profiles[np.asarray(domain)[block]] * (scale * multipliers[block])[:, None]
        gamma = rng.standard_gamma(DISPERSION, size=mean.shape)
        counts = rng.poisson(mean * gamma / DISPERSION)
        r, c = np.nonzero(counts)
        pieces_idx.append(c.astype(np.int32))
        pieces_val.append(counts[r, c].astype(np.int64))
        row_nnz[block] = np.bincount(r, minlength=len(block))
    indptr[1:] = np.cumsum(row_nnz)
    indices = np.concatenate(pieces_idx) if pieces_idx else np.zeros(0, np.int32)
    data = np.concatenate(pieces_val) if pieces_val else np.zeros(0, np.int64)
    return sp.csr_matrix((data, indices, indptr), shape=(n, len(genes)))
