"""What the arq workers of one process share: clients, the runs in progress, their heartbeat, and cancellation.

`aima worker --resources cpu,llava` runs one arq worker per resource queue in one process (`aima.workers.runner`);
they share one `WorkerProcess`: one set of clients (`Resources`), one configuration follower, and one registry of
the task runs in progress. For those runs the process

- beats: every `worker.heartbeat_s` one statement refreshes `heartbeat_at` of all of them; the answer also says
  which belong to a job being cancelled and which are no longer this process's (the reconciler gave them to
  another worker after missed heartbeats), and those are stopped;
- listens on the Redis channel `task_runs.cancel_channel` for cancellation requests, and stops the runs of that job
  at once (the heartbeat is the fallback when the message was missed, e.g. while Redis restarted).

Stopping a run cancels the asyncio task doing its work; the task function then records the outcome
(`aima.workers.tasks`). Work in a thread (a blocking analyzer) cannot be interrupted: it goes on, and its result is
dropped when it returns.

Before it connects anywhere, the process checks that the models of the analyzers it runs (media and case analyzers
whose `runs_on` is one of the resources it serves) and of the text embedder are installed (`check_models`): a
missing one stops the worker at startup with the message saying how to install it, instead of failing every task
later.

The process's model endpoints (`aima.inference.Endpoints`, one connection pool and set of concurrency slots per
endpoint, `Resources.endpoints`) are made with its clients and closed when the process stops; analyzers get them
in their input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from aima import queues
from aima.analysis import Analyzer, CaseAnalyzer, ModelNotInstalled
from aima.config_sync import ConfigSync
from aima.db.vectors import TEXT_COLLECTION, TEXT_VECTORS
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources, open_resources
from aima.services import task_runs
from aima.services.task_runs import TaskRun
from aima.settings import Settings

logger = logging.getLogger(__name__)

#: How long a cancellation request is remembered for runs that register just after it arrived.
_REMEMBER_CANCELLED_S = 60.0


class StopReason:
    #: The job was cancelled: the run ends cancelled and nothing it made is kept.
    CANCELLED = "cancelled"
    #: The run is no longer this worker's (another worker runs the task now): leave the task's row alone.
    LOST = "lost"


@dataclass
class Running:
    """One run in progress in this process."""

    run: TaskRun
    #: The asyncio task doing the work, once it started.
    work: asyncio.Future[Any] | None = None
    #: Why it must stop, once it must.
    stop_reason: str | None = None
    started: float = field(default_factory=time.monotonic)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.work is not None and not self.work.done():
            self.work.cancel()

    def attach(self, work: asyncio.Future[Any]) -> None:
        self.work = work
        if self.stop_reason is not None:
            work.cancel()


def check_models(analyzers: AnalyzerRegistry, serves: Collection[str]) -> None:
    """Raise `ModelNotInstalled` naming every model missing for the analyzers that run on `serves` and for the text
    embedder (each plugin's message says how to install it). Cheap: plugins look for files, they load nothing."""
    problems: list[str] = []
    runnable: list[Analyzer | CaseAnalyzer] = [*analyzers.all(), *analyzers.case_analyzers()]
    for analyzer in runnable:
        if analyzer.runs_on in serves:
            try:
                analyzer.check()
            except ModelNotInstalled as exc:
                problems.append(f"analyzer {analyzer.name}: {exc}")
    embedder = analyzers.embedder()
    if embedder is None:
        logger.warning("no text embedder is installed: texts found by analyzers are not stored, search is off")
    else:
        try:
            embedder.check()
        except ModelNotInstalled as exc:
            problems.append(f"embedder {embedder.name}: {exc}")
        if embedder.dimension != TEXT_VECTORS.dimension:
            wanted = TEXT_VECTORS.dimension
            problems.append(
                f"embedder {embedder.name}: it makes {embedder.dimension}-dimensional vectors, {TEXT_COLLECTION} "
                f"holds {wanted}-dimensional ones; install an embedder of {wanted} dimensions"
            )
    if problems:
        raise ModelNotInstalled("; ".join(problems))


class WorkerProcess:
    """Started by the first of the process's arq workers (`acquire`) and stopped after the last (`release`)."""

    def __init__(self, settings: Settings, *, name: str | None = None, serves: Sequence[str] = (queues.CPU,)) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        #: The resources whose queues the process's workers take tasks from (`aima worker --resources`).
        self.serves = tuple(serves)
        self._users = 0
        self._lock = asyncio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._resources: Resources | None = None
        self.config_sync: ConfigSync | None = None
        self._running: dict[uuid.UUID, Running] = {}
        self._cancelled_jobs: dict[uuid.UUID, float] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._metrics_started = False

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            raise RuntimeError("the worker process has not started")
        return self._resources

    async def acquire(self) -> Resources:
        async with self._lock:
            if self._users == 0:
                await self._start()
            self._users += 1
            return self.resources

    async def release(self) -> bool:
        """Returns whether this was the last user (the process's clients are closed now)."""
        async with self._lock:
            if self._users == 0:  # an arq worker whose startup failed (a missing model) shuts down too
                return False
            self._users -= 1
            if self._users == 0:
                await self._stop()
                return True
            return False

    async def _start(self) -> None:
        analyzers = AnalyzerRegistry(create_plugin_manager(), self.settings.plugins)
        await asyncio.to_thread(check_models, analyzers, self.serves)
        stack = contextlib.AsyncExitStack()
        try:
            resources = await stack.enter_async_context(
                open_resources(self.settings, analyzers=analyzers, prepare=False)
            )
            self.config_sync = await stack.enter_async_context(ConfigSync(resources, role="worker"))
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._resources = stack, resources
        if self.settings.worker.metrics_port and not self._metrics_started:
            start_http_server(self.settings.worker.metrics_port, addr="127.0.0.1")
            self._metrics_started = True
        self._loops = [
            asyncio.create_task(self._beat(), name="aima-heartbeat"),
            asyncio.create_task(self._listen_for_cancellations(), name="aima-cancellations"),
        ]

    async def _stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        self._resources = None

    # Runs in progress.

    @contextlib.contextmanager
    def running(self, run: TaskRun) -> Iterator[Running]:
        """Register a run for heartbeats and cancellation while the caller works on it."""
        entry = Running(run)
        self._running[run.id] = entry
        if run.job_id in self._cancelled_jobs:
            entry.stop(StopReason.CANCELLED)
        try:
            yield entry
        finally:
            if self._running.get(run.id) is entry:
                del self._running[run.id]

    def runs(self) -> list[Running]:
        return list(self._running.values())

    def cancel_job(self, job_id: uuid.UUID) -> int:
        """Stop this process's runs of the job; remembered for a while for runs that register just after."""
        now = time.monotonic()
        self._cancelled_jobs[job_id] = now
        for known, at in list(self._cancelled_jobs.items()):
            if now - at > _REMEMBER_CANCELLED_S:
                del self._cancelled_jobs[known]
        stopped = 0
        for entry in self.runs():
            if entry.run.job_id == job_id and entry.stop_reason is None:
                entry.stop(StopReason.CANCELLED)
                stopped += 1
        if stopped:
            logger.info("job %s cancelled: stopping %d running tasks", job_id, stopped)
        return stopped

    async def beat_once(self) -> None:
        entries = [entry for entry in self.runs() if entry.stop_reason is None]
        if not entries:
            return
        pulse = await task_runs.heartbeat(resources=self.resources, runs=[entry.run for entry in entries])
        for entry in entries:
            if entry.run.id in pulse.cancelled:
                logger.info("task %s: its job was cancelled (seen at the heartbeat)", entry.run.id)
                entry.stop(StopReason.CANCELLED)
            elif entry.run.id in pulse.lost and self._running.get(entry.run.id) is entry:
                logger.warning("task %s: this run is no longer this worker's; stopping it", entry.run.id)
                entry.stop(StopReason.LOST)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.resources.settings.worker.heartbeat_s)
            try:
                await self.beat_once()
            except Exception:
                logger.warning("heartbeat failed; trying again", exc_info=True)

    async def _listen_for_cancellations(self) -> None:
        channel = task_runs.cancel_channel(self.settings.redis_prefix)
        while True:
            pubsub = self.resources.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._on_cancel_message(message["data"])
            except (RedisError, OSError) as exc:
                logger.warning("cancellation channel failed (%s); subscribing again", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_cancel_message(self, data: bytes | str) -> None:
        try:
            job_id = uuid.UUID(json.loads(data)["job_id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed cancellation message: %r", data[:200])
            return
        self.cancel_job(job_id)
