"""Jobs and tasks: creating them and reading them. A worker's state changes are in `task_runs`.

PostgreSQL holds the state of record; arq only carries task ids to workers, and Redis pub/sub tells subscribers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Select, Table, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.analysis import Analyzer, MediaKind
from aima.db.models import Case, CaseRole, Job, JobState, Media, Task, TaskState
from aima.errors import AnalyzerNotApplicable, BackendUnavailable, InvalidInput, NotFound
from aima.events import wake_workers
from aima.plugins import AnalyzerRegistry
from aima.resources import Resources
from aima.services import task_runs
from aima.services.access import Actor, CaseAccess, case_access, ensure, member_role_of

logger = logging.getLogger(__name__)

TASK_FUNCTION = "run_analysis_task"


def arq_job_id(task_id: uuid.UUID | str) -> str:
    """One arq job per task: arq refuses a second enqueue of the same id while the first is known."""
    return f"task:{task_id}"


async def analyze_media(
    *, resources: Resources, actor: Actor, media_id: uuid.UUID, analyzers: Sequence[str] | None
) -> Job:
    """Create a job with one task per requested analyzer and hand the tasks to the workers."""
    registry = resources.analyzers
    # One transaction of plain statements: this runs for every analysis request.
    async with resources.engine.begin() as conn:
        row = (await conn.execute(_media_access(actor), {"p_media_id": media_id})).first()
        access = case_access(actor, row.owner_id, row.member_role) if row is not None else CaseAccess.NONE
        if row is None or access is CaseAccess.NONE:
            raise NotFound("Media", media_id)
        ensure(access, CaseAccess.EDITOR, "start analyses in it")
        kind = MediaKind(row.kind)
        chosen = _choose_analyzers(registry, kind, analyzers)
        job = Job(
            id=uuid.uuid4(),
            case_id=row.case_id,
            media_id=media_id,
            created_by=actor.user_id,
            state=JobState.QUEUED,
            created_at=datetime.now(UTC),
            finished_at=None,
        )
        tasks = [
            Task(
                id=uuid.uuid4(),
                job_id=job.id,
                media_id=media_id,
                analyzer=analyzer.name,
                analyzer_version=analyzer.version,
                state=TaskState.QUEUED,
                progress=0.0,
                attempts=0,
            )
            for analyzer in chosen
        ]
        await conn.execute(insert(_jobs), _columns(job))
        await conn.execute(insert(_tasks), [_columns(task) for task in tasks])

    queued: list[uuid.UUID] = []
    try:
        for task in tasks:
            await resources.arq.enqueue_job(TASK_FUNCTION, str(task.id), _job_id=arq_job_id(task.id))
            queued.append(task.id)
        await wake_workers(resources.redis, resources.settings.redis_prefix, resources.settings.worker.queue_name)
    except Exception as exc:
        logger.exception("could not enqueue the tasks of job %s", job.id)
        unavailable = BackendUnavailable("The task queue was unavailable; the task was not started.")
        unqueued = [task.id for task in tasks if task.id not in queued]
        await task_runs.fail_unqueued(resources=resources, job_id=job.id, task_ids=unqueued, reason=unavailable)
        raise BackendUnavailable("The task queue is unavailable; the job was not (fully) started. Try again.") from exc
    logger.info("job %s queued with %d tasks for media %s", job.id, len(tasks), media_id)
    return job


_jobs = cast(Table, Job.__table__)
_tasks = cast(Table, Task.__table__)


def _media_access(actor: Actor) -> Select[str, uuid.UUID, uuid.UUID, CaseRole]:
    return (
        select(Media.kind, Media.case_id, Case.owner_id, member_role_of(actor).label("member_role"))
        .join(Case, Case.id == Media.case_id)
        .where(Media.id == bindparam("p_media_id"))
    )


def _columns(row: Job | Task) -> dict[str, object]:
    """The column values set on a row that is inserted with a plain statement, not through a session."""
    table = cast(Table, type(row).__table__)
    return {c.key: value for c in table.columns if (value := getattr(row, c.key, None)) is not None}


def _choose_analyzers(registry: AnalyzerRegistry, kind: MediaKind, names: Sequence[str] | None) -> list[Analyzer]:
    """The analyzers asked for (all that accept the media when None), checked against the media's kind."""
    if names is None:
        chosen = [a for a in registry.all() if a.accepts(kind)]
        if not chosen:
            raise AnalyzerNotApplicable(f"No installed analyzer accepts {kind} media.")
        return chosen
    if not names:
        raise InvalidInput(f"Name at least one analyzer. Available analyzers: {', '.join(registry.names())}.")
    chosen = [registry.get(name) for name in dict.fromkeys(names)]
    for analyzer in chosen:
        if not analyzer.accepts(kind):
            accepted = ", ".join(sorted(analyzer.media_kinds))
            raise AnalyzerNotApplicable(
                f"Analyzer {analyzer.name!r} does not accept {kind} media (it accepts: {accepted})."
            )
    return chosen


async def get_job(*, session: AsyncSession, actor: Actor, job_id: uuid.UUID) -> Job:
    query = select(Job, Case.owner_id, member_role_of(actor)).join(Case, Job.case_id == Case.id).where(Job.id == job_id)
    row = (await session.execute(query)).first()
    if row is None or case_access(actor, row[1], row[2]) is CaseAccess.NONE:
        raise NotFound("Job", job_id)
    job: Job = row[0]
    return job


async def tasks_of_job(*, session: AsyncSession, job_id: uuid.UUID) -> list[Task]:
    query = select(Task).where(Task.job_id == job_id).order_by(Task.created_at, Task.analyzer)
    return list((await session.execute(query)).scalars())


async def jobs_of_case(*, session: AsyncSession, case_id: uuid.UUID) -> list[Job]:
    query = select(Job).where(Job.case_id == case_id).order_by(Job.created_at.desc(), Job.id)
    return list((await session.execute(query)).scalars())
