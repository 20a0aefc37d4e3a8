"""The training stream: Petastorm over a Delta snapshot -> shuffled, decoded torch batches.

Pipeline (one per iteration of the loader)::

    Delta log --(add actions, stats pruning)--> file list
      -> petastorm.make_batch_reader(file list, predicate, shard, seed)   [reader threads]
           per row group: row-level predicate, sparse counts -> dense panel (TransformSpec)
      -> seeded shuffle buffer of rows (still JPEG bytes: cheap to hold)  [producer thread]
      -> cv2 decode, resize, flips/rot90, colour jitter, uint8 or float32
         (ImageNet-normalised) planes written into B x 3 x S x S          [decode threads]
      -> bounded queue of ready torch batches -> your loop

Why not ``petastorm.pytorch.DataLoader``: it collates row by row in Python and its shuffling queue
holds decoded tensors; here whole row groups are batched with numpy and tiles are decoded after the
shuffle, so the buffer holds compressed tiles only and no Python runs per sample except the decode
call. Why not Petastorm's Spark converter: it densifies vector columns (the full gene space).
Petastorm's ``filters=`` argument is not used: on pyarrow 14 it reaches the legacy ``ParquetDataset``,
which applies filters only to hive partition keys (our tables have none; with a file list it fails
outright) — row filters go through Petastorm's ``predicate`` instead, and file pruning through the
Delta statistics.

Pins: petastorm 0.13.1 (the newest) needs pyarrow <= 14.0.2 — pyarrow 15 removed
``ParquetDataset(validate_schema=...)`` and 16 removed ``pyarrow.filesystem``, both of which
Petastorm 0.13.1 uses on every read (see :mod:`stlake.stream.fs`).

Determinism: with ``shuffle`` the row-group order, the shard assignment, the row mixing and the
augmentations of epoch ``e`` derive from ``(seed, e)``; the exact batch sequence is reproducible
with ``workers_count == 1`` (more reader threads deliver row groups in completion order).

Warnings: Petastorm 0.13.1 on pyarrow 14 raises Future/Deprecation warnings on every read, from its
reader threads. :func:`make_loader` silences those two categories for the ``petastorm`` and ``pyarrow``
modules when a loader opens (:func:`ignore_petastorm_deprecations`); ``warnings.catch_warnings`` cannot
scope them, as it is not thread-safe and the reader threads outlive any ``with`` block of the caller.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import pandas as pd
import torch

from stlake.stream import transforms
from stlake.stream.fs import petastorm_inputs
from stlake.stream.panels import Panel, resolve_panel
from stlake.stream.snapshot import Selection, label_counts, median_total_counts, select_files, streamed_labels
from stlake.stream.spec import NormalizeMode, StreamSpec

if TYPE_CHECKING:
    from petastorm.reader import Reader
    from petastorm.transform import TransformSpec

    from stlake.stream.predicate import RowFilter

logger = logging.getLogger(__name__)
READ_COLUMNS = ["slide_id", "spot_id", "label", "tile", "gene_ids", "counts", "total_counts"]
OUTPUT_COLUMNS = ["slide_id", "spot_id", "label", "has_label", "tile", "expression"]


# ---------------------------------------------------------------- what to read

@dataclass
class ReadPlan:
    """Everything resolved once per loader: the snapshot's files, the panel, the normalisation."""

    selection: Selection
    panel: Panel
    target_sum: float
    vocabulary: list[str]  # class index -> label
    label_counts: dict[str, int]  # label -> selected rows carrying it
    #: (cur_shard, shard_count) applied to rows, when the files hold fewer row groups than shards
    row_shard: Optional[tuple[int, int]] = None

    @property
    def label_weights(self) -> dict[str, float]:
        """Sampling weight per label: the rarest label's count over its own (1.0 for the rarest)."""
        counts = {k: v for k, v in self.label_counts.items() if v > 0}
        rarest = min(counts.values(), default=0)
        return {label: rarest / count for label, count in counts.items()}

    @property
    def columns(self) -> list[str]:
        """Columns read from the files: the stream's own and those of the row filters."""
        return READ_COLUMNS + [c for c in self.selection.row_columns if c not in READ_COLUMNS]


