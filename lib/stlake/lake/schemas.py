"""Arrow schemas of the lake's Delta tables (documented in docs/tables.md).

Only types every Delta reader understands (no timestamp_ntz, no column mapping, no deletion vectors),
so delta-spark 3.x/4.x, delta-rs and plain Parquet readers all read the tables.
"""
from __future__ import annotations

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

SLIDES = pa.schema([
    ("slide_id", pa.string()),
    ("technology", pa.string()),
    ("layout", pa.string()),
    ("species", pa.string()),
    ("tissue", pa.string()),
    ("source_uri", pa.string()),
    ("image_uri", pa.string()),
    ("image_format", pa.string()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("image_source", pa.string()),  # "fullres" or "hires"
    ("coord_scale", pa.float64()),  # factor applied to full-res coordinates
    ("spot_diameter_px", pa.float64()),
    ("microns_per_pixel", pa.float64()),
    ("tile_size_px", pa.int32()),  # side of the square cut from the image
    ("tile_resize_px", pa.int32()),  # side after resize, null when not resized
    ("tile_microns_per_pixel", pa.float64()),  # µm/px of the stored tiles, when the scale is known
    ("pyramid_level", pa.int32()),  # level of the image's pyramid the tiles were cut from (0 = full resolution)
    ("scale_source", pa.string()),  # where microns_per_pixel came from: manifest, reader, tiff_resolution
    ("n_spots", pa.int64()),  # spots that landed in `spots`
    ("n_spots_dropped", pa.int64()),  # spots dropped: border spots (border="drop") and spots without expression
    ("n_spots_without_expression", pa.int64()),  # spots with positions but no expression row (dropped)
    ("n_genes", pa.int32()),  # genes detected in at least one spot
    ("total_counts", pa.int64()),
    ("meta_json", pa.string()),  # remaining metadata (pmid, title, keywords, involve_cancer, ...)
    ("run_id", pa.string()),
    ("ingested_at", TIMESTAMP),
])

SPOTS = pa.schema([
    ("slide_id", pa.string()),
    ("spot_id", pa.string()),
    ("technology", pa.string()),  # partition column
    ("x", pa.float64()),  # spot centre, column, in pixels of the tiled image
    ("y", pa.float64()),  # spot centre, row
    ("in_tissue", pa.bool_()),
    ("array_row", pa.int32()),
    ("array_col", pa.int32()),
    ("label", pa.string()),  # the chosen annotation set's normalised label, null when none
    ("tile", pa.binary()),  # encoded image bytes (JPEG or PNG file content)
    ("tile_format", pa.string()),  # "jpeg" | "png"
    ("tile_width", pa.int32()),
    ("tile_height", pa.int32()),
    ("tile_x0", pa.int32()),  # top-left corner of the cut square in the image (may be < 0 when padded)
    ("tile_y0", pa.int32()),
    ("tile_size_px", pa.int32()),
    ("padded", pa.bool_()),  # part of the square lay outside the image and was padded
    ("tissue_fraction", pa.float32()),
    ("run_id", pa.string()),
])

EXPRESSION = pa.schema([
    ("slide_id", pa.string()),
    ("spot_id", pa.string()),
    ("technology", pa.string()),  # partition column
    ("gene_ids", pa.list_(pa.int64())),  # genes.gene_id of the non-zero genes, ascending
    ("counts", pa.list_(pa.int32())),  # raw integer counts, same order
    ("total_counts", pa.int64()),
    ("n_genes", pa.int32()),
    ("run_id", pa.string()),
])

GENES = pa.schema([
    ("gene_id", pa.int64()),  # stable 63-bit hash of (species, gene_key): same on every run and cluster
    ("species", pa.string()),
    ("gene_key", pa.string()),  # unversioned Ensembl id or upper-cased symbol
    ("symbol", pa.string()),
    ("ensembl_id", pa.string()),
])

ANNOTATIONS = pa.schema([
    ("slide_id", pa.string()),
    ("spot_id", pa.string()),
    ("set", pa.string()),  # the annotation set: a file's name (slide id left out), a Loupe category, an obs column
    ("raw_label", pa.string()),  # the label as written
    ("label", pa.string()),  # normalised (trimmed, case-folded, label map applied); null: unknown to a strict map
    ("source_uri", pa.string()),
    ("run_id", pa.string()),
])

REJECTS = pa.schema([
    ("run_id", pa.string()),
    ("slide_id", pa.string()),
    ("stage", pa.string()),  # discover | read | tiles | expression | genes | commit
    ("severity", pa.string()),  # "error": slide skipped; "warning": slide landed, something noted
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("source_uri", pa.string()),
    ("rejected_at", TIMESTAMP),
])

PAIRS = pa.schema([
    ("slide_id", pa.string()),
    ("spot_id", pa.string()),
    ("technology", pa.string()),
    ("species", pa.string()),
    ("tissue", pa.string()),
    ("label", pa.string()),
    ("tissue_fraction", pa.float32()),
    ("tile", pa.binary()),
    ("tile_format", pa.string()),
    ("gene_ids", pa.list_(pa.int64())),
    ("counts", pa.list_(pa.int32())),
    ("total_counts", pa.int64()),
    ("label_sets", pa.list_(pa.string())),  # the spot's annotation sets (sorted), null when it has none
    ("set_labels", pa.list_(pa.string())),  # their normalised labels, same order
])

# Named gene panels (e.g. ``hvg256``: top highly variable genes per species, from ``stlake hvg``).
GENE_PANELS = pa.schema([
    ("panel", pa.string()),
    ("rank", pa.int32()),  # 1 = first column of the panel (per species)
    ("gene_id", pa.int64()),
    ("species", pa.string()),
    ("symbol", pa.string()),
    ("score", pa.float64()),  # what ranked the gene (e.g. normalised dispersion)
])

TABLES: dict[str, pa.Schema] = {
    "slides": SLIDES, "spots": SPOTS, "expression": EXPRESSION, "genes": GENES,
    "annotations": ANNOTATIONS, "rejects": REJECTS, "pairs": PAIRS, "gene_panels": GENE_PANELS,
}

# No table is partitioned: every data file holds the rows of exactly one slide, so the per-file
# min/max statistics of slide_id and technology in the Delta log already prune files for those
# filters, re-ingesting a slide removes whole files, and plain Parquet readers (Petastorm) see every
# column without re-attaching partition values.

# Target bytes of one Parquet row group per table: image tables hold many MB of JPEG per group
# (a few hundred tiles), so a reader streams a group without holding a whole file.
ROW_GROUP_BYTES: dict[str, int] = {"spots": 32 << 20, "pairs": 32 << 20, "expression": 32 << 20}
FILE_BYTES = 256 << 20
