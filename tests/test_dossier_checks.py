"""The server's check of a dossier's citations, the Markdown export, and the worker's startup check of case analyzers
(no servers needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from aima import plugins
from aima.analysis import CaseAnalyzer, CaseInput, CaseMedia, EvidenceItem, MediaKind, ModelNotInstalled
from aima.cli import app
from aima.db.models import DossierVersion, Media
from aima.dossier import (
    Assessment,
    Citation,
    Dossier,
    DossierPerson,
    Entity,
    Finding,
    MissingModality,
    SensitiveIndicator,
    SensitiveLabel,
    TimelineEvent,
)
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.services.dossiers import (
    DASH,
    Evidence,
    InvalidCitations,
    as_citations,
    check_citations,
    checked_result,
    citation_key,
    render_markdown,
)
from aima.testing import analyzers as test_analyzers
from aima.testing.workers import PLUGIN
from aima.workers.process import check_models

VIDEO, IMAGE = str(uuid.uuid4()), str(uuid.uuid4())


def case_input() -> CaseInput:
    media = [
        CaseMedia(VIDEO, MediaKind.VIDEO, "talk.mp4", "video/mp4", 60.0, "2026-01-01T00:00:00+00:00"),
        CaseMedia(IMAGE, MediaKind.IMAGE, "pier.jpg", "image/jpeg", None, "2026-01-01T00:00:00+00:00"),
    ]
    evidence = [
        EvidenceItem(VIDEO, "whisper", "segment-4", "speech", "we leave at dawn", 83.0, 90.0),
        EvidenceItem(VIDEO, "faces", "face-2-0", "face", "a face", 12.0, None, keyframe=2, box=[1, 2, 3, 4]),
        EvidenceItem(IMAGE, "scenes", "frame-0", "scene", "a pier", 0.0, keyframe=0),
        EvidenceItem(IMAGE, "faces", "face-0-0", "face", "a face", keyframe=0, box=[10, 20, 50, 80]),  # no time
    ]
    results = {
        (VIDEO, "whisper"): {},
        (VIDEO, "faces"): {},
        (IMAGE, "scenes"): {},
        (VIDEO, "ocr"): {},
        (IMAGE, "faces"): {},
    }
    return CaseInput("case", "Harbour", media, results, evidence, identities=[], missing=[])


GOOD = [
    Citation(media_id=VIDEO, analyzer="whisper", key="segment-4"),
    Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", start_s=82.6, end_s=90.4),  # within 0.5 s
    Citation(media_id=VIDEO, analyzer="faces", key="face-2-0", start_s=12.0, keyframe=2, box=[1, 2, 3, 4]),
    Citation(media_id=VIDEO, analyzer="ocr", start_s=10.0, end_s=20.0),  # a whole result: the media's 60 s
    Citation(media_id=IMAGE, analyzer="scenes", key="frame-0"),
    Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", keyframe=0, box=[10, 20, 50, 80]),
    Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", box=[20, 30, 40, 60]),  # a part of the face's box
    Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", box=[9.6, 19.5, 50.4, 80.5]),  # within BOX_TOLERANCE
]


def test_citations_that_resolve_pass() -> None:
    check_citations(GOOD, case_input())


@pytest.mark.parametrize(
    ("citation", "problem"),
    [
        (Citation(media_id=str(uuid.uuid4()), analyzer="whisper"), "that media item is not in the case"),
        (Citation(media_id=IMAGE, analyzer="whisper"), "no whisper result is stored for that media item"),
        (Citation(media_id=VIDEO, analyzer="whisper", key="segment-9"), "the whisper result has no item 'segment-9'"),
        (
            Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", start_s=82.4),
            "82.4 s lies outside the cited item (83-90 s)",
        ),
        (
            Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", end_s=91.0),
            "91 s lies outside the cited item (83-90 s)",
        ),
        (Citation(media_id=VIDEO, analyzer="ocr", start_s=61.0), "61 s lies outside the cited item (0-60 s)"),
        (
            Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", start_s=89.0, end_s=84.0),
            "it ends before it starts",
        ),
        (
            Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", start_s=3.0),
            "the cited item has no time, but the citation gives one",
        ),
        # A citation's keyframe and box are the cited item's: the reader is shown them as its evidence.
        (
            Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", keyframe=7),
            "it names keyframe 7, but the cited item has none",
        ),
        (
            Citation(media_id=VIDEO, analyzer="faces", key="face-2-0", keyframe=3),
            "it names keyframe 3, but the cited item is on keyframe 2",
        ),
        (
            Citation(media_id=VIDEO, analyzer="ocr", keyframe=0),
            "it names keyframe 0, but a whole result has no keyframe (cite one of its items)",
        ),
        (
            Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", box=[0, 0, 10, 10]),
            "it gives box [0, 0, 10, 10], but the cited item has none",
        ),
        (
            Citation(media_id=VIDEO, analyzer="ocr", box=[0, 0, 10, 10]),
            "it gives box [0, 0, 10, 10], but a whole result has no box (cite one of its items)",
        ),
        (
            Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", box=[0, 0, 1e9, -5]),
            "box [0, 0, 1e+09, -5] is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2",
        ),
        (
            Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", box=[10, 20, 50]),
            "box [10, 20, 50] is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2",
        ),
        (
            Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", box=[10, 20, 51, 80]),
            "box [10, 20, 51, 80] lies outside the cited item's box [10, 20, 50, 80]",
        ),
        (
            Citation(media_id=IMAGE, analyzer="faces", key="face-0-0", box=[100, 200, 150, 280]),
            "box [100, 200, 150, 280] lies outside the cited item's box [10, 20, 50, 80]",
        ),
    ],
)
def test_the_first_citation_that_does_not_resolve_is_named(citation: Citation, problem: str) -> None:
    with pytest.raises(InvalidCitations) as refused:
        check_citations([*GOOD, citation, Citation(media_id="nowhere", analyzer="x")], case_input())
    assert refused.value.code == "INVALID_CITATIONS"
    assert refused.value.message.startswith(f"Citation {len(GOOD) + 1} (media {citation.media_id}, ")
    assert refused.value.message.endswith(f"does not resolve: {problem}.")


def test_results_are_checked_whole() -> None:
    digest = test_analyzers.Digest()
    good = Dossier(summary="ok", findings=[Finding(statement="s", confidence=0.5, evidence=GOOD[:1])])
    assert checked_result(digest, good, case_input())["findings"][0]["evidence"][0]["key"] == "segment-4"
    hidden = Dossier(summary="x", places=[Entity(name="p", evidence=[Citation(media_id=IMAGE, analyzer="ocr")])])
    with pytest.raises(InvalidCitations, match="no ocr result is stored"):
        checked_result(digest, hidden, case_input())

    class Other(BaseModel):
        pass

    with pytest.raises(Exception, match="returned Other, not Dossier") as wrong:
        checked_result(digest, Other(), case_input())
    assert getattr(wrong.value, "code", None) == "INVALID_OUTPUT"
    with pytest.raises(InvalidCitations, match="Citation 2 is not a citation"):
        as_citations([GOOD[0], "media 1 at 3 s"])
    assert as_citations([{"media_id": IMAGE, "analyzer": "scenes"}]) == [Citation(media_id=IMAGE, analyzer="scenes")]


class Forgetful(CaseAnalyzer):
    """A case analyzer that does not override `CaseAnalyzer.citations` (which lists none)."""

    name = "forgetful"
    version = "1.0"
    result_model = Dossier

    async def analyze_case(self, item: CaseInput) -> BaseModel:
        raise NotImplementedError


class Report(BaseModel):
    """A case result of another shape that holds citations deep inside (and one the analyzer lists as a dict)."""

    sections: dict[str, list[Finding]]
    listed: list[dict[str, str]] = []


class Listing(CaseAnalyzer):
    name = "listing"
    version = "1.0"
    result_model = Report

    async def analyze_case(self, item: CaseInput) -> BaseModel:
        raise NotImplementedError

    def citations(self, result: BaseModel) -> list[object]:
        return list(result.listed) if isinstance(result, Report) else []


def test_every_citation_a_result_holds_is_checked_whatever_its_analyzer_lists() -> None:
    outside = Citation(media_id="not-in-case", analyzer="nothing", key="made-up")
    bogus = Dossier(summary="s", findings=[Finding(statement="x", confidence=1, evidence=[outside])])
    with pytest.raises(InvalidCitations, match=r"^Citation 1 \(media not-in-case, nothing made-up\) does not resolve"):
        checked_result(Forgetful(), bogus, case_input())
    good = Dossier(summary="s", findings=[Finding(statement="s", confidence=0.5, evidence=GOOD)])
    assert len(checked_result(Forgetful(), good, case_input())["findings"][0]["evidence"]) == len(GOOD)
    # Numbered in the dossier's order, each once though the analyzer lists them too.
    wrong = Citation(media_id=VIDEO, analyzer="whisper", key="segment-4", keyframe=7)
    late = Dossier(
        summary="s",
        timeline=[TimelineEvent(media_id=VIDEO, description="t", evidence=GOOD[:2])],
        sensitive=[
            SensitiveIndicator(
                label=SensitiveLabel.OTHER,
                assessment=Assessment.INDICATED,
                confidence=0.5,
                rationale="r",
                evidence=[GOOD[2], wrong],
            )
        ],
    )
    with pytest.raises(InvalidCitations, match=r"^Citation 4 \(media .*keyframe 7, but the cited item has none"):
        checked_result(test_analyzers.Digest(), late, case_input())
    # Another result model: its citations are found wherever they are, and what the analyzer lists is checked too.
    nested = Report(sections={"a": [Finding(statement="s", confidence=0.5, evidence=[GOOD[0], wrong])]})
    with pytest.raises(InvalidCitations, match=r"^Citation 2 \(media .*keyframe 7"):
        checked_result(Listing(), nested, case_input())
    listed = Report(
        sections={"a": [Finding(statement="s", confidence=0.5, evidence=GOOD[:1])]},
        listed=[{"media_id": IMAGE, "analyzer": "ocr"}],
    )
    with pytest.raises(InvalidCitations, match=r"^Citation 2 \(media .*no ocr result is stored"):
        checked_result(Listing(), listed, case_input())


def test_the_markdown_report_lists_each_statement_with_its_evidence() -> None:
    talk = Media(id=uuid.UUID(VIDEO), filename="talk [final].mp4")
    cited = [Citation(media_id=VIDEO, analyzer="whisper", key="segment-4"), Citation(media_id=IMAGE, analyzer="ocr")]
    item = case_input().evidence[0]
    found = {
        citation_key(cited[0]): Evidence(cited[0], talk, item, None, None),
        citation_key(cited[1]): Evidence(cited[1], None, None, None, None),
    }
    dossier = Dossier(
        summary="Two people\nmeet. ![x](http://evil/pixel.png)",
        findings=[Finding(statement="They leave at dawn <b>soon</b>.", confidence=0.8, evidence=cited)],
        missing=[MissingModality(modality="scenes", media_id=VIDEO, reason="MODEL_UNAVAILABLE: gave up after 900 s")],
        model="llama",
    )
    row = DossierVersion(version=3, created_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC), analyzer="fusion")
    row.analyzer_version = "1.0"
    text = render_markdown(title="Harbour", row=row, dossier=dossier, evidence=found)
    assert text.splitlines()[:7] == [
        "# Dossier: Harbour",
        "",
        "Version 3, made 2026-01-02 03:04 UTC by fusion 1.0 with llama (single).",
        "",
        "## Summary",
        "",
        "Two people meet. !\\[x\\](http\\://evil/pixel.png)",  # no image the reader's viewer would fetch
    ]
    assert "1. They leave at dawn \\<b\\>soon\\</b\\>. (confidence 0.80)" in text
    assert (
        f'   - Evidence: talk \\[final\\].mp4 @ 00:01:23{DASH}00:01:30, whisper segment-4 — "we leave at dawn"' in text
    )
    assert f"   - Evidence: deleted media {IMAGE}, ocr (whole result)" in text
    assert f"## Missing\n\n- scenes (media {VIDEO}): MODEL_UNAVAILABLE: gave up after 900 s" in text


HOSTILE = "# Fake *em* _em_ snake_case https://evil.example/x www.evil.example a | b ~~gone~~ &copy; $x$ `c` <i>"


def test_model_written_text_renders_as_itself_and_adds_no_structure() -> None:
    markdown_it = pytest.importorskip("markdown_it")
    dossier = Dossier(
        summary=HOSTILE,
        findings=[
            Finding(statement="1. a nested list", confidence=0.5, evidence=GOOD[:1]),
            Finding(statement="- a bullet", confidence=0.5, evidence=GOOD[:1]),
            Finding(statement="> a quote", confidence=0.5, evidence=GOOD[:1]),
        ],
        timeline=[TimelineEvent(media_id=VIDEO, description="---", evidence=GOOD[:1])],
        persons=[DossierPerson(label="**", description="HTTP://x.example")],
        places=[Entity(name="+ a pier", description="2) www.x.example", evidence=GOOD[:1])],
        missing=[MissingModality(modality="# scenes", reason="=== ")],
        rejected=["__init__ *", "title #"],
        model="llama",
    )
    row = DossierVersion(version=1, created_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC), analyzer="fusion")
    row.analyzer_version = "1.0"
    text = render_markdown(title="Harbour #", row=row, dossier=dossier, evidence={})
    lines = text.splitlines()
    assert lines[6] == (
        "\\# Fake \\*em\\* \\_em\\_ snake_case https\\://evil.example/x www\\.evil.example a \\| b \\~\\~gone\\~\\~ "
        "\\&copy; \\$x\\$ \\`c\\` \\<i\\>"
    )
    assert "1. 1\\. a nested list (confidence 0.50)" in lines
    assert "- **+ a pier**: 2\\) www\\.x.example" not in lines and "- **\\+ a pier**: 2\\) www\\.x.example" in lines

    parser = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    tokens = parser.parse(text)
    blocks = [t.type for t in tokens if t.type.endswith("_open")]
    headings = [tokens[n + 1].content for n, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [
        "Dossier: Harbour \\#",
        "Summary",
        "Findings",
        "Timeline",
        "Persons",
        "Places",
        "Missing",
        "Statements dropped for unresolved citations",
    ]
    assert blocks.count("ordered_list_open") == 1  # the findings
    assert blocks.count("bullet_list_open") == 5  # timeline, persons, places, missing, rejected
    assert not {"blockquote_open", "table_open", "hr", "code_block", "fence", "html_block"} & {t.type for t in tokens}
    inline = [child for t in tokens if t.type == "inline" for child in t.children or []]
    assert {child.type for child in inline} <= {"text", "strong_open", "strong_close"}
    assert sum(child.type == "strong_open" for child in inline) == 2  # the person's and the place's names
    rendered = parser.render(text)
    for written in (HOSTILE, "1. a nested list", "> a quote", "HTTP://x.example", "__init__ *", "title #"):
        assert written.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in rendered


class NeedsWeights(CaseAnalyzer):
    name = "weighty"
    version = "1.0"
    runs_on = "llama"
    result_model = Dossier

    async def analyze_case(self, item: CaseInput) -> BaseModel:
        raise NotImplementedError

    def check(self) -> None:
        raise ModelNotInstalled("the weights are missing; install them with: nothing")


def test_workers_check_the_case_analyzers_they_run() -> None:
    class Plugin:
        @plugins.hookspecs.hookimpl
        def register_analyzers(self, register: object) -> None:
            register(NeedsWeights())  # type: ignore[operator]

    pm = create_plugin_manager(load_external=False)
    pm.register(Plugin(), "weighty")
    registry = AnalyzerRegistry(pm)
    check_models(registry, ["cpu"])  # not served here: not checked
    with pytest.raises(ModelNotInstalled, match="analyzer weighty: the weights are missing"):
        check_models(registry, ["cpu", "llama"])


def test_aima_plugins_lists_case_analyzers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", (*plugins.DEFAULT_PLUGINS, PLUGIN))
    result = CliRunner().invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "  digest 1.0  [case] on cpu  A dossier citing every evidence item of the case." in result.output
    assert "  notes 1.0  [audio,image,video] on cpu  Two timed notes per media item, each citable." in result.output
