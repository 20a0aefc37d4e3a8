"""A real Spark Connect server on this machine, started apart from the client (a JVM of its own).

    with ConnectServer("/tmp/connect") as server:
        spark = spark_session(remote=server.url)          # sc://127.0.0.1:PORT
        subprocess.run(["stlake", "ingest", "--remote", server.url, ...])

Started with pyspark's own ``bin/spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer``
(the Connect server jar ships in the pyspark wheel; the wheel has no ``sbin/start-connect-server.sh``) on a
free port bound to 127.0.0.1, in a process group of its own, stopped by its pid. Its Python workers run the
given python with ``PYTHONPATH`` naming the ``stlake`` that this process imports, as a Connect server's
workers have the server's environment, never the client's. The log (``server.log``) stays in ``directory``.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


class ConnectServerError(RuntimeError):
    """The server did not start or did not answer."""


def _free_port(host: str) -> int:
    """A port that is free on ``host`` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    """True when something accepts connections on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def stlake_path() -> str:
    """The folder holding the ``stlake`` package this process imports (for the server's ``PYTHONPATH``)."""
    import stlake
    return os.path.dirname(os.path.dirname(os.path.abspath(stlake.__file__)))


class ConnectServer:
    """A Spark Connect server (``master``, default ``local[2,4]``) on 127.0.0.1; a context manager."""

    def __init__(self, directory: str | os.PathLike[str], master: str = "local[2,4]",
                 env: Optional[dict[str, str]] = None, start_timeout: float = 240, stop_timeout: float = 30) -> None:
        self.directory, self.master = os.fspath(directory), master
        self.env, self.start_timeout, self.stop_timeout = dict(env or {}), start_timeout, stop_timeout
        self.host, self.port = "127.0.0.1", 0
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """``sc://127.0.0.1:PORT``: what a client's ``--remote`` / ``SPARK_REMOTE`` names."""
        return f"sc://{self.host}:{self.port}"

    @property
    def log_path(self) -> str:
        """The server's stdout and stderr."""
        return os.path.join(self.directory, "server.log")

    def command(self) -> list[str]:
        """``spark-submit`` of the server class, on ``self.port``, UI off."""
        import pyspark
        submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
        conf = {"spark.connect.grpc.binding.address": self.host, "spark.connect.grpc.binding.port": str(self.port),
                "spark.ui.enabled": "false", "spark.sql.session.timeZone": "UTC",
                "spark.local.dir": os.path.join(self.directory, "local")}
        return [submit, "--master", self.master, "--name", "stlake-connect", "--class", SERVER_CLASS,
                *(arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")), "spark-internal"]

    def child_env(self) -> dict[str, str]:
        """This process's environment without Spark Connect's client switches, plus the workers' python."""
        env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED",
                                                                  "SPARK_LOCAL_REMOTE", "PYSPARK_GATEWAY_PORT")}
        path = os.pathsep.join(filter(None, [stlake_path(), env.get("PYTHONPATH")]))
        return {**env, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": path, **self.env}

    def start(self) -> ConnectServer:
        """Start the server; returns once it accepts connections (``ConnectServerError`` with the log's tail if not)."""
        os.makedirs(self.directory, exist_ok=True)
        self.port = _free_port(self.host)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.child_env(),
                                            start_new_session=True)
        atexit.register(self.stop)  # no server outlives the test run
        deadline = time.monotonic() + self.start_timeout
        while not _listening(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self.process.poll() is not None else f"not up after {self.start_timeout:.0f} s"
                self.stop()
                raise ConnectServerError(f"Spark Connect server {why}; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        """SIGTERM the server (the JVM: its shutdown stops its Python workers), SIGKILL after ``stop_timeout`` s."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # anything left in its process group

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ConnectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
