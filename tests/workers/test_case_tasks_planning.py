"""Planning a case job: case tasks without media that depend on every other task, the default of every installed
analyzer of both kinds, audio always through Whisper when a case analyzer is in the job, and case analyzers refused
on single media items. No worker: the rows are what is checked."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from aima.analysis import AnalysisInput, Analyzer, MediaKind, RegisterAnalyzer
from aima.db.models import Media, TaskState
from aima.errors import AnalyzerNotApplicable, UnknownAnalyzer
from aima.hookspecs import hookimpl
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources, open_resources
from aima.services import jobs
from aima.testing import analyzers as test_analyzers
from aima.testing.workers import PLUGIN
from tests.conftest import Servers
from tests.workers.jobs import SampleCase, job_settings, job_tasks, new_case


class FakeWhisper(Analyzer):
    """Stands in for the whisper plugin: planning only looks at its name and media kinds."""

    name = "whisper"
    version = "0.0"
    media_kinds = frozenset({MediaKind.AUDIO, MediaKind.VIDEO})
    needs = frozenset()
    result_model = BaseModel

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        raise NotImplementedError


class Plugin:
    @hookimpl
    def register_analyzers(self, register: RegisterAnalyzer) -> None:
        register(FakeWhisper())


def registry(*, whisper: bool) -> AnalyzerRegistry:
    pm = create_plugin_manager(load_external=False)
    pm.register(test_analyzers, PLUGIN)
    if whisper:
        pm.register(Plugin(), "fake-whisper")
    return AnalyzerRegistry(pm)


@pytest.fixture(scope="module")
async def resources(servers: Servers) -> AsyncIterator[Resources]:
    async with open_resources(job_settings(servers), analyzers=registry(whisper=True)) as opened:
        yield opened


async def add_media(resources: Resources, case: SampleCase, kind: str, streams: list[str] | None) -> uuid.UUID:
    """A media row of `kind` whose probe lists these stream types (None: no probe facts)."""
    media = Media(
        id=uuid.uuid4(),
        case_id=case.case_id,
        uploaded_by=case.actor.user_id,
        filename=f"{kind}.bin",
        kind=kind,
        content_type="application/octet-stream",
        format="bin",
        size_bytes=4,
        sha256=hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        storage_key=f"test/{uuid.uuid4()}",
        probe={} if streams is None else {"streams": [{"type": s} for s in streams]},
    )
    async with resources.sessions() as session:
        session.add(media)
        await session.commit()
    return media.id


async def test_case_tasks_depend_on_every_other_task_and_audio_goes_through_whisper(resources: Resources) -> None:
    case = await new_case(resources)  # one audio item
    silent = await add_media(resources, case, "video", ["video"])
    sound = await add_media(resources, case, "video", ["video", "audio"])
    image = await add_media(resources, case, "image", None)
    job = await jobs.analyze_case(
        resources=resources, actor=case.actor, case_id=case.case_id, analyzers=["noop", "digest"]
    )
    tasks = await job_tasks(resources, job.id)
    case_tasks = [t for t in tasks if t.media_id is None]
    assert [(t.analyzer, t.resource, t.state) for t in case_tasks] == [("digest", "cpu", TaskState.QUEUED)]
    assert set(case_tasks[0].depends_on) == {t.id for t in tasks if t.media_id is not None}
    whisper = {t.media_id for t in tasks if t.analyzer == "whisper"}
    assert whisper == {case.media_ids[0], sound}
    assert {t.media_id for t in tasks if t.analyzer == "noop"} == {case.media_ids[0], silent, sound, image}

    without = await jobs.analyze_case(resources=resources, actor=case.actor, case_id=case.case_id, analyzers=["noop"])
    assert {t.analyzer for t in await job_tasks(resources, without.id)} == {
        "noop",
        "prepare:thumbnail",
        "prepare:poster",
    }


async def test_every_installed_analyzer_of_both_kinds_by_default(resources: Resources) -> None:
    case = await new_case(resources)
    job = await jobs.analyze_case(resources=resources, actor=case.actor, case_id=case.case_id, analyzers=None)
    tasks = await job_tasks(resources, job.id)
    assert sorted(t.analyzer for t in tasks if t.media_id is None) == ["digest", "liar"]
    media_tasks = {t.analyzer for t in tasks if t.media_id is not None}
    assert media_tasks == {a.name for a in resources.analyzers.all() if a.accepts(MediaKind.AUDIO)}


async def test_a_case_analyzer_alone_and_the_refusals(resources: Resources) -> None:
    case = await new_case(resources)
    job = await jobs.analyze_case(resources=resources, actor=case.actor, case_id=case.case_id, analyzers=["digest"])
    tasks = await job_tasks(resources, job.id)
    # The audio item still goes through Whisper; the dossier waits for it.
    assert sorted((t.analyzer, t.media_id is None) for t in tasks) == [("digest", True), ("whisper", False)]
    with pytest.raises(AnalyzerNotApplicable, match="analyses a whole case: start it with analyzeCase"):
        await jobs.analyze_media(
            resources=resources, actor=case.actor, media_id=case.media_ids[0], analyzers=["digest"]
        )
    with pytest.raises(UnknownAnalyzer):
        await jobs.analyze_case(resources=resources, actor=case.actor, case_id=case.case_id, analyzers=["nothing"])


def test_the_registry_keeps_case_analyzers_apart() -> None:
    found = registry(whisper=False)
    assert [a.name for a in found.case_analyzers()] == ["digest", "liar"]
    assert found.get_case("digest").version == "1.0" and found.is_case_analyzer("digest")
    assert "digest" not in found.names() and "notes" in found.names()
    with pytest.raises(UnknownAnalyzer):
        found.get_case("notes")
    [plugin] = [p for p in found.plugins() if p.name == PLUGIN]
    assert {"digest", "liar", "notes"} <= set(plugin.analyzers)


def test_one_name_for_one_analyzer_of_either_kind() -> None:
    class Twice:
        @hookimpl
        def register_analyzers(self, register: RegisterAnalyzer) -> None:
            register(test_analyzers.Digest())

    pm = create_plugin_manager(load_external=False)
    pm.register(test_analyzers, PLUGIN)
    pm.register(Twice(), "twice")
    with pytest.raises(ValueError, match="analyzer 'digest' registered twice"):
        AnalyzerRegistry(pm)
