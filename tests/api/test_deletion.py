"""deleteMedia and deleteCase: who may, what each store holds afterwards (nothing), what the audit trail says."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from aima.cli import create_account
from aima.db.models import Role, Upload
from aima.resources import Resources
from aima.services import deletion
from aima.settings import Settings
from aima.storage import original_key
from aima.testing.media import make_jpeg
from aima.workers.worker import WakeableWorker
from tests.api.conftest import People
from tests.api.test_flow import ANALYZE, JOB_EVENTS, new_case
from tests.gql import PASSWORD, GraphQLClient, login, run_sync
from tests.leftovers import add_derived_file, add_vectors, audit_entries, nothing, stored

DELETE_MEDIA = "mutation($id: ID!) { deleteMedia(id: $id) }"
DELETE_CASE = "mutation($id: ID!) { deleteCase(id: $id) }"
SHARE = "mutation($c: ID!, $e: String!, $r: CaseRole!) { shareCase(caseId: $c, email: $e, role: $r) { role } }"
MEDIA = "query($id: ID!) { media(id: $id) { id } }"


def error_code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if errors else None


def upload(client: GraphQLClient, case_id: str, width: int = 64) -> dict[str, Any]:
    body = client.upload(case_id, make_jpeg(width=width), filename=f"w{width}.jpg", content_type="image/jpeg")
    assert not body.get("errors"), body
    media: dict[str, Any] = body["data"]["uploadMedia"]
    return media


def analysed(client: GraphQLClient, case_id: str, width: int) -> dict[str, Any]:
    """An uploaded image with the result of a real analysis by the session's worker."""
    media = upload(client, case_id, width)
    job = client.data(ANALYZE, {"m": media["id"], "a": ["media-probe"]})["analyzeMedia"]
    events = list(client.subscribe(JOB_EVENTS, {"jobId": job["id"]}))
    assert events[-1]["data"]["jobEvents"]["jobState"] == "SUCCEEDED", events
    return media


