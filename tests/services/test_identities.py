"""Persons and voices across a case, on the real servers: embeddings in Milvus as the worker stores them (synthetic
unit vectors: data, not a model), clusters in PostgreSQL, users' corrections and automation taking turns."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import func, select

from aima.db.models import (
    Assignment,
    Case,
    CaseMember,
    CaseRole,
    IdentityCluster,
    IdentityCorrection,
    IdentityKind,
    IdentityMember,
    IdentitySync,
    Job,
    JobState,
    Media,
    Role,
    Task,
    TaskState,
    User,
)
from aima.errors import Forbidden, InvalidInput, NotFound
from aima.resources import Resources
from aima.services import identities, identity_corrections
from aima.services.access import Actor
from aima.services.identities import cluster_media, recluster_case
from aima.services.identity_corrections import IdentityConflict

RNG = np.random.default_rng(20261130)


def unit(dimension: int = 512) -> list[float]:
    """A random direction: two of them are nearly orthogonal (two different people)."""
    vector = RNG.normal(size=dimension)
    return list(vector / np.linalg.norm(vector))


def near(base: Sequence[float], similarity: float) -> list[float]:
    """A unit vector at exactly this cosine similarity to `base` (another picture of the same person)."""
    b = np.asarray(base)
    other = RNG.normal(size=b.size)
    other -= other.dot(b) * b
    other /= np.linalg.norm(other)
    return list(similarity * b + np.sqrt(1 - similarity**2) * other)


@dataclass(frozen=True)
class Face:
    key: str
    vector: Sequence[float]
    keyframe: int = 0
    timestamp_s: float = 0.0


@dataclass(frozen=True)
class Turn:
    key: str
    vector: Sequence[float]
    speaker: str
    start_s: float
    end_s: float


async def new_case(resources: Resources) -> tuple[Actor, uuid.UUID]:
    """A user who owns a new case."""
    user = User(id=uuid.uuid4(), email=f"id-{uuid.uuid4().hex[:10]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="Identities", owner_id=user.id)
    async with resources.sessions() as session, session.begin():
        session.add(user)
        await session.flush()
        session.add(case)
    return Actor.of(user), case.id


async def new_user(resources: Resources, case_id: uuid.UUID | None = None, role: CaseRole | None = None) -> Actor:
    """A user, optionally a member of a case."""
    user = User(id=uuid.uuid4(), email=f"id-{uuid.uuid4().hex[:10]}@example.org", password_hash="x", role=Role.USER)
    async with resources.sessions() as session, session.begin():
        session.add(user)
        await session.flush()
        if case_id is not None and role is not None:
            session.add(CaseMember(case_id=case_id, user_id=user.id, role=role))
    return Actor.of(user)


async def new_media(resources: Resources, actor: Actor, case_id: uuid.UUID, filename: str = "clip.mp4") -> uuid.UUID:
    media_id = uuid.uuid4()
    async with resources.sessions() as session, session.begin():
        session.add(
            Media(
                id=media_id,
                case_id=case_id,
                uploaded_by=actor.user_id,
                filename=filename,
                kind="video",
                content_type="video/mp4",
                format="mp4",
                size_bytes=1,
                sha256=hashlib.sha256(media_id.bytes).hexdigest(),
                storage_key=f"cases/{case_id}/media/{media_id}/original",
            )
        )
    return media_id


def vector_id(media_id: uuid.UUID, analyzer: str, key: str) -> str:
    return hashlib.sha256(f"{media_id}\n{analyzer}\n{key}".encode()).hexdigest()


async def store_faces(
    resources: Resources, case_id: uuid.UUID, media_id: uuid.UUID, faces: Sequence[Face], analyzer: str = "faces"
) -> None:
    """Face embeddings as the worker stores them: (media, analyzer, key) ids, the face's facts beside the vector;
    rows of an earlier run that this one did not make are removed."""
    rows = [
        {
            "id": vector_id(media_id, analyzer, face.key),
            "case_id": str(case_id),
            "media_id": str(media_id),
            "task_id": str(uuid.uuid4()),
            "vector": list(face.vector),
            "analyzer": analyzer,
            "key": face.key,
            "timestamp_s": face.timestamp_s,
            "keyframe": face.keyframe,
            "box": [10.0, 20.0, 110.0, 140.0],
            "det_score": 0.98,
        }
        for face in faces
    ]
    await _replace(resources, "face_embeddings", media_id, analyzer, rows)


async def store_turns(
    resources: Resources, case_id: uuid.UUID, media_id: uuid.UUID, turns: Sequence[Turn], analyzer: str = "speakers"
) -> None:
    rows = [
        {
            "id": vector_id(media_id, analyzer, turn.key),
            "case_id": str(case_id),
            "media_id": str(media_id),
            "task_id": str(uuid.uuid4()),
            "vector": list(turn.vector),
            "analyzer": analyzer,
            "key": turn.key,
            "start_s": turn.start_s,
            "end_s": turn.end_s,
            "speaker": turn.speaker,
        }
        for turn in turns
    ]
    await _replace(resources, "voice_embeddings", media_id, analyzer, rows)


async def _replace(
    resources: Resources, collection: str, media_id: uuid.UUID, analyzer: str, rows: list[dict[str, object]]
) -> None:
    await resources.milvus.delete(collection, filter=f'media_id == "{media_id}" and analyzer == "{analyzer}"')
    if rows:
        await resources.milvus.upsert(collection, rows)


async def clusters(resources: Resources, case_id: uuid.UUID, kind: IdentityKind = IdentityKind.FACE) -> dict[str, str]:
    """Each member's key (media-qualified where keys repeat) mapped to its cluster id."""
    async with resources.sessions() as session:
        rows = await session.execute(
            select(IdentityMember.key, IdentityMember.cluster_id).where(
                IdentityMember.case_id == case_id, IdentityMember.kind == kind
            )
        )
        return {key: str(cluster) for key, cluster in rows}


