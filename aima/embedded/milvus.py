"""Milvus Lite as a shared server (`milvus-lite server`): one process per data folder, many clients."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from aima.embedded.base import EmbeddedServer, find_executable

logger = logging.getLogger(__name__)


class EmbeddedMilvus(EmbeddedServer):
    """Milvus Lite's gRPC server; API and workers share it (a Lite data folder locks to one process)."""

    name: ClassVar[str] = "milvus"

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(data_dir, port, host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            find_executable("milvus-lite", "pip install 'pymilvus[milvus-lite]'"),
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]

    def check_ready(self) -> None:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.url, timeout=2.0, dedicated=True)
        try:
            client.list_collections()
        finally:
            client.close()
