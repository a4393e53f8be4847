"""Live progress: `jobEvents` and `caseEvents` send the state, then every change, numbered; a client that reconnects
with the last number it saw gets every change it missed, once.

Events are published here the way workers publish them (`aima.events.publish`) into the jobs of an API whose queue
no worker serves, so they are exactly the ones the test sends; one test follows a real job through a real worker.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Job as JobRow
from aima.db.models import JobState, Role, Task, TaskState
from aima.events import EventLog, JobEvent, events_after, publish
from aima.plugins import AnalyzerRegistry
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import new_case
from tests.conftest import Servers, settings_for
from tests.gql import PASSWORD, GraphQLClient, login, register, run_sync

EVENT_FIELDS = "jobId jobState taskId taskState progress message seq etaS caseId snapshot resync"
JOB_EVENTS = f"""
subscription($jobId: ID!, $after: Int) {{
  jobEvents(jobId: $jobId, after: $after) {{ {EVENT_FIELDS} tasks {{ id analyzer state }} }}
}}
"""
CASE_EVENTS = f"""
subscription($caseId: ID!, $after: Int) {{
  caseEvents(caseId: $caseId, after: $after) {{
    caseId seq snapshot resync
    jobs {{ {EVENT_FIELDS} tasks {{ id analyzer state }} }}
    event {{ {EVENT_FIELDS} }}
  }}
}}
"""
ANALYZE = 'mutation($m: ID!) { analyzeMedia(mediaId: $m, analyzers: ["media-probe"]) { id tasks { id } } }'


@pytest.fixture(scope="module")
def quiet(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[tuple[TestClient, Settings]]:
    """An API on a queue of its own that no worker serves: its jobs stay queued, and only the test's events come."""
    settings = settings_for(servers)
    with TestClient(create_app(settings, analyzers=analyzers)) as http:
        yield http, settings


class Subscription:
    """One graphql-transport-ws subscription, read a message at a time."""

    def __init__(self, ws: Any, field: str) -> None:
        self.ws = ws
        self.field = field

    def next(self) -> dict[str, Any] | None:
        """The next event; None when the server completed the subscription."""
        while True:
            message = self.ws.receive_json()
            if message["type"] == "next":
                payload = message["payload"]
                assert not payload.get("errors"), payload
                data: dict[str, Any] = payload["data"][self.field]
                return data
            if message["type"] == "complete":
                return None
            assert message["type"] in ("ping", "pong"), message

    def error(self) -> dict[str, Any]:
        message = self.ws.receive_json()
        assert message["type"] in ("next", "error"), message
        errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
        first: dict[str, Any] = errors[0]
        return first

    def rest(self) -> list[dict[str, Any]]:
        """Every event until the server completes the subscription."""
        found = []
        while (item := self.next()) is not None:
            found.append(item)
        return found


@contextlib.contextmanager
def subscribed(http: TestClient, token: str | None, query: str, variables: dict[str, Any]) -> Iterator[Subscription]:
    with http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}})
        yield Subscription(ws, "jobEvents" if "jobEvents" in query else "caseEvents")


def send(settings: Settings, *events: JobEvent, keep: int | None = None) -> list[int]:
    """Publish as a worker does; returns each event's number in its job's stream."""

    async def run() -> list[int]:
        redis = Redis.from_url(settings.redis_url)
        try:
            options = {"keep": keep} if keep is not None else {}
            return [await publish(redis, settings.redis_prefix, event, **options) for event in events]
        finally:
            await redis.aclose()

    numbers: list[int] = run_sync(run())
    return numbers


def stored(settings: Settings, log: EventLog) -> list[JobEvent]:
    async def run() -> list[JobEvent]:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await events_after(redis, log, 0, count=100_000)
        finally:
            await redis.aclose()

    found: list[JobEvent] = run_sync(run())
    return found


class Job:
    def __init__(self, client: GraphQLClient, case_id: str | None = None) -> None:
        self.case_id = case_id or new_case(client, "Live progress")
        media_id = client.upload(self.case_id, make_jpeg(width=50 + random.randrange(50)), filename="a.jpg")["data"][
            "uploadMedia"
        ]["id"]
        job = client.data(ANALYZE, {"m": media_id})["analyzeMedia"]
        self.id: str = job["id"]
        self.task_id: str = job["tasks"][-1]["id"]

    def step(self, n: int, *, with_case: bool = True) -> JobEvent:
        return JobEvent(
            job_id=self.id,
            job_state="running",
            task_id=self.task_id,
            analyzer="media-probe",
            task_state="running",
            progress=min((n + 1) / 1000, 0.99),
            message=f"step {n}",
            case_id=self.case_id if with_case else None,
        )

    def end(self) -> JobEvent:
        return JobEvent(
            job_id=self.id, job_state="succeeded", progress=1.0, message="job succeeded", case_id=self.case_id
        )


