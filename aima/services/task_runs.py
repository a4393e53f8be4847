"""The state changes a worker makes to a task and its job, with the events that tell subscribers.

These run once or twice per task on the hot path, so each is one SQL statement built once (data-modifying CTEs),
not a series of ORM round trips.

Dependencies: a task lists in `depends_on` the tasks that must succeed before it is handed to a worker (the
preparation tasks of its job: keyframes, audio track). Such a task stays queued in PostgreSQL without an arq job.
The finish of a task with waiting dependents does more statements in the same transaction, under the job's row
lock that every finisher of the job takes: a success selects the dependents whose dependencies are now met, which
are then enqueued (only the last dependency to end sees them ready, so each is enqueued once; arq's job id guards a
repeat); a failure fails the media dependents with `PREPARATION_FAILED` and the reason. A *case task* (no media: a
case analyzer's run over the whole case, `aima.services.jobs.analyze_case`) depends on every other task of its job
and waits only for them to end, whatever their outcome: its analyzer reports what is missing.

Deadline: a task on a model endpoint that keeps meeting transient errors fails once `worker.model_wait_deadline_s`
has passed since its first run (`first_started_at`), even with runs left, so that the job's case task can go on
without it and say what is missing.

Deliveries: each delivery of a task is its own arq job, named after the task and its *generation* (`tasks.generation`,
`arq_job_id`), and the claim only accepts a delivery of the current generation of a task that is queued or waiting
and whose dependencies are met. Each claim moves the generation on with the run count (`attempts`); a retry from the
start (`retry_failed`) resets `attempts` to 0 but moves the generation on once more, so a delivery id is never used
twice for one task: a leftover arq job of an earlier round (a vanished worker's, locked by arq for an hour) can
neither swallow a new enqueue nor claim the task. A second copy of a delivery, or a stale one, finds the task moved
on and is skipped, so re-enqueueing with a fresh id never has to wait for arq. A run interrupted because its worker
shut down is given back (attempts and generation go back by one: arq redelivers the same job).

Cancellation: `request_cancel` marks the job, cancels its queued and waiting tasks in the same transaction and tells
the workers (Redis channel `cancel_channel`) to stop the running ones; a claim refuses a task of a job whose
cancellation was requested, and a run that finishes after the request ends cancelled, whatever its outcome. Whatever
puts a task of a running job back in line (`retry_later`, `requeue_task`, the reconciler) does so under the job's
row lock and only when no cancellation was requested, so it cannot slip past `request_cancel`; should a queued or
waiting task of such a job still turn up, the claim that refuses it and the reconciler end it cancelled
(`cancel_leftovers`) and close the job. `retry_failed` is refused (`Conflict`) while the job is cancelling and
tasks are still stopping: their runs end cancelled, and a job reopened under them could not tell that apart from a
failure.

Lock order: the job row, then its tasks (finishers, cancellation, retries, the reconciler). The claim, which locks
its task first, never waits for the job row: it moves a queued job to running only if it can lock the row at once
(SKIP LOCKED); otherwise whoever holds the row (a cancellation, a failure being recorded) sets or closes the state.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.exceptions import RedisError
from sqlalchemy import (
    Boolean,
    Integer,
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
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from aima import queues
from aima.analysis import MediaKind
from aima.db.models import OPEN_JOB_STATES, TERMINAL_TASK_STATES, Job, JobState, Media, Task, TaskState
from aima.errors import AimaError, BackendUnavailable, Conflict, ModelUnavailable
from aima.events import JobEvent, publish, wake_workers
from aima.resources import Resources
from aima.services import dossiers
from aima.settings import WorkerSettings

logger = logging.getLogger(__name__)

#: The arq function every task (analysis or preparation) is delivered to.
TASK_FUNCTION = "run_analysis_task"
#: The error code of a task whose preparation failed.
PREPARATION_FAILED = "PREPARATION_FAILED"
#: The error code of a task that was cancelled with its job.
JOB_CANCELLED = "JOB_CANCELLED"
CANCELLED_MESSAGE = "The job was cancelled."
#: States of a task that waits for a delivery (its arq job) or for its dependencies.
WAITING_STATES = [TaskState.QUEUED, TaskState.WAITING_FOR_MODEL]

_tasks = cast(Table, Task.__table__)
_jobs = cast(Table, Job.__table__)
_media = cast(Table, Media.__table__)
_JOB_CASE = select(_jobs.c.case_id).where(_jobs.c.id == bindparam("p_job_id"))


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


def arq_job_id(task_id: uuid.UUID | str, generation: int = 0) -> str:
    """The arq job of one delivery of a task: its first as ``task:<id>``, later ones (after `generation` runs) with
    the generation appended. arq refuses a second enqueue of an id while the first is known."""
    return f"task:{task_id}" if not generation else f"task:{task_id}:{generation}"


def cancel_channel(prefix: str) -> str:
    """Where workers hear ``{"job_id": ...}`` when a job's cancellation was requested."""
    return f"{prefix}:cancel"


