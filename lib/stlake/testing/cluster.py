"""A real Spark standalone cluster on this machine: one master and N workers, each its own JVM.

    with SparkCluster("/tmp/cluster", workers=2, env=s3_server.env()) as cluster:
        subprocess.run(["stlake", "ingest", "--master", cluster.master_url, ...])
        cluster.executors(app_id)            # {worker id: [executor ids]} from the workers' JSON UIs

Started with pyspark's own ``bin/spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``
(the pip wheel has no ``sbin/start-*.sh``), every port chosen free and bound to 127.0.0.1. ``start()``
returns once the master's JSON UI lists every worker ALIVE. Each worker has its own folder under
``directory`` (``worker-<i>/work``: the executors' working dirs and logs, ``worker-<i>/local``: Spark's
scratch), so executors share no folder with the driver; their environment is this process's without
``PYTHONPATH``, ``PYSPARK_*``, ``SPARK_*`` and ``AWS_*``, plus ``env`` (e.g. the S3 keys, as a node's
instance role would give them). ``stop()`` SIGTERMs each process group (the worker's executors and their
Python workers are in it), SIGKILLs what is left after ``stop_timeout``; an ``atexit`` hook and
``setpriv --pdeathsig`` make sure no JVM outlives the test run. The logs (``master.log``,
``worker-<i>.log``, the executors' ``stderr``) stay in ``directory``.
"""
from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

