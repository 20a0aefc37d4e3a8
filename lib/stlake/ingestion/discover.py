"""Slide discovery: a manifest (CSV / YAML) or a scanned root folder -> ``SlideRef`` list.

Discovery is cheap: it lists folders and checks names, reading at most the STimage meta CSV and the
manifest. Everything goes through :mod:`stlake.lake.storage`, so ``s3://`` roots work like local folders.

Scanning (depth <= 4 below the root) asks each registered layout (:data:`stlake.ingestion.readers.LAYOUTS`,
in registry order) whether a folder is one of its slides (or, for a release, holds them); the first
that says yes wins and the folder is not descended into. Manifest entries name their layout; the
layout completes the entry's paths from its ``path`` (root) and explicit role columns. The ``annotation``
column may name several files separated by ``;`` (one annotation set each, or more for a Loupe export).

Every entry (a manifest row, or a slide a scanned folder is or holds) is judged on its own: a bad one
becomes an :class:`~stlake.ingestion.records.EntryRejection` (a ``rejects`` row of stage ``discover``)
and the others proceed. Reasons:

- ``invalid_slide_id``: the id breaks the slide id rule below;
- ``manifest_invalid``: a row without ``slide_id``, without a ``layout`` or with an unknown one, with an
  unknown technology, without any path, or with more values than the header has columns;
- ``source_missing``: the entry's ``path`` does not exist;
- ``source_unreachable``: its storage does not answer (e.g. an ``s3://`` bucket that cannot be reached),
  or a scanned folder cannot be listed;
- ``duplicate_slide_id``: two or more entries give the same id; every one of them is refused (none is
  guessed to be the right one) and each row names the locations of all of them;
- ``discovery_failed``: anything else that went wrong while completing the entry.

**Slide id rule**: 1 to 128 characters out of letters, digits, ``.``, ``_`` and ``-``, the first a
letter or digit (``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$``, :data:`stlake.lake.tables.SAFE_NAME`). No
slide id ever shapes a path in the lake (data file names hold a hash); the rule keeps ids usable as
file names, URL parts and shell words downstream, and rejects ``../x``, ``/abs``, ``a/b`` and backslashes.

A scan lists every real folder once: a symbolic link to a folder it has already scanned (such as
``ln -s . loop``) is not followed again. Rows of a CSV manifest whose values are all empty are skipped.

Only a source that cannot be opened at all (it does not exist, its storage does not answer, or the
manifest is not readable CSV / YAML) stops discovery, with :class:`~stlake.ingestion.records.RunError`.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from stlake.ingestion.readers import LAYOUTS, get_layout, layout_names, roles, technologies
from stlake.ingestion.readers.labels import ANNOTATION_ROLE, PATH_SEPARATOR, annotation_roles
from stlake.ingestion.records import EntryRejection, Rejection, RunError, SlideError, SlideRef, SourceNotFound
from stlake.lake import storage
from stlake.lake.tables import is_safe_name

log = logging.getLogger(__name__)

MAX_DEPTH = 4
MANIFEST_SUFFIXES = (".csv", ".yaml", ".yml")
#: Manifest columns that are not file roles; every other column lands in ``SlideRef.meta``.
ENTRY_COLUMNS = ("slide_id", "layout", "path", "technology", "species", "tissue")
#: Entries with these suffixes are files; the scan does not ask whether they are folders.
FILE_SUFFIXES = (".csv", ".tsv", ".gz", ".h5", ".json", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".btf",
                 ".parquet", ".txt", ".mtx", ".html", ".cloupe", ".bam", ".bai", ".zip", ".pdf", ".md", ".yaml",
                 ".yml", ".npz", ".h5ad", ".svs", ".ndpi", ".loupe", ".log", ".xlsx")
#: The key a CSV row's values beyond the header's columns are collected under.
EXTRA_VALUES = "__extra_values__"
#: Refused ids longer than this are shortened in ``rejects`` rows.
SHOWN_ID_LENGTH = 200
SLIDE_ID_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass
class Discovery:
    """What discovery found under ``source``: the slides to ingest (sorted by id) and the entries it refused."""

    source: str
    refs: list[SlideRef] = field(default_factory=list)
    rejected: list[EntryRejection] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the source holds no entry at all (neither a slide nor a refused entry)."""
        return not self.refs and not self.rejected


