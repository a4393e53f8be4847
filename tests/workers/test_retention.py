"""The retention sweep: media older than `retention_days` go from every store, newer ones stay; audited as system."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from aima.db.models import Case, Job, Media, Role, Task, User
from aima.errors import InvalidInput
from aima.resources import Resources
from aima.services import deletion
from aima.services.results import upsert_result
from aima.services.runtime_settings import RUNTIME_KEYS, merge, parse_value
from aima.settings import Settings
from aima.testing.media import make_jpeg
from aima.workers.settings import orphan_sweep, retention_sweep, upload_sweep, worker_settings
from tests.factories import stored_original
from tests.leftovers import add_derived_file, add_vectors, audit_entries, nothing, stored


async def new_case(resources: Resources) -> Case:
    user = User(id=uuid.uuid4(), email=f"r-{uuid.uuid4().hex[:8]}@example.org", password_hash="x", role=Role.USER)
    case = Case(id=uuid.uuid4(), title="retention", owner_id=user.id)
    async with resources.sessions() as session:
        for row in (user, case):
            session.add(row)
            await session.flush()
        await session.commit()
    return case


async def new_media(resources: Resources, case: Case, *, age_days: float) -> Media:
    """A media item uploaded `age_days` ago, with a finished analysis, a result, vectors and a derived file."""
    image = make_jpeg(width=40 + int(age_days) % 50)
    media = await stored_original(resources, image, case_id=case.id, uploaded_by=case.owner_id, filename="old.jpg")
    media_id = media.id
    job = Job(id=uuid.uuid4(), case_id=case.id, media_id=media_id, created_by=case.owner_id)
    task = Task(id=uuid.uuid4(), job_id=job.id, media_id=media_id, analyzer="media-probe", analyzer_version="1.0.0")
    async with resources.sessions() as session:
        for row in (media, job, task):
            session.add(row)
            await session.flush()
        created = datetime.now(UTC) - timedelta(days=age_days)
        await session.execute(update(Media).where(Media.id == media_id).values(created_at=created))
        await session.commit()
    await upsert_result(
        resources.results,
        media_id=media_id,
        case_id=case.id,
        analyzer="media-probe",
        analyzer_version="1.0.0",
        task_id=task.id,
        payload={"kind": "image"},
    )
    await add_vectors(resources, case_id=case.id, media_id=media_id)
    await add_derived_file(resources, media_id=media_id)
    return media


def keeping(resources: Resources, days: int) -> Resources:
    """The resources as a worker has them after an administrator set `retention_days` at runtime."""
    return dataclasses.replace(resources, settings=merge(resources.settings, {"retention_days": days}))


async def test_old_media_go_from_every_store_and_recent_ones_stay(resources: Resources) -> None:
    case = await new_case(resources)
    old = [await new_media(resources, case, age_days=days) for days in (45, 31)]
    recent = [await new_media(resources, case, age_days=days) for days in (29, 0)]
    recent_before = await stored(resources, case_id=case.id, media_ids=[m.id for m in recent])
    assert not nothing(await stored(resources, case_id=case.id, media_ids=[m.id for m in old]))

    assert await retention_sweep({"resources": keeping(resources, 30)}) == "deleted 2"

    assert nothing(await stored(resources, case_id=case.id, media_ids=[m.id for m in old]))
    assert await stored(resources, case_id=case.id, media_ids=[m.id for m in recent]) == recent_before
    for media in old:
        [entry] = await audit_entries(resources, "media.delete", media.id)
        assert entry.actor_id is None
        assert entry.actor_email == deletion.RETENTION_ACTOR
        assert entry.details["sha256"] == media.sha256
        assert entry.details["reason"] == "retention"
        assert entry.details["retention_days"] == 30
        assert entry.details["removed"] == {
            "media": 1,
            "jobs": 1,
            "tasks": 1,
            "artifacts": 1,
            "uploads": 0,
            "results": 1,
            "vectors": 3,
            "objects": 2,
            "multipart_uploads": 0,
        }
    assert await retention_sweep({"resources": keeping(resources, 30)}) == "deleted 0"


async def test_retention_is_off_by_default(resources: Resources) -> None:
    assert Settings.model_fields["retention_days"].default == 0
    case = await new_case(resources)
    ancient = await new_media(resources, case, age_days=3650)
    assert await retention_sweep({"resources": keeping(resources, 0)}) == "off"
    assert (await stored(resources, case_id=case.id, media_ids=[ancient.id]))["media"] == 1
    await deletion.apply_retention(keeping(resources, 3000))  # leave no decade-old media for other tests


async def test_each_run_deletes_a_bounded_batch_oldest_first(resources: Resources) -> None:
    case = await new_case(resources)
    media = [await new_media(resources, case, age_days=days) for days in (400, 500, 600)]
    report = await deletion.apply_retention(keeping(resources, 300), limit=2)
    assert (report.deleted, report.stopped) == (2, False)
    left = {m.id for m in media if (await stored(resources, case_id=case.id, media_ids=[m.id]))["media"]}
    assert left == {media[0].id}  # the newest of the three waits for the next run
    assert (await deletion.apply_retention(keeping(resources, 300), limit=2)).deleted == 1


async def test_a_store_that_is_down_stops_the_run_with_nothing_deleted(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = await new_case(resources)
    old = await new_media(resources, case, age_days=800)

    async def down(*args: object) -> int:
        raise ConnectionError("mongodb is down")

    monkeypatch.setattr(deletion, "_count_documents", down)
    report = await deletion.apply_retention(keeping(resources, 700))
    assert (report.deleted, report.stopped) == (0, True)
    monkeypatch.undo()
    assert (await stored(resources, case_id=case.id, media_ids=[old.id]))["media"] == 1
    assert (await deletion.apply_retention(keeping(resources, 700))).deleted == 1


def test_retention_days_is_a_runtime_setting() -> None:
    assert "retention_days" in RUNTIME_KEYS
    assert parse_value("retention_days", 90) == 90
    assert parse_value("retention_days", 0) == 0  # off
    for bad in (None, -1, "90", 1.5):
        with pytest.raises(InvalidInput):
            parse_value("retention_days", bad)


def test_the_worker_schedules_the_sweeps(settings: Settings) -> None:
    jobs = {job.name: job for job in worker_settings(settings)["cron_jobs"]}
    assert jobs["retention_sweep"].coroutine is retention_sweep
    assert jobs["orphan_sweep"].coroutine is orphan_sweep
    assert jobs["upload_sweep"].coroutine is upload_sweep
    assert all(job.unique for job in jobs.values())  # one run per tick across all workers


async def test_the_orphan_sweep_job_runs(resources: Resources) -> None:
    assert (await orphan_sweep({"resources": resources})).startswith("cleaned ")


async def test_the_upload_sweep_job_runs(resources: Resources) -> None:
    assert (await upload_sweep({"resources": resources})).startswith("aborted ")
