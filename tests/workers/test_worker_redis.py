"""A worker outlives Redis failures: a failed poll is retried after a backoff, and a failure while a job starts
gives its slot back (arq would keep it taken). The whole restart, with real processes, is in tests/test_faults.py."""

from __future__ import annotations

from typing import Any

import pytest
from arq.connections import create_pool
from redis.exceptions import ConnectionError as RedisConnectionError

from aima.resources import redis_settings
from aima.workers.settings import worker_settings
from aima.workers.worker import WakeableWorker
from tests.conftest import Servers
from tests.workers.jobs import job_settings


async def test_a_redis_error_while_a_job_starts_gives_its_slot_back(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = job_settings(servers, max_jobs=1)
    worker = WakeableWorker(**{**worker_settings(settings), "handle_signals": False, "cron_jobs": []})
    pool = await create_pool(redis_settings(settings.redis_url))
    worker._pool = pool
    try:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("Connection refused")

        monkeypatch.setattr(pool, "pipeline", broken)
        for _ in range(3):
            with pytest.raises(RedisConnectionError):
                await worker.start_jobs([b"task:x"])
            assert worker.job_counter == 0
        # The poll loop logs the failure and carries on instead of ending the worker.
        monkeypatch.setattr(pool, "zrangebyscore", broken)
        await worker._poll_iteration()
        assert worker.job_counter == 0 and worker._redis_failures == 1
    finally:
        await pool.aclose()