def test_events_are_numbered_and_a_reconnecting_client_gets_what_it_missed_once(
    quiet: tuple[TestClient, Settings],
) -> None:
    http, settings = quiet
    client = register(http, f"live-{uuid.uuid4().hex[:6]}@example.org")
    job = Job(client)
    with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id}) as sub:
        first = sub.next()
        assert first is not None
        assert first["snapshot"] and not first["resync"] and first["jobState"] == "QUEUED"
        assert first["caseId"] == job.case_id and len(first["tasks"]) == 2
        start = first["seq"]
        send(settings, *(job.step(n) for n in range(3)))
        seen = [sub.next() for _ in range(3)]
    assert [(e["seq"], e["message"], e["snapshot"]) for e in seen if e] == [
        (start + n + 1, f"step {n}", False) for n in range(3)
    ]
    assert all(e and e["progress"] > 0 and e["taskState"] == "RUNNING" for e in seen)

    missed = send(settings, *(job.step(n) for n in range(3, 7)))  # while disconnected
    with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id, "after": start + 3}) as sub:
        again = [sub.next() for _ in range(4)]
        send(settings, job.step(7), job.end())
        rest = sub.rest()
    assert [(e["seq"], e["message"]) for e in again if e] == [
        (seq, f"step {n}") for seq, n in zip(missed, range(3, 7), strict=True)
    ]
    assert [(e["seq"], e["message"], e["jobState"]) for e in rest] == [
        (start + 8, "step 7", "RUNNING"),
        (start + 9, "job succeeded", "SUCCEEDED"),
    ]

    with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id, "after": start + 7}) as sub:
        assert [e["seq"] for e in sub.rest()] == [start + 8, start + 9]


def test_reconnecting_while_events_are_published_misses_nothing(quiet: tuple[TestClient, Settings]) -> None:
    """The fault test: a subscriber that disconnects and reconnects mid-job receives every event it missed, once."""
    http, settings = quiet
    client = register(http, f"live-{uuid.uuid4().hex[:6]}@example.org")
    job = Job(client)
    total = 300

    def publish_all() -> None:
        for n in range(total):
            send(settings, job.step(n))
            time.sleep(0.002)
        send(settings, job.end())

    received: list[tuple[int, str]] = []
    connections = 0
    with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id}) as sub:
        snapshot = sub.next()
        assert snapshot is not None
        after = snapshot["seq"]
    publisher = threading.Thread(target=publish_all)
    publisher.start()
    try:
        rng = random.Random(7)
        done = False
        while not done:
            connections += 1
            with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id, "after": after}) as sub:
                for _ in range(rng.randrange(1, 40)):
                    item = sub.next()
                    if item is None:
                        done = True
                        break
                    assert not item["snapshot"], item
                    assert item["seq"] == after + 1, (item["seq"], after)  # in order, no gap, no repeat
                    after = item["seq"]
                    received.append((item["seq"], item["message"]))
    finally:
        publisher.join()
    assert [message for _, message in received] == [f"step {n}" for n in range(total)] + ["job succeeded"]
    assert connections > 5
    assert [e.message for e in stored(settings, EventLog.of_job(settings.redis_prefix, job.id))][-total - 1 :] == [
        message for _, message in received
    ]


def test_a_fresh_snapshot_replaces_events_no_longer_kept(quiet: tuple[TestClient, Settings]) -> None:
    http, settings = quiet
    client = register(http, f"live-{uuid.uuid4().hex[:6]}@example.org")
    job = Job(client)
    last = send(settings, *(job.step(n) for n in range(300)), keep=10)[-1]
    with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id, "after": 1}) as sub:
        fresh = sub.next()
        assert fresh is not None
        assert (fresh["snapshot"], fresh["resync"], fresh["seq"], len(fresh["tasks"])) == (True, True, last, 2)
        send(settings, job.step(300))
        following = sub.next()
        assert following is not None and (following["seq"], following["message"]) == (last + 1, "step 300")
    # A number the stream never reached (Redis lost its data since): the state again.
    with subscribed(http, client.token, JOB_EVENTS, {"jobId": job.id, "after": 10**6}) as sub:
        fresh = sub.next()
        assert fresh is not None and (fresh["resync"], fresh["seq"]) == (True, last + 1)


