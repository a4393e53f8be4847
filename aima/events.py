"""Job progress events: workers publish, API subscriptions relay them to clients.

PostgreSQL stays the state of record; an event is a notification that a task or job changed, carrying enough for a
client to update its view without another query.

Each event is kept, numbered, in a Redis Stream per job (and per case, when the event names its case): entry id
``<seq>-0``, so ``seq`` counts 1, 2, 3 … per stream without gaps. A stream is capped (`KEEP_EVENTS`, approximately)
and expires `KEEP_S` after its last event. The same script that appends the event publishes it on the stream's
pub/sub channel, so a client that reconnects with the last number it saw can be sent exactly what it missed, and a
live one gets each event without another Redis round trip.

In an API process, one `EventHub` per Redis client holds one pub/sub connection for all its subscriptions: each
stream's channel is subscribed once, however many clients follow it, and every message is parsed once and handed to
each local `EventFeed`. A feed delivers events strictly in order: a number it has not seen yet but that is not the
next one (a message lost while the connection was down, or dropped because the client was slow) makes it read the
missing ones from the stream; when the stream no longer holds them it raises `EventsLost`, and the caller sends the
current state instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: About how many events a stream keeps (Redis trims whole nodes of entries, so a few more may stay).
KEEP_EVENTS = 10_000
#: How long a stream is kept after its last event.
KEEP_S = 24 * 3600
#: How many live events wait for a slow subscriber before it is sent to read them from the stream instead.
FEED_BUFFER = 1_000
#: How many stored events one read of a stream returns.
READ_BATCH = 500


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
    #: The job's case: the event then also goes to the case's stream (`caseEvents`).
    case_id: str | None = None
    #: Its number in the stream it was read from (the job's, or the case's); None before it is published.
    seq: int | None = None
    #: Seconds until the task (or, without a task, the job) is expected to end, where that can be estimated.
    eta_s: float | None = None
    #: Names the stream the event was numbered in: a stream made anew (Redis lost its data) has another, so a
    #: feed can tell its number 7 from the old stream's number 7. None before it is published.
    epoch: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: str | bytes) -> JobEvent:
        values = json.loads(data)
        if not isinstance(values, dict):
            raise ValueError("an event is a JSON object")
        return cls(**{k: v for k, v in values.items() if k in _FIELDS})


_FIELDS = frozenset(f.name for f in dataclasses.fields(JobEvent))


def job_channel(prefix: str, job_id: str) -> str:
    return f"{prefix}:events:job:{job_id}"


def case_channel(prefix: str, case_id: str) -> str:
    return f"{prefix}:events:case:{case_id}"


@dataclass(frozen=True)
class EventLog:
    """Where the events of one job or case are kept (a stream) and announced (a pub/sub channel)."""

    channel: str

    @property
    def stream(self) -> str:
        return f"{self.channel}:stream"

    @classmethod
    def of_job(cls, prefix: str, job_id: str) -> EventLog:
        return cls(job_channel(prefix, job_id))

    @classmethod
    def of_case(cls, prefix: str, case_id: str) -> EventLog:
        return cls(case_channel(prefix, case_id))


# Appends one event to the job's stream (and the case's), numbering it there, and publishes it, atomically.
# KEYS: job stream, the job's task start times, [case stream]
# ARGV: event JSON without "seq" (nor "eta_s" unless given), keep, ttl_s, job channel, case channel,
#       task id, "start" | "eta" | "", the event's time (epoch seconds), progress, a new stream's epoch
# A stream's epoch is set by its first entry and copied into every later one (field "x").
_APPEND = """
local body = ARGV[1]
if ARGV[7] == 'start' then
  redis.call('HSET', KEYS[2], ARGV[6], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
elseif ARGV[7] == 'eta' then
  local started = redis.call('HGET', KEYS[2], ARGV[6])
  if started then
    local p = tonumber(ARGV[9])
    local eta = (tonumber(ARGV[8]) - tonumber(started)) * (1 - p) / p
    if eta < 0 then eta = 0 end
    body = '{"eta_s": ' .. string.format('%.3f', eta) .. ', ' .. string.sub(body, 2)
  end
end
local function append(stream, channel)
  local seq = 1
  local epoch = ARGV[10]
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 then
    seq = tonumber(string.match(last[1][1], '^%d+')) + 1
    epoch = 'old'
    local fields = last[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'x' then epoch = fields[i + 1] end
    end
  end
  local payload = '{"seq": ' .. string.format('%d', seq) .. ', "epoch": "' .. epoch .. '", ' .. string.sub(body, 2)
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], string.format('%d-0', seq), 'e', payload, 'x', epoch)
  redis.call('EXPIRE', stream, ARGV[3])
  redis.call('PUBLISH', channel, payload)
  return seq
