"""The state changes a worker makes to a task and its job, with the events that tell subscribers.

These run once or twice per task on the hot path, so each is one SQL statement built once (data-modifying CTEs),
not a series of ORM round trips.

Dependencies: a task lists in `depends_on` the tasks that must succeed before it is handed to a worker (the
preparation tasks of its job: keyframes, audio track). Such a task stays queued in PostgreSQL without an arq job.
The finish of a task with waiting dependents does one more statement in the same transaction, under the job's row
lock that every finisher of the job takes: a success selects the dependents whose dependencies have now all
succeeded, which are then enqueued (only the last dependency to succeed sees them ready, so each is enqueued once;
arq's job id guards a repeat); a failure fails the dependents with `PREPARATION_FAILED` and the reason.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import (
    Boolean,
    Select,
    Table,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from aima import queues
from aima.analysis import MediaKind
from aima.db.models import TERMINAL_TASK_STATES, Job, JobState, Media, Task, TaskState
from aima.errors import AimaError, BackendUnavailable
from aima.events import JobEvent, publish, wake_workers
from aima.resources import Resources

logger = logging.getLogger(__name__)

#: The arq function every task (analysis or preparation) is delivered to.
TASK_FUNCTION = "run_analysis_task"
#: The error code of a task whose preparation failed.
PREPARATION_FAILED = "PREPARATION_FAILED"

_tasks = cast(Table, Task.__table__)
_jobs = cast(Table, Job.__table__)
_media = cast(Table, Media.__table__)


@dataclass(frozen=True)
class MediaFacts:
    case_id: uuid.UUID
    kind: MediaKind
    content_type: str
    size_bytes: int
    sha256: str
    storage_key: str
    #: The sniffed format (jpeg, mp4, ...), which picks the demuxer when the file is decoded.
    format: str = ""


class _TaskRef(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def analyzer(self) -> str: ...


def arq_job_id(task_id: uuid.UUID | str) -> str:
    """One arq job per task: arq refuses a second enqueue of the same id while the first is known."""
    return f"task:{task_id}"


@dataclass(frozen=True)
class TaskRun:
    """A task a worker has claimed (its `attempt`-th run), with the facts of its media it needs."""

    id: uuid.UUID
    job_id: uuid.UUID
    analyzer: str
    analyzer_version: str
    media_id: uuid.UUID
    attempt: int
    media: MediaFacts


# Bind parameters are prefixed with p_: an UPDATE given a parameter named like one of its columns sets it.


def _claim_statement() -> Select[Any]:
    """Mark a task running (a redelivered running task too: its worker is gone) and its job; return the task
    with its media. Media deletion cascades to tasks, so the inner join finds the media whenever it finds the task."""
    claimed = (
        update(_tasks)
        .where(_tasks.c.id == bindparam("p_task_id"), _tasks.c.state.not_in(TERMINAL_TASK_STATES))
        .values(
            state=TaskState.RUNNING,
            attempts=_tasks.c.attempts + 1,
            worker=bindparam("p_worker"),
            started_at=bindparam("p_now"),
            heartbeat_at=bindparam("p_now"),
            progress=0.0,
            error_code=None,
            error_message=None,
        )
        .returning(
            _tasks.c.id,
            _tasks.c.job_id,
            _tasks.c.media_id,
            _tasks.c.analyzer,
            _tasks.c.analyzer_version,
            _tasks.c.attempts,
        )
        .cte("claimed")
    )
    job_running = (
        update(_jobs)
        .where(_jobs.c.id.in_(select(claimed.c.job_id)), _jobs.c.state == JobState.QUEUED)
        .values(state=JobState.RUNNING)
        .cte("job_running")
    )
    return (
        select(
            claimed,
            _media.c.case_id,
            _media.c.kind,
            _media.c.content_type,
            _media.c.size_bytes,
            _media.c.sha256,
            _media.c.storage_key,
            _media.c.format,
        )
        .join_from(claimed, _media, _media.c.id == claimed.c.media_id)
        .add_cte(job_running)
    )


def _finish_statement() -> Select[Any]:
    """Record the end of this run of a task and, when no other task of its job is open, close the job.

    The task only changes while it is still this run's (running, same attempt): a stale duplicate cannot
    overwrite a newer outcome. PostgreSQL runs a data-modifying CTE whether or not anything reads it, and the
    statement does not see its own CTE's update: "other tasks" exclude this one, and its new state counts apart.
    """
    finished = (
        update(_tasks)
        .where(
            _tasks.c.id == bindparam("p_task_id"),
            _tasks.c.state == TaskState.RUNNING,
            _tasks.c.attempts == bindparam("p_attempt"),
        )
        .values(
            state=bindparam("p_state", type_=_tasks.c.state.type),
            finished_at=bindparam("p_now"),
            heartbeat_at=bindparam("p_now"),
            error_code=bindparam("p_error_code"),
            error_message=bindparam("p_error_message"),
            progress=bindparam("p_progress"),
        )
        .returning(_tasks.c.id)
        .cte("finished")
    )
    closed = _close_job_statement(exists(select(finished.c.id))).cte("closed")
    return select(
        select(func.count()).select_from(finished).scalar_subquery().label("finished"),
        select(closed.c.state).scalar_subquery().label("job_state"),
        select(func.count()).where(_waiting_dependents()).scalar_subquery().label("dependents"),
    )


def _waiting_dependents() -> Any:
    """Queued tasks of job `p_job_id` that wait for task `p_task_id`."""
    return and_(
        _tasks.c.job_id == bindparam("p_job_id"),
        bindparam("p_task_id", type_=Uuid) == any_(_tasks.c.depends_on),
        _tasks.c.state == TaskState.QUEUED,
    )


def _ready_statement() -> Select[Any]:
    """The waiting dependents of `p_task_id` whose every dependency has succeeded (run after its success)."""
    other = _tasks.alias("dependency")
    unmet = exists().where(other.c.id == any_(_tasks.c.depends_on), other.c.state != TaskState.SUCCEEDED)
    return select(_tasks.c.id, _tasks.c.analyzer).where(_waiting_dependents(), ~unmet).order_by(_tasks.c.analyzer)


def _fail_dependents_statement() -> Any:
    """Fail the waiting dependents of `p_task_id` (run after it failed for good)."""
    return (
        update(_tasks)
        .where(_waiting_dependents())
        .values(
            state=TaskState.FAILED,
            error_code=PREPARATION_FAILED,
            error_message=bindparam("p_error_message"),
            finished_at=bindparam("p_now"),
            progress=0.0,
        )
        .returning(_tasks.c.id, _tasks.c.analyzer)
    )


def _close_job_statement(also: Any = literal(True)) -> Any:
    """Close the job `p_job_id` when no task other than `p_task_ids` is open; failed when any failed."""
    others = and_(_tasks.c.job_id == bindparam("p_job_id"), _tasks.c.id.not_in(bindparam("p_task_ids", expanding=True)))
    others_open = exists().where(others, _tasks.c.state.not_in(TERMINAL_TASK_STATES))
    failed = or_(exists().where(others, _tasks.c.state == TaskState.FAILED), bindparam("p_these_failed", type_=Boolean))
    state_type = _jobs.c.state.type
    return (
        update(_jobs)
        .where(
            _jobs.c.id == bindparam("p_job_id"),
            _jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING]),
            ~others_open,
            also,
        )
        .values(
            state=case((failed, literal(JobState.FAILED, state_type)), else_=literal(JobState.SUCCEEDED, state_type)),
            finished_at=bindparam("p_now"),
        )
        .returning(_jobs.c.state)
    )


_CLAIM = _claim_statement()
_FINISH = _finish_statement()
_READY = _ready_statement()
_FAIL_DEPENDENTS = _fail_dependents_statement()
_TASK_STATE = select(_tasks.c.job_id, _tasks.c.state).where(_tasks.c.id == bindparam("p_task_id"))
_LOCK_JOB = select(_jobs.c.id).where(_jobs.c.id == bindparam("p_job_id")).with_for_update()


async def start_task(*, resources: Resources, task_id: uuid.UUID, worker: str) -> TaskRun | None:
    """Claim a task for this worker; None when it is unknown or already finished (a late duplicate delivery)."""
    async with resources.engine.begin() as conn:
        params = {"p_task_id": task_id, "p_worker": worker, "p_now": datetime.now(UTC)}
        row = (await conn.execute(_CLAIM, params)).first()
    if row is None:
        return None
    media = MediaFacts(
        case_id=row.case_id,
        kind=MediaKind(row.kind),
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        storage_key=row.storage_key,
        format=row.format,
    )
    run = TaskRun(
        id=row.id,
        job_id=row.job_id,
        analyzer=row.analyzer,
        analyzer_version=row.analyzer_version,
        media_id=row.media_id,
        attempt=row.attempts,
        media=media,
    )
    await _publish(resources, run.job_id, JobState.RUNNING, run, TaskState.RUNNING, 0.0, f"{run.analyzer} started")
    return run


async def requeue_task(*, resources: Resources, run: TaskRun, reason: AimaError) -> None:
    """Put this run's task back in line (a transient error, or the worker stopping); its next delivery reruns it."""
    async with resources.engine.begin() as conn:
        await conn.execute(
            update(_tasks)
            .where(_tasks.c.id == run.id, _tasks.c.state == TaskState.RUNNING, _tasks.c.attempts == run.attempt)
            .values(state=TaskState.QUEUED, error_code=reason.code, error_message=reason.message)
        )
    message = f"{run.analyzer} will run again: {reason.message}"
    await _publish(resources, run.job_id, JobState.RUNNING, run, TaskState.QUEUED, 0.0, message, reason.code)


