"""Slide discovery: a manifest (CSV / YAML) or a scanned root folder -> ``SlideRef`` list.

Discovery is cheap: it lists folders and checks names, reading at most the STimage meta CSV and the
manifest. Everything goes through :mod:`stlake.lake.storage`, so ``s3://`` roots work like local folders.

Scanning (depth <= 4 below the root) asks each registered layout (:data:`stlake.ingestion.readers.LAYOUTS`,
in registry order) whether a folder is one of its slides (or, for a release, holds them); the first
that says yes wins and the folder is not descended into. Manifest entries name their layout; the
layout completes the entry's paths from its ``path`` (root) and explicit role columns.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Optional

import yaml

from stlake.ingestion.readers import LAYOUTS, get_layout, layout_names, roles, technologies
from stlake.ingestion.readers.common import read_csv
from stlake.ingestion.records import SlideRef
from stlake.lake import storage

log = logging.getLogger(__name__)

MAX_DEPTH = 4
MANIFEST_SUFFIXES = (".csv", ".yaml", ".yml")
#: Manifest columns that are not file roles; every other column lands in ``SlideRef.meta``.
ENTRY_COLUMNS = ("slide_id", "layout", "path", "technology", "species", "tissue")
#: Entries with these suffixes are files; the scan does not ask whether they are folders.
FILE_SUFFIXES = (".csv", ".tsv", ".gz", ".h5", ".json", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".btf",
                 ".parquet", ".txt", ".mtx", ".html", ".cloupe", ".bam", ".bai", ".zip", ".pdf", ".md", ".yaml",
                 ".yml", ".npz", ".h5ad", ".svs", ".ndpi", ".loupe", ".log", ".xlsx")


def discover(source: str, layouts: Optional[Iterable[str]] = None) -> list[SlideRef]:
    """All slides of a manifest (``.csv``/``.yaml``/``.yml``) or a scanned root, sorted by slide id.

    ``layouts`` keeps only those layouts. A slide id found twice raises ``ValueError`` naming both paths.
    """
    wanted = _check_layouts(layouts)
    source = storage.normalize(source)
    if source.lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(source):
        refs = read_manifest(source)
    elif storage.is_dir(source):
        refs = scan(source)
    else:
        raise FileNotFoundError(f"discovery source not found (no folder, no manifest): {source}")
    refs = [ref for ref in refs if wanted is None or ref.layout in wanted]
    _check_unique(refs)
    return sorted(refs, key=lambda ref: ref.slide_id)


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


def _check_unique(refs: list[SlideRef]) -> None:
    seen: dict[str, SlideRef] = {}
    for ref in refs:
        if ref.slide_id in seen:
            raise ValueError(f"slide id {ref.slide_id!r} found twice: {where(seen[ref.slide_id])} and {where(ref)}")
        seen[ref.slide_id] = ref


# ---------------------------------------------------------------- scanning

def scan(root: str) -> list[SlideRef]:
    """Slides found under ``root`` (at most ``MAX_DEPTH`` folders deep), in scan order."""
    refs: list[SlideRef] = []
    _scan_folder(storage.normalize(root), 0, refs)
    return refs


def _maybe_folder(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(FILE_SUFFIXES)


def _scan_folder(folder: str, depth: int, refs: list[SlideRef]) -> None:
    names = storage.list_dir(folder)
    found = identify(folder, names)
    if found is not None:
        refs.extend(found)
        return
    if depth >= MAX_DEPTH:
        return
    for name in names:
        child = storage.join(folder, name)
        if _maybe_folder(name) and storage.is_dir(child):
            _scan_folder(child, depth + 1, refs)


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """The slides ``folder`` is (or holds, for a release); None when it is none of the layouts."""
    for layout in LAYOUTS.values():
        found = layout.identify(folder, names)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- manifests

def read_manifest(uri: str) -> list[SlideRef]:
    """The slides listed in a CSV or YAML manifest; relative paths are relative to its folder."""
    base = storage.parent(uri)
    rows = _yaml_rows(uri) if uri.lower().endswith((".yaml", ".yml")) else _csv_rows(uri)
    cache: dict[str, Any] = {}  # shared by the entries, e.g. a release's meta table read once
    return [_row_ref(row, base, f"{uri} entry {number}", cache) for number, row in enumerate(rows, 1)]


def _clean(row: dict[Any, Any]) -> dict[str, str]:
    """Keys lower-cased and stripped, empty / null values left out, values as strings."""
    return {str(k).strip().lower(): str(v).strip() for k, v in row.items()
            if k is not None and v is not None and str(v).strip() != ""}


def _csv_rows(uri: str) -> list[dict[str, str]]:
    frame = read_csv(uri, dtype=str, keep_default_na=False, skipinitialspace=True)
    return [_clean(row) for row in frame.to_dict("records")]


def _yaml_rows(uri: str) -> list[dict[str, str]]:
    data = yaml.safe_load(storage.read_bytes(uri).decode("utf-8"))
    slides = data.get("slides") if isinstance(data, dict) else data
    if not isinstance(slides, list) or not all(isinstance(s, dict) for s in slides):
        raise ValueError(f"{uri}: expected 'slides:' with a list of mappings")
    return [_clean(row) for row in slides]


def _row_ref(row: dict[str, str], base: str, context: str, cache: dict[str, Any]) -> SlideRef:
    """One manifest entry -> ``SlideRef``: its layout completes the paths (explicit role paths win)."""
    slide_id, name = row.get("slide_id"), row.get("layout", "").lower()
    if not slide_id or name not in LAYOUTS:
        raise ValueError(f"{context}: needs slide_id and a layout in {', '.join(layout_names())} (got {row})")
    layout = get_layout(name)
    known_roles = roles()
    paths = {role: storage.resolve(base, row[role]) for role in known_roles if row.get(role)}
    if row.get("path"):
        paths["root"] = storage.resolve(base, row["path"])
    if not paths:
        raise ValueError(f"{context}: needs a path or explicit role paths")
    technology = row.get("technology") or layout.default_technology() or ""
    extra = {k: v for k, v in row.items() if k not in ENTRY_COLUMNS and k not in known_roles}
    ref = layout.complete(SlideRef(slide_id, name, technology, paths, row.get("species"), row.get("tissue"), extra),
                          cache)
    if ref.technology not in layout.technologies:
        expected = ", ".join(layout.technologies if layout.technologies else technologies())
        raise ValueError(f"{context}: technology must be one of {expected} (got {ref.technology or None!r})")
    return ref
