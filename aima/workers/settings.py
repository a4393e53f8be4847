"""The arq worker configuration, built from `Settings` when a worker starts (nothing connects at import)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from typing import Any

from arq.cron import CronJob, cron
from arq.worker import func
from prometheus_client import start_http_server

from aima.config_sync import ConfigSync
from aima.events import wake_channel
from aima.resources import Resources, open_resources, redis_settings
from aima.services import deletion, uploads
from aima.services.jobs import TASK_FUNCTION
from aima.settings import Settings
from aima.workers.serialization import deserialize, serialize
from aima.workers.tasks import run_analysis_task, scratch_dir

logger = logging.getLogger(__name__)

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


def cron_jobs() -> list[CronJob]:
    """The periodic jobs every worker schedules; arq runs each tick once across all workers (unique job ids)."""
    return [
        cron(retention_sweep, name="retention_sweep", minute=set(RETENTION_MINUTES), timeout=SWEEP_TIMEOUT_S),
        cron(orphan_sweep, name="orphan_sweep", minute=ORPHAN_SWEEP_MINUTE, timeout=SWEEP_TIMEOUT_S),
        cron(upload_sweep, name="upload_sweep", minute=UPLOAD_SWEEP_MINUTE, timeout=SWEEP_TIMEOUT_S),
    ]


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `WakeableWorker` (arq's `Worker` plus its wake-up channel); `aima worker` runs them."""
    exit_stack = contextlib.AsyncExitStack()
    analysis = func(run_analysis_task, name=TASK_FUNCTION, max_tries=settings.worker.max_tries)

    def follow_runtime_settings(current: Settings) -> None:
        # arq reads the limit from the function object for each delivery.
        analysis.max_tries = current.worker.max_tries

    async def on_startup(ctx: dict[str, Any]) -> None:
        resources = await exit_stack.enter_async_context(open_resources(settings, prepare=False))
        ctx["resources"] = resources
        ctx["config_sync"] = await exit_stack.enter_async_context(
            ConfigSync(resources, role="worker", listeners=[follow_runtime_settings])
        )
        ctx["worker_name"] = f"{socket.gethostname()}:{os.getpid()}"
        if settings.worker.metrics_port:
            start_http_server(settings.worker.metrics_port, addr="127.0.0.1")
        logger.info("worker %s ready on queue %s", ctx["worker_name"], settings.worker.queue_name)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await exit_stack.aclose()
        shutil.rmtree(scratch_dir(), ignore_errors=True)

    return {
        "functions": [analysis],
        "cron_jobs": cron_jobs(),
        "redis_settings": redis_settings(settings.redis_url),
        "queue_name": settings.worker.queue_name,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "poll_delay": settings.worker.poll_delay_s,
        "wake_channel": wake_channel(settings.redis_prefix, settings.worker.queue_name),
        "idle_poll_s": settings.worker.idle_poll_s,
        "max_jobs": settings.worker.max_jobs,
        "job_timeout": settings.worker.job_timeout_s,
        # PostgreSQL keeps each task's outcome; arq's result records would only be extra writes.
        "keep_result": 0,
        "health_check_interval": 30,
        "handle_signals": True,
    }