from stlake.testing.processes import StopAtExit, port_free, stop_group, with_parent_death_signal

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
#: Variables of this process that must not reach the cluster's JVMs (nor, through them, the executors).
_NOT_INHERITED = ("PYTHONPATH", "PYSPARK_", "SPARK_", "AWS_", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS")

_running = StopAtExit()


class ClusterError(RuntimeError):
    """The cluster could not be started or did not answer."""


def spark_class() -> str:
    """The ``bin/spark-class`` script of the installed pyspark."""
    import pyspark
    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-class")


def free_port_list(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (each checked by binding it on ``host``)."""
    ports: list[int] = []
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(20000, 60000)
        if port not in ports and port_free(port, host):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterError(f"could not find {count} free ports on {host}")


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` (never through a proxy) and parse its JSON body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.load(response)


@dataclass
class Daemon:
    """One master or worker JVM: its ports, log file and process."""

    name: str
    port: int
    ui_port: int
    log_path: str
    process: Optional[subprocess.Popen[bytes]] = None
    work_dir: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """True while the JVM runs."""
        return self.process is not None and self.process.poll() is None


class SparkCluster:
    """A standalone master with ``workers`` workers (``cores`` cores and ``memory`` each); a context manager."""

    def __init__(self, directory: str | os.PathLike[str], workers: int = 2, cores: int = 1, memory: str = "2g",
                 env: Optional[dict[str, str]] = None, host: str = "127.0.0.1", start_timeout: float = 120.0,
                 stop_timeout: float = 10.0, daemon_memory: str = "512m") -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.worker_count, self.cores, self.memory = workers, cores, memory
        self.env, self.host = dict(env or {}), host
        self.start_timeout, self.stop_timeout, self.daemon_memory = start_timeout, stop_timeout, daemon_memory
        self.master: Optional[Daemon] = None
        self.workers: list[Daemon] = []

    # -- addresses ------------------------------------------------------------------------------
    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:<port>`` (once started)."""
        if self.master is None:
            raise ClusterError("the cluster is not started")
        return f"spark://{self.host}:{self.master.port}"

    @property
    def master_ui(self) -> str:
        """The master's web UI (its JSON state is at ``/json/``)."""
        if self.master is None:
            raise ClusterError("the cluster is not started")
        return f"http://{self.host}:{self.master.ui_port}"

    # -- lifecycle ------------------------------------------------------------------------------
    def _child_env(self, local_dir: str) -> dict[str, str]:
        """A daemon's environment: ours without Python/Spark/AWS settings, plus ``env`` and loopback binding."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        conf_dir = os.path.join(self.directory, "conf")  # empty: no spark-defaults.conf of the machine
        os.makedirs(conf_dir, exist_ok=True)
        env.update(SPARK_LOCAL_IP=self.host, SPARK_LOCAL_DIRS=local_dir, SPARK_CONF_DIR=conf_dir,
                   SPARK_DAEMON_MEMORY=self.daemon_memory)
        env.update(self.env)
        return env

    def _launch(self, daemon: Daemon, args: list[str], local_dir: str) -> None:
        """Start one JVM in its own process group, its output appended to its log."""
        os.makedirs(local_dir, exist_ok=True)
        with open(daemon.log_path, "ab") as log:
            log.write(f"\n=== stlake SparkCluster start {time.strftime('%H:%M:%S')} {daemon.name} ===\n".encode())
            log.flush()
            daemon.process = subprocess.Popen(
                with_parent_death_signal([spark_class(), *args]), cwd=self.directory, env=self._child_env(local_dir),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> SparkCluster:
        """Start the master and the workers; return once the master lists every worker ALIVE."""
        os.makedirs(self.directory, exist_ok=True)
        ports = free_port_list(2 + 2 * self.worker_count, self.host)
        _running.add(self)
        try:
            self.master = Daemon("master", ports[0], ports[1], os.path.join(self.directory, "master.log"))
            self._launch(self.master, [MASTER_CLASS, "--host", self.host, "--port", str(self.master.port),
                                       "--webui-port", str(self.master.ui_port)],
                         os.path.join(self.directory, "master-local"))
            self._wait(lambda: self.master_state() is not None, "the master's UI to answer")
            for index in range(self.worker_count):
                self._start_worker(index, ports[2 + 2 * index], ports[3 + 2 * index])
            self._wait(lambda: len(self.alive_workers()) == self.worker_count,
                       f"{self.worker_count} workers to register")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_worker(self, index: int, port: int, ui_port: int) -> None:
        """Start worker ``index`` with its own work dir and scratch dir."""
        root = os.path.join(self.directory, f"worker-{index}")
        daemon = Daemon(f"worker-{index}", port, ui_port, os.path.join(self.directory, f"worker-{index}.log"),
                        work_dir=os.path.join(root, "work"))
        os.makedirs(daemon.work_dir, exist_ok=True)
        self.workers.append(daemon)
        self._launch(daemon, [WORKER_CLASS, self.master_url, "--host", self.host, "--port", str(port),
                              "--webui-port", str(ui_port), "--cores", str(self.cores), "--memory", self.memory,
                              "--work-dir", daemon.work_dir], os.path.join(root, "local"))

    def _wait(self, ready: Any, what: str) -> None:
        """Poll ``ready()`` until it is true; ClusterError (with the logs' tails) on timeout or a dead JVM."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            dead = [d.name for d in self.daemons() if not d.alive]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {self.start_timeout:.0f} s waiting for {what}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)

    def daemons(self) -> list[Daemon]:
        """The master and the workers started so far."""
        return ([self.master] if self.master else []) + self.workers

    def stop(self) -> None:
        """Stop the workers (and their executors), then the master; the logs stay."""
        for daemon in reversed(self.daemons()):
            process, daemon.process = daemon.process, None
            if process is not None:
                stop_group(process, self.stop_timeout)
        _running.discard(self)

    def __enter__(self) -> SparkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------------------------
    def master_state(self) -> Optional[dict[str, Any]]:
        """The master's JSON state (workers, active and completed applications); None when it does not answer."""
        try:
            return get_json(f"{self.master_ui}/json/")
        except (OSError, ValueError):
            return None

    def alive_workers(self) -> list[dict[str, Any]]:
        """The master's entries of the workers that are ALIVE."""
        state = self.master_state() or {}
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def worker_state(self, index: int) -> dict[str, Any]:
        """Worker ``index``'s JSON state (its id, executors and finished executors)."""
        return get_json(f"http://{self.host}:{self.workers[index].ui_port}/json/")

    def executors(self, app_id: str) -> dict[str, list[str]]:
        """{worker id: executor ids} of the application ``app_id``, running or finished, per worker."""
        found: dict[str, list[str]] = {}
        for index in range(len(self.workers)):
            state = self.worker_state(index)
            ids = [str(e["id"]) for key in ("executors", "finishedexecutors")
                   for e in state.get(key, []) if e.get("appid") == app_id]
            found[state["id"]] = sorted(ids)
        return found

    def executor_logs(self, app_id: str, name: str = "stderr") -> dict[str, str]:
        """{``worker-<i>/<executor id>``: the executor's ``stderr`` (or ``stdout``)} of ``app_id``."""
        logs = {}
        for index, worker in enumerate(self.workers):
            for path in sorted(glob.glob(os.path.join(worker.work_dir, app_id, "*", name))):
                with open(path, errors="replace") as handle:
                    logs[f"worker-{index}/{os.path.basename(os.path.dirname(path))}"] = handle.read()
        return logs

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of every daemon's log."""
        parts = []
        for daemon in self.daemons():
            try:
                with open(daemon.log_path, errors="replace") as handle:
                    tail = handle.read().splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            parts.append(f"--- {daemon.log_path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def __repr__(self) -> str:
        where = self.master_url if self.master else "not started"
        return f"SparkCluster({where}, {len(self.workers)} workers, dir={self.directory!r})"
