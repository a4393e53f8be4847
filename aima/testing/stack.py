"""A whole AIMA on this machine for benchmarks: the embedded servers, a migrated database, an API and workers.

Every benchmark under bench/ starts the same way and must leave nothing running behind it, whatever happens; this
context manager does both, and prints the tail of each process's log when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aima.db.migrate import upgrade
from aima.devserver import with_stack
from aima.embedded import DevStack, StackPorts
from aima.embedded.base import make_runtime_root
from aima.settings import Settings
from aima.testing.processes import free_port, spawn, stop, wait_ready


@dataclass
class LocalAima:
    root: Path
    settings: Settings
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_api(self, **extra_env: str) -> tuple[str, subprocess.Popen[bytes]]:
        """Start `aima api` on a free port; returns its base URL and process once it is ready."""
        port = free_port()
        api = spawn(["api", "--port", str(port)], self.settings, self.root / "logs" / "api.log", **extra_env)
        self.processes.append(api)
        wait_ready(f"http://127.0.0.1:{port}/readyz", api, timeout=60)
        return f"http://127.0.0.1:{port}", api

    def start_workers(self, count: int, *args: str, **extra_env: str) -> list[subprocess.Popen[bytes]]:
        workers = [
            spawn(["worker", *args], self.settings, self.root / "logs" / f"worker-{i}.log", **extra_env)
            for i in range(count)
        ]
        self.processes.extend(workers)
        return workers


@contextlib.contextmanager
def local_aima(prefix: str, **settings: Any) -> Iterator[LocalAima]:
    """Embedded servers in a fresh folder, the schema migrated, and settings pointing at them (`settings` are
    extra `Settings` fields). Everything started through it is stopped, and the folder removed, on the way out."""
    root = make_runtime_root(prefix)
    stack = DevStack(root / "servers", StackPorts.free())
    running: LocalAima | None = None
    try:
        stack.start()
        base = Settings(environment="test", data_dir=root / "data", log_level="WARNING", **settings)
        running = LocalAima(root=root, settings=with_stack(base, stack.urls))
        upgrade(running.settings.database_url)
        yield running
    except Exception:
        for log in sorted((root / "logs").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        for process in running.processes if running else []:
            stop(process)
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
