"""Event streams on the real Redis: numbering, keeping, expiry, and the per-process hub that relays them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from aima import events
from aima.events import (
    EventLog,
    EventsLost,
    JobEvent,
    event_feed,
    events_after,
    events_before,
    hub_of,
    last_event,
    publish,
)
from aima.settings import Settings


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def event(job_id: str, n: int, **values: object) -> JobEvent:
    fields: dict[str, object] = {
        "job_state": "running",
        "task_id": "t1",
        "analyzer": "a",
        "task_state": "running",
        "progress": 0.5,
        "message": f"step {n}",
    }
    fields.update(values)
    return JobEvent(job_id=job_id, **fields)  # type: ignore[arg-type]


def new_id() -> str:
    return str(uuid.uuid4())


async def test_each_stream_numbers_its_events_from_one(redis: Redis, settings: Settings) -> None:
    prefix, case_id = settings.redis_prefix, new_id()
    first, second = new_id(), new_id()
    assert [await publish(redis, prefix, event(first, n, case_id=case_id)) for n in range(3)] == [1, 2, 3]
    assert await publish(redis, prefix, event(second, 0, case_id=case_id)) == 1
    assert await publish(redis, prefix, event(second, 1)) == 2  # without its case: not in the case's stream

    stored = await events_after(redis, EventLog.of_job(prefix, first), 0)
    assert [(e.seq, e.message, e.case_id) for e in stored] == [(n + 1, f"step {n}", case_id) for n in range(3)]
    in_case = await events_after(redis, EventLog.of_case(prefix, case_id), 0)
    assert [(e.seq, e.job_id, e.message) for e in in_case] == [
        (1, first, "step 0"),
        (2, first, "step 1"),
        (3, first, "step 2"),
        (4, second, "step 0"),
    ]
    assert await events_after(redis, EventLog.of_job(prefix, first), 2) == stored[2:]
    seq, last = await last_event(redis, EventLog.of_job(prefix, second))
    assert (seq, last and last.seq, last and last.message) == (2, 2, "step 1")


async def test_streams_are_capped_and_expire(redis: Redis, settings: Settings) -> None:
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)
    for n in range(400):
        await publish(redis, prefix, event(job_id, n), keep=10)
    kept = await redis.xlen(log.stream)
    assert 10 <= kept < 400  # trimmed by whole nodes of entries (100 by default), never below the cap
    assert (await last_event(redis, log))[0] == 400
    assert 23 * 3600 < await redis.ttl(log.stream) <= events.KEEP_S

    short = new_id()
    await publish(redis, prefix, event(short, 0), ttl_s=1)
    assert await redis.exists(EventLog.of_job(prefix, short).stream)
    await asyncio.sleep(1.5)
    assert not await redis.exists(EventLog.of_job(prefix, short).stream)
    assert await last_event(redis, EventLog.of_job(prefix, short)) == (0, None)


async def test_a_running_task_gets_an_eta_from_its_progress(redis: Redis, settings: Settings) -> None:
    prefix, job_id = settings.redis_prefix, new_id()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    at = [start + timedelta(seconds=s) for s in (0, 3, 8)]
    await publish(redis, prefix, event(job_id, 0, progress=0.0, at=at[0].isoformat()))
    await publish(redis, prefix, event(job_id, 1, progress=0.25, at=at[1].isoformat()))
    await publish(redis, prefix, event(job_id, 2, progress=0.8, eta_s=42.0, at=at[2].isoformat()))  # given: kept
    await publish(redis, prefix, event(job_id, 3, progress=1.0, task_state="succeeded"))
    stored = await events_after(redis, EventLog.of_job(prefix, job_id), 0)
    assert [e.eta_s for e in stored] == [None, 9.0, 42.0, None]


async def test_a_feed_delivers_stored_then_live_events_once_in_order(redis: Redis, settings: Settings) -> None:
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)
    for n in range(5):
        await publish(redis, prefix, event(job_id, n))
    async with event_feed(redis, log) as feed:
        feed.restart(2)
        feed.check()
        for n in range(5, 8):
            await publish(redis, prefix, event(job_id, n))
        got = [await feed.next(wait_s=2) for _ in range(6)]
        assert [(e.seq, e.message) for e in got if e] == [(n + 1, f"step {n}") for n in range(2, 8)]
        assert await feed.next(wait_s=0.2) is None


async def test_stored_events_read_back_latest_first(redis: Redis, settings: Settings) -> None:
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)
    for n in range(5):
        await publish(redis, prefix, event(job_id, n))
    assert [e.seq for e in await events_before(redis, log, 4, count=2)] == [4, 3]
    assert [e.message for e in await events_before(redis, log, 2)] == ["step 1", "step 0"]
    assert await events_before(redis, EventLog.of_job(prefix, new_id()), 10) == []


async def test_a_feed_at_a_clients_position_and_epoch_tells_a_stream_made_anew_that_grew_past_it(
    redis: Redis, settings: Settings
) -> None:
    """The client saw 1..7 of the old stream; Redis made the stream anew, and it has 9 events when the client is
    back: its epoch, not its number, tells that 8 and 9 are not the old stream's."""
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)
    for n in range(10):
        await publish(redis, prefix, event(job_id, n))
    [seventh] = await events_after(redis, log, 6, count=1)
    await redis.delete(log.stream)
    for n in range(9):
        await publish(redis, prefix, event(job_id, 100 + n))
    _, last = await last_event(redis, log)
    assert last is not None and last.epoch != seventh.epoch
    async with event_feed(redis, log) as feed:
        feed.restart(7, seventh.epoch)
        feed.check()
        with pytest.raises(EventsLost):
            await feed.next(wait_s=1)


