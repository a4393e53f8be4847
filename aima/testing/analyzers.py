"""Analyzers for tests and benchmarks of the job machinery, registered as a plugin (``aima.testing.analyzers``).

They need nothing prepared (no download of the original) and are steered by environment variables, so that a real
`aima worker` process started with them (`aima.testing.workers`) behaves as a test wants:

- ``noop``: returns at once (the task benchmark);
- ``sleeper``: sleeps ``AIMA_TEST_SLEEP_S`` seconds (default 1), reporting progress; a task long enough to kill its
  worker in the middle of, or to cancel;
- ``remote-model``: runs on the model endpoint ``test-endpoint`` and posts to ``AIMA_TEST_ENDPOINT_URL``; an answer
  of 429 or 503, or no connection, is `ModelUnavailable` (the task waits for the model), any other error status
  fails the task.

Each result names the process that made it (``pid``), so a test can tell which worker ran a task.
"""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from aima.analysis import AnalysisInput, Analyzer, RegisterAnalyzer
from aima.errors import AimaError, ModelUnavailable
from aima.hookspecs import hookimpl

SLEEP_ENV = "AIMA_TEST_SLEEP_S"
ENDPOINT_ENV = "AIMA_TEST_ENDPOINT_URL"
ENDPOINT = "test-endpoint"


class Ran(BaseModel):
    pid: int
    seconds: float = 0.0
    answer: str = ""


class Noop(Analyzer):
    name = "noop"
    version = "1.0"
    description = "Does nothing (benchmarks of the task machinery)."
    needs = frozenset()
    result_model = Ran

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        return Ran(pid=os.getpid())


class Sleeper(Analyzer):
    name = "sleeper"
    version = "1.0"
    description = f"Sleeps ${SLEEP_ENV} seconds."
    needs = frozenset()
    result_model = Ran

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        seconds = float(os.environ.get(SLEEP_ENV, "1"))
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            item.report_progress(elapsed / seconds, f"slept {elapsed:.1f} of {seconds:g} s")
            await asyncio.sleep(min(0.1, seconds - elapsed))
        return Ran(pid=os.getpid(), seconds=time.monotonic() - started)


class RemoteModel(Analyzer):
    name = "remote-model"
    version = "1.0"
    description = f"Asks the model endpoint at ${ENDPOINT_ENV}."
    needs = frozenset()
    runs_on = ENDPOINT
    result_model = Ran

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        import httpx  # a development dependency, like this module's only users

        url = os.environ[ENDPOINT_ENV]
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.post(url, json={"media_id": item.media_id})
        except httpx.TransportError as exc:
            raise ModelUnavailable(f"{ENDPOINT} is unreachable ({type(exc).__name__})") from exc
        if answer.status_code in (429, 503):
            raise ModelUnavailable(f"{ENDPOINT} answered {answer.status_code}")
        if answer.status_code != 200:
            raise AimaError(f"{ENDPOINT} answered {answer.status_code}", code="MODEL_ERROR")
        return Ran(pid=os.getpid(), answer=answer.text)


ANALYZERS: tuple[Analyzer, ...] = (Noop(), Sleeper(), RemoteModel())


@hookimpl
def register_analyzers(register: RegisterAnalyzer) -> None:
    for analyzer in ANALYZERS:
        register(analyzer)