async def report_progress(*, resources: Resources, run: TaskRun, progress: float, message: str) -> None:
    """Tell subscribers how far a running task is. Only an event: the task's row records its start and end."""
    progress = min(max(progress, 0.0), 1.0)
    await _publish(resources, run.job_id, JobState.RUNNING, run, TaskState.RUNNING, progress, message)


async def finish_task(
    *,
    resources: Resources,
    run: TaskRun,
    state: TaskState,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record how this run ended, close the job when it was its last open task, and tell the subscribers.

    A success hands the dependents it was the last dependency of to the workers; a failure fails the dependents.
    Returns False when the task was no longer this run's (another delivery took it over, or its row is gone):
    nothing is changed.
    """
    now = datetime.now(UTC)
    ready: list[_TaskRef] = []
    failed: list[_TaskRef] = []
    closed_by_failure: str | None = None
    reason = f"{run.analyzer} {state}" + (f": {error_message}" if error_message else "")
    async with resources.engine.begin() as conn:
        await _lock_job(conn, run.job_id)
        params = {
            "p_task_id": run.id,
            "p_task_ids": [run.id],
            "p_attempt": run.attempt,
            "p_job_id": run.job_id,
            "p_state": state,
            "p_now": now,
            "p_error_code": error_code,
            "p_error_message": error_message,
            "p_progress": 1.0 if state is TaskState.SUCCEEDED else 0.0,
            "p_these_failed": state is TaskState.FAILED,
        }
        row = (await conn.execute(_FINISH, params)).one()
        if row.finished and row.dependents:
            if state is TaskState.SUCCEEDED:
                ready = list((await conn.execute(_READY, params)).all())
            else:
                failed = list((await conn.execute(_FAIL_DEPENDENTS, {**params, "p_error_message": reason})).all())
                closed_by_failure = (await conn.execute(_close_job_statement(), params)).scalar_one_or_none()
    if not row.finished:
        return False
    job_state = JobState(row.job_state) if row.job_state is not None else None
    if closed_by_failure is not None:
        job_state = JobState(closed_by_failure)
    progress = 1.0 if state is TaskState.SUCCEEDED else 0.0
    await _publish(resources, run.job_id, job_state or JobState.RUNNING, run, state, progress, reason, error_code)
    for task in failed:
        await _publish(
            resources,
            run.job_id,
            job_state or JobState.RUNNING,
            task,
            TaskState.FAILED,
            0.0,
            f"{task.analyzer} failed: {reason}",
            PREPARATION_FAILED,
        )
    if job_state is not None:
        await _publish(resources, run.job_id, job_state, None, None, 1.0, f"job {job_state}")
    if ready:
        await _hand_over(resources, run.job_id, [task.id for task in ready])
    return True


async def release_dependents(*, resources: Resources, task_id: uuid.UUID) -> list[uuid.UUID]:
    """Enqueue the waiting dependents of a succeeded task whose dependencies have all succeeded.

    For a repeated delivery of a finished task: the worker that finished it may have stopped before it handed the
    dependents over. Enqueueing one twice is harmless (arq's job id; a finished task is skipped).
    """
    async with resources.engine.connect() as conn:
        row = (await conn.execute(_TASK_STATE, {"p_task_id": task_id})).first()
        if row is None or row.state != TaskState.SUCCEEDED:
            return []
        ready = [r.id for r in await conn.execute(_READY, {"p_task_id": task_id, "p_job_id": row.job_id})]
    if ready:
        await _hand_over(resources, row.job_id, ready)
    return ready


async def task_exists(*, resources: Resources, task_id: uuid.UUID) -> bool:
    """Whether the task's row is still there (it goes with its media, case or job)."""
    async with resources.engine.connect() as conn:
        return (await conn.execute(_TASK_STATE, {"p_task_id": task_id})).first() is not None


async def enqueue_task(
    *,
    resources: Resources,
    task_id: uuid.UUID,
    resource: str = queues.CPU,
    priority: str = "normal",
    delay: timedelta | None = None,
) -> None:
    """Hand one task to the workers of its resource (its own arq job), ordered by priority; call `wake` after the
    last of a batch."""
    await resources.arq.enqueue_job(
        TASK_FUNCTION,
        str(task_id),
        _job_id=arq_job_id(task_id),
        _queue_name=queues.queue_name(resources.settings, resource),
        _defer_until=queues.start_score(priority, delay=delay),
        _expires=queues.JOB_EXPIRY,
    )


async def wake(resources: Resources, resources_used: Iterable[str] = (queues.CPU,)) -> None:
    """Tell idle workers of these resources that tasks were queued."""
    for resource in set(resources_used):
        queue = queues.queue_name(resources.settings, resource)
        await wake_workers(resources.redis, resources.settings.redis_prefix, queue)


_ROUTING = select(Task.id, Task.resource, Task.priority).where(Task.id.in_(bindparam("p_ids", expanding=True)))


async def _hand_over(resources: Resources, job_id: uuid.UUID, task_ids: list[uuid.UUID]) -> None:
    """Enqueue tasks whose dependencies succeeded; those the queue does not take fail (their job may close)."""
    queued: list[uuid.UUID] = []
    try:
        async with resources.engine.connect() as conn:
            rows = list(await conn.execute(_ROUTING, {"p_ids": task_ids}))
        for row in rows:
            await enqueue_task(resources=resources, task_id=row.id, resource=row.resource, priority=row.priority)
            queued.append(row.id)
        await wake(resources, {row.resource for row in rows})
    except Exception:
        logger.exception("could not enqueue the ready tasks of job %s", job_id)
        unavailable = BackendUnavailable("The task queue was unavailable; the task was not started.")
        unqueued = [t for t in task_ids if t not in queued]
        await fail_unqueued(resources=resources, job_id=job_id, task_ids=unqueued, reason=unavailable)


async def fail_unqueued(
    *, resources: Resources, job_id: uuid.UUID, task_ids: Sequence[uuid.UUID], reason: AimaError
) -> None:
    """Fail tasks that never reached the queue, and close their job if nothing else of it is open."""
    if not task_ids:
        return
    now = datetime.now(UTC)
    async with resources.engine.begin() as conn:
        await _lock_job(conn, job_id)
        await conn.execute(
            update(_tasks)
            .where(_tasks.c.id.in_(task_ids), _tasks.c.state == TaskState.QUEUED)
            .values(state=TaskState.FAILED, error_code=reason.code, error_message=reason.message, finished_at=now)
        )
        closed = (
            await conn.execute(
                _close_job_statement(),
                {"p_job_id": job_id, "p_task_ids": list(task_ids), "p_these_failed": True, "p_now": now},
            )
        ).scalar_one_or_none()
    if closed is not None:
        await _publish(resources, job_id, JobState(closed), None, None, 1.0, f"job {closed}: {reason.message}")


async def _lock_job(conn: AsyncConnection, job_id: uuid.UUID) -> None:
    """Finishers of one job take turns on its row, so the last one sees every other task's end."""
    await conn.execute(_LOCK_JOB, {"p_job_id": job_id})


async def _publish(
    resources: Resources,
    job_id: uuid.UUID,
    job_state: JobState,
    run: _TaskRef | None,
    task_state: TaskState | None,
    progress: float,
    message: str,
    error_code: str | None = None,
) -> None:
    await publish(
        resources.redis,
        resources.settings.redis_prefix,
        JobEvent(
            job_id=str(job_id),
            job_state=job_state,
            task_id=str(run.id) if run else None,
            analyzer=run.analyzer if run else None,
            task_state=task_state,
            progress=progress,
            message=message,
            error_code=error_code,
        ),
    )