end
local seqs = {append(KEYS[1], ARGV[4])}
if #KEYS > 2 then seqs[2] = append(KEYS[3], ARGV[5]) end
return seqs
"""


async def publish(redis: Redis, prefix: str, event: JobEvent, *, keep: int = KEEP_EVENTS, ttl_s: int = KEEP_S) -> int:
    """Keep and announce the event; returns its number in the job's stream.

    A running task's ETA is estimated here when the event has none: the time since the task's start event (progress
    0) times (1 - p) / p.
    """
    job_log = EventLog.of_job(prefix, event.job_id)
    keys = [job_log.stream, f"{job_log.channel}:starts"]
    case_log = EventLog.of_case(prefix, event.case_id) if event.case_id else None
    if case_log is not None:
        keys.append(case_log.stream)
    body = {k: v for k, v in asdict(event).items() if k not in ("seq", "epoch") and not (k == "eta_s" and v is None)}
    mode = ""
    if event.task_id is not None and event.task_state == "running" and event.eta_s is None:
        mode = "start" if event.progress <= 0 else "eta" if event.progress < 1 else ""
    at = datetime.fromisoformat(event.at).timestamp()
    args: list[str | int | float] = [
        json.dumps(body),
        keep,
        ttl_s,
        job_log.channel,
        case_log.channel if case_log else "",
        event.task_id or "",
        mode,
        repr(float(at)),
        repr(float(event.progress)),  # an analyzer's numpy float would print as np.float64(...)
        uuid.uuid4().hex[:16],
    ]
    seqs: list[int] = await redis.register_script(_APPEND)(keys=keys, args=args)
    return int(seqs[0])


def _entry_event(entry: Any) -> JobEvent:
    """The event of a stream entry (id, {b"e": payload}), numbered by its id."""
    entry_id, fields = entry
    event = JobEvent.from_json(fields[b"e"])
    return dataclasses.replace(event, seq=_seq_of(entry_id))


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def last_event(redis: Redis, log: EventLog) -> tuple[int, JobEvent | None]:
    """The stream's last number (0 when it holds nothing) and event."""
    entries = await redis.xrevrange(log.stream, count=1)
    if not entries:
        return 0, None
    try:
        event = _entry_event(entries[0])
    except (KeyError, TypeError, ValueError):
        return _seq_of(entries[0][0]), None
    return event.seq or 0, event


async def events_after(redis: Redis, log: EventLog, after: int, count: int = READ_BATCH) -> list[JobEvent]:
    """Up to `count` stored events numbered above `after`, in order."""
    entries = await redis.xrange(log.stream, min=f"{after + 1}-0", max="+", count=count)
    return _parsed(log, entries)


async def events_before(redis: Redis, log: EventLog, upto: int, count: int = READ_BATCH) -> list[JobEvent]:
    """Up to `count` stored events numbered `upto` or below, the latest first."""
    entries = await redis.xrevrange(log.stream, max=f"{upto}-0", min="-", count=count)
    return _parsed(log, entries)