class _RunRef(Protocol):
    """One run of a task: enough to guard a state change to it and to tell subscribers."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def job_id(self) -> uuid.UUID: ...

    @property
    def analyzer(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def started_at(self) -> datetime: ...


@dataclass(frozen=True)
class TaskRun:
    """A task a worker has claimed (its `attempt`-th run, started at `started_at`), with the facts of its media it
    needs. The pair fences the run: a task retried from the start counts its runs from 0 again, its start time
    tells a new run from an old one. A case task has no media (`media_id` and `media` are None)."""

    id: uuid.UUID
    job_id: uuid.UUID
    analyzer: str
    analyzer_version: str
    media_id: uuid.UUID | None
    attempt: int
    started_at: datetime
    media: MediaFacts | None
    case_id: uuid.UUID
    #: What it runs on: "cpu" or a model endpoint's name.
    resource: str = queues.CPU
    #: When its first run began (the model-wait deadline counts from there).
    first_started_at: datetime | None = None

    @property
    def is_case_task(self) -> bool:
        return self.media_id is None


# Bind parameters are prefixed with p_: an UPDATE given a parameter named like one of its columns sets it.


def cancel_requested() -> Any:
    """Whether the job of the task row in scope was asked to stop."""
    return exists().where(_jobs.c.id == _tasks.c.job_id, _jobs.c.cancel_requested_at.is_not(None))


def _claim_statement() -> Select[Any]:
    """Mark a queued or waiting task running and its job; return the task with its case and media (none for a case
    task). Only a delivery of the task's current generation (`p_generation`, None: any) claims it, none of a job
    being cancelled, and none whose dependencies are not met (a retry queued one of them again: the last one to end
    hands the task over again). The job goes from queued to running only when its row can be locked at once, so the
    claim never waits for the job row while it holds the task's (the lock order is job, then tasks). Media deletion
    cascades to tasks, so a media task's media is there whenever the task is."""
    generation = bindparam("p_generation", type_=Integer)
    claimed = (
        update(_tasks)
        .where(
            _tasks.c.id == bindparam("p_task_id"),
            _tasks.c.state.in_(WAITING_STATES),
            func.coalesce(generation, _tasks.c.generation) == _tasks.c.generation,
            ~cancel_requested(),
            ~unmet_dependencies(),
        )
        .values(
            state=TaskState.RUNNING,
            attempts=_tasks.c.attempts + 1,
            generation=_tasks.c.generation + 1,
            worker=bindparam("p_worker"),
            started_at=bindparam("p_now"),
            first_started_at=func.coalesce(_tasks.c.first_started_at, bindparam("p_now")),
            heartbeat_at=bindparam("p_now"),
            deadline_at=bindparam("p_deadline"),
            next_attempt_at=None,
            finished_at=None,
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
            _tasks.c.started_at,
            _tasks.c.first_started_at,
            _tasks.c.resource,
        )
        .cte("claimed")
    )
    lockable = (
        select(_jobs.c.id)
        .where(_jobs.c.id.in_(select(claimed.c.job_id)), _jobs.c.state == JobState.QUEUED)
        .with_for_update(key_share=True, skip_locked=True)
        .cte("lockable")
    )
    job_running = (
        update(_jobs)
        .where(_jobs.c.id.in_(select(lockable.c.id)), _jobs.c.state == JobState.QUEUED)
        .values(state=JobState.RUNNING)
        .cte("job_running")
    )
    return (
        select(
            claimed,
            _jobs.c.case_id,
            _media.c.kind,
            _media.c.content_type,
            _media.c.size_bytes,
            _media.c.sha256,
            _media.c.storage_key,
            _media.c.format,
        )
        .select_from(
            claimed.join(_jobs, _jobs.c.id == claimed.c.job_id).outerjoin(_media, _media.c.id == claimed.c.media_id)
        )
        .add_cte(job_running)
    )


def _finish_statement() -> Select[Any]:
    """Record the end of this run of a task and, when no other task of its job is open, close the job.

    The task only changes while it is still this run's (running, same attempt): a stale duplicate cannot
    overwrite a newer outcome. A run of a job whose cancellation was requested ends cancelled, whatever it reported.
    PostgreSQL runs a data-modifying CTE whether or not anything reads it, and the statement does not see its own
    CTE's update: "other tasks" exclude this one, and its new state counts apart.
    """
    state_type = _tasks.c.state.type
    cancelled = cancel_requested()
    finished = (
        update(_tasks)
        .where(
            _tasks.c.id == bindparam("p_task_id"),
            _tasks.c.state == TaskState.RUNNING,
            _tasks.c.attempts == bindparam("p_attempt"),
            _tasks.c.started_at == bindparam("p_started"),
        )
        .values(
            state=case(
                (cancelled, literal(TaskState.CANCELLED, state_type)),
                else_=bindparam("p_state", type_=state_type),
            ),
            finished_at=bindparam("p_now"),
            heartbeat_at=bindparam("p_now"),
            error_code=case((cancelled, literal(JOB_CANCELLED)), else_=bindparam("p_error_code")),
            error_message=case((cancelled, literal(CANCELLED_MESSAGE)), else_=bindparam("p_error_message")),
            progress=case((cancelled, literal(0.0)), else_=bindparam("p_progress")),
            next_attempt_at=None,
        )
        .returning(_tasks.c.id, _tasks.c.state)
        .cte("finished")
    )
    closed = _close_job_statement(exists(select(finished.c.id))).cte("closed")
    return select(
        select(func.count()).select_from(finished).scalar_subquery().label("finished"),
        select(finished.c.state).scalar_subquery().label("task_state"),
        select(closed.c.state).scalar_subquery().label("job_state"),
        select(func.count()).where(_waiting_dependents()).scalar_subquery().label("dependents"),
        _JOB_CASE.scalar_subquery().label("case_id"),
    )


def _waiting_dependents() -> Any:
    """Queued tasks of job `p_job_id` that wait for task `p_task_id`."""
    return and_(
        _tasks.c.job_id == bindparam("p_job_id"),
        bindparam("p_task_id", type_=Uuid) == any_(_tasks.c.depends_on),
        _tasks.c.state == TaskState.QUEUED,
    )


