"""Live progress over graphql-transport-ws: one job's events (`jobEvents`), or every job's of a case (`caseEvents`).

Both send the current state first (a snapshot), then every change, numbered by the job's (or the case's) event
stream (`aima.events`). A client that reconnects passes the last number it saw as `after`, and its `epoch`, and gets
every change it missed, once; when those are no longer kept, or the stream is no longer the one `after` counts in
(Redis lost it and made it anew), a fresh snapshot flagged `resync` replaces them.

Workers publish after they commit, each process on its own, so a job's end can reach the stream before the end of
a task that finished just before it. `jobEvents` therefore compares, when the job's end arrives, the tasks' states
of record with those its subscriber was sent, and sends the job's state once more when they differ.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated

import strawberry
from redis.asyncio import Redis
from redis.exceptions import RedisError
from strawberry.types import Info

from aima.db.models import Job, JobState, Task
from aima.events import EventFeed, EventLog, EventsLost, JobEvent, event_feed, events_before, last_event
from aima.graphql.context import Context
from aima.graphql.queries import parse_id
from aima.graphql.types import JobEventNode, TaskNode
from aima.metrics import SUBSCRIPTIONS_ACTIVE
from aima.services import cases, jobs
from aima.services.access import Actor

logger = logging.getLogger(__name__)

#: Seconds without an event after which a subscription compares its position with the stream (and a job's
#: subscription re-reads the job from PostgreSQL, in case its final event was lost).
RECHECK_S = 5.0
#: How often a subscription checks that its session has not ended (one Redis round trip).
REVALIDATE_S = 2.0
#: How long a subscription outlives Redis being unreachable (a restart, a failover) before it ends with an error:
#: meanwhile it can neither check its session nor read events, and carries on once Redis is back.
REDIS_GRACE_S = 30.0

#: How many stored events a reconnected `jobEvents` reads back, at most, for the ends of tasks it was not sent.
SCAN_BACK = 2_000

AFTER = "The number of the last event seen (`seq`): send the changes after it instead of a snapshot."
EPOCH = (
    "The `epoch` of the event numbered `after`. When the stream no longer is the one it names (Redis lost it and "
    "made it anew), a fresh snapshot flagged `resync` comes instead of the changes. Without it, a stream made anew "
    "that has grown past `after` is taken for the old one."
)


@strawberry.type(name="CaseEvent")
class CaseEventNode:
    """A change of one of a case's jobs, or (`snapshot`) the state of the case's active jobs."""

    case_id: strawberry.ID
    seq: int = strawberry.field(
        description="The event's number in the case's stream; a snapshot has the number of the last change it "
        "includes. Reconnect with the last one seen as `after`."
    )
    epoch: str | None = strawberry.field(
        description="Names the case's stream `seq` counts in (see JobEvent.epoch): reconnect with it as `epoch`."
    )
    snapshot: bool = strawberry.field(description="Whether this is the case's state rather than a change.")
    resync: bool = strawberry.field(
        description="A snapshot sent instead of the changes after `after`, which are no longer kept."
    )
    jobs: Annotated[
        list[JobEventNode] | None,
        strawberry.field(description="Snapshots only: each job still queued or running, with all its tasks."),
    ] = None
    event: Annotated[JobEventNode | None, strawberry.field(description="The change; null on snapshots.")] = None


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The job's current state with all its tasks, then every change; completes when the job ends. "
        "It ends with UNAUTHENTICATED when its token expires or its session ends."
    )
    async def job_events(
        self,
        info: Info[Context, None],
        job_id: strawberry.ID,
        after: Annotated[int | None, strawberry.argument(description=AFTER)] = None,
        epoch: Annotated[str | None, strawberry.argument(description=EPOCH)] = None,
    ) -> AsyncGenerator[JobEventNode, None]:
        ctx = info.context
        actor = ctx.require_actor()
        job_uuid = parse_id(job_id, "job")
        redis = ctx.resources.redis
        log = EventLog.of_job(ctx.resources.settings.redis_prefix, str(job_uuid))
        sent = _SentTasks(after)

        async def snapshot(feed: EventFeed, *, resync: bool) -> tuple[JobEventNode, Job]:
            seq, last = await last_event(redis, log)  # before the state: it includes every change up to `seq`
            async with ctx.refusals_audited("jobEvents"):
                job, tasks = await _job_with_tasks(ctx, actor, job_uuid)
            stream_epoch = _epoch_of(last)
            feed.restart(seq, stream_epoch)
            sent.reset(tasks)
            node = JobEventNode.of(
                _job_snapshot(job, tasks, seq, stream_epoch),
                [TaskNode.of(t) for t in tasks],
                snapshot=True,
                resync=resync,
            )
            return node, job

        async def lacks_final_state(position: int) -> bool:
            async with ctx.resources.sessions() as session:
                tasks = await jobs.tasks_of_job(session=session, job_id=job_uuid)
            return await sent.lack(tasks, redis, log, position)

        SUBSCRIPTIONS_ACTIVE.inc()
        try:
            # Follow the stream first, then read the state of record: a change in between arrives as an event.
            async with event_feed(redis, log) as feed:
                if after is None:
                    node, job = await snapshot(feed, resync=False)
                    yield node
                    if job.state.terminal:
                        return
                else:
                    seq, last = await last_event(redis, log)
                    async with ctx.refusals_audited("jobEvents"):
                        job = await _job(ctx, actor, job_uuid)
                    # A number the stream never reached (it was lost, or expired, since), or another stream's.
                    if after > seq or _other_stream(epoch, last):
                        node, job = await snapshot(feed, resync=True)
                        yield node
                        if job.state.terminal:
                            return
                    elif after == seq and job.state.terminal:
                        # The client saw every event; the state, if the stream lacks the job's end or a task's.
                        if not _ends_job(last) or await lacks_final_state(after):
                            node, _ = await snapshot(feed, resync=False)
                            yield node
                        return
                    else:
                        feed.restart(after, epoch if epoch is not None else _epoch_of(last))
                        feed.check()
                follow = _Follow(ctx, feed)
                while True:
                    try:
                        event = await follow.next()
                    except EventsLost:
                        node, job = await snapshot(feed, resync=True)
                        yield node
                        if job.state.terminal:
                            return
                        continue
                    if event is not None:
                        sent.note(event)
                        yield JobEventNode.of(event)
                        if _ends_job(event):
                            # A task's end published after the job's (by another worker) is sent as the state.
                            if await lacks_final_state(feed.position):
                                node, _ = await snapshot(feed, resync=False)
                                yield node
                            return
                        continue
                    # Quiet for a while: events lost on the way are read from the stream; if it has none, the
                    # state of record says whether the job ended without its final event.
                    try:
                        seq, _ = await last_event(redis, log)
                    except (RedisError, OSError):
                        feed.check()  # Redis is away: `follow` waits for it
                        continue
                    if seq != feed.position:
                        feed.check()
                        continue
                    async with ctx.refusals_audited("jobEvents"):
                        job = await _job(ctx, actor, job_uuid)
                    if job.state.terminal:
                        node, _ = await snapshot(feed, resync=False)
                        yield node
                        return
        finally:
            SUBSCRIPTIONS_ACTIVE.dec()

    @strawberry.subscription(
        description="The state of the case's active jobs with their tasks, then every change of any of its jobs. "
        "It stays open; it ends with UNAUTHENTICATED when its token expires or its session ends."
    )
    async def case_events(
        self,
        info: Info[Context, None],
        case_id: strawberry.ID,
        after: Annotated[int | None, strawberry.argument(description=AFTER)] = None,
        epoch: Annotated[str | None, strawberry.argument(description=EPOCH)] = None,
    ) -> AsyncGenerator[CaseEventNode, None]:
        ctx = info.context
        actor = ctx.require_actor()
        case_uuid = parse_id(case_id, "case")
        redis = ctx.resources.redis
        log = EventLog.of_case(ctx.resources.settings.redis_prefix, str(case_uuid))

        async def snapshot(feed: EventFeed, *, resync: bool) -> CaseEventNode:
            seq, last = await last_event(redis, log)  # before the state: it includes every change up to `seq`
            async with ctx.refusals_audited("caseEvents"):
                active = await _active_jobs(ctx, actor, case_uuid)
            stream_epoch = _epoch_of(last)
            feed.restart(seq, stream_epoch)
            return CaseEventNode(
                case_id=strawberry.ID(str(case_uuid)),
                seq=seq,
                epoch=stream_epoch,
                snapshot=True,
                resync=resync,
                jobs=[
                    JobEventNode.of(
                        _job_snapshot(job, tasks, seq, stream_epoch), [TaskNode.of(t) for t in tasks], snapshot=True
                    )
                    for job, tasks in active
                ],
            )

        SUBSCRIPTIONS_ACTIVE.inc()
        try:
            async with event_feed(redis, log) as feed:
                if after is None:
                    yield await snapshot(feed, resync=False)
                else:
                    seq, last = await last_event(redis, log)
                    async with ctx.refusals_audited("caseEvents"):
                        await _case(ctx, actor, case_uuid)
                    if after > seq or _other_stream(epoch, last):
                        yield await snapshot(feed, resync=True)
                    else:
                        feed.restart(after, epoch if epoch is not None else _epoch_of(last))
                        feed.check()
                follow = _Follow(ctx, feed)
                while True:
                    try:
                        event = await follow.next()
                    except EventsLost:
                        yield await snapshot(feed, resync=True)
                        continue
                    if event is None:
                        feed.check()  # quiet for a while: read what the stream has that did not arrive
                        continue
                    yield CaseEventNode(
                        case_id=strawberry.ID(str(case_uuid)),
                        seq=event.seq or 0,
                        epoch=event.epoch,
                        snapshot=False,
                        resync=False,
                        event=JobEventNode.of(event),
                    )
        finally:
            SUBSCRIPTIONS_ACTIVE.dec()


class _Follow:
    """A feed's next events for a subscription that ends with its session (checked every REVALIDATE_S) or token."""

    def __init__(self, ctx: Context, feed: EventFeed) -> None:
        self._ctx = ctx
        self._feed = feed
        loop = asyncio.get_running_loop()
        self._revalidate_at = self._recheck_at = loop.time()
        self._redis_down_since: float | None = None

    async def _redis_failed(self, exc: BaseException) -> None:
        """Wait a little for Redis to come back (the event hub reconnects, then has the feed read what it missed);
        give up after REDIS_GRACE_S."""
        now = asyncio.get_running_loop().time()
        if self._redis_down_since is None:
            self._redis_down_since = now
            logger.warning("subscription: Redis failed (%s); waiting for it", exc)
        elif now - self._redis_down_since > REDIS_GRACE_S:
            raise exc
        await asyncio.sleep(0.25)
        self._feed.check()

    async def next(self) -> JobEvent | None:
        """The next event; None after RECHECK_S without one. Raises `EventsLost` (from the feed) and, once the
        session has ended or the token expired, `NotAuthenticated`."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            try:
                if now >= self._revalidate_at:
                    await self._ctx.require_live_session()  # ends the subscription once the session has ended
                    self._revalidate_at = now + REVALIDATE_S
                wait_s = _wait_s(self._ctx, self._revalidate_at - now, self._recheck_at - now)
                event = await self._feed.next(wait_s=wait_s)
            except (RedisError, OSError) as exc:
                await self._redis_failed(exc)
                continue
            self._redis_down_since = None
            self._ctx.require_actor()  # ends the subscription once the token has expired
            if event is not None:
                self._recheck_at = loop.time() + RECHECK_S
                return event
            if loop.time() >= self._recheck_at:
                self._recheck_at = loop.time() + RECHECK_S
                return None


def _wait_s(ctx: Context, until_revalidate_s: float, until_recheck_s: float) -> float:
    """How long to wait for the next event: until the next check is due or the token expires."""
    wait_s = min(until_revalidate_s, until_recheck_s + RECHECK_S if until_recheck_s <= 0 else until_recheck_s)
    if ctx.token_claims is not None:
        wait_s = min(wait_s, (ctx.token_claims.expires_at - datetime.now(UTC)).total_seconds() + 0.05)
    return max(wait_s, 0.01)


def _ends_job(event: JobEvent | None) -> bool:
    return event is not None and event.task_id is None and JobState(event.job_state).terminal


def _epoch_of(last: JobEvent | None) -> str | None:
    """The epoch of the stream whose last event is `last` (None: the stream is empty, or older than epochs)."""
    return last.epoch if last is not None else None


def _other_stream(epoch: str | None, last: JobEvent | None) -> bool:
    """Whether the stream, whose last event is `last`, is not the one of `epoch` (a client's; None: not given)."""
    return epoch is not None and last is not None and last.epoch is not None and last.epoch != epoch


class _SentTasks:
    """The state of each task of a job that a `jobEvents` subscriber was sent, to tell whether the state of record
    has a task's end that its events lacked when the job's end arrived."""

    def __init__(self, after: int | None) -> None:
        #: Each task's state as last sent, by its id.
        self.states: dict[str, str] = {}
        #: Until a snapshot is sent, the `after` the client reconnected with: it has each task's state as of that
        #: event, which only the stream tells.
        self.after = after

    def reset(self, tasks: list[Task]) -> None:
        self.states = {str(t.id): str(t.state) for t in tasks}
        self.after = None

    def note(self, event: JobEvent) -> None:
        if event.task_id is not None and event.task_state is not None:
            self.states[event.task_id] = event.task_state

    async def lack(self, tasks: list[Task], redis: Redis, log: EventLog, position: int) -> bool:
        """Whether a task that ended (in `tasks`, the state of record) has an end the subscriber was not sent, of
        the events up to `position`."""
        unsent = {str(t.id): str(t.state) for t in tasks if t.state.terminal and self.states.get(str(t.id)) != t.state}
        if not unsent:
            return False
        if self.after is None or any(task_id in self.states for task_id in unsent):
            return True  # sent the task's state, but not its end
        # Reconnected: the ends the client has are among the events up to `after` (the latest of each task's).
        below, read = min(self.after, position), 0
        while unsent and below > 0 and read < SCAN_BACK:
            events = await events_before(redis, log, below)
            if not events:
                break
            for event in events:
                if event.task_id not in unsent or event.task_state is None:
                    continue
                if unsent.pop(event.task_id) != event.task_state:
                    return True  # its latest state the client has is not its end
            read += len(events)
            below = (events[-1].seq or 0) - 1
        return bool(unsent)


async def _job(ctx: Context, actor: Actor, job_id: uuid.UUID) -> Job:
    async with ctx.resources.sessions() as session:
        return await jobs.get_job(session=session, actor=actor, job_id=job_id)


async def _job_with_tasks(ctx: Context, actor: Actor, job_id: uuid.UUID) -> tuple[Job, list[Task]]:
    async with ctx.resources.sessions() as session:
        job = await jobs.get_job(session=session, actor=actor, job_id=job_id)
        return job, await jobs.tasks_of_job(session=session, job_id=job_id)


async def _case(ctx: Context, actor: Actor, case_id: uuid.UUID) -> None:
    async with ctx.resources.sessions() as session:
        await cases.get_case(session=session, actor=actor, case_id=case_id)


async def _active_jobs(ctx: Context, actor: Actor, case_id: uuid.UUID) -> list[tuple[Job, list[Task]]]:
    """The case's jobs still queued or running, each with its tasks (after checking the actor may read the case)."""
    async with ctx.resources.sessions() as session:
        await cases.get_case(session=session, actor=actor, case_id=case_id)
        active = [job for job in await jobs.jobs_of_case(session=session, case_id=case_id) if not job.state.terminal]
        return [(job, await jobs.tasks_of_job(session=session, job_id=job.id)) for job in reversed(active)]


def _job_snapshot(job: Job, tasks: list[Task], seq: int, epoch: str | None) -> JobEvent:
    """The job's state as an event: its progress the share of finished tasks, its ETA the time it took so far
    stretched by what is left (elapsed * (1 - p) / p)."""
    done = sum(1 for t in tasks if t.state.terminal)
    progress = done / len(tasks) if tasks else 1.0
    eta_s = None
    if not job.state.terminal and 0 < progress < 1:
        elapsed_s = (datetime.now(UTC) - job.created_at).total_seconds()
        eta_s = round(max(elapsed_s, 0.0) * (1 - progress) / progress, 3)
    return JobEvent(
        job_id=str(job.id),
        job_state=job.state,
        progress=progress,
        message=f"{done} of {len(tasks)} tasks finished",
        case_id=str(job.case_id),
        seq=seq,
        eta_s=eta_s,
        epoch=epoch,
    )
