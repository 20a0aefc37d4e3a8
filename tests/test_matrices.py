"""Expression matrices -> sparse rows: chunking, exact counts, validation, every source kind."""
from __future__ import annotations

import gzip
import io
import pickle
from typing import get_args

import h5py
import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from stlake.ingestion import matrices as ex
from stlake.ingestion.matrices import batch as batching
from stlake.ingestion.matrices import tenx_h5, text_parse
from stlake.ingestion.matrices import text as text_lines
from stlake.ingestion.records import ExpressionSource, MatrixKind, SlideError
from stlake.lake import storage


def random_counts(n_spots: int = 60, n_genes: int = 25, seed: int = 0) -> pd.DataFrame:
    """Sparse-ish integer counts with a few large values; index = spot ids, columns = genes."""
    rng = np.random.default_rng(seed)
    values = np.where(rng.random((n_spots, n_genes)) < 0.3, rng.integers(1, 50, (n_spots, n_genes)), 0)
    values[0, 0], values[-1, -1], values[3, :] = 2_000_000_000, 123_456, 0  # big counts, an all-zero row
    return pd.DataFrame(values, index=[f"{i}x{i + 2}" for i in range(n_spots)],
                        columns=[f"GENE{j}" for j in range(n_genes)])


def read_all(src: ExpressionSource, chunk_bytes: int = 1 << 30) -> tuple[ex.ExprPlan, pd.DataFrame]:
    """Every chunk of ``src`` densified back into a frame (spot order as read)."""
    plan = ex.plan_expression(src, chunk_bytes)
    ids, rows = [], []
    for chunk in plan.chunks:
        for batch in ex.read_chunk(src, plan, chunk):
            assert batch.indptr.dtype == np.int64 and batch.indices.dtype == np.int32
            assert batch.counts.dtype == np.int32 and (batch.counts > 0).all()
            assert len(batch) <= batching.MAX_BATCH_ROWS
            for r in range(len(batch)):
                lo, hi = batch.indptr[r], batch.indptr[r + 1]
                assert (np.diff(batch.indices[lo:hi]) > 0).all()
                dense = np.zeros(len(plan.genes), dtype=np.int64)
                dense[batch.indices[lo:hi]] = batch.counts[lo:hi]
                ids.append(batch.spot_ids[r])
                rows.append(dense)
    frame = pd.DataFrame(np.array(rows).reshape(len(rows), len(plan.genes)), index=ids, columns=plan.genes)
    return plan, frame


def write(path, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(data)
    return str(path)


def csv_text(frame: pd.DataFrame, sep: str = ",", newline: str = "\n", trailing: bool = True) -> str:
    text = frame.to_csv(sep=sep, lineterminator=newline)
    return text if trailing else text[:-len(newline)]


def error_of(src: ExpressionSource, chunk_bytes: int = 1 << 30) -> SlideError:
    with pytest.raises(SlideError) as caught:
        read_all(src, chunk_bytes)
    return caught.value


# ---------------------------------------------------------------- dense CSV

@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
@pytest.mark.parametrize("chunk_bytes", [100, 1000, 1 << 30])
def test_dense_csv_chunks_match_pandas(tmp_path, newline, trailing, chunk_bytes):
    frame = random_counts()
    uri = write(tmp_path / "s_count.csv", csv_text(frame, newline=newline, trailing=trailing))
    expected = pd.read_csv(uri, index_col=0)
    plan, got = read_all(ExpressionSource("dense_csv", uri), chunk_bytes)
    assert plan.genes == list(expected.columns) and plan.ensembl_ids == [None] * len(plan.genes)
    assert len(plan.chunks) >= (2 if chunk_bytes < 2000 else 1)
    assert list(got.index) == list(expected.index)
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())


@pytest.mark.parametrize("parse_block,read_block", [(64, 50), (300, 1 << 20), (1 << 20, 7)])
def test_dense_csv_block_boundaries(tmp_path, monkeypatch, parse_block, read_block):
    monkeypatch.setattr(text_parse, "PARSE_BLOCK", parse_block)
    monkeypatch.setattr(text_lines, "READ_BLOCK", read_block)
    frame = random_counts(n_spots=40, n_genes=12, seed=3)
    uri = write(tmp_path / "c.csv", csv_text(frame, newline="\r\n"))
    for chunk_bytes in (33, 500, 1 << 30):
        _, got = read_all(ExpressionSource("dense_csv", uri), chunk_bytes)
        np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())
        assert list(got.index) == list(frame.index)


