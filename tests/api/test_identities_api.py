"""Persons, voices, transcripts with speakers and semantic search through GraphQL, for every role, on the real
servers. Embeddings and result documents are written the way the worker writes them (synthetic vectors: data)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from aima.analysis import RegisterEmbedder
from aima.app import create_app
from aima.hookspecs import hookimpl
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.resources import Resources, open_resources
from aima.services.identities import cluster_media
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import new_case
from tests.embedders import HashingEmbedder
from tests.gql import GraphQLClient, run_sync
from tests.services.test_identities import Face, Turn, near, store_faces, store_turns, unit

SHARE = "mutation($c: ID!, $e: String!, $r: CaseRole!) { shareCase(caseId: $c, email: $e, role: $r) { role } }"
PERSONS = """
query($id: ID!) {
  case(id: $id) {
    persons { id name label number memberCount mediaCount
              members { id key startS keyframe box detScore similarity assignedBy cropUrl media { id } } }
    voices { id name memberCount members { id key speaker startS endS } }
  }
}
"""
CLUSTER = "id name label memberCount members { id key assignedBy }"


def with_resources(settings: Settings, work: Any) -> Any:
    """Run `work(resources)` with clients of their own, from sync test code."""

    async def run() -> Any:
        async with open_resources(settings, prepare=False) as resources:
            return await work(resources)

    return run_sync(run())


def seed_faces(settings: Settings, case_id: str, media_id: str, count: int = 1) -> list[dict[str, str]]:
    """`count` independent groups of faces in a media item, each made by an analyzer name of its own (so that
    correcting one group leaves the others alone): cluster "cluster" holds two faces of one person ("member" is
    one), "cluster2" one face of another ("member2")."""

    async def work(resources: Resources) -> list[dict[str, str]]:
        from sqlalchemy import select

        from aima.db.models import IdentityMember

        seeds = []
        for _ in range(count):
            analyzer = f"faces-{uuid.uuid4().hex[:8]}"
            a, b = unit(), unit()
            faces = [
                Face("face-0-0", near(a, 0.9), keyframe=0),
                Face("face-1-0", near(a, 0.9), keyframe=1, timestamp_s=1.0),
                Face("face-2-0", near(b, 0.9), keyframe=2, timestamp_s=2.0),
            ]
            await store_faces(resources, uuid.UUID(case_id), uuid.UUID(media_id), faces, analyzer=analyzer)
            await cluster_media(
                resources, case_id=uuid.UUID(case_id), media_id=uuid.UUID(media_id), analyzer=analyzer, kind="face"
            )
            async with resources.sessions() as session:
                rows = await session.execute(
                    select(IdentityMember.key, IdentityMember.id, IdentityMember.cluster_id).where(
                        IdentityMember.analyzer == analyzer
                    )
                )
                found = {key: (str(member), str(cluster)) for key, member, cluster in rows}
            seeds.append(
                {
                    "cluster": found["face-0-0"][1],
                    "cluster2": found["face-2-0"][1],
                    "member": found["face-0-0"][0],
                    "member2": found["face-2-0"][0],
                    "analyzer": analyzer,
                }
            )
        return seeds

    result: list[dict[str, str]] = with_resources(settings, work)
    return result


@dataclass(frozen=True)
class Shared:
    case: str
    media: str
    #: A case of the owner shared with nobody.
    private_case: str


@pytest.fixture(scope="module")
def shared(people: People) -> Shared:
    """A case of `people.owner` with one image, shared with `other` as editor, `viewer` and `guest` as viewers."""
    case_id = new_case(people.owner, "Persons")
    media = people.owner.upload(case_id, make_jpeg(width=52), filename="harbour.jpg")["data"]["uploadMedia"]["id"]
    for person, role in (("other", "EDITOR"), ("viewer", "VIEWER"), ("guest", "VIEWER")):
        people.owner.data(SHARE, {"c": case_id, "e": people.emails[person], "r": role})
    return Shared(case=case_id, media=media, private_case=new_case(people.owner, "Private"))


def error_code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if errors else None


def test_persons_and_voices_for_every_role(people: People, shared: Shared, settings: Settings) -> None:
    seed = seed_faces(settings, shared.case, shared.media)[0]

    async def voices(resources: Resources) -> None:
        dan = unit(256)
        turns = [Turn("turn-1", near(dan, 0.9), "S1", 0.0, 2.5), Turn("turn-2", near(dan, 0.9), "S1", 3.0, 4.0)]
        await store_turns(resources, uuid.UUID(shared.case), uuid.UUID(shared.media), turns)
        await cluster_media(
            resources,
            case_id=uuid.UUID(shared.case),
            media_id=uuid.UUID(shared.media),
            analyzer="speakers",
            kind="voice",
        )

    with_resources(settings, voices)
    for person in ("owner", "admin", "other", "viewer", "guest"):
        case = getattr(people, person).data(PERSONS, {"id": shared.case})["case"]
        persons = {p["id"]: p for p in case["persons"]}
        assert persons[seed["cluster"]]["memberCount"] == 2, person
        assert persons[seed["cluster2"]]["memberCount"] == 1
        first = persons[seed["cluster"]]["members"][0]
        assert first["key"] == "face-0-0" and first["keyframe"] == 0 and first["box"] == [10, 20, 110, 140]
        assert first["media"]["id"] == shared.media and first["assignedBy"] == "AUTO"
        assert persons[seed["cluster"]]["name"].startswith("Person ")
        (voice,) = case["voices"]
        assert voice["memberCount"] == 2 and voice["name"].startswith("Voice ")
        assert {m["speaker"] for m in voice["members"]} == {"S1"}
    for person in ("other", "viewer", "guest"):  # a case not shared with them does not exist for them
        body = getattr(people, person).execute(PERSONS, {"id": shared.private_case})
        assert error_code(body) == "NOT_FOUND" and body["data"] is None


def test_corrections_by_editors_only(people: People, shared: Shared, settings: Settings) -> None:
    seed = seed_faces(settings, shared.case, shared.media)[0]
    rename = f"mutation($c: ID!, $l: String) {{ renameCluster(clusterId: $c, label: $l) {{ {CLUSTER} }} }}"
    for person in ("viewer", "guest"):
        body = getattr(people, person).execute(rename, {"c": seed["cluster"], "l": "Alice"})
        assert error_code(body) == "FORBIDDEN", body
    renamed = people.other.data(rename, {"c": seed["cluster"], "l": "Alice"})["renameCluster"]
    assert renamed["name"] == renamed["label"] == "Alice"

    move = "mutation($m: ID!, $c: ID!) { moveMember(memberId: $m, clusterId: $c) { id clusterId assignedBy } }"
    moved = people.other.data(move, {"m": seed["member2"], "c": seed["cluster"]})["moveMember"]
    assert moved["clusterId"] == seed["cluster"] and moved["assignedBy"] == "USER"

    split = f"mutation($c: ID!, $m: [ID!]!) {{ splitCluster(clusterId: $c, memberIds: $m) {{ {CLUSTER} }} }}"
    apart = people.owner.data(split, {"c": seed["cluster"], "m": [seed["member2"]]})["splitCluster"]
    assert [m["id"] for m in apart["members"]] == [seed["member2"]] and apart["name"].startswith("Person ")

    merge = f"mutation($i: ID!, $f: [ID!]!) {{ mergeClusters(intoId: $i, fromIds: $f) {{ {CLUSTER} }} }}"
    whole = people.owner.data(merge, {"i": seed["cluster"], "f": [apart["id"]]})["mergeClusters"]
    assert whole["memberCount"] == 3 and whole["label"] == "Alice"

    remove = "mutation($m: ID!) { removeMember(memberId: $m) { id clusterId assignedBy } }"
    removed = people.other.data(remove, {"m": seed["member2"]})["removeMember"]
    assert removed["clusterId"] != seed["cluster"] and removed["assignedBy"] == "AUTO"

    recluster = "mutation($c: ID!) { reclusterCase(caseId: $c, kind: FACE) { members clusters moved } }"
    summary = people.other.data(recluster, {"c": shared.case})["reclusterCase"]
    assert summary["members"] >= 3
    after = people.viewer.data(PERSONS, {"id": shared.case})["case"]["persons"]
    alice = next(p for p in after if p["id"] == seed["cluster"])
    assert alice["label"] == "Alice" and alice["memberCount"] == 2  # the removed face stayed out

    log = people.viewer.data(
        "query($id: ID!) { case(id: $id) { identityCorrections { action actorId details } } }", {"id": shared.case}
    )["case"]["identityCorrections"]
    assert [e["action"] for e in log][:6] == ["recluster", "remove", "merge", "split", "move", "rename"]
    assert people.other.data(recluster, {"c": shared.case})["reclusterCase"]["moved"] == 0


def test_a_merge_that_puts_two_faces_of_one_picture_together_is_refused(
    people: People, shared: Shared, settings: Settings
) -> None:
    async def same_frame(resources: Resources) -> list[str]:
        from sqlalchemy import select

        from aima.db.models import IdentityMember

        analyzer = f"faces-{uuid.uuid4().hex[:8]}"
        faces = [Face("face-0-0", unit(), keyframe=0), Face("face-0-1", unit(), keyframe=0)]
        await store_faces(resources, uuid.UUID(shared.case), uuid.UUID(shared.media), faces, analyzer=analyzer)
        await cluster_media(
            resources, case_id=uuid.UUID(shared.case), media_id=uuid.UUID(shared.media), analyzer=analyzer, kind="face"
        )
        async with resources.sessions() as session:
            query = select(IdentityMember.cluster_id).where(IdentityMember.analyzer == analyzer)
            return [str(c) for c in await session.scalars(query.order_by(IdentityMember.key))]

    first, second = with_resources(settings, same_frame)
    body = people.owner.execute(
        "mutation($i: ID!, $f: [ID!]!) { mergeClusters(intoId: $i, fromIds: $f) { id } }", {"i": first, "f": [second]}
    )
    assert error_code(body) == "IDENTITY_CONFLICT", body
    assert "two faces of one picture are two people" in body["errors"][0]["message"]


def _result_document(
    case_id: str, media_id: str, analyzer: str, payload: dict[str, Any], files: Sequence[Any] = ()
) -> dict[str, Any]:
    """A result document as the worker stores it."""
    now = datetime.now(UTC)
    return {
        "media_id": media_id,
        "case_id": case_id,
        "analyzer": analyzer,
        "analyzer_version": "1.0.0",
        "task_id": str(uuid.uuid4()),
        "payload": payload,
        "files": list(files),
        "created_at": now,
        "updated_at": now,
    }


def test_transcript_says_who_spoke(people: People, shared: Shared, settings: Settings) -> None:
    media = people.owner.upload(shared.case, make_jpeg(width=61), filename="call.jpg")["data"]["uploadMedia"]["id"]
    whisper = {
        "language": "en",
        "language_probability": 0.98,
        "duration_s": 9.0,
        "model": "tiny.en",
        "segments": [
            {
                "id": 0,
                "start_s": 0.2,
                "end_s": 2.0,
                "text": " Meet me at the harbour.",
                "avg_logprob": -0.2,
                "no_speech_prob": 0.01,
                "words": [{"start_s": 0.2, "end_s": 0.5, "word": " Meet", "probability": 0.9}],
            },
            {
                "id": 1,
                "start_s": 2.4,
                "end_s": 5.0,
                "text": " At midnight?",
                "avg_logprob": -0.3,
                "no_speech_prob": 0.02,
            },
            {"id": 2, "start_s": 7.0, "end_s": 8.0, "text": " (music)", "avg_logprob": -0.9, "no_speech_prob": 0.5},
        ],
    }
    speakers = {
        "turns": [
            {"key": "turn-1", "start_s": 0.0, "end_s": 2.2, "speaker": "S1", "confidence": 0.9},
            {"key": "turn-2", "start_s": 2.2, "end_s": 5.1, "speaker": "S2", "confidence": 0.9},
        ]
    }

    async def work(resources: Resources) -> None:
        await resources.results.insert_one(_result_document(shared.case, media, "whisper", whisper))
        await resources.results.insert_one(_result_document(shared.case, media, "speakers", speakers))
        turns = [Turn("turn-1", unit(256), "S1", 0.0, 2.2), Turn("turn-2", unit(256), "S2", 2.2, 5.1)]
        await store_turns(resources, uuid.UUID(shared.case), uuid.UUID(media), turns)
        await cluster_media(
            resources, case_id=uuid.UUID(shared.case), media_id=uuid.UUID(media), analyzer="speakers", kind="voice"
        )

    with_resources(settings, work)
    query = """query($id: ID!) { media(id: $id) { transcript { language diarized segments {
        index startS endS text speaker voiceId voiceName line words { word startS } } } } }"""
    transcript = people.guest.data(query, {"id": media})["media"]["transcript"]
    first, second, third = transcript["segments"]
    assert transcript["language"] == "en" and transcript["diarized"]
    assert (first["speaker"], second["speaker"], third["speaker"]) == ("S1", "S2", None)
    assert first["voiceId"] and first["voiceId"] != second["voiceId"] and third["voiceId"] is None
    people.owner.data(
        'mutation($c: ID!) { renameCluster(clusterId: $c, label: "Alice") { id } }', {"c": first["voiceId"]}
    )
    first = people.guest.data(query, {"id": media})["media"]["transcript"]["segments"][0]
    assert first["line"] == "[00:00:00.2-00:00:02.0] S1 / Alice: Meet me at the harbour."
    assert first["words"] == [{"word": " Meet", "startS": 0.2}]
    empty = people.viewer.data(
        "query($id: ID!) { media(id: $id) { transcript { language } ocr { lines { text } } } }", {"id": shared.media}
    )
    assert empty["media"] == {"transcript": None, "ocr": None}


def test_faces_with_their_persons_and_crops(people: People, shared: Shared, settings: Settings) -> None:
    media = people.owner.upload(shared.case, make_jpeg(width=63), filename="crowd.jpg")["data"]["uploadMedia"]["id"]
    crop = make_jpeg(width=20, height=20)
    key = f"cases/{shared.case}/media/{media}/results/faces/face-0-0.jpg"
    faces = {
        "faces": [
            {
                "key": "face-0-0",
                "keyframe": 0,
                "timestamp_s": 0.0,
                "box": [1, 2, 30, 40],
                "det_score": 0.97,
                "crop": "face-0-0.jpg",
                "has_embedding": True,
                "landmarks": [[5, 6], [7, 8], [9, 10], [11, 12], [13, 14]],
            },
            {
                "key": "face-0-1",
                "keyframe": 0,
                "timestamp_s": 0.0,
                "box": [40, 2, 60, 40],
                "det_score": 0.91,
                "crop": "face-0-1.jpg",
                "has_embedding": False,
            },
        ]
    }
    listed = [
        {
            "name": "face-0-0.jpg",
            "key": key,
            "content_type": "image/jpeg",
            "size_bytes": len(crop),
            "sha256": hashlib.sha256(crop).hexdigest(),
        }
    ]

    async def work(resources: Resources) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield crop

        await resources.store.put_stream(key, body(), content_type="image/jpeg", max_bytes=len(crop))
        await resources.results.insert_one(_result_document(shared.case, media, "faces", faces, listed))
        await store_faces(resources, uuid.UUID(shared.case), uuid.UUID(media), [Face("face-0-0", unit())])
        await cluster_media(
            resources, case_id=uuid.UUID(shared.case), media_id=uuid.UUID(media), analyzer="faces", kind="face"
        )

    with_resources(settings, work)
    query = """query($id: ID!) { media(id: $id) { faces { key box landmarks detScore cropUrl memberId personId
        personName assignedBy } } }"""
    first, second = people.viewer.data(query, {"id": media})["media"]["faces"]
    assert first["key"] == "face-0-0" and first["personName"].startswith("Person ") and first["assignedBy"] == "AUTO"
    assert httpx.get(first["cropUrl"]).content == crop
    assert second["cropUrl"] is None and second["personId"] is None  # no crop listed, no embedding
    persons = people.viewer.data(PERSONS, {"id": shared.case})["case"]["persons"]
    (member,) = [m for p in persons if p["id"] == first["personId"] for m in p["members"]]
    assert httpx.get(member["cropUrl"]).content == crop


def test_text_on_screen(people: People, shared: Shared, settings: Settings) -> None:
    media = people.owner.upload(shared.case, make_jpeg(width=65), filename="sign.jpg")["data"]["uploadMedia"]["id"]
    box = [[1.0, 2.0], [50.0, 2.0], [50.0, 12.0], [1.0, 12.0]]
    ocr = {
        "frames": [
            {
                "index": 0,
                "timestamp_s": 3.0,
                "width": 64,
                "height": 48,
                "text": "HARBOUR",
                "lines": [{"key": "line-0-0", "text": "HARBOUR", "box": box, "confidence": 0.93}],
            },
            {
                "index": 1,
                "timestamp_s": 20.0,
                "width": 64,
                "height": 48,
                "text": "HARB0UR",
                "lines": [{"key": "line-1-0", "text": "HARB0UR", "box": box, "confidence": 0.71}],
            },
        ],
        "spans": [
            {
                "key": "span-1",
                "text": "HARBOUR",
                "confidence": 0.93,
                "variants": ["HARB0UR"],
                "first_s": 3.0,
                "last_s": 20.0,
                "first_frame": 0,
                "last_frame": 1,
                "frames": 2,
                "box": box,
                "line_keys": ["line-0-0", "line-1-0"],
            }
        ],
    }
    with_resources(
        settings, lambda resources: resources.results.insert_one(_result_document(shared.case, media, "ocr", ocr))
    )
    query = (
        "query($id: ID!) { media(id: $id) { ocr { lines { key keyframe timestampS text box } spans { text "
        "variants firstS lastS frames } } } }"
    )
    read = people.guest.data(query, {"id": media})["media"]["ocr"]
    assert [line["text"] for line in read["lines"]] == ["HARBOUR", "HARB0UR"]
    assert read["lines"][1]["timestampS"] == 20.0 and read["lines"][0]["box"] == box
    assert read["spans"] == [{"text": "HARBOUR", "variants": ["HARB0UR"], "firstS": 3.0, "lastS": 20.0, "frames": 2}]


class EmbedderPlugin:
    @hookimpl
    def register_embedders(self, register: RegisterEmbedder) -> None:
        register(HashingEmbedder())


@pytest.fixture(scope="module")
def searchable(settings: Settings, people: People) -> Iterator[GraphQLClient]:
    """An API whose registry has the test embedder (through the plugin hook), signed in as the shared case's viewer."""
    pm = create_plugin_manager(load_external=False)
    pm.register(EmbedderPlugin(), "test-embedder")
    registry = AnalyzerRegistry(pm)
    with TestClient(create_app(settings, analyzers=registry), headers={"origin": "http://127.0.0.1:8000"}) as http:
        client = GraphQLClient(http, people.viewer.token)
        yield client


