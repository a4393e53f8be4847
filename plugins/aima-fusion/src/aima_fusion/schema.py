"""What the model writes: the dossier's shape with catalogue ids (``E12``, ``P3``) where the dossier has citations.

The model never writes a citation, a media id or a time: it names catalogue entries, and the plugin resolves them
(`aima_fusion.assemble`). Every field is required and no string or list is bounded here, because grammar-constrained
decoding (TGI's outlines, vLLM's xgrammar) compiles a ``maxLength`` or ``maxItems`` into repetitions that make
grammars huge and slow; the dossier's limits are applied after the answer is read. Confidences are clamped then too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from aima.dossier import Assessment, SensitiveLabel

#: An evidence id of the catalogue.
EVIDENCE_ID = r"^E[1-9][0-9]*$"
#: A person id of the catalogue.
PERSON_ID = r"^P[1-9][0-9]*$"

EvidenceIds = list[Annotated[str, Field(pattern=EVIDENCE_ID)]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _ids(description: str) -> Any:
    return Field(description=description)


class ModelFinding(_Strict):
    evidence: EvidenceIds = _ids("Catalogue ids (E1, E2, ...) of the evidence the statement rests on; at least one.")
    statement: str = Field(description="One factual statement the cited evidence supports.")
    confidence: float = Field(description="0 to 1: how well the cited evidence supports the statement.")


class ModelTimelineEvent(_Strict):
    evidence: EvidenceIds = _ids("Catalogue ids of the evidence of the event; at least one.")
    description: str = Field(description="What happens at that point.")


class ModelEntity(_Strict):
    evidence: EvidenceIds = _ids("Catalogue ids of the evidence that shows or names it; at least one.")
    name: str
    description: str


class ModelPerson(_Strict):
    person: str = Field(description="The person's id in the persons list (P1, P2, ...).", pattern=PERSON_ID)
    evidence: EvidenceIds = _ids("Catalogue ids the description rests on; at least one.")
    description: str = Field(description="Who the person appears to be and what they do; never guess a name.")


class ModelIndicator(_Strict):
    label: SensitiveLabel
    assessment: Assessment
    confidence: float = Field(description="0 to 1.")
    rationale: str = Field(description="Why: what the evidence shows, or what is missing to tell.")
    evidence: EvidenceIds = _ids("Catalogue ids; required when indicated, may be empty otherwise.")


class ModelDossier(_Strict):
    """The dossier as the model writes it (and as map steps hand it to the reduce step)."""

    summary: str = Field(description="A short overview of what the case's media show and say.")
    timeline: list[ModelTimelineEvent]
    persons: list[ModelPerson]
    places: list[ModelEntity]
    objects: list[ModelEntity]
    events: list[ModelEntity]
    findings: list[ModelFinding]
    sensitive: list[ModelIndicator]

    def cited(self) -> set[str]:
        """Every evidence id the answer cites."""
        ids: set[str] = set()
        for group in (self.timeline, self.persons, self.places, self.objects, self.events, self.findings):
            for entry in group:
                ids.update(entry.evidence)
        for indicator in self.sensitive:
            ids.update(indicator.evidence)
        return ids


def empty_answer(summary: str = "") -> ModelDossier:
    return ModelDossier(
        summary=summary, timeline=[], persons=[], places=[], objects=[], events=[], findings=[], sensitive=[]
    )