def unmet_dependencies() -> Any:
    """Whether the task row in scope still waits for one of its dependencies: a media task for one that has not
    succeeded, a case task (no media) for one that has not ended."""
    other = _tasks.alias("dependency")
    return exists().where(
        other.c.id == any_(_tasks.c.depends_on),
        or_(
            and_(_tasks.c.media_id.is_not(None), other.c.state != TaskState.SUCCEEDED),
            and_(_tasks.c.media_id.is_(None), other.c.state.not_in(TERMINAL_TASK_STATES)),
        ),
    )


def _ready_statement() -> Select[Any]:
    """The queued tasks of job `p_job_id` that wait for one of `p_ended` and whose dependencies are all met now
    (run after those ended)."""
    waiting = and_(
        _tasks.c.job_id == bindparam("p_job_id"),
        _tasks.c.depends_on.overlap(bindparam("p_ended", type_=ARRAY(Uuid))),
        _tasks.c.state == TaskState.QUEUED,
    )
    return select(_tasks.c.id, _tasks.c.analyzer).where(waiting, ~unmet_dependencies()).order_by(_tasks.c.analyzer)


def _fail_dependents_statement() -> Any:
    """Fail the waiting media dependents of `p_task_id` (run after it failed for good); case tasks wait on."""
    return (
        update(_tasks)
        .where(_waiting_dependents(), _tasks.c.media_id.is_not(None))
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
    """Close the job `p_job_id` when no task other than `p_task_ids` is open: cancelled when that was requested,
    else failed when any failed or ended cancelled (`p_these_failed`: one of `p_task_ids` did not succeed), else
    succeeded. A task that ended cancelled without a pending request (its job was retried while it stopped) did not
    succeed: the job does not either."""
    others = and_(_tasks.c.job_id == bindparam("p_job_id"), _tasks.c.id.not_in(bindparam("p_task_ids", expanding=True)))
    others_open = exists().where(others, _tasks.c.state.not_in(TERMINAL_TASK_STATES))
    unsuccessful = exists().where(others, _tasks.c.state.in_([TaskState.FAILED, TaskState.CANCELLED]))
    failed = or_(unsuccessful, bindparam("p_these_failed", type_=Boolean))
    state_type = _jobs.c.state.type
    return (
        update(_jobs)
        .where(
            _jobs.c.id == bindparam("p_job_id"),
            _jobs.c.state.in_(OPEN_JOB_STATES),
            ~others_open,
            also,
        )
        .values(
            state=case(
                (_jobs.c.cancel_requested_at.is_not(None), literal(JobState.CANCELLED, state_type)),
                (failed, literal(JobState.FAILED, state_type)),
                else_=literal(JobState.SUCCEEDED, state_type),
            ),
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
#: The job `p_job_id`, locked, when it is open and its cancellation was requested.
_LOCK_CANCELLING_JOB = (
    select(_jobs.c.id, _jobs.c.case_id)
    .where(
        _jobs.c.id == bindparam("p_job_id"),
        _jobs.c.cancel_requested_at.is_not(None),
        _jobs.c.state.in_(OPEN_JOB_STATES),
    )
    .with_for_update()
)
#: The job of task `p_task_id`, locked, when the task is queued or waiting in an open job whose cancellation was
#: requested (only the job row is locked: the lock order is job, then tasks).
_LOCK_CANCELLING_JOB_OF_TASK = (
    select(_jobs.c.id, _jobs.c.case_id)
    .where(
        _jobs.c.id
        == select(_tasks.c.job_id)
        .where(_tasks.c.id == bindparam("p_task_id"), _tasks.c.state.in_(WAITING_STATES))
        .scalar_subquery(),
        _jobs.c.cancel_requested_at.is_not(None),
        _jobs.c.state.in_(OPEN_JOB_STATES),
    )
    .with_for_update()
)
#: A queued job one of whose tasks runs is running (for when a claim could not lock the job's row to say so).
_MARK_RUNNING = (
    update(_jobs)
    .where(
        _jobs.c.id == bindparam("p_job_id"),
        _jobs.c.state == JobState.QUEUED,
        exists().where(_tasks.c.job_id == _jobs.c.id, _tasks.c.state == TaskState.RUNNING),
    )
    .values(state=JobState.RUNNING)
)


def _this_run(run: _RunRef) -> Any:
    """The task row while it is still this run's."""
    return and_(
        _tasks.c.id == run.id,
        _tasks.c.state == TaskState.RUNNING,
        _tasks.c.attempts == run.attempt,
        _tasks.c.started_at == run.started_at,
    )


async def start_task(
    *, resources: Resources, task_id: uuid.UUID, worker: str, generation: int | None = None
) -> TaskRun | None:
    """Claim a task for this worker; None when it is unknown, finished, running elsewhere, of a job being cancelled,
    waiting for a dependency, or when this delivery is not of the task's current `generation` (a late or stale
    duplicate). A task refused because its job is being cancelled, but left queued or waiting, is ended cancelled
    (with the job's other leftovers) and the job closed when nothing of it runs any more (`cancel_leftovers`)."""
    now = datetime.now(UTC)
    async with resources.engine.begin() as conn:
        params = {
            "p_task_id": task_id,
            "p_worker": worker,
            "p_now": now,
            "p_deadline": now + timedelta(seconds=resources.settings.worker.job_timeout_s),
            "p_generation": generation,
        }
        row = (await conn.execute(_CLAIM, params)).first()
    if row is None:
        await cancel_leftovers(resources=resources, task_id=task_id)
        return None
    media = None
    if row.media_id is not None:
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
        started_at=row.started_at,
        media=media,
        case_id=row.case_id,
        resource=row.resource,
        first_started_at=row.first_started_at,
    )
    await _publish(
        resources,
        run.job_id,
        JobState.RUNNING,
        run,
        TaskState.RUNNING,
        0.0,
        f"{run.analyzer} started",
        case_id=run.case_id,
    )
    return run


async def requeue_task(*, resources: Resources, run: TaskRun, reason: AimaError) -> None:
    """Give an interrupted run back (its worker is shutting down): the task is queued again and this run does not
    count, so arq's redelivery of the same job (same generation) runs it on another worker. A task of a job being
    cancelled ends cancelled instead. Under the job's row lock, so that a cancellation being requested is seen."""
    async with resources.engine.begin() as conn:
        await lock_job(conn, run.job_id)
        requeued = (
            await conn.execute(
                update(_tasks)
                .where(_this_run(run), ~cancel_requested())
                .values(
                    state=TaskState.QUEUED,
                    attempts=_tasks.c.attempts - 1,
                    generation=_tasks.c.generation - 1,
                    error_code=reason.code,
                    error_message=reason.message,
                    heartbeat_at=datetime.now(UTC),
                )
                .returning(_tasks.c.id)
            )
        ).first()
    if requeued is None:
        await finish_task(resources=resources, run=run, state=TaskState.CANCELLED)
        return
    message = f"{run.analyzer} will run again: {reason.message}"
    await _publish(
        resources, run.job_id, JobState.RUNNING, run, TaskState.QUEUED, 0.0, message, reason.code, run.case_id
    )


def backoff_s(worker: WorkerSettings, attempt: int) -> float:
    """The wait before the next run after the `attempt`-th failed transiently: exponential, with full jitter."""
    return random.uniform(0.0, min(worker.retry_cap_s, worker.retry_base_s * 2 ** max(attempt - 1, 0)))  # noqa: S311


async def retry_later(*, resources: Resources, run: TaskRun, reason: AimaError) -> float | None:
    """After a transient error: wait (state waiting for model) and run again after a backoff, or, when the task has
    had `worker.max_tries` runs, or runs on a model endpoint and has waited past `worker.model_wait_deadline_s` since
    its first run, fail it with the reason. Returns the wait in seconds, None when it failed (or was cancelled
    meanwhile: the wait is recorded under the job's row lock, so that a cancellation being requested is seen)."""
    worker = resources.settings.worker
    now = datetime.now(UTC)
    give_up: str | None = None
    remaining_s = float("inf")
    if run.resource != queues.CPU and run.first_started_at is not None:
        waited_s = (now - run.first_started_at).total_seconds()
        remaining_s = worker.model_wait_deadline_s - waited_s
        if remaining_s <= 0:
            give_up = f"gave up after {waited_s:.0f} s"
    if give_up is None and run.attempt >= worker.max_tries:
        give_up = f"gave up after {run.attempt} runs"
    if give_up is not None:
        message = f"{reason.message} ({give_up})"
        await finish_task(
            resources=resources, run=run, state=TaskState.FAILED, error_code=reason.code, error_message=message
        )
        return None
    # A server that said how long to wait (Retry-After beyond the endpoint's own retries) is waited for at least
    # that long; the last wait ends at the deadline, so that the task fails then rather than a whole backoff later.
    asked_s = (reason.retry_after_s or 0.0) if isinstance(reason, ModelUnavailable) else 0.0
    delay = min(max(backoff_s(worker, run.attempt), asked_s), remaining_s)
    async with resources.engine.begin() as conn:
        await lock_job(conn, run.job_id)
        row = (
            await conn.execute(
                update(_tasks)
                .where(_this_run(run), ~cancel_requested())
                .values(
                    state=TaskState.WAITING_FOR_MODEL,
                    next_attempt_at=now + timedelta(seconds=delay),
                    heartbeat_at=now,
                    error_code=reason.code,
                    error_message=reason.message,
                    progress=0.0,
                )
                .returning(_tasks.c.resource, _tasks.c.priority, _tasks.c.generation)
            )
        ).first()
    if row is None:  # cancelled meanwhile (or no longer this run's)
        await finish_task(resources=resources, run=run, state=TaskState.CANCELLED)
        return None
    message = f"{run.analyzer} waiting for model: {reason.message}, next try in {delay:.1f} s"
    await _publish(
        resources,
        run.job_id,
        JobState.RUNNING,
        run,
        TaskState.WAITING_FOR_MODEL,
        0.0,
        message,
        reason.code,
        run.case_id,
    )
    try:
        await enqueue_task(
            resources=resources,
            task_id=run.id,
            resource=row.resource,
            priority=row.priority,
            delay=timedelta(seconds=delay),
            generation=row.generation,
        )
    except (RedisError, OSError):
        logger.warning("could not enqueue the next run of task %s; the reconciler will", run.id, exc_info=True)
    return delay


async def report_progress(*, resources: Resources, run: TaskRun, progress: float, message: str) -> None:
    """Tell subscribers how far a running task is. Only an event: the task's row records its start and end."""
    progress = min(max(progress, 0.0), 1.0)
    await _publish(
        resources, run.job_id, JobState.RUNNING, run, TaskState.RUNNING, progress, message, case_id=run.case_id
    )


async def finish_task(
    *,
    resources: Resources,
    run: _RunRef,
    state: TaskState,
    error_code: str | None = None,
    error_message: str | None = None,
) -> TaskState | None:
    """Record how this run ended, close the job when it was its last open task, and tell the subscribers.

    A run of a job whose cancellation was requested ends cancelled, whatever `state` says. A success hands the
    dependents it was the last dependency of to the workers; a failure (or cancellation) ends the media dependents,
    and hands over the case tasks for which it (or a dependent it failed) was the last task to end. Returns the
    state recorded, or None when the task was no longer this run's (another delivery took it over, or its row is
    gone): nothing is changed.
    """
    now = datetime.now(UTC)
    ready: list[_TaskRef] = []
    failed: list[_TaskRef] = []
    closed_by_failure: str | None = None
    if state is TaskState.CANCELLED:
        error_code, error_message = JOB_CANCELLED, CANCELLED_MESSAGE
    async with resources.engine.begin() as conn:
        await lock_job(conn, run.job_id)
        params = {
            "p_task_id": run.id,
            "p_task_ids": [run.id],
            "p_attempt": run.attempt,
            "p_started": run.started_at,
            "p_job_id": run.job_id,
            "p_state": state,
            "p_now": now,
            "p_error_code": error_code,
            "p_error_message": error_message,
            "p_progress": 1.0 if state is TaskState.SUCCEEDED else 0.0,
            # A run that ends cancelled without a pending request (its job was retried meanwhile) did not succeed.
            "p_these_failed": state is not TaskState.SUCCEEDED,
        }
        row = (await conn.execute(_FINISH, params)).one()
        recorded = TaskState(row.task_state) if row.finished else None
        if recorded is TaskState.CANCELLED:
            error_code, error_message = JOB_CANCELLED, CANCELLED_MESSAGE
        reason = f"{run.analyzer} {recorded}" + (f": {error_message}" if error_message else "")
        if recorded is not None and row.dependents:
            if recorded is not TaskState.SUCCEEDED:
                failed = list((await conn.execute(_FAIL_DEPENDENTS, {**params, "p_error_message": reason})).all())
            ended = [run.id, *(task.id for task in failed)]
            ready = list((await conn.execute(_READY, {**params, "p_ended": ended})).all())
            if recorded is not TaskState.SUCCEEDED and not ready:
                closed_by_failure = (await conn.execute(_close_job_statement(), params)).scalar_one_or_none()
    if recorded is None:
        return None
    job_state = JobState(row.job_state) if row.job_state is not None else None
    if closed_by_failure is not None:
        job_state = JobState(closed_by_failure)
    progress = 1.0 if recorded is TaskState.SUCCEEDED else 0.0
    case_id = row.case_id
    await _publish(
        resources, run.job_id, job_state or JobState.RUNNING, run, recorded, progress, reason, error_code, case_id
    )
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
            case_id,
        )
    if job_state is not None:
        await _publish(resources, run.job_id, job_state, None, None, 1.0, f"job {job_state}", case_id=case_id)
    if ready:
        await hand_over(resources, run.job_id, [task.id for task in ready])
    return recorded


async def release_dependents(*, resources: Resources, task_id: uuid.UUID) -> list[uuid.UUID]:
    """Enqueue the waiting dependents of an ended task whose dependencies are now met.

    For a repeated delivery of a finished task: the worker that finished it may have stopped before it handed the
    dependents over. Enqueueing one twice is harmless (arq's job id; a finished task is skipped).
    """
    async with resources.engine.connect() as conn:
        row = (await conn.execute(_TASK_STATE, {"p_task_id": task_id})).first()
        if row is None or not TaskState(row.state).terminal:
            return []
        params = {"p_ended": [task_id], "p_job_id": row.job_id}
        ready = [r.id for r in await conn.execute(_READY, params)]
    if ready:
        await hand_over(resources, row.job_id, ready)
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
    generation: int = 0,
    replace: bool = False,
) -> None:
    """Hand one delivery of a task (`generation`: the task's `generation` column) to the workers of its resource,
    ordered by priority; call `wake` after the last of a batch. `replace` first removes whatever arq still knows of
    a job of that id (a delivery skipped earlier, e.g. of a task handed over again)."""
    queue = queues.queue_name(resources.settings, resource)
    job_id = arq_job_id(task_id, generation)
    if replace:
        async with resources.arq.pipeline(transaction=True) as pipe:
            pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
            pipe.zrem(queue, job_id)
            await pipe.execute()
    await resources.arq.enqueue_job(
        TASK_FUNCTION,
        str(task_id),
        generation,
        _job_id=job_id,
        _queue_name=queue,
        _defer_until=queues.start_score(priority, delay=delay),
        _expires=queues.JOB_EXPIRY + (delay or timedelta()),
    )


