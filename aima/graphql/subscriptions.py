"""Live job progress over graphql-transport-ws."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

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
#: How often a subscription checks that its session has not ended (one Redis round trip).
REVALIDATE_S = 2.0


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The job's current state with all its tasks, then every change; completes when the job ends. "
        "It ends with UNAUTHENTICATED when its token expires or its session ends."
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
                async with ctx.refusals_audited("jobEvents"):
                    job, tasks = await _job_with_tasks(ctx, actor, job_uuid)
                yield JobEventNode.of(_snapshot(job, tasks), tasks=[TaskNode.of(t) for t in tasks])
                loop = asyncio.get_running_loop()
                revalidate_at = recheck_at = loop.time()
                while not job.state.terminal:
                    now = loop.time()
                    if now >= revalidate_at:
                        await ctx.require_live_session()  # ends the subscription once the session has ended
                        revalidate_at = now + REVALIDATE_S
                    event = await stream.next(wait_s=_wait_s(ctx, revalidate_at - now, recheck_at - now))
                    ctx.require_actor()  # ends the subscription once the token has expired
                    if event is None:
                        if loop.time() < recheck_at:
                            continue
                        # Quiet for a while: ask the state of record, in case the final event was lost.
                        recheck_at = loop.time() + RECHECK_S
                        job, tasks = await _job_with_tasks(ctx, actor, job_uuid)
                        if job.state.terminal:
                            yield JobEventNode.of(_snapshot(job, tasks), tasks=[TaskNode.of(t) for t in tasks])
                        continue
                    recheck_at = loop.time() + RECHECK_S
                    yield JobEventNode.of(event)
                    if event.task_id is None and JobState(event.job_state).terminal:
                        return
        finally:
            SUBSCRIPTIONS_ACTIVE.dec()


def _wait_s(ctx: Context, until_revalidate_s: float, until_recheck_s: float) -> float:
    """How long to wait for the next event: until the next check is due or the token expires."""
    wait_s = min(until_revalidate_s, until_recheck_s + RECHECK_S if until_recheck_s <= 0 else until_recheck_s)
    if ctx.token_claims is not None:
        wait_s = min(wait_s, (ctx.token_claims.expires_at - datetime.now(UTC)).total_seconds() + 0.05)
    return max(wait_s, 0.01)


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
