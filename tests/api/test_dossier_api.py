"""Dossiers through the API with a real worker: analyzeCase ends with the case task, whose dossier every role that may
read the case reads with each citation resolved into its evidence (media, item, time, keyframe link); versions stay
readable; the Markdown export names every piece of evidence; reads and exports are audited; Media.description is
the vision result, typed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from aima.app import create_app
from aima.db.models import AuditEntry
from aima.services.dossiers import DASH
from aima.settings import Settings
from aima.testing.media import make_jpeg
from aima.testing.workers import test_analyzer_registry as analyzer_registry
from tests.api.test_flow import new_case
from tests.conftest import Servers, settings_for, worker_thread
from tests.gql import GraphQLClient, register, run_sync
from tests.graphql_jobs import ANALYZE, wait_for

EVIDENCE = "media { id filename } mediaId analyzer key kind summary startS endS keyframe box confidence keyframeUrl"
DOSSIER = f"""
query($id: ID!, $v: Int) {{
  case(id: $id) {{
    dossier(version: $v) {{
      version createdAt analyzer analyzerVersion model strategy summary rejected
      job {{ id state }}
      findings {{ statement confidence evidence {{ {EVIDENCE} }} }}
      sensitive {{ label assessment confidence rationale evidence {{ key }} }}
      missing {{ modality mediaId reason }}
      timeline {{ description }} persons {{ label }} places {{ name }} objects {{ name }} events {{ name }}
    }}
    dossiers {{ version createdAt jobId analyzer model strategy }}
  }}
}}
"""
EXPORTS = "query($id: ID!, $v: Int) { case(id: $id) { dossier(version: $v) { version markdown json } } }"


@dataclass(frozen=True)
class Analysed:
    settings: Settings
    owner: GraphQLClient
    viewer: GraphQLClient
    stranger: GraphQLClient
    case_id: str
    media_id: str
    jobs: list[str]


@pytest.fixture(scope="module")
def analysed(servers: Servers) -> Iterator[Analysed]:
    """A case with one picture analysed by scenes and notes, then the digest, twice (versions 1 and 2)."""
    settings = settings_for(servers)
    registry = analyzer_registry()
    with (
        TestClient(create_app(settings, analyzers=registry), headers={"origin": "http://127.0.0.1:8000"}) as http,
        worker_thread(settings, analyzers=registry),
    ):
        tag = uuid.uuid4().hex[:6]
        owner, viewer, stranger = (register(http, f"{who}-{tag}@example.org") for who in ("owner", "viewer", "x"))
        case_id = new_case(owner, "Harbour night")
        media_id = owner.upload(case_id, make_jpeg(width=64, height=48), filename="pier.jpg")["data"]["uploadMedia"]
        owner.data(
            "mutation($c: ID!, $e: String!) { shareCase(caseId: $c, email: $e, role: VIEWER) { role } }",
            {"c": case_id, "e": f"viewer-{tag}@example.org"},
        )
        jobs = []
        for analyzers in (["scenes", "notes", "digest"], ["digest"]):
            job_id = owner.data(ANALYZE, {"c": case_id, "a": analyzers})["analyzeCase"]["id"]
            assert wait_for(owner, job_id, timeout_s=60)["state"] == "SUCCEEDED"
            jobs.append(job_id)
        yield Analysed(settings, owner, viewer, stranger, case_id, media_id["id"], jobs)


def test_the_case_task_is_part_of_the_job(analysed: Analysed) -> None:
    job = wait_for(analysed.owner, analysed.jobs[0], timeout_s=60)
    [digest] = [t for t in job["tasks"] if t["analyzer"] == "digest"]
    assert digest == {"analyzer": "digest", "mediaId": None, "state": "SUCCEEDED", "error": None}


def test_every_citation_opens_its_evidence(analysed: Analysed) -> None:
    found = analysed.viewer.data(DOSSIER, {"id": analysed.case_id})["case"]
    dossier = found["dossier"]
    assert (dossier["version"], dossier["analyzer"], dossier["model"], dossier["strategy"]) == (
        2,
        "digest",
        "digest-test",
        "single",
    )
    assert dossier["job"]["id"] == analysed.jobs[1] and dossier["missing"] == [] and dossier["rejected"] == []
    evidence = {(e["analyzer"], e["key"]): e for f in dossier["findings"] for e in f["evidence"]}
    assert set(evidence) == {("notes", "note-0"), ("notes", "note-1"), ("scenes", "frame-0")}
    note = evidence[("notes", "note-1")]
    assert note["media"] == {"id": analysed.media_id, "filename": "pier.jpg"}
    assert (note["kind"], note["startS"], note["endS"], note["keyframe"], note["keyframeUrl"]) == (
        "speech",
        2.0,
        4.0,
        None,
        None,
    )
    assert note["summary"] == f"note 1 of {analysed.media_id[:8]}"
    scene = evidence[("scenes", "frame-0")]
    assert (scene["kind"], scene["keyframe"], scene["startS"], scene["confidence"]) == ("scene", 0, 0.0, 0.8)
    assert scene["summary"] == "A picture 64 by 48 pixels."
    frame = httpx.get(scene["keyframeUrl"])
    assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
    [indicator] = dossier["sensitive"]
    assert (indicator["label"], indicator["assessment"], indicator["evidence"]) == (
        "RESTRAINT",
        "INSUFFICIENT_EVIDENCE",
        [],
    )
    assert [(v["version"], v["jobId"]) for v in found["dossiers"]] == [
        (2, analysed.jobs[1]),
        (1, analysed.jobs[0]),
    ]


def test_earlier_versions_stay_readable(analysed: Analysed) -> None:
    first = analysed.owner.data(DOSSIER, {"id": analysed.case_id, "v": 1})["case"]["dossier"]
    assert first["version"] == 1 and first["job"]["id"] == analysed.jobs[0]
    assert first["summary"].startswith("Version 1 of 'Harbour night'")
    gone = analysed.owner.data(DOSSIER, {"id": analysed.case_id, "v": 3})["case"]["dossier"]
    assert gone is None


def test_the_markdown_export_names_each_piece_of_evidence(analysed: Analysed) -> None:
    exported = analysed.viewer.data(EXPORTS, {"id": analysed.case_id})["case"]["dossier"]
    markdown = exported["markdown"]
    assert markdown.startswith("# Dossier: Harbour night\n\nVersion 2, made ")
    note = f'   - Evidence: pier.jpg @ 00:00:02{DASH}00:00:04, notes note-1 — "note 1 of {analysed.media_id[:8]}"'
    assert note in markdown.splitlines()
    assert '- Evidence: pier.jpg @ 00:00:00, scenes frame-0, keyframe 0 — "A picture 64 by 48 pixels."' in markdown
    assert "## Sensitive content\n\n- restraint: insufficient evidence (confidence 0.50)" in markdown
    assert exported["json"]["summary"].startswith("Version 2 of ") and len(exported["json"]["findings"]) == 3


def test_reads_and_exports_are_audited(analysed: Analysed) -> None:
    analysed.viewer.data(EXPORTS, {"id": analysed.case_id, "v": 1})

    async def entries() -> list[tuple[str, dict[str, Any]]]:
        engine = create_async_engine(analysed.settings.database_url)
        try:
            async with engine.connect() as conn:
                query = select(AuditEntry.action, AuditEntry.details).where(
                    AuditEntry.target_id == analysed.case_id, AuditEntry.action.like("dossier.%")
                )
                return [(row.action, row.details) for row in await conn.execute(query)]
        finally:
            await engine.dispose()

    found = run_sync(entries())
    assert ("dossier.read", {"version": 1}) in found
    assert ("dossier.export", {"version": 1, "format": "markdown"}) in found
    assert ("dossier.export", {"version": 1, "format": "json"}) in found


def test_strangers_see_nothing(analysed: Analysed) -> None:
    body = analysed.stranger.execute(DOSSIER, {"id": analysed.case_id})
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND" and body["data"] is None
    media = analysed.stranger.execute(
        "query($id: ID!) { media(id: $id) { description { model } } }", {"id": analysed.media_id}
    )
    assert media["errors"][0]["extensions"]["code"] == "NOT_FOUND"


def test_the_media_description_is_the_vision_result(analysed: Analysed) -> None:
    query = """
    query($id: ID!) { media(id: $id) { description {
      analyzer analyzerVersion kind model endpoint failed
      timeline { keyframe timestampS description { scene setting confidence people { count }
                 notable { label sensitive confidence } objects { name } visibleText { text } } }
    } } }
    """
    description = analysed.viewer.data(query, {"id": analysed.media_id})["media"]["description"]
    assert (description["analyzer"], description["kind"], description["model"]) == ("scenes", "image", "sizes")
    [entry] = description["timeline"]
    assert entry["keyframe"] == 0 and entry["description"]["scene"] == "A picture 64 by 48 pixels."
    assert entry["description"]["people"] == {"count": 1}
    assert entry["description"]["notable"] == [{"label": "frame", "sensitive": False, "confidence": 0.5}]


def test_a_case_without_dossier_reads_null(analysed: Analysed) -> None:
    other = new_case(analysed.owner, "Empty")
    found = analysed.owner.data(DOSSIER, {"id": other})["case"]
    assert found == {"dossier": None, "dossiers": []}
