"""An arq worker that sleeps while idle until it is told a task was queued, and outlives Redis restarts.

arq finds new jobs by polling Redis; polling every few milliseconds makes pick-up fast but costs each idle worker
about a tenth of a core. This worker polls at arq's short delay while it is busy, and when a poll finds nothing it
waits for a wake-up on Redis pub/sub (sent by whoever queues a task) or at most `idle_poll_s`, which also bounds
the delay of retries that arq schedules for later.

arq's own poll loop ends the worker at the first Redis error; this one logs it and polls again after a short
backoff, so a worker survives Redis restarting (the reconciler re-enqueues whatever Redis lost).

`run_workers` runs several of them (one per resource queue) in one process until a signal stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Any

from arq.worker import Worker
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: Longest pause between two polls while Redis does not answer.
_MAX_BACKOFF_S = 2.0


class WakeableWorker(Worker):
    def __init__(self, *, wake_channel: str, idle_poll_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wake_channel = wake_channel
        self.idle_poll_s = idle_poll_s
        self._wakeups: PubSub | None = None
        self._redis_failures = 0

    async def _poll_iteration(self) -> None:
        started = self._jobs_started()
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            self._redis_failures += 1
            backoff = min(_MAX_BACKOFF_S, 0.05 * 2**self._redis_failures)
            if self._redis_failures == 1 or self._redis_failures % 20 == 0:
                logger.warning("queue %s: Redis failed (%s); polling again in %.2f s", self.queue_name, exc, backoff)
            await asyncio.sleep(backoff)
            return
        if self._redis_failures:
            logger.info("queue %s: Redis answers again", self.queue_name)
            self._redis_failures = 0
        if self.burst or self._jobs_started() > started or self.job_counter >= self.max_jobs:
            return  # busy: poll again after arq's short delay
        await self._wait_for_wakeup()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's, one job at a time, giving back the slot that a Redis error midway took: arq counts a job as started
        before it talks to Redis, and keeps the count when that fails (a worker would lose a slot per Redis
        failure)."""
        for job_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            key = job_id.decode()
            before = self.tasks.get(key)
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                if self.tasks.get(key) is before:  # no task was started for it: the slot is still taken
                    self.job_counter -= 1
                    self.sem.release()
                raise

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
        """arq's close gathers the running task runs and re-raises a cancellation: a run that a stop signal
        cancelled outside arq's own handling (while it reported its end) would skip `on_shutdown`, leave the pool
        open and make the process exit 1. The runs are awaited here first, whatever their outcome."""
        await self._close_wakeups()
        running = list(self.tasks.values())
        if running:
            await asyncio.gather(*running, return_exceptions=True)
            self.tasks.clear()
        await super().close()


def run_workers(workers: Sequence[Worker]) -> None:
    """Run arq workers (built with ``handle_signals=False``, on this thread's event loop) until SIGINT or SIGTERM
    stops them all, or every one ends (burst mode); one that fails stops the others, and its error is raised."""
    loop = workers[0].loop

    def stop(signum: signal.Signals) -> None:
        for worker in workers:
            worker.handle_sig(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)

    async def main() -> None:
        tasks = [loop.create_task(worker.main()) for worker in workers]
        for worker, task in zip(workers, tasks, strict=True):
            worker.main_task = task
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failure = next((t.exception() for t in done if not t.cancelled() and t.exception() is not None), None)
        if failure is not None:
            for worker in workers:
                worker.handle_sig(signal.SIGTERM)
        await asyncio.gather(*tasks, return_exceptions=True)
        if failure is not None:
            raise failure

    try:
        loop.run_until_complete(main())
    except asyncio.CancelledError:  # a signal cancelled the workers' main tasks
        pass
    finally:
        for worker in reversed(workers):
            loop.run_until_complete(worker.close())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
