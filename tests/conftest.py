"""Session fixtures: real servers for every test.

PostgreSQL and Redis are the machine's (127.0.0.1:5432 and :6379, overridable with AIMA_TEST_POSTGRES_URL and
AIMA_TEST_REDIS_URL); each session gets its own database and Redis key prefix. The MongoDB-wire server, Milvus Lite
and the S3 server start here from their pip packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis as redis_sync

from aima.db.migrate import upgrade
from aima.embedded import EmbeddedMilvus, EmbeddedMongo, EmbeddedS3, StackPorts
from aima.embedded.base import make_runtime_root
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources, open_resources
from aima.settings import Settings
from aima.workers.settings import worker_settings
from aima.workers.worker import WakeableWorker

POSTGRES_URL = os.environ.get("AIMA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AIMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_configure(config: pytest.Config) -> None:
    # Plugins installed on the machine must not leak into tests.
    os.environ["AIMA_LOAD_PLUGINS"] = ""


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str
    mongo_url: str
    milvus_url: str
    s3_url: str
    s3_access_key: str
    s3_secret_key: str
    root: Path


def _create_database(name: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())


def _drop_database(name: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    root = make_runtime_root("aima-test-")
    ports = StackPorts.free()
    mongo = EmbeddedMongo(root / "mongo", ports.mongo)
    milvus = EmbeddedMilvus(root / "milvus", ports.milvus)
    s3 = EmbeddedS3(root / "s3", ports.s3, port_base=ports.s3_base)
    database = f"aima_test_{uuid.uuid4().hex[:10]}"
    started = []
    try:
        for server in (mongo, milvus, s3):
            server.start()
            started.append(server)
        _create_database(database)
        database_url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0]
        database_url = f"{database_url}/{database}"
        upgrade(database_url)
        yield Servers(
            database_url=database_url,
            redis_url=REDIS_URL,
            mongo_url=mongo.url,
            milvus_url=milvus.url,
            s3_url=s3.url,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            root=root,
        )
    finally:
        for server in reversed(started):
            server.stop()
        _drop_database(database)
        shutil.rmtree(root, ignore_errors=True)


#: The Redis key prefixes this session's settings use, removed at its end.
_SESSION_PREFIXES: list[str] = []


def settings_for(servers: Servers, **overrides: object) -> Settings:
    """Settings pointing at this session's servers, with a key prefix and queue of its own."""
    prefix = f"aima-test-{uuid.uuid4().hex[:8]}"
    _SESSION_PREFIXES.append(prefix)
    values: dict[str, object] = {
        "environment": "test",
        "database_url": servers.database_url,
        "mongo_url": servers.mongo_url,
        "mongo_database": prefix,
        "milvus_url": servers.milvus_url,
        "redis_url": servers.redis_url,
        "redis_prefix": prefix,
        "data_dir": servers.root / "data",
        "s3": {
            "endpoint_url": servers.s3_url,
            "access_key": servers.s3_access_key,
            "secret_key": servers.s3_secret_key,
            "bucket": prefix,
        },
        "worker": {"queue_name": f"{prefix}:queue:cpu"},
        "log_json": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    return settings_for(servers)


@pytest.fixture(scope="session")
def analyzers() -> AnalyzerRegistry:
    return AnalyzerRegistry(create_plugin_manager(load_external=False))


@pytest.fixture(scope="session")
async def resources(settings: Settings, analyzers: AnalyzerRegistry) -> AsyncIterator[Resources]:
    async with open_resources(settings, analyzers=analyzers) as opened:
        yield opened


@pytest.fixture(scope="session", autouse=True)
def _clean_redis_prefix() -> Iterator[None]:
    """Remove this session's keys (and only those: other sessions may share this Redis)."""
    yield
    client = redis_sync.Redis.from_url(REDIS_URL)
    try:
        for prefix in _SESSION_PREFIXES:
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
    finally:
        client.close()


@contextlib.contextmanager
def worker_thread(
    settings: Settings, *, analyzers: AnalyzerRegistry | None = None, **overrides: Any
) -> Iterator[WakeableWorker]:
    """A real worker (what `aima worker` runs) in a thread with its own event loop, stopped on exit.

    `analyzers` replaces the registry of the worker's resources (test analyzers registered through a plugin);
    `overrides` replace keyword arguments of `WakeableWorker` (``cron_jobs=[]``: no periodic jobs).
    """
    kwargs: dict[str, Any] = {**worker_settings(settings), "handle_signals": False, **overrides}
    if analyzers is not None:
        startup = kwargs["on_startup"]

        async def on_startup(ctx: dict[str, Any]) -> None:
            await startup(ctx)
            ctx["resources"] = dataclasses.replace(ctx["resources"], analyzers=analyzers)

        kwargs["on_startup"] = on_startup
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[WakeableWorker] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        worker = WakeableWorker(**kwargs)
        holder.append(worker)
        started.set()
        try:
            loop.run_until_complete(worker.async_run())
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(worker.close())

    thread = threading.Thread(target=run, name="arq-worker", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield holder[0]
    finally:
        if holder[0].main_task is not None:
            loop.call_soon_threadsafe(holder[0].main_task.cancel)
        thread.join(15)
