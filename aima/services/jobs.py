"""Jobs and tasks: creating them and reading them. A worker's state changes are in `task_runs`.

PostgreSQL holds the state of record; arq only carries task ids to workers, and Redis pub/sub tells subscribers.

A job holds one task per requested analyzer and, before them, its *preparation* tasks (`aima.services.artifacts`):
one ``prepare:<name>`` task per thing its analyzers need made from the original (``prepare:keyframes``,
``prepare:audio_track``), each analysis task listing those it needs in `depends_on`; only tasks without
dependencies are enqueued here, the others when their preparations succeed (`task_runs.finish_task`). A job also
makes the media's preview when it has none yet (``prepare:thumbnail`` for images, ``prepare:poster`` for videos),
as a task nothing depends on. A preparation whose files are stored already succeeds at once.

A case job may also hold *case tasks*: one per requested case analyzer (the dossier's fusion), without media,
depending on every other task of the job and starting once they have all ended, whatever their outcome (the
analyzer says what is missing). When a job has one, every media item with sound also gets the `AUDIO_ANALYZER`
task when it is installed: audio always goes through Whisper. An analysis may ask for more analyses of its media
item in the same job (`AnalysisOutput.follow_ups`, `add_follow_ups`); the job's case tasks then wait for those too.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Select, Table, Uuid, and_, bindparam, case, exists, func, insert, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from aima import queues
from aima.analysis import Analyzer, CaseAnalyzer, MediaKind
from aima.db.models import Artifact, Case, CaseRole, Job, JobState, Media, Priority, Task, TaskState
from aima.errors import AnalyzerNotApplicable, BackendUnavailable, InvalidInput, NotFound, UnknownAnalyzer
from aima.plugins import AnalyzerRegistry
from aima.resources import Resources
from aima.services import artifacts, task_runs
from aima.services.access import Actor, CaseAccess, case_access, ensure, member_role_of, readable_cases
from aima.services.artifacts import Preparation
from aima.services.cases import get_case
from aima.services.task_runs import TASK_FUNCTION, arq_job_id

__all__ = ["TASK_FUNCTION", "analyze_case", "analyze_media", "arq_job_id", "get_job", "jobs_of_case", "tasks_of_job"]

logger = logging.getLogger(__name__)

#: The analyzer every media item with sound goes through when a case analyzer is in the job.
AUDIO_ANALYZER = "whisper"


async def analyze_media(
    *,
    resources: Resources,
    actor: Actor,
    media_id: uuid.UUID,
    analyzers: Sequence[str] | None,
    priority: Priority = Priority.NORMAL,
) -> Job:
    """Create a job with one task per requested analyzer (and the preparations they need), and queue it."""
    # One transaction of plain statements: this runs for every analysis request.
    async with resources.engine.begin() as conn:
        query = _media_rows(actor).where(Media.id == bindparam("p_media_id"))
        row = (await conn.execute(query, {"p_media_id": media_id})).first()
        access = case_access(actor, row.owner_id, row.member_role) if row is not None else CaseAccess.NONE
        if row is None or access is CaseAccess.NONE:
            raise NotFound("Media", media_id)
        ensure(access, CaseAccess.EDITOR, "start analyses in it")
        chosen = _choose_analyzers(resources.analyzers, MediaKind(row.kind), analyzers)
        job = _new_job(row.case_id, media_id, actor, priority)
        tasks = _plan_tasks(job, row, chosen)
        await conn.execute(insert(_jobs), _columns(job))
        await conn.execute(insert(_tasks), [_columns(task) for task in tasks])
    await _queue(resources, job, tasks)
    logger.info("job %s queued with %d tasks for media %s", job.id, len(tasks), media_id)
    return job


async def analyze_case(
    *,
    resources: Resources,
    actor: Actor,
    case_id: uuid.UUID,
    analyzers: Sequence[str] | None,
    priority: Priority = Priority.NORMAL,
) -> Job:
    """One job over every media item of a case: each media analyzer on each media item it accepts, then each case
    analyzer once over the whole case. None: every installed analyzer of both kinds."""
    async with resources.sessions() as session:
        await get_case(session=session, actor=actor, case_id=case_id, needed=CaseAccess.EDITOR)
    wanted, case_wanted = _case_job_analyzers(resources.analyzers, analyzers)
    audio = _audio_analyzer(resources.analyzers) if case_wanted else None
    async with resources.engine.begin() as conn:
        query = _media_rows(actor).where(Media.case_id == case_id).order_by(Media.created_at, Media.id)
        rows = list(await conn.execute(query))
        if not rows:
            raise InvalidInput("The case holds no media to analyse yet.")
        job = _new_job(case_id, None, actor, priority)
        tasks: list[Task] = []
        for row in rows:
            kind = MediaKind(row.kind)
            accepting = [a for a in wanted if a.accepts(kind)]
            # Audio always goes through Whisper: wherever there is a sound track to prepare.
            has_sound = artifacts.AUDIO_TRACK.applies_to(kind, has_audio=row.has_audio)
            if audio is not None and audio not in accepting and has_sound:
                accepting.append(audio)
            if accepting:
                tasks.extend(_plan_tasks(job, row, accepting))
        if not tasks and not case_wanted:
            names = ", ".join(a.name for a in wanted)
            raise AnalyzerNotApplicable(f"None of the analyzers ({names}) accepts any media of this case.")
        case_tasks = [_case_task(job, analyzer, [task.id for task in tasks]) for analyzer in case_wanted]
        await conn.execute(insert(_jobs), _columns(job))
        if tasks:
            await conn.execute(insert(_tasks), [_columns(task) for task in tasks])
        if case_tasks:  # apart: their rows leave media_id out, and one statement takes one set of columns
            await conn.execute(insert(_tasks), [_columns(task) for task in case_tasks])
    await _queue(resources, job, [*tasks, *case_tasks])
    logger.info(
        "case job %s queued with %d tasks over %d media of case %s, and %d case tasks",
        job.id,
        len(tasks),
        len(rows),
        case_id,
        len(case_tasks),
    )
    return job


def _case_job_analyzers(
    registry: AnalyzerRegistry, names: Sequence[str] | None
) -> tuple[list[Analyzer], list[CaseAnalyzer]]:
    """The media and case analyzers a case job runs: those named, or every installed one of both kinds."""
    if names is None:
        return registry.all(), registry.case_analyzers()
    if not names:
        available = ", ".join(sorted([*registry.names(), *(a.name for a in registry.case_analyzers())]))
        raise InvalidInput(f"Name at least one analyzer. Available analyzers: {available}.")
    media: list[Analyzer] = []
    case_level: list[CaseAnalyzer] = []
    for name in dict.fromkeys(names):
        if registry.is_case_analyzer(name):
            case_level.append(registry.get_case(name))
        else:
            media.append(registry.get(name))
    return media, case_level


def _audio_analyzer(registry: AnalyzerRegistry) -> Analyzer | None:
    return registry.get(AUDIO_ANALYZER) if AUDIO_ANALYZER in registry.names() else None


def _case_task(job: Job, analyzer: CaseAnalyzer, depends_on: list[uuid.UUID]) -> Task:
    """A case analyzer's task: no media; it starts once every other task of the job (`depends_on`) ended."""
    return Task(
        id=uuid.uuid4(),
        job_id=job.id,
        media_id=None,
        analyzer=analyzer.name,
        analyzer_version=analyzer.version,
        state=TaskState.QUEUED,
        progress=0.0,
        attempts=0,
        depends_on=depends_on,
        resource=analyzer.runs_on,
        priority=job.priority,
    )