def test_search_by_meaning(searchable: GraphQLClient, people: People, shared: Shared, settings: Settings) -> None:
    media = people.owner.upload(shared.case, make_jpeg(width=67), filename="talk.jpg")["data"]["uploadMedia"]["id"]
    texts = [
        ("whisper", "segment-0", "Meet me at the harbour at midnight", 1.0, 3.5),
        ("whisper", "segment-1", "The weather is lovely today", 4.0, 6.0),
        ("ocr", "span-1", "HARBOUR MASTER OFFICE", 0.0, 12.0),
    ]
    vectors = HashingEmbedder().embed([t[2] for t in texts])

    async def work(resources: Resources) -> None:
        rows = [
            {
                "id": hashlib.sha256(f"{media}\n{a}\n{k}".encode()).hexdigest(),
                "case_id": shared.case,
                "media_id": media,
                "task_id": str(uuid.uuid4()),
                "vector": v,
                "analyzer": a,
                "key": k,
                "text": t,
                "start_s": s,
                "end_s": e,
            }
            for (a, k, t, s, e), v in zip(texts, vectors, strict=True)
        ]
        await resources.milvus.upsert("text_embeddings", rows)

    with_resources(settings, work)
    query = """query($c: ID!, $t: String!, $a: [String!]) { searchCase(caseId: $c, text: $t, first: 2, analyzers: $a)
        { media { id filename } analyzer key text startS endS score } }"""
    hits = searchable.data(query, {"c": shared.case, "t": "harbour at midnight?"})["searchCase"]
    assert [h["key"] for h in hits] == ["segment-0", "span-1"]
    assert hits[0]["media"] == {"id": media, "filename": "talk.jpg"} and hits[0]["startS"] == 1.0
    assert 0 < hits[1]["score"] < hits[0]["score"] <= 1.0001
    only_ocr = searchable.data(query, {"c": shared.case, "t": "harbour", "a": ["ocr"]})["searchCase"]
    assert [h["key"] for h in only_ocr] == ["span-1"]
    stranger = GraphQLClient(searchable.http, people.other.token)
    assert error_code(stranger.execute(query, {"c": shared.private_case, "t": "harbour"})) == "NOT_FOUND"


def test_search_needs_an_embedder(people: People, shared: Shared) -> None:
    body = people.viewer.execute(
        'query($c: ID!) { searchCase(caseId: $c, text: "harbour") { key } }', {"c": shared.case}
    )
    assert error_code(body) == "SEARCH_UNAVAILABLE"
    assert "text embedder" in body["errors"][0]["message"]
