"""File writers of the synthetic dataset: 10x HDF5 / MTX matrices, dense count tables, deterministic gzip.

Every writer produces the same bytes for the same input (gzip without a timestamp or name, HDF5 without
object times), so a dataset generated twice with one seed is byte-identical.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Optional, TextIO

import numpy as np
import pandas as pd
import scipy.sparse as sp


def ensure_dir(path: str) -> str:
    """Create ``path`` (and parents) if missing; returns it."""
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def open_text(path: str, gz: Optional[bool] = None) -> Iterator[TextIO]:
    """A text stream writing ``path``; gzip (deterministic: no name, mtime 0) when ``gz`` or the name ends .gz."""
    ensure_dir(os.path.dirname(path) or ".")
    gz = path.endswith(".gz") if gz is None else gz
    with open(path, "wb") as raw:
        if gz:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=4) as zipped:
                with io.TextIOWrapper(zipped, encoding="utf-8", newline="") as text:
                    yield text
        else:
            with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                yield text


def write_json(path: str, data: dict) -> None:
    """``data`` as indented JSON (keys in insertion order) plus a newline."""
    with open_text(path, gz=False) as text:
        text.write(json.dumps(data, indent=4, sort_keys=False) + "\n")


def write_dense(path: str, row_names: Sequence[str], columns: Sequence[str], counts: sp.csr_matrix,
                sep: str = ",", chunk_cells: int = 2_000_000) -> None:
    """A dense table: header = empty first cell + ``columns``; rows = name + integer counts."""
    n_rows = counts.shape[0]
    chunk = max(1, chunk_cells // max(counts.shape[1], 1))
    with open_text(path) as text:
        text.write(sep.join(["", *columns]) + "\n")
        for start in range(0, n_rows, chunk):
            block = counts[start:start + chunk].toarray()
            frame = pd.DataFrame(block, index=pd.Index(list(row_names[start:start + chunk])))
            frame.to_csv(text, sep=sep, header=False, lineterminator="\n")


def write_10x_h5(path: str, counts: sp.csr_matrix, barcodes: Sequence[str], gene_ids: Sequence[str],
                 gene_names: Sequence[str], genome: str = "GRCh38") -> None:
    """A Cell Ranger / Space Ranger ``filtered_feature_bc_matrix.h5`` (CSC, one column per barcode).

    ``counts`` is barcodes x genes CSR, which is exactly the genes x barcodes CSC layout of the file.
    """
    import h5py

    counts = sp.csr_matrix(counts)
    counts.sort_indices()
    ensure_dir(os.path.dirname(path) or ".")
    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "track_times": False}
    n_genes = len(gene_ids)

    def strings(values: Sequence[str]) -> np.ndarray:
        encoded = [v.encode("utf-8") for v in values]
        width = max((len(v) for v in encoded), default=1)
        return np.array(encoded, dtype=f"S{max(width, 1)}")

    with h5py.File(path, "w", libver="earliest", track_order=False) as handle:
        handle.attrs["filetype"] = "matrix"
        handle.attrs["version"] = np.int64(2)
        handle.attrs["library_ids"] = np.array([b"synthetic"])
        handle.attrs["chemistry_description"] = "Spatial 3' v1 (synthetic)"
        matrix = handle.create_group("matrix")
        matrix.create_dataset("barcodes", data=strings(barcodes), **opts)
        matrix.create_dataset("data", data=counts.data.astype(np.int32), chunks=True, **opts)
        matrix.create_dataset("indices", data=counts.indices.astype(np.int64), chunks=True, **opts)
        matrix.create_dataset("indptr", data=counts.indptr.astype(np.int64), **opts)
        matrix.create_dataset("shape", data=np.array([n_genes, counts.shape[0]], dtype=np.int32), track_times=False)
        features = matrix.create_group("features")
        features.create_dataset("id", data=strings(gene_ids), **opts)
        features.create_dataset("name", data=strings(gene_names), **opts)
        features.create_dataset("feature_type", data=strings(["Gene Expression"] * n_genes), **opts)
        features.create_dataset("genome", data=strings([genome] * n_genes), **opts)
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]), track_times=False)


def write_10x_mtx(folder: str, counts: sp.csr_matrix, barcodes: Sequence[str], gene_ids: Sequence[str],
                  gene_names: Sequence[str]) -> None:
    """A ``filtered_feature_bc_matrix/`` folder: matrix.mtx.gz (genes x barcodes), barcodes / features .tsv.gz."""
    ensure_dir(folder)
    coo = sp.csr_matrix(counts).tocoo()  # row = barcode, col = gene; CSR order = by barcode, then gene
    with open_text(os.path.join(folder, "matrix.mtx.gz")) as text:
        text.write("%%MatrixMarket matrix coordinate integer general\n")
        text.write('%metadata_json: {"software_version": "stlake-synth", "format_version": 2}\n')
        text.write(f"{len(gene_ids)} {counts.shape[0]} {coo.nnz}\n")
        frame = pd.DataFrame({"gene": coo.col.astype(np.int64) + 1, "barcode": coo.row.astype(np.int64) + 1,
                              "value": coo.data.astype(np.int64)})
        frame.to_csv(text, sep=" ", header=False, index=False, lineterminator="\n")
    with open_text(os.path.join(folder, "barcodes.tsv.gz")) as text:
        text.write("".join(f"{b}\n" for b in barcodes))
    with open_text(os.path.join(folder, "features.tsv.gz")) as text:
        text.write("".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(gene_ids, gene_names)))


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-deterministic (fixed zip timestamps)."""
    import zipfile

    ensure_dir(os.path.dirname(path) or ".")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            archive.writestr(info, buffer.getvalue())
