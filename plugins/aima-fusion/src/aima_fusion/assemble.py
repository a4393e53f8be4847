"""From the model's answer to the dossier: ids checked, citations resolved, the required assessments present.

A statement that cites an id the model was not given (or none at all) is dropped and recorded in
`Dossier.rejected`: the plugin never invents a citation and never keeps an unsupported one. A sensitive indicator
that cannot stand is not dropped but turned into ``insufficient_evidence`` saying why, so that restraint and coercion
are always assessed explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aima.dossier import (
    Assessment,
    Dossier,
    Entity,
    Finding,
    MissingModality,
    SensitiveIndicator,
    SensitiveLabel,
    TimelineEvent,
)
from aima_fusion.catalogue import Catalogue, Entry
from aima_fusion.persons import Person
from aima_fusion.schema import ModelDossier, ModelEntity, ModelIndicator, ModelPerson

#: Assessed in every dossier, whatever the model says.
REQUIRED = (SensitiveLabel.RESTRAINT, SensitiveLabel.COERCION)
NOT_ASSESSED = "not assessed by the model"
_TEXT_MAX = 4000
_NAME_MAX = 500
_SUMMARY_MAX = 20_000
_REJECTED_TEXT = 300
_RANK = {Assessment.INDICATED: 0, Assessment.NOT_INDICATED: 1, Assessment.INSUFFICIENT_EVIDENCE: 2}


@dataclass
class Checked:
    """An answer with only the statements whose citations hold, and what was dropped."""

    answer: ModelDossier
    rejected: list[str] = field(default_factory=list)


class Checker:
    """Checks answers against the catalogue ids the model was given."""

    def __init__(self, catalogue: Catalogue, persons: Sequence[Person]) -> None:
        self.catalogue = catalogue
        self.person_ids = {p.id for p in persons}

    def check(self, answer: ModelDossier, allowed: set[str], source: str) -> Checked:
        """Keep what cites only ids of `allowed` (the ids the model saw), normalised and without repeats."""
        rejected: list[str] = []

        def ids(section: str, text: str, cited: Sequence[str]) -> list[str] | None:
            entries, unknown = self.catalogue.resolve(cited)
            unknown += [e.id for e in entries if e.id not in allowed]
            if unknown:
                rejected.append(
                    f"{source}, {section}: {_clip(text)} (cites evidence it was not given: {', '.join(unknown)})"
                )
                return None
            if not entries:
                rejected.append(f"{source}, {section}: {_clip(text)} (cites no evidence)")
                return None
            return [e.id for e in entries]

        def entities(section: str, items: Iterable[ModelEntity]) -> list[ModelEntity]:
            kept = []
            for item in items:
                found = ids(section, f"{item.name}: {item.description}", item.evidence)
                if found is not None:
                    kept.append(item.model_copy(update={"evidence": found}))
            return kept

        timeline = []
        for event in answer.timeline:
            found = ids("timeline", event.description, event.evidence)
            if found is not None:
                timeline.append(event.model_copy(update={"evidence": found}))
        persons: list[ModelPerson] = []
        for person in answer.persons:
            if person.person not in self.person_ids:
                rejected.append(f"{source}, persons: {_clip(person.description)} (no person {person.person})")
                continue
            found = ids(f"person {person.person}", person.description, person.evidence)
            if found is not None:
                persons.append(person.model_copy(update={"evidence": found}))
        findings = []
        for finding in answer.findings:
            found = ids("findings", finding.statement, finding.evidence)
            if found is not None:
                findings.append(finding.model_copy(update={"evidence": found}))
        sensitive = [self._indicator(i, allowed, source, rejected) for i in answer.sensitive]
        checked = answer.model_copy(
            update={
                "timeline": timeline,
                "persons": persons,
                "places": entities("places", answer.places),
                "objects": entities("objects", answer.objects),
                "events": entities("events", answer.events),
                "findings": findings,
                "sensitive": sensitive,
            }
        )
        return Checked(checked, rejected)

    def _indicator(self, item: ModelIndicator, allowed: set[str], source: str, rejected: list[str]) -> ModelIndicator:
        entries, unknown = self.catalogue.resolve(item.evidence)
        unknown += [e.id for e in entries if e.id not in allowed]
        what = f"{source}, sensitive {item.label.value} ({item.assessment.value}): {_clip(item.rationale)}"
        if unknown:
            rejected.append(f"{what} (cites evidence it was not given: {', '.join(unknown)})")
            return insufficient(
                item.label,
                f"The model's assessment ({item.assessment.value}) cited evidence it was not given "
                f"({', '.join(unknown)}) and was rejected.",
            )
        if item.assessment is Assessment.INDICATED and not entries:
            rejected.append(f"{what} (indicated without evidence)")
            return insufficient(
                item.label, f"The model reported it as indicated without citing evidence: {item.rationale}"
            )
        return item.model_copy(update={"evidence": [e.id for e in entries]})


def assemble(
    answer: ModelDossier,
    *,
    catalogue: Catalogue,
    persons: Sequence[Person],
    missing: Sequence[MissingModality],
    rejected: Sequence[str],
    model: str,
    strategy: str,
    appearance_gap_s: float,
    fallback_indicators: Sequence[ModelIndicator] = (),
) -> Dossier:
    """The dossier of a checked answer. `fallback_indicators` (the parts' assessments of a map-reduce) stand in for
    a required label the final answer left out."""

    def cite(ids: Iterable[str]) -> list[Entry]:
        return catalogue.resolve(ids)[0]

    def entity(item: ModelEntity) -> Entity:
        return Entity(
            name=item.name[:_NAME_MAX],
            description=item.description[:_TEXT_MAX],
            evidence=[e.citation() for e in cite(item.evidence)],
        )

    descriptions: dict[str, str] = {}
    for described in answer.persons:
        descriptions.setdefault(described.person, described.description[:_TEXT_MAX])
    return Dossier(
        summary=answer.summary[:_SUMMARY_MAX],
        timeline=_timeline(answer, catalogue),
        persons=[p.dossier_person(appearance_gap_s, descriptions.get(p.id, "")) for p in persons],
        places=[entity(e) for e in answer.places],
        objects=[entity(e) for e in answer.objects],
        events=[entity(e) for e in answer.events],
        findings=[
            Finding(
                statement=f.statement[:_TEXT_MAX],
                confidence=_unit(f.confidence),
                evidence=[e.citation() for e in cite(f.evidence)],
            )
            for f in answer.findings
        ],
        sensitive=_sensitive(answer.sensitive, fallback_indicators, catalogue),
        missing=list(missing),
        rejected=list(rejected),
        model=model,
        strategy=strategy,
    )


def _timeline(answer: ModelDossier, catalogue: Catalogue) -> list[TimelineEvent]:
    """Events placed in the media item of their first evidence, spanning that item's cited evidence; in the case's
    media order, then by time."""
    events: list[tuple[tuple[int, float, int], TimelineEvent]] = []
    for n, event in enumerate(answer.timeline):
        entries = catalogue.resolve(event.evidence)[0]
        media_id = entries[0].item.media_id
        here = [e for e in entries if e.item.media_id == media_id]
        starts = [e.start_s for e in here if e.start_s is not None]
        ends = [e.end_s for e in here if e.end_s is not None]
        start = min(starts) if starts else None
        timeline_event = TimelineEvent(
            media_id=media_id,
            start_s=start,
            end_s=max(ends) if ends else None,
            description=event.description[:_TEXT_MAX],
            evidence=[e.citation() for e in entries],
        )
        events.append(((catalogue.media_position(media_id), start if start is not None else 0.0, n), timeline_event))
    return [event for _, event in sorted(events, key=lambda pair: pair[0])]


def _sensitive(
    given: Sequence[ModelIndicator], fallback: Sequence[ModelIndicator], catalogue: Catalogue
) -> list[SensitiveIndicator]:
    """One indicator per label (the strongest: indicated, then not indicated, then the most confident), every
    ``other`` kept; restraint and coercion always, first."""
    best: dict[SensitiveLabel, ModelIndicator] = {}
    others: list[ModelIndicator] = []
    for item in given:
        if item.label is SensitiveLabel.OTHER:
            others.append(item)
        elif item.label not in best or _stronger(item, best[item.label]):
            best[item.label] = item
    for label in REQUIRED:
        if label not in best:
            candidates = [i for i in fallback if i.label is label]
            best[label] = min(candidates, key=_strength) if candidates else insufficient(label, NOT_ASSESSED)
    ordered = [best[label] for label in REQUIRED] + [
        best[label] for label in SensitiveLabel if label in best and label not in REQUIRED
    ]
    return [
        SensitiveIndicator(
            label=item.label,
            assessment=item.assessment,
            confidence=_unit(item.confidence),
            rationale=item.rationale[:_TEXT_MAX],
            evidence=[e.citation() for e in catalogue.resolve(item.evidence)[0]],
        )
        for item in [*ordered, *others]
    ]


def _strength(item: ModelIndicator) -> tuple[int, float]:
    return (_RANK[item.assessment], -_unit(item.confidence))


def _stronger(item: ModelIndicator, than: ModelIndicator) -> bool:
    return _strength(item) < _strength(than)


def insufficient(label: SensitiveLabel, rationale: str) -> ModelIndicator:
    return ModelIndicator(
        label=label, assessment=Assessment.INSUFFICIENT_EVIDENCE, confidence=0.0, rationale=rationale, evidence=[]
    )


def _unit(value: float) -> float:
    """A confidence within 0..1 (a model may write 1.2, or NaN, which JSON parsing lets through)."""
    value = float(value)
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _REJECTED_TEXT else text[: _REJECTED_TEXT - 3] + "...")
