"""All servers AIMA needs, started together for `aima dev` and for the test session."""

from __future__ import annotations

import logging
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from aima.embedded.base import EmbeddedServer, EmbeddedServerError, port_is_free
from aima.embedded.milvus import EmbeddedMilvus
from aima.embedded.mongo import EmbeddedMongo
from aima.embedded.postgres import EmbeddedPostgres
from aima.embedded.redis import EmbeddedRedis
from aima.embedded.s3 import COMPONENTS, DEV_ACCESS_KEY, DEV_SECRET_KEY, GRPC_OFFSET, EmbeddedS3

logger = logging.getLogger(__name__)

DATABASE_NAME = "aima"


@dataclass(frozen=True)
class StackPorts:
    """TCP ports of the stack on 127.0.0.1. Defaults keep clear of a machine's own 5432/6379/27017/19530.

    `s3_base` .. `s3_base + 3` are weed's master, volume, filer and admin; weed also listens on every one
    of its ports + 10000 (gRPC), `s3` included.
    """

    postgres: int = 55432
    mongo: int = 27118
    milvus: int = 19531
    s3: int = 8433
    s3_base: int = 8434
    redis: int = 6389

    def all(self) -> list[int]:
        """Every port the stack listens on."""
        weed_http = [self.s3, *(self.s3_base + i for i in range(len(COMPONENTS)))]
        weed_grpc = [port + GRPC_OFFSET for port in weed_http]
        return [self.postgres, self.mongo, self.milvus, self.redis, *weed_http, *weed_grpc]

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> StackPorts:
        """Ports that are free now (for tests; a small race with other processes remains)."""
        s3 = _free_weed_block(host)
        taken = set(range(s3, s3 + 1 + len(COMPONENTS))) | set(
            range(s3 + GRPC_OFFSET, s3 + GRPC_OFFSET + 1 + len(COMPONENTS))
        )
        singles: list[int] = []
        for _ in range(4):
            port = _free_port(host, taken)
            taken.add(port)
            singles.append(port)
        postgres, mongo, milvus, redis = singles
        return cls(postgres=postgres, mongo=mongo, milvus=milvus, s3=s3, s3_base=s3 + 1, redis=redis)


def _free_port(host: str, exclude: set[int]) -> int:
    """A port the kernel hands out as free (from the ephemeral range)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise EmbeddedServerError("no free port found")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_weed_block(host: str) -> int:
    """An S3 port P with P .. P+4 and P+10000 .. P+10004 free, all below the ephemeral range."""
    width = 1 + len(COMPONENTS)
    low, high = 10000, _ephemeral_low() - GRPC_OFFSET - width
    if high <= low:
        low, high = 40000, 65535 - GRPC_OFFSET - width
    for _ in range(200):
        start = low + secrets.randbelow(high - low)
        ports = [*range(start, start + width), *range(start + GRPC_OFFSET, start + GRPC_OFFSET + width)]
        if all(port_is_free(port, host) for port in ports):
            return start
    raise EmbeddedServerError("no free block of ports for weed found")


@dataclass(frozen=True)
class StackUrls:
    """Where the clients connect: the only thing that differs between `aima dev` and production."""

    database_url: str
    mongo_url: str
    milvus_url: str
    s3_url: str
    s3_access_key: str
    s3_secret_key: str
    redis_url: str


class DevStack:
    """PostgreSQL, Redis, MongoDB wire, Milvus and S3 under one root folder (`root/<name>/`, `root/logs/`).

    Started in parallel, stopped in reverse order; a second start on the same root finds the first's data.
    """

    def __init__(
        self,
        root: Path,
        ports: StackPorts | None = None,
        *,
        s3_access_key: str = DEV_ACCESS_KEY,
        s3_secret_key: str = DEV_SECRET_KEY,
    ) -> None:
        self.root = Path(root).absolute()
        self.ports = ports if ports is not None else StackPorts()
        p = self.ports
        self.postgres = EmbeddedPostgres(self.root / "postgres", p.postgres)
        self.redis = EmbeddedRedis(self.root / "redis", p.redis)
        self.mongo = EmbeddedMongo(self.root / "mongo", p.mongo)
        self.milvus = EmbeddedMilvus(self.root / "milvus", p.milvus)
        self.s3 = EmbeddedS3(
            self.root / "s3", p.s3, port_base=p.s3_base, access_key=s3_access_key, secret_key=s3_secret_key
        )

    @property
    def servers(self) -> tuple[EmbeddedServer, ...]:
        """In start order; stopped in reverse."""
        return (self.postgres, self.redis, self.mongo, self.milvus, self.s3)

    @property
    def running(self) -> bool:
        return all(server.running for server in self.servers)

    @property
    def urls(self) -> StackUrls:
        return StackUrls(
            database_url=self.postgres.database_url(DATABASE_NAME),
            mongo_url=self.mongo.url,
            milvus_url=self.milvus.url,
            s3_url=self.s3.url,
            s3_access_key=self.s3.access_key,
            s3_secret_key=self.s3.secret_key,
            redis_url=self.redis.url,
        )

    def start(self, timeout: float = 60.0, *, parallel: bool = True) -> None:
        """Start every server (in threads: most of the time is spent waiting) and create the database.

        On any failure the servers that did start are stopped again and one error names every failure.
        """
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        errors: list[BaseException] = []
        try:
            if parallel:
                with ThreadPoolExecutor(len(self.servers), thread_name_prefix="aima-embedded") as pool:
                    futures = [pool.submit(server.start, timeout) for server in self.servers]
                    for future in futures:
                        exc = future.exception()
                        if exc is not None:
                            errors.append(exc)
            else:
                for server in self.servers:
                    server.start(timeout)
            if not errors:
                self.postgres.ensure_database(DATABASE_NAME)
        except BaseException:
            self.stop()
            raise
        if errors:
            self.stop()
            message = "\n\n".join(str(exc) for exc in errors)
            raise EmbeddedServerError(f"dev stack failed to start under {self.root}:\n{message}") from errors[0]
        logger.info("dev stack ready under %s in %.2f s", self.root, time.monotonic() - started)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop all servers, newest first; every one is stopped even if another fails to stop.

        The stop signals go out first so the servers wind down at the same time, then each is waited for.
        """
        started = time.monotonic()
        failures: list[str] = []
        for server in reversed(self.servers):
            try:
                server.request_stop()
            except Exception:
                logger.exception("%s: sending the stop signal failed", server.name)
        for server in reversed(self.servers):
            try:
                server.stop(timeout)
            except Exception as exc:
                logger.exception("%s: stop failed", server.name)
                failures.append(f"{server.name}: {exc}")
        if failures:
            raise EmbeddedServerError("stopping the dev stack failed: " + "; ".join(failures))
        logger.info("dev stack stopped in %.2f s", time.monotonic() - started)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
