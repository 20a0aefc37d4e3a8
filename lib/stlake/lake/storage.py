"""Paths that are local files or ``s3://bucket/key`` URIs, read and written the same way.

Executors read and write S3 themselves through pyarrow's S3 filesystem (no Spark ``s3a`` jars).
Credentials come from the standard AWS chain; ``AWS_ENDPOINT_URL`` points at an S3-compatible store.
Nothing here logs or returns secrets except to the libraries that need them.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import mmap
import os
import posixpath
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO, cast
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    """True for ``s3://`` / ``s3a://`` URIs."""
    return uri.startswith(("s3://", "s3a://"))


def normalize(uri: str) -> str:
    """``s3a://`` -> ``s3://``; local paths made absolute; trailing slashes dropped."""
    if is_s3(uri):
        return "s3://" + uri.split("://", 1)[1].rstrip("/")
    return os.path.abspath(os.path.expanduser(uri)).rstrip("/") or "/"


def bucket_uri(uri: str) -> str | None:
    """``s3://bucket`` of an S3 URI; None for a local path."""
    if not is_s3(uri):
        return None
    return "s3://" + normalize(uri).split("://", 1)[1].split("/", 1)[0]


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI."""
    if is_s3(uri):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def basename(uri: str) -> str:
    """The last part of a local path or URI (a trailing slash ignored)."""
    return posixpath.basename(uri.rstrip("/"))


def parent(uri: str) -> str:
    """The folder holding ``uri`` (local path or ``s3://`` URI); a bucket is its own parent."""
    uri = normalize(uri)
    if is_s3(uri):
        bucket_key = uri.split("://", 1)[1]
        return "s3://" + (posixpath.dirname(bucket_key) or bucket_key)
    return os.path.dirname(uri)


def resolve(base: str, path: str) -> str:
    """``path`` as an absolute local path or ``s3://`` URI; a relative one is taken from the folder ``base``."""
    if is_s3(path) or os.path.isabs(path) or path.startswith("~"):
        return normalize(path)
    if is_s3(base):
        return "s3://" + posixpath.normpath(posixpath.join(base.split("://", 1)[1], path))
    return os.path.normpath(os.path.join(base, path))


#: S3 settings of the environment the executors need to reach storage the way the driver does (no secrets).
STORAGE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_ALLOW_HTTP", "AWS_EC2_METADATA_DISABLED")
#: Credential variables of the standard AWS chain (passed to delta-rs; forwarded only to local executors).
LOCAL_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
DEFAULT_REGION = "us-east-1"


def _endpoint_url() -> str | None:
    """The S3 endpoint URL: ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``; None on AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str | None:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else None."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _endpoint() -> tuple[str | None, str]:
    """(host[:port] or None, scheme) of the S3 endpoint, for pyarrow."""
    endpoint = _endpoint_url()
    if not endpoint:
        return None, "https"
    parsed = urlparse(endpoint)
    return parsed.netloc or parsed.path, parsed.scheme or "https"


@lru_cache(maxsize=4)
def _s3_filesystem(endpoint: str | None, scheme: str, region: str | None, key_id: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {"scheme": scheme, "region": region or DEFAULT_REGION}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if key_id:
        kwargs["access_key"] = key_id
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path to use with it."""
    if is_s3(uri):
        endpoint, scheme = _endpoint()
        fs = _s3_filesystem(endpoint, scheme, _region(), os.environ.get("AWS_ACCESS_KEY_ID"))
        return fs, uri.split("://", 1)[1]
    return pafs.LocalFileSystem(), normalize(uri)


def open_input(uri: str) -> BinaryIO:
    """A seekable binary file for reading (random access on S3 via ranged GETs)."""
    if not is_s3(uri):
        return open(uri, "rb")
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def open_output(uri: str) -> BinaryIO:
    """A binary stream for writing a whole new object/file."""
    fs, path = filesystem(uri)
    if not is_s3(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return fs.open_output_stream(path, compression=None)


def whole_file(uri: str) -> bytes | mmap.mmap:
    """All of a file's bytes: a local file is mapped read-only (no copy: readers see the page cache), S3 is read.

    The mapping is released when its last user (a ``memoryview``, a ``numpy`` view) is gone. A local file
    cut by another process while mapped makes the next access to the cut pages fail (``SIGBUS``).
    """
    if not is_s3(uri):
        with open(uri, "rb") as handle:
            if os.fstat(handle.fileno()).st_size:
                return mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    with open_input(uri) as handle:
        return handle.read()


def read_bytes(uri: str, start: int = 0, length: int | None = None) -> bytes:
    """Bytes ``[start, start+length)`` of a file (to the end when ``length`` is None)."""
    with open_input(uri) as handle:
        handle.seek(start)
        return handle.read() if length is None else handle.read(length)


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(handle: BinaryIO) -> bool:
    """True when a seekable binary ``handle`` reads gzip data from its position (which is kept)."""
    position = handle.tell()
    head = handle.read(len(GZIP_MAGIC))
    handle.seek(position)
    return head == GZIP_MAGIC


@contextlib.contextmanager
def open_decompressed(uri: str) -> Iterator[tuple[BinaryIO, bool]]:
    """``uri`` opened once as a binary stream, gunzipped when its content is gzip; and whether it was."""
    with open_input(uri) as raw:
        if not is_gzip(raw):
            yield raw, False
            return
        with gzip.GzipFile(fileobj=raw) as unzipped:
            yield cast(BinaryIO, unzipped), True  # a binary file object; typeshed does not call it BinaryIO


@contextlib.contextmanager
def open_text(uri: str) -> Iterator[io.TextIOBase]:
    """``uri`` as UTF-8 text (BOM dropped, line ends kept), gunzipped when its content is gzip."""
    with open_decompressed(uri) as (binary, _), io.TextIOWrapper(binary, encoding="utf-8-sig", newline="") as text:
        yield text


def read_decompressed(uri: str) -> bytes:
    """The whole content of ``uri``, gunzipped when it is gzip."""
    with open_decompressed(uri) as (binary, _):
        return binary.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` as the whole content of a new file / object."""
    with open_output(uri) as handle:
        handle.write(data)


def size(uri: str) -> int:
    """Size of a file in bytes."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).size


def exists(uri: str) -> bool:
    """True when a file or folder exists at ``uri``."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    """True when ``uri`` is a folder (an S3 prefix with objects under it)."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(uri: str) -> list[str]:
    """Names (not paths) of the entries directly under ``uri``, sorted; empty if it does not exist."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(info.path) for info in infos)


def delete(uri: str) -> None:
    """Delete one file; missing files are ignored."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line reports."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def folder_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be (or become) a folder to write into; None when it can.

    Local: the path, or the nearest part of it that exists, must be a writable folder (not a file).
    ``s3://``: the store must answer (a missing prefix is fine: objects create it).
    """
    if is_s3(uri):
        try:
            exists(uri)
        except OSError as error:
            return f"storage does not answer ({describe_error(error)})"
        return None
    path = normalize(uri)
    existing = path
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return "is a file, not a folder" if existing == path else f"is below {existing}, which is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable" if existing == path else f"is below {existing}, which is not writable"
    return None


def delta_storage_options() -> dict[str, str]:
    """Storage options for delta-rs, taken from the environment (never hard-coded).

    On AWS nothing is needed (instance role / profile). With ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` (an S3-compatible store; ``_endpoint_url``, as for the pyarrow filesystem)
    the endpoint and, for ``http://``, ``AWS_ALLOW_HTTP`` are passed. Commits use S3 conditional
    writes (``If-None-Match: *``), so no lock table is needed and unsafe rename is never enabled.
    """
    options = {name: os.environ[name] for name in LOCAL_CREDENTIALS if os.environ.get(name)}
    options["AWS_REGION"] = _region() or DEFAULT_REGION
    endpoint = _endpoint_url()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.lower().startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def table_uri(uri: str) -> str:
    """A table location as delta-rs wants it: absolute local path or ``s3://``."""
    return normalize(uri)