def find_slides(source: str, layouts: Optional[Iterable[str]] = None) -> Discovery:
    """Every entry of a manifest (``.csv``/``.yaml``/``.yml``) or a scanned root: slides and refused entries.

    ``layouts`` keeps only those layouts (a manifest entry without a known layout is refused all the
    same: it could be anything). A source that cannot be opened at all raises ``RunError``
    (``SourceNotFound`` when it does not exist); each refused entry is logged as a warning.
    """
    wanted = _check_layouts(layouts)
    source = storage.normalize(source)
    try:
        found = _find(source, wanted)
    except RunError:
        raise
    except OSError as error:
        raise RunError(f"discovery source {source} cannot be opened ({storage.describe_error(error)})") from error
    for refused in found.rejected:
        log.warning("entry %s refused: %s (%s)", refused.slide_id, refused.rejection.reason, refused.rejection.detail)
    return Discovery(source, sorted(found.refs, key=lambda ref: ref.slide_id), found.rejected)


def discover(source: str, layouts: Optional[Iterable[str]] = None) -> list[SlideRef]:
    """The slides of :func:`find_slides` that can be ingested, sorted by slide id (refused entries are logged)."""
    return find_slides(source, layouts).refs


def no_slides_message(source: str) -> str:
    """What to tell a user whose source holds no slide at all."""
    if source.lower().endswith(MANIFEST_SUFFIXES):
        return (f"no slides found in {source}: the manifest lists no entries (each needs slide_id, layout, path; "
                f"layouts: {', '.join(layout_names())})")
    return f"no slides found under {source} (layouts recognised: {', '.join(layout_names())})"


def _find(source: str, wanted: Optional[set[str]]) -> _Found:
    """The entries of ``source``; ``SourceNotFound`` when it is neither a folder nor a manifest."""
    if source.lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(source):
        return read_manifest(source, wanted)
    if storage.is_dir(source):
        return scan(source, wanted)
    what = "is a file, not a folder or a manifest (.csv, .yaml, .yml)" if storage.exists(source) else "does not exist"
    raise SourceNotFound(f"discovery source {source} {what}")


def _check_layouts(layouts: Optional[Iterable[str]]) -> Optional[set[str]]:
    if layouts is None:
        return None
    wanted = {layout.lower() for layout in ([layouts] if isinstance(layouts, str) else layouts)}
    unknown = wanted - set(LAYOUTS)
    if unknown:
        raise ValueError(f"unknown layout(s) {', '.join(sorted(unknown))} (expected {', '.join(layout_names())})")
    return wanted


def where(ref: SlideRef) -> str:
    """The path that best identifies a slide in messages."""
    paths = ref.paths
    return paths.get("coords") or paths.get("root") or paths.get("counts") or paths.get("positions") or "?"


# ---------------------------------------------------------------- entries

def shown_id(slide_id: str) -> str:
    """A refused id as its ``rejects`` row names it (very long ones shortened)."""
    return slide_id if len(slide_id) <= SHOWN_ID_LENGTH else slide_id[:SHOWN_ID_LENGTH] + "..."


def check_slide_id(slide_id: Optional[str]) -> str:
    """``slide_id`` when it follows the slide id rule; ``SlideError`` otherwise."""
    if not slide_id:
        raise SlideError("manifest_invalid", "no slide_id")
    if not is_safe_name(slide_id):
        raise SlideError("invalid_slide_id", f"slide id {slide_id[:80]!r} breaks the rule: {SLIDE_ID_RULE}")
    return slide_id