async def member(resources: Resources, case_id: uuid.UUID, key: str) -> IdentityMember:
    async with resources.sessions() as session:
        found = await session.scalar(
            select(IdentityMember).where(IdentityMember.case_id == case_id, IdentityMember.key == key)
        )
        assert found is not None, key
        return found


async def faces_case(resources: Resources) -> tuple[Actor, uuid.UUID, list[uuid.UUID], dict[str, list[float]]]:
    """A case with three videos: Alice and Bob together in the first, Alice alone in the second, Bob in the third.
    Returns the owner, the case, the media and each face's vector by key."""
    actor, case_id = await new_case(resources)
    alice, bob = unit(), unit()
    vectors = {key: near(alice if key.startswith("alice") else bob, 0.8) for key in FACE_KEYS}
    media = [await new_media(resources, actor, case_id, f"v{n}.mp4") for n in range(3)]
    await store_faces(
        resources,
        case_id,
        media[0],
        [
            Face("alice-1", vectors["alice-1"], keyframe=0),
            Face("bob-1", vectors["bob-1"], keyframe=0),
            Face("alice-2", vectors["alice-2"], keyframe=1, timestamp_s=2.0),
        ],
    )
    await store_faces(resources, case_id, media[1], [Face("alice-3", vectors["alice-3"], keyframe=4)])
    await store_faces(resources, case_id, media[2], [Face("bob-2", vectors["bob-2"], keyframe=2)])
    for media_id in media:
        await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer="faces", kind="face")
    return actor, case_id, media, vectors


FACE_KEYS = ("alice-1", "bob-1", "alice-2", "alice-3", "bob-2")


async def test_the_same_person_is_one_cluster_across_media_and_two_people_stay_apart(resources: Resources) -> None:
    _, case_id, _, _ = await faces_case(resources)
    found = await clusters(resources, case_id)
    assert found["alice-1"] == found["alice-2"] == found["alice-3"]
    assert found["bob-1"] == found["bob-2"]
    assert found["alice-1"] != found["bob-1"]
    async with resources.sessions() as session:
        numbers = list(
            await session.scalars(
                select(IdentityCluster.number).where(IdentityCluster.case_id == case_id).order_by("number")
            )
        )
        joined = await session.scalar(
            select(IdentityMember).where(IdentityMember.case_id == case_id, IdentityMember.key == "alice-3")
        )
    assert numbers == [1, 2]
    assert joined is not None and joined.similarity is not None and joined.similarity > 0.45
    assert joined.assigned_by is Assignment.AUTO and joined.keyframe == 4 and joined.box == [10, 20, 110, 140]


