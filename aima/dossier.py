"""The dossier: what a case's media show and say, fused by a language model, every finding tied to its evidence.

The schema is the core's (the API types it, the server checks its citations); a fusion plugin fills it. A citation
names a stored analyzer result and, within it, one item by its key (`aima.analysis.EvidenceItem`): a transcript
segment, a face, a line of text, a keyframe's description. The server refuses a dossier whose citations do not all
resolve to stored results.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from pydantic import BaseModel, Field


class Citation(BaseModel):
    """Where a statement comes from: one item of one analyzer's result for one media item."""

    media_id: str
    analyzer: str
    #: The item within the result (`EvidenceItem.key`); None cites the whole result.
    key: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    keyframe: int | None = None
    box: list[float] | None = None


class Finding(BaseModel):
    statement: str = Field(max_length=4000)
    confidence: float = Field(ge=0.0, le=1.0)
    evidence: list[Citation] = Field(min_length=1)


class TimelineEvent(BaseModel):
    media_id: str
    start_s: float | None = None
    end_s: float | None = None
    description: str = Field(max_length=4000)
    evidence: list[Citation] = Field(min_length=1)


class Appearance(BaseModel):
    media_id: str
    start_s: float | None = None
    end_s: float | None = None
    evidence: list[Citation] = Field(min_length=1)


class DossierPerson(BaseModel):
    """A person of the case: a face cluster and/or a voice cluster, with where they appear and what they say."""

    label: str = Field(max_length=200)
    face_cluster_id: str | None = None
    voice_cluster_id: str | None = None
    description: str = Field(default="", max_length=4000)
    appearances: list[Appearance] = Field(default_factory=list)
    statements: list[Finding] = Field(default_factory=list, description="What they say, quoted from transcripts.")


class Entity(BaseModel):
    """A place, an object or an event."""

    name: str = Field(max_length=500)
    description: str = Field(default="", max_length=4000)
    evidence: list[Citation] = Field(min_length=1)


class SensitiveLabel(enum.StrEnum):
    RESTRAINT = "restraint"
    COERCION = "coercion"
    VIOLENCE = "violence"
    WEAPON = "weapon"
    INJURY = "injury"
    OTHER = "other"


class Assessment(enum.StrEnum):
    INDICATED = "indicated"
    NOT_INDICATED = "not_indicated"
    INSUFFICIENT_EVIDENCE = "insufficient_evidence"


class SensitiveIndicator(BaseModel):
    """A contextual flag (restraint, coercion, ...): the outcome, how sure, why, and the evidence behind it.
    `insufficient_evidence` is an explicit outcome, never a silent omission."""

    label: SensitiveLabel
    assessment: Assessment
    confidence: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(max_length=4000)
    #: Empty only for `insufficient_evidence` and `not_indicated`.
    evidence: list[Citation] = Field(default_factory=list)


class MissingModality(BaseModel):
    """An analysis the dossier had to do without (the vision endpoint stayed down, a task failed)."""

    modality: str
    media_id: str | None = None
    reason: str


class Dossier(BaseModel):
    summary: str = Field(max_length=20_000)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    persons: list[DossierPerson] = Field(default_factory=list)
    places: list[Entity] = Field(default_factory=list)
    objects: list[Entity] = Field(default_factory=list)
    events: list[Entity] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    sensitive: list[SensitiveIndicator] = Field(default_factory=list)
    missing: list[MissingModality] = Field(default_factory=list)
    #: Statements the fusion dropped because their citations did not resolve, for the record.
    rejected: list[str] = Field(default_factory=list)
    model: str = ""
    #: How the case was fused: "single" (one call) or "map-reduce" (in parts, then combined).
    strategy: str = "single"

    def citations(self) -> list[Citation]:
        """Every citation in the dossier, for the server's check."""
        return citations_in(self)


def citations_in(value: object) -> list[Citation]:
    """Every `Citation` held anywhere in a result (its fields, their models, lists and mappings, in field order),
    each object once: a case analyzer's own result type is checked as thoroughly as a `Dossier`."""
    found: list[Citation] = []
    seen: set[int] = set()

    def walk(node: object) -> None:
        if id(node) in seen:
            return
        if isinstance(node, Citation):
            seen.add(id(node))
            found.append(node)
        elif isinstance(node, BaseModel):
            seen.add(id(node))
            for name in type(node).model_fields:
                walk(getattr(node, name))
            for extra in (node.model_extra or {}).values():
                walk(extra)
        elif isinstance(node, Mapping):
            seen.add(id(node))
            for item in node.values():
                walk(item)
        elif isinstance(node, list | tuple | set | frozenset):
            seen.add(id(node))
            for item in node:
                walk(item)

    walk(value)
    return found
