"""The parts of a dossier the plugin builds without a model: catalogue ids, persons, statements, missing modalities,
and the checks of the model's ids."""

from __future__ import annotations

from fusion_cases import AUDIO, IMAGE, VIDEO, face, sample_case, scene, speech, turn

from aima.analysis import IdentityCluster, MissingAnalysis
from aima.dossier import Assessment, SensitiveLabel
from aima_fusion.assemble import Checker, assemble
from aima_fusion.catalogue import Catalogue
from aima_fusion.missing import missing_modalities
from aima_fusion.persons import build_persons
from aima_fusion.schema import ModelDossier, ModelFinding, ModelIndicator, ModelPerson, empty_answer

#: A picture description by a vision analyzer of another name.
DESCRIBED = {"kind": "image", "model": "qwen", "endpoint": "qwen", "timeline": []}


def other(rationale: str) -> ModelIndicator:
    label, indicated = SensitiveLabel.OTHER, Assessment.INDICATED
    return ModelIndicator(label=label, assessment=indicated, confidence=0.4, rationale=rationale, evidence=["E1"])


def test_ids_follow_the_case_media_order_then_time() -> None:
    case = sample_case()
    repeated = [*case.evidence, case.evidence[0], speech("media-elsewhere", 0, 1.0, 2.0, "not a media of the case")]
    catalogue = Catalogue(case.media, reversed(repeated))

    assert len(catalogue) == len(case.evidence) + 1  # the repeat counted once
    media_of = [catalogue.entries[f"E{n}"].item.media_id for n in range(1, len(catalogue) + 1)]
    assert media_of == sorted(media_of, key=[VIDEO, IMAGE, AUDIO, "media-elsewhere"].index)
    times = [e.item.start_s or 0.0 for e in catalogue.entries.values() if e.item.media_id == VIDEO]
    assert times == sorted(times)
    assert catalogue.media_refs == {VIDEO: "M1", IMAGE: "M2", AUDIO: "M3", "media-elsewhere": "M4"}
    entries, unknown = catalogue.resolve([" e2", "E1", "E2", "E99", "P1"])
    assert [e.id for e in entries] == ["E2", "E1"] and unknown == ["E99", "P1"]


def test_statements_go_to_the_turn_they_overlap_most() -> None:
    case = sample_case(
        evidence=[
            turn(VIDEO, 0, 0.0, 5.0, "S1"),
            turn(VIDEO, 1, 5.0, 10.0, "S2"),
            speech(VIDEO, 0, 1.0, 4.0, "inside the first turn"),
            speech(VIDEO, 1, 4.0, 8.0, "mostly in the second turn"),
            speech(VIDEO, 2, 12.0, 14.0, "after both turns"),
            speech(AUDIO, 0, 1.0, 4.0, "another media item at the same time"),
        ],
        identities=[
            IdentityCluster("v1", "voice", None, [(VIDEO, "speakers", "turn-0")]),
            IdentityCluster("v2", "voice", "Bob", [(VIDEO, "speakers", "turn-1"), (AUDIO, "speakers", "gone")]),
        ],
    )
    catalogue = Catalogue.of(case)
    first, second = build_persons(case.identities, catalogue, ["speech"])

    assert [(s.speech.item.key, s.overlap) for s in first.statements] == [("segment-0", 1.0)]
    assert [(s.speech.item.key, s.overlap) for s in second.statements] == [("segment-1", 0.75)]
    assert (second.label, second.named, second.unresolved) == ("Bob", True, 1)
    finding = second.statements[0].finding()
    assert finding.confidence == 0.675  # three quarters of the line, said with confidence 0.9
    assert [c.key for c in finding.evidence] == ["segment-1", "turn-1"]


def test_appearances_group_members_close_in_time() -> None:
    case = sample_case(
        evidence=[face(VIDEO, n, 0, at) for n, at in enumerate([1.0, 5.0, 30.0, 38.0, 60.0])] + [face(IMAGE, 0, 0, 0)],
        identities=[
            IdentityCluster("f", "face", "Carol", [(VIDEO, "faces", f"face-{n}-0") for n in range(5)]),
            IdentityCluster("f2", "face", "Carol", [(IMAGE, "faces", "face-0-0")]),
        ],
    )
    catalogue = Catalogue.of(case)
    carol, namesake = build_persons(case.identities, catalogue, ["speech"])

    spans = [(a.start_s, a.end_s, len(a.evidence)) for a in carol.appearances(10.0)]
    assert spans == [(1.0, 5.0, 2), (30.0, 38.0, 2), (60.0, 60.0, 1)]
    # Two face clusters labelled alike stay two persons: a person has one face cluster.
    assert namesake.face is not None
    assert (namesake.id, namesake.label, namesake.face.cluster_id) == ("P2", "Carol", "f2")


