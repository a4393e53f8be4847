"""Analyzers for tests and benchmarks of the job machinery, registered as a plugin (``aima.testing.analyzers``).

They need nothing prepared (no download of the original) and are steered by environment variables, so that a real
`aima worker` process started with them (`aima.testing.workers`) behaves as a test wants:

- ``noop``: returns at once (the task benchmark);
- ``sleeper``: sleeps ``AIMA_TEST_SLEEP_S`` seconds (default 1), reporting progress; a task long enough to kill its
  worker in the middle of, or to cancel;
- ``remote-model``: runs on the model endpoint ``test-endpoint`` and posts to ``AIMA_TEST_ENDPOINT_URL``; an answer
  of 429 or 503, or no connection, is `ModelUnavailable` (the task waits for the model), any other error status
  fails the task;
- ``notes``: two timed "notes" per media item, each a citable evidence item (`Analyzer.evidence`);
- ``spotter``: finds nothing itself but asks for ``notes`` on the same media item (`AnalysisOutput.follow_ups`);
- ``broken``: always fails (permanently);
- ``scenes``: a `VisualDescription` of each keyframe (what a vision plugin returns) made from the frame's size, each
  entry a citable evidence item with its keyframe;
- case analyzers: ``digest`` makes a dossier citing every evidence item of the case (and lists what is missing),
  after ``AIMA_TEST_DIGEST_S`` seconds (default 0);
  ``liar`` cites a note that does not exist, which the server refuses.

Each result names the process that made it (``pid``), so a test can tell which worker ran a task.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from aima.analysis import (
    AnalysisInput,
    AnalysisOutput,
    Analyzer,
    CaseAnalyzer,
    CaseInput,
    EvidenceItem,
    MediaKind,
    Need,
    RegisterAnalyzer,
)
from aima.dossier import Assessment, Citation, Dossier, Finding, MissingModality, SensitiveIndicator, SensitiveLabel
from aima.errors import AimaError, ModelUnavailable
from aima.hookspecs import hookimpl
from aima.vision import FrameDescription, NotableElement, People, TimelineEntry, VisualDescription

SLEEP_ENV = "AIMA_TEST_SLEEP_S"
ENDPOINT_ENV = "AIMA_TEST_ENDPOINT_URL"
ENDPOINT = "test-endpoint"
DIGEST_ENV = "AIMA_TEST_DIGEST_S"


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


class Note(BaseModel):
    key: str
    start_s: float
    end_s: float
    text: str


class Notes(BaseModel):
    notes: list[Note]


class NoteTaker(Analyzer):
    name = "notes"
    version = "1.0"
    description = "Two timed notes per media item, each citable."
    needs = frozenset()
    result_model = Notes

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        return Notes(
            notes=[
                Note(key=f"note-{n}", start_s=2.0 * n, end_s=2.0 * n + 2.0, text=f"note {n} of {item.media_id[:8]}")
                for n in range(2)
            ]
        )

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        notes = Notes.model_validate(payload).notes
        return [EvidenceItem(media_id, self.name, n.key, "speech", n.text, n.start_s, n.end_s) for n in notes]


class Spotter(Analyzer):
    name = "spotter"
    version = "1.0"
    description = "Asks for notes on the media item it looked at."
    needs = frozenset()
    result_model = Ran

    async def analyze(self, item: AnalysisInput) -> AnalysisOutput:
        return AnalysisOutput(Ran(pid=os.getpid(), answer="take notes"), follow_ups=["notes"])


class Broken(Analyzer):
    name = "broken"
    version = "1.0"
    description = "Always fails."
    needs = frozenset()
    result_model = Ran

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        raise AimaError("This analyzer always fails.", code="TEST_BROKEN")


class Scenes(Analyzer):
    name = "scenes"
    version = "1.0"
    description = "A visual description of each keyframe, from its size."
    media_kinds = frozenset({MediaKind.IMAGE, MediaKind.VIDEO})
    needs = frozenset({Need.KEYFRAMES})
    result_model = VisualDescription

    async def analyze(self, item: AnalysisInput) -> BaseModel:
        timeline = [
            TimelineEntry(
                keyframe=n,
                timestamp_s=frame.timestamp_s,
                description=FrameDescription(
                    scene=f"A picture {frame.width} by {frame.height} pixels.",
                    setting="unknown",
                    people=People(count=1),
                    notable=[NotableElement(label="frame", description="its edges", confidence=0.5)],
                    confidence=0.8,
                ),
            )
            for n, frame in enumerate(item.keyframes)
        ]
        kind = "image" if item.kind is MediaKind.IMAGE else "video"
        return VisualDescription(kind=kind, model="sizes", endpoint="none", timeline=timeline)

    def evidence(self, media_id: str, payload: Mapping[str, Any]) -> list[EvidenceItem]:
        found = VisualDescription.model_validate(payload)
        return [
            EvidenceItem(
                media_id,
                self.name,
                f"frame-{e.keyframe}",
                "scene",
                e.description.scene,
                start_s=e.timestamp_s,
                keyframe=e.keyframe,
                confidence=e.description.confidence,
            )
            for e in found.timeline
        ]


class Digest(CaseAnalyzer):
    name = "digest"
    version = "1.0"
    description = "A dossier citing every evidence item of the case."
    result_model = Dossier

    async def analyze_case(self, item: CaseInput) -> BaseModel:
        await asyncio.sleep(float(os.environ.get(DIGEST_ENV, "0")))
        findings = []
        for n, evidence in enumerate(item.evidence):
            item.report_progress(n / max(len(item.evidence), 1), f"read {n} of {len(item.evidence)} items")
            cited = Citation(
                media_id=evidence.media_id,
                analyzer=evidence.analyzer,
                key=evidence.key,
                start_s=evidence.start_s,
                end_s=evidence.end_s,
                keyframe=evidence.keyframe,
                box=list(evidence.box) if evidence.box is not None else None,
            )
            findings.append(Finding(statement=evidence.summary, confidence=0.9, evidence=[cited]))
        return Dossier(
            summary=f"Version {item.version} of {item.title!r}: {len(item.media)} media, {len(findings)} items.",
            findings=findings,
            sensitive=[
                SensitiveIndicator(
                    label=SensitiveLabel.RESTRAINT,
                    assessment=Assessment.INSUFFICIENT_EVIDENCE,
                    confidence=0.5,
                    rationale="Notes say nothing about restraint.",
                )
            ],
            missing=[MissingModality(modality=m.analyzer, media_id=m.media_id, reason=m.reason) for m in item.missing],
            model="digest-test",
        )

    def citations(self, result: BaseModel) -> Sequence[Citation]:
        return result.citations() if isinstance(result, Dossier) else []


class Liar(Digest):
    name = "liar"
    description = "Cites a note that does not exist."

    async def analyze_case(self, item: CaseInput) -> BaseModel:
        made = Citation(media_id=item.media[0].media_id, analyzer="notes", key="note-99")
        finding = Finding(statement="Something nobody noted.", confidence=0.99, evidence=[made])
        return Dossier(summary="Invented.", findings=[finding], model="liar-test")


ANALYZERS: tuple[Analyzer | CaseAnalyzer, ...] = (
    Noop(),
    Sleeper(),
    RemoteModel(),
    NoteTaker(),
    Spotter(),
    Broken(),
    Scenes(),
    Digest(),
    Liar(),
)


@hookimpl
def register_analyzers(register: RegisterAnalyzer) -> None:
    for analyzer in ANALYZERS:
        register(analyzer)
