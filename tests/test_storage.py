"""storage helpers that need no S3 server: environment precedence, gzip detection, path helpers."""
from __future__ import annotations

import gzip

from stlake.lake import storage

AWS_NAMES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP",
             *storage.LOCAL_CREDENTIALS)


def test_endpoint_and_region_precedence_is_shared(monkeypatch):
    for name in AWS_NAMES:
        monkeypatch.delenv(name, raising=False)
    assert storage._endpoint_url() is None and storage._region() is None
    assert storage._endpoint() == (None, "https")
    assert storage.delta_storage_options() == {"AWS_REGION": "us-east-1"}
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert storage._region() == "eu-west-1" and storage._endpoint() == ("127.0.0.1:9000", "http")
    assert storage.delta_storage_options() == {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                               "AWS_ALLOW_HTTP": "true"}
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.test")
    assert storage._region() == "ap-south-1" and storage._endpoint_url() == "https://s3.example.test"
    assert storage.delta_storage_options() == {"AWS_REGION": "ap-south-1", "AWS_ENDPOINT_URL": "https://s3.example.test"}
    assert set(storage.STORAGE_SETTINGS).isdisjoint(storage.LOCAL_CREDENTIALS)


def test_text_is_gunzipped_by_content_with_one_open(tmp_path, monkeypatch):
    plain, packed = tmp_path / "a.txt.gz", tmp_path / "b.txt"  # names lie on purpose
    plain.write_bytes("\ufeffx,y\r\n1,2\n".encode("utf-8"))
    packed.write_bytes(gzip.compress(b"x,y\n3,4\n"))
    opened = []
    original = storage.open_input
    monkeypatch.setattr(storage, "open_input", lambda uri: opened.append(uri) or original(uri))
    with storage.open_text(str(plain)) as text:
        assert text.read() == "x,y\r\n1,2\n"
    with storage.open_text(str(packed)) as text:
        assert text.readline() == "x,y\n"
    with storage.open_decompressed(str(packed)) as (handle, compressed):
        assert compressed and handle.read() == b"x,y\n3,4\n"
    assert storage.read_decompressed(str(packed)) == b"x,y\n3,4\n"
    assert len(opened) == 4