def test_case_events_follow_every_job_of_the_case(quiet: tuple[TestClient, Settings]) -> None:
    http, settings = quiet
    client = register(http, f"live-{uuid.uuid4().hex[:6]}@example.org")
    first = Job(client)
    second = Job(client, first.case_id)
    case = {"caseId": first.case_id}
    with subscribed(http, client.token, CASE_EVENTS, case) as sub:
        state = sub.next()
        assert state is not None
        assert (state["caseId"], state["snapshot"], state["resync"], state["event"]) == (
            first.case_id,
            True,
            False,
            None,
        )
        assert [j["jobId"] for j in state["jobs"]] == [first.id, second.id]
        assert all(len(j["tasks"]) == 2 and j["snapshot"] for j in state["jobs"])
        start = state["seq"]
        send(settings, first.step(0), second.step(0), first.end(), second.step(1, with_case=False), second.step(2))
        seen = [sub.next() for _ in range(4)]
    assert [(e["seq"], e["event"]["jobId"], e["event"]["message"]) for e in seen if e] == [
        (start + 1, first.id, "step 0"),
        (start + 2, second.id, "step 0"),
        (start + 3, first.id, "job succeeded"),  # a job's end does not end the case's subscription
        (start + 4, second.id, "step 2"),  # an event without its case is its job's only
    ]
    assert all(e and not e["snapshot"] and e["event"]["seq"] == e["seq"] for e in seen)

    send(settings, second.step(3), second.step(4))
    with subscribed(http, client.token, CASE_EVENTS, {**case, "after": start + 4}) as sub:
        missed = [sub.next() for _ in range(2)]
        send(settings, second.end())
        live = sub.next()
        # Only the second job is still active: a fresh subscription's state lists it alone.
    with subscribed(http, client.token, CASE_EVENTS, case) as sub:
        now = sub.next()
    assert [(e["seq"], e["event"]["message"]) for e in missed if e] == [(start + 5, "step 3"), (start + 6, "step 4")]
    assert live is not None and (live["seq"], live["event"]["jobState"]) == (start + 7, "SUCCEEDED")
    # The events changed no row: the state of record still has both jobs queued.
    assert now is not None and now["seq"] == start + 7 and len(now["jobs"]) == 2


def test_case_events_need_read_access_to_the_case(quiet: tuple[TestClient, Settings]) -> None:
    http, settings = quiet
    tag = uuid.uuid4().hex[:6]
    owner = register(http, f"owner-{tag}@example.org")
    viewer = register(http, f"viewer-{tag}@example.org")
    other = register(http, f"other-{tag}@example.org")
    job = Job(owner)
    owner.data(
        "mutation($c: ID!, $e: String!) { shareCase(caseId: $c, email: $e, role: VIEWER) { role } }",
        {"c": job.case_id, "e": f"viewer-{tag}@example.org"},
    )
    for reader in (owner, viewer):
        with subscribed(http, reader.token, CASE_EVENTS, {"caseId": job.case_id}) as sub:
            state = sub.next()
            assert state is not None and [j["jobId"] for j in state["jobs"]] == [job.id]
        with subscribed(http, reader.token, JOB_EVENTS, {"jobId": job.id}) as sub:
            assert (sub.next() or {}).get("jobId") == job.id
    for after in (None, 0):
        with subscribed(http, other.token, CASE_EVENTS, {"caseId": job.case_id, "after": after}) as sub:
            assert sub.error()["extensions"]["code"] == "NOT_FOUND"
        with subscribed(http, other.token, JOB_EVENTS, {"jobId": job.id, "after": after}) as sub:
            assert sub.error()["extensions"]["code"] == "NOT_FOUND"
    with subscribed(http, other.token, CASE_EVENTS, {"caseId": str(uuid.uuid4())}) as sub:
        assert sub.error()["extensions"]["code"] == "NOT_FOUND"

    with http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {}})
        with pytest.raises(Exception) as closed:
            ws.receive_json()
        assert getattr(closed.value, "code", None) == 4403

    admin_email = f"admin-{tag}@example.org"
    run_sync(create_account(settings, admin_email, PASSWORD, Role.ADMIN))
    other_id = other.data("{ me { id } }")["me"]["id"]
    entries = login(http, admin_email).data(
        'query($a: ID) { auditLog(action: "access.denied", actorId: $a) { details } }', {"a": other_id}
    )["auditLog"]
    operations = [e["details"]["operation"] for e in entries]
    assert operations.count("caseEvents") == 3 and operations.count("jobEvents") == 2, operations