def check_pairs_fresh(spec: StreamSpec, version: int) -> None:
    """Warn (``strict``: raise ``StalePairs``) when the streamed ``pairs`` is older than its source rows."""
    if spec.table != "pairs":
        return
    from stlake.derived.pairs import StalePairs, check_fresh
    problem = check_fresh(spec.lake, version, spec.slide_ids)
    if problem and spec.strict:
        raise StalePairs(problem)
    if problem:
        logger.warning("%s (or stream with --strict to refuse it)", problem)


def build_plan(spec: StreamSpec) -> ReadPlan:
    """Select the snapshot's files, resolve the panel and the target sum (scanpy median when None)."""
    selection = select_files(spec)
    check_pairs_fresh(spec, selection.version)
    panel = resolve_panel(spec.lake, spec)
    target_sum = spec.target_sum
    if spec.normalize == "normalize_total_log1p" and target_sum is None:
        target_sum = median_total_counts(selection)
    counts = label_counts(selection)
    named = [label for label in spec.labels or () if label is not None]
    vocabulary = list(dict.fromkeys(named)) if named else sorted(counts)
    return ReadPlan(selection, panel, float(target_sum or 1.0), vocabulary, counts,
                    row_shard(selection, spec))


def row_shard(selection: Selection, spec: StreamSpec) -> Optional[tuple[int, int]]:
    """``(cur_shard, shard_count)`` when the selected files hold fewer row groups than shards, else None.

    Petastorm shards whole row groups, so a small selection would leave some shards empty. Then every
    shard reads every row group and keeps its own rows (a hash of slide and spot id): disjoint shards
    that cover every row, decided alike by every rank (they read the same snapshot).
    """
    if spec.cur_shard is None or spec.shard_count is None:
        return None
    import pyarrow.parquet as pq

    from stlake.lake import storage
    groups = 0
    for uri in selection.files:
        with storage.open_input(uri) as handle:
            groups += pq.read_metadata(handle).num_row_groups
        if groups >= spec.shard_count:
            return None
    return spec.cur_shard, spec.shard_count


# ---------------------------------------------------------------- Petastorm pieces

def ignore_petastorm_deprecations() -> None:
    """Silence Future/Deprecation warnings raised from ``petastorm`` and ``pyarrow`` modules (see above).

    Idempotent: ``warnings.filterwarnings`` replaces an identical filter instead of adding another.
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(petastorm|pyarrow)(\..*)?$")


def row_predicate(selection: Selection, shard: Optional[tuple[int, int]] = None) -> Optional[RowFilter]:
    """A Petastorm predicate for the filters the file statistics could not decide and a row shard (None if none)."""
    if not selection.row_columns and shard is None:
        return None
    from stlake.stream.predicate import RowFilter
    return RowFilter(selection, shard)


class PanelTransform:
    """Petastorm ``TransformSpec`` function (runs in the reader threads): densify and tidy one row group."""

    def __init__(self, panel: Panel, normalize: NormalizeMode, target_sum: float,
                 label_set: Optional[str] = None) -> None:
        self.panel, self.normalize, self.target_sum = panel, normalize, target_sum
        self.label_set = label_set

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The row group's columns for the stream, counts densified onto the panel."""
        gene_ids, offsets = transforms.flatten_lists(frame["gene_ids"].to_numpy())
        counts, _ = transforms.flatten_lists(frame["counts"].to_numpy())
        dense = transforms.densify(gene_ids, counts, offsets, frame["total_counts"].to_numpy(np.int64),
                                   self.panel.lookup_ids, self.panel.lookup_cols, self.panel.n_genes,
                                   self.normalize, self.target_sum)
        labels = streamed_labels(frame, self.label_set).set_axis(frame.index)
        return pd.DataFrame({
            "slide_id": frame["slide_id"].to_numpy(), "spot_id": frame["spot_id"].to_numpy(),
            "label": labels.fillna("").to_numpy(), "has_label": labels.notna().to_numpy(),
            "tile": frame["tile"].to_numpy(), "expression": list(dense),
        })

    def spec(self) -> TransformSpec:
        """This transform as a Petastorm ``TransformSpec`` (with the columns it adds and keeps)."""
        from petastorm.transform import TransformSpec
        edit = [("label", np.str_, (), False), ("has_label", np.bool_, (), False),
                ("expression", np.float32, (self.panel.n_genes,), False)]
        return TransformSpec(self, edit_fields=edit, selected_fields=OUTPUT_COLUMNS)


