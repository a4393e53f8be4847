"""Task benchmark: no-op tasks through two `aima worker` processes, throughput and enqueue-to-start latency.

Starts its own embedded servers (PostgreSQL, MongoDB-wire, Milvus Lite, S3, Redis) in a temporary folder and two
worker processes with the test analyzers (`aima.testing.workers`), then, from this process:

- throughput: one job over a case of --tasks media items with the `noop` analyzer (`analyze_case`, as the API does:
  rows inserted, every task enqueued), timed from the first enqueue to the last task's end;
- latency on an idle queue: --samples one-task jobs, each enqueued once the previous one has ended, timed from the
  moment before its enqueue (`task_runs.enqueue_task` and the wake-up) to its `started_at`, which the worker records
  as it claims the task (one clock: the same machine).

Every task goes the whole way: arq delivery, claim in PostgreSQL, the analyzer, the result upserted in MongoDB, the
finish (and the job's close) in PostgreSQL, and the events in Redis.

Run: .venv/bin/python bench/jobs.py [--tasks 2000] [--samples 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import time
import uuid
from pathlib import Path

import uvloop
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.db.models import Case, Job, JobState, Media, Role, Task, TaskState, User
from aima.resources import Resources, open_resources
from aima.services import jobs, task_runs
from aima.services.access import Actor
from aima.settings import Settings
from aima.testing.stack import local_aima
from aima.testing.workers import spawn_worker, test_analyzer_registry


async def new_case(resources: Resources, actor: Actor, media: int) -> uuid.UUID:
    """A case of `media` audio items (rows only: `noop` reads nothing, and audio needs no preview)."""
    case_id = uuid.uuid4()
    async with resources.engine.begin() as conn:
        await conn.execute(insert(Case).values(id=case_id, title="bench", owner_id=actor.user_id))
        rows = [
            {
                "id": uuid.uuid4(),
                "case_id": case_id,
                "uploaded_by": actor.user_id,
                "filename": f"{i}.wav",
                "kind": "audio",
                "content_type": "audio/wav",
                "format": "wav",
                "size_bytes": 4,
                "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                "storage_key": f"bench/{uuid.uuid4()}",
                "probe": {},
            }
            for i in range(media)
        ]
        await conn.execute(insert(Media), rows)
    return case_id


async def wait_for_job(resources: Resources, job_id: uuid.UUID, timeout_s: float, every_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    query = select(Job.state).where(Job.id == job_id)
    while time.monotonic() < deadline:
        async with resources.engine.connect() as conn:
            state = (await conn.execute(query)).scalar_one()
        if JobState(state).terminal:
            if state != JobState.SUCCEEDED:
                raise RuntimeError(f"job {job_id} ended {state}")
            return
        await asyncio.sleep(every_s)
    raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")


async def throughput(resources: Resources, actor: Actor, tasks: int) -> dict[str, float]:
    case_id = await new_case(resources, actor, tasks)
    began = time.time()
    job = await jobs.analyze_case(resources=resources, actor=actor, case_id=case_id, analyzers=["noop"])
    queued = time.time()
    await wait_for_job(resources, job.id, timeout_s=600, every_s=0.1)
    async with resources.engine.connect() as conn:
        rows = list(await conn.execute(select(Task.started_at, Task.finished_at).where(Task.job_id == job.id)))
    last = max(r.finished_at.timestamp() for r in rows)
    first_start = min(r.started_at.timestamp() for r in rows)
    return {
        "tasks": len(rows),
        "enqueue_s": queued - began,
        "elapsed_s": last - began,
        "tasks_per_s": len(rows) / (last - began),
        "tasks_per_s_running": len(rows) / (last - first_start),
    }


async def latency(resources: Resources, actor: Actor, samples: int) -> list[float]:
    """Milliseconds from enqueue to start, one task at a time on idle workers."""
    case_id = await new_case(resources, actor, 1)
    async with resources.engine.connect() as conn:
        media_id = (await conn.execute(select(Media.id).where(Media.case_id == case_id))).scalar_one()
    delays = []
    for _ in range(samples):
        job_id, task_id = uuid.uuid4(), uuid.uuid4()
        async with resources.engine.begin() as conn:
            await conn.execute(
                insert(Job).values(
                    id=job_id, case_id=case_id, media_id=media_id, created_by=actor.user_id, state=JobState.QUEUED
                )
            )
            await conn.execute(
                insert(Task).values(
                    id=task_id,
                    job_id=job_id,
                    media_id=media_id,
                    analyzer="noop",
                    analyzer_version="1.0",
                    state=TaskState.QUEUED,
                )
            )
        await asyncio.sleep(0.05)  # the workers are idle, waiting for a wake-up
        enqueued = time.time()
        await task_runs.enqueue_task(resources=resources, task_id=task_id)
        await task_runs.wake(resources)
        await wait_for_job(resources, job_id, timeout_s=30, every_s=0.005)
        async with resources.engine.connect() as conn:
            started = (await conn.execute(select(Task.started_at).where(Task.id == task_id))).scalar_one()
        delays.append((started.timestamp() - enqueued) * 1000)
    return delays


async def measure(settings: Settings, tasks: int, samples: int) -> tuple[dict[str, float], list[float]]:
    async with open_resources(settings, analyzers=test_analyzer_registry()) as resources:
        user = User(id=uuid.uuid4(), email="bench@example.org", password_hash="!", role=Role.USER)  # noqa: S106 - no sign-in
        async with resources.sessions() as session:
            session.add(user)
            await session.commit()
        actor = Actor(user_id=user.id, email=user.email, role=Role.USER)
        await latency(resources, actor, 10)  # warm up: connections, the workers' first claims
        figures = await throughput(resources, actor, tasks)
        delays = await latency(resources, actor, samples)
        return figures, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with local_aima("aima-bench-jobs-") as aima:
        settings = aima.settings
        logs = aima.root / "logs"
        aima.processes.extend(spawn_worker(settings, logs / f"worker-{i}.log") for i in range(args.workers))
        figures, delays = uvloop.run(measure(settings, args.tasks, args.samples))
    delays.sort()
    print(f"no-op tasks through {args.workers} worker processes (max_jobs {settings.worker.max_jobs} each)")
    print(
        f"  throughput: {figures['tasks']:.0f} tasks in {figures['elapsed_s']:.2f} s from the first enqueue: "
        f"{figures['tasks_per_s']:.1f} tasks/s ({figures['tasks_per_s_running']:.1f} tasks/s from the first "
        f"start; analyze_case queued them in {figures['enqueue_s']:.2f} s)"
    )
    print(
        f"  enqueue -> start on an idle queue ({len(delays)} samples): median {statistics.median(delays):.1f} ms, "
        f"p95 {delays[int(0.95 * (len(delays) - 1))]:.1f} ms, max {delays[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
