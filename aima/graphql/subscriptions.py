"""Live job progress over graphql-transport-ws."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.types import Info

from aima.db.models import JobState
from aima.events import JobEvent, JobEventStream
from aima.graphql.context import Context
from aima.graphql.queries import parse_id
from aima.graphql.types import JobEventNode, TaskNode
from aima.metrics import SUBSCRIPTIONS_ACTIVE
from aima.services import jobs


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
                async with resources.sessions() as session:
                    job = await jobs.get_job(session=session, actor=actor, job_id=job_uuid)
                    tasks = await jobs.tasks_of_job(session=session, job_id=job_uuid)
                done = sum(1 for t in tasks if t.state.terminal)
                snapshot = JobEvent(
                    job_id=str(job.id),
                    job_state=job.state,
                    progress=done / len(tasks) if tasks else 1.0,
                    message=f"{done} of {len(tasks)} tasks finished",
                )
                yield JobEventNode.of(snapshot, tasks=[TaskNode.of(t) for t in tasks])
                if job.state.terminal:
                    return
                async for event in stream:
                    yield JobEventNode.of(event)
                    if event.task_id is None and JobState(event.job_state).terminal:
                        return
        finally:
            SUBSCRIPTIONS_ACTIVE.dec()