def test_dense_csv_float_formatted_counts_are_exact(tmp_path):
    frame = random_counts()
    uri = write(tmp_path / "f.csv", frame.astype(float).to_csv())  # "3.0", "0.0", "2000000000.0"
    assert "3.0," in open(uri).read()
    for chunk_bytes in (150, 1 << 30):
        _, got = read_all(ExpressionSource("dense_csv", uri), chunk_bytes)
        np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


def test_fast_and_careful_parsers_agree(tmp_path):
    frame = random_counts(n_spots=20, n_genes=9, seed=5)
    for text in (csv_text(frame), frame.astype(float).to_csv(), csv_text(frame, newline="\r\n")):
        body = text.split("\n", 1)[1].encode()
        genes = list(frame.columns)
        fast = text_parse._parse_fast(memoryview(body), len(genes), ",")
        careful = text_parse._parse_careful(memoryview(body), genes, ",", "x")
        assert fast is not None
        for name in ("spot_ids", "indptr", "indices", "counts"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(careful, name))


def test_dense_csv_r_style_header_quotes_and_sep(tmp_path):
    text = 'G1;"G2";G3\n"s 1";0;4;0\ns2;1;0;7\n'  # header without the spot-id cell, quoted names
    plan, got = read_all(ExpressionSource("dense_csv", write(tmp_path / "r.csv", text), {"sep": ";"}))
    assert plan.genes == ["G1", "G2", "G3"]
    assert list(got.index) == ["s 1", "s2"]
    np.testing.assert_array_equal(got.to_numpy(), [[0, 4, 0], [1, 0, 7]])


def test_dense_csv_gzip_is_one_streamed_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(text_lines, "READ_BLOCK", 64)
    frame = random_counts()
    uri = write(tmp_path / "g.csv.gz", gzip.compress(csv_text(frame).encode()))
    plan, got = read_all(ExpressionSource("dense_csv", uri), 100)
    assert [c.kind for c in plan.chunks] == ["gzip"]
    np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


def test_batches_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "MAX_BATCH_ROWS", 7)
    monkeypatch.setattr(text_parse, "PARSE_BLOCK", 256)
    frame = random_counts(n_spots=50, n_genes=5)
    uri = write(tmp_path / "b.csv", csv_text(frame))
    plan = ex.plan_expression(ExpressionSource("dense_csv", uri))
    sizes = [len(b) for b in ex.read_chunk(ExpressionSource("dense_csv", uri), plan, plan.chunks[0])]
    assert max(sizes) <= 7 and sum(sizes) == 50


def test_non_integer_count_names_spot_gene_value(tmp_path):
    text = ",A,B,C\ns1,1,0,2\ns2,0,1.5,0\n"
    error = error_of(ExpressionSource("dense_csv", write(tmp_path / "x.csv", text)))
    assert error.reason == "non_integer_counts"
    assert "s2" in error.detail and "'B'" in error.detail and "not an integer" in error.detail
    assert "1.5" not in error.detail.replace(str(tmp_path), "")  # never the value


def test_negative_count_names_spot_gene_value(tmp_path):
    text = ",A,B,C\ns1,1,0,2\ns2,0,0,-2\n"
    error = error_of(ExpressionSource("dense_csv", write(tmp_path / "x.csv", text)))
    assert error.reason == "negative_counts"
    assert "s2" in error.detail and "'C'" in error.detail and "negative" in error.detail
    assert "-2" not in error.detail.replace(str(tmp_path), "")  # never the value


@pytest.mark.parametrize("cell,needle", [("", "empty"), ("abc", "not a number"), ("3000000000", "too large")])
def test_unreadable_counts(tmp_path, cell, needle):
    text = f",A,B\ns1,1,0\ns2,{cell},3\n"
    error = error_of(ExpressionSource("dense_csv", write(tmp_path / "x.csv", text)))
    assert error.reason == "expression_unreadable"
    assert needle in error.detail and "'A'" in error.detail and "s2" in error.detail and "line 3" in error.detail
    assert not cell or cell not in error.detail.replace(str(tmp_path), "")  # never the value


