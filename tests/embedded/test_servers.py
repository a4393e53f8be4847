"""The embedded servers start on free ports, answer their real clients, stop, and keep their data."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, cast

import boto3
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError
from pymilvus import MilvusClient
from pymongo import MongoClient

from aima.embedded import (
    DevStack,
    EmbeddedMilvus,
    EmbeddedMongo,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedS3,
    EmbeddedServer,
    EmbeddedServerError,
    StackPorts,
    StackUrls,
)

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def gone(pid: int, within: float = 3.0) -> bool:
    """Whether process `pid` is dead within `within` s (a zombie waiting for its reaper counts as dead)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw)
            found.add((addr, int(hex_port, 16)))
    return found


# -- one write and one read per server, with its real client -----------------------------------------------


def pg_write(server: EmbeddedPostgres) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(server.dsn("aima"))
        try:
            await conn.execute("CREATE TABLE note (v text)")
            await conn.execute("INSERT INTO note VALUES ('kept')")
        finally:
            await conn.close()

    server.ensure_database("aima")
    server.ensure_database("aima")  # idempotent
    asyncio.run(run())


def pg_read(server: EmbeddedPostgres) -> list[str]:
    import asyncpg

    async def run() -> list[str]:
        conn = await asyncpg.connect(server.dsn("aima"))
        try:
            return [row["v"] for row in await conn.fetch("SELECT v FROM note")]
        finally:
            await conn.close()

    return asyncio.run(run())


