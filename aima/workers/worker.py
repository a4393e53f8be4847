"""An arq worker that sleeps while idle until it is told a task was queued.

arq finds new jobs by polling Redis; polling every few milliseconds makes pick-up fast but costs each idle worker
about a tenth of a core. This worker polls at arq's short delay while it is busy, and when a poll finds nothing it
waits for a wake-up on Redis pub/sub (sent by whoever queues a task) or at most `idle_poll_s`, which also bounds
the delay of retries that arq schedules for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.worker import Worker
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


class WakeableWorker(Worker):
    def __init__(self, *, wake_channel: str, idle_poll_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wake_channel = wake_channel
        self.idle_poll_s = idle_poll_s
        self._wakeups: PubSub | None = None

    async def _poll_iteration(self) -> None:
        started = self._jobs_started()
        await super()._poll_iteration()
        if self.burst or self._jobs_started() > started or self.job_counter >= self.max_jobs:
            return  # busy: poll again after arq's short delay
        await self._wait_for_wakeup()

    async def _wait_for_wakeup(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_poll_s
        try:
            if self._wakeups is None:
                self._wakeups = self.pool.pubsub()
                await self._wakeups.subscribe(self.wake_channel)
            while (left := deadline - loop.time()) > 0:
                if await self._wakeups.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                    while await self._wakeups.get_message(ignore_subscribe_messages=True, timeout=0) is not None:
                        pass  # one poll serves every wake-up that arrived meanwhile
                    return
        except (RedisError, OSError) as exc:
            logger.warning("wake-up channel failed (%s); polling every %.2f s until it is back", exc, self.idle_poll_s)
            await self._close_wakeups()
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def _close_wakeups(self) -> None:
        if self._wakeups is not None:
            wakeups, self._wakeups = self._wakeups, None
            with contextlib.suppress(RedisError, OSError):
                await wakeups.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._close_wakeups()
        await super().close()
