"""The task function: run an analysis (fetch what the analyzer needs, run it, store the result) or a preparation
(make and store derived files), and record the state.

A task whose row vanished while it ran (its media, case or job was deleted) leaves nothing behind: after storing a
result the worker checks that the row is still there and deletes the result document if not; a preparation's files
are deleted again by `ensure_artifacts` when the media row is gone. The deletion itself sweeps the stores only after
its rows are gone, so between the two nothing stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from arq import Retry
from pydantic import BaseModel

from aima.analysis import AnalysisInput, Analyzer, Keyframe, Need
from aima.db.models import TaskState
from aima.errors import AimaError
from aima.logs import log_context
from aima.metrics import TASK_DURATION, TASKS, TASKS_RUNNING
from aima.resources import Resources
from aima.services import artifacts, task_runs
from aima.services.artifacts import Preparation, SourceMedia
from aima.services.results import upsert_result
from aima.services.task_runs import TaskRun

logger = logging.getLogger(__name__)

INTERNAL_ERROR_CODE = "ANALYZER_CRASHED"
#: Seconds between two progress reports of one task, so a chatty analyzer cannot flood Redis.
PROGRESS_INTERVAL_S = 0.5


async def run_analysis_task(ctx: dict[str, Any], task_id: str) -> str:
    """arq entry point. Safe to run twice: a finished task is skipped, a result is upserted, not added."""
    resources: Resources = ctx["resources"]
    with log_context(task_id=task_id):
        run = await task_runs.start_task(resources=resources, task_id=uuid.UUID(task_id), worker=ctx["worker_name"])
        if run is None:
            logger.info("task %s is unknown or already finished; skipped", task_id)
            # Its worker may have stopped between its success and handing over the tasks that waited for it.
            await task_runs.release_dependents(resources=resources, task_id=uuid.UUID(task_id))
            return "skipped"
        with log_context(job_id=str(run.job_id)):
            return await _run(resources, run, job_try=int(ctx.get("job_try", 1)))


async def _run(resources: Resources, task: TaskRun, *, job_try: int) -> str:
    started = time.perf_counter()
    TASKS_RUNNING.labels(analyzer=task.analyzer).inc()
    # Our own deadline, inside arq's: a timeout then fails the task, while a cancellation (the worker shutting
    # down) puts it back in line for the next worker.
    deadline = max(1.0, resources.settings.worker.job_timeout_s - 5.0)
    preparation = artifacts.preparation_of_task(task.analyzer)
    stored_result = False
    try:
        if preparation is not None:
            async with asyncio.timeout(deadline):
                await _prepare(resources, task, preparation)
        else:
            async with asyncio.timeout(deadline):
                payload = await _analyze(resources, task)
            await upsert_result(
                resources.results,
                media_id=task.media_id,
                case_id=task.media.case_id,
                analyzer=task.analyzer,
                analyzer_version=task.analyzer_version,
                task_id=task.id,
                payload=payload,
            )
            stored_result = True
    except AimaError as exc:
        if exc.transient and job_try < resources.settings.worker.max_tries:
            logger.warning("task %s hit a transient error (%s); retrying", task.id, exc.message)
            await task_runs.requeue_task(resources=resources, run=task, reason=exc)
            raise Retry(defer=min(2**job_try, 30)) from exc
        await _finish(resources, task, TaskState.FAILED, started, exc.code, exc.message)
        return "failed"
    except TimeoutError:
        await _finish(
            resources, task, TaskState.FAILED, started, "TASK_TIMEOUT", f"The task ran longer than {deadline:g} s."
        )
        return "failed"
    except asyncio.CancelledError:
        interrupted = AimaError("The worker stopped while the task ran.", code="TASK_INTERRUPTED")
        await asyncio.shield(task_runs.requeue_task(resources=resources, run=task, reason=interrupted))
        raise
    except Exception:
        logger.exception("analyzer %s crashed on task %s", task.analyzer, task.id)
        await _finish(
            resources,
            task,
            TaskState.FAILED,
            started,
            INTERNAL_ERROR_CODE,
            f"The analyzer failed unexpectedly; the worker log has the details for task {task.id}.",
        )
        return "failed"
    finally:
        TASKS_RUNNING.labels(analyzer=task.analyzer).dec()
    finished = await _finish(resources, task, TaskState.SUCCEEDED, started)
    if not finished and stored_result and not await task_runs.task_exists(resources=resources, task_id=task.id):
        await _discard_result(resources, task)
        return "discarded"
    return "succeeded"


async def _discard_result(resources: Resources, task: TaskRun) -> None:
    """The task's row went (its media, case or job was deleted) while it ran: its result goes too."""
    await resources.results.delete_one(
        {
            "media_id": str(task.media_id),
            "analyzer": task.analyzer,
            "analyzer_version": task.analyzer_version,
            "task_id": str(task.id),
        }
    )
    logger.info("task %s was deleted while it ran; its result was discarded", task.id)


async def _finish(
    resources: Resources,
    task: TaskRun,
    state: TaskState,
    started: float,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    finished = await task_runs.finish_task(
        resources=resources, run=task, state=state, error_code=error_code, error_message=error_message
    )
    TASKS.labels(analyzer=task.analyzer, state=state.value).inc()
    TASK_DURATION.labels(analyzer=task.analyzer).observe(time.perf_counter() - started)
    logger.info("task %s (%s) %s in %.3f s", task.id, task.analyzer, state, time.perf_counter() - started)
    return finished


async def _analyze(resources: Resources, task: TaskRun) -> dict[str, Any]:
    analyzer = resources.analyzers.get(task.analyzer)
    _check_version(task, analyzer.version, analyzer.name)
    media = task.media
    reporter = _ProgressReporter(resources, task)
    workdir = await _workdir(task)
    try:
        original = workdir / "original"
        if Need.ORIGINAL in analyzer.needs:
            await resources.store.download_to(media.storage_key, original)
        keyframes, audio_track = await _prepared_inputs(resources, task, analyzer, workdir)
        item = AnalysisInput(
            media_id=str(task.media_id),
            case_id=str(media.case_id),
            kind=media.kind,
            content_type=media.content_type,
            size_bytes=media.size_bytes,
            sha256=media.sha256,
            original_path=original,
            report_progress=reporter,
            keyframes=keyframes,
            audio_track_path=audio_track,
        )
        try:
            result = await analyzer.analyze(item)
        finally:
            await reporter.drain()
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
    if not isinstance(result, BaseModel):
        raise TypeError(f"analyzer {analyzer.name} returned {type(result).__name__}, not a pydantic model")
    payload: dict[str, Any] = result.model_dump(mode="json")
    return payload


async def _prepared_inputs(
    resources: Resources, task: TaskRun, analyzer: Analyzer, workdir: Path
) -> tuple[list[Keyframe], Path | None]:
    """Fetch the keyframes and audio track the analyzer needs, as its preparation tasks stored them."""
    keyframes: list[Keyframe] = []
    audio_track: Path | None = None
    source = _source(task)
    for preparation in artifacts.preparations_for(task.media.kind, analyzer.needs):
        stored = await artifacts.artifacts_of(resources, task.media_id, preparation.kind)
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


def _source(task: TaskRun) -> SourceMedia:
    media = task.media
    return SourceMedia(
        id=task.media_id,
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
