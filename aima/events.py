"""Job progress events over Redis pub/sub: workers publish, API subscriptions listen.

PostgreSQL stays the state of record; an event is a notification that a task or job changed, carrying enough for a
client to update its view without another query.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from redis.asyncio import Redis

logger = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    job_state: str
    task_id: str | None = None
    analyzer: str | None = None
    task_state: str | None = None
    progress: float = 0.0
    message: str = ""
    error_code: str | None = None
    at: str = field(default_factory=_now)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: str | bytes) -> JobEvent:
        return cls(**json.loads(data))


def job_channel(prefix: str, job_id: str) -> str:
    return f"{prefix}:events:job:{job_id}"


async def publish(redis: Redis, prefix: str, event: JobEvent) -> None:
    await redis.publish(job_channel(prefix, event.job_id), event.to_json())


class JobEventStream:
    """A subscription to one job's channel; subscribe before reading the job's state so nothing is missed."""

    def __init__(self, redis: Redis, prefix: str, job_id: str) -> None:
        self._pubsub = redis.pubsub()
        self._channel = job_channel(prefix, job_id)

    async def __aenter__(self) -> JobEventStream:
        """Subscribe, and return once Redis confirmed it: from then on no event of the job can be missed."""
        await self._pubsub.subscribe(self._channel)
        async with asyncio.timeout(5):
            while True:
                message = await self._pubsub.get_message(timeout=1)
                if message is not None and message.get("type") == "subscribe":
                    return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._pubsub.unsubscribe(self._channel)
        finally:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def next(self, wait_s: float) -> JobEvent | None:
        """The next event, or None when none arrived within `wait_s` seconds."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            message = await self._pubsub.get_message(timeout=left)
            if message is None or message.get("type") != "message":
                continue
            try:
                return JobEvent.from_json(message["data"])
            except (TypeError, ValueError):
                logger.warning("dropped a malformed event on %s", self._channel)
        return None

    async def __aiter__(self) -> AsyncIterator[JobEvent]:
        while True:
            event = await self.next(wait_s=60)
            if event is not None:
                yield event


def wake_channel(prefix: str, queue: str) -> str:
    """Where idle workers of `queue` listen for "a task was queued", instead of polling Redis every few ms."""
    return f"{prefix}:wake:{queue}"


async def wake_workers(redis: Redis, prefix: str, queue: str) -> None:
    await redis.publish(wake_channel(prefix, queue), b"1")
