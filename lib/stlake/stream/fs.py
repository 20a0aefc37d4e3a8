"""Hand a list of snapshot files (local or ``s3://``) to Petastorm 0.13.1 on pyarrow 14.

Petastorm 0.13.1 opens its input with ``pq.ParquetDataset(..., validate_schema=False)``, which pyarrow
14 serves only through the *legacy* dataset implementation, and pyarrow picks that one only for a
legacy ``pyarrow.filesystem.FileSystem``: a ``pyarrow.fs`` filesystem raises "validate_schema is not
supported". For any scheme other than ``file``/``hdfs`` Petastorm also resolves paths through fsspec,
which needs ``s3fs`` for ``s3://`` (not in our pins). So every file is handed over as a ``file://``
URL and served by :class:`ArrowLegacyFileSystem`, a legacy-filesystem adapter over the pyarrow
filesystem of :func:`stlake.lake.storage.filesystem` (local, or S3 with the usual AWS credential chain):
``file:///bucket/key`` maps to ``bucket/key`` on S3. The files come from the Delta log, so they are
known to exist: ``isfile`` answers from that list without one request per file.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
from pyarrow import filesystem as legacyfs

from stlake.lake import storage


class ArrowLegacyFileSystem(legacyfs.FileSystem):
    """A ``pyarrow.filesystem.FileSystem`` (legacy API) over a ``pyarrow.fs.FileSystem``.

    Only what a list of files needs (open, isfile, isdir, exists): Petastorm lists folders (``ls``,
    ``walk``) only when given a directory, and stlake always gives it the snapshot's files.
    """

    def __init__(self, fs: pafs.FileSystem, strip_root: bool, known_files: Optional[set[str]] = None) -> None:
        self.fs = fs
        self.strip_root = strip_root  # "/bucket/key" -> "bucket/key" (S3)
        self.known_files = set(known_files or ())

    def _path(self, path: str) -> str:
        """The path on the wrapped filesystem."""
        return path.lstrip("/") if self.strip_root else path

    def open(self, path: str, mode: str = "rb") -> pa.NativeFile:
        """A file opened for reading (the only mode)."""
        if mode != "rb":
            raise ValueError("read-only filesystem")
        return self.fs.open_input_file(self._path(path))

    def isfile(self, path: str) -> bool:
        """True for a file of the snapshot, else asks the filesystem."""
        return path in self.known_files or self.fs.get_file_info(self._path(path)).type == pafs.FileType.File

    def isdir(self, path: str) -> bool:
        """False for a file of the snapshot, else asks the filesystem."""
        if path in self.known_files:
            return False
        return self.fs.get_file_info(self._path(path)).type == pafs.FileType.Directory

    def exists(self, path: str) -> bool:
        """True for a file of the snapshot, else asks the filesystem."""
        return path in self.known_files or self.fs.get_file_info(self._path(path)).type != pafs.FileType.NotFound

    @property
    def pathsep(self) -> str:
        """Paths are POSIX-style."""
        return "/"

    def _isfilestore(self) -> bool:
        """Petastorm asks: a file store, not a key-value one."""
        return True


def petastorm_inputs(files: list[str]) -> tuple[list[str], ArrowLegacyFileSystem]:
    """(``file://`` URLs, filesystem) for ``make_batch_reader`` from absolute local paths or ``s3://`` URIs."""
    if not files:
        raise ValueError("no files to read")
    remote = {storage.is_s3(f) for f in files}
    if len(remote) != 1:
        raise ValueError("files must be all local or all on S3")
    fs, _ = storage.filesystem(files[0])
    if remote.pop():
        paths = ["/" + storage.normalize(f).split("://", 1)[1] for f in files]
        return ["file://" + p for p in paths], ArrowLegacyFileSystem(fs, True, set(paths))
    paths = [storage.normalize(f) for f in files]
    return ["file://" + p for p in paths], ArrowLegacyFileSystem(fs, False, set(paths))
