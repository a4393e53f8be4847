"""The task function: run an analysis (fetch what the analyzer needs, run it, store the result) or a preparation
(make and store derived files), and record the state.

An analysis stores, before its task is marked succeeded, what the analyzer returned beside its result (files in S3,
embeddings and embedded searchable texts in Milvus: `aima.services.outputs`), then the result document naming the
files, then hands the faces and voices that changed to the identities service. The checks and the embedding of
texts belong to the analysis (a cancellation stops them); the writes happen outside it, so a stop never
interrupts one. The follow-ups an analysis asks for (`AnalysisOutput.follow_ups`) join its job once its result is
stored (`aima.services.jobs.add_follow_ups`).

A case task (no media) runs its case analyzer over the whole case (`aima.services.case_input`), checks every
citation of the result against the case's stored results (`aima.services.dossiers`: `INVALID_CITATIONS` fails
the task) and stores it as the case's next dossier version. Analyzers get the process's model endpoints
(`Resources.endpoints`) in their input.

A task whose row vanished while it ran (its media, case or job was deleted) leaves nothing behind: after storing a
result the worker checks that the row is still there and deletes the result document, its vectors and its files if
not; a preparation's files are deleted again by `ensure_artifacts` when the media row is gone. The deletion itself
sweeps the stores only after its rows are gone, so between the two nothing stays.

Outcomes: a permanent error (an `AimaError` that is not transient: unreadable media, output that cannot be stored,
...) fails the task at once with its reason; a transient one (`ModelUnavailable`, `BackendUnavailable`, also
raised when a store is down while the outputs are written) makes it wait for model and run again after a backoff,
until `worker.max_tries` runs (`task_runs.retry_later`); the next run replaces what the failed one wrote. A run
stopped because its job was cancelled ends cancelled and what it stored is deleted (a preparation's derived files
are the media's, shared by every job, and stay). A run interrupted because the worker stops is given back to the
queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aima.analysis import AnalysisInput, AnalysisOutput, Analyzer, Keyframe, Need
from aima.db.models import TaskState
from aima.errors import AimaError
from aima.inference import Endpoints
from aima.logs import log_context
from aima.metrics import TASK_DURATION, TASKS, TASKS_RUNNING
from aima.resources import Resources
from aima.services import artifacts, case_input, dossiers, jobs, outputs, task_runs
from aima.services.artifacts import Preparation, SourceMedia
from aima.services.results import upsert_result
from aima.services.task_runs import MediaFacts, TaskRun
from aima.workers.process import Running, StopReason, WorkerProcess

logger = logging.getLogger(__name__)

INTERNAL_ERROR_CODE = "ANALYZER_CRASHED"
#: Seconds between two progress reports of one task, so a chatty analyzer cannot flood Redis.
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class _Analysis:
    """A media analysis, checked and ready to store, with the analyses it asks for."""

    outputs: outputs.Outputs
    follow_ups: Sequence[str] = ()


@dataclass(frozen=True)
class _CaseResult:
    """A case analyzer's result, its citations checked, ready to store as the next dossier version."""

    content: dict[str, Any]


@dataclass(frozen=True)
class _Kept:
    """What a run stored, to delete again when its job was cancelled (or its row went) meanwhile."""

    outputs: outputs.Stored | None = None
    dossier: dossiers.StoredDossier | None = None


async def run_analysis_task(ctx: dict[str, Any], task_id: str, generation: int | None = None) -> str:
    """arq entry point for one delivery of a task (`generation`: the runs it had when it was enqueued; None: any).

    Safe to run twice: a delivery that is not the task's current one is skipped, a result is upserted, not added.
    """
    resources: Resources = ctx["resources"]
    process: WorkerProcess | None = ctx.get("process")
    with log_context(task_id=task_id):
        run = await task_runs.start_task(
            resources=resources, task_id=uuid.UUID(task_id), worker=ctx["worker_name"], generation=generation
        )
        if run is None:
            logger.info("task %s is unknown, finished, cancelled or taken by a newer delivery; skipped", task_id)
            # Its worker may have stopped between its success and handing over the tasks that waited for it.
            await task_runs.release_dependents(resources=resources, task_id=uuid.UUID(task_id))
            return "skipped"
        with log_context(job_id=str(run.job_id)):
            if process is None:
                return await _run(resources, run, None)
            with process.running(run) as running:
                return await _run(resources, run, running)