def test_wrong_field_count_is_unreadable(tmp_path):
    text = ",A,B\ns1,1,0\ns2,3\n"
    assert error_of(ExpressionSource("dense_csv", write(tmp_path / "x.csv", text))).reason == "expression_unreadable"


def test_duplicate_spot_ids_within_chunk(tmp_path):
    text = ",A,B\ns1,1,0\ns2,0,3\ns1,2,2\n"
    error = error_of(ExpressionSource("dense_csv", write(tmp_path / "x.csv", text)))
    assert error.reason == "duplicate_spot_ids" and "s1" in error.detail


def test_duplicate_spot_ids_across_batches_of_a_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "MAX_BATCH_ROWS", 2)
    monkeypatch.setattr(text_parse, "PARSE_BLOCK", 8)
    text = ",A,B\ns1,1,0\ns2,0,3\ns3,0,3\ns1,2,2\n"
    assert error_of(ExpressionSource("dense_csv", write(tmp_path / "x.csv", text))).reason == "duplicate_spot_ids"


def test_chunks_are_small_and_picklable(tmp_path):
    import pickle
    uri = write(tmp_path / "c.csv", csv_text(random_counts()))
    plan = ex.plan_expression(ExpressionSource("dense_csv", uri), 200)
    assert plan.chunks[0].start == len(open(uri, "rb").readline())
    assert plan.chunks[-1].stop == storage.size(uri)
    assert all(a.stop == b.start for a, b in zip(plan.chunks, plan.chunks[1:]))
    assert pickle.loads(pickle.dumps(plan.chunks[1])) == plan.chunks[1]
    assert plan.n_spots_hint and plan.n_spots_hint > 0


# ---------------------------------------------------------------- legacy ST

@pytest.mark.parametrize("compressed", [False, True])
def test_st_tsv(tmp_path, compressed):
    frame = random_counts(seed=7)
    text = csv_text(frame, sep="\t").encode()
    uri = write(tmp_path / ("st.tsv.gz" if compressed else "st.tsv"), gzip.compress(text) if compressed else text)
    plan, got = read_all(ExpressionSource("st_tsv", uri), 300)
    assert (len(plan.chunks) == 1) == compressed
    assert list(got.index) == list(frame.index) and plan.genes == list(frame.columns)
    np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


# ---------------------------------------------------------------- 10x

def tenx_features(n_genes: int) -> tuple[list[str], list[str], list[str]]:
    ids = [f"ENSG{j:011d}.{j % 3 + 1}" for j in range(n_genes)] + ["CD3_TotalSeqB"]
    names = [f"Gene{j}" for j in range(n_genes)] + ["CD3"]
    types = ["Gene Expression"] * n_genes + ["Antibody Capture"]
    return ids, names, types


def write_h5(path, frame: pd.DataFrame, dtype=np.int32, shuffle_column: int = 1) -> str:
    """10x HDF5 (v3) of ``frame`` plus one antibody feature; one column's indices left unsorted."""
    n_spots, n_genes = frame.shape
    ids, names, types = tenx_features(n_genes)
    data, indices, indptr = [], [], [0]
    for b in range(n_spots):
        rows = list(np.flatnonzero(frame.iloc[b].to_numpy())) + [n_genes]  # antibody count on every barcode
        values = list(frame.iloc[b].to_numpy()[rows[:-1]]) + [99]
        if b == shuffle_column:
            rows, values = rows[::-1], values[::-1]
        indices += rows
        data += values
        indptr.append(len(indices))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"] = np.array(data, dtype=dtype), np.array(indices, dtype=np.int64)
        m["indptr"], m["shape"] = np.array(indptr, dtype=np.int64), np.array([n_genes + 1, n_spots], dtype=np.int32)
        m["barcodes"] = np.array([s.encode() for s in frame.index])
        feats = m.create_group("features")
        feats["id"], feats["name"] = np.array([s.encode() for s in ids]), np.array([s.encode() for s in names])
        feats["feature_type"] = np.array([s.encode() for s in types])
        feats["genome"] = np.array([b"GRCh38"] * len(ids))
    return str(path)


def barcode_frame(n_spots: int = 50, n_genes: int = 20, seed: int = 2) -> pd.DataFrame:
    frame = random_counts(n_spots, n_genes, seed)
    frame.index = [f"AAAC{i:04d}-1" for i in range(n_spots)]
    return frame