async def wake(resources: Resources, resources_used: Iterable[str] = (queues.CPU,)) -> None:
    """Tell idle workers of these resources that tasks were queued."""
    for resource in set(resources_used):
        queue = queues.queue_name(resources.settings, resource)
        await wake_workers(resources.redis, resources.settings.redis_prefix, queue)


_ROUTING = select(Task.id, Task.resource, Task.priority, Task.generation).where(
    Task.id.in_(bindparam("p_ids", expanding=True))
)


async def hand_over(resources: Resources, job_id: uuid.UUID, task_ids: list[uuid.UUID]) -> None:
    """Enqueue tasks whose dependencies succeeded; those the queue does not take fail (their job may close)."""
    queued: list[uuid.UUID] = []
    try:
        async with resources.engine.connect() as conn:
            rows = list(await conn.execute(_ROUTING, {"p_ids": task_ids}))
        for row in rows:
            # Replacing: no delivery of a task waiting for its dependencies can be legitimate (one skipped because a
            # retry queued a dependency again would otherwise block its id).
            await enqueue_task(
                resources=resources,
                task_id=row.id,
                resource=row.resource,
                priority=row.priority,
                generation=row.generation,
                replace=True,
            )
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
    """Fail tasks that never reached the queue, and close their job if nothing else of it is open (case tasks that
    waited only for them are handed over)."""
    if not task_ids:
        return
    now = datetime.now(UTC)
    async with resources.engine.begin() as conn:
        await lock_job(conn, job_id)
        await conn.execute(
            update(_tasks)
            .where(_tasks.c.id.in_(task_ids), _tasks.c.state == TaskState.QUEUED)
            .values(state=TaskState.FAILED, error_code=reason.code, error_message=reason.message, finished_at=now)
        )
        ready = [r.id for r in await conn.execute(_READY, {"p_job_id": job_id, "p_ended": list(task_ids)})]
        closed = (
            await conn.execute(
                _close_job_statement(),
                {"p_job_id": job_id, "p_task_ids": list(task_ids), "p_these_failed": True, "p_now": now},
            )
        ).scalar_one_or_none()
        if closed is None:  # a claim meanwhile could not lock the job's row to mark it running
            await conn.execute(_MARK_RUNNING, {"p_job_id": job_id})
        case_id = (await conn.execute(_JOB_CASE, {"p_job_id": job_id})).scalar_one_or_none()
    if closed is not None:
        message = f"job {closed}: {reason.message}"
        await _publish(resources, job_id, JobState(closed), None, None, 1.0, message, case_id=case_id)
    if ready:
        await hand_over(resources, job_id, ready)


