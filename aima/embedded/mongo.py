"""A MongoDB-wire server for development and tests: SecantusDB (`secantusd-py`, WiredTiger storage)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import ClassVar

from aima.embedded.base import EmbeddedServer, find_executable

logger = logging.getLogger(__name__)


class EmbeddedMongo(EmbeddedServer):
    """SecantusDB as a single-node replica set (so change streams and transactions work)."""

    name: ClassVar[str] = "mongo"

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(data_dir, port, host)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "run" / "secantusd.toml"

    def prepare(self, deadline: float) -> None:
        super().prepare(deadline)
        # An explicit (empty) config: otherwise secantusd reads ./, ~/.secantus/ or /etc/secantus/ configs.
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("# written by aima.embedded: flags carry the settings\n")

    def command(self) -> list[str]:
        return [
            find_executable("secantusd-py", "pip install 'aima[embedded]' (secantusdb)"),
            "--config",
            str(self.config_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.data_dir),
        ]

    def check_ready(self) -> None:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()

    def after_stop_signal(self) -> None:
        """Wake secantusd's accept loop: closing its socket does not, so it waits 2 s for a join otherwise."""
        threading.Thread(target=self._poke_until_closed, name="aima-mongo-stop", daemon=True).start()

    def _poke_until_closed(self) -> None:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except OSError:
                return
