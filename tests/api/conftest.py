from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Role
from aima.plugins import AnalyzerRegistry
from aima.settings import Settings
from aima.workers.worker import WakeableWorker
from tests.conftest import worker_thread
from tests.gql import PASSWORD, GraphQLClient, login, run_sync


@pytest.fixture(scope="session")
def http(settings: Settings, analyzers: AnalyzerRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(settings, analyzers=analyzers), headers={"origin": "http://127.0.0.1:8000"}) as client:
        yield client


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[WakeableWorker]:
    """A real arq worker on this session's queue, in a thread with its own event loop."""
    with worker_thread(settings) as running:
        yield running


@dataclass
class People:
    admin: GraphQLClient
    owner: GraphQLClient
    other: GraphQLClient
    viewer: GraphQLClient
    guest: GraphQLClient
    anonymous: GraphQLClient
    #: Each person's email, by attribute name.
    emails: dict[str, str]


@pytest.fixture(scope="session")
def people(http: TestClient, settings: Settings) -> People:
    tag = uuid.uuid4().hex[:6]
    clients = {}
    emails = {}
    accounts = (
        ("admin", Role.ADMIN),
        ("owner", Role.USER),
        ("other", Role.USER),
        ("viewer", Role.USER),
        ("guest", Role.GUEST),
    )
    for name, role in accounts:
        emails[name] = email = f"{name}-{tag}@example.org"
        run_sync(create_account(settings, email, PASSWORD, role))
        clients[name] = login(http, email)
    return People(**clients, anonymous=GraphQLClient(http), emails=emails)