# Heartbeats: one statement per worker process for all its running tasks.

_HEARTBEAT = (
    update(_tasks)
    .where(
        tuple_(_tasks.c.id, _tasks.c.attempts, _tasks.c.started_at).in_(bindparam("p_runs", expanding=True)),
        _tasks.c.state == TaskState.RUNNING,
    )
    .values(heartbeat_at=bindparam("p_now"))
    .returning(_tasks.c.id, cancel_requested().label("cancel_requested"))
)


@dataclass(frozen=True)
class Pulse:
    """What a heartbeat learnt: the runs whose job is being cancelled, and those that are no longer this worker's
    (the reconciler took them over, or the task is gone)."""

    cancelled: frozenset[uuid.UUID]
    lost: frozenset[uuid.UUID]


async def heartbeat(*, resources: Resources, runs: Sequence[_RunRef]) -> Pulse:
    """Tell PostgreSQL these runs are alive (`heartbeat_at`), and learn which should stop."""
    if not runs:
        return Pulse(frozenset(), frozenset())
    async with resources.engine.begin() as conn:
        params = {"p_runs": [(run.id, run.attempt, run.started_at) for run in runs], "p_now": datetime.now(UTC)}
        alive = {row.id: row.cancel_requested for row in await conn.execute(_HEARTBEAT, params)}
    return Pulse(
        cancelled=frozenset(task_id for task_id, cancel in alive.items() if cancel),
        lost=frozenset(run.id for run in runs if run.id not in alive),
    )