@pytest.mark.parametrize("chunk_bytes", [64, 2000, 1 << 30])
def test_tenx_h5_barcode_chunks_round_trip(tmp_path, chunk_bytes):
    frame = barcode_frame()
    src = ExpressionSource("tenx_h5", write_h5(tmp_path / "m.h5", frame))
    plan, got = read_all(src, chunk_bytes)
    assert plan.genes == [f"Gene{j}" for j in range(20)] and plan.symbols == plan.genes
    assert plan.ensembl_ids[2] == "ENSG00000000002.3" and plan.n_spots_hint == 50
    assert all(c.kind == "barcodes" for c in plan.chunks) and (len(plan.chunks) > 1) == (chunk_bytes < 1 << 20)
    assert list(got.index) == list(frame.index)
    np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


def test_tenx_h5_through_a_file_object(tmp_path, monkeypatch):
    """The path taken for s3:// matrices: h5py reading a buffered pyarrow NativeFile."""
    frame = barcode_frame(n_spots=10)
    path = write_h5(tmp_path / "m.h5", frame)
    monkeypatch.setattr(tenx_h5.storage, "is_s3", lambda uri: True)
    monkeypatch.setattr(tenx_h5.storage, "open_input", lambda uri: pafs.LocalFileSystem().open_input_file(uri))
    _, got = read_all(ExpressionSource("tenx_h5", path), 100)
    np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


def test_tenx_h5_rejects_fractional_counts(tmp_path):
    frame = barcode_frame(n_spots=5).astype(float)
    frame.iloc[2, 4] = 2.5
    error = error_of(ExpressionSource("tenx_h5", write_h5(tmp_path / "m.h5", frame, dtype=np.float32)))
    assert error.reason == "non_integer_counts" and "AAAC0002-1" in error.detail and "Gene4" in error.detail
    assert "2.5" not in error.detail.replace(str(tmp_path), "")  # never the value


def test_tenx_h5_garbage_is_unreadable(tmp_path):
    uri = write(tmp_path / "m.h5", b"not an hdf5 file" * 10)
    with pytest.raises(SlideError) as caught:
        ex.plan_expression(ExpressionSource("tenx_h5", uri))
    assert caught.value.reason == "expression_unreadable"


def write_mtx(folder, frame: pd.DataFrame) -> str:
    folder.mkdir()
    ids, names, types = tenx_features(frame.shape[1])
    dense = np.vstack([frame.to_numpy().T, np.full(frame.shape[0], 7)])  # genes (+ antibody) x barcodes
    rows, cols = np.nonzero(dense)
    lines = ["%%MatrixMarket matrix coordinate integer general", "%metadata_json: {}",
             f"{dense.shape[0]} {dense.shape[1]} {len(rows)}"]
    lines += [f"{r + 1} {c + 1} {dense[r, c]}" for r, c in zip(rows, cols)]
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(
        "".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types)).encode()))
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress("".join(f"{b}\n" for b in frame.index).encode()))
    return str(folder)


def test_tenx_mtx_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "MAX_BATCH_ROWS", 16)
    frame = barcode_frame(n_spots=40)
    plan, got = read_all(ExpressionSource("tenx_mtx", write_mtx(tmp_path / "filtered_feature_bc_matrix", frame)))
    assert [c.kind for c in plan.chunks] == ["matrix"] and plan.genes[-1] == "Gene19"
    assert list(got.index) == list(frame.index)
    np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


def test_mtx_without_a_size_line_is_unreadable(tmp_path):
    """A MatrixMarket file that holds only its banner and comments is rejected (it used to loop forever)."""
    folder = write_mtx(tmp_path / "filtered_feature_bc_matrix", barcode_frame(n_spots=5))
    header_only = "%%MatrixMarket matrix coordinate integer general\n%metadata_json: {}\n"
    (tmp_path / "filtered_feature_bc_matrix" / "matrix.mtx.gz").write_bytes(gzip.compress(header_only.encode()))
    with pytest.raises(SlideError) as caught:
        read_all(ExpressionSource("tenx_mtx", folder))
    assert caught.value.reason == "expression_unreadable" and "size line" in caught.value.detail


