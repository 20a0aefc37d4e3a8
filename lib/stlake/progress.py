"""What a long command is doing, as it happens: event lines and a live counter line.

The library reports through a :class:`Progress` (the ingest driver, ``pairs``, ``hvg``); it never
prints. :class:`LogProgress` (the default) turns events into log records; the ``stlake`` command uses
:class:`ConsoleProgress`, which redraws the counter in place on a terminal and writes plain,
time-stamped lines at most every few seconds elsewhere (CI logs, files), all on stderr.

Spark task counts come from :func:`spark_tasks`: the status tracker of a classic SparkContext, or the
progress handler of a Spark Connect session; results that come back later update the counters exactly.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Optional, TextIO

#: ``auto``: live on a terminal, plain otherwise; ``live``; ``plain``; ``off`` (events still go to the log).
ProgressMode = Literal["auto", "live", "plain", "off"]
PROGRESS_MODES: tuple[ProgressMode, ...] = ("auto", "live", "plain", "off")

log = logging.getLogger(__name__)


def count(n: int, noun: str) -> str:
    """``3 slides``, ``1 slide`` (nouns that take an ``s``)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class Meter:
    """A counter of one phase: ``done/total`` units, named counters, and a rate of one of them."""

    def __init__(self, progress: Progress, label: str, total: int, unit: str, rate_of: Optional[str] = None) -> None:
        self.progress, self.label, self.total, self.unit, self.rate_of = progress, label, total, unit, rate_of
        self.done = 0
        self.counters: dict[str, int] = {}
        self.started = time.monotonic()
        self.closed = False

    def tasks(self, done: int, total: int) -> None:
        """Spark's task counts while the phase's jobs run (they replace ``done`` and ``total``)."""
        self.total = max(total, 1)
        self.update(done=done)

    def update(self, done: Optional[int] = None, advance: int = 0, **counters: int) -> None:
        """Set ``done`` (or add ``advance``) and add to named counters; redraws the line."""
        self.done = (self.done if done is None else done) + advance
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        self.progress.status(self.line())

    def line(self) -> str:
        """``units 12/18 · tiles 4,100 (850/s) · rejects 1 · 12 s``."""
        elapsed = time.monotonic() - self.started
        parts = [f"{self.label} {self.done:,}/{self.total:,} {self.unit}"]
        for name, value in self.counters.items():
            rate = f" ({value / elapsed:,.0f}/s)" if name == self.rate_of and elapsed > 0.5 and value else ""
            parts.append(f"{name} {value:,}{rate}")
        parts.append(f"{elapsed:.0f} s")
        return " · ".join(parts)

    def close(self, summary: Optional[str] = None) -> None:
        """End the phase: its last line (``summary`` or the counter line) is kept."""
        if not self.closed:
            self.closed = True
            self.progress.status("")
            self.progress.note(summary or self.line())

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.closed = True
            self.progress.status("")


class Progress:
    """Where progress goes; this base class drops everything (``off``)."""

    def note(self, text: str) -> None:
        """An event worth a line of its own (a slide landed or rejected, a phase done)."""

    def warn(self, text: str) -> None:
        """An event that needs attention (a rejected slide)."""
        self.note(text)

    def status(self, text: str) -> None:
        """The live counter line ("" clears it)."""

    def meter(self, label: str, total: int, unit: str, rate_of: Optional[str] = None) -> Meter:
        """A counter for one phase (a context manager; closing keeps its last line)."""
        return Meter(self, label, total, unit, rate_of)


