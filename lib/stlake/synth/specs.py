"""Dimensions of a synthetic dataset: :class:`Sizes` (``SIZES['small']``, ``SIZES['full']``) and its slides."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

#: Broken STimage slides written with ``corrupt=True``: slide id -> the reject reason a reader should give.
CORRUPT_SLIDES = {
    "stimage_broken_image": "image_unreadable",
    "stimage_broken_coords": "coords_outside_image",
    "stimage_broken_counts": "negative_counts",
    "stimage_broken_float": "non_integer_counts",
    "stimage_dup_ids": "duplicate_spot_ids",
}
#: (species, tissue) of the fixed Space Ranger and legacy ST slides.
SLIDE_META = {
    "visium_1": ("human", "breast"), "visium_2": ("human", "colon"), "visiumhd_1": ("human", "colon"),
    "st_1": ("human", "breast"),
}


@dataclass(frozen=True)
class StimageSpec:
    """One slide of an STimage-1K4M release (see :func:`stlake.synth.generate_stimage_slide`).

    ``tech`` is ``ST``, ``Visium`` or ``VisiumHD``; the image is ``image_side`` px wide and 85 % as high.
    ``image_format``: ``png``, ``jpeg`` (JPEG bytes in the ``.png`` file) or ``tiff``. ``density`` is the
    share of non-zero counts (default 0.05 for VisiumHD, else 0.10). ``corruption`` (one of the
    ``CORRUPT_SLIDES`` values) makes a deliberately broken slide.
    """

    slide_id: str
    tech: str
    n_spots: int
    image_side: int
    n_genes: int
    image_format: str = "png"
    annotate: bool = True
    versioned_ids: bool = False
    species: str = "human"
    tissue: str = "breast"
    density: Optional[float] = None
    corruption: Optional[str] = None


def corrupt_specs(n_spots: int) -> tuple[StimageSpec, ...]:
    """The broken slides of ``CORRUPT_SLIDES``: small Visium slides of ``n_spots`` spots, no annotation."""
    return tuple(StimageSpec(slide_id, "Visium", n_spots, 420, 60, annotate=False, species="human", tissue="skin",
                             corruption=reason) for slide_id, reason in CORRUPT_SLIDES.items())


@dataclass(frozen=True)
class Sizes:
    """Dimensions of a dataset; ``SIZES['small']`` for unit tests, ``SIZES['full']`` for benchmarks."""

    name: str
    n_genes: int  # gene universe shared by all slides
    stimage: tuple[StimageSpec, ...]
    visium_rows: int  # hex grid: array_row 0..rows-1, array_col 0..cols-1 with col parity = row parity
    visium_cols: int
    visium_mpp: float  # µm/px of visium_1's full-resolution image.tif
    visium_margin_um: tuple[float, float]  # glass around the capture area (x, y)
    visium_genes: int
    visium_hires_side: int  # longer side of visium_1's tissue_hires_image.png
    visium2_mpp: float  # nominal full-res µm/px of visium_2 (no full-res image is written)
    visium2_hires_scalef: float  # visium_2's tissue_hires_scalef (its hires PNG is the only image)
    lowres_side: int
    hd_bins: int  # 8 µm bins per side (even)
    hd_mpp: float
    hd_margin_px: int
    hd_genes: int
    st_nx: int  # array x 1..nx (columns)
    st_ny: int  # array y 1..ny (rows)
    st_mpp: float
    st_margin_px: int
    st_genes: int
    st_coverage: float = 0.85
    density: float = 0.10  # share of non-zero counts (spots under tissue x genes)
    hd_density: float = 0.05
    corrupt_spots: int = 40
    tile: int = 512  # TIFF tile side


SIZES = {
    "small": Sizes(
        name="small", n_genes=400,
        stimage=(StimageSpec("stimage_st_1", "ST", 150, 1200, 350, tissue="breast"),
                 StimageSpec("stimage_visium_1", "Visium", 300, 1600, 360, image_format="jpeg", versioned_ids=True,
                             tissue="colon"),
                 StimageSpec("stimage_hd_1", "VisiumHD", 1500, 1400, 300, annotate=False, tissue="lung")),
        visium_rows=28, visium_cols=48, visium_mpp=1.5, visium_margin_um=(250.0, 400.0), visium_genes=400,
        visium_hires_side=1000, visium2_mpp=0.45, visium2_hires_scalef=0.3, lowres_side=400,
        hd_bins=56, hd_mpp=0.5, hd_margin_px=64, hd_genes=300,
        st_nx=14, st_ny=13, st_mpp=1.6, st_margin_px=250, st_genes=350, st_coverage=0.8),
    "full": Sizes(
        name="full", n_genes=18000,
        stimage=(StimageSpec("stimage_st_1", "ST", 600, 6000, 15000, tissue="breast"),
                 StimageSpec("stimage_visium_1", "Visium", 3000, 12000, 15000, image_format="jpeg",
                             versioned_ids=True, tissue="colon"),
                 StimageSpec("stimage_hd_1", "VisiumHD", 20000, 5000, 2000, annotate=False, tissue="lung")),
        visium_rows=78, visium_cols=128, visium_mpp=0.4, visium_margin_um=(650.0, 650.0), visium_genes=18000,
        visium_hires_side=2000, visium2_mpp=0.4, visium2_hires_scalef=0.2, lowres_side=600,
        hd_bins=400, hd_mpp=0.5, hd_margin_px=256, hd_genes=2000,
        st_nx=33, st_ny=35, st_mpp=0.8, st_margin_px=600, st_genes=15000, st_coverage=0.9),
}


def get_sizes(size: Union[str, Sizes]) -> Sizes:
    """``SIZES[size]``, or ``size`` itself when it already is a :class:`Sizes`."""
    if isinstance(size, Sizes):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (expected {', '.join(SIZES)} or a Sizes instance)")
    return SIZES[size]