def test_a_real_job_followed_across_a_reconnection(
    http: TestClient, people: People, settings: Settings, worker: object
) -> None:
    owner = people.owner
    job = Job(owner)
    with subscribed(http, owner.token, JOB_EVENTS, {"jobId": job.id}) as sub:
        first = sub.next()
        assert first is not None
        seen = [first["seq"]]
    # The worker goes on meanwhile; reconnecting with the last number seen brings the rest, then the end.
    deadline = time.monotonic() + 30
    while owner.data("query($j: ID!) { job(id: $j) { state } }", {"j": job.id})["job"]["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with subscribed(http, owner.token, JOB_EVENTS, {"jobId": job.id, "after": first["seq"]}) as sub:
        rest = sub.rest()
    kept = stored(settings, EventLog.of_job(settings.redis_prefix, job.id))
    if kept[-1].task_id is None:  # the stream has the job's end: the rest is every event after the first snapshot
        assert [(e["seq"], e["message"]) for e in rest] == [(e.seq, e.message) for e in kept if e.seq > seen[0]]
    else:  # its end was not published (yet): the state of record ended the subscription instead
        assert rest[-1]["snapshot"] and rest[-1]["jobState"] == "SUCCEEDED"
    assert rest[-1]["jobState"] == "SUCCEEDED"
    # Reconnecting after the end: nothing was missed, and the subscription completes at once.
    with subscribed(http, owner.token, JOB_EVENTS, {"jobId": job.id, "after": rest[-1]["seq"]}) as sub:
        assert sub.rest() == []


EPOCH_EVENTS = f"""
subscription($jobId: ID!, $after: Int, $epoch: String) {{
  jobEvents(jobId: $jobId, after: $after, epoch: $epoch) {{ {EVENT_FIELDS} epoch tasks {{ id state }} }}
}}
"""
EPOCH_CASE_EVENTS = f"""
subscription($caseId: ID!, $after: Int, $epoch: String) {{
  caseEvents(caseId: $caseId, after: $after, epoch: $epoch) {{
    caseId seq epoch snapshot resync jobs {{ jobId seq epoch }} event {{ {EVENT_FIELDS} epoch }}
  }}
}}
"""


def forget(settings: Settings, log: EventLog) -> None:
    """What Redis restarting without its data does to a stream."""

    async def run() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            await redis.delete(log.stream)
        finally:
            await redis.aclose()

    run_sync(run())


def test_a_client_back_after_redis_made_the_stream_anew_gets_the_state(quiet: tuple[TestClient, Settings]) -> None:
    """The new stream has grown past the client's `after` when it reconnects: its numbers are not the old ones, and
    the client's `epoch` tells them apart."""
    http, settings = quiet
    client = register(http, f"live-{uuid.uuid4().hex[:6]}@example.org")
    job = Job(client)
    with subscribed(http, client.token, EPOCH_EVENTS, {"jobId": job.id}) as sub:
        assert (sub.next() or {}).get("snapshot")
        send(settings, *(job.step(n) for n in range(10)))
        seen = [sub.next() or {} for _ in range(10)]
    old = seen[6]  # the client saw the old stream up to here, then lost its connection
    assert old["epoch"] and {e["epoch"] for e in seen} == {old["epoch"]}
    # Meanwhile with the same epoch: the changes after it, as before.
    with subscribed(
        http, client.token, EPOCH_EVENTS, {"jobId": job.id, "after": old["seq"], "epoch": old["epoch"]}
    ) as sub:
        assert [(e["seq"], e["snapshot"]) for e in (sub.next() or {} for _ in range(3))] == [
            (old["seq"] + n, False) for n in (1, 2, 3)
        ]

    forget(settings, EventLog.of_job(settings.redis_prefix, job.id))
    new = send(settings, *(job.step(100 + n) for n in range(old["seq"] + 2)))
    assert new[-1] > old["seq"]
    with subscribed(
        http, client.token, EPOCH_EVENTS, {"jobId": job.id, "after": old["seq"], "epoch": old["epoch"]}
    ) as sub:
        fresh = sub.next()
        assert fresh is not None
        assert (fresh["snapshot"], fresh["resync"], fresh["seq"], len(fresh["tasks"])) == (True, True, new[-1], 2)
        assert fresh["epoch"] and fresh["epoch"] != old["epoch"]
        send(settings, job.step(200))
        following = sub.next()
        assert following is not None
        assert (following["seq"], following["message"], following["epoch"]) == (new[-1] + 1, "step 200", fresh["epoch"])

    # The case's stream likewise.
    case_log = EventLog.of_case(settings.redis_prefix, job.case_id)
    with subscribed(http, client.token, EPOCH_CASE_EVENTS, {"caseId": job.case_id}) as sub:
        state = sub.next()
        assert state is not None and state["epoch"] and [j["epoch"] for j in state["jobs"]] == [state["epoch"]]
        send(settings, job.step(300))
        change = sub.next()
        assert change is not None and change["epoch"] == change["event"]["epoch"] == state["epoch"]
    forget(settings, case_log)
    send(settings, *(job.step(400 + n) for n in range(change["seq"] + 3)))
    variables = {"caseId": job.case_id, "after": change["seq"], "epoch": change["epoch"]}
    with subscribed(http, client.token, EPOCH_CASE_EVENTS, variables) as sub:
        fresh = sub.next()
        assert fresh is not None
        assert (fresh["snapshot"], fresh["resync"], fresh["seq"]) == (True, True, change["seq"] + 3)
        assert fresh["epoch"] and fresh["epoch"] != change["epoch"]


def end_in_postgres(settings: Settings, job_id: str) -> None:
    """Record the job and every task of it as succeeded, as the workers would have."""

    async def run() -> None:
        engine = create_async_engine(settings.database_url)
        try:
            async with engine.begin() as conn:
                now = datetime.now(UTC)
                await conn.execute(
                    update(Task)
                    .where(Task.job_id == uuid.UUID(job_id))
                    .values(state=TaskState.SUCCEEDED, finished_at=now)
                )
                await conn.execute(
                    update(JobRow)
                    .where(JobRow.id == uuid.UUID(job_id))
                    .values(state=JobState.SUCCEEDED, finished_at=now)
                )
        finally:
            await engine.dispose()

    run_sync(run())


def task_end(job: Job, task_id: str) -> JobEvent:
    return JobEvent(
        job_id=job.id,
        job_state="running",
        task_id=task_id,
        task_state="succeeded",
        progress=1.0,
        message="task succeeded",
        case_id=job.case_id,
    )


def test_a_task_end_published_after_its_job_end_comes_as_the_final_state(quiet: tuple[TestClient, Settings]) -> None:
    """Two workers finish a job's last two tasks; the one whose commit closed the job publishes the job's end before
    the other publishes its task's: the subscription, which completes on the job's end, then sends the state of
    record, so that the last thing its subscriber sees has every task's end."""
    http, settings = quiet
    client = register(http, f"live-{uuid.uuid4().hex[:6]}@example.org")
    job = Job(client)
    with subscribed(http, client.token, EPOCH_EVENTS, {"jobId": job.id}) as sub:
        first = sub.next()
        assert first is not None and [t["state"] for t in first["tasks"]] == ["QUEUED", "QUEUED"]
        a, b = (t["id"] for t in first["tasks"])
        end_in_postgres(settings, job.id)
        send(settings, task_end(job, a), job.end())  # b's end is still on its way
        rest = sub.rest()
    assert [(e["taskId"], e["jobState"], e["snapshot"]) for e in rest] == [
        (a, "RUNNING", False),
        (None, "SUCCEEDED", False),
        (None, "SUCCEEDED", True),
    ]
    final = rest[-1]
    assert not final["resync"] and final["seq"] == rest[-2]["seq"]
    assert [t["state"] for t in final["tasks"]] == ["SUCCEEDED", "SUCCEEDED"]
    # A client reconnecting after the job's end, its last task's end still missing, gets the state too.
    with subscribed(http, client.token, EPOCH_EVENTS, {"jobId": job.id, "after": rest[-2]["seq"]}) as sub:
        again = sub.rest()
    assert [(e["snapshot"], e["seq"], [t["state"] for t in e["tasks"]]) for e in again] == [
        (True, rest[-2]["seq"], ["SUCCEEDED", "SUCCEEDED"])
    ]

    # In order, or with the task's end among the events a reconnecting client had: nothing more.
    second = Job(client, job.case_id)
    with subscribed(http, client.token, EPOCH_EVENTS, {"jobId": second.id}) as sub:
        a, b = (t["id"] for t in (sub.next() or {})["tasks"])
    [b_end] = send(settings, task_end(second, b))
    with subscribed(http, client.token, EPOCH_EVENTS, {"jobId": second.id, "after": b_end}) as sub:
        end_in_postgres(settings, second.id)
        send(settings, task_end(second, a), second.end())
        rest = sub.rest()
    assert [(e["taskId"], e["snapshot"]) for e in rest] == [(a, False), (None, False)]
    with subscribed(http, client.token, EPOCH_EVENTS, {"jobId": second.id, "after": rest[-1]["seq"]}) as sub:
        assert sub.rest() == []
