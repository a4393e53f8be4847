"""What analyzers store beside their results (vectors in Milvus, texts embedded into text_embeddings, files in S3),
through the real task function against the session's real servers."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import numpy as np
import pytest
from aiobotocore.config import AioConfig
from pydantic import BaseModel
from pymilvus import AsyncMilvusClient

import aima
from aima.analysis import AnalysisInput, AnalysisOutput, Embedding, OutputFile, SearchableText
from aima.db.models import Case, Job, Media, Role, Task, TaskState, User
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources
from aima.services import deletion, outputs, task_runs
from aima.services.access import Actor
from aima.storage import ObjectStore
from aima.workers.tasks import run_analysis_task
from tests.embedders import HashingEmbedder
from tests.workers.test_tasks import ctx, reload

ANALYZER = "producing"


class Found(BaseModel):
    faces: int
    texts: int


@dataclass
class Plan:
    """What `Producing` returns for one media item."""

    faces: int = 2
    texts: Sequence[str] = ("a red car drives past", "two people talk at a table")
    files: int = 2
    face_dimension: int = 512
    #: Cancel the task's own job while analysing (the cancellation then arrives while the result is stored).
    cancel_job: uuid.UUID | None = None
    calls: list[float] = field(default_factory=list)


PLANS: dict[str, Plan] = {}


class Producing(aima.Analyzer):
    """Finds `Plan.faces` faces (with crops), one voice, and `Plan.texts` lines of speech, as planned per media."""

    name = ANALYZER
    version = "1.0"
    needs = frozenset()
    result_model = Found

    def __init__(self, resources: list[Resources]) -> None:
        self._resources = resources

    async def analyze(self, item: AnalysisInput) -> AnalysisOutput:
        plan = PLANS[item.media_id]
        if plan.cancel_job is not None:
            await task_runs.request_cancel(resources=self._resources[0], job_id=plan.cancel_job)
        faces = [
            Embedding(
                "face_embeddings",
                f"face-{i}",
                _unit(plan.face_dimension, seed=i),
                {"timestamp_s": 1.5 * i, "box": [10, 20, 30, 40], "confidence": 0.9},
            )
            for i in range(plan.faces)
        ]
        voice = Embedding("voice_embeddings", "speaker-0", _unit(256, seed=7), {"start_s": 0.0, "end_s": 4.0})
        texts = [
            SearchableText(f"segment-{i}", text, start_s=2.0 * i, end_s=2.0 * i + 1.5, fields={"speaker": "S0"})
            for i, text in enumerate(plan.texts)
        ]
        files = [
            OutputFile(f"faces/face-{i}.jpg", b"\xff\xd8crop" + bytes([i]), "image/jpeg") for i in range(plan.files)
        ]
        return AnalysisOutput(
            Found(faces=plan.faces, texts=len(plan.texts)), embeddings=[*faces, voice], texts=texts, files=files
        )


def _unit(dimension: int, seed: int) -> list[float]:
    vector = np.random.default_rng(seed).normal(size=dimension)
    return (vector / np.linalg.norm(vector)).tolist()  # type: ignore[no-any-return]


def _registry(resources: list[Resources], *, embedder: bool = True) -> AnalyzerRegistry:
    class Plugin:
        @aima.hookimpl
        def register_analyzers(self, register: Any) -> None:
            register(Producing(resources))

        @aima.hookimpl
        def register_embedders(self, register: Any) -> None:
            if embedder:
                register(HashingEmbedder())

    pm = create_plugin_manager(load_external=False)
    pm.register(Plugin(), "producing")
    return AnalyzerRegistry(pm)


@pytest.fixture(scope="module")
async def producing(resources: Resources) -> AsyncIterator[Resources]:
    holder: list[Resources] = []
    holder.append(dataclasses.replace(resources, analyzers=_registry(holder)))
    yield holder[0]


@dataclass(frozen=True)
class Item:
    actor: Actor
    case_id: uuid.UUID
    media_id: uuid.UUID


async def new_item(resources: Resources, plan: Plan | None = None) -> Item:
    user = User(id=uuid.uuid4(), email=f"o-{uuid.uuid4().hex[:8]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="outputs", owner_id=user.id)
    media = Media(
        id=uuid.uuid4(),
        case_id=case.id,
        uploaded_by=user.id,
        filename="talk.wav",
        kind="audio",
        content_type="audio/wav",
        format="wav",
        size_bytes=4,
        sha256=hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        storage_key=f"cases/{case.id}/media/{uuid.uuid4()}/original",
        probe={},
    )
    async with resources.sessions() as session:
        for row in (user, case, media):
            session.add(row)
            await session.flush()
        await session.commit()
    PLANS[str(media.id)] = plan or Plan()
    return Item(Actor(user.id, user.email, Role.USER), case.id, media.id)


async def new_task(resources: Resources, item: Item) -> Task:
    """A job of one `producing` task on the item."""
    job = Job(id=uuid.uuid4(), case_id=item.case_id, media_id=item.media_id, created_by=item.actor.user_id)
    task = Task(id=uuid.uuid4(), job_id=job.id, media_id=item.media_id, analyzer=ANALYZER, analyzer_version="1.0")
    async with resources.sessions() as session:
        session.add(job)
        await session.flush()
        session.add(task)
        await session.commit()
    return task


async def rows(resources: Resources, collection: str, media_id: uuid.UUID) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await resources.milvus.query(
        collection, filter=f'media_id == "{media_id}"', output_fields=["*"], consistency_level="Strong"
    )
    return sorted(found, key=lambda row: row["key"])


async def result_files(resources: Resources, item: Item) -> list[str]:
    return sorted(await resources.store.all_versions(outputs.results_prefix(item.case_id, item.media_id, ANALYZER)))


async def document(resources: Resources, item: Item) -> dict[str, Any] | None:
    return await resources.results.find_one({"media_id": str(item.media_id), "analyzer": ANALYZER})


async def nothing_stored(resources: Resources, item: Item) -> bool:
    counts = [len(await rows(resources, c, item.media_id)) for c in ("face_embeddings", "voice_embeddings")]
    counts.append(len(await rows(resources, "text_embeddings", item.media_id)))
    return counts == [0, 0, 0] and await result_files(resources, item) == [] and await document(resources, item) is None


async def test_embeddings_texts_and_files_are_stored_beside_the_result(producing: Resources) -> None:
    item = await new_item(producing)
    task = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(task.id)) == "succeeded"

    faces = await rows(producing, "face_embeddings", item.media_id)
    assert [row["key"] for row in faces] == ["face-0", "face-1"]
    face = faces[0]
    assert face["id"] == outputs.vector_id(item.media_id, ANALYZER, "face-0")
    assert (face["case_id"], face["task_id"], face["analyzer"], face["analyzer_version"]) == (
        str(item.case_id),
        str(task.id),
        ANALYZER,
        "1.0",
    )
    assert (face["timestamp_s"], face["box"], face["confidence"]) == (0.0, [10, 20, 30, 40], 0.9)
    assert np.allclose(face["vector"], _unit(512, seed=0), atol=1e-6)
    [voice] = await rows(producing, "voice_embeddings", item.media_id)
    assert (voice["key"], voice["start_s"], voice["end_s"]) == ("speaker-0", 0.0, 4.0)

    texts = await rows(producing, "text_embeddings", item.media_id)
    assert [(t["key"], t["text"], t["start_s"], t["end_s"], t["speaker"]) for t in texts] == [
        ("segment-0", "a red car drives past", 0.0, 1.5, "S0"),
        ("segment-1", "two people talk at a table", 2.0, 3.5, "S0"),
    ]
    # Searchable by meaning (here: by the stand-in's words).
    [query] = HashingEmbedder().embed(["red car"])
    [hits] = await producing.milvus.search(
        "text_embeddings",
        data=[query],
        filter=f'media_id == "{item.media_id}"',
        limit=1,
        output_fields=["key", "start_s"],
        consistency_level="Strong",
    )
    assert (hits[0]["entity"]["key"], hits[0]["entity"]["start_s"]) == ("segment-0", 0.0)

    prefix = outputs.results_prefix(item.case_id, item.media_id, ANALYZER)
    assert await result_files(producing, item) == [prefix + "faces/face-0.jpg", prefix + "faces/face-1.jpg"]
    assert await producing.store.read(prefix + "faces/face-1.jpg") == b"\xff\xd8crop\x01"
    doc = await document(producing, item)
    assert doc is not None and doc["payload"] == {"faces": 2, "texts": 2}
    assert [(f["name"], f["key"], f["content_type"], f["size_bytes"]) for f in doc["files"]] == [
        ("faces/face-0.jpg", prefix + "faces/face-0.jpg", "image/jpeg", 7),
        ("faces/face-1.jpg", prefix + "faces/face-1.jpg", "image/jpeg", 7),
    ]
    assert doc["files"][0]["sha256"] == hashlib.sha256(b"\xff\xd8crop\x00").hexdigest()


async def test_a_second_run_replaces_the_first_and_drops_what_it_no_longer_finds(producing: Resources) -> None:
    item = await new_item(producing, Plan(faces=3, files=3))
    first = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(first.id)) == "succeeded"
    again = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(again.id)) == "succeeded"
    faces = await rows(producing, "face_embeddings", item.media_id)
    assert [(row["key"], row["task_id"]) for row in faces] == [(f"face-{i}", str(again.id)) for i in range(3)]
    assert len(await rows(producing, "text_embeddings", item.media_id)) == 2
    assert len(await result_files(producing, item)) == 3  # one version each, even in a versioned bucket

    PLANS[str(item.media_id)] = Plan(faces=1, texts=["only this"], files=1)
    fewer = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(fewer.id)) == "succeeded"
    assert [row["key"] for row in await rows(producing, "face_embeddings", item.media_id)] == ["face-0"]
    assert [row["text"] for row in await rows(producing, "text_embeddings", item.media_id)] == ["only this"]
    assert len(await rows(producing, "voice_embeddings", item.media_id)) == 1
    prefix = outputs.results_prefix(item.case_id, item.media_id, ANALYZER)
    assert await result_files(producing, item) == [prefix + "faces/face-0.jpg"]
    doc = await document(producing, item)
    assert doc is not None and [f["name"] for f in doc["files"]] == ["faces/face-0.jpg"]
    assert await producing.results.count_documents({"media_id": str(item.media_id)}) == 1


async def test_a_job_cancelled_while_the_result_was_stored_keeps_nothing(producing: Resources) -> None:
    item = await new_item(producing)
    task = await new_task(producing, item)
    PLANS[str(item.media_id)].cancel_job = task.job_id
    assert await run_analysis_task(ctx(producing), str(task.id)) == "cancelled"
    stored, _ = await reload(producing, task)
    assert stored.state is TaskState.CANCELLED
    assert await nothing_stored(producing, item)


async def test_deleting_the_media_removes_its_vectors_and_result_files(producing: Resources) -> None:
    item = await new_item(producing)
    task = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(task.id)) == "succeeded"
    assert len(await result_files(producing, item)) == 2
    summary = await deletion.delete_media(resources=producing, actor=item.actor, media_id=item.media_id)
    assert summary.complete
    assert (summary.removed.vectors, summary.removed.objects, summary.removed.results) == (5, 2, 1)
    assert await nothing_stored(producing, item)


async def test_deleting_the_case_removes_its_vectors_and_result_files(producing: Resources) -> None:
    item = await new_item(producing)
    task = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(task.id)) == "succeeded"
    summary = await deletion.delete_case(resources=producing, actor=item.actor, case_id=item.case_id)
    assert summary.complete and summary.removed.vectors == 5
    assert await nothing_stored(producing, item)


async def test_a_vector_of_the_wrong_dimension_fails_the_task_and_stores_nothing(producing: Resources) -> None:
    item = await new_item(producing, Plan(face_dimension=128))
    task = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(task.id)) == "failed"
    stored, _ = await reload(producing, task)
    assert (stored.state, stored.error_code) == (TaskState.FAILED, "INVALID_ANALYZER_OUTPUT")
    assert stored.error_message == (
        f"Analyzer {ANALYZER} made a 128-dimensional vector (embedding 'face-0') for face_embeddings, "
        "which holds 512-dimensional vectors."
    )
    assert await nothing_stored(producing, item)


async def test_without_an_embedder_texts_are_left_out(producing: Resources) -> None:
    holder: list[Resources] = []
    holder.append(dataclasses.replace(producing, analyzers=_registry(holder, embedder=False)))
    item = await new_item(producing)
    task = await new_task(producing, item)
    assert await run_analysis_task(ctx(holder[0]), str(task.id)) == "succeeded"
    assert await rows(producing, "text_embeddings", item.media_id) == []
    assert len(await rows(producing, "face_embeddings", item.media_id)) == 2


async def test_an_unreachable_vector_store_makes_the_task_wait_then_a_retry_stores_one_of_each(
    producing: Resources,
) -> None:
    item = await new_item(producing)
    task = await new_task(producing, item)
    down = AsyncMilvusClient("http://127.0.0.1:1", dedicated=True)
    try:
        outage = dataclasses.replace(producing, milvus=down)
        assert await run_analysis_task(ctx(outage), str(task.id), 0) == "waiting"
    finally:
        await down.close()
    stored, _ = await reload(producing, task)
    assert (stored.state, stored.error_code) == (TaskState.WAITING_FOR_MODEL, "BACKEND_UNAVAILABLE")
    assert await document(producing, item) is None
    assert await run_analysis_task(ctx(producing), str(task.id), 1) == "succeeded"
    assert len(await rows(producing, "face_embeddings", item.media_id)) == 2
    assert len(await result_files(producing, item)) == 2


async def test_an_unreachable_object_store_makes_the_task_wait(producing: Resources) -> None:
    item = await new_item(producing)
    task = await new_task(producing, item)
    client = aioboto3.Session().client(
        "s3",
        endpoint_url="http://127.0.0.1:1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
        config=AioConfig(retries={"max_attempts": 1}, connect_timeout=1),
    )
    async with client as s3:
        store = ObjectStore(s3, producing.store.bucket, part_size=producing.store.part_size)
        outage = dataclasses.replace(producing, store=store)
        assert await run_analysis_task(ctx(outage), str(task.id), 0) == "waiting"
    stored, _ = await reload(producing, task)
    assert (stored.state, stored.error_code) == (TaskState.WAITING_FOR_MODEL, "BACKEND_UNAVAILABLE")
    assert await nothing_stored(producing, item)


async def test_faces_and_voices_are_handed_to_clustering_whose_failure_fails_nothing(
    producing: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[uuid.UUID, uuid.UUID, str, str]] = []

    async def cluster_media(
        resources: Resources, *, case_id: uuid.UUID, media_id: uuid.UUID, analyzer: str, kind: str
    ) -> None:
        calls.append((case_id, media_id, analyzer, kind))
        raise RuntimeError("clustering broke")

    monkeypatch.setattr(outputs, "cluster_media", cluster_media)
    item = await new_item(producing)
    task = await new_task(producing, item)
    assert await run_analysis_task(ctx(producing), str(task.id)) == "succeeded"
    assert calls == [
        (item.case_id, item.media_id, ANALYZER, "face"),
        (item.case_id, item.media_id, ANALYZER, "voice"),
    ]
