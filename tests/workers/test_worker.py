"""The wake-up worker: an idle worker starts a queued task at once when told, and polls anyway now and then."""

from __future__ import annotations

import asyncio
import uuid

from arq.connections import RedisSettings, create_pool

from aima.db.models import JobState, Role
from aima.events import wake_workers
from aima.resources import Resources, open_resources
from aima.services import jobs
from aima.services.access import Actor
from aima.services.jobs import TASK_FUNCTION, arq_job_id
from aima.settings import Settings
from aima.workers.worker import WakeableWorker
from tests.conftest import Servers, settings_for, worker_thread
from tests.workers.test_tasks import new_task, reload


def quiet_worker_settings(servers: Servers, idle_poll_s: float) -> Settings:
    queue = f"aima-test-{uuid.uuid4().hex[:8]}:queue:cpu"
    return settings_for(servers, worker={"queue_name": queue, "idle_poll_s": idle_poll_s})


async def wait_closed(resources: Resources, job_id: uuid.UUID, within_s: float) -> JobState:
    admin = Actor(user_id=uuid.uuid4(), email="admin@example.org", role=Role.ADMIN)
    async with asyncio.timeout(within_s):
        while True:
            async with resources.sessions() as session:
                job = await jobs.get_job(session=session, actor=admin, job_id=job_id)
            if job.state.terminal:
                return job.state
            await asyncio.sleep(0.05)


async def test_a_queued_task_wakes_an_idle_worker(servers: Servers) -> None:
    settings = quiet_worker_settings(servers, idle_poll_s=60)  # without the wake-up it would wait a minute
    async with open_resources(settings) as resources:
        task = await new_task(resources, "media-probe", version="1.0.0")
        with worker_thread(settings):
            await asyncio.sleep(0.3)  # the worker found nothing and is waiting
            await resources.arq.enqueue_job(TASK_FUNCTION, str(task.id), _job_id=arq_job_id(task.id))
            await wake_workers(resources.redis, settings.redis_prefix, settings.worker.queue_name)
            assert await wait_closed(resources, task.job_id, within_s=10) is JobState.SUCCEEDED


async def test_without_a_wake_up_an_idle_worker_still_polls(servers: Servers) -> None:
    settings = quiet_worker_settings(servers, idle_poll_s=0.3)
    async with open_resources(settings) as resources:
        task = await new_task(resources, "media-probe", version="1.0.0")
        with worker_thread(settings):
            await asyncio.sleep(0.3)
            await resources.arq.enqueue_job(TASK_FUNCTION, str(task.id), _job_id=arq_job_id(task.id))
            assert await wait_closed(resources, task.job_id, within_s=10) is JobState.SUCCEEDED
        stored, _ = await reload(resources, task)
        assert stored.attempts == 1


async def test_closing_with_a_run_that_was_cancelled_still_shuts_down(servers: Servers) -> None:
    """A stop signal can cancel a run outside arq's own handling; closing must still run on_shutdown, not raise."""
    shut_down: list[bool] = []

    async def on_shutdown(ctx: dict[str, object]) -> None:
        shut_down.append(True)

    async def never_called(ctx: dict[str, object]) -> None:
        raise AssertionError

    pool = await create_pool(RedisSettings.from_dsn(servers.redis_url))
    worker = WakeableWorker(
        functions=[never_called],  # type: ignore[list-item]
        redis_pool=pool,
        wake_channel=f"aima-test-{uuid.uuid4().hex[:8]}:wake",
        idle_poll_s=1.0,
        handle_signals=False,
        on_shutdown=on_shutdown,
        queue_name=f"aima-test-{uuid.uuid4().hex[:8]}:queue",
    )
    run = asyncio.ensure_future(asyncio.sleep(10))
    worker.tasks["run-1"] = run
    await asyncio.sleep(0)
    run.cancel()
    await worker.close()
    assert shut_down == [True] and worker.tasks == {}
