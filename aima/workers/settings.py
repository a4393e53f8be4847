"""The arq worker configuration, built from `Settings` when a worker starts (nothing connects at import)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from typing import Any

from arq.worker import func
from prometheus_client import start_http_server

from aima.config_sync import ConfigSync
from aima.events import wake_channel
from aima.resources import open_resources, redis_settings
from aima.services.jobs import TASK_FUNCTION
from aima.settings import Settings
from aima.workers.serialization import deserialize, serialize
from aima.workers.tasks import run_analysis_task, scratch_dir

logger = logging.getLogger(__name__)


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
