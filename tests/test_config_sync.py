"""How a process follows the runtime settings: at start, on announcements, after lost ones and dropped connections."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from aima.config_sync import ConfigSync
from aima.db.models import Role, User
from aima.errors import Forbidden, InvalidInput
from aima.plugins import AnalyzerRegistry
from aima.resources import Resources, open_resources
from aima.services import runtime_settings
from aima.services.access import Actor
from aima.settings import Settings
from tests.conftest import Servers, settings_for
from tests.isolation import fresh_database

ADMIN = Actor(user_id=uuid.uuid4(), email="admin@example.org", role=Role.ADMIN)


@pytest.fixture
def own_database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
async def resources(servers: Servers, analyzers: AnalyzerRegistry, own_database: str) -> AsyncIterator[Resources]:
    settings = settings_for(servers, database_url=own_database)
    async with open_resources(settings, analyzers=analyzers, prepare=False) as opened:
        async with opened.sessions() as session, session.begin():  # the admin, for `updated_by`
            session.add(User(id=ADMIN.user_id, email=ADMIN.email, password_hash="-", role=Role.ADMIN))
        yield opened


async def store(resources: Resources, key: str, value: Any) -> None:
    """An override written straight into the table: no check, no announcement."""
    async with resources.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO runtime_settings (key, value, version) "
                "VALUES (:key, CAST(:value AS jsonb), nextval('runtime_settings_version'))"
            ),
            {"key": key, "value": json.dumps(value)},
        )


async def eventually(check: Any, within_s: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        assert loop.time() - started < within_s, "not within the time allowed"
        await asyncio.sleep(0.01)
    return loop.time() - started


async def test_stored_overrides_apply_before_the_process_serves(resources: Resources) -> None:
    await store(resources, "max_upload_bytes", 1234)
    seen: list[Settings] = []
    async with ConfigSync(resources, role="test", listeners=[seen.append]) as sync:
        assert resources.settings.max_upload_bytes == 1234
        assert resources.base_settings.max_upload_bytes == 2 * 1024**3
        assert [s.max_upload_bytes for s in seen] == [1234]
        [entry] = await runtime_settings.applied_versions(resources.redis, resources.settings.redis_prefix)
        assert entry.process == sync.process_id and entry.values["max_upload_bytes"] == 1234
    assert await runtime_settings.applied_versions(resources.redis, resources.settings.redis_prefix) == []


async def test_an_announced_change_and_its_reset_apply_at_once(resources: Resources) -> None:
    async with ConfigSync(resources, role="test") as sync:
        change = await runtime_settings.set_runtime_setting(
            resources=resources, actor=ADMIN, key="auth.registration", value="closed"
        )
        assert (change.previous, change.value) == ("open", "closed")
        elapsed = await eventually(lambda: resources.settings.auth.registration == "closed", 2.0)
        assert sync.version == change.version and elapsed < 2.0
        reset = await runtime_settings.reset_runtime_setting(resources=resources, actor=ADMIN, key="auth.registration")
        assert reset.version is not None and reset.version > change.version
        await eventually(lambda: resources.settings.auth.registration == "open", 2.0)
        again = await runtime_settings.reset_runtime_setting(resources=resources, actor=ADMIN, key="auth.registration")
        assert again.version is None  # nothing to reset


async def test_a_lost_announcement_is_caught_up_by_the_periodic_resync(resources: Resources) -> None:
    async with ConfigSync(resources, role="test", resync_s=0.3):
        await store(resources, "readiness_timeout_s", 0.5)  # stored, never announced
        await eventually(lambda: resources.settings.readiness_timeout_s == 0.5, 2.0)


async def test_changes_still_arrive_after_redis_drops_the_connection(resources: Resources) -> None:
    async with ConfigSync(resources, role="test") as sync:
        pubsub = sync._pubsub
        assert pubsub is not None and pubsub.connection is not None
        host, port = pubsub.connection._writer.get_extra_info("sockname")[:2]  # type: ignore[attr-defined]
        assert (
            await resources.redis.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}") == 1
        )  # one client killed
        await runtime_settings.set_runtime_setting(resources=resources, actor=ADMIN, key="worker.max_tries", value=6)
        await eventually(lambda: resources.settings.worker.max_tries == 6, 3.0)
        await runtime_settings.set_runtime_setting(resources=resources, actor=ADMIN, key="worker.max_tries", value=8)
        await eventually(lambda: resources.settings.worker.max_tries == 8, 2.0)


async def test_an_override_that_no_longer_validates_is_skipped(
    resources: Resources, caplog: pytest.LogCaptureFixture
) -> None:
    await store(resources, "max_upload_bytes", "junk")
    await store(resources, "auth.jwt_secret", "stored-behind-our-back")
    await store(resources, "worker.max_tries", 4)
    with caplog.at_level(logging.INFO):
        async with ConfigSync(resources, role="test"):
            assert resources.settings.worker.max_tries == 4
            assert resources.settings.max_upload_bytes == resources.base_settings.max_upload_bytes
            assert resources.settings.auth.jwt_secret == resources.base_settings.auth.jwt_secret
    assert "runtime setting max_upload_bytes is not applied" in caplog.text
    assert "runtime setting auth.jwt_secret is not applied" in caplog.text
    assert "stored-behind-our-back" not in caplog.text
    report = await runtime_settings.runtime_report(resources=resources, actor=ADMIN)
    sources = {s.spec.key: s.source for s in report.settings}
    assert sources["worker.max_tries"] == "runtime" and sources["max_upload_bytes"] == "default"


async def test_the_log_level_applies_to_logging(resources: Resources) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        async with ConfigSync(resources, role="test"):
            await runtime_settings.set_runtime_setting(resources=resources, actor=ADMIN, key="log_level", value="error")
            await eventually(lambda: root.level == logging.ERROR, 2.0)
            assert resources.settings.log_level == "ERROR"
            assert logging.getLogger("botocore").level == logging.ERROR
    finally:
        root.setLevel(level)


async def test_the_service_layer_checks_the_actor_and_the_value(resources: Resources) -> None:
    user = Actor(user_id=uuid.uuid4(), email="user@example.org", role=Role.USER)
    with pytest.raises(Forbidden):
        await runtime_settings.set_runtime_setting(resources=resources, actor=user, key="log_level", value="DEBUG")
    with pytest.raises(Forbidden):
        await runtime_settings.reset_runtime_setting(resources=resources, actor=user, key="log_level")
    with pytest.raises(Forbidden):
        await runtime_settings.runtime_report(resources=resources, actor=user)
    with pytest.raises(Forbidden):
        runtime_settings.redacted_configuration(resources=resources, actor=user)
    with pytest.raises(InvalidInput, match=r"Invalid value for auth\.throttle_window_s"):
        await runtime_settings.set_runtime_setting(
            resources=resources, actor=ADMIN, key="auth.throttle_window_s", value=-1
        )
    assert (await runtime_settings.load_overrides(resources.engine)).items == {}
