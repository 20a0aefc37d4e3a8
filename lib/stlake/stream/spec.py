"""What to stream: one :class:`StreamSpec` holds every reader option (also exposed as CLI flags)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Optional, Union, get_args

from stlake.constants import DEFAULT_TARGET_SUM

NormalizeMode = Literal["none", "log1p", "normalize_total_log1p"]
ImageDtype = Literal["uint8", "float32"]
NORMALIZE_MODES: tuple[NormalizeMode, ...] = get_args(NormalizeMode)
IMAGE_DTYPES: tuple[ImageDtype, ...] = get_args(ImageDtype)
DEFAULT_PANEL = "hvg256"
LIST_FIELDS = ("technologies", "species", "tissues", "labels", "slide_ids", "panel")

GeneRef = Union[int, str]


@dataclass
class StreamSpec:
    """Options of one stream over a lake table (``pairs`` by default).

    Filters (each ``None`` = no filter) prune whole files by the Delta log's min/max statistics and
    are applied per row (a Petastorm predicate) wherever the statistics cannot decide. ``species``
    names are normalised as the lake stores them (``Homo sapiens`` -> ``human``).

    Labels: a batch's ``label`` is the spot's normalised label, and ``label_index`` its class (the
    position in ``loader.vocabulary``, -1 for none). ``label_set`` streams the label of that annotation
    set instead of ``pairs.label`` (the set chosen at ingest) and keeps only the spots that set labels;
    ``labels`` then filters on it. ``balance_labels`` keeps each labelled spot with the probability
    ``loader.label_weights[label]`` (the rarest class's count / its class's count), so every class is
    streamed about equally often; unlabelled spots are left out.

    Expression: ``panel`` (gene ids and/or symbols / Ensembl ids, in column order) or ``panel_name``
    (a stored panel of the ``gene_panels`` table, e.g. ``hvg256`` from ``stlake hvg``); neither means
    ``hvg256``. ``normalize``: ``none`` (raw counts), ``log1p`` (ln(1 + x)) or
    ``normalize_total_log1p`` (scanpy: ``x / total_counts * target_sum`` over all the spot's genes,
    then ``log1p``). ``target_sum`` defaults to 1e4 (counts per 10k); ``None`` means scanpy's default,
    the median of the total counts of the streamed spots (those with total > 0).

    Images: RGB, ``B x 3 x S x S``; ``image_size`` resizes (``None`` keeps the stored size),
    ``image_dtype`` ``uint8`` (0..255) or ``float32`` (/255, and ImageNet mean/std with
    ``image_normalize``); ``augment`` adds random flips, 90° rotations and colour jitter.

    Order: ``shuffle`` (row groups in a seeded random order per epoch, rows mixed through a
    ``shuffle_buffer`` of rows), deterministic for a given ``seed`` while ``workers_count == 1``.
    Sharding: ``cur_shard`` / ``shard_count`` split the row groups of the snapshot into disjoint parts
    (one per training process). ``num_epochs=None`` streams forever. ``version`` pins the Delta
    version (every rank of a job should read the same one; ``None`` = the latest when the loader opens).
    A ``pairs`` stream warns when ``pairs`` is older than the rows of its slides in the tables it joins
    (rebuild with ``stlake pairs``); ``strict`` refuses to stream it.
    """

    lake: str
    table: str = "pairs"
    version: Optional[int] = None
    strict: bool = False  # refuse a stale ``pairs`` table instead of warning
    # filters
    technologies: Optional[Sequence[str]] = None
    species: Optional[Sequence[str]] = None
    tissues: Optional[Sequence[str]] = None
    labels: Optional[Sequence[Optional[str]]] = None  # None inside the list selects unlabelled spots
    slide_ids: Optional[Sequence[str]] = None
    min_tissue_fraction: Optional[float] = None
    # labels
    label_set: Optional[str] = None  # stream this annotation set's label (only spots it labels); None: pairs.label
    balance_labels: bool = False  # sample labelled spots with weights that even out the classes
    # expression
    panel: Optional[Sequence[GeneRef]] = None
    panel_name: Optional[str] = None
    normalize: NormalizeMode = "none"
    target_sum: Optional[float] = DEFAULT_TARGET_SUM
    # images
    image_size: Optional[int] = None
    image_dtype: ImageDtype = "uint8"
    image_normalize: bool = False
    augment: bool = False
    # order, sharding, epochs, batching
    shuffle: bool = True
    seed: int = 0
    cur_shard: Optional[int] = None
    shard_count: Optional[int] = None
    num_epochs: Optional[int] = 1
    batch_size: int = 64
    drop_last: bool = False
    shuffle_buffer: int = 8192
    # parallelism
    workers_count: int = 1  # Petastorm reader threads (row-group reads + densification)
    decode_threads: Optional[int] = None  # JPEG decode threads (None: this rank's share of the cores)
    prefetch: int = 2  # ready batches queued ahead of the consumer
    pin_memory: bool = False

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of every option, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, object]:
        """Each field's default value (fields without one are left out)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def _as_list(value: Any) -> Optional[Sequence[Any]]:
    """A list field as given (list or tuple), one scalar wrapped in a list, any other iterable listed."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    if isinstance(value, (str, int)):
        return [value]
    return list(value)


def normalised_species(species: Optional[Sequence[Optional[str]]]) -> Optional[list[str]]:
    """Species names as the lake stores them (``Homo sapiens`` -> ``human``, see ``genes.normalise_species``)."""
    if species is None:
        return None
    from stlake.lake.genes import normalise_species  # imported here: numpy/pandas stay out of `stlake --help`
    return [normalise_species(s) for s in species]


def validate(spec: StreamSpec) -> None:
    """Normalise list fields and reject inconsistent options with a clear message."""
    for name in LIST_FIELDS:
        setattr(spec, name, _as_list(getattr(spec, name)))
    spec.species = normalised_species(spec.species)
    _check_modes(spec)
    _check_panel(spec)
    _check_sharding(spec)
    _check_sizes(spec)


def _check_modes(spec: StreamSpec) -> None:
    """``normalize`` and ``image_dtype`` are known modes; ``image_normalize`` only for float images."""
    if spec.normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, not {spec.normalize!r}")
    if spec.image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}, not {spec.image_dtype!r}")
    if spec.image_normalize and spec.image_dtype != "float32":
        raise ValueError("image_normalize needs image_dtype='float32'")


def _check_panel(spec: StreamSpec) -> None:
    """At most one of ``panel`` / ``panel_name``, and an explicit panel is not empty."""
    if spec.panel is not None and spec.panel_name is not None:
        raise ValueError("give either panel or panel_name, not both")
    if spec.panel is not None and len(spec.panel) == 0:
        raise ValueError("panel is empty")


def _check_sharding(spec: StreamSpec) -> None:
    """``cur_shard`` and ``shard_count`` are given together, with ``0 <= cur_shard < shard_count``."""
    if spec.cur_shard is None or spec.shard_count is None:
        if (spec.cur_shard is None) != (spec.shard_count is None):
            raise ValueError("cur_shard and shard_count go together")
        return
    if not 0 <= spec.cur_shard < spec.shard_count:
        raise ValueError(f"cur_shard must be in [0, {spec.shard_count}), not {spec.cur_shard}")


def _check_sizes(spec: StreamSpec) -> None:
    """Batch size, thread and queue counts, epochs, image size and target sum are positive."""
    if spec.batch_size < 1 or spec.workers_count < 1 or spec.prefetch < 1:
        raise ValueError("batch_size, workers_count and prefetch must be >= 1")
    if spec.num_epochs is not None and spec.num_epochs < 1:
        raise ValueError("num_epochs must be >= 1 or None (forever)")
    if spec.image_size is not None and spec.image_size < 1:
        raise ValueError("image_size must be >= 1")
    if spec.target_sum is not None and spec.target_sum <= 0:
        raise ValueError("target_sum must be > 0 (or None for the median of total counts)")