async def test_a_feed_says_when_the_events_it_needs_are_gone(redis: Redis, settings: Settings) -> None:
    prefix = settings.redis_prefix
    trimmed, expired = new_id(), new_id()
    for n in range(300):
        await publish(redis, prefix, event(trimmed, n), keep=10)
    async with event_feed(redis, EventLog.of_job(prefix, trimmed)) as feed:
        feed.restart(1)
        feed.check()
        with pytest.raises(EventsLost):
            await feed.next(wait_s=1)
        first_kept = (await events_after(redis, feed.log, 0, count=1))[0].seq or 0
        feed.restart(first_kept - 1)
        feed.check()
        assert (await feed.next(wait_s=1)) is not None

    await publish(redis, prefix, event(expired, 0))
    async with event_feed(redis, EventLog.of_job(prefix, expired)) as feed:
        await redis.delete(feed.log.stream)  # as when it expired, or Redis restarted without its data
        feed.restart(1)
        feed.check()
        with pytest.raises(EventsLost):
            await feed.next(wait_s=1)


async def test_a_feed_tells_a_stream_made_anew_from_its_own(redis: Redis, settings: Settings) -> None:
    """Redis lost its data and the job went on: the new stream counts from 1 again, and its number 3 is not the
    old number 3. Whether the feed reads it live or from the stream, it reports the old events as lost."""
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)
    for n in range(2):
        await publish(redis, prefix, event(job_id, n))
    seq, last = await last_event(redis, log)
    assert last is not None and last.epoch
    for live in (True, False):
        async with event_feed(redis, log) as feed:
            feed.restart(seq, last.epoch)
            await redis.delete(log.stream)
            for n in range(3):
                await publish(redis, prefix, event(job_id, 10 + n))
            if not live:
                feed.restart(seq, last.epoch)  # forget what arrived live: read the stream
                feed.check()
            with pytest.raises(EventsLost):
                await feed.next(wait_s=1)
            new_seq, new_last = await last_event(redis, log)
            assert new_last is not None and new_last.epoch != last.epoch
            feed.restart(new_seq, new_last.epoch)
            await publish(redis, prefix, event(job_id, 20))
            follow_up = await feed.next(wait_s=1)
            assert follow_up is not None and follow_up.message == "step 20" and follow_up.epoch == new_last.epoch
        await redis.delete(log.stream)
        for n in range(2):
            await publish(redis, prefix, event(job_id, n))
        seq, last = await last_event(redis, log)
        assert last is not None


async def test_a_slow_subscriber_reads_what_overflowed_from_the_stream(
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "FEED_BUFFER", 5)
    prefix, job_id = settings.redis_prefix, new_id()
    async with event_feed(redis, EventLog.of_job(prefix, job_id)) as feed:
        for n in range(30):
            await publish(redis, prefix, event(job_id, n))
        await asyncio.sleep(0.2)  # all arrived while nobody read
        got = [await feed.next(wait_s=2) for _ in range(30)]
        assert [e.seq for e in got if e] == list(range(1, 31))
        assert await feed.next(wait_s=0.2) is None


async def test_one_subscription_per_stream_and_process(redis: Redis, settings: Settings) -> None:
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)

    async def listeners() -> int:
        counts = await redis.pubsub_numsub(log.channel)
        return int(counts[0][1])

    async with event_feed(redis, log) as first, event_feed(redis, log) as second:
        assert await listeners() == 1
        await publish(redis, prefix, event(job_id, 0))
        assert (await first.next(wait_s=2), await second.next(wait_s=2)) != (None, None)
    assert await listeners() == 0


async def test_a_feed_catches_up_after_the_connection_dropped(
    redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    prefix, job_id = settings.redis_prefix, new_id()
    log = EventLog.of_job(prefix, job_id)
    async with event_feed(redis, log) as feed:
        await publish(redis, prefix, event(job_id, 0))
        assert (await feed.next(wait_s=2) or event(job_id, -1)).seq == 1
        connection = hub_of(redis)._pubsub.connection
        assert connection is not None
        host, port = connection._writer.get_extra_info("sockname")[:2]  # type: ignore[attr-defined]
        await redis.client_kill_filter(_type=None, addr=f"{host}:{port}")
        for n in range(1, 4):  # published while the hub reconnects: some of them reach it only from the stream
            await publish(redis, prefix, event(job_id, n))
        got = [await feed.next(wait_s=5) for _ in range(3)]
        assert [e.seq for e in got if e] == [2, 3, 4]
        await publish(redis, prefix, event(job_id, 4))
        assert (await feed.next(wait_s=5) or event(job_id, -1)).seq == 5
    assert any("lost the Redis connection" in r.getMessage() for r in caplog.records)
