"""Live job progress over graphql-transport-ws."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import strawberry
from strawberry.types import Info

from aima.db.models import Job, JobState, Task
from aima.events import JobEvent, JobEventStream
from aima.graphql.context import Context
from aima.graphql.queries import parse_id
from aima.graphql.types import JobEventNode, TaskNode
from aima.metrics import SUBSCRIPTIONS_ACTIVE
from aima.services import jobs
from aima.services.access import Actor

#: Seconds without an event after which a subscription re-reads the job from PostgreSQL.
RECHECK_S = 5.0


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The job's current state with all its tasks, then every change; completes when the job ends."
    )
    async def job_events(self, info: Info[Context, None], job_id: strawberry.ID) -> AsyncGenerator[JobEventNode, None]:
        ctx = info.context
        actor = ctx.require_actor()
        job_uuid = parse_id(job_id, "job")
        resources = ctx.resources
        SUBSCRIPTIONS_ACTIVE.inc()
        try:
            # Subscribe first, then read the state of record: a change in between arrives as an event.
            async with JobEventStream(resources.redis, resources.settings.redis_prefix, str(job_uuid)) as stream:
                job, tasks = await _job_with_tasks(ctx, actor, job_uuid)
                yield JobEventNode.of(_snapshot(job, tasks), tasks=[TaskNode.of(t) for t in tasks])
                while not job.state.terminal:
                    event = await stream.next(wait_s=RECHECK_S)
                    if event is None or event.task_id is None:
                        await ctx.require_live_session()  # ends the subscription once the session has ended
                    else:
                        ctx.require_actor()  # ends the subscription once the token has expired
                    if event is None:
                        # Quiet for a while: ask the state of record, in case the final event was lost.
                        job, tasks = await _job_with_tasks(ctx, actor, job_uuid)
                        if job.state.terminal:
                            yield JobEventNode.of(_snapshot(job, tasks), tasks=[TaskNode.of(t) for t in tasks])
                        continue
                    yield JobEventNode.of(event)
                    if event.task_id is None and JobState(event.job_state).terminal:
                        return
        finally:
            SUBSCRIPTIONS_ACTIVE.dec()


async def _job_with_tasks(ctx: Context, actor: Actor, job_id: uuid.UUID) -> tuple[Job, list[Task]]:
    async with ctx.resources.sessions() as session:
        job = await jobs.get_job(session=session, actor=actor, job_id=job_id)
        return job, await jobs.tasks_of_job(session=session, job_id=job_id)


def _snapshot(job: Job, tasks: list[Task]) -> JobEvent:
    done = sum(1 for t in tasks if t.state.terminal)
    return JobEvent(
        job_id=str(job.id),
        job_state=job.state,
        progress=done / len(tasks) if tasks else 1.0,
        message=f"{done} of {len(tasks)} tasks finished",
    )
