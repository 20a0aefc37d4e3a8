"""Slide discovery: a manifest (CSV / YAML) or a scanned root folder -> ``SlideRef`` list.

Discovery is cheap: it lists folders and checks names, reading at most the STimage meta CSV and the
manifest. Everything goes through :mod:`stlake.lake.storage`, so ``s3://`` roots work like local folders.

Scanning (depth <= 4 below the root) recognises, in this order:

* an STimage-1K4M release: ``meta/meta_all_gene.csv`` or ``{ST,Visium,VisiumHD}/coord/``
  (one slide per ``{tech}/coord/{slide}_coord.csv``);
* a VisiumHD slide: a ``binned_outputs/`` folder;
* a Space Ranger Visium slide: ``spatial/scalefactors_json.json`` plus a feature-barcode matrix;
* a legacy ST slide: a ``*spot_detector*.tsv``, a counts ``*.tsv``/``*.tsv.gz`` and a ``*.jpg``.

Space Ranger slide ids are the folder name, or the parent's name when the folder is ``outs``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Optional

import yaml

from stlake.ingestion.readers import st, stimage, visium, visiumhd
from stlake.ingestion.readers.common import read_csv
from stlake.ingestion.records import LAYOUTS, TECHNOLOGIES, SlideRef
from stlake.lake import storage

log = logging.getLogger(__name__)

MAX_DEPTH = 4
MANIFEST_SUFFIXES = (".csv", ".yaml", ".yml")
ROLES = ("image", "coords", "counts", "annotation", "spot_detector", "matrix_h5", "matrix_dir", "positions",
         "scalefactors", "hires_image", "bin_dir", "meta")
LAYOUT_TECHNOLOGY = {"visium": "Visium", "visiumhd": "VisiumHD", "st": "ST"}
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
        raise ValueError(f"unknown layout(s) {', '.join(sorted(unknown))} (expected {', '.join(LAYOUTS)})")
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
    if is_release(folder, names):
        return scan_release(folder)
    if "binned_outputs" in names:
        return [visiumhd_ref(folder)]
    if "spatial" in names and visium.SCALEFACTORS in storage.list_dir(storage.join(folder, "spatial")) \
            and visium.find_matrix(folder, names):
        return [visium_ref(folder)]
    st_paths = st.find_files(folder, names)
    if len(st_paths) == 3:
        return [st_ref(folder, st_paths)]
    return None


def is_release(folder: str, names: list[str]) -> bool:
    """An STimage-1K4M release root."""
    if "meta" in names and storage.exists(storage.join(folder, *stimage.META_PATH)):
        return True
    return any(tech in names and "coord" in storage.list_dir(storage.join(folder, tech))
               for tech in stimage.TECH_FOLDERS)


def spaceranger_slide_id(folder: str) -> str:
    """Folder name, or the parent's name for an ``outs`` folder."""
    name = storage.basename(folder)
    return storage.basename(storage.parent(folder)) if name == "outs" else name


def visium_ref(folder: str) -> SlideRef:
    return SlideRef(spaceranger_slide_id(folder), "visium", "Visium", visium.resolve_paths({"root": folder}))


def visiumhd_ref(folder: str) -> SlideRef:
    """Bin-specific paths are left to the reader (the bin size is a reader option)."""
    return SlideRef(spaceranger_slide_id(folder), "visiumhd", "VisiumHD", visiumhd.resolve_paths({"root": folder}))


def st_ref(folder: str, paths: dict[str, str]) -> SlideRef:
    return SlideRef(storage.basename(folder), "st", "ST", {"root": folder, **paths})


def _meta_table(root: str) -> Optional[dict[str, dict[str, str]]]:
    """The release's meta rows by slide; None without a meta CSV, empty when it is unreadable."""
    path = storage.join(root, *stimage.META_PATH)
    if not storage.exists(path):
        return None
    try:
        return stimage.read_meta_table(path)
    except Exception as error:  # the reader reports it per slide; discovery goes on
        log.warning("cannot read %s: %s", path, error)
        return {}


