"""Tiny fixtures of every input layout, written inline: the builders the reader and discovery tests share."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


STIMAGE_META = (
    "slide,species,tissue,pmid,title,abstract,keywords,involve_cancer,tech,spot_num,gene_num\n"
    'slideA,human,brain,123,A title,"An abstract, with commas",brain;cortex,FALSE,Visium,3,2\n'
    "slideS,mouse,kidney,456,S title,Short,kidney,TRUE,ST,2,2\n"
)


def make_stimage(root: Path, duplicate: bool = False) -> Path:
    """A release with Visium slide ``slideA`` (3 spots, 2 annotated) and ST slide ``slideS`` (2 spots)."""
    spots = ["AAAC-1", "AAAG-1", "AAAT-1"] + (["AAAC-1"] if duplicate else [])
    coords = ",yaxis,xaxis,r\n" + "".join(f"{s},{100.5 + 10 * i},{200.25 + 20 * i},{[10, 11, 12, 9][i]}\n"
                                          for i, s in enumerate(spots))
    write(root / "Visium" / "coord" / "slideA_coord.csv", coords)
    write(root / "Visium" / "image" / "slideA.png", b"\xff\xd8\xff not decoded")
    write(root / "Visium" / "gene_exp" / "slideA_count.csv", ",G1,G2\n" + "".join(f"{s},1,0\n" for s in spots))
    write(root / "annotation" / "slideA_anno.csv", "\tV2\nAAAC-1\ttumor\nAAAT-1\tstroma\nZZZZ-1\tnormal\n")
    write(root / "ST" / "coord" / "slideS_coord.csv", ",yaxis,xaxis,r\n10x11,5,6,40\n11x11,7,8,40\n")
    write(root / "ST" / "image" / "slideS.png", b"png")
    write(root / "ST" / "gene_exp" / "slideS_count.csv", ",G1\n10x11,3\n11x11,4\n")
    write(root / "meta" / "meta_all_gene.csv", STIMAGE_META)
    return root


POSITIONS = [  # barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
    ("AAAC-1", 1, 0, 0, 1000, 2000),
    ("AAAG-1", 0, 0, 2, 1000, 2200),
    ("AAAT-1", 1, 1, 1, 1173, 2100),
    ("AACC-1", 1, 2, 0, 1346, 2000),
]
SCALEFACTORS = {"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.025,
                "fiducial_diameter_fullres": 177.7}


def make_visium(folder: Path, header: bool = False, fullres: bool = True, matrix: str = "h5",
                positions: list[tuple] = POSITIONS) -> Path:
    """A Space Ranger Visium ``outs``-like folder."""
    rows = "".join(",".join(map(str, p)) + "\n" for p in positions)
    if header:
        write(folder / "spatial" / "tissue_positions.csv",
              "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" + rows)
    else:
        write(folder / "spatial" / "tissue_positions_list.csv", rows)
    write(folder / "spatial" / "scalefactors_json.json", json.dumps(SCALEFACTORS))
    write(folder / "spatial" / "tissue_hires_image.png", b"png")
    if matrix == "h5":
        write(folder / "filtered_feature_bc_matrix.h5", b"h5")
    else:
        for name in ("barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz"):
            write(folder / "filtered_feature_bc_matrix" / name, b"")
    if fullres:
        write(folder / "image.tif", b"II*\x00")
    return folder


def make_visiumhd(folder: Path, fullres: bool = True) -> Path:
    """A VisiumHD slide with 8 µm (5 bins, 4 in tissue) and 16 µm (2 bins) outputs."""
    for size, n, diameter in ((8, 5, 32.0), (16, 2, 64.0)):
        bin_dir = folder / "binned_outputs" / f"square_{size:03d}um"
        table = pa.table({
            "barcode": [f"s_{size:03d}um_{i:05d}_00000-1" for i in range(n)],
            "in_tissue": [0 if i == 4 else 1 for i in range(n)],
            "array_row": list(range(n)), "array_col": [0] * n,
            "pxl_row_in_fullres": [100.0 + diameter * i for i in range(n)],
            "pxl_col_in_fullres": [50.0] * n,
        })
        (bin_dir / "spatial").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, bin_dir / "spatial" / "tissue_positions.parquet")
        write(bin_dir / "spatial" / "scalefactors_json.json", json.dumps({
            "spot_diameter_fullres": diameter, "bin_size_um": float(size), "microns_per_pixel": size / diameter,
            "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.01, "regist_target_img_scalef": 0.2}))
        write(bin_dir / "filtered_feature_bc_matrix.h5", b"h5")
    write(folder / "spatial" / "tissue_hires_image.png", b"png")
    if fullres:
        write(folder / "image.tif", b"II*\x00")
    return folder


DETECTOR = (  # x, y, new_x, new_y, pixel_x, pixel_y, selected; pixel = a + 150 * new
    (10, 12, 10.02, 12.0, 1603.0, 1850.0, 1),
    (11, 12, 11.0, 11.98, 1750.0, 1847.0, 1),
    (10, 13, 10.0, 13.01, 1600.0, 2001.5, 1),
    (13, 13, 13.0, 13.0, 2050.0, 2000.0, 1),  # selected, no counts
    (14, 14, 14.0, 14.0, 2200.0, 2150.0, 0),  # not selected
)


def make_st(folder: Path, name: str = "slide1") -> Path:
    """A legacy ST slide: gzipped counts (one spot without detector entry), detector TSV, JPEG."""
    counts = "\tGeneA\tGeneB\n" + "".join(f"{s}\t1\t2\n" for s in ("10x12", "11x12", "10x13", "20x20"))
    write(folder / f"{name}_stdata.tsv.gz", gzip.compress(counts.encode()))
    write(folder / f"{name}_spot_detector.tsv", "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n"
          + "".join("\t".join(map(str, row)) + "\n" for row in DETECTOR))
    write(folder / f"{name}_HE.jpg", b"\xff\xd8\xff")
    return folder


# ---------------------------------------------------------------- STimage