def test_missing_modalities() -> None:
    case = sample_case(
        results={(VIDEO, "whisper"): {}, (IMAGE, "qwen"): DESCRIBED},
        missing=[
            MissingAnalysis(VIDEO, "llava", "MODEL_UNAVAILABLE: gave up after 900 s"),
            MissingAnalysis(VIDEO, "llava", "a second record of the same"),
            MissingAnalysis(AUDIO, "whisper", "DECODE_ERROR"),
        ],
    )
    found = [(m.modality, m.media_id, m.reason) for m in missing_modalities(case, ("llava",))]
    assert found == [
        ("vision", VIDEO, "MODEL_UNAVAILABLE: gave up after 900 s"),
        ("speech", AUDIO, "DECODE_ERROR"),
    ]  # the image was described by another vision model: no case-wide "vision"
    without = missing_modalities(sample_case(results={}), ("llava",))
    assert [(m.modality, m.media_id) for m in without] == [("vision", None)]
    audio_only = sample_case(results={}, media=[m for m in sample_case().media if m.media_id == AUDIO])
    assert missing_modalities(audio_only, ("llava",)) == []


def test_the_checker_keeps_only_what_the_model_was_shown() -> None:
    case = sample_case(evidence=[scene(VIDEO, 0, 1.0, "hands bound"), scene(VIDEO, 1, 2.0, "a van")])
    catalogue = Catalogue.of(case)
    persons = build_persons([IdentityCluster("f", "face", None, [])], catalogue, ["speech"])
    answer = empty_answer("summary").model_copy(
        update={
            "findings": [
                ModelFinding(evidence=["E1"], statement="shown", confidence=1.7),
                ModelFinding(evidence=["E2"], statement="exists, but was not in this part", confidence=0.5),
                ModelFinding(evidence=[], statement="cites nothing", confidence=0.5),
            ],
            "persons": [ModelPerson(person="P7", evidence=["E1"], description="nobody")],
            "sensitive": [
                ModelIndicator(
                    label=SensitiveLabel.COERCION,
                    assessment=Assessment.NOT_INDICATED,
                    confidence=0.6,
                    rationale="calm",
                    evidence=["E1"],
                ),
                ModelIndicator(
                    label=SensitiveLabel.RESTRAINT,
                    assessment=Assessment.INDICATED,
                    confidence=0.9,
                    rationale="tied",
                    evidence=["E2"],
                ),
                other("a"),
                other("b"),
            ],
        }
    )
    checked = Checker(catalogue, persons).check(ModelDossier.model_validate(answer.model_dump()), {"E1"}, "part 1")

    assert [f.statement for f in checked.answer.findings] == ["shown"]
    assert checked.rejected == [
        "part 1, persons: 'nobody' (no person P7)",
        "part 1, findings: 'exists, but was not in this part' (cites evidence it was not given: E2)",
        "part 1, findings: 'cites nothing' (cites no evidence)",
        "part 1, sensitive restraint (indicated): 'tied' (cites evidence it was not given: E2)",
    ]
    dossier = assemble(
        checked.answer,
        catalogue=catalogue,
        persons=persons,
        missing=[],
        rejected=checked.rejected,
        model="m",
        strategy="single",
        appearance_gap_s=10,
    )
    assert dossier.findings[0].confidence == 1.0  # clamped
    assert [(i.label.value, i.assessment.value, i.rationale) for i in dossier.sensitive] == [
        (
            "restraint",
            "insufficient_evidence",
            "The model's assessment (indicated) cited evidence it was not given (E2) and was rejected.",
        ),
        ("coercion", "not_indicated", "calm"),
        ("other", "indicated", "a"),
        ("other", "indicated", "b"),
    ]
    assert dossier.sensitive[1].evidence[0].key == "keyframe-0"
    assert dossier.persons[0].label == "Unidentified person P1" and dossier.persons[0].appearances == []
