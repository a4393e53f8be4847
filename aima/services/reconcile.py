"""The reconciler: makes the queues in Redis agree with the tasks in PostgreSQL again.

PostgreSQL is the state of record and arq only the transport, so whatever goes wrong between the two is repaired
from PostgreSQL, by an arq cron job every `worker.reconcile_interval_s` seconds (`aima.workers.settings`):

- **Lost runs.** A running task whose heartbeat is older than `worker.heartbeat_timeout_s` lost its worker (killed,
  its machine gone, cut off). The run counts as an attempt: the task is queued again under a fresh arq job id (its
  new generation, see `task_runs.arq_job_id`), so the arq lock the vanished worker still holds on the old job,
  which would block that job for the function timeout (an hour), does not matter; when the lock expires the old job
  is skipped. A task that used up `worker.max_tries` runs fails (`WORKER_LOST`); one whose job is being cancelled
  ends cancelled (the requeue takes the job's row lock and re-checks, so a cancellation requested meanwhile is
  seen). A worker that was only slow notices at its next heartbeat that the run is no longer its own and stops it.
- **Leftovers of a cancellation.** A queued or waiting task of an open job whose cancellation was requested is never
  claimed: it is ended cancelled and the job closed when nothing of it runs any more (`task_runs.cancel_leftovers`).
- **Lost deliveries.** A queued or waiting task whose dependencies have succeeded must have its arq job in its
  queue. When Redis lost its data (a restart without persistence, a failover, a flush) the job is gone: the task
  is enqueued again, a waiting task for what remains of its backoff. Tasks that changed within the last
  `worker.heartbeat_timeout_s` are left alone (whoever changed them is about to enqueue them), and so are tasks of
  jobs being cancelled. The pass looks at `BATCH` tasks at a time in order of (creation, id), going on from where
  the last run stopped (a position kept in Redis, `<prefix>:reconcile:undelivered`) and starting over once past the
  last: tasks that stay queued (an endpoint without workers) cannot hide newer ones, and every waiting task is
  looked at within (waiting tasks / `BATCH`) + 1 runs.

Each repair is a guarded statement (the task must still be in the state it was seen in), so reconcilers of several
workers may run at once (they share the position); enqueueing an arq job that exists is a no-op.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import DateTime, Table, Uuid, and_, any_, bindparam, func, or_, select, tuple_, update

from aima import queues
from aima.db.models import OPEN_JOB_STATES, Job, Task, TaskState
from aima.resources import Resources
from aima.services import task_runs
from aima.services.task_runs import WAITING_STATES, arq_job_id

logger = logging.getLogger(__name__)

#: The error code of a task whose worker vanished while it ran.
WORKER_LOST = "WORKER_LOST"
#: Most tasks one reconciler run looks at in each pass (the next run goes on).
BATCH = 10_000
#: How long the position of the lost-deliveries pass is kept between runs.
POSITION_TTL_S = 24 * 3600

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
    #: Queued or waiting tasks left in jobs being cancelled, ended cancelled.
    leftovers: list[uuid.UUID] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"lost runs: {len(self.requeued)} requeued, {len(self.failed)} failed, {len(self.cancelled)} cancelled; "
            f"lost deliveries: {len(self.redelivered)}; left by a cancellation: {len(self.leftovers)}"
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
        ~task_runs.cancel_requested(),
    )
    .values(
        state=TaskState.QUEUED,
        heartbeat_at=bindparam("p_now"),
        progress=0.0,
        error_code=WORKER_LOST,
        error_message=bindparam("p_message"),
    )
    .returning(_tasks.c.id, _tasks.c.generation)
)
_CANCEL_REQUESTED = select(_jobs.c.cancel_requested_at.is_not(None)).where(_jobs.c.id == bindparam("p_job_id"))
#: Open jobs being cancelled that have queued or waiting tasks left.
_LEFTOVER_JOBS = (
    select(_tasks.c.job_id)
    .join(_jobs, _jobs.c.id == _tasks.c.job_id)
    .where(
        _tasks.c.state.in_(WAITING_STATES),
        _jobs.c.cancel_requested_at.is_not(None),
        _jobs.c.state.in_(OPEN_JOB_STATES),
    )
    .distinct()
    .limit(BATCH)
)


def _last_change() -> Any:
    """When the task last entered its state, as far as the row tells: its creation, its last state change by a
    worker or the reconciler (`heartbeat_at`), or the end of its last dependency."""
    dependency = _tasks.alias("dependency")
    dependencies_done = (
        select(func.max(dependency.c.finished_at)).where(dependency.c.id == any_(_tasks.c.depends_on)).scalar_subquery()
    )
    return func.greatest(_tasks.c.created_at, _tasks.c.heartbeat_at, dependencies_done)


_after_created = bindparam("p_after_created", type_=DateTime(timezone=True))
#: The next page of waiting tasks that should have a delivery, after position (`p_after_created`, `p_after_id`)
#: (None: from the start).
_UNDELIVERED = (
    select(
        _tasks.c.id,
        _tasks.c.generation,
        _tasks.c.resource,
        _tasks.c.priority,
        _tasks.c.next_attempt_at,
        _tasks.c.created_at,
    )
    .where(
        _tasks.c.state.in_(WAITING_STATES),
        or_(
            _after_created.is_(None),
            tuple_(_tasks.c.created_at, _tasks.c.id) > tuple_(_after_created, bindparam("p_after_id", type_=Uuid)),
        ),
        ~task_runs.unmet_dependencies(),
        ~task_runs.cancel_requested(),
        _last_change() < bindparam("p_cutoff"),
    )
    .order_by(_tasks.c.created_at, _tasks.c.id)
    .limit(BATCH)
)
_STILL_WAITING = select(_tasks.c.id).where(
    and_(
        _tasks.c.id == bindparam("p_task_id"),
        _tasks.c.state.in_(WAITING_STATES),
        _tasks.c.generation == bindparam("p_generation"),
        ~task_runs.cancel_requested(),
    )
)


async def reconcile(resources: Resources) -> Report:
    """One pass over lost runs, one over the leftovers of cancellations, then one over lost deliveries."""
    report = Report()
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=resources.settings.worker.heartbeat_timeout_s)
    await _recover_lost_runs(resources, report, now, cutoff)
    await _end_leftovers(resources, report)
    await _redeliver(resources, report, now, cutoff)
    if report.requeued or report.failed or report.cancelled or report.redelivered or report.leftovers:
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
            # Under the job's row lock: a cancellation requested since the task was read is seen.
            await task_runs.lock_job(conn, run.job_id)
            params = {
                "p_task_id": run.id,
                "p_job_id": run.job_id,
                "p_attempt": run.attempt,
                "p_cutoff": cutoff,
                "p_now": now,
                "p_message": message,
            }
            requeued = (await conn.execute(_REQUEUE_LOST, params)).first()
            cancelling = requeued is None and (await conn.execute(_CANCEL_REQUESTED, params)).scalar_one_or_none()
        if cancelling:
            if await task_runs.finish_task(resources=resources, run=run, state=TaskState.CANCELLED):
                report.cancelled.append(run.id)
            continue
        if requeued is None:
            continue  # its worker came back, or it ended meanwhile
        await task_runs.enqueue_task(
            resources=resources,
            task_id=run.id,
            resource=row.resource,
            priority=row.priority,
            generation=requeued.generation,
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


async def _end_leftovers(resources: Resources, report: Report) -> None:
    async with resources.engine.connect() as conn:
        job_ids = list((await conn.execute(_LEFTOVER_JOBS)).scalars())
    for job_id in job_ids:
        report.leftovers.extend(await task_runs.cancel_leftovers(resources=resources, job_id=job_id))


def _position_key(resources: Resources) -> str:
    return f"{resources.settings.redis_prefix}:reconcile:undelivered"


async def _next_page(resources: Resources, cutoff: datetime) -> list[Any]:
    """The next `BATCH` waiting tasks to look at, after the position the last run reached (from the start once past
    the last one); the position moves on to the last of them."""
    key = _position_key(resources)
    raw = await resources.redis.get(key)
    after: tuple[datetime, uuid.UUID] | None = None
    if raw is not None:
        created, _, task_id = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition("|")
        try:
            after = (datetime.fromisoformat(created), uuid.UUID(task_id))
        except ValueError:
            after = None
    rows: list[Any] = []
    async with resources.engine.connect() as conn:
        for start in (after, None) if after is not None else (None,):
            params = {
                "p_cutoff": cutoff,
                "p_after_created": start[0] if start else None,
                "p_after_id": start[1] if start else None,
            }
            rows = list(await conn.execute(_UNDELIVERED, params))
            if rows:
                break
    if rows:
        await resources.redis.set(key, f"{rows[-1].created_at.isoformat()}|{rows[-1].id}", ex=POSITION_TTL_S)
    elif after is not None:
        await resources.redis.delete(key)
    return rows


async def _redeliver(resources: Resources, report: Report, now: datetime, cutoff: datetime) -> None:
    candidates = await _next_page(resources, cutoff)
    if not candidates:
        return
    by_queue: dict[str, list[Any]] = defaultdict(list)
    for row in candidates:
        by_queue[queues.queue_name(resources.settings, row.resource)].append(row)
    missing: list[Any] = []
    for queue, rows in by_queue.items():
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            scores = await resources.arq.zmscore(queue, [arq_job_id(row.id, row.generation) for row in chunk])
            missing.extend(row for row, score in zip(chunk, scores, strict=True) if score is None)
    woken: set[str] = set()
    for row in missing:
        async with resources.engine.connect() as conn:
            params = {"p_task_id": row.id, "p_generation": row.generation}
            still = (await conn.execute(_STILL_WAITING, params)).first()
        if still is None:
            continue
        delay = row.next_attempt_at - now if row.next_attempt_at is not None else None
        await task_runs.enqueue_task(
            resources=resources,
            task_id=row.id,
            resource=row.resource,
            priority=row.priority,
            generation=row.generation,
            delay=delay if delay is not None and delay > timedelta() else None,
            replace=True,
        )
        woken.add(row.resource)
        report.redelivered.append(row.id)
    if woken:
        await task_runs.wake(resources, woken)