def _new_job(case_id: uuid.UUID, media_id: uuid.UUID | None, actor: Actor, priority: Priority) -> Job:
    return Job(
        id=uuid.uuid4(),
        case_id=case_id,
        media_id=media_id,
        created_by=actor.user_id,
        state=JobState.QUEUED,
        priority=str(priority),
        created_at=datetime.now(UTC),
        finished_at=None,
    )


async def _queue(resources: Resources, job: Job, tasks: list[Task]) -> None:
    """Enqueue the tasks that wait on nothing (the others follow their preparations); if the queue is down, the
    tasks not queued fail and the caller hears so."""
    queued: list[uuid.UUID] = []
    ready = [task for task in tasks if not task.depends_on]
    try:
        for task in ready:
            await task_runs.enqueue_task(
                resources=resources, task_id=task.id, resource=task.resource, priority=task.priority
            )
            queued.append(task.id)
        await task_runs.wake(resources, {task.resource for task in ready})
    except Exception as exc:
        logger.exception("could not enqueue the tasks of job %s", job.id)
        unavailable = BackendUnavailable("The task queue was unavailable; the task was not started.")
        unqueued = [task.id for task in tasks if task.id not in queued]
        await task_runs.fail_unqueued(resources=resources, job_id=job.id, task_ids=unqueued, reason=unavailable)
        raise BackendUnavailable("The task queue is unavailable; the job was not (fully) started. Try again.") from exc


