"""The arq worker configuration, built from `Settings` when a worker starts (nothing connects at import).

A worker process runs one arq worker per resource it serves (`aima worker --resources cpu,llava`), each on that
resource's queue (`aima.queues`), and one more for the periodic jobs (the reconciler and the sweeps) on a queue of
their own: arq gives a periodic job the score of its start time, and queued tasks sort before it (their priority
moves their score back by hours), so on a busy task queue it would wait for the whole backlog. They share one
`WorkerProcess` (clients, heartbeats, cancellation).
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from arq.cron import CronJob, cron
from arq.worker import func

from aima import queues
from aima.events import wake_channel
from aima.resources import Resources, redis_settings
from aima.services import deletion, identities, reconcile, uploads
from aima.services.task_runs import TASK_FUNCTION
from aima.settings import Settings
from aima.workers.process import WorkerProcess
from aima.workers.serialization import deserialize, serialize
from aima.workers.tasks import run_analysis_task, scratch_dir

logger = logging.getLogger(__name__)

#: The queue of the periodic jobs (not a resource any task runs on).
PERIODIC = "_periodic"
#: arq's own limit on deliveries of one arq job. PostgreSQL counts a task's runs (`worker.max_tries`), and a run
#: interrupted by a worker's shutdown is redelivered by arq under the same job id without counting, so arq's limit
#: only stops a job that keeps killing its workers.
ARQ_MAX_TRIES = 100
#: Longest one run of the reconciler may take.
RECONCILE_TIMEOUT_S = 120

#: Minutes of each hour at which the retention sweep runs, and the one at which the orphan sweep runs.
RETENTION_MINUTES = frozenset(range(0, 60, 10))
ORPHAN_SWEEP_MINUTE = 35
#: Minute of each hour at which abandoned resumable uploads are aborted.
UPLOAD_SWEEP_MINUTE = 5
#: Longest one run of either sweep may take (each does a bounded batch; the next run goes on).
SWEEP_TIMEOUT_S = 540


async def retention_sweep(ctx: dict[str, Any]) -> str:
    """arq cron job: delete media older than `retention_days` (read live, so a runtime change applies at once)."""
    resources: Resources = ctx["resources"]
    report = await deletion.apply_retention(resources)
    if not report.retention_days:
        return "off"
    return f"deleted {report.deleted}" + (" (stopped: a store is unavailable)" if report.stopped else "")


async def orphan_sweep(ctx: dict[str, Any]) -> str:
    """arq cron job: re-clean the stores under S3 prefixes whose case or media row is gone."""
    resources: Resources = ctx["resources"]
    return f"cleaned {len(await deletion.sweep_orphans(resources))}"


async def upload_sweep(ctx: dict[str, Any]) -> str:
    """arq cron job: abort resumable uploads past their expiry, and multipart uploads no upload row knows."""
    resources: Resources = ctx["resources"]
    return f"aborted {await uploads.sweep_abandoned_uploads(resources)}"


async def reconcile_queues(ctx: dict[str, Any]) -> str:
    """arq cron job: re-enqueue tasks whose worker vanished or whose arq job Redis lost (`aima.services.reconcile`),
    and cluster the faces and voices of analyses whose clustering was lost (`aima.services.identities.reconcile`)."""
    resources: Resources = ctx["resources"]
    report = await reconcile.reconcile(resources)
    try:
        clustered = await identities.reconcile(resources)
    except Exception:  # the queues matter more; the next tick tries the clustering again
        logger.exception("reconciling persons and voices failed")
        clustered = None
    return f"{report}; identities {clustered}"


def cron_jobs(settings: Settings, *, reconcile: bool = True) -> list[CronJob]:
    """The periodic jobs every worker process schedules; arq runs each tick once across all workers (unique ids)."""
    every = settings.worker.reconcile_interval_s
    reconciler = cron(
        reconcile_queues,
        name="reconcile",
        second=set(range(0, 60, every)),
        timeout=RECONCILE_TIMEOUT_S,
        max_tries=1,
    )
    return [
        *([reconciler] if reconcile else []),
        cron(retention_sweep, name="retention_sweep", minute=set(RETENTION_MINUTES), timeout=SWEEP_TIMEOUT_S),
        cron(orphan_sweep, name="orphan_sweep", minute=ORPHAN_SWEEP_MINUTE, timeout=SWEEP_TIMEOUT_S),
        cron(upload_sweep, name="upload_sweep", minute=UPLOAD_SWEEP_MINUTE, timeout=SWEEP_TIMEOUT_S),
    ]


def worker_settings(
    settings: Settings,
    resource: str = queues.CPU,
    *,
    process: WorkerProcess | None = None,
    periodic: bool = True,
    reconcile: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for a `WakeableWorker` (arq's `Worker` plus its wake-up channel) on one resource's queue.

    Workers of one process pass the same `process`; without one, the worker has a process of its own. `periodic`:
    the worker also schedules the sweeps on its own queue (`aima worker` gives the periodic jobs a worker of their
    own instead), and with `reconcile` the reconciler too. The reconciler takes every task in the database for one
    of this deployment's (this Redis prefix's) queues, so only whole deployments run it: `aima worker` does.
    """
    process = process or WorkerProcess(settings, serves=(resource,))
    queue = queues.queue_name(settings, resource)
    analysis = func(run_analysis_task, name=TASK_FUNCTION, max_tries=ARQ_MAX_TRIES)

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["resources"] = await process.acquire()
        ctx["process"] = process
        ctx["worker_name"] = process.name
        logger.info("worker %s ready on queue %s", process.name, queue)

    return {
        **_common(settings, process, on_startup),
        "functions": [analysis],
        "cron_jobs": cron_jobs(settings, reconcile=reconcile) if periodic else [],
        "queue_name": queue,
        "wake_channel": wake_channel(settings.redis_prefix, queue),
        "max_jobs": settings.worker.max_jobs,
        "job_timeout": settings.worker.job_timeout_s,
    }


def periodic_worker_settings(settings: Settings, *, process: WorkerProcess) -> dict[str, Any]:
    """Keyword arguments for the process's worker of periodic jobs (the reconciler, the sweeps)."""
    queue = queues.queue_name(settings, PERIODIC)

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["resources"] = await process.acquire()
        ctx["process"] = process
        ctx["worker_name"] = process.name

    return {
        **_common(settings, process, on_startup),
        "functions": [],
        "cron_jobs": cron_jobs(settings),
        "queue_name": queue,
        "wake_channel": wake_channel(settings.redis_prefix, queue),
        "max_jobs": 4,
        "job_timeout": SWEEP_TIMEOUT_S,
    }


def _common(settings: Settings, process: WorkerProcess, on_startup: Any) -> dict[str, Any]:
    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if await process.release():
            shutil.rmtree(scratch_dir(), ignore_errors=True)

    return {
        "redis_settings": redis_settings(settings.redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "poll_delay": settings.worker.poll_delay_s,
        "idle_poll_s": settings.worker.idle_poll_s,
        # PostgreSQL keeps each task's outcome; arq's result records would only be extra writes.
        "keep_result": 0,
        "health_check_interval": 30,
        "handle_signals": True,
    }