def mongo_write(url: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        client.aima.notes.insert_one({"v": "kept"})
    finally:
        client.close()


def mongo_read(url: str) -> list[str]:
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        return [doc["v"] for doc in client.aima.notes.find()]
    finally:
        client.close()


def milvus_write(url: str) -> None:
    client = MilvusClient(uri=url, dedicated=True)
    try:
        client.create_collection("notes", dimension=4)
        client.insert("notes", [{"id": 7, "vector": [0.1, 0.2, 0.3, 0.4]}])
    finally:
        client.close()


def milvus_read(url: str) -> list[int]:
    client = MilvusClient(uri=url, dedicated=True)
    try:
        client.load_collection("notes")  # a restarted server brings collections back released
        return [row["id"] for row in client.get("notes", ids=[7])]
    finally:
        client.close()


def s3_client(server: EmbeddedS3 | StackUrls, secret: str | None = None) -> Any:
    if isinstance(server, EmbeddedS3):
        url, key, real_secret = server.url, server.access_key, server.secret_key
    else:
        url, key, real_secret = server.s3_url, server.s3_access_key, server.s3_secret_key
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=key,
        aws_secret_access_key=secret or real_secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def s3_write(server: EmbeddedS3 | StackUrls) -> None:
    client = s3_client(server)
    client.create_bucket(Bucket="aima-kept")
    client.put_object(Bucket="aima-kept", Key="note.txt", Body=b"kept")


def s3_read(server: EmbeddedS3 | StackUrls) -> bytes:
    body: bytes = s3_client(server).get_object(Bucket="aima-kept", Key="note.txt")["Body"].read()
    return body


def redis_write(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.set("note", "kept")
    finally:
        client.close()


def redis_read(url: str) -> bytes | None:
    client = redis.Redis.from_url(url)
    try:
        return cast("bytes | None", client.get("note"))
    finally:
        client.close()


# -- each server on its own ----------------------------------------------------------------------------------

Factory = Callable[[Path, int], EmbeddedServer]
CASES: dict[str, tuple[Factory, Callable[[Any], None], Callable[[Any], object], object]] = {
    "postgres": (lambda root, port: EmbeddedPostgres(root / "postgres", port), pg_write, pg_read, ["kept"]),
    "mongo": (
        lambda root, port: EmbeddedMongo(root / "mongo", port),
        lambda s: mongo_write(s.url),
        lambda s: mongo_read(s.url),
        ["kept"],
    ),
    "milvus": (
        lambda root, port: EmbeddedMilvus(root / "milvus", port),
        lambda s: milvus_write(s.url),
        lambda s: milvus_read(s.url),
        [7],
    ),
    "redis": (
        lambda root, port: EmbeddedRedis(root / "redis", port),
        lambda s: redis_write(s.url),
        lambda s: redis_read(s.url),
        b"kept",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_server_answers_and_keeps_data_across_restart(root: Path, kind: str) -> None:
    factory, write, read, expected = CASES[kind]
    port = free_port()
    server = factory(root, port)
    assert not server.running
    assert server.pid is None
    assert str(port) in server.url
    with server:
        assert server.running
        pid = server.pid
        assert pid is not None
        write(server)
        assert read(server) == expected
    assert not server.running
    assert server.pid is None
    assert gone(pid)
    server.stop()  # idempotent
    assert server.log_path == root / "logs" / f"{kind}.log"
    assert server.log_path.stat().st_size > 0

    server.start()
    try:
        assert read(server) == expected
    finally:
        server.stop()


def test_postgres_urls(root: Path) -> None:
    server = EmbeddedPostgres(root / "postgres", 55555)
    assert server.url == "postgresql+asyncpg://postgres@127.0.0.1:55555/"
    assert server.database_url("aima") == "postgresql+asyncpg://postgres@127.0.0.1:55555/aima"


def test_s3_checks_signatures_binds_loopback_and_runs_twice(root: Path) -> None:
    ports = StackPorts.free()
    server = EmbeddedS3(root / "s3", ports.s3, port_base=ports.s3_base, access_key="ak", secret_key="sk-secret")
    with server:
        assert server.pid is not None
        expected = {("127.0.0.1", port) for port in server.ports()}
        # weed's admin and filer come up after its S3 endpoint answers: wait for every port, never a foreign one.
        deadline = time.monotonic() + 20
        while (found := listening(server.pid)) != expected and time.monotonic() < deadline:
            assert found <= expected, found - expected
            time.sleep(0.2)
        assert found == expected
        s3_write(server)
        with pytest.raises(ClientError) as denied:
            s3_client(server, secret="wrong-secret").list_buckets()
        assert denied.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

        other_ports = StackPorts.free()
        other = EmbeddedS3(root / "s3-other", other_ports.s3, port_base=other_ports.s3_base)
        with other:
            assert s3_client(other).list_buckets()["Buckets"] == []
            assert s3_read(server) == b"kept"
    assert not any(Path("/tmp").glob(f"seaweedfs-*-{server.port}.sock"))
    with server:
        assert s3_read(server) == b"kept"


# -- failures ------------------------------------------------------------------------------------------------


def test_port_in_use_is_reported(root: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = EmbeddedRedis(root / "redis", port)
        with pytest.raises(EmbeddedServerError, match=rf"redis: port\(s\) {port} on 127.0.0.1 already in use"):
            server.start()
        assert not server.running

    ports = StackPorts.free()
    filer = ports.s3_base + 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", filer))
        sock.listen()
        s3 = EmbeddedS3(root / "s3", ports.s3, port_base=ports.s3_base)
        with pytest.raises(EmbeddedServerError, match=rf"s3: port\(s\) {filer} on"):
            s3.start()
        assert not s3.running


class Scripted(EmbeddedServer):
    """A fake server: a Python one-liner; ready once something listens on its port."""

    name: ClassVar[str] = "scripted"

    def __init__(self, data_dir: Path, port: int, script: str) -> None:
        super().__init__(data_dir, port)
        self.script = script

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port), str(self.data_dir)]

    def check_ready(self) -> None:
        return None  # the base class already saw the port accept a connection


def test_crashing_server_reports_its_log_tail(root: Path) -> None:
    script = (
        "import sys\nfor i in range(40): print(f'line {i}')\nprint('fatal: bad setting', flush=True)\nsys.exit(3)\n"
    )
    server = Scripted(root / "scripted", free_port(), script)
    with pytest.raises(EmbeddedServerError) as failed:
        server.start()
    message = str(failed.value)
    assert "scripted exited with code 3" in message
    assert "fatal: bad setting" in message
    assert "line 39" in message
    assert "line 5\n" not in message  # only the tail
    assert str(server.log_path) in message
    assert not server.running


def test_start_timeout_kills_the_child(root: Path) -> None:
    script = (
        "import os, pathlib, sys, time\npathlib.Path(sys.argv[2], 'pid').write_text(str(os.getpid()))\ntime.sleep(60)\n"
    )
    server = Scripted(root / "scripted", free_port(), script)
    started = time.monotonic()
    with pytest.raises(EmbeddedServerError, match=r"scripted not ready on tcp://127\.0\.0\.1:"):
        server.start(timeout=1.0)
    assert time.monotonic() - started < 5
    assert gone(int((root / "scripted" / "pid").read_text()))
    assert not server.running


def test_stop_escalates_and_kills_the_whole_group(root: Path) -> None:
    # Ignores SIGINT and SIGTERM, forks a helper into its process group, then listens.
    script = (
        "import pathlib, signal, socket, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "helper = subprocess.Popen(['sleep', '60'])\n"
        "pathlib.Path(sys.argv[2], 'helper').write_text(str(helper.pid))\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "while True: time.sleep(1)\n"
    )
    server = Scripted(root / "scripted", free_port(), script)
    server.start()
    pid = server.pid
    assert pid is not None
    helper = int((root / "scripted" / "helper").read_text())
    assert os.getpgid(pid) == pid  # its own session and group
    started = time.monotonic()
    server.stop(timeout=1.0)
    assert time.monotonic() - started < 4
    assert gone(pid)
    assert gone(helper)
    assert not server.running


# -- the whole stack -----------------------------------------------------------------------------------------


def test_stack_ports() -> None:
    defaults = StackPorts()
    assert len(set(defaults.all())) == len(defaults.all()) == 14
    assert not {5432, 6379, 27017, 19530} & set(defaults.all())
    free = StackPorts.free()
    assert len(set(free.all())) == 14


def test_stack_restart_keeps_data(root: Path) -> None:
    stack = DevStack(root, StackPorts.free())
    with stack:
        assert stack.running
        urls = stack.urls
        assert urls.database_url.endswith("/aima")
        with pytest.raises(dataclasses.FrozenInstanceError):
            urls.redis_url = "x"  # type: ignore[misc]
        pg_write(stack.postgres)
        mongo_write(urls.mongo_url)
        milvus_write(urls.milvus_url)
        s3_write(urls)
        redis_write(urls.redis_url)
    assert not any(server.running for server in stack.servers)
    for name in ("postgres", "mongo", "milvus", "s3", "redis"):
        assert (root / name).is_dir()
        assert (root / "logs" / f"{name}.log").is_file()

    again = DevStack(root, stack.ports)
    with again:
        assert again.urls == urls
        assert pg_read(again.postgres) == ["kept"]
        assert mongo_read(urls.mongo_url) == ["kept"]
        assert milvus_read(urls.milvus_url) == [7]
        assert s3_read(urls) == b"kept"
        assert redis_read(urls.redis_url) == b"kept"


def test_orphan_of_a_killed_supervisor_is_stopped_on_next_start(root: Path) -> None:
    port = free_port()
    supervisor = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from aima.embedded import EmbeddedRedis\n"
        "EmbeddedRedis(Path(sys.argv[1]), int(sys.argv[2])).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", supervisor, str(root / "redis"), str(port)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.kill()  # no chance to stop its child
    proc.wait()
    orphan = int((root / "run" / "redis.pid").read_text())
    assert not gone(orphan, within=0.2)

    server = EmbeddedRedis(root / "redis", port)
    with server:
        assert gone(orphan)
        assert server.pid != orphan
        redis_write(server.url)


def test_server_that_died_can_be_started_again(root: Path) -> None:
    server = EmbeddedRedis(root / "redis", free_port())
    with server:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while server.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not server.running
        server.start()
        assert server.running
        assert server.pid != pid
        redis_write(server.url)


def test_stack_start_failure_stops_the_rest(root: Path) -> None:
    ports = StackPorts.free()
    stack = DevStack(root, ports)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.milvus))
        blocker.listen()
        with pytest.raises(EmbeddedServerError, match=rf"milvus: port\(s\) {ports.milvus}"):
            stack.start()
    assert not any(server.running for server in stack.servers)
    assert all(server.pid is None for server in stack.servers)