_jobs = cast(Table, Job.__table__)
_tasks = cast(Table, Task.__table__)


def _plan_tasks(job: Job, media: Any, chosen: list[Analyzer]) -> list[Task]:
    """For one media item: its preparation tasks, then one task per analyzer depending on the preparations it needs."""
    kind = MediaKind(media.kind)

    def task(name: str, version: str, depends_on: list[uuid.UUID], resource: str = queues.CPU) -> Task:
        return Task(
            id=uuid.uuid4(),
            job_id=job.id,
            media_id=media.id,
            analyzer=name,
            analyzer_version=version,
            state=TaskState.QUEUED,
            progress=0.0,
            attempts=0,
            depends_on=depends_on,
            resource=resource,
            priority=job.priority,
        )

    needed = {a.name: artifacts.preparations_for(kind, a.needs, has_audio=media.has_audio) for a in chosen}
    preparations: dict[str, Preparation] = {}
    preview = artifacts.PREVIEW.get(kind)
    if preview is not None and not media.has_preview:
        preparations[preview.name] = preview
    for wanted in needed.values():
        preparations.update((p.name, p) for p in wanted)
    prepared = {name: task(p.task_name, p.version, []) for name, p in preparations.items()}
    analyses = [
        task(a.name, a.version, [prepared[p.name].id for p in needed[a.name]], resource=a.runs_on) for a in chosen
    ]
    return [*prepared.values(), *analyses]


#: Whether a media item's probe lists an audio stream; None when it listed no streams (unknown: the audio track is
#: then tried).
_HAS_AUDIO = Media.probe["streams"].contains([{"type": "audio"}])


def _media_rows(actor: Actor) -> Select[uuid.UUID, str, uuid.UUID, uuid.UUID, CaseRole, bool | None, bool]:
    """Media with what planning needs: kind, case, the actor's access, whether it has sound and a preview."""
    preview_kind = case(
        *((Media.kind == str(kind), str(p.kind)) for kind, p in artifacts.PREVIEW.items()),
        else_=None,
    )
    preview_version = case(
        *((Media.kind == str(kind), p.version) for kind, p in artifacts.PREVIEW.items()),
        else_=None,
    )
    has_preview = exists().where(
        and_(
            Artifact.media_id == Media.id,
            Artifact.kind == preview_kind,
            Artifact.details["version"].astext == preview_version,
        )
    )
    return select(
        Media.id,
        Media.kind,
        Media.case_id,
        Case.owner_id,
        member_role_of(actor).label("member_role"),
        _HAS_AUDIO.label("has_audio"),
        has_preview.label("has_preview"),
    ).join(Case, Case.id == Media.case_id)


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
    for name in names:
        if registry.is_case_analyzer(name):
            raise AnalyzerNotApplicable(f"{name!r} analyses a whole case: start it with analyzeCase.")
    chosen = [registry.get(name) for name in dict.fromkeys(names)]
    for analyzer in chosen:
        if not analyzer.accepts(kind):
            accepted = ", ".join(sorted(analyzer.media_kinds))
            raise AnalyzerNotApplicable(
                f"Analyzer {analyzer.name!r} does not accept {kind} media (it accepts: {accepted})."
            )
    return chosen