def _parsed(log: EventLog, entries: list[Any]) -> list[JobEvent]:
    """The events of stream entries; a malformed one is logged and dropped rather than ending the reader."""
    events = []
    for entry in entries:
        try:
            events.append(_entry_event(entry))
        except (KeyError, TypeError, ValueError):
            logger.warning("dropped a malformed event %r on %s", entry[0], log.stream)
    return events


class EventsLost(Exception):
    """The events after the feed's position are no longer kept (trimmed, expired, or Redis lost its data)."""


class _Check:
    """Marks a point where a feed must compare its position with the stream."""


_CHECK = _Check()


class EventFeed:
    """One subscriber's events of one stream, each once and in order from `position` + 1.

    Enter it before reading the state the events change (`async with event_feed(redis, log) as feed`): from then on
    nothing published is missed. Then `restart` it at the number that state is current at (`last_event`, read before
    the state), or at the last number a client saw followed by a `check`; `next` continues from there.
    """

    def __init__(self, redis: Redis, hub: EventHub, log: EventLog) -> None:
        self.log = log
        #: The number of the last event delivered (or that the state sent instead was current at).
        self.position = 0
        #: The epoch of the stream `position` counts in; None until known (the stream was empty).
        self.epoch: str | None = None
        self._redis = redis
        self._hub = hub
        self._stored: deque[JobEvent] = deque()
        self._live: deque[JobEvent | _Check] = deque()
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> EventFeed:
        await self._hub.join(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._hub.leave(self)

    def push(self, event: JobEvent) -> None:
        """A live event (from the hub)."""
        if len(self._live) >= FEED_BUFFER:
            # A subscriber this far behind reads from the stream instead; the buffer stays bounded.
            self._live.clear()
            self._live.append(_CHECK)
        else:
            self._live.append(event)
        self._arrived.set()

    def check(self) -> None:
        """Compare the position with the stream before the next live event (after a reconnection, a quiet while)."""
        self._live.append(_CHECK)
        self._arrived.set()

    def restart(self, position: int, epoch: str | None = None) -> None:
        """Continue after `position` of the stream of `epoch` (the number a fresh state was current at, and the
        epoch of `last_event`; None for an empty stream or where unknown), forgetting what was read ahead."""
        self.position = position
        self.epoch = epoch
        self._stored.clear()

    def _follows(self, event: JobEvent) -> bool:
        """Whether the event continues this feed's stream; adopts the stream's epoch when not known yet."""
        if event.epoch is None or event.epoch == self.epoch:
            return True
        if self.epoch is None:
            self.epoch = event.epoch
            return True
        return False

    async def next(self, wait_s: float) -> JobEvent | None:
        """The event after `position`, or None when none came within `wait_s` seconds.

        Raises `EventsLost` when the stream no longer holds it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            while self._stored:
                event = self._stored.popleft()
                if not self._follows(event):
                    raise EventsLost(f"{self.log.stream} was made anew: the events after {self.position} are gone")
                if event.seq is not None and event.seq > self.position:
                    if event.seq != self.position + 1:
                        raise EventsLost(f"{self.log.stream}: {self.position + 1} to {event.seq - 1} are gone")
                    self.position = event.seq
                    return event
            while self._live:
                item = self._live.popleft()
                if isinstance(item, _Check) or (item.seq or 0) > self.position + 1:
                    await self._read_stored()
                    break
                if (item.seq or 0) == self.position + 1:
                    if not self._follows(item):
                        raise EventsLost(f"{self.log.stream} was made anew: the events after {self.position} are gone")
                    self.position += 1
                    return item
            else:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                self._arrived.clear()
                try:
                    async with asyncio.timeout(left):
                        await self._arrived.wait()
                except TimeoutError:
                    return None

    async def _read_stored(self) -> None:
        events = await events_after(self._redis, self.log, self.position)
        if events:
            if events[0].seq != self.position + 1:
                raise EventsLost(f"{self.log.stream} begins at {events[0].seq}, after {self.position} was asked for")
            self._stored.extend(events)
            return
        last, event = await last_event(self._redis, self.log)
        if last < self.position or (event is not None and not self._follows(event)):
            raise EventsLost(f"{self.log.stream} ends at {last}, before {self.position}: its events were lost")


class EventHub:
    """The live events of many streams over one pub/sub connection, each message handed to every local feed."""

    def __init__(self, redis: Redis) -> None:
        self._pubsub: PubSub = redis.pubsub()
        self._feeds: dict[str, set[EventFeed]] = {}
        self._subscribed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    def feed(self, redis: Redis, log: EventLog) -> EventFeed:
        return EventFeed(redis, self, log)

    async def join(self, feed: EventFeed) -> None:
        """Add the feed, and return once Redis confirmed the subscription to its channel."""
        channel = feed.log.channel
        async with self._lock:
            self._feeds.setdefault(channel, set()).add(feed)
            confirmed = self._subscribed.get(channel)
            if confirmed is None:
                confirmed = self._subscribed[channel] = asyncio.Event()
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    self._forget(feed)
                    raise
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(), name="aima-event-hub")
        try:
            async with asyncio.timeout(5):
                await confirmed.wait()
        except BaseException:
            await self.leave(feed)
            raise

    async def leave(self, feed: EventFeed) -> None:
        # Forgotten before the first await: a subscription cancelled while it leaves leaves nothing behind.
        channel = self._forget(feed)
        async with self._lock:
            if channel is not None and channel not in self._feeds:  # unless another feed joined it meanwhile
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)
            if not self._feeds and self._reader is not None:
                # Nobody listens: end the reader and hand the connection back (the next `join` takes one again).
                reader, self._reader = self._reader, None
                reader.cancel()
                await asyncio.wait([reader], timeout=1)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def _forget(self, feed: EventFeed) -> str | None:
        """Remove the feed; returns its channel when it was the channel's last."""
        channel = feed.log.channel
        feeds = self._feeds.get(channel)
        if feeds is None:
            return None
        feeds.discard(feed)
        if feeds:
            return None
        del self._feeds[channel]
        self._subscribed.pop(channel, None)
        return channel

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                # A timeout, so the connection's health check (a PING every few seconds) runs while it is quiet.
                message = await self._pubsub.get_message(timeout=5.0)
            except Exception as exc:  # the connection, mostly: it reconnects on the next read
                failures += 1
                logger.warning("event hub: lost the Redis connection (%s: %s); reconnecting", type(exc).__name__, exc)
                # Redis re-subscribes on reconnection; each confirmation then has the feeds check their streams.
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            failures = 0
            if message is None:
                continue
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            kind = message["type"]
            if kind == "message":
                feeds = self._feeds.get(channel)
                if not feeds:
                    continue
                try:
                    event = JobEvent.from_json(message["data"])
                except (TypeError, ValueError):
                    logger.warning("dropped a malformed event on %s", channel)
                    continue
                for feed in feeds:
                    feed.push(event)
            elif kind == "subscribe":
                confirmed = self._subscribed.get(channel)
                if confirmed is None:
                    continue
                if confirmed.is_set():  # subscribed again after a reconnection: something may have been missed
                    for feed in self._feeds.get(channel, ()):
                        feed.check()
                confirmed.set()


_hubs: weakref.WeakKeyDictionary[Redis, EventHub] = weakref.WeakKeyDictionary()


def hub_of(redis: Redis) -> EventHub:
    """The hub of this Redis client (made on first use, gone with the client): one per API process."""
    hub = _hubs.get(redis)
    if hub is None:
        hub = _hubs[redis] = EventHub(redis)
    return hub


def event_feed(redis: Redis, log: EventLog) -> EventFeed:
    """A feed of the log's events through the client's hub; enter it with ``async with``."""
    return hub_of(redis).feed(redis, log)


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
