"""Races between the state changes of tasks and jobs, forced with the service functions (no worker): a cancellation
against a requeue, a wait or a claim; a retry against a cancellation that is still stopping tasks and against a case
task already handed over; deliveries of a task retried from the start; the reconciler's pass over waiting tasks. A
database of this module's own: the reconciler takes every task of its database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aima import queues
from aima.db.models import Job, JobState, Priority, Task, TaskState
from aima.errors import Conflict, ModelUnavailable
from aima.resources import Resources, open_resources
from aima.services import reconcile as reconciler
from aima.services import task_runs
from aima.services.reconcile import reconcile
from aima.services.task_runs import arq_job_id
from aima.settings import Settings
from tests.conftest import Servers
from tests.isolation import fresh_database
from tests.workers.jobs import SampleCase, job_row, job_settings, job_tasks, new_case, registry_with_test_analyzers

GRACE_S = 0.3


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def settings(servers: Servers, database_url: str) -> Settings:
    return job_settings(servers, database_url=database_url, heartbeat_timeout_s=GRACE_S)


@pytest.fixture(scope="module")
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings, analyzers=registry_with_test_analyzers()) as opened:
        yield opened


async def new_job(
    resources: Resources,
    case: SampleCase,
    names: list[str],
    *,
    media: dict[str, uuid.UUID] | None = None,
    depends_on: dict[str, list[str]] | None = None,
    resource: dict[str, str] | None = None,
    state: JobState = JobState.RUNNING,
) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    """A job of queued tasks named `names` (case tasks unless given a media item), nothing enqueued."""
    job_id = uuid.uuid4()
    ids = {name: uuid.uuid4() for name in names}
    async with resources.engine.begin() as conn:
        await conn.execute(
            insert(Job).values(
                id=job_id,
                case_id=case.case_id,
                created_by=case.actor.user_id,
                state=state,
                priority=str(Priority.NORMAL),
            )
        )
        for name in names:
            await conn.execute(
                insert(Task).values(
                    id=ids[name],
                    job_id=job_id,
                    media_id=(media or {}).get(name),
                    analyzer=name,
                    analyzer_version="1",
                    state=TaskState.QUEUED,
                    progress=0.0,
                    attempts=0,
                    depends_on=[ids[d] for d in (depends_on or {}).get(name, [])],
                    resource=(resource or {}).get(name, queues.CPU),
                )
            )
    return job_id, ids


async def states(resources: Resources, job_id: uuid.UUID) -> tuple[JobState, dict[str, TaskState]]:
    return (await job_row(resources, job_id)).state, {t.analyzer: t.state for t in await job_tasks(resources, job_id)}


async def claim(resources: Resources, task_id: uuid.UUID, generation: int | None = None) -> task_runs.TaskRun:
    run = await task_runs.start_task(resources=resources, task_id=task_id, worker="w:1", generation=generation)
    assert run is not None
    return run


async def go_stale(resources: Resources, task_id: uuid.UUID) -> None:
    """The task's worker vanished: its heartbeat is old."""
    async with resources.engine.begin() as conn:
        stale = datetime.now(UTC) - timedelta(minutes=5)
        await conn.execute(update(Task).where(Task.id == task_id).values(heartbeat_at=stale))


class _BeforeFirstBegin:
    """An engine that runs `hook` (on the real engine) before the first transaction it begins."""

    def __init__(self, engine: AsyncEngine, hook: Callable[[], Awaitable[Any]]) -> None:
        self._engine = engine
        self._hook: Callable[[], Awaitable[Any]] | None = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        hook, self._hook = self._hook, None
        if hook is not None:
            await hook()
        async with self._engine.begin() as conn:
            yield conn


class _PausingAfter:
    """An engine whose transactions run `hook` after they executed `statement`."""

    def __init__(self, engine: AsyncEngine, statement: Any, hook: Callable[[], Awaitable[Any]]) -> None:
        self._engine, self._statement, self._hook = engine, statement, hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[Any]:
        statement, hook = self._statement, self._hook

        class Connection:
            def __getattr__(self, name: str) -> Any:
                return getattr(conn, name)

            async def execute(self, executed: Any, *args: Any, **kwargs: Any) -> Any:
                result = await conn.execute(executed, *args, **kwargs)
                if executed is statement:
                    await hook()
                return result

        async with self._engine.begin() as conn:
            yield Connection()


