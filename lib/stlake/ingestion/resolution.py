"""Tiles at a physical resolution: the slide's µm/px, the pyramid level to read, the square to cut, the resize.

**The slide's scale** (µm per pixel of level 0 of the tiled image), first found of: the manifest's
``microns_per_pixel`` column (of the full-resolution image; divided by the reader's coordinate scale when
a hires image is tiled), the reader's (Space Ranger scalefactors: 55 µm spot diameter over
``spot_diameter_fullres``; HEST metadata; the legacy ST array pitch; STimage's meta; VisiumHD bins), then
the TIFF's resolution tags. ``unknown_scale`` is raised only when the options need a scale and none exists.

**With a target** (``--target-mpp``, or ``--preset hest`` = 224 px at 0.5 µm/px): the stored tile is
``tile_px`` (or ``tile_um / target``, or the spot diameter in µm / target) pixels of ``target`` µm. The
level read is the coarsest pyramid level whose µm/px is at most the target (closest above the target
resolution; level 0 when even it is coarser); the square cut there is ``tile * target / level µm/px``
pixels and is resized to the tile (``cv2.INTER_AREA`` when shrinking). **Without one**, level 0 is read
and the square is ``--tile-px``, ``--tile-um`` or the spot diameter, resized to ``--resize`` if given.

Either way, a tile enlarged by more than ``UPSAMPLE_WARN`` is noted (``upsampled`` warning with the
factor), or refused (``upsample_refused``) when the factor exceeds ``--max-upsample``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from stlake.ingestion.images import Pyramid
from stlake.ingestion.options import IngestOptions, Preset
from stlake.ingestion.records import Remark, SlideError, SlideRecord

#: A tile enlarged by more than this factor is noted in ``rejects`` (``upsampled``).
UPSAMPLE_WARN = 1.1
#: Level µm/px within this share above the target still counts as the target (estimated pixel sizes).
LEVEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PresetSpec:
    """A named tile geometry."""

    target_mpp: float
    tile_px: int


PRESETS: dict[Preset, PresetSpec] = {"hest": PresetSpec(0.5, 224)}


@dataclass(frozen=True)
class Resolution:
    """How one slide's tiles are cut: where its scale came from, the level read, the square and the resize."""

    source_mpp: Optional[float]  # µm/px of level 0 of the tiled image
    scale_source: Optional[str]  # manifest, reader, tiff_resolution (None: unknown)
    level: int  # pyramid level read
    level_size: tuple[int, int]  # its (width, height)
    downsample: tuple[float, float]  # level-0 pixels per level pixel (x, y)
    size_px: int  # side of the square cut, in pixels of the level
    resize_px: Optional[int]  # side of the stored tile, None = not resized
    tile_mpp: Optional[float]  # µm/px of the stored tile
    upsample: float  # stored side / cut side when enlarged, else 1.0

    @classmethod
    def level0(cls, size_px: int, image_size: tuple[int, int], resize_px: Optional[int] = None) -> Resolution:
        """Squares of ``size_px`` from level 0 of an image of ``image_size``, scale unknown."""
        return cls(None, None, 0, image_size, (1.0, 1.0), size_px, resize_px, None, 1.0)