# Cancellation and retries, asked for by users through `aima.services.jobs`.


@dataclass(frozen=True)
class Cancellation:
    """The outcome of a cancellation request."""

    #: The job's state afterwards: cancelled, or still running while its running tasks stop (within about 2 s);
    #: a job that had ended already keeps its state.
    job_state: JobState
    #: The tasks that were queued or waiting and are now cancelled.
    cancelled: list[uuid.UUID]
    #: How many tasks were running and are being stopped by their workers.
    stopping: int


_REQUEST_CANCEL = (
    update(_jobs)
    .where(
        _jobs.c.id == bindparam("p_job_id"),
        _jobs.c.state.in_(OPEN_JOB_STATES),
    )
    .values(cancel_requested_at=func.coalesce(_jobs.c.cancel_requested_at, bindparam("p_now")))
    .returning(_jobs.c.case_id)
)
#: Cancel the queued and waiting tasks of job `p_job_id`, whose cancellation was requested.
_CANCEL_WAITING = (
    update(_tasks)
    .where(_tasks.c.job_id == bindparam("p_job_id"), _tasks.c.state.in_(WAITING_STATES), cancel_requested())
    .values(
        state=TaskState.CANCELLED,
        finished_at=bindparam("p_now"),
        next_attempt_at=None,
        progress=0.0,
        error_code=JOB_CANCELLED,
        error_message=CANCELLED_MESSAGE,
    )
    .returning(_tasks.c.id, _tasks.c.analyzer)
)
_RUNNING_COUNT = select(func.count()).where(
    _tasks.c.job_id == bindparam("p_job_id"), _tasks.c.state == TaskState.RUNNING
)
_JOB_STATE = select(_jobs.c.state).where(_jobs.c.id == bindparam("p_job_id"))