class LogProgress(Progress):
    """Events as log records of ``logger`` (the library's default); no live line."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def note(self, text: str) -> None:
        """An INFO record."""
        self.logger.info("%s", text)

    def warn(self, text: str) -> None:
        """A WARNING record."""
        self.logger.warning("%s", text)


class ConsoleProgress(Progress):
    """Progress on a text stream (stderr): a live line on a terminal, plain lines elsewhere.

    ``plain_every``: seconds between two printed counter lines when the stream is not a terminal.
    """

    def __init__(self, mode: ProgressMode = "auto", stream: Optional[TextIO] = None, prefix: str = "stlake: ",
                 plain_every: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode: ProgressMode = ("live" if terminal else "plain") if mode == "auto" else mode
        self.prefix, self.plain_every = prefix, plain_every
        self._shown = ""  # the live line on screen
        self._last_plain = 0.0
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self._shown:
            self._write("\r\033[2K")
            self._shown = ""

    def note(self, text: str) -> None:
        """A line of its own (the live line is redrawn under it)."""
        if self.mode == "off":
            return
        with self._lock:
            shown = self._shown
            self._clear()
            self._write(f"{self.prefix}{text}\n")
            if shown:
                self._write(shown)
                self._shown = shown

    def status(self, text: str) -> None:
        """Redraw the live line, or print it as a plain line at most every ``plain_every`` seconds."""
        if self.mode == "off":
            return
        with self._lock:
            if self.mode == "live":
                self._clear()
                if text:
                    self._shown = f"{self.prefix}{text}"[: self._width()]
                    self._write(self._shown)
            elif text and time.monotonic() - self._last_plain >= self.plain_every:
                self._last_plain = time.monotonic()
                self._write(f"{self.prefix}{text}\n")

    def _width(self) -> int:
        import shutil
        return max(20, shutil.get_terminal_size((100, 20)).columns - 1)


def is_connect(spark: Any) -> bool:
    """True for a Spark Connect session (no SparkContext, no status tracker)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextmanager
def spark_tasks(spark: Any, callback: Callable[[int, int], None], every: float = 0.5) -> Iterator[None]:
    """Call ``callback(done, total)`` with the task counts of the Spark jobs that run inside the block.

    Classic Spark: a thread polls the status tracker for the jobs started after entering. Spark
    Connect: the session's progress handler. Anything else, or a tracker that fails: no calls (the
    caller still counts the results it gets back).
    """
    if spark is None:
        yield
        return
    if is_connect(spark):
        with _connect_tasks(spark, callback):
            yield
        return
    try:
        tracker = spark.sparkContext.statusTracker()
        before = set(tracker.getActiveJobsIds())
    except Exception:  # no SparkContext here
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_poll, args=(tracker, before, callback, stop, every), daemon=True,
                              name="stlake-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * every + 1)


def _poll(tracker: Any, before: set[int], callback: Callable[[int, int], None], stop: threading.Event,
          every: float) -> None:
    """Sum the tasks of every stage of the jobs seen since the start (the status tracker's view)."""
    jobs: set[int] = set()
    stages: dict[int, tuple[int, int]] = {}
    while not stop.wait(every):
        try:
            jobs.update(j for j in tracker.getActiveJobsIds() if j not in before)
            for job_id in jobs:
                job = tracker.getJobInfo(job_id)
                for stage_id in (job.stageIds if job else ()):
                    stage = tracker.getStageInfo(stage_id)
                    if stage is not None:
                        stages[stage_id] = (stage.numCompletedTasks, stage.numTasks)
        except Exception as error:  # the context stopped, or a py4j hiccup: progress is best effort
            log.debug("status tracker: %s", error)
            return
        if stages:
            callback(sum(d for d, _ in stages.values()), sum(t for _, t in stages.values()))


@contextmanager
def _connect_tasks(spark: Any, callback: Callable[[int, int], None]) -> Iterator[None]:
    """Spark Connect's progress handler, for the operations run inside the block."""
    def handler(stages: Any, inflight_tasks: int, operation_id: Optional[str], done: bool) -> None:
        stages = list(stages or ())
        if stages:
            callback(sum(s.num_completed_tasks for s in stages), sum(s.num_tasks for s in stages))

    try:
        spark.registerProgressHandler(handler)
    except Exception:
        yield
        return
    try:
        yield
    finally:
        spark.removeProgressHandler(handler)