async def _run(resources: Resources, task: TaskRun, running: Running | None) -> str:
    """Do the work in an asyncio task of its own, which the process stops when the job is cancelled (or the run
    is no longer this worker's); store its result outside it, so that a stop never interrupts a write."""
    started = time.perf_counter()
    TASKS_RUNNING.labels(analyzer=task.analyzer).inc()
    # Our own deadline, inside arq's: a timeout then fails the task, while a cancellation (the worker shutting
    # down) puts it back in line for the next worker.
    deadline = max(1.0, resources.settings.worker.job_timeout_s - 5.0)
    preparation = artifacts.preparation_of_task(task.analyzer)
    work = asyncio.ensure_future(_work(resources, task, preparation, deadline))
    if running is not None:
        running.attach(work)
    try:
        try:
            prepared = await work
        except asyncio.CancelledError:
            if running is None or running.stop_reason is None or _shutting_down():
                interrupted = AimaError("The worker stopped while the task ran.", code="TASK_INTERRUPTED")
                await asyncio.shield(task_runs.requeue_task(resources=resources, run=task, reason=interrupted))
                raise
            return await _stopped(resources, task, running, started)
        except Exception as exc:
            if running is not None and running.stop_reason is not None:
                return await _stopped(resources, task, running, started)
            return await _failed(resources, task, exc, started, deadline)
        stored: _Kept | None = None
        if prepared is not None and (running is None or running.stop_reason is None):
            try:
                stored = await _store(resources, task, prepared)
            except Exception as exc:
                if running is not None and running.stop_reason is not None:
                    return await _stopped(resources, task, running, started)
                return await _failed(resources, task, exc, started, deadline)
        if running is not None and running.stop_reason is not None:
            return await _stopped(resources, task, running, started, stored)
    finally:
        TASKS_RUNNING.labels(analyzer=task.analyzer).dec()
    state = await _finish(resources, task, TaskState.SUCCEEDED, started)
    if state is TaskState.CANCELLED:  # the job's cancellation came in while the result was stored
        await _discard_result(resources, task, stored)
        return "cancelled"
    if state is None and stored is not None and not await task_runs.task_exists(resources=resources, task_id=task.id):
        await _discard_result(resources, task, stored)
        return "discarded"
    return "succeeded"


async def _store(resources: Resources, task: TaskRun, prepared: _Analysis | _CaseResult) -> _Kept:
    """Store what goes beside the result (files, vectors), then the result document naming the files, then let
    the identities service regroup the faces and voices that changed, then add the follow-ups it asked for. A case
    task's result is stored as the case's next dossier version."""
    if isinstance(prepared, _CaseResult):
        dossier = await dossiers.store_version(
            resources,
            case_id=task.case_id,
            job_id=task.job_id,
            task_id=task.id,
            analyzer=task.analyzer,
            analyzer_version=task.analyzer_version,
            content=prepared.content,
        )
        return _Kept(dossier=dossier)
    origin = _origin(task)
    stored = await outputs.store(resources, origin, prepared.outputs)
    await upsert_result(
        resources.results,
        media_id=origin.media_id,
        case_id=task.case_id,
        analyzer=task.analyzer,
        analyzer_version=task.analyzer_version,
        task_id=task.id,
        payload=prepared.outputs.payload,
        files=stored.files,
    )
    await outputs.cluster(resources, origin, stored)
    if prepared.follow_ups:
        try:
            await jobs.add_follow_ups(resources=resources, run=task, names=prepared.follow_ups)
        except Exception:  # the analysis itself is done and stored; only the extra analyses are lost
            logger.exception("task %s: could not add the follow-ups %s", task.id, list(prepared.follow_ups))
    return _Kept(outputs=stored)


