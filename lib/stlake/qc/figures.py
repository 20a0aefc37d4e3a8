"""The QC figures (matplotlib, no pyplot state), each of a fixed size in pixels (``SIZES`` at ``DPI``).

Spot outlines on the thumbnail, a tile grid, a histogram of counts, a page of rejects.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stlake.qc.data import SlideData
from stlake.qc.mosaic import Canvas, decode_tile

Outline = Literal["counts", "label", "tissue"]
OUTLINES: tuple[Outline, ...] = ("counts", "label", "tissue")
DPI = 100
#: Figure sizes in inches (pixels = inches x DPI): every PNG of a kind has the same size.
SIZES = {"outline": (8.0, 8.0), "tiles": (12.0, 9.0), "histogram": (8.0, 5.0), "rejects": (12.0, 8.0)}
TILE_GRID = (4, 6)  # rows, columns of the random-tile mosaic
REJECTS_PER_PAGE = 40
UNLABELLED = "(no label)"


def _clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters (an ellipsis marks the cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def new_figure(kind: str) -> Figure:
    """A figure of the kind's size with an Agg canvas attached."""
    figure = Figure(figsize=SIZES[kind], dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: str) -> str:
    """Write ``figure`` as a PNG of exactly its size in pixels; returns ``path``."""
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _spot_circles(ax: Axes, canvas: Canvas, slide: SlideData, colors: np.ndarray) -> None:
    """Draw one circle outline per spot, of the spot diameter (or half the tile side), in ``colors``."""
    x, y = canvas.to_canvas(slide.column("x").astype(float), slide.column("y").astype(float))
    sides = slide.column("tile_size_px").astype(float)
    diameter = np.full(len(x), slide.spot_diameter_px) if slide.spot_diameter_px else sides * 0.5
    widths = np.maximum(diameter * canvas.scale, 1.0)
    shown_px = float(np.median(widths)) * ax.get_position().width * SIZES["outline"][0] * DPI / max(canvas.image.shape)
    line = float(np.clip(shown_px / 10 * 72 / DPI, 0.3, 1.6))  # points: thin rings for dense small spots
    ax.add_collection(EllipseCollection(widths, widths, np.zeros(len(x)), units="xy", offsets=np.c_[x, y],
                                        offset_transform=ax.transData, facecolors="none", edgecolors=colors,
                                        linewidths=line))


def outline_figure(slide: SlideData, canvas: Canvas, by: Outline) -> Figure:
    """The thumbnail with every spot's outline coloured by total counts, label or tissue fraction."""
    figure = new_figure("outline")
    ax = figure.add_axes((0.04, 0.06, 0.78, 0.86))
    ax.imshow(canvas.image, interpolation="nearest")
    ax.set_axis_off()
    if by == "label":
        _label_outlines(figure, ax, canvas, slide)
    else:
        values = slide.total_counts.astype(float) if by == "counts" else slide.column("tissue_fraction").astype(float)
        norm = Normalize(0.0, 1.0) if by == "tissue" else Normalize(0.0, max(float(values.max(initial=0)), 1.0))
        cmap = colormaps["viridis"]
        _spot_circles(ax, canvas, slide, cmap(norm(np.nan_to_num(values, nan=0.0))))
        bar = figure.add_axes((0.85, 0.15, 0.03, 0.68))
        label = "total counts" if by == "counts" else "tissue fraction"
        figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar, label=label)
    title = {"counts": "total counts", "label": "label", "tissue": "tissue fraction"}[by]
    figure.suptitle(f"{slide.slide_id}: {slide.n_spots} spots by {title}", fontsize=12)
    return figure


def _label_outlines(figure: Figure, ax: Axes, canvas: Canvas, slide: SlideData) -> None:
    """Outlines in one colour per label (grey for unlabelled spots), with a legend."""
    labels = [UNLABELLED if v is None else str(v) for v in slide.spots.column("label").to_pylist()]
    names = sorted(set(labels) - {UNLABELLED}) + ([UNLABELLED] if UNLABELLED in labels else [])
    palette = colormaps["tab10"]
    colour = {name: (0.6, 0.6, 0.6, 1.0) if name == UNLABELLED else palette(i % 10) for i, name in enumerate(names)}
    _spot_circles(ax, canvas, slide, np.array([colour[name] for name in labels]).reshape(-1, 4))
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=colour[n],
                      label=f"{n} ({labels.count(n)})") for n in names[:20]]
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)


def tiles_figure(slide: SlideData, seed: int = 0) -> Figure:
    """A grid of random tiles of the slide, each titled with its spot id."""
    figure = new_figure("tiles")
    rows, cols = TILE_GRID
    count = min(rows * cols, slide.n_spots)
    chosen = np.sort(np.random.default_rng(seed).choice(slide.n_spots, count, replace=False)).tolist()
    spot_ids, tiles = slide.spots.column("spot_id"), slide.spots.column("tile")
    for cell, i in enumerate(chosen):
        ax = figure.add_subplot(rows, cols, cell + 1)
        ax.imshow(decode_tile(tiles[int(i)].as_py()), interpolation="nearest")
        ax.set_title(_clip(str(spot_ids[int(i)].as_py()), 28), fontsize=8)
        ax.set_axis_off()
    figure.suptitle(f"{slide.slide_id}: {count} random tiles of {slide.n_spots}", fontsize=12)
    return figure


def histogram_figure(slide: SlideData) -> Figure:
    """A histogram of the total counts per spot, with the median marked."""
    figure = new_figure("histogram")
    ax = figure.add_axes((0.1, 0.13, 0.85, 0.75))
    totals = slide.total_counts[slide.total_counts >= 0]
    if totals.size:
        ax.hist(totals, bins=50, color="#4477aa")
        median = float(np.median(totals))
        ax.axvline(median, color="#cc3311", linestyle="--", label=f"median {median:,.0f}")
        ax.legend()
    ax.set_xlabel("total counts per spot")
    ax.set_ylabel("spots")
    figure.suptitle(f"{slide.slide_id}: counts per spot ({totals.size} spots)", fontsize=12)
    return figure


def rejects_figure(run_id: str, rows: pa.Table) -> Figure:
    """A page listing one run's rejects: slide, stage, severity, reason, detail (the first 40 rows)."""
    figure = new_figure("rejects")
    ax = figure.add_axes((0.02, 0.02, 0.96, 0.88))
    ax.set_axis_off()
    severities = rows.column("severity").to_pylist()
    errors = sum(1 for s in severities if s == "error")
    figure.suptitle(f"run {run_id or '(none)'}: {rows.num_rows} rejects "
                    f"({errors} errors, {rows.num_rows - errors} warnings)", fontsize=12)
    shown = rows.slice(0, REJECTS_PER_PAGE).to_pylist()
    cells = [[_clip(str(row[c] or ""), width) for c, width in
              (("slide_id", 32), ("stage", 12), ("severity", 8), ("reason", 30), ("detail", 100))] for row in shown]
    if cells:
        table = ax.table(cellText=cells, colLabels=["slide", "stage", "severity", "reason", "detail"],
                         colWidths=[0.2, 0.08, 0.07, 0.19, 0.46], loc="upper left", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1.0, 1.0)
    if rows.num_rows > REJECTS_PER_PAGE:
        ax.text(0.0, 0.0, f"... and {rows.num_rows - REJECTS_PER_PAGE} more (stlake sql \"SELECT * FROM rejects "
                f"WHERE run_id = '{run_id}'\")", fontsize=8, transform=ax.transAxes)
    return figure
