"""The state changes a worker makes to a task and its job, with the events that tell subscribers.

These run once or twice per task on the hot path, so they are single SQL statements built once (data-modifying
CTEs), not ORM round trips.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Boolean, Select, Table, Update, and_, bindparam, case, exists, literal, or_, select, update

from aima.analysis import MediaKind
from aima.db.models import TERMINAL_TASK_STATES, Job, JobState, Media, Task, TaskState
from aima.errors import AimaError
from aima.events import JobEvent, publish
from aima.resources import Resources

_tasks = cast(Table, Task.__table__)
_jobs = cast(Table, Job.__table__)
_media = cast(Table, Media.__table__)


@dataclass(frozen=True)
class TaskRun:
    """A task a worker has claimed, with the facts of its media it needs."""

    id: uuid.UUID
    job_id: uuid.UUID
    analyzer: str
    analyzer_version: str
    media_id: uuid.UUID
    #: None when the media was deleted after the task was queued.
    media: MediaFacts | None


@dataclass(frozen=True)
class MediaFacts:
    case_id: uuid.UUID
    kind: MediaKind
    content_type: str
    size_bytes: int
    sha256: str
    storage_key: str


# Bind parameters are prefixed with p_: an UPDATE given a parameter named like one of its columns sets it.


def _start_statement() -> Select[Any]:
    started = (
        update(_tasks)
        .where(_tasks.c.id == bindparam("p_task_id"), _tasks.c.state.not_in(TERMINAL_TASK_STATES))
        .values(
            state=TaskState.RUNNING,
            attempts=_tasks.c.attempts + 1,
            worker=bindparam("p_worker"),
            started_at=bindparam("p_now"),
            heartbeat_at=bindparam("p_now"),
            progress=0.0,
        )
        .returning(_tasks.c.id, _tasks.c.job_id, _tasks.c.media_id, _tasks.c.analyzer, _tasks.c.analyzer_version)
        .cte("started")
    )
    job_running = (
        update(_jobs)
        .where(_jobs.c.id.in_(select(started.c.job_id)), _jobs.c.state == JobState.QUEUED)
        .values(state=JobState.RUNNING)
        .cte("job_running")
    )
    return (
        select(
            started,
            _media.c.case_id,
            _media.c.kind,
            _media.c.content_type,
            _media.c.size_bytes,
            _media.c.sha256,
            _media.c.storage_key,
        )
        .join_from(started, _media, _media.c.id == started.c.media_id, isouter=True)
        .add_cte(job_running)
    )


def _finish_statement() -> Update:
    """Record a task's end and, when no other task of its job is open, close the job, in one statement.

    PostgreSQL runs a data-modifying CTE whether or not the outer statement matches a row, and the outer
    statement does not see the CTE's update: "other tasks" exclude this one, and its new state counts separately.
    """
    finished = (
        update(_tasks)
        .where(_tasks.c.id == bindparam("p_task_id"))
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
    others = and_(_tasks.c.job_id == bindparam("p_job_id"), _tasks.c.id != bindparam("p_task_id"))
    others_open = exists().where(others, _tasks.c.state.not_in(TERMINAL_TASK_STATES))
    failed = or_(exists().where(others, _tasks.c.state == TaskState.FAILED), bindparam("p_this_failed", type_=Boolean))
    state_type = _jobs.c.state.type
    return (
        update(_jobs)
        .where(
            _jobs.c.id == bindparam("p_job_id"),
            _jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING]),
            ~others_open,
            exists(select(finished.c.id)),
        )
        .values(
            state=case((failed, literal(JobState.FAILED, state_type)), else_=literal(JobState.SUCCEEDED, state_type)),
            finished_at=bindparam("p_now"),
        )
        .returning(_jobs.c.state)
    )


_START = _start_statement()
_FINISH = _finish_statement()
_LOCK_JOB = select(_jobs.c.id).where(_jobs.c.id == bindparam("p_job_id")).with_for_update()


async def start_task(*, resources: Resources, task_id: uuid.UUID, worker: str) -> TaskRun | None:
    """Claim a task: mark it running (and its job), load its media; None when it is unknown or already finished
    (a duplicate delivery)."""
    async with resources.engine.begin() as conn:
        row = (
            await conn.execute(_START, {"p_task_id": task_id, "p_worker": worker, "p_now": datetime.now(UTC)})
        ).first()
    if row is None:
        return None
    media = None
    if row.storage_key is not None:
        media = MediaFacts(
            case_id=row.case_id,
            kind=MediaKind(row.kind),
            content_type=row.content_type,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            storage_key=row.storage_key,
        )
    run = TaskRun(
        id=row.id,
        job_id=row.job_id,
        analyzer=row.analyzer,
        analyzer_version=row.analyzer_version,
        media_id=row.media_id,
        media=media,
    )
    await _publish(resources, run, JobState.RUNNING, TaskState.RUNNING, 0.0, f"{run.analyzer} started")
    return run


async def requeue_task(*, resources: Resources, run: TaskRun, reason: AimaError) -> None:
    """Put a task that hit a transient error back in line; its next delivery runs it again."""
    async with resources.engine.begin() as conn:
        await conn.execute(
            update(_tasks)
            .where(_tasks.c.id == run.id, _tasks.c.state == TaskState.RUNNING)
            .values(state=TaskState.QUEUED, error_code=reason.code, error_message=reason.message)
        )
    await _publish(
        resources,
        run,
        JobState.RUNNING,
        TaskState.QUEUED,
        0.0,
        f"{run.analyzer} will retry: {reason.message}",
        reason.code,
    )


async def report_progress(*, resources: Resources, run: TaskRun, progress: float, message: str) -> None:
    """Tell subscribers how far a running task is. Only an event: the task's row records its start and end."""
    await _publish(resources, run, JobState.RUNNING, TaskState.RUNNING, min(max(progress, 0.0), 1.0), message)


