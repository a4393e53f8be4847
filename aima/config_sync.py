"""Keeps a process's settings equal to its base settings plus the runtime overrides an administrator stored.

The API's lifespan and each worker's startup run one `ConfigSync`. It reads the overrides at start, then listens on
the Redis channel where changes are announced and re-reads them from PostgreSQL on each announcement (the message
itself is only a nudge), and every `RESYNC_S` anyway, in case one was lost while Redis was away. Each read replaces
`resources.settings` with a new `Settings` object (code reads it at the time of use), applies the log level, calls
the process's listeners, and records the version applied in Redis for the administrators to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from redis.asyncio.client import PubSub

from aima.logs import set_log_level
from aima.resources import Resources
from aima.services import runtime_settings
from aima.services.runtime_settings import RESYNC_S, AppliedVersion
from aima.settings import Settings

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 10.0
#: Numbers the instances of this process, so that two (two apps in one test process) report apart.
_INSTANCES = itertools.count(1)

#: Called with the new settings after each change, in the process's event loop; must not block.
SettingsListener = Callable[[Settings], None]


class ConfigSync:
    """Use as ``async with ConfigSync(resources, role="api"):`` around the life of a process's resources."""

    def __init__(
        self,
        resources: Resources,
        *,
        role: str,
        listeners: Sequence[SettingsListener] = (),
        resync_s: float = RESYNC_S,
    ) -> None:
        self.resources = resources
        instance = next(_INSTANCES)
        #: `api:<host>:<pid>` or `worker:<host>:<pid>`, with `:<n>` from the second instance in a process on.
        self.process_id = f"{role}:{socket.gethostname()}:{os.getpid()}" + (f":{instance}" if instance > 1 else "")
        self.listeners = list(listeners)
        self.resync_s = resync_s
        #: The configuration version this process applied last; None until the first read succeeded.
        self.version: int | None = None
        self._applied_at = datetime.now(UTC)
        self._skipped: dict[str, str] = {}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def _prefix(self) -> str:
        return self.resources.base_settings.redis_prefix

    async def __aenter__(self) -> ConfigSync:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Apply the stored overrides before the process serves; a backend that is down only delays them."""
        try:
            await self._subscribe()
        except Exception as exc:
            logger.warning("cannot listen for configuration changes yet (%s); retrying", exc)
        try:
            await self.sync()
        except Exception as exc:
            logger.warning("cannot read the runtime settings yet (%s); starting with the base settings", exc)
        self._task = asyncio.create_task(self._run(), name=f"config-sync {self.process_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unsubscribe()
        with contextlib.suppress(Exception):
            await runtime_settings.forget_applied(self.resources.redis, self._prefix, self.process_id)

    async def sync(self) -> None:
        """Read the overrides, swap the settings when they changed, and report the version applied."""
        async with self._lock:
            overrides = await runtime_settings.load_overrides(self.resources.engine)
            settings, skipped = runtime_settings.apply_overrides(self.resources.base_settings, overrides.values)
            self._apply(overrides.version, settings, skipped)
        await self._report()

    def _apply(self, version: int, settings: Settings, skipped: dict[str, str]) -> None:
        for key, reason in skipped.items():
            if self._skipped.get(key) != reason:
                logger.warning("runtime setting %s is not applied: %s", key, reason)
        self._skipped = skipped
        previous = self.resources.settings
        before = runtime_settings.runtime_values(previous)
        after = runtime_settings.runtime_values(settings)
        changed = {key: value for key, value in after.items() if before[key] != value}
        if version != self.version:
            self._applied_at = datetime.now(UTC)
        self.version = version
        if not changed:
            return
        self.resources.settings = settings
        if "log_level" in changed:
            set_log_level(settings.log_level)
        logger.info(
            "configuration version %d applied: %s",
            version,
            ", ".join(f"{key}={json.dumps(value)} (was {json.dumps(before[key])})" for key, value in changed.items()),
        )
        for listener in self.listeners:
            try:
                listener(settings)
            except Exception:
                logger.exception("a configuration listener failed")

    async def _report(self) -> None:
        if self.version is None:
            return
        entry = AppliedVersion(
            process=self.process_id,
            version=self.version,
            applied_at=self._applied_at,
            seen_at=datetime.now(UTC),
            values=runtime_settings.runtime_values(self.resources.settings),
        )
        try:
            await runtime_settings.record_applied(self.resources.redis, self._prefix, entry)
        except Exception as exc:
            logger.warning("could not report configuration version %d (%s)", self.version, exc)

    async def _subscribe(self) -> None:
        if self._pubsub is None:
            pubsub = self.resources.redis.pubsub()
            try:
                await pubsub.subscribe(runtime_settings.config_channel(self._prefix))
            except BaseException:
                await self._close(pubsub)
                raise
            self._pubsub = pubsub

    async def _unsubscribe(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await self._close(pubsub)

    @staticmethod
    async def _close(pubsub: PubSub) -> None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        next_sync = loop.time() + self.resync_s
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                    await self.sync()  # catch up with what was announced while nobody listened
                    next_sync = loop.time() + self.resync_s
                assert self._pubsub is not None
                message = await self._next_message(self._pubsub, max(0.0, next_sync - loop.time()))
                if message is not None or loop.time() >= next_sync:
                    await self.sync()
                    next_sync = loop.time() + self.resync_s
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("configuration sync failed (%s); retrying in %.1f s", exc, backoff)
                await self._unsubscribe()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    @staticmethod
    async def _next_message(pubsub: PubSub, wait_s: float) -> Any:
        """The next announcement within `wait_s` (None without one); announcements already waiting are merged."""
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait_s)
        if message is not None:
            while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0) is not None:
                pass  # one read serves every change announced meanwhile
        return message