def entry_rejection(error: Exception, context: str) -> Rejection:
    """A ``discover`` rejection of the entry at ``context`` that raised ``error``."""
    if isinstance(error, SlideError):
        return Rejection("discover", error.reason, f"{context}: {error.detail}")
    if isinstance(error, OSError):
        return Rejection("discover", "source_unreachable",
                         f"{context}: storage did not answer ({storage.describe_error(error)})")
    return Rejection("discover", "discovery_failed", f"{context}: {storage.describe_error(error)}")


@dataclass
class _Found:
    """Entries as discovery meets them; ``claims`` maps each valid id to the places of its entries."""

    refs: list[SlideRef] = field(default_factory=list)
    rejected: list[EntryRejection] = field(default_factory=list)
    claims: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def claim(self, slide_id: str, place: str) -> None:
        """An entry at ``place`` gives ``slide_id`` (a valid id), whether or not it is accepted."""
        self.claims[slide_id].append(place)

    def refuse(self, slide_id: str, source_uri: Optional[str], rejection: Rejection) -> None:
        """Refuse one entry."""
        self.rejected.append(EntryRejection(slide_id, source_uri, rejection))

    def refuse_duplicates(self) -> _Found:
        """Move every accepted slide whose id more than one entry gives to the refused ones."""
        kept = []
        for ref in self.refs:
            places = self.claims[ref.slide_id]
            if len(places) == 1:
                kept.append(ref)
                continue
            self.refuse(ref.slide_id, where(ref), Rejection(
                "discover", "duplicate_slide_id", f"slide id {ref.slide_id!r} is given by {len(places)} entries "
                f"({'; '.join(places)}): every one of them is refused; give each slide its own id"))
        self.refs = kept
        return self


# ---------------------------------------------------------------- scanning

@dataclass
class _Scan:
    """One scan: its root, the layouts wanted, the real folders already listed and what it found."""

    root: str
    wanted: Optional[set[str]]
    visited: set[str] = field(default_factory=set)
    found: _Found = field(default_factory=_Found)

    def first_visit(self, folder: str) -> bool:
        """True the first time a real folder is met (symbolic links resolved), False after."""
        real = folder if storage.is_s3(folder) else os.path.realpath(folder)
        if real in self.visited:
            return False
        self.visited.add(real)
        return True

    def placeholder(self, folder: str) -> str:
        """The id of a refused scanned folder's ``rejects`` row: ``scan:`` and its path below the root."""
        return "scan:" + (folder[len(self.root):].strip("/") or ".")

    def add(self, ref: SlideRef) -> None:
        """A slide a scanned folder is or holds: accepted, or refused for its id."""
        if self.wanted is not None and ref.layout not in self.wanted:
            return
        try:
            check_slide_id(ref.slide_id)
        except SlideError as error:
            self.found.refuse(shown_id(ref.slide_id), where(ref), entry_rejection(error, f"slide at {where(ref)}"))
            return
        self.found.claim(ref.slide_id, where(ref))
        self.found.refs.append(ref)


def scan(root: str, wanted: Optional[set[str]] = None) -> _Found:
    """Slides found under ``root`` (at most ``MAX_DEPTH`` folders deep, each real folder once), in scan order."""
    walk = _Scan(storage.normalize(root), wanted)
    _scan_folder(walk.root, 0, walk)
    return walk.found.refuse_duplicates()


