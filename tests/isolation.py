"""A database of a test's own, for tests whose stored state (runtime settings) every process of a database reads."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from aima.db.migrate import upgrade
from tests.conftest import POSTGRES_URL, _create_database, _drop_database


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The SQLAlchemy URL of a new, migrated database on the test server, dropped on exit."""
    name = f"aima_test_own_{uuid.uuid4().hex[:8]}"
    _create_database(name)
    try:
        url = f"{POSTGRES_URL.replace('postgresql://', 'postgresql+asyncpg://').rsplit('/', 1)[0]}/{name}"
        upgrade(url)
        yield url
    finally:
        _drop_database(name)
