"""Jobs over GraphQL: a whole case in one job, priorities, and the job history page by page."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Job, JobState, Role, Task, TaskState
from aima.plugins import AnalyzerRegistry
from aima.testing.media import make_jpeg, make_wav
from tests.api.conftest import People
from tests.api.test_flow import new_case
from tests.conftest import Servers, settings_for
from tests.gql import PASSWORD, GraphQLClient, login, run_sync

ANALYZE_CASE = """
mutation($c: ID!, $a: [String!], $p: Priority) {
  analyzeCase(caseId: $c, analyzers: $a, priority: $p) {
    id mediaId priority state tasks { analyzer mediaId resource priority dependsOn }
  }
}
"""
HISTORY = """
query($f: JobFilter, $first: Int, $after: String) {
  jobs(filter: $f, first: $first, after: $after) {
    edges { cursor node { id caseId createdAt } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


def code(body: dict[str, object]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if isinstance(errors, list) and errors else None  # type: ignore[index]


def test_a_case_job_covers_every_media_item(people: People) -> None:
    case_id = new_case(people.owner, "Whole case")
    image = people.owner.upload(case_id, make_jpeg(width=50), filename="a.jpg")["data"]["uploadMedia"]["id"]
    audio = people.owner.upload(case_id, make_wav(seconds=1), filename="b.wav")["data"]["uploadMedia"]["id"]
    job = people.owner.data(ANALYZE_CASE, {"c": case_id, "a": ["media-probe"], "p": "HIGH"})["analyzeCase"]
    assert job["mediaId"] is None and job["priority"] == "HIGH"
    probes = sorted(t["mediaId"] for t in job["tasks"] if t["analyzer"] == "media-probe")
    assert probes == sorted([image, audio])
    assert all(t["priority"] == "HIGH" and t["resource"] == "cpu" for t in job["tasks"])


def test_case_jobs_need_media_and_write_access(people: People) -> None:
    empty = new_case(people.owner, "Empty")
    assert code(people.owner.execute(ANALYZE_CASE, {"c": empty})) == "BAD_USER_INPUT"
    assert code(people.other.execute(ANALYZE_CASE, {"c": empty})) == "NOT_FOUND"
    unknown = people.owner.execute(ANALYZE_CASE, {"c": empty, "a": ["no-such-analyzer"]})
    assert code(unknown) in {"UNKNOWN_ANALYZER", "BAD_USER_INPUT"}


def test_job_history_pages_through_every_job_once(people: People) -> None:
    case_id = new_case(people.owner, "History")
    media = people.owner.upload(case_id, make_jpeg(width=51), filename="h.jpg")["data"]["uploadMedia"]["id"]
    started = [
        people.owner.data("mutation($m: ID!) { analyzeMedia(mediaId: $m, priority: LOW) { id } }", {"m": media})[
            "analyzeMedia"
        ]["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    after = None
    while True:
        page = people.owner.data(HISTORY, {"f": {"caseId": case_id}, "first": 2, "after": after})["jobs"]
        seen.extend(edge["node"]["id"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == list(reversed(started))  # newest first, each once
    assert people.other.data(HISTORY, {"f": {"caseId": case_id}})["jobs"]["edges"] == []
    admin_view = people.admin.data(HISTORY, {"f": {"caseId": case_id}, "first": 10})["jobs"]["edges"]
    assert len(admin_view) == 5
    assert code(people.owner.execute(HISTORY, {"after": "garbage"})) == "BAD_USER_INPUT"


@pytest.fixture(scope="module")
def quiet(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[tuple[GraphQLClient, GraphQLClient]]:
    """An API on queues no worker serves (its jobs stay queued), with an owner and a stranger signed in."""
    settings = settings_for(servers)
    with TestClient(create_app(settings, analyzers=analyzers)) as http:
        clients = []
        for name in ("owner", "stranger"):
            email = f"{name}-{uuid.uuid4().hex[:6]}@example.org"
            run_sync(create_account(settings, email, PASSWORD, Role.USER))
            clients.append(login(http, email))
        yield clients[0], clients[1]


CANCEL = "mutation($j: ID!) { cancelJob(jobId: $j) { state cancelRequestedAt tasks { state } } }"
RETRY = "mutation($j: ID!) { retryJob(jobId: $j) { state cancelRequestedAt tasks { state } } }"


def test_cancel_and_retry_a_job(quiet: tuple[GraphQLClient, GraphQLClient], people: People) -> None:
    owner, stranger = quiet
    case_id = new_case(owner, "Cancel")
    media = owner.upload(case_id, make_jpeg(width=52), filename="c.jpg")["data"]["uploadMedia"]["id"]
    job = owner.data("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": media})["analyzeMedia"]
    assert code(stranger.execute(CANCEL, {"j": job["id"]})) == "NOT_FOUND"

    cancelled = owner.data(CANCEL, {"j": job["id"]})["cancelJob"]
    assert cancelled["state"] == "CANCELLED" and cancelled["cancelRequestedAt"]
    assert {t["state"] for t in cancelled["tasks"]} == {"CANCELLED"}

    retried = owner.data(RETRY, {"j": job["id"]})["retryJob"]
    assert retried["state"] == "QUEUED" and retried["cancelRequestedAt"] is None
    assert {t["state"] for t in retried["tasks"]} == {"QUEUED"}
    entries = people.admin.data("query($t: String) { auditLog(targetId: $t) { action } }", {"t": job["id"]})["auditLog"]
    assert {"job.cancel", "job.retry"} <= {e["action"] for e in entries}


async def _one_running(database_url: str, job_id: str) -> None:
    """One queued task of the job without dependencies starts, as a worker's claim would start it."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            ready = select(Task.id).where(Task.job_id == uuid.UUID(job_id), Task.depends_on == [])
            first = ready.limit(1).scalar_subquery()
            running = {"state": TaskState.RUNNING, "attempts": 1, "started_at": func.now(), "heartbeat_at": func.now()}
            await conn.execute(update(Task).where(Task.id == first).values(**running))
            await conn.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(state=JobState.RUNNING))
    finally:
        await engine.dispose()


def test_a_job_still_stopping_tasks_after_a_cancel_cannot_be_retried(
    quiet: tuple[GraphQLClient, GraphQLClient], servers: Servers
) -> None:
    owner, _ = quiet
    case_id = new_case(owner, "Cancel, then retry too soon")
    media = owner.upload(case_id, make_jpeg(width=53), filename="r.jpg")["data"]["uploadMedia"]["id"]
    job = owner.data("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": media})["analyzeMedia"]
    run_sync(_one_running(servers.database_url, job["id"]))

    cancelled = owner.data(CANCEL, {"j": job["id"]})["cancelJob"]
    assert cancelled["state"] == "RUNNING" and cancelled["cancelRequestedAt"]  # its running task is stopping
    refused = owner.execute(RETRY, {"j": job["id"]})
    assert code(refused) == "CONFLICT"
    assert "still stopping" in refused["errors"][0]["message"]  # type: ignore[index]