def _maybe_folder(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(FILE_SUFFIXES)


def _scan_folder(folder: str, depth: int, walk: _Scan) -> None:
    if not walk.first_visit(folder):
        log.info("not scanning %s again (a link to a folder already scanned)", folder)
        return
    try:
        names = storage.list_dir(folder)
        slides = identify(folder, names)
    except Exception as error:  # one unreadable folder is one refused entry, the scan goes on
        walk.found.refuse(walk.placeholder(folder), folder, entry_rejection(error, f"scanned folder {folder}"))
        return
    if slides is not None:
        for ref in slides:
            walk.add(ref)
        return
    if depth >= MAX_DEPTH:
        return
    for name in names:
        if _maybe_folder(name):
            _scan_child(storage.join(folder, name), depth + 1, walk)


def _scan_child(child: str, depth: int, walk: _Scan) -> None:
    """Scan ``child`` when it is a folder (a path that cannot even be looked at is a refused entry)."""
    try:
        is_folder = storage.is_dir(child)
    except OSError as error:  # e.g. a symbolic link that loops on itself
        walk.found.refuse(walk.placeholder(child), child, entry_rejection(error, f"scanned path {child}"))
        return
    if is_folder:
        _scan_folder(child, depth, walk)


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """The slides ``folder`` is (or holds, for a release); None when it is none of the layouts."""
    for layout in LAYOUTS.values():
        found = layout.identify(folder, names)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- manifests

def read_manifest(uri: str, wanted: Optional[set[str]] = None) -> _Found:
    """The entries of a CSV or YAML manifest, each judged on its own; relative paths are relative to its folder.

    ``RunError`` (``SourceNotFound``) when the manifest itself cannot be read.
    """
    base = storage.parent(uri)
    text = _manifest_text(uri)
    rows = _yaml_rows(uri, text) if uri.lower().endswith((".yaml", ".yml")) else _csv_rows(uri, text)
    found = _Found()
    cache: dict[str, Any] = {}  # shared by the entries, e.g. a release's meta table read once
    for number, row in enumerate(rows, 1):
        _manifest_entry(row, number, uri, base, cache, wanted, found)
    return found.refuse_duplicates()


def _manifest_entry(row: Any, number: int, manifest: str, base: str, cache: dict[str, Any],
                    wanted: Optional[set[str]], found: _Found) -> None:
    """Accept or refuse one manifest entry (``row``, the ``number``-th)."""
    context = f"{manifest} entry {number}"
    cleaned = _clean(row) if isinstance(row, dict) else None
    if cleaned == {}:
        return  # a blank row (e.g. a spreadsheet's trailing ",,,")
    values = cleaned or {}
    raw_id, layout = values.get("slide_id"), values.get("layout", "").lower()
    if wanted is not None and layout in LAYOUTS and layout not in wanted:
        return
    source = _row_source(values, base) or manifest
    if raw_id and is_safe_name(raw_id):
        found.claim(raw_id, f"{context} ({source})")
    try:
        found.refs.append(_row_ref(cleaned, base, cache))
    except Exception as error:  # one bad entry is one refused entry; the others go on
        found.refuse(shown_id(raw_id) if raw_id else f"manifest:entry-{number}", source,
                     entry_rejection(error, context))


def _manifest_text(uri: str) -> str:
    """The manifest's text (gunzipped when gzip); ``RunError`` when it cannot be read as UTF-8."""
    try:
        data = storage.read_decompressed(uri)
    except FileNotFoundError as error:
        raise SourceNotFound(f"manifest {uri} does not exist") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RunError(f"manifest {uri} is not UTF-8 text ({error.reason} at byte {error.start})") from error


def _clean(row: dict[Any, Any]) -> dict[str, str]:
    """Keys lower-cased and stripped, empty / null values left out, values as strings."""
    return {str(k).strip().lower(): str(v).strip() for k, v in row.items()
            if k is not None and v is not None and str(v).strip() != ""}


def _csv_rows(uri: str, text: str) -> list[dict[str, Any]]:
    """The rows of a CSV manifest as mappings (values beyond the header's columns under ``EXTRA_VALUES``)."""
    try:
        return list(csv.DictReader(io.StringIO(text, newline=""), restkey=EXTRA_VALUES))
    except csv.Error as error:
        raise RunError(f"manifest {uri} is not readable CSV ({error})") from error


def _yaml_rows(uri: str, text: str) -> list[Any]:
    """The entries of a YAML manifest (``slides:`` holding a list, or a bare list); items may be anything."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RunError(f"manifest {uri} is not readable YAML ({' '.join(str(error).split())})") from error
    slides = data.get("slides") if isinstance(data, dict) else data
    if slides is None:
        return []
    if not isinstance(slides, list):
        raise RunError(f"manifest {uri}: expected 'slides:' with a list of entries")
    return slides


def _row_source(row: dict[str, str], base: str) -> Optional[str]:
    """Where an entry's files are, for its ``rejects`` row: its ``path``, else its first role path."""
    given = row.get("path") or next((row[role] for role in roles() if row.get(role)), None)
    return storage.resolve(base, given) if given else None


def _row_layout(row: dict[str, str]) -> str:
    """The entry's layout name; ``SlideError('manifest_invalid')`` when it is missing or unknown."""
    name = row.get("layout", "").lower()
    if not name:
        raise SlideError("manifest_invalid", f"no layout given (expected one of {', '.join(layout_names())})")
    if name not in LAYOUTS:
        raise SlideError("manifest_invalid", f"unknown layout {name[:80]!r} (expected one of "
                                             f"{', '.join(layout_names())})")
    return name


def _row_paths(row: dict[str, str], base: str, cache: dict[str, Any]) -> dict[str, str]:
    """The entry's ``root`` and explicit role paths; ``SlideError`` when it has none or they cannot be reached."""
    paths = {role: storage.resolve(base, row[role]) for role in roles() if row.get(role) and role != ANNOTATION_ROLE}
    paths.update(annotation_roles([storage.resolve(base, p.strip())
                                   for p in row.get(ANNOTATION_ROLE, "").split(PATH_SEPARATOR) if p.strip()]))
    if row.get("path"):
        paths["root"] = storage.resolve(base, row["path"])
    if not paths:
        raise SlideError("manifest_invalid", "no path and no explicit role paths")
    for bucket in sorted({b for b in map(storage.bucket_uri, paths.values()) if b}):
        if f"bucket:{bucket}" not in cache:  # the cache is shared by the manifest's entries
            cache[f"bucket:{bucket}"] = storage.exists(bucket)
        if not cache[f"bucket:{bucket}"]:
            raise SlideError("source_unreachable", f"bucket {bucket} does not exist or cannot be reached")
    if paths.get("root") and not storage.exists(paths["root"]):
        raise SlideError("source_missing", f"path {paths['root']} does not exist")
    return paths


def _row_ref(row: Optional[dict[str, str]], base: str, cache: dict[str, Any]) -> SlideRef:
    """One manifest entry -> ``SlideRef``: its layout completes the paths (explicit role paths win).

    Bad entries raise ``SlideError`` (``manifest_invalid``, ``invalid_slide_id``, ``source_missing``).
    """
    if row is None:
        raise SlideError("manifest_invalid", "the entry is not a mapping of column names to values")
    if EXTRA_VALUES in row:
        raise SlideError("manifest_invalid", "the row has more values than the header has columns")
    slide_id = check_slide_id(row.get("slide_id"))
    name = _row_layout(row)
    layout = get_layout(name)
    paths = _row_paths(row, base, cache)
    known_roles = roles()
    technology = row.get("technology") or layout.default_technology() or ""
    extra = {k: v for k, v in row.items() if k not in ENTRY_COLUMNS and k not in known_roles}
    ref = layout.complete(SlideRef(slide_id, name, technology, paths, row.get("species"), row.get("tissue"), extra),
                          cache)
    if ref.technology not in layout.technologies:
        expected = ", ".join(layout.technologies if layout.technologies else technologies())
        raise SlideError("manifest_invalid", f"unknown technology {ref.technology[:80] or None!r} for layout "
                                             f"{name} (expected one of {expected})")
    return ref