def epoch_seed(seed: int, epoch: int) -> int:
    """A non-zero 31-bit seed for epoch ``epoch`` (Petastorm treats seed 0 as 'random')."""
    digest = hashlib.sha256(f"stlake:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2 ** 31 - 2) + 1


def open_reader(plan: ReadPlan, spec: StreamSpec, epoch: int) -> Reader:
    """A Petastorm batch reader over the plan's files for one epoch (a context manager)."""
    from petastorm import make_batch_reader
    urls, filesystem = petastorm_inputs(plan.selection.files)
    seed = epoch_seed(spec.seed, epoch) if spec.shuffle else None
    transform = PanelTransform(plan.panel, spec.normalize, plan.target_sum, spec.label_set)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="schema_fields behavior has changed")
        try:
            return make_batch_reader(
                urls, filesystem=filesystem, schema_fields=[re.escape(c) for c in plan.columns],
                reader_pool_type="thread", workers_count=spec.workers_count, results_queue_size=4,
                seed=seed, shuffle_rows=False, shuffle_row_groups=spec.shuffle,
                predicate=row_predicate(plan.selection, plan.row_shard), num_epochs=1,
                cur_shard=None if plan.row_shard else spec.cur_shard,
                shard_count=None if plan.row_shard else spec.shard_count,
                transform_spec=transform.spec(), convert_early_to_numpy=True)
        except Exception as error:
            if type(error).__name__ == "NoDataAvailableError":
                raise ValueError(f"{spec.shard_count} shards but fewer row groups in the selected files of "
                                 f"{spec.table}: use fewer shards or smaller row groups") from error
            raise


def row_groups(reader: Reader) -> Iterator[Any]:
    """Iterate a Petastorm reader (one epoch) without losing row groups to a race in petastorm 0.13.1.

    ``ThreadPool.get_results`` checks "all ventilated items processed" and then "ventilator completed"
    without a lock: when the ventilator thread ventilates the remaining items between the two checks,
    the reader stops early (at start-up, a small table then streams nothing). The pool's counters
    tell whether every item of the epoch was really processed; if not, reading simply goes on.
    """
    pool = reader._workers_pool
    counts = getattr(pool, "_ventilated_items_processed_by_worker", None)
    expected = len(getattr(reader.ventilator, "_items_to_ventilate", ()))
    while True:
        try:
            yield next(reader)
        except StopIteration:
            if counts is None or sum(pool._ventilated_items_processed_by_worker) >= expected:
                return
            time.sleep(0.002)


# ---------------------------------------------------------------- shuffle buffer

class RowBuffer:
    """Rows of several row groups as numpy columns; batches are drawn at random (seeded) or in order."""

    def __init__(self) -> None:
        self.columns: dict[str, np.ndarray] = {}
        self.size = 0

    def add(self, group: dict[str, np.ndarray]) -> None:
        """Append a row group's columns, growing the buffer (doubling) when it is full."""
        n = len(group["slide_id"])
        if n == 0:
            return
        if not self.columns:
            self.columns = {k: np.empty((max(n, 1024),) + v.shape[1:], v.dtype) for k, v in group.items()}
        capacity = len(self.columns["slide_id"])
        if self.size + n > capacity:
            grown = max(2 * capacity, self.size + n)
            for key, column in self.columns.items():
                bigger = np.empty((grown,) + column.shape[1:], column.dtype)
                bigger[:self.size] = column[:self.size]
                self.columns[key] = bigger
        for key, values in group.items():
            self.columns[key][self.size:self.size + n] = values
        self.size += n

    def take(self, k: int, rng: Optional[np.random.Generator]) -> dict[str, np.ndarray]:
        """``k`` rows: random ones (then the holes are filled from the tail), or the first ``k``."""
        k = min(k, self.size)
        if rng is None:
            out = {key: col[:k].copy() for key, col in self.columns.items()}
            for col in self.columns.values():
                col[:self.size - k] = col[k:self.size]
        else:
            chosen = rng.choice(self.size, k, replace=False)
            out = {key: col[chosen] for key, col in self.columns.items()}
            tail = self.size - k
            holes = chosen[chosen < tail]
            keep_tail = np.ones(k, bool)
            keep_tail[chosen[chosen >= tail] - tail] = False
            movers = np.arange(tail, self.size)[keep_tail]
            for col in self.columns.values():
                col[holes] = col[movers]
        self.size -= k
        for key in ("tile", "slide_id", "spot_id", "label"):  # drop references to emitted objects
            if key in self.columns and self.columns[key].dtype == object:
                self.columns[key][self.size:self.size + k] = None
        return out