async def request_cancel(*, resources: Resources, job_id: uuid.UUID) -> Cancellation | None:
    """Cancel a job: in one transaction, mark it, cancel its queued and waiting tasks and, when none is running,
    close it as cancelled; then tell subscribers, and tell the workers (channel `cancel_channel`) to stop its running
    tasks, which then end cancelled too. Nothing a cancelled task made is kept. None when the job does not exist;
    a job that has ended is left as it is. The caller checks that the actor may do this."""
    now = datetime.now(UTC)
    params = {"p_job_id": job_id, "p_now": now, "p_task_ids": [], "p_these_failed": False}
    async with resources.engine.begin() as conn:
        await lock_job(conn, job_id)
        case_id = (await conn.execute(_REQUEST_CANCEL, params)).scalar_one_or_none()
        if case_id is None:
            state = (await conn.execute(_JOB_STATE, params)).scalar_one_or_none()
            return None if state is None else Cancellation(job_state=JobState(state), cancelled=[], stopping=0)
        cancelled = list((await conn.execute(_CANCEL_WAITING, params)).all())
        stopping = (await conn.execute(_RUNNING_COUNT, params)).scalar_one()
        closed = (await conn.execute(_close_job_statement(), params)).scalar_one_or_none()
        if stopping:  # a claim meanwhile could not lock the job's row to mark it running
            await conn.execute(_MARK_RUNNING, params)
    job_state = JobState(closed) if closed is not None else JobState.RUNNING
    if stopping:
        await _notify_workers(resources, job_id)
    for task in cancelled:
        message = f"{task.analyzer} cancelled"
        await _publish(resources, job_id, job_state, task, TaskState.CANCELLED, 0.0, message, JOB_CANCELLED, case_id)
    message = f"job {closed}" if closed is not None else f"job cancelling: {stopping} running tasks stop"
    await _publish(resources, job_id, job_state, None, None, 1.0 if closed else 0.0, message, case_id=case_id)
    logger.info("job %s: cancellation requested; %d tasks cancelled, %d stopping", job_id, len(cancelled), stopping)
    return Cancellation(job_state=job_state, cancelled=[task.id for task in cancelled], stopping=stopping)


async def cancel_leftovers(
    *, resources: Resources, job_id: uuid.UUID | None = None, task_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """End cancelled the queued and waiting tasks left in an open job whose cancellation was requested (job `job_id`,
    or the job of task `task_id` when that task is one of them), and close the job when nothing of it runs any more;
    under the job's row lock. Such tasks are never claimed, so without this their job would stay open. Returns the
    ids of the tasks ended (none, normally: `request_cancel` cancels them, and nothing queues one again after it)."""
    now = datetime.now(UTC)
    params: dict[str, Any] = {
        "p_job_id": job_id,
        "p_task_id": task_id,
        "p_now": now,
        "p_task_ids": [],
        "p_these_failed": False,
    }
    async with resources.engine.begin() as conn:
        lock = _LOCK_CANCELLING_JOB if job_id is not None else _LOCK_CANCELLING_JOB_OF_TASK
        job = (await conn.execute(lock, params)).first()
        if job is None:
            return []
        params["p_job_id"] = job.id
        cancelled = list((await conn.execute(_CANCEL_WAITING, params)).all())
        closed = (await conn.execute(_close_job_statement(), params)).scalar_one_or_none()
    if not cancelled and closed is None:
        return []
    job_state = JobState(closed) if closed is not None else JobState.RUNNING
    logger.warning("job %s is being cancelled: %d tasks left in line ended cancelled", job.id, len(cancelled))
    for task in cancelled:
        message = f"{task.analyzer} cancelled"
        await _publish(
            resources, job.id, job_state, task, TaskState.CANCELLED, 0.0, message, JOB_CANCELLED, job.case_id
        )
    if closed is not None:
        await _publish(resources, job.id, job_state, None, None, 1.0, f"job {closed}", case_id=job.case_id)
    return [task.id for task in cancelled]


async def _notify_workers(resources: Resources, job_id: uuid.UUID) -> None:
    """Best effort: a worker that misses the message sees the request at its next heartbeat."""
    try:
        channel = cancel_channel(resources.settings.redis_prefix)
        await resources.redis.publish(channel, json.dumps({"job_id": str(job_id)}))
    except (RedisError, OSError):
        logger.warning("could not tell the workers to stop job %s; their heartbeats will", job_id, exc_info=True)


_AGAIN = (TaskState.FAILED, TaskState.CANCELLED)


def _retried() -> Any:
    """The tasks of job `p_job_id` a retry runs again: the failed and cancelled ones, and each case task that depends
    on one of those and has not started yet or succeeded: one that succeeded did without them (the retry may bring
    them), one that is queued or waiting may have been handed over already (its dependencies had all ended) and must
    wait for them again under a new delivery. A case task still running is left to finish: its dossier does without
    the retried tasks (analysing the case again makes one with them)."""
    dependency = _tasks.alias("dependency")
    rerun_case_task = and_(
        _tasks.c.media_id.is_(None),
        _tasks.c.state.in_([TaskState.SUCCEEDED, *WAITING_STATES]),
        exists().where(dependency.c.id == any_(_tasks.c.depends_on), dependency.c.state.in_(_AGAIN)),
    )
    return and_(_tasks.c.job_id == bindparam("p_job_id"), or_(_tasks.c.state.in_(_AGAIN), rerun_case_task))


#: Whether the job `p_job_id` is being cancelled with tasks still stopping (read once its row is locked).
_STOPPING = select(
    and_(
        _jobs.c.cancel_requested_at.is_not(None),
        exists().where(_tasks.c.job_id == _jobs.c.id, _tasks.c.state == TaskState.RUNNING),
    )
).where(_jobs.c.id == bindparam("p_job_id"))
_RETRY = (
    update(_tasks)
    .where(_retried())
    .values(
        state=TaskState.QUEUED,
        attempts=0,
        # A new round: its deliveries are named apart from every earlier one (see `arq_job_id`).
        generation=_tasks.c.generation + 1,
        progress=0.0,
        error_code=None,
        error_message=None,
        worker=None,
        started_at=None,
        first_started_at=None,
        finished_at=None,
        deadline_at=None,
        next_attempt_at=None,
        heartbeat_at=bindparam("p_now"),
    )
    .returning(
        _tasks.c.id,
        _tasks.c.analyzer,
        _tasks.c.resource,
        _tasks.c.priority,
        _tasks.c.depends_on,
        _tasks.c.generation,
    )
)
_REOPEN = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("p_job_id"))
    .values(
        state=case(
            (_jobs.c.state.in_(OPEN_JOB_STATES), _jobs.c.state),
            else_=literal(JobState.QUEUED, _jobs.c.state.type),
        ),
        finished_at=None,
        cancel_requested_at=None,
    )
    .returning(_jobs.c.state, _jobs.c.case_id)
)
#: Which of the tasks `p_ids` have their dependencies met.
READY_AMONG = select(_tasks.c.id).where(_tasks.c.id.in_(bindparam("p_ids", expanding=True)), ~unmet_dependencies())


