"""Preparation tasks: derived files made once per media item, waited for by the analyses that need them, shared
by later jobs; a failed preparation fails its dependents; a task whose media vanished leaves nothing behind.

A real arq worker (what `aima worker` runs) serves a queue of this module, with test analyzers registered through
a pluggy plugin; jobs are created with `analyze_media`, as the API does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import delete, select, update

import aima
from aima.analysis import AnalysisInput, Analyzer, BlockingAnalyzer, MediaKind, Need
from aima.db.models import Artifact, Case, Job, JobState, Media, Role, Task, TaskState, User
from aima.events import JobEventStream
from aima.media import derive
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources, open_resources
from aima.services import artifacts, jobs
from aima.services.access import Actor
from aima.services.artifacts import ArtifactKind, MediaGone, SourceMedia
from aima.testing.media import make_jpeg, make_mp4, make_scene_video
from aima.workers.tasks import run_analysis_task
from tests.conftest import Servers, settings_for, worker_thread
from tests.factories import stored_original

VIDEO_PROBE = {"streams": [{"index": 0, "type": "video"}, {"index": 1, "type": "audio"}]}
SILENT_PROBE = {"streams": [{"index": 0, "type": "video"}]}


class Seen(BaseModel):
    keyframes: list[tuple[float, bool, int, int]] = []
    audio: tuple[int, int, float] | None = None
    original: bool = False


class KeyframeLooker(BlockingAnalyzer):
    name = "test-keyframes"
    version = "0.1"
    media_kinds = frozenset({MediaKind.VIDEO, MediaKind.IMAGE})
    needs = frozenset({Need.KEYFRAMES})
    result_model = Seen

    def analyze_blocking(self, item: AnalysisInput) -> Seen:
        for keyframe in item.keyframes:
            assert keyframe.path.read_bytes()[:2] == b"\xff\xd8"
        return Seen(
            keyframes=[(k.timestamp_s, k.scene_change, k.width, k.height) for k in item.keyframes],
            original=item.original_path.exists(),
        )


class Listener(BlockingAnalyzer):
    name = "test-audio"
    version = "0.1"
    media_kinds = frozenset({MediaKind.VIDEO, MediaKind.AUDIO})
    needs = frozenset({Need.AUDIO_TRACK, Need.ORIGINAL})
    result_model = Seen

    def analyze_blocking(self, item: AnalysisInput) -> Seen:
        audio = None
        if item.audio_track_path is not None:
            with wave.open(str(item.audio_track_path), "rb") as track:
                rate, channels = track.getframerate(), track.getnchannels()
                audio = (rate, channels, track.getnframes() / rate)
        return Seen(audio=audio, original=item.original_path.exists())


class Hook(Analyzer):
    """Runs what the test put in `during` while it analyses (to delete the media under it)."""

    name = "test-hook"
    version = "0.1"
    result_model = Seen
    during: Callable[[], Awaitable[None]] | None = None

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        if self.during is not None:
            await self.during()
        return Seen(original=item.original_path.exists())


HOOK = Hook()


class TestAnalyzers:
    @aima.hookimpl
    def register_analyzers(self, register: Any) -> None:
        for analyzer in (KeyframeLooker(), Listener(), HOOK):
            register(analyzer)


@pytest.fixture(scope="module")
async def served(servers: Servers) -> AsyncIterator[Resources]:
    """Resources on a queue of this module that a worker with the test analyzers serves."""
    pm = create_plugin_manager(load_external=False)
    pm.register(TestAnalyzers(), name="preparation-tests")
    registry = AnalyzerRegistry(pm)
    settings = settings_for(servers)
    async with open_resources(settings, analyzers=registry) as resources:
        with worker_thread(settings, analyzers=registry, cron_jobs=[]):
            yield resources


@pytest.fixture(scope="module")
async def idle(servers: Servers) -> AsyncIterator[Resources]:
    """Resources on a queue no worker serves: tasks are run by calling the task function."""
    pm = create_plugin_manager(load_external=False)
    pm.register(TestAnalyzers(), name="preparation-tests")
    async with open_resources(settings_for(servers), analyzers=AnalyzerRegistry(pm)) as resources:
        yield resources


@dataclasses.dataclass(frozen=True)
class Item:
    actor: Actor
    media: SourceMedia


async def new_media(
    resources: Resources, data: bytes, *, kind: MediaKind, fmt: str, content_type: str, probe: dict[str, Any]
) -> Item:
    user = User(id=uuid.uuid4(), email=f"p-{uuid.uuid4().hex[:8]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="preparation", owner_id=user.id)
    media = await stored_original(
        resources,
        data,
        case_id=case.id,
        uploaded_by=user.id,
        filename="file",
        kind=str(kind),
        fmt=fmt,
        content_type=content_type,
        probe=probe,
    )
    async with resources.sessions() as session:
        for row in (user, case, media):
            session.add(row)
            await session.flush()
        await session.commit()
    source = SourceMedia(media.id, case.id, kind, fmt, content_type, media.storage_key)
    return Item(Actor(user_id=user.id, email=user.email, role=Role.USER), source)


async def new_video(resources: Resources, data: bytes | None = None, probe: dict[str, Any] = VIDEO_PROBE) -> Item:
    video = data if data is not None else make_scene_video(3, 2.0, gop_seconds=0.5)
    return await new_media(resources, video, kind=MediaKind.VIDEO, fmt="mp4", content_type="video/mp4", probe=probe)


async def new_image(resources: Resources) -> Item:
    image = make_jpeg(1200, 800)
    return await new_media(resources, image, kind=MediaKind.IMAGE, fmt="jpeg", content_type="image/jpeg", probe={})


async def run_job(resources: Resources, item: Item, analyzers: list[str]) -> tuple[Job, dict[str, Task]]:
    """Start a job as the API does and wait until the worker has finished it."""
    job = await jobs.analyze_media(resources=resources, actor=item.actor, media_id=item.media.id, analyzers=analyzers)
    deadline = time.monotonic() + 60
    while True:
        async with resources.sessions() as session:
            finished = await session.get(Job, job.id, populate_existing=True)
            assert finished is not None
            if finished.state.terminal:
                return finished, await tasks_by_name(resources, job.id)
        assert time.monotonic() < deadline, "the job did not finish"
        await asyncio.sleep(0.05)


async def result_of(resources: Resources, item: Item, analyzer: str) -> Seen | None:
    found = await resources.results.find_one({"media_id": str(item.media.id), "analyzer": analyzer})
    return Seen.model_validate(found["payload"]) if found else None


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each deriver ran (in any thread of this process: the worker's too)."""
    counts: dict[str, int] = {}
    for name in ("thumbnail", "poster_frame", "keyframes", "audio_track"):
        original = getattr(derive, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(derive, name, counting)
    return counts


# --- through the worker ------------------------------------------------------------------------------


async def test_analyses_wait_for_their_preparations_and_get_what_was_made(
    served: Resources, derivations: dict[str, int]
) -> None:
    item = await new_video(served)
    job, tasks = await run_job(served, item, ["test-keyframes", "test-audio"])
    assert job.state is JobState.SUCCEEDED, {t.analyzer: (t.state, t.error_message) for t in tasks.values()}
    assert set(tasks) == {
        "prepare:poster",
        "prepare:keyframes",
        "prepare:audio_track",
        "test-keyframes",
        "test-audio",
    }
    keyframes, audio = tasks["prepare:keyframes"], tasks["prepare:audio_track"]
    assert keyframes.analyzer_version == artifacts.KEYFRAMES.version
    assert tasks["test-keyframes"].depends_on == [keyframes.id]
    assert tasks["test-audio"].depends_on == [audio.id]
    assert tasks["prepare:poster"].depends_on == []
    for analysis, preparation in (("test-keyframes", keyframes), ("test-audio", audio)):
        started, prepared = tasks[analysis].started_at, preparation.finished_at
        assert started is not None and prepared is not None and started >= prepared

    seen = await result_of(served, item, "test-keyframes")
    assert seen is not None and not seen.original  # it did not ask for the original: none was fetched
    assert seen.keyframes == [(0.0, True, 160, 120), (2.0, True, 160, 120), (4.0, True, 160, 120)]
    heard = await result_of(served, item, "test-audio")
    assert heard is not None and heard.original and heard.audio is not None
    rate, channels, seconds = heard.audio
    assert (rate, channels) == (16_000, 1) and abs(seconds - 6.0) < 0.06

    stored = await artifacts.artifacts_of(served, item.media.id)
    assert [(a.kind, a.seq) for a in stored] == [
        ("audio_track", 0),
        ("keyframe", 0),
        ("keyframe", 1),
        ("keyframe", 2),
        ("poster", 0),
    ]
    prefix = f"cases/{item.media.case_id}/media/{item.media.id}/derived/"
    assert sorted(await served.store.keys(prefix)) == sorted(a.storage_key for a in stored)
    assert all(a.storage_key.startswith(prefix) for a in stored)
    assert stored[1].details["timestamp_s"] == 0.0 and stored[1].details["version"] == artifacts.KEYFRAMES.version
    assert derivations == {"poster_frame": 1, "keyframes": 1, "audio_track": 1}

    # A second job reuses every stored file: its preparation succeeds at once, nothing is derived again, and the
    # preview, stored already, is not made again.
    again, tasks = await run_job(served, item, ["test-keyframes"])
    assert again.state is JobState.SUCCEEDED
    assert set(tasks) == {"prepare:keyframes", "test-keyframes"}
    assert derivations == {"poster_frame": 1, "keyframes": 1, "audio_track": 1}
    assert [a.id for a in await artifacts.artifacts_of(served, item.media.id)] == [a.id for a in stored]
    assert await result_of(served, item, "test-keyframes") == seen


async def test_an_image_gets_a_thumbnail_and_is_its_own_keyframe(served: Resources) -> None:
    item = await new_image(served)
    job, tasks = await run_job(served, item, ["test-keyframes"])
    assert job.state is JobState.SUCCEEDED
    assert set(tasks) == {"prepare:thumbnail", "prepare:keyframes", "test-keyframes"}
    [thumbnail] = await artifacts.artifacts_of(served, item.media.id, ArtifactKind.THUMBNAIL)
    assert (thumbnail.content_type, thumbnail.details["width"], thumbnail.details["height"]) == ("image/jpeg", 512, 341)
    assert (await served.store.read(thumbnail.storage_key))[:2] == b"\xff\xd8"
    seen = await result_of(served, item, "test-keyframes")
    assert seen is not None and seen.keyframes == [(0.0, True, 1200, 800)]


async def test_a_video_without_sound_has_no_audio_track_to_prepare(served: Resources) -> None:
    item = await new_video(served, make_mp4(seconds=1.0, audio=False), probe=SILENT_PROBE)
    job, tasks = await run_job(served, item, ["test-audio"])
    assert job.state is JobState.SUCCEEDED
    assert set(tasks) == {"prepare:poster", "test-audio"}
    heard = await result_of(served, item, "test-audio")
    assert heard is not None and heard.audio is None


async def test_a_failed_preparation_fails_the_analyses_waiting_for_it(idle: Resources) -> None:
    video = make_mp4(seconds=1.0)
    item = await new_video(idle, video[: len(video) // 2])  # cut short: its index is lost
    job = await jobs.analyze_media(
        resources=idle, actor=item.actor, media_id=item.media.id, analyzers=["test-keyframes"]
    )
    tasks = await tasks_by_name(idle, job.id)
    queue = idle.settings.worker.queue_name
    assert await idle.arq.zscore(queue, f"task:{tasks['test-keyframes'].id}") is None  # waits for its preparation
    async with JobEventStream(idle.redis, idle.settings.redis_prefix, str(job.id)) as stream:
        for name in ("prepare:poster", "prepare:keyframes"):
            assert await idle.arq.zscore(queue, f"task:{tasks[name].id}") is not None
            assert await run_analysis_task(ctx(idle), str(tasks[name].id)) == "failed"
        events = []
        while (event := await stream.next(wait_s=0.5)) is not None:
            events.append(event)
    tasks = await tasks_by_name(idle, job.id)
    preparation, analysis = tasks["prepare:keyframes"], tasks["test-keyframes"]
    assert (preparation.state, preparation.error_code) == (TaskState.FAILED, "CORRUPT_MEDIA")
    assert (analysis.state, analysis.error_code) == (TaskState.FAILED, "PREPARATION_FAILED")
    assert analysis.error_message is not None
    assert analysis.error_message.startswith("prepare:keyframes failed: The video could not be decoded")
    assert analysis.attempts == 0 and analysis.started_at is None  # never handed to a worker
    assert await idle.arq.zscore(queue, f"task:{analysis.id}") is None
    async with idle.sessions() as session:
        stored = await session.get(Job, job.id)
        assert stored is not None and stored.state is JobState.FAILED
    assert await result_of(idle, item, "test-keyframes") is None
    assert await artifacts.artifacts_of(idle, item.media.id) == []
    failed = [e for e in events if e.analyzer == "test-keyframes"]
    assert [(e.task_state, e.error_code) for e in failed] == [("failed", "PREPARATION_FAILED")]
    assert [e.job_state for e in events if e.task_id is None] == ["failed"]


async def tasks_by_name(resources: Resources, job_id: uuid.UUID) -> dict[str, Task]:
    async with resources.sessions() as session:
        return {t.analyzer: t for t in await jobs.tasks_of_job(session=session, job_id=job_id)}


# --- by calling the task function ------------------------------------------------------------------


def ctx(resources: Resources) -> dict[str, Any]:
    return {"resources": resources, "worker_name": "test-worker", "job_try": 1}


async def add_tasks(resources: Resources, item: Item, *specs: tuple[str, str, list[uuid.UUID]]) -> list[Task]:
    """A job with tasks (analyzer, version, depends_on) made directly, without enqueueing anything."""
    job = Job(id=uuid.uuid4(), case_id=item.media.case_id, media_id=item.media.id, created_by=item.actor.user_id)
    tasks = [
        Task(id=uuid.uuid4(), job_id=job.id, media_id=item.media.id, analyzer=a, analyzer_version=v, depends_on=d)
        for a, v, d in specs
    ]
    async with resources.sessions() as session:
        session.add(job)
        await session.flush()
        session.add_all(tasks)
        await session.commit()
    return tasks


async def delete_media(resources: Resources, media_id: uuid.UUID) -> None:
    async with resources.engine.begin() as conn:
        await conn.execute(delete(Media).where(Media.id == media_id))


async def test_two_workers_preparing_the_same_media_derive_once(idle: Resources, tmp_path: Path) -> None:
    item = await new_video(idle)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = await asyncio.gather(
        artifacts.ensure_artifacts(idle, item.media, artifacts.KEYFRAMES, workdir=tmp_path / "a"),
        artifacts.ensure_artifacts(idle, item.media, artifacts.KEYFRAMES, workdir=tmp_path / "b"),
    )
    assert sorted([first.derived, second.derived]) == [False, True]
    assert [a.id for a in first.artifacts] == [a.id for a in second.artifacts]
    assert len(await artifacts.artifacts_of(idle, item.media.id, ArtifactKind.KEYFRAME)) == 3


async def test_files_of_an_older_deriver_are_made_again(idle: Resources, tmp_path: Path) -> None:
    item = await new_image(idle)
    made = await artifacts.ensure_artifacts(idle, item.media, artifacts.THUMBNAIL, workdir=tmp_path)
    async with idle.engine.begin() as conn:
        await conn.execute(update(Artifact).where(Artifact.media_id == item.media.id).values(details={"version": "0"}))
    remade = await artifacts.ensure_artifacts(idle, item.media, artifacts.THUMBNAIL, workdir=tmp_path)
    assert remade.derived and remade.artifacts[0].id != made.artifacts[0].id
    assert remade.artifacts[0].storage_key == made.artifacts[0].storage_key
    assert await idle.store.exists(remade.artifacts[0].storage_key)


async def test_a_result_stored_after_the_media_was_deleted_is_discarded(idle: Resources) -> None:
    item = await new_image(idle)
    [task] = await add_tasks(idle, item, ("test-hook", "0.1", []))

    async def vanish() -> None:
        await delete_media(idle, item.media.id)

    HOOK.during = vanish
    try:
        assert await run_analysis_task(ctx(idle), str(task.id)) == "discarded"
    finally:
        HOOK.during = None
    assert await idle.results.count_documents({"media_id": str(item.media.id)}) == 0


async def test_files_made_for_a_media_deleted_meanwhile_are_deleted(
    idle: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = await new_image(idle)
    [task] = await add_tasks(idle, item, ("prepare:thumbnail", artifacts.THUMBNAIL.version, []))
    loop = asyncio.get_running_loop()
    thumbnail = derive.thumbnail

    def deleted_while_deriving(*args: Any, **kwargs: Any) -> bytes:
        asyncio.run_coroutine_threadsafe(delete_media(idle, item.media.id), loop).result(10)
        return thumbnail(*args, **kwargs)

    monkeypatch.setattr(derive, "thumbnail", deleted_while_deriving)
    assert await run_analysis_task(ctx(idle), str(task.id)) == "failed"  # a no-op: the task row went too
    prefix = f"cases/{item.media.case_id}/media/{item.media.id}/derived/"
    assert await idle.store.keys(prefix) == []
    async with idle.engine.connect() as conn:
        assert (await conn.execute(select(Artifact).where(Artifact.media_id == item.media.id))).first() is None


async def test_files_found_gone_after_they_were_recorded_are_deleted(
    idle: Resources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The media row went after the insert and before the check that follows it: the rows cascaded, the objects
    are deleted by the preparation."""
    item = await new_image(idle)
    present = artifacts._media_present

    async def deleted_just_now(resources: Resources, media_id: uuid.UUID) -> bool:
        await delete_media(idle, item.media.id)
        return await present(resources, media_id)

    monkeypatch.setattr(artifacts, "_media_present", deleted_just_now)
    with pytest.raises(MediaGone):
        await artifacts.ensure_artifacts(idle, item.media, artifacts.THUMBNAIL, workdir=tmp_path)
    assert await idle.store.keys(f"cases/{item.media.case_id}/media/{item.media.id}/derived/") == []


async def test_a_repeated_delivery_of_a_finished_preparation_hands_over_its_dependents(idle: Resources) -> None:
    item = await new_image(idle)
    prep, analysis = await add_tasks(
        idle, item, ("prepare:keyframes", artifacts.KEYFRAMES.version, []), ("test-keyframes", "0.1", [])
    )
    async with idle.engine.begin() as conn:
        await conn.execute(update(Task).where(Task.id == analysis.id).values(depends_on=[prep.id]))
    queue = idle.settings.worker.queue_name
    assert await run_analysis_task(ctx(idle), str(prep.id)) == "succeeded"
    assert await idle.arq.zscore(queue, f"task:{analysis.id}") is not None  # handed over on success
    await idle.arq.delete(f"arq:job:task:{analysis.id}")
    await idle.arq.zrem(queue, f"task:{analysis.id}")
    # Its worker stopped before the hand-over got through: the next delivery of the preparation makes up for it.
    assert await run_analysis_task(ctx(idle), str(prep.id)) == "skipped"
    assert await idle.arq.zscore(queue, f"task:{analysis.id}") is not None
    assert await run_analysis_task(ctx(idle), str(analysis.id)) == "succeeded"
    seen = await result_of(idle, item, "test-keyframes")
    assert seen is not None and seen.keyframes == [(0.0, True, 1200, 800)]


def test_preparations_are_not_analyzers() -> None:
    assert artifacts.preparation_of_task("prepare:keyframes") is artifacts.KEYFRAMES
    assert artifacts.preparation_of_task("media-probe") is None
    assert artifacts.preparations_for(MediaKind.AUDIO, {Need.KEYFRAMES, Need.AUDIO_TRACK}) == [artifacts.AUDIO_TRACK]
    assert artifacts.preparations_for(MediaKind.VIDEO, {Need.AUDIO_TRACK}, has_audio=False) == []
    assert artifacts.derived_key(uuid.UUID(int=1), uuid.UUID(int=2), ArtifactKind.KEYFRAME, 7).endswith(
        "/media/00000000-0000-0000-0000-000000000002/derived/keyframe/7"
    )
