"""Options of an ingest run, each declared once: its type, default and help (the CLI flags derive from them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from stlake.ingestion.records import RunError

#: Bytes of decoded image / parsed matrix one task may hold, unless ``--memory-budget`` says otherwise.
DEFAULT_MEMORY_BUDGET = 4 << 30

#: What happens to a spot whose square leaves the image: padded with white, or dropped (and reported).
Border = Literal["pad", "drop"]
#: How tiles are stored in ``spots.tile``.
TileEncoding = Literal["jpeg", "png"]
#: Labels a ``--label-map`` does not name: kept (normalised), or dropped and reported (``strict``).
LabelMapMode = Literal["keep", "strict"]
#: Named tile geometries (``resolution.PRESETS``): ``hest`` = 224 px at 0.5 µm/px, as HEST-1k's patches.
Preset = Literal["hest"]
#: VisiumHD bin sizes in µm (Space Ranger's ``binned_outputs/square_{002,008,016}um``).
BinSize = Literal[2, 8, 16]


def option(default: Any, help: str, *, flag: Optional[str] = None, kind: Optional[str] = None) -> Any:
    """A dataclass field with the CLI's help text.

    ``flag`` overrides ``--field-name``; ``kind`` names a parser (``size``: '4G', '512M'; ``negated``: a
    store-false switch named by ``flag``; ``switch``: a store-true switch).
    """
    return field(default=default, metadata={"help": help, "flag": flag, "kind": kind})


@dataclass(frozen=True)
class IngestOptions:
    """What to ingest, where to, and how to cut tiles and split work."""

    source: str = field(metadata={"help": "root folder / s3:// prefix to scan, or a manifest .csv/.yaml"})
    lake: str = option("./lake", "lake root: a local folder or s3://bucket/prefix")
    tile_px: Optional[int] = option(None, "side of the cut square in pixels (default: the spot diameter); with "
                                          "--target-mpp the side of the stored tile")
    tile_um: Optional[float] = option(None, "side of the cut square in micrometres (needs the slide's scale)")
    resize_px: Optional[int] = option(None, "resize every tile to this side, e.g. 224 (not with --target-mpp)",
                                      flag="--resize")
    target_mpp: Optional[float] = option(None, "µm per pixel of the stored tiles, e.g. 0.5: the pyramid level "
                                               "closest above it is read and downsampled")
    max_upsample: Optional[float] = option(None, "refuse slides whose tiles would be enlarged more than this "
                                                 "factor (default: enlarge, with an 'upsampled' warning)")
    preset: Optional[Preset] = option(None, "named tile geometry: hest = 224 px at 0.5 µm/px")
    border: Border = option("pad", "spots whose square leaves the image: pad with white, or drop them")
    encoding: TileEncoding = option("jpeg", "tile encoding in spots.tile")
    quality: int = option(90, "JPEG quality of the tiles")
    memory_budget: int = option(DEFAULT_MEMORY_BUDGET, "decoded image / parsed matrix one task may hold, e.g. 4G",
                                kind="size")
    expr_chunk_bytes: int = option(64 << 20, "dense-CSV byte range per expression task, e.g. 64M",
                                   flag="--expr-chunk", kind="size")
    max_spots_per_task: int = option(20_000, "split a slide's tiles into tasks of at most this many spots")
    tile_threads: int = option(2, "threads that cut and encode the tiles of a PNG or JPEG (one task: one "
                                  "sequential decode)")
    bin_size_um: BinSize = option(8, "VisiumHD bin size in µm", flag="--bin-size")
    in_tissue_only: bool = option(True, "keep spots outside the tissue too", flag="--all-spots", kind="negated")
    require_expression: bool = option(False, "reject a slide when any of its spots has no expression row "
                                             "(default: drop such spots with a warning, as scanpy does)",
                                      kind="switch")
    layouts: Optional[tuple[str, ...]] = option(None, "only these layouts when scanning (repeatable)",
                                                flag="--layout")
    label_set: Optional[str] = option(None, "annotation set whose labels go into spots.label (default: a slide's "
                                            "first set)")
    label_map: Optional[str] = option(None, "CSV with columns raw,label mapping raw annotation labels of different "
                                            "cohorts onto one vocabulary")
    label_map_mode: LabelMapMode = option("keep", "labels the --label-map does not name: keep them (normalised), or "
                                                  "give them no label and report them (strict)")

    def __post_init__(self) -> None:
        """Options that contradict each other stop the run (``RunError``: one line from the CLI)."""
        if self.resize_px and (self.target_mpp or self.preset):
            raise RunError("--resize cannot be combined with --target-mpp or --preset: the stored tile side is "
                           "--tile-px (or --tile-um / target)")
        if self.tile_threads < 1:
            raise RunError(f"--tile-threads must be at least 1, not {self.tile_threads}")
        for name, value in (("--target-mpp", self.target_mpp), ("--max-upsample", self.max_upsample)):
            if value is not None and not value > 0:
                raise RunError(f"{name} must be a positive number, not {value}")
