"""The reconciler: makes the queues in Redis agree with the tasks in PostgreSQL again.

PostgreSQL is the state of record and arq only the transport, so whatever goes wrong between the two is repaired
from PostgreSQL, by an arq cron job every `worker.reconcile_interval_s` seconds (`aima.workers.settings`):

- **Lost runs.** A running task whose heartbeat is older than `worker.heartbeat_timeout_s` lost its worker (killed,
  its machine gone, cut off). The run counts as an attempt: the task is queued again under a fresh arq job id (its
  new generation, see `task_runs.arq_job_id`), so the arq lock the vanished worker still holds on the old job,
  which would block that job for the function timeout (an hour), does not matter; when the lock expires the old job
  is skipped. A task that used up `worker.max_tries` runs fails (`WORKER_LOST`); one whose job is being cancelled
  ends cancelled. A worker that was only slow notices at its next heartbeat that the run is no longer its own and
  stops it.
- **Lost deliveries.** A queued or waiting task whose dependencies have succeeded must have its arq job in its
  queue. When Redis lost its data (a restart without persistence, a failover, a flush) the job is gone: the task
  is enqueued again, a waiting task for what remains of its backoff. Tasks that changed within the last
  `worker.heartbeat_timeout_s` are left alone (whoever changed them is about to enqueue them).

Each repair is a guarded statement (the task must still be in the state it was seen in), so reconcilers of several
workers may run at once; enqueueing an arq job that exists is a no-op.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, any_, bindparam, func, select, update

from aima import queues
from aima.db.models import Job, Task, TaskState
from aima.resources import Resources
from aima.services import task_runs
from aima.services.task_runs import WAITING_STATES, arq_job_id

logger = logging.getLogger(__name__)

#: The error code of a task whose worker vanished while it ran.
WORKER_LOST = "WORKER_LOST"
#: Most tasks one reconciler run looks at in each pass (the next run goes on).
BATCH = 10_000

_tasks = cast(Table, Task.__table__)
_jobs = cast(Table, Job.__table__)


@dataclass
class Report:
    """What one reconciler run repaired."""

    #: Lost runs queued again, failed (out of attempts) and cancelled (their job is being cancelled).
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    cancelled: list[uuid.UUID] = field(default_factory=list)
    #: Queued or waiting tasks whose arq job was missing, enqueued again.
    redelivered: list[uuid.UUID] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"lost runs: {len(self.requeued)} requeued, {len(self.failed)} failed, {len(self.cancelled)} cancelled; "
            f"lost deliveries: {len(self.redelivered)}"
        )


@dataclass(frozen=True)
class _LostRun:
    id: uuid.UUID
    job_id: uuid.UUID
    analyzer: str
    attempt: int
    started_at: datetime


_LOST_RUNS = (
    select(
        _tasks.c.id,
        _tasks.c.job_id,
        _tasks.c.analyzer,
        _tasks.c.attempts,
        _tasks.c.started_at,
        _tasks.c.resource,
        _tasks.c.priority,
        _jobs.c.cancel_requested_at,
        _jobs.c.case_id,
    )
    .join(_jobs, _jobs.c.id == _tasks.c.job_id)
    .where(
        _tasks.c.state == TaskState.RUNNING,
        func.coalesce(_tasks.c.heartbeat_at, _tasks.c.started_at, _tasks.c.created_at) < bindparam("p_cutoff"),
    )
    .order_by(_tasks.c.heartbeat_at)
    .limit(BATCH)
)
_REQUEUE_LOST = (
    update(_tasks)
    .where(
        _tasks.c.id == bindparam("p_task_id"),
        _tasks.c.state == TaskState.RUNNING,
        _tasks.c.attempts == bindparam("p_attempt"),
        func.coalesce(_tasks.c.heartbeat_at, _tasks.c.started_at, _tasks.c.created_at) < bindparam("p_cutoff"),
    )
    .values(
        state=TaskState.QUEUED,
        heartbeat_at=bindparam("p_now"),
        progress=0.0,
        error_code=WORKER_LOST,
        error_message=bindparam("p_message"),
    )
    .returning(_tasks.c.id)
)


def _last_change() -> Any:
    """When the task last entered its state, as far as the row tells: its creation, its last state change by a
    worker or the reconciler (`heartbeat_at`), or the end of its last dependency."""
    dependency = _tasks.alias("dependency")
    dependencies_done = (
        select(func.max(dependency.c.finished_at)).where(dependency.c.id == any_(_tasks.c.depends_on)).scalar_subquery()
    )
    return func.greatest(_tasks.c.created_at, _tasks.c.heartbeat_at, dependencies_done)


_UNDELIVERED = (
    select(
        _tasks.c.id,
        _tasks.c.attempts,
        _tasks.c.resource,
        _tasks.c.priority,
        _tasks.c.next_attempt_at,
    )
    .where(
        _tasks.c.state.in_(WAITING_STATES),
        ~task_runs.unmet_dependencies(),
        _last_change() < bindparam("p_cutoff"),
    )
    .order_by(_tasks.c.created_at)
    .limit(BATCH)
)
_STILL_WAITING = select(_tasks.c.id).where(
    and_(
        _tasks.c.id == bindparam("p_task_id"),
        _tasks.c.state.in_(WAITING_STATES),
        _tasks.c.attempts == bindparam("p_attempt"),
    )
)


async def reconcile(resources: Resources) -> Report:
    """One pass over lost runs, then over lost deliveries."""
    report = Report()
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=resources.settings.worker.heartbeat_timeout_s)
    await _recover_lost_runs(resources, report, now, cutoff)
    await _redeliver(resources, report, now, cutoff)
    if report.requeued or report.failed or report.cancelled or report.redelivered:
        logger.warning("reconciler: %s", report)
    return report


async def _recover_lost_runs(resources: Resources, report: Report, now: datetime, cutoff: datetime) -> None:
    async with resources.engine.connect() as conn:
        lost = list(await conn.execute(_LOST_RUNS, {"p_cutoff": cutoff}))
    max_tries = resources.settings.worker.max_tries
    woken: set[str] = set()
    for row in lost:
        run = _LostRun(
            id=row.id, job_id=row.job_id, analyzer=row.analyzer, attempt=row.attempts, started_at=row.started_at
        )
        if row.cancel_requested_at is not None:
            if await task_runs.finish_task(resources=resources, run=run, state=TaskState.CANCELLED):
                report.cancelled.append(run.id)
            continue
        if run.attempt >= max_tries:
            message = f"Its worker stopped responding while it ran, {run.attempt} times; it was not tried again."
            state = await task_runs.finish_task(
                resources=resources, run=run, state=TaskState.FAILED, error_code=WORKER_LOST, error_message=message
            )
            if state is not None:
                report.failed.append(run.id)
            continue
        message = f"Its worker stopped responding during run {run.attempt}; it runs again."
        async with resources.engine.begin() as conn:
            params = {
                "p_task_id": run.id,
                "p_attempt": run.attempt,
                "p_cutoff": cutoff,
                "p_now": now,
                "p_message": message,
            }
            requeued = (await conn.execute(_REQUEUE_LOST, params)).first()
        if requeued is None:
            continue  # its worker came back, or it ended meanwhile
        await task_runs.enqueue_task(
            resources=resources,
            task_id=run.id,
            resource=row.resource,
            priority=row.priority,
            generation=run.attempt,
        )
        woken.add(row.resource)
        report.requeued.append(run.id)
        logger.warning("task %s (%s) lost its worker during run %d; queued again", run.id, run.analyzer, run.attempt)
        await task_runs.publish_task_event(
            resources,
            run.job_id,
            run,
            TaskState.QUEUED,
            f"{run.analyzer} will run again: {message}",
            WORKER_LOST,
            row.case_id,
        )
    if woken:
        await task_runs.wake(resources, woken)


async def _redeliver(resources: Resources, report: Report, now: datetime, cutoff: datetime) -> None:
    async with resources.engine.connect() as conn:
        candidates = list(await conn.execute(_UNDELIVERED, {"p_cutoff": cutoff}))
    if not candidates:
        return
    by_queue: dict[str, list[Any]] = defaultdict(list)
    for row in candidates:
        by_queue[queues.queue_name(resources.settings, row.resource)].append(row)
    missing: list[Any] = []
    for queue, rows in by_queue.items():
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            scores = await resources.arq.zmscore(queue, [arq_job_id(row.id, row.attempts) for row in chunk])
            missing.extend(row for row, score in zip(chunk, scores, strict=True) if score is None)
    woken: set[str] = set()
    for row in missing:
        async with resources.engine.connect() as conn:
            still = (await conn.execute(_STILL_WAITING, {"p_task_id": row.id, "p_attempt": row.attempts})).first()
        if still is None:
            continue
        delay = row.next_attempt_at - now if row.next_attempt_at is not None else None
        await task_runs.enqueue_task(
            resources=resources,
            task_id=row.id,
            resource=row.resource,
            priority=row.priority,
            generation=row.attempts,
            delay=delay if delay is not None and delay > timedelta() else None,
            replace=True,
        )
        woken.add(row.resource)
        report.redelivered.append(row.id)
    if woken:
        await task_runs.wake(resources, woken)