@contextlib.asynccontextmanager
async def cancel_held_open(resources: Resources, job_id: uuid.UUID) -> AsyncIterator[None]:
    """`request_cancel`'s transaction, held open after it marked the job and cancelled its waiting tasks (what runs
    in the block runs meanwhile); its end as `request_cancel` ends it."""
    params = {"p_job_id": job_id, "p_now": datetime.now(UTC), "p_task_ids": [], "p_these_failed": False}
    async with resources.engine.begin() as conn:
        await conn.execute(task_runs._LOCK_JOB, params)
        await conn.execute(task_runs._REQUEST_CANCEL, params)
        await conn.execute(task_runs._CANCEL_WAITING, params)
        yield
        await conn.execute(task_runs._close_job_statement(), params)


# Finding 1: a job whose cancellation was requested must end.


async def test_a_lost_run_is_not_queued_again_once_its_job_is_being_cancelled(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a"])
    await claim(resources, ids["a"], 0)
    await go_stale(resources, ids["a"])

    async def cancel() -> None:  # lands after the reconciler read the lost run, before it queues it again
        outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
        assert outcome is not None and outcome.stopping == 1

    racing = dataclasses.replace(resources, engine=_BeforeFirstBegin(resources.engine, cancel))  # type: ignore[arg-type]
    report = await reconcile(racing)
    assert ids["a"] not in report.requeued
    assert await states(resources, job_id) == (JobState.CANCELLED, {"a": TaskState.CANCELLED})


@pytest.mark.parametrize("give_back", ["retry_later", "requeue_task"])
async def test_a_run_put_back_in_line_while_the_job_is_cancelled_ends_cancelled(
    resources: Resources, give_back: str
) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a"])
    run = await claim(resources, ids["a"], 0)
    reason = ModelUnavailable("the endpoint answered 503")
    async with cancel_held_open(resources, job_id):
        if give_back == "retry_later":
            racing = asyncio.ensure_future(task_runs.retry_later(resources=resources, run=run, reason=reason))
        else:
            racing = asyncio.ensure_future(task_runs.requeue_task(resources=resources, run=run, reason=reason))
        await asyncio.sleep(0.3)  # it records the wait (or waits for the job's row) before the request commits
    assert await racing is None
    assert await states(resources, job_id) == (JobState.CANCELLED, {"a": TaskState.CANCELLED})


@pytest.mark.parametrize("healer", ["claim", "reconciler"])
async def test_a_task_left_in_line_by_a_cancellation_is_ended_and_the_job_closed(
    resources: Resources, healer: str
) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a", "b"])
    await task_runs.finish_task(resources=resources, run=await claim(resources, ids["b"], 0), state=TaskState.SUCCEEDED)
    async with resources.engine.begin() as conn:  # what the races above left before they were fixed
        await conn.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=func.now()))
    if healer == "claim":
        assert await task_runs.start_task(resources=resources, task_id=ids["a"], worker="w:1", generation=0) is None
    else:
        assert ids["a"] in (await reconcile(resources)).leftovers
    assert await states(resources, job_id) == (JobState.CANCELLED, {"a": TaskState.CANCELLED, "b": TaskState.SUCCEEDED})
    assert (await reconcile(resources)).leftovers == []


# Finding 2: a retry during a cancellation.


