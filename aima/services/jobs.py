"""Jobs and tasks: creating them and reading them. A worker's state changes are in `task_runs`.

PostgreSQL holds the state of record; arq only carries task ids to workers, and Redis pub/sub tells subscribers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aima.analysis import MediaKind
from aima.db.models import Case, Job, Task
from aima.errors import AnalyzerNotApplicable, BackendUnavailable, InvalidInput, NotFound
from aima.resources import Resources
from aima.services import task_runs
from aima.services.access import Actor, can_read_case
from aima.services.cases import get_writable_case
from aima.services.media import get_media

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
    async with resources.sessions() as session:
        media = await get_media(session=session, actor=actor, media_id=media_id)
        await get_writable_case(session=session, actor=actor, case_id=media.case_id)
        kind = MediaKind(media.kind)
        if analyzers is None:
            chosen = [a for a in registry.all() if a.accepts(kind)]
            if not chosen:
                raise AnalyzerNotApplicable(f"No installed analyzer accepts {kind} media.")
        else:
            if not analyzers:
                raise InvalidInput(f"Name at least one analyzer. Available analyzers: {', '.join(registry.names())}.")
            chosen = [registry.get(name) for name in dict.fromkeys(analyzers)]
            for analyzer in chosen:
                if not analyzer.accepts(kind):
                    accepted = ", ".join(sorted(analyzer.media_kinds))
                    raise AnalyzerNotApplicable(
                        f"Analyzer {analyzer.name!r} does not accept {kind} media (it accepts: {accepted})."
                    )
        job = Job(id=uuid.uuid4(), case_id=media.case_id, media_id=media.id, created_by=actor.user_id)
        tasks = [
            Task(
                id=uuid.uuid4(),
                job_id=job.id,
                media_id=media.id,
                analyzer=analyzer.name,
                analyzer_version=analyzer.version,
            )
            for analyzer in chosen
        ]
        session.add(job)
        await session.flush()  # without relationship()s the unit of work does not order rows by foreign keys
        session.add_all(tasks)
        await session.commit()

    queued: list[uuid.UUID] = []
    try:
        for task in tasks:
            await resources.arq.enqueue_job(TASK_FUNCTION, str(task.id), _job_id=arq_job_id(task.id))
            queued.append(task.id)
    except Exception as exc:
        logger.exception("could not enqueue the tasks of job %s", job.id)
        unavailable = BackendUnavailable("The task queue was unavailable; the task was not started.")
        unqueued = [task.id for task in tasks if task.id not in queued]
        await task_runs.fail_unqueued(resources=resources, job_id=job.id, task_ids=unqueued, reason=unavailable)
        raise BackendUnavailable("The task queue is unavailable; the job was not (fully) started. Try again.") from exc
    logger.info("job %s queued with %d tasks for media %s", job.id, len(tasks), media.id)
    return job


async def get_job(*, session: AsyncSession, actor: Actor, job_id: uuid.UUID) -> Job:
    row = (await session.execute(select(Job, Case).join(Case, Job.case_id == Case.id).where(Job.id == job_id))).first()
    if row is None or not can_read_case(actor, row.Case):
        raise NotFound("Job", job_id)
    job: Job = row.Job
    return job


async def tasks_of_job(*, session: AsyncSession, job_id: uuid.UUID) -> list[Task]:
    query = select(Task).where(Task.job_id == job_id).order_by(Task.created_at, Task.analyzer)
    return list((await session.execute(query)).scalars())


async def jobs_of_case(*, session: AsyncSession, case_id: uuid.UUID) -> list[Job]:
    query = select(Job).where(Job.case_id == case_id).order_by(Job.created_at.desc(), Job.id)
    return list((await session.execute(query)).scalars())