def scan_release(root: str) -> list[SlideRef]:
    """One ``stimage`` ref per ``{tech}/coord/{slide}_coord.csv`` of the release at ``root``."""
    meta = _meta_table(root)
    annotations = set(storage.list_dir(storage.join(root, "annotation")))
    refs = []
    for tech in stimage.TECH_FOLDERS:
        coord_names = storage.list_dir(storage.join(root, tech, "coord"))
        image_names = storage.list_dir(storage.join(root, tech, "image")) if coord_names else []
        for name in coord_names:
            if not name.endswith(stimage.COORD_SUFFIX) or name.startswith("."):
                continue
            slide = name[: -len(stimage.COORD_SUFFIX)]
            paths = stimage.slide_paths(root, tech, slide)
            if storage.basename(paths["annotation"]) not in annotations:
                paths.pop("annotation")
            if meta is None:
                paths.pop("meta")
            if f"{slide}.png" not in image_names:
                other = [n for n in image_names if n.rsplit(".", 1)[0] == slide]
                if other:
                    paths["image"] = storage.join(root, tech, "image", other[0])
            refs.append(stimage.apply_meta(SlideRef(slide, "stimage", tech, paths), (meta or {}).get(slide)))
    return refs


# ---------------------------------------------------------------- manifests

def read_manifest(uri: str) -> list[SlideRef]:
    """The slides listed in a CSV or YAML manifest; relative paths are relative to its folder."""
    base = storage.parent(uri)
    rows = _yaml_rows(uri) if uri.lower().endswith((".yaml", ".yml")) else _csv_rows(uri)
    metas: dict[str, Optional[dict[str, dict[str, str]]]] = {}
    return [_row_ref(row, base, f"{uri} entry {number}", metas) for number, row in enumerate(rows, 1)]


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


def _row_ref(row: dict[str, str], base: str, context: str,
             metas: dict[str, Optional[dict[str, dict[str, str]]]]) -> SlideRef:
    """One manifest entry -> ``SlideRef`` (explicit role paths win over derived ones)."""
    slide_id, layout = row.get("slide_id"), row.get("layout", "").lower()
    if not slide_id or layout not in LAYOUTS:
        raise ValueError(f"{context}: needs slide_id and a layout in {', '.join(LAYOUTS)} (got {row})")
    root = storage.resolve(base, row["path"]) if row.get("path") else None
    roles = {role: storage.resolve(base, row[role]) for role in ROLES if row.get(role)}
    technology = row.get("technology") or LAYOUT_TECHNOLOGY.get(layout)
    if layout == "stimage" and not technology and root:
        technology = stimage.find_technology(root, slide_id)
    if technology not in TECHNOLOGIES:
        raise ValueError(f"{context}: technology must be one of {', '.join(TECHNOLOGIES)} (got {technology!r})")
    if not root and not roles:
        raise ValueError(f"{context}: needs a path or explicit role paths")
    paths = _layout_paths(layout, root, technology, slide_id, roles)
    extra = {k: v for k, v in row.items()
             if k not in ("slide_id", "layout", "path", "technology", "species", "tissue", *ROLES)}
    ref = SlideRef(slide_id, layout, technology, paths, row.get("species"), row.get("tissue"), extra)
    if layout == "stimage" and root:
        if root not in metas:
            metas[root] = _meta_table(root)
        ref = stimage.apply_meta(ref, (metas[root] or {}).get(slide_id))
    return ref


def _layout_paths(layout: str, root: Optional[str], technology: str, slide_id: str,
                  roles: dict[str, str]) -> dict[str, str]:
    """Role paths of a manifest entry: derived from ``root`` by the layout's reader, then the explicit ones."""
    if not root:
        return roles
    if layout == "stimage":  # every role derived from root, so the optional ones are found next to explicit ones
        return {**stimage.resolve_paths({"root": root}, technology, slide_id), **roles}
    resolvers = {"visium": visium.resolve_paths, "st": st.resolve_paths, "visiumhd": visiumhd.resolve_paths}
    return resolvers[layout]({"root": root, **roles})