def group_columns(group: Any) -> dict[str, np.ndarray]:
    """A Petastorm batch (namedtuple of numpy arrays) -> buffer columns."""
    values = group._asdict()
    return {"slide_id": np.asarray(values["slide_id"], object), "spot_id": np.asarray(values["spot_id"], object),
            "label": np.where(values["has_label"], np.asarray(values["label"], object), np.array(None, object)),
            "tile": np.asarray(values["tile"], object),
            "expression": np.asarray(values["expression"], np.float32).reshape(len(values["slide_id"]), -1)}


def balanced(columns: dict[str, np.ndarray], weights: dict[str, float], rng: np.random.Generator
             ) -> dict[str, np.ndarray]:
    """The rows of ``columns`` kept with their label's weight (unlabelled rows are left out)."""
    chance = np.array([weights.get(label, 0.0) if label is not None else 0.0 for label in columns["label"]])
    keep = rng.random(len(chance)) < chance
    return {key: values[keep] for key, values in columns.items()}


# ---------------------------------------------------------------- batches

class _Failure:
    """An error of the producer thread, handed to the consumer to raise."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Done:
    """The end of the stream."""


_DONE = _Done()
Item = Union[dict[str, Any], _Failure, _Done]  # what the producer queues


def default_decode_threads() -> int:
    """Cores this process may use, shared among the ranks of this node (torchrun's LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(ranks, 1))


class Pipeline:
    """One pass over ``num_epochs`` epochs: a producer thread filling a bounded queue of batches."""

    def __init__(self, spec: StreamSpec, plan: ReadPlan) -> None:
        self.spec, self.plan = spec, plan
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=spec.prefetch)
        self.stop = threading.Event()
        self.threads = spec.decode_threads or default_decode_threads()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stlake-decode") if self.threads > 1 else None
        self.thread = threading.Thread(target=self._run, name="stlake-stream", daemon=True)
        self.classes = {label: i for i, label in enumerate(plan.vocabulary)}

    # producer side
    def _put(self, item: Item) -> bool:
        """Queue ``item`` unless the pipeline is stopped first; whether it was queued."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        """The producer thread: every epoch, then _DONE (or the failure)."""
        try:
            epoch = 0
            while not self.stop.is_set() and (self.spec.num_epochs is None or epoch < self.spec.num_epochs):
                if not self.plan.selection.files:
                    break
                self._epoch(epoch)
                epoch += 1
            self._put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(error))

    def _epoch(self, epoch: int) -> None:
        """Read one epoch's row groups through the shuffle buffer and queue its batches."""
        spec = self.spec
        rng = np.random.default_rng([spec.seed, epoch]) if spec.shuffle else None
        balance = np.random.default_rng([spec.seed, epoch, 13]) if spec.balance_labels else None
        threshold = max(spec.shuffle_buffer, spec.batch_size) if spec.shuffle else spec.batch_size
        buffer, index = RowBuffer(), 0
        reader = open_reader(self.plan, spec, epoch)
        try:
            for group in row_groups(reader):
                if self.stop.is_set():
                    return
                columns = group_columns(group)
                buffer.add(balanced(columns, self.plan.label_weights, balance) if balance is not None else columns)
                while buffer.size >= threshold:
                    if not self._emit(buffer.take(spec.batch_size, rng), epoch, index):
                        return
                    index += 1
        finally:
            reader.stop()
            reader.join()
        while buffer.size >= spec.batch_size or (buffer.size and not spec.drop_last):
            if not self._emit(buffer.take(spec.batch_size, rng), epoch, index):
                return
            index += 1

    def _emit(self, rows: dict[str, np.ndarray], epoch: int, index: int) -> bool:
        """Queue the batch of ``rows``; False once the pipeline is stopped."""
        return self._put(self.make_batch(rows, epoch, index))

    def make_batch(self, rows: dict[str, np.ndarray], epoch: int, index: int) -> dict[str, Any]:
        """Decode and assemble one batch dict."""
        spec, n = self.spec, len(rows["slide_id"])
        geometry, jitter = None, None
        if spec.augment:
            rng = np.random.default_rng([spec.seed, epoch, index, 7])
            geometry, jitter = transforms.Geometry.random(n, rng), transforms.Jitter.random(n, rng)
        image = transforms.images_tensor(rows["tile"], spec.image_size, spec.image_dtype, spec.image_normalize,
                                         geometry, jitter, self.pool, self.threads)
        expression = torch.from_numpy(np.ascontiguousarray(rows["expression"]))
        if spec.pin_memory and torch.cuda.is_available():
            image, expression = image.pin_memory(), expression.pin_memory()
        classes = self.classes
        label_index = torch.tensor([classes.get(label, -1) for label in rows["label"]], dtype=torch.long)
        return {"image": image, "expression": expression, "slide_id": rows["slide_id"].tolist(),
                "spot_id": rows["spot_id"].tolist(), "label": rows["label"].tolist(), "label_index": label_index}

    # consumer side
    def batches(self) -> Iterator[dict[str, Any]]:
        """Start the producer and yield its batches; closes the pipeline when done or abandoned."""
        self.thread.start()
        try:
            while True:
                item = self.queue.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer, drain the queue until it exits, shut the decode threads down."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get_nowait()
            except queue.Empty:
                self.thread.join(timeout=0.05)
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class StreamLoader:
    """An iterable of batch dicts; every ``iter()`` streams ``num_epochs`` epochs of one snapshot."""

    def __init__(self, spec: StreamSpec, plan: ReadPlan) -> None:
        self.spec, self.plan = spec, plan
        self._active: list[Pipeline] = []

    @property
    def panel(self) -> Panel:
        """The panel of the ``expression`` columns."""
        return self.plan.panel

    @property
    def version(self) -> int:
        """The Delta version streamed."""
        return self.plan.selection.version

    @property
    def files(self) -> list[str]:
        """The snapshot's data files read (absolute URIs, sorted)."""
        return list(self.plan.selection.files)

    @property
    def vocabulary(self) -> list[str]:
        """The label classes: ``batch['label_index']`` indexes this list (-1: no label)."""
        return list(self.plan.vocabulary)

    @property
    def label_counts(self) -> dict[str, int]:
        """Selected spots per label (before balancing)."""
        return dict(self.plan.label_counts)

    @property
    def label_weights(self) -> dict[str, float]:
        """The sampling weight per label that ``balance_labels`` applies."""
        return self.plan.label_weights

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pipeline = Pipeline(self.spec, self.plan)
        self._active = [p for p in self._active if p.thread.is_alive() or not p.thread.ident] + [pipeline]
        return pipeline.batches()

    def close(self) -> None:
        """Stop every pipeline started by this loader."""
        for pipeline in self._active:
            if pipeline.thread.ident:
                pipeline.close()
        self._active = []


@contextmanager
def make_loader(spec: StreamSpec) -> Iterator[StreamLoader]:
    """A :class:`StreamLoader` of ``spec``, closed when the ``with`` block ends.

    ``with make_loader(spec) as loader: for batch in loader: ...``. Each batch: ``image``
    (``B x 3 x S x S`` uint8 or float32, RGB), ``expression`` (float32 ``B x G``, panel order),
    ``slide_id`` / ``spot_id`` (list[str]), ``label`` (list[str | None]) and ``label_index`` (int64 ``B``,
    the label's position in ``loader.vocabulary``, -1 for none).
    The snapshot, panel and target sum are fixed when the loader opens.
    """
    ignore_petastorm_deprecations()
    loader = StreamLoader(spec, build_plan(spec))
    try:
        yield loader
    finally:
        loader.close()
