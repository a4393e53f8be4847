"""Case tasks with a real worker: a case analyzer runs once every other task of its job ended (whatever the outcome),
gets the case's results, evidence and what is missing, and its dossier is stored as the case's next version once
every citation resolves; follow-ups join the job and the case task waits for them; a task on a model endpoint that
stays down gives up at the deadline so that the dossier can be made without it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from aima.db.models import DossierVersion, JobState, TaskState
from aima.dossier import Dossier
from aima.resources import Resources, open_resources
from aima.services import jobs, task_runs
from aima.settings import Settings
from aima.testing.analyzers import DIGEST_ENV
from aima.workers.worker import WakeableWorker
from tests.conftest import Servers, worker_thread
from tests.workers.jobs import (
    ModelEndpoint,
    SampleCase,
    analyze,
    endpoint_worker,
    eventually,
    job_ends,
    job_events,
    job_settings,
    job_tasks,
    new_case,
    registry_with_test_analyzers,
)


@pytest.fixture(scope="module")
def settings(servers: Servers) -> Settings:
    return job_settings(servers, retry_base_s=0.1, retry_cap_s=0.2, max_tries=50, model_wait_deadline_s=1.0)


@pytest.fixture(scope="module")
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as opened:
        yield opened


@pytest.fixture(scope="module")
def cpu_worker(settings: Settings) -> Iterator[WakeableWorker]:
    with worker_thread(settings, analyzers=registry_with_test_analyzers(), cron_jobs=[]) as worker:
        yield worker


async def dossiers_of(resources: Resources, case: SampleCase) -> list[DossierVersion]:
    async with resources.sessions() as session:
        query = select(DossierVersion).where(DossierVersion.case_id == case.case_id).order_by(DossierVersion.version)
        return list((await session.execute(query)).scalars())


def by_analyzer(tasks: list[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for task in tasks:
        found.setdefault(task.analyzer, []).append(task)
    return found


async def test_the_case_task_waits_for_every_task_runs_after_a_failure_and_stores_versions(
    resources: Resources, cpu_worker: WakeableWorker
) -> None:
    case = await new_case(resources, media=2)
    job_id = await analyze(resources, case, ["notes", "broken", "digest"])
    assert await job_ends(resources, job_id, 30) is JobState.FAILED  # broken failed; the dossier was made anyway
    tasks = by_analyzer(await job_tasks(resources, job_id))
    [digest] = tasks["digest"]
    others = [t for t in (*tasks["notes"], *tasks["broken"])]
    assert digest.media_id is None and digest.state is TaskState.SUCCEEDED
    assert set(digest.depends_on) == {t.id for t in others}
    assert digest.started_at is not None
    assert all(t.finished_at is not None and t.finished_at <= digest.started_at for t in others)
    assert {t.state for t in tasks["broken"]} == {TaskState.FAILED}

    [stored] = await dossiers_of(resources, case)
    assert (stored.version, stored.job_id, stored.task_id) == (1, job_id, digest.id)
    assert (stored.analyzer, stored.model, stored.created_by) == ("digest", "digest-test", case.actor.user_id)
    dossier = Dossier.model_validate(stored.content)
    cited = {(c.media_id, c.analyzer, c.key, c.start_s, c.end_s) for c in dossier.citations()}
    media = [str(m) for m in case.media_ids]
    assert cited == {(m, "notes", f"note-{n}", 2.0 * n, 2.0 * n + 2) for m in media for n in range(2)}
    missing = {(m.modality, m.media_id, m.reason) for m in dossier.missing}
    assert missing == {("broken", m, "TEST_BROKEN: This analyzer always fails.") for m in media}

    events = [e for e in await job_events(resources, job_id) if e.analyzer == "digest"]
    assert events[0].task_state == TaskState.RUNNING and events[-1].task_state == TaskState.SUCCEEDED
    assert {e.case_id for e in events} == {str(case.case_id)}

    again = await analyze(resources, case, ["digest"])  # a case task alone: it starts at once
    assert await job_ends(resources, again, 15) is JobState.SUCCEEDED
    first, second = await dossiers_of(resources, case)
    assert (first.version, second.version) == (1, 2) and first.content == stored.content
    latest = Dossier.model_validate(second.content)
    assert latest.summary.startswith("Version 2 ") and len(latest.findings) == 4 and latest.missing == []


async def test_a_dossier_whose_citations_do_not_resolve_is_refused(
    resources: Resources, cpu_worker: WakeableWorker
) -> None:
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["notes", "liar"])
    assert await job_ends(resources, job_id, 30) is JobState.FAILED
    [liar] = by_analyzer(await job_tasks(resources, job_id))["liar"]
    assert liar.error_code == "INVALID_CITATIONS" and liar.attempts == 1
    assert liar.error_message == (
        f"Citation 1 (media {case.media_ids[0]}, notes note-99) does not resolve: the notes result has no item "
        "'note-99'."
    )
    assert await dossiers_of(resources, case) == []


async def test_follow_ups_join_the_job_and_the_case_task_waits_for_them(
    resources: Resources, cpu_worker: WakeableWorker
) -> None:
    case = await new_case(resources, media=2)
    noted = await jobs.analyze_media(
        resources=resources, actor=case.actor, media_id=case.media_ids[0], analyzers=["notes"]
    )
    assert await job_ends(resources, noted.id, 15) is JobState.SUCCEEDED
    job_id = await analyze(resources, case, ["spotter", "digest"])
    assert await job_ends(resources, job_id, 30) is JobState.SUCCEEDED
    tasks = by_analyzer(await job_tasks(resources, job_id))
    # The first media item has notes already: only the second gets a follow-up.
    [follow_up] = tasks["notes"]
    assert follow_up.media_id == case.media_ids[1] and follow_up.state is TaskState.SUCCEEDED
    [digest] = tasks["digest"]
    assert follow_up.id in digest.depends_on
    assert follow_up.finished_at is not None and digest.started_at is not None
    assert follow_up.finished_at <= digest.started_at
    [stored] = await dossiers_of(resources, case)
    cited = {(c.media_id, c.key) for c in Dossier.model_validate(stored.content).citations()}
    assert cited == {(str(m), f"note-{n}") for m in case.media_ids for n in range(2)}
    queued = [e.message for e in await job_events(resources, job_id) if e.task_state == TaskState.QUEUED]
    assert queued == ["notes queued: spotter asked for it"]


async def test_a_model_endpoint_that_stays_down_gives_up_at_the_deadline(
    settings: Settings, resources: Resources, cpu_worker: WakeableWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = ModelEndpoint(lambda: True)  # 503 for ever
    case = await new_case(resources)
    with endpoint.serving(), endpoint_worker(settings, endpoint.url, monkeypatch):
        job_id = await analyze(resources, case, ["remote-model", "digest"])
        assert await job_ends(resources, job_id, 30) is JobState.FAILED
    tasks = by_analyzer(await job_tasks(resources, job_id))
    [remote] = tasks["remote-model"]
    assert remote.error_code == "MODEL_UNAVAILABLE" and 1 < remote.attempts < 50
    assert remote.error_message is not None
    assert remote.error_message.startswith("test-endpoint answered 503 (gave up after ")
    assert remote.error_message.endswith(" s)")
    assert remote.first_started_at is not None and remote.finished_at is not None
    assert 1.0 <= (remote.finished_at - remote.first_started_at).total_seconds() < 3.0
    [stored] = await dossiers_of(resources, case)
    [missing] = Dossier.model_validate(stored.content).missing
    assert missing.modality == "remote-model" and missing.reason.startswith("MODEL_UNAVAILABLE: test-endpoint")


async def test_retrying_after_the_endpoint_is_back_runs_the_case_task_again_for_a_new_version(
    settings: Settings, resources: Resources, cpu_worker: WakeableWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = True
    endpoint = ModelEndpoint(lambda: down)
    case = await new_case(resources)
    with endpoint.serving(), endpoint_worker(settings, endpoint.url, monkeypatch):
        job_id = await analyze(resources, case, ["remote-model", "digest"])
        assert await job_ends(resources, job_id, 30) is JobState.FAILED
        [first] = await dossiers_of(resources, case)
        assert [m.modality for m in Dossier.model_validate(first.content).missing] == ["remote-model"]

        down = False
        tasks = by_analyzer(await job_tasks(resources, job_id))
        retried = await task_runs.retry_failed(resources=resources, job_id=job_id)
        assert set(retried) == {tasks["remote-model"][0].id, tasks["digest"][0].id}
        assert await job_ends(resources, job_id, 30) is JobState.SUCCEEDED

    again = by_analyzer(await job_tasks(resources, job_id))
    [remote], [digest] = again["remote-model"], again["digest"]
    assert remote.state is digest.state is TaskState.SUCCEEDED
    assert remote.finished_at is not None and digest.started_at is not None and remote.finished_at <= digest.started_at
    earlier, latest = await dossiers_of(resources, case)
    assert (earlier.version, latest.version) == (1, 2) and earlier.content == first.content
    assert latest.task_id == digest.id and Dossier.model_validate(latest.content).missing == []


async def test_a_case_task_stops_with_its_job_and_leaves_no_version(
    resources: Resources, cpu_worker: WakeableWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DIGEST_ENV, "5")
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["notes", "digest"])

    async def digesting() -> bool:
        return any(t.analyzer == "digest" and t.state is TaskState.RUNNING for t in await job_tasks(resources, job_id))

    await eventually(digesting, 15, "the case task runs")
    await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert await job_ends(resources, job_id, 10) is JobState.CANCELLED
    [digest] = by_analyzer(await job_tasks(resources, job_id))["digest"]
    assert digest.state is TaskState.CANCELLED and digest.error_code == "JOB_CANCELLED"
    assert await dossiers_of(resources, case) == []


async def test_retrying_a_failed_case_task_runs_it_again(resources: Resources, cpu_worker: WakeableWorker) -> None:
    case = await new_case(resources)
    job_id = await analyze(resources, case, ["notes", "liar"])
    assert await job_ends(resources, job_id, 30) is JobState.FAILED
    assert await task_runs.retry_failed(resources=resources, job_id=job_id) == [
        t.id for t in await job_tasks(resources, job_id) if t.analyzer == "liar"
    ]
    assert await job_ends(resources, job_id, 30) is JobState.FAILED
    [liar] = by_analyzer(await job_tasks(resources, job_id))["liar"]
    assert (liar.error_code, liar.attempts) == ("INVALID_CITATIONS", 1)