async def get_job(
    *,
    session: AsyncSession,
    actor: Actor,
    job_id: uuid.UUID,
    needed: CaseAccess = CaseAccess.VIEWER,
    what: str = "change its jobs",
) -> Job:
    """The job, if the actor may do what `needed` allows in its case; a missing and a hidden job look the same."""
    query = select(Job, Case.owner_id, member_role_of(actor)).join(Case, Job.case_id == Case.id).where(Job.id == job_id)
    row = (await session.execute(query)).first()
    access = case_access(actor, row[1], row[2]) if row is not None else CaseAccess.NONE
    if row is None or access is CaseAccess.NONE:
        raise NotFound("Job", job_id)
    ensure(access, needed, what)
    job: Job = row[0]
    return job


async def tasks_of_job(*, session: AsyncSession, job_id: uuid.UUID) -> list[Task]:
    """Every task of a job, preparations included (their names start with ``prepare:``)."""
    query = select(Task).where(Task.job_id == job_id).order_by(Task.created_at, Task.analyzer)
    return list((await session.execute(query)).scalars())


async def jobs_of_case(*, session: AsyncSession, case_id: uuid.UUID) -> list[Job]:
    query = select(Job).where(Job.case_id == case_id).order_by(Job.created_at.desc(), Job.id)
    return list((await session.execute(query)).scalars())


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    has_next: bool


def job_cursor(job: Job) -> str:
    """An opaque position in the job history (newest first): creation time and id."""
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("`after` is not a cursor this server gave out.") from exc


async def list_jobs(
    *,
    session: AsyncSession,
    actor: Actor,
    case_id: uuid.UUID | None = None,
    media_id: uuid.UUID | None = None,
    state: JobState | None = None,
    mine: bool = False,
    first: int = 20,
    after: str | None = None,
) -> JobPage:
    """The job history the actor may read (every job, for an administrator), newest first, a page at a time."""
    if not 1 <= first <= 200:
        raise InvalidInput("`first` must be between 1 and 200.")
    query = select(Job).join(Case, Case.id == Job.case_id).where(readable_cases(actor))
    if case_id is not None:
        query = query.where(Job.case_id == case_id)
    if media_id is not None:
        query = query.where(Job.media_id == media_id)
    if state is not None:
        query = query.where(Job.state == state)
    if mine:
        query = query.where(Job.created_by == actor.user_id)
    if after is not None:
        created, job_id = _after(after)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(literal(created), literal(job_id)))
    rows = list(
        (await session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(first + 1))).scalars()
    )
    return JobPage(jobs=rows[:first], has_next=len(rows) > first)


async def cancel_job(*, resources: Resources, actor: Actor, job_id: uuid.UUID) -> Job:
    """Stop a job: queued tasks never start, running ones stop within seconds (whoever may start analyses in its
    case may cancel it)."""
    async with resources.sessions() as session:
        await get_job(session=session, actor=actor, job_id=job_id, needed=CaseAccess.EDITOR, what="cancel its jobs")
    await task_runs.request_cancel(resources=resources, job_id=job_id)
    async with resources.sessions() as session:
        return await get_job(session=session, actor=actor, job_id=job_id)


async def retry_job(*, resources: Resources, actor: Actor, job_id: uuid.UUID) -> tuple[Job, int]:
    """Run a job's failed and cancelled tasks again; returns the job and how many tasks were queued again."""
    async with resources.sessions() as session:
        await get_job(session=session, actor=actor, job_id=job_id, needed=CaseAccess.EDITOR, what="retry its jobs")
    retried = await task_runs.retry_failed(resources=resources, job_id=job_id)
    async with resources.sessions() as session:
        return await get_job(session=session, actor=actor, job_id=job_id), len(retried)


@dataclass(frozen=True)
class _FollowUpMedia:
    """What `_plan_tasks` reads of a media item, for follow-ups (which never add a preview)."""

    id: uuid.UUID
    kind: str
    has_audio: bool | None
    has_preview: bool = True


_LOCKED_JOB = select(Job.cancel_requested_at, Job.state, Job.priority).where(Job.id == bindparam("p_job_id"))


