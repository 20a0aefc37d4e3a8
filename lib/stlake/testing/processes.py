"""Helpers for the services the tests start (S3 server, Spark cluster): free ports, process groups.

Every service runs in its own process group (``start_new_session=True``) so that stopping it reaches
every process it started, and under ``setpriv --pdeathsig KILL`` (Linux) so that it dies with the
process that started it even when that process is killed without running its ``atexit`` hooks.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Protocol


def port_free(port: int, host: str) -> bool:
    """True when ``port`` can be bound on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to a process group; a group that is gone is fine."""
    try:
        os.killpg(pid, sig)  # start_new_session=True: the process group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``process``'s group, SIGKILL it after ``timeout`` seconds, then SIGKILL anything left in it."""
    if process.poll() is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    signal_group(process.pid, signal.SIGKILL)


def with_parent_death_signal(command: list[str]) -> list[str]:
    """``command`` run under ``setpriv --pdeathsig KILL`` where available (killed when its parent dies)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


class Stoppable(Protocol):
    """A service with a ``stop()``."""

    def stop(self) -> None:
        """Stop it."""


class StopAtExit:
    """The services of one kind that are running; those still running at interpreter exit are stopped."""

    def __init__(self) -> None:
        self._running: set[Stoppable] = set()
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def add(self, service: Stoppable) -> None:
        """``service`` was started."""
        with self._lock:
            self._running.add(service)

    def discard(self, service: Stoppable) -> None:
        """``service`` was stopped."""
        with self._lock:
            self._running.discard(service)

    def stop_all(self) -> None:
        """Stop every service still running (best effort)."""
        with self._lock:
            services = list(self._running)
        for service in services:
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