async def test_two_faces_of_one_keyframe_are_never_one_person(resources: Resources) -> None:
    actor, case_id = await new_case(resources)
    twin = unit()
    media_id = await new_media(resources, actor, case_id)
    faces = [
        Face("a", near(twin, 0.95), keyframe=3),
        Face("b", near(twin, 0.95), keyframe=3),  # as alike as can be, but in the same picture
        Face("c", near(twin, 0.95), keyframe=4),
    ]
    await store_faces(resources, case_id, media_id, faces)
    await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer="faces", kind="face")
    found = await clusters(resources, case_id)
    assert found["a"] != found["b"]
    assert found["c"] in {found["a"], found["b"]}


async def test_running_again_changes_nothing_and_keeps_names(resources: Resources) -> None:
    actor, case_id, media, _ = await faces_case(resources)
    before = await clusters(resources, case_id)
    alice = uuid.UUID(before["alice-1"])
    await identity_corrections.rename_cluster(resources=resources, actor=actor, cluster_id=alice, label="  Alice \n")
    for media_id in reversed(media):
        await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer="faces", kind="face")
    assert await clusters(resources, case_id) == before
    async with resources.sessions() as session:
        cluster = await session.get(IdentityCluster, alice)
    assert cluster is not None and cluster.label == "Alice" and identities.display_name(cluster) == "Alice"


async def test_a_new_analysis_with_fewer_faces_drops_the_stale_members_and_empty_clusters(
    resources: Resources,
) -> None:
    _, case_id, media, _ = await faces_case(resources)
    await store_faces(resources, case_id, media[2], [])
    await cluster_media(resources, case_id=case_id, media_id=media[2], analyzer="faces", kind="face")
    await store_faces(resources, case_id, media[0], [])
    await cluster_media(resources, case_id=case_id, media_id=media[0], analyzer="faces", kind="face")
    assert set(await clusters(resources, case_id)) == {"alice-3"}
    async with resources.sessions() as session:
        left = list(await session.scalars(select(IdentityCluster.id).where(IdentityCluster.case_id == case_id)))
    assert len(left) == 1


async def test_corrections_hold_when_automation_runs_again(resources: Resources) -> None:
    actor, case_id, media, vectors = await faces_case(resources)
    found = await clusters(resources, case_id)
    alice, bob = uuid.UUID(found["alice-1"]), uuid.UUID(found["bob-1"])

    # "alice-3 is not Alice": it leaves for good, and lands alone (it resembles nobody else).
    removed = await identity_corrections.remove_member(
        resources=resources, actor=actor, member_id=(await member(resources, case_id, "alice-3")).id
    )
    assert removed.cluster_id not in {alice, bob}
    # "bob-2 is Alice" (a user's call, however unlike): it moves and stays.
    moved = await identity_corrections.move_member(
        resources=resources, actor=actor, member_id=(await member(resources, case_id, "bob-2")).id, cluster_id=alice
    )
    assert moved.cluster_id == alice and moved.assigned_by is Assignment.USER

    # A new video with Alice as in the first video, and Bob.
    extra = await new_media(resources, actor, case_id, "v3.mp4")
    await store_faces(
        resources,
        case_id,
        extra,
        [Face("alice-4", near(vectors["alice-1"], 0.9)), Face("bob-3", near(vectors["bob-1"], 0.9))],
    )
    for media_id in [*media, extra]:
        await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer="faces", kind="face")
    await recluster_case(resources, case_id=case_id, kind=IdentityKind.FACE)
    after = await clusters(resources, case_id)
    assert after["bob-2"] == str(alice)  # the user's placement holds
    assert after["alice-3"] != str(alice)  # the exclusion holds
    assert after["alice-4"] == after["alice-1"] == str(alice)
    assert after["bob-3"] == after["bob-1"] == str(bob)
    async with resources.sessions() as session:
        actions = list(
            await session.scalars(
                select(IdentityCorrection.action).where(IdentityCorrection.case_id == case_id).order_by("id")
            )
        )
    assert actions == ["remove", "move"]


