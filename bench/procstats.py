"""Process measurements for the benchmarks.

Peak and current RSS from /proc, RSS sampling of a whole process tree, wall/CPU windows of this
process, and a child-process runner that hands back JSON.

Linux only (``/proc/PID/status``, ``/proc/PID/clear_refs``); the tree sampler needs ``psutil``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

Pid = Union[int, str]


def proc_status(pid: Pid = "self") -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: Pid = "self") -> bool:
    """Reset the kernel's peak-RSS mark of a process (``echo 5 > /proc/PID/clear_refs``)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def dir_bytes(path: Union[str, Path]) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_child(script: Union[str, Path], *args: str) -> dict:
    """Run ``python script args`` in a fresh interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args[:2])} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class ProcessWindow:
    """Wall and CPU seconds and the peak RSS of this process from :meth:`start` on."""

    base_rss: int
    t0: float = 0.0
    c0: float = 0.0

    @classmethod
    def start(cls) -> ProcessWindow:
        """Note the current RSS, reset the peak mark, then start the clocks."""
        window = cls(proc_status()["VmRSS"])
        reset_peak()
        window.t0, window.c0 = time.perf_counter(), time.process_time()
        return window

    def elapsed(self) -> float:
        """Wall seconds since :meth:`start`."""
        return time.perf_counter() - self.t0

    def close(self) -> dict[str, Any]:
        """``wall_s``, ``cpu_s``, ``peak_rss`` (VmHWM), ``base_rss`` and ``peak_rss_over_base``."""
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        peak = proc_status()["VmHWM"]
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss": peak, "base_rss": self.base_rss,
                "peak_rss_over_base": peak - self.base_rss}


class TreeSampler(threading.Thread):
    """Samples RSS of this process and all its descendants (JVM, PySpark daemon and workers)."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.interval = psutil, interval
        self.me = psutil.Process()
        self._stop_event = threading.Event()
        self.lock = threading.Lock()
        self.window_total = 0  # max of the sum of RSS over the tree since the last reset
        self.hwm: dict[int, int] = {}  # pid -> last VmHWM seen since the last reset
        self.kind: dict[int, str] = {}
        self.cpu_seen: dict[int, float] = {}  # pid -> last CPU seconds seen (kept after the process ends)

    def classify(self, proc: Any) -> str:
        """``driver``, ``jvm``, ``pyspark daemon``, ``python worker`` or ``other``."""
        try:
            if proc.pid == self.me.pid:
                return "driver"
            if "java" in proc.name():
                return "jvm"
            parent = proc.parent()
            if "java" in (parent.name() if parent else ""):
                return "pyspark daemon"
            if parent is not None and self.kind.get(parent.pid) == "pyspark daemon":
                return "python worker"
            return "other"
        except self.psutil.Error:
            return "other"

    def tree(self) -> list:
        """This process and its descendants (psutil processes)."""
        try:
            return [self.me, *self.me.children(recursive=True)]
        except self.psutil.Error:
            return [self.me]

    def sample(self) -> None:
        """One sample: every process's VmHWM, and the sum of RSS over the tree."""
        total = 0
        for proc in self.tree():
            try:
                status = proc_status(proc.pid)
            except OSError:
                continue
            total += status.get("VmRSS", 0)
            try:
                times = proc.cpu_times()
                self.cpu_seen[proc.pid] = times.user + times.system
            except self.psutil.Error:
                pass
            with self.lock:
                if self.kind.get(proc.pid, "other") == "other":  # spark-submit execs into java: re-check
                    self.kind[proc.pid] = self.classify(proc)
                self.hwm[proc.pid] = max(self.hwm.get(proc.pid, 0), status.get("VmHWM", 0))
        with self.lock:
            self.window_total = max(self.window_total, total)

    def run(self) -> None:
        """Sample every ``interval`` seconds until :meth:`stop`."""
        while not self._stop_event.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop_event.set()

    def reset(self) -> bool:
        """Start a new window: clear the kernel's peak marks of every process of the tree."""
        ok = all([reset_peak(proc.pid) for proc in self.tree()])
        with self.lock:
            self.window_total, self.hwm, self.cpu_seen = 0, {}, {}
        return ok

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU seconds of every process of the tree, by pid."""
        out = {}
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
            except self.psutil.Error:
                pass
        return out

    def cpu_seen_by_kind(self, before: dict[int, float]) -> dict[str, float]:
        """CPU seconds since ``before`` (a :meth:`cpu_seconds` snapshot) of every process sampled, ended ones too."""
        self.sample()
        with self.lock:
            seen = dict(self.cpu_seen)
        return self.cpu_by_kind(before, seen)

    def cpu_by_kind(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds spent between two :meth:`cpu_seconds` snapshots, summed by process kind."""
        cpu: dict[str, float] = {}
        for pid, seconds in after.items():
            kind = self.kind.get(pid, "other")
            cpu[kind] = cpu.get(kind, 0.0) + seconds - before.get(pid, 0.0)
        return cpu

    def window(self) -> dict:
        """Peaks since the last :meth:`reset`: ``max_tree_rss``, ``peak_by_kind``, ``processes_by_kind``."""
        self.sample()
        with self.lock:
            peaks: dict[str, list[int]] = {}
            for pid, hwm in self.hwm.items():
                peaks.setdefault(self.kind.get(pid, "other"), []).append(hwm)
            return {"max_tree_rss": self.window_total,
                    "peak_by_kind": {kind: max(v) for kind, v in peaks.items()},
                    "processes_by_kind": {kind: len(v) for kind, v in peaks.items()}}


def run_tree(command: list[str], interval: float = 0.2, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run ``command`` to its end, polling its whole process tree: wall, CPU and peak RSS of the tree.

    ``cpu_s`` sums each process's last seen CPU seconds (processes a parent never reaps, such as
    Spark's Python workers, count too; at most ``interval`` seconds per process go unseen);
    ``peak_tree_rss`` is the largest sum of RSS over the tree at one poll; ``cpu_by_kind`` splits the
    CPU into ``jvm`` and ``python`` processes. A non-zero exit raises ``RuntimeError``.
    """
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root, cpu, kinds, peak = psutil.Process(proc.pid), {}, {}, 0
    streams: dict[str, str] = {}
    readers = [threading.Thread(target=lambda name=name, pipe=pipe: streams.__setitem__(name, pipe.read()))
               for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for child in procs:
            try:
                times, rss = child.cpu_times(), child.memory_info().rss
                cpu[child.pid] = times.user + times.system
                kinds[child.pid] = "jvm" if "java" in child.name() else "python"
                total += rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(interval)
    for reader in readers:
        reader.join()
    errors = streams.get("stderr", "")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed (rc {proc.returncode}):\n{errors[-3000:]}")
    by_kind: dict[str, float] = {}
    for pid, seconds in cpu.items():
        by_kind[kinds[pid]] = by_kind.get(kinds[pid], 0.0) + seconds
    return {"wall_s": time.perf_counter() - started, "cpu_s": sum(cpu.values()), "peak_tree_rss": peak,
            "cpu_by_kind": by_kind, "stdout": streams.get("stdout", "")}