def manifest_mpp(record: SlideRecord) -> Optional[float]:
    """The manifest's ``microns_per_pixel`` (of the full-resolution image), None when not given."""
    text = str(record.ref.meta.get("microns_per_pixel") or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SlideError("coords_unreadable", "the manifest's microns_per_pixel is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SlideError("implausible_geometry", f"the manifest's microns_per_pixel is {value:g}: it must be positive")
    return value


def source_scale(record: SlideRecord, pyramid: Pyramid) -> tuple[Optional[float], Optional[str]]:
    """µm/px of level 0 of the tiled image and where it came from (manifest, reader, TIFF tags)."""
    given = manifest_mpp(record)
    if given is not None:
        return given / record.coord_scale, "manifest"
    if record.microns_per_pixel:
        return float(record.microns_per_pixel), "reader"
    if pyramid.microns_per_pixel:
        return float(pyramid.microns_per_pixel), "tiff_resolution"
    return None, None


def target(options: IngestOptions) -> tuple[Optional[float], Optional[int]]:
    """The target µm/px and stored tile side of ``--target-mpp`` / ``--tile-px`` or the preset (options win)."""
    preset = PRESETS[options.preset] if options.preset else None
    mpp = options.target_mpp or (preset.target_mpp if preset else None)
    side = options.tile_px or (preset.tile_px if preset and not options.tile_um else None)
    return mpp, side


def choose_level(sizes: list[tuple[int, int]], source_mpp: float, target_mpp: float) -> int:
    """The coarsest level whose µm/px is at most ``target_mpp`` (level 0 when none is)."""
    width = sizes[0][0]
    fine_enough = [k for k, (w, _) in enumerate(sizes) if source_mpp * width / w <= target_mpp * (1 + LEVEL_TOLERANCE)]
    return max(fine_enough, default=0)


def _unknown(record: SlideRecord, what: str) -> SlideError:
    return SlideError("unknown_scale", f"{what} needs the slide's microns per pixel: slide {record.ref.slide_id} has "
                                       "none (no scale from its reader, no microns_per_pixel in the manifest, no "
                                       "TIFF resolution tags)")


def resolve(record: SlideRecord, pyramid: Pyramid, options: IngestOptions) -> tuple[Resolution, list[Remark]]:
    """The slide's level, square, resize and tile µm/px; the ``upsampled`` remark, or ``upsample_refused``."""
    mpp, source = source_scale(record, pyramid)
    goal, side = target(options)
    sizes = pyramid.sizes
    if goal:
        if mpp is None:
            raise _unknown(record, f"a target of {goal:g} µm/px")
        level = choose_level(sizes, mpp, goal)
        level_mpp = mpp * sizes[0][0] / sizes[level][0]
        physical = options.tile_um or record.spot_diameter_px * mpp
        out = max(1, int(side or round(physical / goal)))
        size = max(1, int(round(out * goal / level_mpp)))
        resize: Optional[int] = out
        tile_mpp: Optional[float] = goal
    else:
        level = 0
        if options.tile_px:
            size = int(options.tile_px)
        elif options.tile_um:
            if mpp is None:
                raise _unknown(record, "--tile-um")
            size = max(1, int(round(options.tile_um / mpp)))
        else:
            size = max(1, int(round(record.spot_diameter_px)))
        resize = options.resize_px
        tile_mpp = mpp * size / (resize or size) if mpp else None
    downsample = (sizes[0][0] / sizes[level][0], sizes[0][1] / sizes[level][1])
    upsample = max(1.0, (resize or size) / size)
    resolution = Resolution(mpp, source, level, sizes[level], downsample, size, resize, tile_mpp, upsample)
    return resolution, check_upsample(resolution, record, options)


def check_upsample(resolution: Resolution, record: SlideRecord, options: IngestOptions) -> list[Remark]:
    """``upsample_refused`` above ``--max-upsample``; an ``upsampled`` remark above ``UPSAMPLE_WARN``."""
    factor = resolution.upsample
    what = (f"{resolution.size_px} px squares of level {resolution.level} are enlarged {factor:.2f}x to "
            f"{resolution.resize_px} px tiles")
    if resolution.source_mpp:
        what += f" (source {resolution.source_mpp:.3g} µm/px, tiles {resolution.tile_mpp:.3g} µm/px)"
    if options.max_upsample is not None and factor > options.max_upsample:
        raise SlideError("upsample_refused", f"slide {record.ref.slide_id}: {what}, over --max-upsample "
                                             f"{options.max_upsample:g}")
    if factor > UPSAMPLE_WARN:
        return [("upsampled", f"slide {record.ref.slide_id}: {what}; the image holds less detail than the tiles")]
    return []


def to_level(values: np.ndarray, factor: float) -> np.ndarray:
    """Level-0 pixel centres as centres in a level ``factor`` times smaller: ``(v + 0.5) / factor - 0.5``."""
    if factor == 1.0:
        return values
    return (np.asarray(values, dtype=np.float64) + 0.5) / factor - 0.5