async def finish_task(
    *,
    resources: Resources,
    run: TaskRun,
    state: TaskState,
    error_code: str | None = None,
    error_message: str | None = None,
) -> JobState | None:
    """Record a task's end, close its job when it was the last open task, tell the subscribers; return the job's
    final state when this call closed it."""
    now = datetime.now(UTC)
    async with resources.engine.begin() as conn:
        # Finishers of one job take turns on its row, so the last one sees every other task's end.
        await conn.execute(_LOCK_JOB, {"p_job_id": run.job_id})
        closed = (
            await conn.execute(
                _FINISH,
                {
                    "p_task_id": run.id,
                    "p_job_id": run.job_id,
                    "p_state": state,
                    "p_now": now,
                    "p_error_code": error_code,
                    "p_error_message": error_message,
                    "p_progress": 1.0 if state is TaskState.SUCCEEDED else 0.0,
                    "p_this_failed": state is TaskState.FAILED,
                },
            )
        ).scalar_one_or_none()
    job_state = JobState(closed) if closed is not None else None
    message = f"{run.analyzer} {state}" + (f": {error_message}" if error_message else "")
    await _publish(
        resources,
        run,
        job_state or JobState.RUNNING,
        state,
        1.0 if state is TaskState.SUCCEEDED else 0.0,
        message,
        error_code,
    )
    if job_state is not None:
        await publish(
            resources.redis,
            resources.settings.redis_prefix,
            JobEvent(
                job_id=str(run.job_id),
                job_state=job_state,
                progress=1.0,
                message=f"job {job_state}",
            ),
        )
    return job_state


async def _publish(
    resources: Resources,
    run: TaskRun,
    job_state: JobState,
    task_state: TaskState,
    progress: float,
    message: str,
    error_code: str | None = None,
) -> None:
    await publish(
        resources.redis,
        resources.settings.redis_prefix,
        JobEvent(
            job_id=str(run.job_id),
            job_state=job_state,
            task_id=str(run.id),
            analyzer=run.analyzer,
            task_state=task_state,
            progress=progress,
            message=message,
            error_code=error_code,
        ),
    )
