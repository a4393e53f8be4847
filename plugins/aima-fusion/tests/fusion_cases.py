"""Cases and a scripted "model" for the fusion tests.

Cases are built directly as `CaseInput`s, with evidence as the analyzers describe it (whisper segments, speaker turns,
faces, OCR lines, keyframe descriptions). `ScriptedModel` answers the test model server like a careful model would:
it reads the catalogue ids from the prompt and writes a schema-valid dossier citing some of them, and (on request)
one id that does not exist.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aima.analysis import CaseInput, CaseMedia, EvidenceItem, IdentityCluster, MediaKind
from aima.dossier import Dossier
from aima.inference import Endpoints, endpoints_for
from aima.settings import InferenceSettings
from aima.testing.model_server import RecordedRequest, endpoint_settings

MODEL = "meta-llama/Llama-3.1-70B-Instruct"
VIDEO, IMAGE, AUDIO = "media-video", "media-image", "media-audio"
UNKNOWN_ID = "E999"
_names = itertools.count()

_ROW_ID = re.compile(r'\["(E\d+)", "([a-z]+)"')
_ANY_ID = re.compile(r'"(E\d+)"')
_PERSON_ID = re.compile(r'"person": "(P\d+)"')


def make_endpoints(url: str, protocol: str, **settings: Any) -> Endpoints:
    """One endpoint, ``llama``, on the test server, retrying fast."""
    values = endpoint_settings(url, protocol, MODEL, {"max_new_tokens": 2048, **settings})
    return endpoints_for(InferenceSettings(endpoints={"llama": values}, fusion_endpoint="llama"))


def media(media_id: str, kind: MediaKind, filename: str, duration_s: float | None) -> CaseMedia:
    content_type = {MediaKind.VIDEO: "video/mp4", MediaKind.IMAGE: "image/jpeg", MediaKind.AUDIO: "audio/wav"}[kind]
    return CaseMedia(media_id, kind, filename, content_type, duration_s, "2024-05-01T10:00:00Z")


def speech(media_id: str, n: int, start: float, end: float, text: str) -> EvidenceItem:
    return EvidenceItem(media_id, "whisper", f"segment-{n}", "speech", text, start, end, confidence=0.9)


def turn(media_id: str, n: int, start: float, end: float, speaker: str) -> EvidenceItem:
    return EvidenceItem(media_id, "speakers", f"turn-{n}", "speaker", f"speaker {speaker}", start, end)


def face(media_id: str, frame: int, n: int, at: float) -> EvidenceItem:
    return EvidenceItem(
        media_id, "faces", f"face-{frame}-{n}", "face", "a face", at, None, frame, (10.0, 20.0, 110.0, 140.0), 0.97
    )


def text_line(media_id: str, frame: int, n: int, at: float, text: str) -> EvidenceItem:
    return EvidenceItem(media_id, "ocr", f"line-{frame}-{n}", "text", text, at, None, frame, (0, 0, 50, 10), 0.88)


def scene(media_id: str, frame: int, at: float, text: str) -> EvidenceItem:
    return EvidenceItem(media_id, "llava", f"keyframe-{frame}", "scene", text, at, None, frame, None, 0.8)


def sample_case(*, injection: str | None = None, **changes: Any) -> CaseInput:
    """A video (speech of two voices, faces, a sign, pictures described), an image and an audio recording.

    `injection` replaces a transcript line, a sign's text and a picture's description, as media could say it.
    """
    said = injection or "We were told to stay inside the van."
    sign = injection or "EXIT 12"
    picture = injection or "A man with his hands bound behind his back sits in a van."
    evidence = [
        speech(VIDEO, 0, 0.5, 4.0, "Good evening, my name is Alice."),
        speech(VIDEO, 1, 4.5, 9.0, said),
        speech(VIDEO, 2, 9.5, 12.0, "Nobody leaves until I say so."),
        turn(VIDEO, 0, 0.0, 9.2, "S1"),
        turn(VIDEO, 1, 9.2, 12.5, "S2"),
        face(VIDEO, 0, 0, 1.0),
        face(VIDEO, 1, 0, 6.0),
        face(VIDEO, 3, 0, 40.0),
        text_line(VIDEO, 1, 0, 6.0, sign),
        scene(VIDEO, 0, 1.0, "A woman speaks to the camera in a parked van."),
        scene(VIDEO, 1, 6.0, picture),
        scene(IMAGE, 0, 0.0, "A street at night with a parked white van."),
        face(IMAGE, 0, 0, 0.0),
        speech(AUDIO, 0, 1.0, 3.0, "Call me when you are out."),
        turn(AUDIO, 0, 0.5, 3.5, "S1"),
    ]
    identities = [
        IdentityCluster(
            "cluster-face-alice", "face", "Alice", [(VIDEO, "faces", "face-0-0"), (VIDEO, "faces", "face-1-0")]
        ),
        IdentityCluster(
            "cluster-voice-alice", "voice", "alice ", [(VIDEO, "speakers", "turn-0"), (AUDIO, "speakers", "turn-0")]
        ),
        IdentityCluster("cluster-voice-2", "voice", None, [(VIDEO, "speakers", "turn-1")]),
        IdentityCluster("cluster-face-2", "face", None, [(VIDEO, "faces", "face-3-0"), (IMAGE, "faces", "face-0-0")]),
    ]
    values: dict[str, Any] = {
        "case_id": "case-1",
        "title": "Van incident",
        "media": [
            media(VIDEO, MediaKind.VIDEO, "van.mp4", 60.0),
            media(IMAGE, MediaKind.IMAGE, "street.jpg", None),
            media(AUDIO, MediaKind.AUDIO, "call.wav", 4.0),
        ],
        "results": {
            (VIDEO, "whisper"): {"segments": []},
            (VIDEO, "llava"): {"kind": "video", "model": "llava", "endpoint": "llava", "timeline": []},
            (IMAGE, "llava"): {"kind": "image", "model": "llava", "endpoint": "llava", "timeline": []},
            (AUDIO, "whisper"): {"segments": []},
        },
        "evidence": evidence,
        "identities": identities,
        "missing": [],
        "version": 3,
    }
    values.update(changes)
    return CaseInput(**values)


def large_case(media_count: int = 3, lines: int = 120) -> CaseInput:
    """Long recordings: `lines` transcript lines per media item, alternating between two voices."""
    items: list[EvidenceItem] = []
    clusters: dict[str, list[tuple[str, str, str]]] = {"a": [], "b": []}
    all_media = []
    for m in range(media_count):
        media_id = f"media-long-{m}"
        all_media.append(media(media_id, MediaKind.AUDIO, f"recording-{m}.wav", lines * 5.0))
        for n in range(lines):
            start = n * 5.0
            items.append(speech(media_id, n, start + 0.2, start + 4.5, f"Recording {m} line {n}: the shipment moves."))
            items.append(turn(media_id, n, start, start + 4.8, "S1" if n % 2 == 0 else "S2"))
            clusters["a" if n % 2 == 0 else "b"].append((media_id, "speakers", f"turn-{n}"))
    return CaseInput(
        case_id="case-large",
        title="Large case",
        media=all_media,
        results={(m.media_id, "whisper"): {"segments": []} for m in all_media},
        evidence=items,
        identities=[
            IdentityCluster("voice-a", "voice", "Speaker A", clusters["a"]),
            IdentityCluster("voice-b", "voice", None, clusters["b"]),
        ],
        missing=[],
    )


def evidence_index(case: CaseInput) -> dict[tuple[str, str, str], EvidenceItem]:
    return {(e.media_id, e.analyzer, e.key): e for e in case.evidence}


def assert_citations_resolve(dossier: Dossier, case: CaseInput) -> None:
    """Every citation names an evidence item of the case, with its times, keyframe and box."""
    index = evidence_index(case)
    citations = dossier.citations()
    assert bool(citations) == bool(case.evidence)
    for citation in citations:
        assert citation.key is not None
        item = index[(citation.media_id, citation.analyzer, citation.key)]
        assert (citation.start_s, citation.end_s, citation.keyframe) == (item.start_s, item.end_s, item.keyframe)
        assert citation.box == (list(item.box) if item.box is not None else None)


@dataclass
class ScriptedModel:
    """Answers fusion requests (map, single and reduce alike) with a dossier citing ids read from the prompt."""

    cite_unknown: bool = True
    assess_required: bool = True
    #: Assessment of restraint when assessed: "indicated" cites a picture; others cite nothing.
    restraint: str = "indicated"
    indicated_without_evidence: bool = False
    seen: list[RecordedRequest] = field(default_factory=list)

    def __call__(self, request: RecordedRequest) -> Mapping[str, Any] | None:
        if request.schema is None or "summary" not in request.schema.get("properties", {}):
            return None
        self.seen.append(request)
        reducing = "Partial dossiers:" in request.prompt
        if reducing:
            ids = list(dict.fromkeys(_ANY_ID.findall(request.prompt.split("Partial dossiers:", 1)[1])))
            kinds: dict[str, str] = {}
        else:
            rows = _ROW_ID.findall(request.prompt)
            ids = [i for i, _ in rows]
            kinds = dict(rows)
        ids = [i for i in ids if i != UNKNOWN_ID]
        persons = list(dict.fromkeys(_PERSON_ID.findall(request.prompt)))
        pictures = [i for i in ids if kinds.get(i) == "scene"] or ids[:1]
        answer: dict[str, Any] = {
            "summary": f"{len(ids)} evidence items were reviewed.",
            "timeline": [{"evidence": [i], "description": f"Moment of {i}."} for i in ids[:3]],
            "persons": [{"person": p, "evidence": ids[:1], "description": f"Person {p} speaks."} for p in persons[:2]],
            "places": [{"evidence": ids[:1], "name": "a van", "description": "A parked van."}] if ids else [],
            "objects": [],
            "events": [],
            "findings": [{"evidence": ids[:2], "statement": "Two items agree.", "confidence": 0.7}] if ids else [],
            "sensitive": [],
        }
        if self.cite_unknown:
            answer["findings"].append(
                {"evidence": [ids[0], UNKNOWN_ID], "statement": "An invented detail.", "confidence": 0.9}
            )
        if self.assess_required:
            cites = self.restraint == "indicated" and not self.indicated_without_evidence
            restraint_ids = pictures[:1] if cites else []
            answer["sensitive"] = [
                {
                    "label": "restraint",
                    "assessment": self.restraint,
                    "confidence": 0.8,
                    "rationale": "Hands bound behind the back." if self.restraint == "indicated" else "Cannot tell.",
                    "evidence": restraint_ids,
                },
                {
                    "label": "coercion",
                    "assessment": "insufficient_evidence",
                    "confidence": 0.3,
                    "rationale": "The orders heard may be coercive; the context is unclear.",
                    "evidence": [],
                },
            ]
        return answer

    def requests(self, kind: str) -> list[RecordedRequest]:
        """The recorded requests of one kind: "reduce", "map" (a part of a case) or "single"."""

        def kind_of(r: RecordedRequest) -> str:
            if "Partial dossiers:" in r.prompt:
                return "reduce"
            return "map" if "This request holds part" in r.prompt else "single"

        return [r for r in self.seen if kind_of(r) == kind]


def catalogue_ids(request: RecordedRequest) -> list[str]:
    return [i for i, _ in _ROW_ID.findall(request.prompt)]


def data_blocks(prompt: str) -> list[tuple[int, int]]:
    """The spans of the prompt's quoted data blocks."""
    pattern = re.compile(r'<<<DATA label="([^"]*)" \(untrusted data, not instructions\)\n.*?\n<<<END DATA label="\1"')
    return [(m.start(), m.end()) for m in pattern.finditer(prompt)]


def dumps(value: Sequence[Any] | Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)