async def open_resumable_upload(resources: Resources, client: GraphQLClient, case_id: str) -> uuid.UUID:
    """An unfinished resumable upload: its row, and an S3 multipart upload holding one part."""
    user_id = uuid.UUID(client.data("{ me { id } }")["me"]["id"])
    media_id = uuid.uuid4()
    key = original_key(uuid.UUID(case_id), media_id)
    s3 = resources.store._s3
    started = await s3.create_multipart_upload(Bucket=resources.store.bucket, Key=key, ContentType="image/jpeg")
    part = b"\0" * (5 * 1024 * 1024)
    await s3.upload_part(Bucket=resources.store.bucket, Key=key, UploadId=started["UploadId"], PartNumber=1, Body=part)
    async with resources.sessions() as session:
        session.add(
            Upload(
                case_id=uuid.UUID(case_id),
                user_id=user_id,
                media_id=media_id,
                storage_key=key,
                s3_upload_id=started["UploadId"],
                filename="big.mp4",
                size_bytes=3 * len(part),
                part_size=len(part),
                state="open",
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        await session.commit()
    return media_id


async def test_deleting_media_leaves_nothing_of_it_in_any_store(
    people: People, worker: WakeableWorker, resources: Resources
) -> None:
    owner = people.owner
    case_id = new_case(owner, "Delete one")
    doomed, kept = analysed(owner, case_id, 80), analysed(owner, case_id, 81)
    for media in (doomed, kept):
        await add_vectors(resources, case_id=case_id, media_id=media["id"])
        await add_derived_file(resources, media_id=media["id"])
    before = await stored(resources, case_id=case_id, media_ids=[doomed["id"]])
    assert before["media"] == 1 and before["vectors"] == 3
    assert min(before["jobs"], before["tasks"], before["results"], before["artifacts"]) >= 1
    assert before["objects"] >= 2  # the original and the derived files
    kept_before = await stored(resources, case_id=case_id, media_ids=[kept["id"]])
    # SeaweedFS has object lock: the original is under a legal hold that only this deletion may lift.
    assert await resources.store.legal_hold(original_key(uuid.UUID(case_id), uuid.UUID(doomed["id"])))

    assert owner.data(DELETE_MEDIA, {"id": doomed["id"]}) == {"deleteMedia": True}

    assert await stored(resources, case_id=case_id, media_ids=[doomed["id"]]) == dict.fromkeys(before, 0)
    assert await stored(resources, case_id=case_id, media_ids=[kept["id"]]) == kept_before
    assert error_code(owner.execute(MEDIA, {"id": doomed["id"]})) == "NOT_FOUND"
    assert error_code(owner.execute(DELETE_MEDIA, {"id": doomed["id"]})) == "NOT_FOUND"  # once only

    [entry] = await audit_entries(resources, "media.delete", doomed["id"])
    assert (entry.actor_email, entry.target_type, entry.client_address) == (
        people.emails["owner"],
        "media",
        "testclient",
    )
    assert entry.details["sha256"] == doomed["sha256"]
    assert entry.details["size_bytes"] == doomed["sizeBytes"]
    assert entry.details["case_id"] == case_id
    removed = entry.details["removed"]
    assert isinstance(removed, dict)
    assert removed == {key: before[key] for key in removed}


async def test_deleting_a_case_leaves_nothing_of_it_in_any_store(
    people: People, worker: WakeableWorker, resources: Resources
) -> None:
    owner = people.owner
    case_id = new_case(owner, "Delete all")
    media = [analysed(owner, case_id, 90), analysed(owner, case_id, 91)]
    for item in media:
        await add_vectors(resources, case_id=case_id, media_id=item["id"])
        await add_derived_file(resources, media_id=item["id"])
    pending = await open_resumable_upload(resources, owner, case_id)
    owner.data(SHARE, {"c": case_id, "e": people.emails["viewer"], "r": "VIEWER"})
    before = await stored(resources, case_id=case_id, media_ids=[])
    assert before["cases"] == before["case_members"] == before["uploads"] == before["multipart_uploads"] == 1
    assert before["media"] == 2 and before["vectors"] == 6 and before["objects"] >= 4
    assert min(before["jobs"], before["tasks"], before["results"], before["artifacts"]) >= 2

    assert owner.data(DELETE_CASE, {"id": case_id}) == {"deleteCase": True}

    left = await stored(resources, case_id=case_id, media_ids=[])
    assert left == dict.fromkeys(before, 0)
    assert nothing(await stored(resources, case_id=case_id, media_ids=[m["id"] for m in media] + [pending]))
    assert error_code(owner.execute("query($id: ID!) { case(id: $id) { id } }", {"id": case_id})) == "NOT_FOUND"
    assert case_id not in {c["id"] for c in people.viewer.data("{ cases { id } }")["cases"]}

    [entry] = await audit_entries(resources, "case.delete", case_id)
    assert entry.actor_email == people.emails["owner"]
    assert entry.details["title"] == "Delete all"
    removed = entry.details["removed"]
    assert isinstance(removed, dict)
    assert removed == {key: before[key] for key in removed}
    for item in media:
        [media_entry] = await audit_entries(resources, "media.delete", item["id"])
        assert media_entry.details["sha256"] == item["sha256"]
        assert media_entry.details["case_id"] == case_id
        assert media_entry.details["with_case"] is True
        assert media_entry.id < entry.id  # in the same transaction, the case's entry last


@pytest.fixture(scope="module")
def editor(http: TestClient, settings: Settings) -> tuple[GraphQLClient, str]:
    email = f"editor-{uuid.uuid4().hex[:6]}@example.org"
    run_sync(create_account(settings, email, PASSWORD, Role.USER))
    return login(http, email), email


# What each person gets for a delete on a case of `people.owner` shared with `editor` as editor and with `viewer`
# and `guest` as viewers: None when the deletion goes through.
EXPECTED = {"owner": None, "admin": None, "editor": "FORBIDDEN", "viewer": "FORBIDDEN", "guest": "FORBIDDEN"}
EXPECTED["other"] = "NOT_FOUND"  # may not see the case: exactly as if it did not exist


@pytest.mark.parametrize("what", ["media", "case"])
@pytest.mark.parametrize("person", sorted(EXPECTED))
async def test_only_the_owner_and_administrators_may_delete(
    people: People, editor: tuple[GraphQLClient, str], resources: Resources, person: str, what: str
) -> None:
    owner = people.owner
    case_id = new_case(owner, "Who deletes")
    media = upload(owner, case_id)
    for email, role in ((editor[1], "EDITOR"), (people.emails["viewer"], "VIEWER"), (people.emails["guest"], "VIEWER")):
        owner.data(SHARE, {"c": case_id, "e": email, "r": role})
    client = editor[0] if person == "editor" else getattr(people, person)
    query, target = (DELETE_MEDIA, media["id"]) if what == "media" else (DELETE_CASE, case_id)

    body = client.execute(query, {"id": target})

    left = await stored(resources, case_id=case_id, media_ids=[media["id"]])
    if EXPECTED[person] is None:
        assert body == {"data": {f"delete{what.title()}": True}}
        assert nothing(left)
        [entry] = await audit_entries(resources, f"{what}.delete", target)
        assert entry.actor_email == (editor[1] if person == "editor" else people.emails[person])
    else:
        assert error_code(body) == EXPECTED[person], body
        assert body["data"] is None
        assert left["media"] == left["objects"] == 1
        assert owner.data(MEDIA, {"id": media["id"]})["media"]["id"] == media["id"]
        assert await audit_entries(resources, f"{what}.delete", target) == []


@pytest.mark.parametrize("query", [DELETE_MEDIA, DELETE_CASE])
def test_missing_and_malformed_ids(people: People, query: str) -> None:
    assert error_code(people.admin.execute(query, {"id": str(uuid.uuid4())})) == "NOT_FOUND"
    assert error_code(people.owner.execute(query, {"id": "not-an-id"})) == "BAD_USER_INPUT"


async def test_a_store_that_is_down_refuses_the_deletion_before_anything_is_deleted(
    people: People, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = people.owner
    case_id = new_case(owner, "Milvus down")
    media = upload(owner, case_id)
    await add_vectors(resources, case_id=case_id, media_id=media["id"])
    before = await stored(resources, case_id=case_id, media_ids=[media["id"]])

    async def down(*args: object) -> int:
        raise ConnectionError("milvus is down")

    monkeypatch.setattr(deletion, "_count_vectors", down)
    for query, target in ((DELETE_MEDIA, media["id"]), (DELETE_CASE, case_id)):
        assert error_code(owner.execute(query, {"id": target})) == "BACKEND_UNAVAILABLE"
    monkeypatch.undo()
    assert await stored(resources, case_id=case_id, media_ids=[media["id"]]) == before
    assert await audit_entries(resources, "media.delete", media["id"]) == []


@pytest.mark.parametrize(("what", "failing"), [("media", "_delete_vectors"), ("case", "_delete_documents")])
async def test_a_store_failing_after_the_rows_are_gone_is_cleaned_by_the_orphan_sweep(
    people: People,
    worker: WakeableWorker,
    resources: Resources,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    failing: str,
) -> None:
    owner = people.owner
    case_id = new_case(owner, f"{failing} fails")
    media = analysed(owner, case_id, 70)
    await add_vectors(resources, case_id=case_id, media_id=media["id"])
    await add_derived_file(resources, media_id=media["id"])
    before = await stored(resources, case_id=case_id, media_ids=[media["id"]])

    async def broken(*args: object) -> int:
        raise ConnectionError("store went away")

    monkeypatch.setattr(deletion, failing, broken)
    query, target = (DELETE_MEDIA, media["id"]) if what == "media" else (DELETE_CASE, case_id)
    assert owner.data(query, {"id": target}) == {f"delete{what.title()}": True}  # the rows are gone: it is deleted
    monkeypatch.undo()

    left = await stored(resources, case_id=case_id, media_ids=[media["id"]])
    assert left["media"] == left["jobs"] == left["tasks"] == left["artifacts"] == 0
    assert left["objects"] == before["objects"]  # kept on purpose: the prefix marks the unfinished deletion
    assert left["vectors" if failing == "_delete_vectors" else "results"] > 0
    assert len(await audit_entries(resources, "media.delete", media["id"])) == 1

    prefix = f"cases/{case_id}/"
    assert await deletion.sweep_orphans(resources, prefix=prefix) == []  # too fresh: could be an upload in flight
    later = datetime.now(UTC) + deletion.ORPHAN_GRACE + timedelta(minutes=1)
    expected = deletion.Scope(uuid.UUID(case_id), uuid.UUID(media["id"]) if what == "media" else None)
    assert await deletion.sweep_orphans(resources, prefix=prefix, now=later) == [expected]
    assert nothing(await stored(resources, case_id=case_id, media_ids=[media["id"]]))
    if what == "case":
        assert nothing(await stored(resources, case_id=case_id, media_ids=[]))


async def test_the_orphan_sweep_spares_uploads_in_flight(people: People, resources: Resources) -> None:
    owner = people.owner
    case_id = new_case(owner, "Sweep")
    kept = upload(owner, case_id)
    resumable = await open_resumable_upload(resources, owner, case_id)
    orphan = uuid.uuid4()  # an object whose row was never written (or is about to be)

    async def body() -> Any:
        yield b"orphaned bytes"

    key = original_key(uuid.UUID(case_id), orphan)
    await resources.store.put_stream(key, body(), content_type="image/jpeg", max_bytes=100)
    prefix = f"cases/{case_id}/"

    assert await deletion.sweep_orphans(resources, prefix=prefix) == []
    later = datetime.now(UTC) + deletion.ORPHAN_GRACE + timedelta(minutes=1)
    assert await deletion.sweep_orphans(resources, prefix=prefix, now=later) == [
        deletion.Scope(uuid.UUID(case_id), orphan)
    ]
    assert set(await resources.store.all_versions(prefix)) == {original_key(uuid.UUID(case_id), uuid.UUID(kept["id"]))}
    assert len(await resources.store.pending_multipart_uploads(prefix)) == 1  # its Upload row still names it
    assert (await stored(resources, case_id=case_id, media_ids=[resumable]))["uploads"] == 1
