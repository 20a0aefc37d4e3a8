"""Against a real local S3 server (SeaweedFS ``weed mini``; fixtures in conftest.py): no mocks."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from stlake.lake import storage
from stlake.testing.s3server import S3Server, S3ServerError


def _error_code(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def _wait_closed(port: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_closed(port):
            return True
        time.sleep(0.1)
    return False


def test_boto3_round_trip(s3_server):
    client = s3_server.boto3_client()
    client.put_object(Bucket="lake", Key="rt/hello.bin", Body=b"\x00hello\xff")
    assert client.get_object(Bucket="lake", Key="rt/hello.bin")["Body"].read() == b"\x00hello\xff"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="rt/")["Contents"]]
    assert keys == ["rt/hello.bin"]
    s3_server.create_bucket("lake")  # already ours: fine


def test_keys_are_required(s3_server):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anonymous = boto3.session.Session().client(
        "s3", endpoint_url=s3_server.endpoint, region_name=s3_server.region,
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    with pytest.raises(ClientError) as info:
        anonymous.list_objects_v2(Bucket="lake")
    assert _error_code(info.value)[1] == 403
    wrong = boto3.session.Session().client(
        "s3", endpoint_url=s3_server.endpoint, region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key, aws_secret_access_key="not-the-secret",
        config=Config(s3={"addressing_style": "path"}))
    with pytest.raises(ClientError) as info:
        wrong.list_objects_v2(Bucket="lake")
    assert _error_code(info.value)[1] == 403


def test_if_none_match_put_is_enforced(s3_server):
    client = s3_server.boto3_client()
    client.put_object(Bucket="lake", Key="cond/obj", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket="lake", Key="cond/obj", Body=b"second", IfNoneMatch="*")
    assert _error_code(info.value) == ("PreconditionFailed", 412)
    assert client.get_object(Bucket="lake", Key="cond/obj")["Body"].read() == b"first"


def test_storage_functions_on_s3(s3_env):
    base = "s3://lake/storage"
    data = bytes(range(256)) * 40
    storage.write_bytes(storage.join(base, "a.bin"), data)
    assert storage.exists(storage.join(base, "a.bin"))
    assert not storage.exists(storage.join(base, "missing.bin"))
    assert storage.size(storage.join(base, "a.bin")) == len(data)
    assert storage.read_bytes("s3a://lake/storage/a.bin") == data
    assert storage.read_bytes(storage.join(base, "a.bin"), 1000, 300) == data[1000:1300]
    assert storage.read_bytes(storage.join(base, "a.bin"), len(data) - 7) == data[-7:]
    with storage.open_input(storage.join(base, "a.bin")) as handle:
        handle.seek(5000)
        assert handle.read(16) == data[5000:5016]

    # A `.gz` name must not make pyarrow compress on the way out: the bytes land verbatim.
    raw = gzip.compress(b"spot,gene,count\n1,ACTB,3\n")
    with storage.open_output(storage.join(base, "table.csv.gz")) as handle:
        handle.write(raw)
    stored = s3_env.boto3_client().get_object(Bucket="lake", Key="storage/table.csv.gz")["Body"].read()
    assert stored == raw
    assert gzip.decompress(storage.read_bytes(storage.join(base, "table.csv.gz"))).startswith(b"spot,gene")

    assert storage.list_dir(base) == ["a.bin", "table.csv.gz"]
    storage.delete(storage.join(base, "a.bin"))
    storage.delete(storage.join(base, "a.bin"))  # missing: ignored
    assert not storage.exists(storage.join(base, "a.bin"))


def test_delta_storage_options(s3_env, monkeypatch):
    options = storage.delta_storage_options()
    assert options["AWS_ENDPOINT_URL"] == s3_env.endpoint
    assert options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_ACCESS_KEY_ID"] == s3_env.access_key
    assert options["AWS_SECRET_ACCESS_KEY"] == s3_env.secret_key
    assert options["AWS_REGION"] == s3_env.region
    assert not any("UNSAFE_RENAME" in key or "LOCKING_PROVIDER" in key for key in options)
    # AWS_ENDPOINT_URL_S3 wins, as it does for the pyarrow filesystem (storage._endpoint).
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.test")
    options = storage.delta_storage_options()
    assert options["AWS_ENDPOINT_URL"] == "https://s3.example.test" and "AWS_ALLOW_HTTP" not in options
    assert storage._endpoint() == ("s3.example.test", "https")


class _RecordingProxy:
    """A TCP proxy in front of the server that records each request's method, path and headers."""
    _request = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.[01]\r\n(.*?)\r\n\r\n", re.S)

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, record):
        pending = b""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if not record:
                    continue
                pending += data
                end = 0
                for match in self._request.finditer(pending):
                    headers = {}
                    for line in match.group(3).split(b"\r\n"):
                        name, _, value = line.partition(b":")
                        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
                    self.requests.append((match.group(1).decode(), match.group(2).decode(), headers))
                    end = match.end()
                pending = pending[end:][-16384:]
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_deltalake_write_read_with_conditional_commits(s3_env, monkeypatch):
    from deltalake import DeltaTable, write_deltalake

    proxy = _RecordingProxy(s3_env.ports["s3"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    try:
        options = storage.delta_storage_options()
        uri = "s3://lake/t"
        write_deltalake(uri, pa.table({"x": [1, 2], "s": ["a", "b"]}), storage_options=options)
        write_deltalake(uri, pa.table({"x": [3], "s": ["c"]}), mode="append", storage_options=options)
        table = DeltaTable(uri, storage_options=options)
        assert table.version() == 1
        assert sorted(table.to_pyarrow_table()["x"].to_pylist()) == [1, 2, 3]
    finally:
        proxy.close()

    # Every commit file was created with `If-None-Match: *` (no lock table, no unsafe rename).
    commits = [(path, headers) for method, path, headers in proxy.requests
               if method == "PUT" and "/_delta_log/" in path and path.endswith(".json")]
    assert [path.rsplit("/", 1)[1] for path, _ in commits] == ["00000000000000000000.json",
                                                              "00000000000000000001.json"]
    assert all(headers.get("if-none-match") == "*" for _, headers in commits), commits
    # The files are really on the server.
    keys = {o["Key"] for o in s3_env.boto3_client().list_objects_v2(Bucket="lake", Prefix="t/")["Contents"]}
    assert {"t/_delta_log/00000000000000000000.json", "t/_delta_log/00000000000000000001.json"} <= keys


def test_deltalake_stale_writer_does_not_overwrite_a_commit(s3_env):
    from deltalake import DeltaTable, write_deltalake

    options, uri = storage.delta_storage_options(), "s3://lake/race"
    write_deltalake(uri, pa.table({"x": [0]}), storage_options=options)
    first, second = DeltaTable(uri, storage_options=options), DeltaTable(uri, storage_options=options)
    write_deltalake(first, pa.table({"x": [1]}), mode="append")   # commits version 1
    write_deltalake(second, pa.table({"x": [2]}), mode="append")  # stale: v1 taken (412), retried as v2
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 2
    assert sorted(table.to_pyarrow_table()["x"].to_pylist()) == [0, 1, 2]


def test_start_errors_are_clear(tmp_path):
    with pytest.raises(S3ServerError, match="not found"):
        S3Server(tmp_path / "a", weed=str(tmp_path / "no-such-weed")).start()
    server = S3Server(tmp_path / "b", weed="/bin/false", start_timeout=10)
    with pytest.raises(S3ServerError, match="exited with code 1"):
        server.start()
    assert not server.running


def _start_cli(directory) -> tuple[subprocess.Popen, dict[str, str], threading.Timer]:
    """``python -m stlake.testing.s3server`` in a child process; its exported env once it is ready."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(storage.__file__))
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.Popen([sys.executable, "-m", "stlake.testing.s3server", "--dir", str(directory),
                             "--bucket", "lake"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    exports: dict[str, str] = {}
    for line in proc.stdout:
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            exports[name] = value
            if name == "AWS_EC2_METADATA_DISABLED":
                break
    if "AWS_ENDPOINT_URL" not in exports:
        proc.kill()
        watchdog.cancel()
        pytest.fail(f"the CLI printed no env: {proc.stderr.read()}")
    assert set(exports) >= {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                            "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP", "AWS_EC2_METADATA_DISABLED"}
    # The printed env works: the bucket is there for the printed keys.
    client = S3Server(directory, access_key=exports["AWS_ACCESS_KEY_ID"],
                      secret_key=exports["AWS_SECRET_ACCESS_KEY"])
    client.ports = {"s3": int(exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])}
    client.boto3_client().head_bucket(Bucket="lake")
    return proc, exports, watchdog


def test_cli_prints_env_and_stops_on_sigterm(tmp_path):
    proc, exports, watchdog = _start_cli(tmp_path / "s3")
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert _wait_closed(int(exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), 5), "weed outlived the CLI"
        assert os.path.getsize(tmp_path / "s3" / "weed.log") > 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("setpriv"),
                    reason="parent-death kill uses Linux `setpriv --pdeathsig`")
def test_server_dies_with_a_killed_parent(tmp_path):
    proc, exports, watchdog = _start_cli(tmp_path / "s3")
    try:
        proc.kill()  # SIGKILL: no atexit, no cleanup in the parent
        proc.wait()
        assert _wait_closed(int(exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), 5), "orphaned weed still serving"
    finally:
        watchdog.cancel()
        # The SIGKILLed server left its gRPC unix sockets in /tmp: remove them.
        leftover = S3Server(tmp_path / "s3")
        leftover.ports = json.loads((tmp_path / "s3" / "ports.json").read_text())
        leftover.remove_stale_sockets()


def test_restart_keeps_data(s3_server):
    client = s3_server.boto3_client()
    client.put_object(Bucket="lake", Key="restart/keep.txt", Body=b"kept")
    endpoint = s3_server.endpoint
    s3_server.restart()
    assert s3_server.running and s3_server.endpoint == endpoint
    assert s3_server.last_stop_seconds < 6 and s3_server.last_start_seconds < 15
    assert s3_server.boto3_client().get_object(Bucket="lake", Key="restart/keep.txt")["Body"].read() == b"kept"
