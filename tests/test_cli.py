"""The `aima` command, including `aima dev` as a new user runs it."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aima.cli import app
from aima.embedded.base import make_runtime_root
from aima.graphql.schema import schema_sdl
from aima.testing.processes import free_port
from tests.conftest import Servers

runner = CliRunner()


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """CLI commands configure logging for their process; give the test process its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_plugins_lists_analyzers_with_versions() -> None:
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "aima.analyzers.media_probe" in result.output
    assert re.search(r"media-probe 1\.0\.0\s+\[audio,image,video\] on cpu", result.output)


def test_schema_prints_the_sdl(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema", "--output", str(tmp_path / "schema.graphql")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "schema.graphql").read_text() == schema_sdl()


def test_users_create_makes_an_admin(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("AIMA_ENVIRONMENT", "test")
    result = runner.invoke(app, ["users", "create", "--email", "root@example.org", "--admin"])
    assert result.exit_code == 0, result.output
    assert "created admin root@example.org with password" in result.output
    again = runner.invoke(app, ["users", "create", "--email", "root@example.org", "--password", "x" * 20])
    assert again.exit_code != 0


def _start_dev(root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AIMA_LOAD_PLUGINS": ""}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aima.cli", "dev", "--data-dir", str(root), "--port", str(port), "--free-ports"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if text in log.read_text(errors="replace"):
            return time.monotonic() - started
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen in {timeout} s:\n" + log.read_text(errors="replace")[-3000:])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.e2e
def test_dev_starts_everything_stops_cleanly_and_keeps_data() -> None:
    root = make_runtime_root("aima-dev-test-")
    try:
        for attempt in (1, 2):
            log = root / f"dev-{attempt}.log"
            port = free_port()
            dev = _start_dev(root / ".aima", port, log)
            try:
                elapsed = _wait_for(log, "AIMA is running at", dev, timeout=60)
                assert elapsed < 30
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    assert answer.status == 200
                children = _children(dev.pid)
                assert len(children) >= 7  # five servers, the API and a worker
            finally:
                dev.send_signal(signal.SIGINT)
                assert dev.wait(30) == 0, log.read_text(errors="replace")[-3000:]
            assert not [
                pid
                for pid in children
                if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
            ]
            text = log.read_text(errors="replace")
            if attempt == 1:
                assert "first admin created: admin@aima.local /" in text
            else:  # the second start found the first one's data
                assert "first admin created" not in text
                assert "admin: admin@aima.local (password shown at the first start" in text
    finally:
        shutil.rmtree(root, ignore_errors=True)