async def retry_failed(*, resources: Resources, job_id: uuid.UUID) -> list[uuid.UUID]:
    """Run the failed and cancelled tasks of a job again, from the start: each gets a fresh set of
    `worker.max_tries` runs (attempts back to 0; the earlier errors are dropped) under a new generation of
    deliveries, the job is reopened (a cancellation request is withdrawn), and the tasks whose dependencies are met
    are enqueued (the others when they are). A case task that succeeded, or that has not started yet, runs (again)
    after them when one of its dependencies is retried, so that the case's dossier takes in what the retry brings
    (as a new version); one that is running is left to finish without them. Returns the ids of the tasks queued
    again (none: nothing to retry). Raises `Conflict` while the job is being cancelled and some of its tasks are
    still stopping (they end cancelled: retry once the job has ended). The caller checks that the actor may do
    this."""
    now = datetime.now(UTC)
    params = {"p_job_id": job_id, "p_now": now}
    async with resources.engine.begin() as conn:
        await lock_job(conn, job_id)
        if (await conn.execute(_STOPPING, params)).scalar_one_or_none():
            raise Conflict(
                "The job is being cancelled and some of its tasks are still stopping; retry it once it has ended."
            )
        retried = list((await conn.execute(_RETRY, params)).all())
        if not retried:
            return []
        await dossiers.detach_versions(conn, [task.id for task in retried])
        job = (await conn.execute(_REOPEN, params)).one()
        met = set((await conn.execute(READY_AMONG, {"p_ids": [task.id for task in retried]})).scalars())
    ready = [task for task in retried if task.id in met]
    job_state = JobState(job.state)
    for task in retried:
        await _publish(
            resources,
            job_id,
            job_state,
            task,
            TaskState.QUEUED,
            0.0,
            f"{task.analyzer} queued again",
            case_id=job.case_id,
        )
    await _publish(
        resources,
        job_id,
        job_state,
        None,
        None,
        0.0,
        f"job {job_state}: {len(retried)} tasks run again",
        case_id=job.case_id,
    )
    queued: list[uuid.UUID] = []
    try:
        for task in ready:
            await enqueue_task(
                resources=resources,
                task_id=task.id,
                resource=task.resource,
                priority=task.priority,
                generation=task.generation,
                replace=True,
            )
            queued.append(task.id)
        await wake(resources, {task.resource for task in ready})
    except Exception:
        logger.exception("could not enqueue the retried tasks of job %s", job_id)
        unavailable = BackendUnavailable("The task queue was unavailable; the task was not started.")
        unqueued = [task.id for task in ready if task.id not in queued]
        await fail_unqueued(resources=resources, job_id=job_id, task_ids=unqueued, reason=unavailable)
        raise BackendUnavailable("The task queue is unavailable; not every task was queued again. Try again.") from None
    logger.info("job %s: %d tasks run again", job_id, len(retried))
    return [task.id for task in retried]


async def publish_task_event(
    resources: Resources,
    job_id: uuid.UUID,
    task: _TaskRef,
    task_state: TaskState,
    message: str,
    error_code: str | None = None,
    case_id: uuid.UUID | None = None,
) -> None:
    """Tell subscribers about a change to one task of a running job made outside this module (the reconciler)."""
    await _publish(resources, job_id, JobState.RUNNING, task, task_state, 0.0, message, error_code, case_id)


async def lock_job(conn: AsyncConnection, job_id: uuid.UUID) -> None:
    """Finishers of one job take turns on its row, so the last one sees every other task's end; whatever puts one
    of its tasks back in line takes it too, so that a cancellation being requested is seen. Lock the job before
    any of its tasks."""
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
    case_id: uuid.UUID | None = None,
) -> None:
    """Tell subscribers; best effort (PostgreSQL holds the state; a subscriber that missed an event reads it)."""
    try:
        event = JobEvent(
            job_id=str(job_id),
            job_state=job_state,
            task_id=str(run.id) if run else None,
            analyzer=run.analyzer if run else None,
            task_state=task_state,
            progress=progress,
            message=message,
            error_code=error_code,
            case_id=str(case_id) if case_id is not None else None,
        )
        await publish(resources.redis, resources.settings.redis_prefix, event)
    except (RedisError, OSError) as exc:
        logger.warning("could not publish an event of job %s (%s): %s", job_id, message, exc)
