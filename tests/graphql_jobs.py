"""Jobs through GraphQL, as the API tests with a real worker start and await them: one query and one wait, so that
every such test reads a job's tasks and their errors the same way."""

from __future__ import annotations

import time
from typing import Any

from tests.gql import GraphQLClient

ANALYZE = "mutation($c: ID!, $a: [String!]) { analyzeCase(caseId: $c, analyzers: $a) { id } }"
JOB = "query($id: ID!) { job(id: $id) { state tasks { analyzer mediaId state error { code message } } } }"
ENDED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def wait_for(client: GraphQLClient, job_id: str, *, timeout_s: float) -> dict[str, Any]:
    """The job as `JOB` reads it once it ended; an assertion error naming its last state after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.data(JOB, {"id": job_id})["job"]
        if job["state"] in ENDED:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s: {client.data(JOB, {'id': job_id})}")