async def _work(
    resources: Resources, task: TaskRun, preparation: Preparation | None, deadline: float
) -> _Analysis | _CaseResult | None:
    """The analysis (its result and outputs, checked, to store), the case analysis (its result, citations checked,
    to store) or the preparation (stored as it is made: None)."""
    async with asyncio.timeout(deadline):
        if preparation is not None:
            await _prepare(resources, task, preparation)
            return None
        if task.is_case_task:
            return await _analyze_case(resources, task, resources.endpoints)
        return await _analyze(resources, task, resources.endpoints)


def _shutting_down() -> bool:
    """Whether this arq job itself is being cancelled (the worker is stopping), not only the work inside it."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def _stopped(
    resources: Resources, task: TaskRun, running: Running, started: float, stored: _Kept | None = None
) -> str:
    """The process stopped this run: the job was cancelled (nothing it made is kept), or another worker has the
    task now (its row is not this run's to change)."""
    if running.stop_reason == StopReason.LOST:
        logger.warning("task %s: run %d stopped; another worker runs the task now", task.id, task.attempt)
        return "lost"
    await _discard_result(resources, task, stored)
    state = await _finish(resources, task, TaskState.CANCELLED, started)
    logger.info("task %s cancelled with its job after %.3f s", task.id, time.perf_counter() - started)
    return "cancelled" if state is not None else "skipped"


async def _failed(resources: Resources, task: TaskRun, exc: Exception, started: float, deadline: float) -> str:
    if isinstance(exc, AimaError):
        if exc.transient:
            delay = await task_runs.retry_later(resources=resources, run=task, reason=exc)
            if delay is None:
                return "failed"
            logger.warning("task %s hit a transient error (%s); next try in %.1f s", task.id, exc.message, delay)
            TASKS.labels(analyzer=task.analyzer, state=TaskState.WAITING_FOR_MODEL.value).inc()
            return "waiting"
        await _finish(resources, task, TaskState.FAILED, started, exc.code, exc.message)
        return "failed"
    if isinstance(exc, TimeoutError):
        message = f"The task ran longer than {deadline:g} s."
        await _finish(resources, task, TaskState.FAILED, started, "TASK_TIMEOUT", message)
        return "failed"
    logger.error("analyzer %s crashed on task %s", task.analyzer, task.id, exc_info=exc)
    await _finish(
        resources,
        task,
        TaskState.FAILED,
        started,
        INTERNAL_ERROR_CODE,
        f"The analyzer failed unexpectedly; the worker log has the details for task {task.id}.",
    )
    return "failed"


async def _discard_result(resources: Resources, task: TaskRun, stored: _Kept | None = None) -> None:
    """The task's row went (its media, case or job was deleted) or its job was cancelled while it ran: its result
    goes too, with the vectors and files stored beside it (results are keyed by task, so this removes nothing
    another task stored); a case task's dossier version goes. `stored`: what this run stored, when it got that
    far."""
    if task.is_case_task:
        if await dossiers.discard_version(resources, task.id):
            logger.info("task %s was cancelled or deleted while it ran; its dossier version was discarded", task.id)
        return
    query = {
        "media_id": str(task.media_id),
        "analyzer": task.analyzer,
        "analyzer_version": task.analyzer_version,
        "task_id": str(task.id),
    }
    document = await resources.results.find_one(query, {"files": 1})
    names = {str(f["name"]) for f in (document or {}).get("files", [])}
    names.update(f.name for f in (stored.outputs.files if stored is not None and stored.outputs is not None else []))
    origin = _origin(task)
    try:
        gone = await outputs.discard(resources, origin, names)
    except AimaError as exc:
        # The deletion of the media (or the case) removes them at the latest.
        logger.error("task %s: could not remove the outputs stored beside its result: %s", task.id, exc.message)
        gone = outputs.Stored()
    deleted = await resources.results.delete_one(query)
    if deleted.deleted_count or gone.removed or gone.removed_files:
        logger.info(
            "task %s was deleted or cancelled while it ran; its result, %d vectors and %d files were discarded",
            task.id,
            sum(gone.removed.values()),
            gone.removed_files,
        )
    # The identities service drops the faces and voices that went (nothing happens for a media item deleted).
    await outputs.cluster(resources, origin, gone)


async def _finish(
    resources: Resources,
    task: TaskRun,
    state: TaskState,
    started: float,
    error_code: str | None = None,
    error_message: str | None = None,
) -> TaskState | None:
    recorded = await task_runs.finish_task(
        resources=resources, run=task, state=state, error_code=error_code, error_message=error_message
    )
    TASKS.labels(analyzer=task.analyzer, state=(recorded or state).value).inc()
    TASK_DURATION.labels(analyzer=task.analyzer).observe(time.perf_counter() - started)
    logger.info("task %s (%s) %s in %.3f s", task.id, task.analyzer, recorded or state, time.perf_counter() - started)
    return recorded


async def _analyze_case(resources: Resources, task: TaskRun, inference: Endpoints | None) -> _CaseResult:
    """Run a case analyzer over the whole case as it stands, and check its result's citations."""
    analyzer = resources.analyzers.get_case(task.analyzer)
    _check_version(task, analyzer.version, analyzer.name)
    reporter = _ProgressReporter(resources, task)
    version = await dossiers.next_version(resources, case_id=task.case_id, task_id=task.id)
    item = await case_input.build_case_input(
        resources,
        case_id=task.case_id,
        job_id=task.job_id,
        version=version,
        inference=inference,
        report_progress=reporter,
    )
    try:
        result = await analyzer.analyze_case(item)
    finally:
        await reporter.drain()
    return _CaseResult(dossiers.checked_result(analyzer, result, item))


async def _analyze(resources: Resources, task: TaskRun, inference: Endpoints | None) -> _Analysis:
    analyzer = resources.analyzers.get(task.analyzer)
    _check_version(task, analyzer.version, analyzer.name)
    _, media = _media(task)
    reporter = _ProgressReporter(resources, task)
    workdir = await _workdir(task)
    try:
        original = workdir / "original"
        if Need.ORIGINAL in analyzer.needs:
            await resources.store.download_to(media.storage_key, original)
        keyframes, audio_track = await _prepared_inputs(resources, task, analyzer, workdir)
        item = AnalysisInput(
            media_id=str(task.media_id),
            case_id=str(task.case_id),
            kind=media.kind,
            content_type=media.content_type,
            size_bytes=media.size_bytes,
            sha256=media.sha256,
            original_path=original,
            report_progress=reporter,
            keyframes=keyframes,
            audio_track_path=audio_track,
            inference=inference,
        )
        try:
            result = await analyzer.analyze(item)
        finally:
            await reporter.drain()
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
    prepared = await outputs.prepare(result, analyzer=analyzer.name, embedder=resources.analyzers.embedder())
    return _Analysis(prepared, result.follow_ups if isinstance(result, AnalysisOutput) else ())


async def _prepared_inputs(
    resources: Resources, task: TaskRun, analyzer: Analyzer, workdir: Path
) -> tuple[list[Keyframe], Path | None]:
    """Fetch the keyframes and audio track the analyzer needs, as its preparation tasks stored them."""
    keyframes: list[Keyframe] = []
    audio_track: Path | None = None
    source = _source(task)
    for preparation in artifacts.preparations_for(source.kind, analyzer.needs):
        stored = await artifacts.artifacts_of(resources, source.id, preparation.kind)
        if preparation is artifacts.KEYFRAMES:
            if not stored:  # not prepared by this job (a task made some other way): make them now
                prepared = await artifacts.ensure_artifacts(resources, source, preparation, workdir=workdir)
                stored = prepared.artifacts
            keyframes = await artifacts.download_keyframes(resources, stored, workdir / "keyframes")
        elif preparation is artifacts.AUDIO_TRACK and stored:  # none: the media has no sound
            audio_track = await artifacts.download_artifact(resources, stored[0], workdir / "audio.wav")
    return keyframes, audio_track


async def _prepare(resources: Resources, task: TaskRun, preparation: Preparation) -> None:
    """A preparation task: make (or find) the media's derived files of one kind."""
    _check_version(task, preparation.version, preparation.task_name)
    workdir = await _workdir(task)
    reporter = _ProgressReporter(resources, task)

    def progress(fraction: float) -> None:
        reporter(fraction, f"{preparation.name}: {fraction:.0%}")

    try:
        prepared = await artifacts.ensure_artifacts(
            resources, _source(task), preparation, workdir=workdir, progress=progress
        )
    finally:
        await reporter.drain()
        await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
    what = "stored already" if not prepared.derived else "made"
    logger.info("%s of media %s: %d files %s", preparation.name, task.media_id, len(prepared.artifacts), what)


def _check_version(task: TaskRun, version: str, name: str) -> None:
    if version != task.analyzer_version:
        # A worker with another version of the plugin must not file its output under the version asked for.
        raise AimaError(
            f"This worker has {name} {version}, the task asks for {task.analyzer_version}.",
            code="ANALYZER_VERSION_MISMATCH",
        )


def _media(task: TaskRun) -> tuple[uuid.UUID, MediaFacts]:
    """The media item a media task analyses (its id and what the claim read of it)."""
    if task.media_id is None or task.media is None:
        raise RuntimeError(f"task {task.id} ({task.analyzer}) is a case task: it has no media")
    return task.media_id, task.media


def _origin(task: TaskRun) -> outputs.Origin:
    media_id, _ = _media(task)
    return outputs.Origin(
        case_id=task.case_id,
        media_id=media_id,
        analyzer=task.analyzer,
        analyzer_version=task.analyzer_version,
        task_id=task.id,
    )


def _source(task: TaskRun) -> SourceMedia:
    media_id, media = _media(task)
    return SourceMedia(
        id=media_id,
        case_id=media.case_id,
        kind=media.kind,
        format=media.format,
        content_type=media.content_type,
        storage_key=media.storage_key,
    )


async def _workdir(task: TaskRun) -> Path:
    """A private directory for this run of the task; the caller removes it."""
    path = scratch_dir() / f"{task.id}-{task.attempt}"
    await asyncio.to_thread(path.mkdir, mode=0o700, exist_ok=True)
    return path


def scratch_dir() -> Path:
    """Where this worker process keeps the local copies of originals while analyzers read them."""
    path = Path(tempfile.gettempdir()) / f"aima-worker-{os.getpid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class _ProgressReporter:
    """The `report_progress` callback handed to analyzers: callable from any thread, throttled, never lost."""

    def __init__(self, resources: Resources, task: TaskRun) -> None:
        self._resources = resources
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._last = time.monotonic()  # the "started" event counts: a task done within the interval reports nothing
        self._pending: set[asyncio.Future[None]] = set()

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        self._loop.call_soon_threadsafe(self._schedule, fraction, message)

    def _schedule(self, fraction: float, message: str) -> None:
        future = asyncio.ensure_future(
            task_runs.report_progress(resources=self._resources, run=self._task, progress=fraction, message=message)
        )
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        await asyncio.sleep(0)  # let callbacks scheduled from threads create their futures
        if self._pending:
            results = await asyncio.gather(*self._pending, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    logger.warning("a progress report failed: %r", result)
