"""Job progress events over Redis pub/sub: workers publish, API subscriptions listen.

PostgreSQL stays the state of record; an event is a notification that a task or job changed, carrying enough for a
client to update its view without another query.
"""

from __future__ import annotations

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
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._channel = job_channel(prefix, job_id)

    async def __aenter__(self) -> JobEventStream:
        await self._pubsub.subscribe(self._channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._pubsub.unsubscribe(self._channel)
        finally:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def __aiter__(self) -> AsyncIterator[JobEvent]:
        async for message in self._pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                yield JobEvent.from_json(message["data"])
            except (TypeError, ValueError):
                logger.warning("dropped a malformed event on %s", self._channel)
