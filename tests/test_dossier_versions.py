"""Dossier versions: each case task stores the case's next version, a task stored twice (a redelivered run) keeps
its one version, concurrent writers of one case never share a number, and a cancelled run's version goes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from aima.db.models import DossierVersion
from aima.errors import NotFound
from aima.resources import Resources, open_resources
from aima.services import dossiers, jobs
from tests.conftest import Servers
from tests.workers.jobs import SampleCase, job_settings, job_tasks, new_case, registry_with_test_analyzers


@pytest.fixture(scope="module")
async def resources(servers: Servers) -> AsyncIterator[Resources]:
    # Its own queue and no worker: the case tasks planned here stay queued.
    async with open_resources(job_settings(servers), analyzers=registry_with_test_analyzers()) as opened:
        yield opened


async def case_task(resources: Resources, case: SampleCase) -> tuple[uuid.UUID, uuid.UUID]:
    job = await jobs.analyze_case(resources=resources, actor=case.actor, case_id=case.case_id, analyzers=["digest"])
    [task] = await job_tasks(resources, job.id)
    return job.id, task.id


async def store(resources: Resources, case: SampleCase, job_task: tuple[uuid.UUID, uuid.UUID], summary: str) -> int:
    job_id, task_id = job_task
    stored = await dossiers.store_version(
        resources,
        case_id=case.case_id,
        job_id=job_id,
        task_id=task_id,
        analyzer="digest",
        analyzer_version="1.0",
        content={"summary": summary, "model": "m"},
    )
    return stored.version


async def versions(resources: Resources, case: SampleCase) -> list[tuple[int, str]]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(DossierVersion.version, DossierVersion.content["summary"].astext)
            .where(DossierVersion.case_id == case.case_id)
            .order_by(DossierVersion.version)
        )
        return [(row[0], row[1]) for row in rows]


async def test_a_task_keeps_its_version_and_the_next_task_gets_the_next(resources: Resources) -> None:
    case = await new_case(resources)
    first, second = await case_task(resources, case), await case_task(resources, case)
    assert await dossiers.next_version(resources, case_id=case.case_id, task_id=first[1]) == 1
    assert await store(resources, case, first, "first run") == 1
    assert await store(resources, case, first, "redelivered run") == 1
    assert await dossiers.next_version(resources, case_id=case.case_id, task_id=first[1]) == 1
    assert await dossiers.next_version(resources, case_id=case.case_id, task_id=second[1]) == 2
    assert await store(resources, case, second, "second task") == 2
    assert await versions(resources, case) == [(1, "redelivered run"), (2, "second task")]

    assert await dossiers.discard_version(resources, second[1]) is True
    assert await dossiers.discard_version(resources, second[1]) is False
    assert await versions(resources, case) == [(1, "redelivered run")]


async def test_concurrent_writers_of_one_case_take_turns(resources: Resources) -> None:
    case = await new_case(resources)
    tasks = [await case_task(resources, case) for _ in range(6)]
    numbers = await asyncio.gather(*(store(resources, case, t, f"task {n}") for n, t in enumerate(tasks)))
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]


async def test_a_dossier_for_a_vanished_task_is_not_stored(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, _ = await case_task(resources, case)
    with pytest.raises(NotFound):
        await store(resources, case, (job_id, uuid.uuid4()), "nobody's")
    assert await versions(resources, case) == []