def test_every_matrix_kind_has_a_format():
    assert set(ex.FORMATS) == set(get_args(MatrixKind))
    assert all(kind == fmt.kind and fmt.chunk_kinds for kind, fmt in ex.FORMATS.items())


def test_unknown_kind_is_rejected():
    with pytest.raises(SlideError) as caught:
        ex.plan_expression(ExpressionSource("loom", "/nowhere"))
    assert caught.value.reason == "expression_unreadable"


def test_raw_file_adapter_reads_and_seeks(tmp_path):
    path = write(tmp_path / "b.bin", bytes(range(256)) * 10)
    handle = tenx_h5._h5_file_object(pafs.LocalFileSystem().open_input_file(path), buffer_size=16)
    handle.seek(300)
    assert handle.read(3) == bytes([44, 45, 46]) and handle.tell() == 303
    handle.seek(-2, io.SEEK_END)
    assert handle.read() == bytes([254, 255])
    handle.close()


def test_row_masks_per_chunk_keep_the_slides_spots_and_check_coverage(tmp_path):
    """10x chunks get a bit mask of their own rows; a task carries bits, not the slide's id list."""
    frame = barcode_frame(60, 5)
    src = ExpressionSource("tenx_h5", write_h5(tmp_path / "m.h5", frame))
    plan = ex.plan_expression(src, 64)
    slide = np.array([f"AAAC{i:04d}-1" for i in range(0, 60, 3)], dtype=object)  # every third barcode
    masks = ex.plan_rows(src, plan, slide)
    assert len(masks) == len(plan.chunks) > 1 and all(isinstance(m, ex.RowMask) and m.covered for m in masks)
    kept = []
    for chunk, mask in zip(plan.chunks, masks):
        offset = 0
        for batch in ex.read_chunk(src, plan, chunk):
            kept += list(batch.spot_ids[mask.keep(batch.spot_ids, offset)])
            offset += len(batch)
    assert kept == list(slide)
    with pytest.raises(SlideError) as missing:
        ex.plan_rows(src, plan, np.append(slide, "GHOST-1"))
    assert missing.value.reason == "spots_without_expression" and "GHOST-1" in missing.value.detail
    with pytest.raises(SlideError) as twice:
        ex.plan_rows(src, plan, np.append(slide, slide[0]))
    assert twice.value.reason == "duplicate_spot_ids"


def test_text_chunks_carry_the_slides_ids_compressed(tmp_path):
    """Delimited text is looked up per batch through a hash index of the (compressed) slide ids."""
    path = tmp_path / "c.csv"
    path.write_text(",A\n" + "".join(f"AAACAAGTATCTCC{i:04d}-1,1\n" for i in range(5000)))
    src = ExpressionSource("dense_csv", str(path))
    plan = ex.plan_expression(src)
    slide = np.array([f"AAACAAGTATCTCC{i:04d}-1" for i in range(0, 5000, 2)], dtype=object)
    (ids,) = ex.plan_rows(src, plan, slide)
    assert isinstance(ids, ex.SlideIds) and not ids.covered and len(pickle.dumps(ids)) < 20_000
    batch = next(ex.read_chunk(src, plan, plan.chunks[0]))
    assert ids.keep(batch.spot_ids, 0).sum() == min(len(batch), 4096) // 2


def test_chunks_cap_their_rows_and_masks_stay_small(tmp_path, monkeypatch):
    """A chunk holds at most ``MAX_CHUNK_ROWS`` barcodes however sparse; a mask of kept rows compresses."""
    monkeypatch.setattr(tenx_h5, "MAX_CHUNK_ROWS", 25)
    src = ExpressionSource("tenx_h5", write_h5(tmp_path / "m.h5", barcode_frame(60, 5)))
    plan = ex.plan_expression(src, 1 << 30)
    assert [(c.start, c.stop) for c in plan.chunks] == [(0, 25), (25, 50), (50, 60)]
    mask = ex.RowMask.of(np.ones(1_600_000, dtype=bool))  # a filtered 2 µm matrix: every row is a spot
    assert len(pickle.dumps(mask)) < 2_000 and mask.keep(np.zeros(10, dtype=object), 1_599_990).all()
    sparse = np.zeros(1_000, dtype=bool)
    sparse[::7] = True
    assert (ex.RowMask.of(sparse).keep(np.zeros(1_000, dtype=object), 0) == sparse).all()
