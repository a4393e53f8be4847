"""The hash chain on a database of its own: append, verify, refuse edits, find tampering."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import text

from aima.db.migrate import upgrade
from aima.services import audit
from aima.services.audit import AuditAction, AuditRecord
from tests.conftest import POSTGRES_URL


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    name = f"aima_audit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(upgrade, url)
    created = create_async_engine(url)
    try:
        yield created
    finally:
        await created.dispose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def fill(engine: AsyncEngine, count: int) -> None:
    for i in range(count):
        await audit.record(
            engine,
            AuditRecord(
                action=AuditAction.CASE_CREATE,
                actor_id=uuid.uuid4(),
                actor_email="a@example.org",
                target_type="case",
                target_id=str(uuid.uuid4()),
                client_address="127.0.0.1",
                details={"n": i, "title": "Hafenbrand, Zeugin Müller"},
            ),
        )


async def test_an_intact_chain_verifies(engine: AsyncEngine) -> None:
    await fill(engine, 5)
    report = await audit.verify_chain(engine, batch=2)
    assert (report.entries, report.first_broken_id) == (5, None)


async def test_concurrent_appends_keep_one_chain(engine: AsyncEngine) -> None:
    await asyncio.gather(*(fill(engine, 3) for _ in range(4)))
    report = await audit.verify_chain(engine)
    assert (report.entries, report.first_broken_id) == (12, None)


async def test_entries_cannot_be_changed_or_removed(engine: AsyncEngine) -> None:
    await fill(engine, 2)
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))


async def tamper(engine: AsyncEngine, statement: str, index: int) -> list[int]:
    """Run `statement` on the `index`-th entry past the trigger, as the database owner still could; return the ids."""
    async with engine.begin() as conn:
        ids = [row[0] for row in await conn.execute(text("SELECT id FROM audit_log ORDER BY id"))]
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete"))
        await conn.execute(text(statement), {"id": ids[index]})
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete"))
    return ids


async def test_tampering_names_the_first_broken_entry(engine: AsyncEngine) -> None:
    await fill(engine, 4)
    ids = await tamper(engine, "UPDATE audit_log SET details = '{\"n\": 99}' WHERE id = :id", 2)
    report = await audit.verify_chain(engine)
    assert report.first_broken_id == ids[2]
    assert "content" in (report.reason or "")


async def test_a_removed_entry_breaks_the_link_of_the_next(engine: AsyncEngine) -> None:
    await fill(engine, 4)
    ids = await tamper(engine, "DELETE FROM audit_log WHERE id = :id", 1)
    report = await audit.verify_chain(engine)
    assert report.first_broken_id == ids[2]
    assert "link" in (report.reason or "")