async def test_a_retry_is_refused_while_a_cancelled_job_still_stops_tasks(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a", "b"])
    run_a = await claim(resources, ids["a"], 0)
    outcome = await task_runs.request_cancel(resources=resources, job_id=job_id)
    assert outcome is not None and (outcome.cancelled, outcome.stopping) == ([ids["b"]], 1)
    with pytest.raises(Conflict) as refused:
        await task_runs.retry_failed(resources=resources, job_id=job_id)
    assert refused.value.code == "CONFLICT"
    # a's worker heard the request and stops it; then the job may be retried, and it succeeds.
    assert await task_runs.finish_task(resources=resources, run=run_a, state=TaskState.CANCELLED) is TaskState.CANCELLED
    assert (await job_row(resources, job_id)).state is JobState.CANCELLED
    assert sorted(await task_runs.retry_failed(resources=resources, job_id=job_id)) == sorted(ids.values())
    for name in ("a", "b"):
        run = await claim(resources, ids[name])
        await task_runs.finish_task(resources=resources, run=run, state=TaskState.SUCCEEDED)
    assert await states(resources, job_id) == (JobState.SUCCEEDED, {"a": TaskState.SUCCEEDED, "b": TaskState.SUCCEEDED})


async def test_a_job_with_a_task_cancelled_without_a_request_does_not_succeed(resources: Resources) -> None:
    # A run that ends cancelled although no cancellation is pending (its job was retried while it stopped).
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a", "b"])
    run_a, run_b = await claim(resources, ids["a"], 0), await claim(resources, ids["b"], 0)
    assert await task_runs.finish_task(resources=resources, run=run_a, state=TaskState.CANCELLED) is TaskState.CANCELLED
    assert await task_runs.finish_task(resources=resources, run=run_b, state=TaskState.SUCCEEDED) is TaskState.SUCCEEDED
    assert (await job_row(resources, job_id)).state is JobState.FAILED
    # The same when the cancelled one ends last.
    job_id, ids = await new_job(resources, case, ["a", "b"])
    run_a, run_b = await claim(resources, ids["a"], 0), await claim(resources, ids["b"], 0)
    assert await task_runs.finish_task(resources=resources, run=run_b, state=TaskState.SUCCEEDED) is TaskState.SUCCEEDED
    assert await task_runs.finish_task(resources=resources, run=run_a, state=TaskState.CANCELLED) is TaskState.CANCELLED
    assert (await job_row(resources, job_id)).state is JobState.FAILED


# Finding 3: a claim checks the task's dependencies.


async def queued_generations(resources: Resources, task_id: uuid.UUID, resource: str = queues.CPU) -> list[int]:
    """The generations of the deliveries of a task in its queue that a worker can take (not locked by arq)."""
    queue = queues.queue_name(resources.settings, resource)
    found = []
    for member in await resources.arq.zrange(queue, 0, -1):
        job_id = member.decode() if isinstance(member, bytes) else str(member)
        _, task, *generation = job_id.split(":")
        if task != str(task_id) or await resources.arq.exists(in_progress_key_prefix + job_id):
            continue
        found.append(int(generation[0]) if generation else 0)
    return sorted(found)


async def test_a_task_is_not_claimed_before_its_dependencies_are_met(resources: Resources) -> None:
    case = await new_case(resources)
    media = case.media_ids[0]
    job_id, ids = await new_job(
        resources,
        case,
        ["prepare", "analysis"],
        media={"prepare": media, "analysis": media},
        depends_on={"analysis": ["prepare"]},
    )
    assert await task_runs.start_task(resources=resources, task_id=ids["analysis"], worker="w:1") is None
    prepared = await claim(resources, ids["prepare"], 0)
    await task_runs.finish_task(resources=resources, run=prepared, state=TaskState.SUCCEEDED)
    assert await queued_generations(resources, ids["analysis"]) == [0]  # handed over by its preparation's end
    await task_runs.finish_task(
        resources=resources, run=await claim(resources, ids["analysis"], 0), state=TaskState.SUCCEEDED
    )
    assert (await job_row(resources, job_id)).state is JobState.SUCCEEDED


async def test_a_case_task_handed_over_waits_again_for_the_tasks_a_retry_queues(resources: Resources) -> None:
    case = await new_case(resources)
    media = case.media_ids[0]
    job_id, ids = await new_job(
        resources, case, ["m", "n", "dossier"], media={"m": media, "n": media}, depends_on={"dossier": ["m", "n"]}
    )
    failed = await claim(resources, ids["m"], 0)
    await task_runs.finish_task(
        resources=resources, run=failed, state=TaskState.FAILED, error_code="X", error_message="x"
    )
    await task_runs.finish_task(resources=resources, run=await claim(resources, ids["n"], 0), state=TaskState.SUCCEEDED)
    assert await queued_generations(resources, ids["dossier"]) == [0]  # every task it waits for ended: handed over

    # The job still runs: m is retried, and the dossier queued already must wait for it again.
    assert sorted(await task_runs.retry_failed(resources=resources, job_id=job_id)) == sorted(
        [ids["m"], ids["dossier"]]
    )
    assert await task_runs.start_task(resources=resources, task_id=ids["dossier"], worker="w:1", generation=0) is None
    assert await task_runs.start_task(resources=resources, task_id=ids["dossier"], worker="w:1") is None
    assert (await states(resources, job_id))[1]["dossier"] is TaskState.QUEUED

    [m_generation] = await queued_generations(resources, ids["m"])
    await task_runs.finish_task(
        resources=resources, run=await claim(resources, ids["m"], m_generation), state=TaskState.SUCCEEDED
    )
    [generation] = [g for g in await queued_generations(resources, ids["dossier"]) if g != 0]  # handed over again
    dossier = await claim(resources, ids["dossier"], generation)
    await task_runs.finish_task(resources=resources, run=dossier, state=TaskState.SUCCEEDED)
    assert await states(resources, job_id) == (
        JobState.SUCCEEDED,
        {"m": TaskState.SUCCEEDED, "n": TaskState.SUCCEEDED, "dossier": TaskState.SUCCEEDED},
    )


async def test_a_running_case_task_is_left_to_finish_by_a_retry(resources: Resources) -> None:
    case = await new_case(resources)
    media = case.media_ids[0]
    job_id, ids = await new_job(resources, case, ["m", "dossier"], media={"m": media}, depends_on={"dossier": ["m"]})
    failed = await claim(resources, ids["m"], 0)
    await task_runs.finish_task(
        resources=resources, run=failed, state=TaskState.FAILED, error_code="X", error_message="x"
    )
    dossier = await claim(resources, ids["dossier"], 0)
    assert await task_runs.retry_failed(resources=resources, job_id=job_id) == [ids["m"]]
    assert (await states(resources, job_id))[1] == {"m": TaskState.QUEUED, "dossier": TaskState.RUNNING}
    assert (
        await task_runs.finish_task(resources=resources, run=dossier, state=TaskState.SUCCEEDED) is TaskState.SUCCEEDED
    )


# Finding 4: the deliveries of a task retried from the start are named apart from the earlier ones.


async def test_a_leftover_delivery_of_an_earlier_round_does_not_block_a_retried_task(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a"])
    task_id = ids["a"]
    reason = ModelUnavailable("the endpoint answered 503")
    # Round 1: run 1 waits for its model; run 2, on delivery 1, is on a worker that is killed after recording the
    # task's failure, so arq keeps that delivery, locked for an hour.
    assert await task_runs.retry_later(resources=resources, run=await claim(resources, task_id, 0), reason=reason)
    second = await claim(resources, task_id, 1)
    await resources.arq.psetex(in_progress_key_prefix + arq_job_id(task_id, 1), 3_610_000, b"1")
    await task_runs.finish_task(
        resources=resources, run=second, state=TaskState.FAILED, error_code="X", error_message="x"
    )
    assert (await job_row(resources, job_id)).state is JobState.FAILED

    # Round 2: every delivery it makes can be taken by a worker, and claims the task.
    assert await task_runs.retry_failed(resources=resources, job_id=job_id) == [task_id]
    [first] = await queued_generations(resources, task_id)
    run = await claim(resources, task_id, first)
    assert await task_runs.retry_later(resources=resources, run=run, reason=reason) is not None
    [following] = [g for g in await queued_generations(resources, task_id) if g != first]
    await task_runs.finish_task(
        resources=resources, run=await claim(resources, task_id, following), state=TaskState.SUCCEEDED
    )
    assert (await job_row(resources, job_id)).state is JobState.SUCCEEDED
    # The leftover of round 1, once arq hands it out again, is refused.
    assert await task_runs.start_task(resources=resources, task_id=task_id, worker="w:1", generation=1) is None


# Finding 5: the reconciler's pass over waiting tasks goes on from where it stopped.


async def test_a_standing_backlog_does_not_hide_newer_lost_deliveries(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = 2
    monkeypatch.setattr(reconciler, "_UNDELIVERED", reconciler._UNDELIVERED.limit(page))
    case = await new_case(resources)
    names = ["l1", "l2", "l3", "cpu"]
    endpoint = f"nowhere-{uuid.uuid4().hex[:6]}"  # an endpoint without workers: its tasks stay queued
    job_id, ids = await new_job(resources, case, names, resource={n: endpoint for n in names if n != "cpu"})
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with resources.engine.begin() as conn:
        for i, name in enumerate(names):
            values = {"created_at": long_ago + timedelta(seconds=i), "heartbeat_at": long_ago}
            await conn.execute(update(Task).where(Task.id == ids[name]).values(**values))
    for name in names[:3]:
        await task_runs.enqueue_task(resources=resources, task_id=ids[name], resource=endpoint)
    # The cpu task's delivery was lost (Redis restarted). Every waiting task is looked at within a bounded number
    # of runs, however many older ones wait for good.
    async with resources.engine.connect() as conn:
        waiting = (
            await conn.execute(select(func.count()).where(Task.state.in_(task_runs.WAITING_STATES)))
        ).scalar_one()
    redelivered: list[uuid.UUID] = []
    for _ in range(math.ceil(waiting / page) + 1):
        redelivered += (await reconcile(resources)).redelivered
    assert ids["cpu"] in redelivered
    assert not {ids[n] for n in names[:3]} & set(redelivered)
    assert await queued_generations(resources, ids["cpu"]) == [0]
    await task_runs.request_cancel(resources=resources, job_id=job_id)


async def test_tasks_of_a_job_being_cancelled_are_not_delivered_again(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a"])
    async with resources.engine.begin() as conn:
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        await conn.execute(update(Task).where(Task.id == ids["a"]).values(created_at=long_ago, heartbeat_at=long_ago))
        await conn.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=func.now()))
    report = await reconcile(resources)
    assert ids["a"] not in report.redelivered and ids["a"] in report.leftovers
    assert await queued_generations(resources, ids["a"]) == []


# Finding 6: a claim and a cancellation of the same job do not deadlock.


async def test_a_claim_racing_a_cancellation_does_not_deadlock(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a"], state=JobState.QUEUED)
    locked = asyncio.Event()

    async def claim_meanwhile() -> None:  # request_cancel holds the job's row: the claim runs now
        locked.set()
        await asyncio.sleep(0.3)

    cancelling = dataclasses.replace(
        resources,
        engine=_PausingAfter(resources.engine, task_runs._LOCK_JOB, claim_meanwhile),  # type: ignore[arg-type]
    )
    cancel = asyncio.ensure_future(task_runs.request_cancel(resources=cancelling, job_id=job_id))
    await locked.wait()
    start = task_runs.start_task(resources=resources, task_id=ids["a"], worker="w:1", generation=0)
    run = await asyncio.wait_for(start, 5)
    outcome = await asyncio.wait_for(cancel, 5)
    assert run is not None and outcome is not None and outcome.stopping == 1
    assert (await job_row(resources, job_id)).state is JobState.RUNNING
    assert await task_runs.finish_task(resources=resources, run=run, state=TaskState.SUCCEEDED) is TaskState.CANCELLED
    assert (await job_row(resources, job_id)).state is JobState.CANCELLED


# A server's Retry-After beyond the endpoint's own retries: the task's next run waits at least that long.


async def test_a_wait_the_server_asked_for_is_kept_by_the_next_run(resources: Resources) -> None:
    case = await new_case(resources)
    job_id, ids = await new_job(resources, case, ["a", "b"])
    asked = ModelUnavailable("the endpoint answered 429")
    asked.retry_after_s = 120.0
    delay = await task_runs.retry_later(resources=resources, run=await claim(resources, ids["a"], 0), reason=asked)
    plain = await task_runs.retry_later(
        resources=resources, run=await claim(resources, ids["b"], 0), reason=ModelUnavailable("503")
    )
    assert delay == 120.0 and plain is not None and plain < 120.0
    [a] = [t for t in await job_tasks(resources, job_id) if t.analyzer == "a"]
    assert a.state is TaskState.WAITING_FOR_MODEL and a.next_attempt_at is not None
    assert a.next_attempt_at - datetime.now(UTC) > timedelta(seconds=110)
