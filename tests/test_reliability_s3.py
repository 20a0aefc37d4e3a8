"""Reliability corpus, entries on an ``s3://`` lake (a real SeaweedFS server): traversal ids write no
object outside the lake's prefix, and a row in a bucket that does not exist is one refused entry."""
from __future__ import annotations

import re
import uuid

import pyarrow.fs as pafs

import corpus
from stlake.ingestion.driver import ingest
from stlake.ingestion.options import IngestOptions
from stlake.lake import storage

TRAVERSAL_IDS = ("../../escape-up", "../../../outside-bucket", "/lake/absolute", "a/b", "..\\..\\back")
#: What a lake prefix may hold: per table, hashed data files and the Delta log.
LAKE_KEY = re.compile(r"[a-z_]+/(part-[0-9a-f]{16}-\d{3}-[0-9a-f]{12}\.zstd\.parquet|_delta_log/.+)")


def all_keys() -> set[str]:
    """Every bucket and object key on the server (``bucket/key``)."""
    fs, _ = storage.filesystem("s3://lake")
    buckets = [info.path for info in fs.get_file_info(pafs.FileSelector("", recursive=False))]
    keys = set(buckets)
    for bucket in buckets:
        keys |= {info.path for info in fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
                 if info.type == pafs.FileType.File}
    return keys


def test_s3_lake_refuses_traversal_ids_and_a_missing_bucket_row(spark, s3_env, synthetic_dataset, tmp_path,
                                                               corpus_baseline):
    [good] = corpus.good_rows(synthetic_dataset, ["st_1"])
    rows = [good] + [{**good, "slide_id": slide_id} for slide_id in TRAVERSAL_IDS]
    rows.append(corpus.entry("far", "visium", path="s3://stlake-no-such-bucket/visium_1"))
    manifest = corpus.write_manifest(tmp_path / "manifest.csv", rows)
    prefix = f"lake/reliability-{uuid.uuid4().hex[:8]}"
    before = all_keys()

    report = ingest(spark, IngestOptions(source=str(manifest), lake=f"s3://{prefix}"))

    assert report.landed == ["st_1"]
    assert report.rejected == {**{slide_id: "invalid_slide_id" for slide_id in TRAVERSAL_IDS},
                               "far": "source_unreachable"}
    new = all_keys() - before
    assert new and all(key.startswith(prefix + "/") for key in new), sorted(new)
    assert all(LAKE_KEY.fullmatch(key[len(prefix) + 1:]) for key in new), sorted(new)
    rejects = {row["slide_id"]: row for row in corpus.read_rows(f"s3://{prefix}", "rejects")}
    assert "bucket s3://stlake-no-such-bucket" in rejects["far"]["detail"]
    for table in ("spots", "annotations"):
        assert corpus.landed(f"s3://{prefix}", table, ["st_1"]).equals(corpus.landed(corpus_baseline, table, ["st_1"]))
