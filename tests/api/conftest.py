from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from arq.worker import Worker
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Role
from aima.plugins import AnalyzerRegistry
from aima.settings import Settings
from aima.workers.settings import worker_settings
from aima.workers.worker import WakeableWorker
from tests.gql import PASSWORD, GraphQLClient, login, run_sync


@pytest.fixture(scope="session")
def http(settings: Settings, analyzers: AnalyzerRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(settings, analyzers=analyzers), headers={"origin": "http://127.0.0.1:8000"}) as client:
        yield client


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[Worker]:
    """A real arq worker on this session's queue, in a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[Worker] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        arq_worker = WakeableWorker(**{**worker_settings(settings), "handle_signals": False})
        holder.append(arq_worker)
        started.set()
        try:
            loop.run_until_complete(arq_worker.async_run())
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(arq_worker.close())

    thread = threading.Thread(target=run, name="arq-worker", daemon=True)
    thread.start()
    started.wait(10)
    yield holder[0]
    if holder[0].main_task is not None:
        loop.call_soon_threadsafe(holder[0].main_task.cancel)
    thread.join(15)


@dataclass
class People:
    admin: GraphQLClient
    owner: GraphQLClient
    other: GraphQLClient
    guest: GraphQLClient
    anonymous: GraphQLClient


@pytest.fixture(scope="session")
def people(http: TestClient, settings: Settings) -> People:
    tag = uuid.uuid4().hex[:6]
    clients = {}
    for name, role in (("admin", Role.ADMIN), ("owner", Role.USER), ("other", Role.USER), ("guest", Role.GUEST)):
        email = f"{name}-{tag}@example.org"
        run_sync(create_account(settings, email, PASSWORD, role))
        clients[name] = login(http, email)
    return People(**clients, anonymous=GraphQLClient(http))