async def add_follow_ups(*, resources: Resources, run: task_runs.TaskRun, names: Sequence[str]) -> list[uuid.UUID]:
    """Add to the run's job a task for each analyzer an analysis asked to look at its media item too
    (`AnalysisOutput.follow_ups`), unless the media has a result of it or a task of it in the job already, or the
    analyzer does not accept the media (or is not installed: logged). Preparations the job already has for the media
    are reused. The job's queued case tasks wait for the new tasks too (under the job's row lock, so a case task
    cannot start in between). Returns the ids of the tasks added; those ready are queued."""
    if run.media_id is None or run.media is None or not names:
        return []
    media_id, kind = run.media_id, run.media.kind
    candidates: list[Analyzer] = []
    for name in dict.fromkeys(names):
        try:
            analyzer = resources.analyzers.get(name)
        except UnknownAnalyzer:
            logger.warning("task %s asked for %r, which is not installed here; not added", run.id, name)
            continue
        if name != run.analyzer and analyzer.accepts(kind):
            candidates.append(analyzer)
    if not candidates:
        return []
    query = {"media_id": str(media_id), "analyzer": {"$in": [a.name for a in candidates]}}
    done = set(await resources.results.distinct("analyzer", query))
    wanted = [a for a in candidates if a.name not in done]
    if not wanted:
        return []
    async with resources.engine.begin() as conn:
        job = (await conn.execute(_LOCKED_JOB.with_for_update(), {"p_job_id": run.job_id})).first()
        if job is None or job.cancel_requested_at is not None or JobState(job.state).terminal:
            return []
        existing = {
            row.analyzer: row
            for row in await conn.execute(
                select(Task.id, Task.analyzer, Task.state).where(Task.job_id == run.job_id, Task.media_id == media_id)
            )
        }
        wanted = [a for a in wanted if a.name not in existing]
        has_audio = await conn.scalar(select(_HAS_AUDIO).where(Media.id == media_id))
        planned = _plan_tasks(
            Job(id=run.job_id, priority=job.priority), _FollowUpMedia(media_id, str(kind), has_audio), wanted
        )
        tasks = _reuse_preparations(planned, existing)
        if not tasks:
            return []
        await conn.execute(insert(_tasks), [_columns(task) for task in tasks])
        added = [task.id for task in tasks]
        await conn.execute(
            update(Task)
            .where(Task.job_id == run.job_id, Task.media_id.is_(None), Task.state == TaskState.QUEUED)
            .values(depends_on=func.array_cat(Task.depends_on, bindparam("p_added", added, type_=ARRAY(Uuid))))
        )
        ready = list((await conn.execute(task_runs.READY_AMONG, {"p_ids": added})).scalars())
    for task in tasks:
        await task_runs.publish_task_event(
            resources,
            run.job_id,
            task,
            TaskState.QUEUED,
            f"{task.analyzer} queued: {run.analyzer} asked for it",
            case_id=run.case_id,
        )
    if ready:
        await task_runs.hand_over(resources, run.job_id, ready)
    logger.info("task %s (%s) added %s to job %s", run.id, run.analyzer, [t.analyzer for t in tasks], run.job_id)
    return added


def _reuse_preparations(planned: list[Task], existing: Mapping[str, Any]) -> list[Task]:
    """Point the planned analyses at the job's own preparation tasks for the media where it has them; analyses
    whose preparation failed there are left out (they could not run)."""
    replaced: dict[uuid.UUID, uuid.UUID | None] = {}
    kept: list[Task] = []
    for task in planned:
        if not task.analyzer.startswith(artifacts.PREPARE_PREFIX) or task.analyzer not in existing:
            kept.append(task)
            continue
        found = existing[task.analyzer]
        ended_badly = TaskState(found.state) in (TaskState.FAILED, TaskState.CANCELLED)
        replaced[task.id] = None if ended_badly else found.id
    result: list[Task] = []
    for task in kept:
        if any(replaced.get(dep, dep) is None for dep in task.depends_on):
            logger.info("follow-up %s left out: its preparation failed in this job", task.analyzer)
            continue
        task.depends_on = [replaced.get(dep) or dep for dep in task.depends_on]
        result.append(task)
    return result