async def test_merge_and_split(resources: Resources) -> None:
    actor, case_id, media, _ = await faces_case(resources)
    found = await clusters(resources, case_id)
    alice, bob = uuid.UUID(found["alice-1"]), uuid.UUID(found["bob-1"])
    await identity_corrections.rename_cluster(resources=resources, actor=actor, cluster_id=bob, label="Bob")

    # alice-1 and bob-1 share keyframe 0 of the first video: one person cannot be both.
    with pytest.raises(IdentityConflict):
        await identity_corrections.merge_clusters(resources=resources, actor=actor, into_id=alice, from_ids=[bob])

    split = await identity_corrections.split_cluster(
        resources=resources,
        actor=actor,
        cluster_id=alice,
        member_ids=[(await member(resources, case_id, "alice-3")).id],
    )
    assert (await clusters(resources, case_id))["alice-3"] == str(split.id)
    with pytest.raises(InvalidInput):  # splitting everything off is a rename
        await identity_corrections.split_cluster(
            resources=resources,
            actor=actor,
            cluster_id=split.id,
            member_ids=[(await member(resources, case_id, "alice-3")).id],
        )

    merged = await identity_corrections.merge_clusters(
        resources=resources, actor=actor, into_id=split.id, from_ids=[bob]
    )
    assert merged.label == "Bob"  # the merged cluster had no name: it takes the other's
    for media_id in media:
        await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer="faces", kind="face")
    after = await clusters(resources, case_id)
    assert after["alice-3"] == after["bob-1"] == after["bob-2"] == str(split.id)
    assert after["alice-1"] == after["alice-2"] == str(alice)
    with pytest.raises(NotFound):
        await identity_corrections.rename_cluster(resources=resources, actor=actor, cluster_id=bob, label="gone")


async def test_only_editors_correct_and_other_cases_do_not_exist(resources: Resources) -> None:
    _, case_id, _, _ = await faces_case(resources)
    cluster_id = uuid.UUID((await clusters(resources, case_id))["alice-1"])
    viewer = await new_user(resources, case_id, CaseRole.VIEWER)
    editor = await new_user(resources, case_id, CaseRole.EDITOR)
    stranger = await new_user(resources)
    with pytest.raises(Forbidden):
        await identity_corrections.rename_cluster(resources=resources, actor=viewer, cluster_id=cluster_id, label="x")
    with pytest.raises(NotFound) as missing:
        await identity_corrections.rename_cluster(resources=resources, actor=stranger, cluster_id=cluster_id, label="x")
    assert str(case_id) not in missing.value.message  # the answer names only what was asked for
    renamed = await identity_corrections.rename_cluster(
        resources=resources, actor=editor, cluster_id=cluster_id, label="x"
    )
    assert renamed.label == "x"

    other_actor, other_case = await new_case(resources)
    other_media = await new_media(resources, other_actor, other_case)
    await store_faces(resources, other_case, other_media, [Face("dave", unit())])
    await cluster_media(resources, case_id=other_case, media_id=other_media, analyzer="faces", kind="face")
    own = uuid.UUID((await clusters(resources, other_case))["dave"])
    with pytest.raises(NotFound):  # a cluster of another case does not exist for this call
        await identity_corrections.merge_clusters(
            resources=resources, actor=other_actor, into_id=own, from_ids=[cluster_id]
        )
    with pytest.raises(NotFound):
        await identity_corrections.merge_clusters(
            resources=resources, actor=other_actor, into_id=cluster_id, from_ids=[own]
        )


async def test_concurrent_runs_for_one_case_take_turns(resources: Resources) -> None:
    """Two workers finishing two videos of one person at once: the second sees the first's cluster."""
    actor, case_id = await new_case(resources)
    carol = unit()
    media = [await new_media(resources, actor, case_id) for _ in range(4)]
    for n, media_id in enumerate(media):
        await store_faces(resources, case_id, media_id, [Face(f"carol-{n}", near(carol, 0.8))])
    await asyncio.gather(
        *(cluster_media(resources, case_id=case_id, media_id=m, analyzer="faces", kind="face") for m in media)
    )
    assert len(set((await clusters(resources, case_id)).values())) == 1


