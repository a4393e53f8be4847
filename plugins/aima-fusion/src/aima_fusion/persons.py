"""Persons of the dossier, from the case's face and voice clusters, without the model.

Where a person appears comes straight from their cluster's members (each a face or a speaker turn in the catalogue);
what they say is every transcript line that overlaps one of their speaker turns in time, given to the turn it overlaps
most. A face cluster and a voice cluster that users gave the same label are one person. The model may describe a
person (by the person's id) but adds no appearance or statement.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aima.analysis import IdentityCluster
from aima.dossier import Appearance, DossierPerson, Finding
from aima_fusion.catalogue import Catalogue, Entry

STATEMENT_MAX = 4000


@dataclass(frozen=True)
class Statement:
    """A transcript line said by a person: the line, the speaker turn it falls in, and how much of it does."""

    speech: Entry
    turn: Entry
    #: Fraction of the line's time within the turn (1 for a line without duration inside it).
    overlap: float

    def finding(self) -> Finding:
        certainty = self.speech.item.confidence
        confidence = self.overlap * (certainty if certainty is not None else 1.0)
        return Finding(
            statement=self.speech.item.summary[:STATEMENT_MAX],
            confidence=round(min(max(confidence, 0.0), 1.0), 3),
            evidence=[self.speech.citation(), self.turn.citation()],
        )


@dataclass
class Person:
    """A person of the case under its catalogue id (P1, P2, ...)."""

    id: str
    label: str
    #: Whether users named the person (otherwise the label is made up from the id).
    named: bool
    face: IdentityCluster | None = None
    voice: IdentityCluster | None = None
    #: Members found in the catalogue (faces and turns), in catalogue order.
    members: list[Entry] = field(default_factory=list)
    #: Members whose evidence the case no longer holds (a deleted result): left out, never cited.
    unresolved: int = 0
    statements: list[Statement] = field(default_factory=list)

    def appearances(self, gap_s: float) -> list[Appearance]:
        """Members grouped by media item, and within one by time: members less than `gap_s` apart make one."""
        out: list[Appearance] = []
        for media_id, entries in _by_media(self.members).items():
            timed = sorted((e for e in entries if e.start_s is not None), key=lambda e: (e.start_s or 0.0, e.id))
            untimed = [e for e in entries if e.start_s is None]
            spans: list[list[Entry]] = []
            reached = 0.0
            for entry in timed:
                if spans and (entry.start_s or 0.0) - reached <= gap_s:
                    spans[-1].append(entry)
                else:
                    spans.append([entry])
                    reached = 0.0
                reached = max(reached, entry.end_s or 0.0)
            if untimed:
                spans.append(untimed)
            for span in spans:
                starts = [e.start_s for e in span if e.start_s is not None]
                ends = [e.end_s for e in span if e.end_s is not None]
                out.append(
                    Appearance(
                        media_id=media_id,
                        start_s=min(starts) if starts else None,
                        end_s=max(ends) if ends else None,
                        evidence=[e.citation() for e in span],
                    )
                )
        return out

    def dossier_person(self, gap_s: float, description: str = "") -> DossierPerson:
        return DossierPerson(
            label=self.label,
            face_cluster_id=self.face.cluster_id if self.face else None,
            voice_cluster_id=self.voice.cluster_id if self.voice else None,
            description=description,
            appearances=self.appearances(gap_s),
            statements=[s.finding() for s in self.statements],
        )

    def prompt_row(self, limit: int, entries: set[str] | None = None) -> dict[str, Any]:
        """The person as the prompt lists them: label, kinds of cluster, the evidence ids where they are seen or
        heard and the transcript lines they say (at most `limit` each; only those in `entries` when given)."""

        def ids(items: Iterable[Entry]) -> dict[str, Any]:
            chosen = [e.id for e in items if entries is None or e.id in entries]
            return {"ids": chosen[:limit], "more": max(0, len(chosen) - limit)}

        return {
            "person": self.id,
            "label": self.label if self.named else None,
            "clusters": [kind for kind, c in (("face", self.face), ("voice", self.voice)) if c is not None],
            "seen_or_heard": ids(self.members),
            "says": ids(s.speech for s in self.statements),
        }

    def touches(self, entries: set[str]) -> bool:
        """Whether the person has a member or a statement among `entries`."""
        return any(e.id in entries for e in self.members) or any(s.speech.id in entries for s in self.statements)


def build_persons(
    identities: Sequence[IdentityCluster], catalogue: Catalogue, speech_kinds: Iterable[str]
) -> list[Person]:
    """One person per cluster, a face and a voice cluster of the same label joined; statements linked by time."""
    persons: list[Person] = []
    by_label: dict[str, Person] = {}
    for cluster in identities:
        key = (cluster.label or "").strip().casefold()
        person = by_label.get(key) if key else None
        slot = "face" if cluster.kind == "face" else "voice"
        if person is None or getattr(person, slot) is not None:
            number = len(persons) + 1
            named = bool(key)
            fallback = f"Unidentified {'person' if slot == 'face' else 'voice'} P{number}"
            person = Person(id=f"P{number}", label=(cluster.label or "").strip() if named else fallback, named=named)
            persons.append(person)
            if key:
                by_label.setdefault(key, person)
        if slot == "face":
            person.face = cluster
        else:
            person.voice = cluster
        found = {e.id: e for e in person.members}
        for ref in cluster.members:
            entry = catalogue.by_ref.get(_ref(ref))
            if entry is None:
                person.unresolved += 1
            else:
                found.setdefault(entry.id, entry)
        person.members = sorted(found.values(), key=_number)
    _link_statements(persons, catalogue, frozenset(speech_kinds))
    return persons


def _link_statements(persons: Sequence[Person], catalogue: Catalogue, speech_kinds: frozenset[str]) -> None:
    """Each transcript line goes to the voice whose turn overlaps it most (ties: the earlier turn)."""
    turns: dict[str, list[tuple[Entry, Person]]] = {}
    for person in persons:
        if person.voice is None:
            continue
        voice_refs = {_ref(ref) for ref in person.voice.members}
        for entry in person.members:
            if entry.ref in voice_refs and entry.start_s is not None:
                turns.setdefault(entry.item.media_id, []).append((entry, person))
    groups = catalogue.by_media()
    for media_id, candidates in turns.items():
        candidates.sort(key=lambda pair: (pair[0].start_s or 0.0, _number(pair[0])))
        starts = [turn.start_s or 0.0 for turn, _ in candidates]
        reach = list(itertools.accumulate((turn.end_s or 0.0 for turn, _ in candidates), max))
        for speech in groups.get(media_id, []):
            if speech.item.kind not in speech_kinds or speech.start_s is None:
                continue
            begin = speech.start_s
            end = max(begin, speech.end_s or begin)
            best: tuple[float, Entry, Person] | None = None
            # Turns that start before the line ends, latest first, until none before can reach its start.
            for index in range(bisect.bisect_right(starts, end) - 1, -1, -1):
                if reach[index] < begin:
                    break
                turn, person = candidates[index]
                share = _overlap(speech, turn)
                if share > 0 and (best is None or share >= best[0]):
                    best = (share, turn, person)
            if best is not None:
                share, turn, person = best
                person.statements.append(Statement(speech, turn, round(share, 3)))
    for person in persons:
        person.statements.sort(key=lambda s: _number(s.speech))


def _number(entry: Entry) -> int:
    return int(entry.id[1:])


def _ref(member: Sequence[str]) -> tuple[str, str, str]:
    """A member reference as a tuple (it may arrive as a JSON list)."""
    return (str(member[0]), str(member[1]), str(member[2]))


def _overlap(speech: Entry, turn: Entry) -> float:
    """Fraction of the line's time inside the turn."""
    start, end = speech.start_s or 0.0, speech.end_s or 0.0
    turn_start, turn_end = turn.start_s or 0.0, turn.end_s or 0.0
    if end <= start:
        return 1.0 if turn_start <= start <= turn_end else 0.0
    return max(0.0, min(end, turn_end) - max(start, turn_start)) / (end - start)


def _by_media(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.item.media_id, []).append(entry)
    return groups