async def test_voices_follow_speakers_across_recordings(resources: Resources) -> None:
    actor, case_id = await new_case(resources)
    dan, eve = unit(256), unit(256)
    first, second = await new_media(resources, actor, case_id), await new_media(resources, actor, case_id)
    await store_turns(
        resources,
        case_id,
        first,
        [
            Turn("turn-1", near(dan, 0.97), "S1", 0.0, 2.0),
            Turn("turn-2", near(near(dan, 0.97), 0.97), "S2", 2.0, 4.0),  # diarization says: another speaker
            Turn("turn-3", near(dan, 0.97), "S1", 4.0, 6.0),
        ],
    )
    await store_turns(
        resources,
        case_id,
        second,
        [Turn("turn-1", near(dan, 0.97), "S1", 0.0, 3.0), Turn("turn-2", near(eve, 0.97), "S2", 3.0, 5.0)],
    )
    for media_id in (first, second):
        await cluster_media(resources, case_id=case_id, media_id=media_id, analyzer="speakers", kind="voice")
    async with resources.sessions() as session:
        rows = (
            await session.execute(
                select(IdentityMember.media_id, IdentityMember.key, IdentityMember.cluster_id).where(
                    IdentityMember.case_id == case_id
                )
            )
        ).all()
    voice = {(m, k): c for m, k, c in rows}
    assert voice[(first, "turn-1")] == voice[(first, "turn-3")] == voice[(second, "turn-1")]
    assert voice[(first, "turn-2")] != voice[(first, "turn-1")]  # two speakers of one recording are two voices
    assert voice[(second, "turn-2")] not in {voice[(first, "turn-1")], voice[(first, "turn-2")]}
    summary = await recluster_case(resources, case_id=case_id, kind=IdentityKind.VOICE, actor=actor)
    assert summary.members == 5 and summary.moved == 0 and summary.clusters == 3


async def finished_task(
    resources: Resources, actor: Actor, case_id: uuid.UUID, media_id: uuid.UUID, analyzer: str
) -> None:
    """A task of `analyzer` on the media that succeeded just now (as the worker leaves it)."""
    now = datetime.now(UTC)
    job = Job(id=uuid.uuid4(), case_id=case_id, media_id=media_id, created_by=actor.user_id, state=JobState.SUCCEEDED)
    async with resources.sessions() as session, session.begin():
        session.add(job)
        await session.flush()
        session.add(
            Task(
                job_id=job.id,
                media_id=media_id,
                analyzer=analyzer,
                analyzer_version="1.0",
                state=TaskState.SUCCEEDED,
                started_at=now,
                finished_at=now,
            )
        )


async def test_reconcile_clusters_what_the_worker_missed(resources: Resources) -> None:
    actor, case_id = await new_case(resources)
    erin = unit()
    media = [await new_media(resources, actor, case_id) for _ in range(2)]
    for n, media_id in enumerate(media):  # stored, but clustering never ran (it failed, or the worker stopped)
        await store_faces(resources, case_id, media_id, [Face(f"erin-{n}", near(erin, 0.8))])
        await finished_task(resources, actor, case_id, media_id, "faces")
    await finished_task(resources, actor, case_id, media[0], "whisper")  # no faces, no voices: checked once
    assert await identities.reconcile(resources, limit=10_000) >= 2
    assert len(set((await clusters(resources, case_id)).values())) == 1
    assert await identities.reconcile(resources, limit=10_000) == 0  # nothing left to do
    async with resources.sessions() as session:
        checked = await session.scalar(
            select(func.count()).where(IdentitySync.media_id == media[0], IdentitySync.analyzer == "whisper")
        )
    assert checked == 2  # both kinds, with no members

    # The faces analyzer runs again on the first video and finds a second face; its clustering is lost again.
    await store_faces(resources, case_id, media[0], [Face("erin-0", near(erin, 0.8)), Face("frank", unit(), 1)])
    await finished_task(resources, actor, case_id, media[0], "faces")
    assert await identities.reconcile(resources, limit=10_000) == 1
    assert set(await clusters(resources, case_id)) == {"erin-0", "erin-1", "frank"}


async def test_a_deleted_media_item_takes_its_members_and_leaves_no_empty_person(resources: Resources) -> None:
    _, case_id, media, _ = await faces_case(resources)
    bob = uuid.UUID((await clusters(resources, case_id))["bob-1"])
    async with resources.sessions() as session, session.begin():
        for media_id in (media[0], media[2]):  # every face of Bob
            await session.delete(await session.get(Media, media_id))
    assert set(await clusters(resources, case_id)) == {"alice-3"}
    await cluster_media(resources, case_id=case_id, media_id=media[1], analyzer="faces", kind="face")
    async with resources.sessions() as session:
        assert await session.get(IdentityCluster, bob) is None
