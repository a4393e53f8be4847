"""The evidence catalogue: the case's citable items numbered E1..En, so that the model cites short ids and the plugin
turns them back into citations it did not have to trust the model with.

Items are numbered in reading order (media in the case's order, then time), so that neighbouring ids are neighbouring
evidence. Media get ids M1..Mk the same way; their file names are user data and reach the prompt quoted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aima.analysis import CaseInput, CaseMedia, EvidenceItem
from aima.dossier import Citation


@dataclass(frozen=True)
class Entry:
    """One catalogue entry: an evidence item under its id."""

    id: str
    media_ref: str
    item: EvidenceItem

    @property
    def ref(self) -> tuple[str, str, str]:
        return (self.item.media_id, self.item.analyzer, self.item.key)

    @property
    def start_s(self) -> float | None:
        return self.item.start_s

    @property
    def end_s(self) -> float | None:
        """The end of the item, or its start for an instant (a keyframe, a face)."""
        return self.item.end_s if self.item.end_s is not None else self.item.start_s

    def citation(self) -> Citation:
        item = self.item
        return Citation(
            media_id=item.media_id,
            analyzer=item.analyzer,
            key=item.key,
            start_s=item.start_s,
            end_s=item.end_s,
            keyframe=item.keyframe,
            box=[float(v) for v in item.box] if item.box is not None else None,
        )

    def row(self) -> list[Any]:
        """The entry as a row of the prompt's evidence table (see `ROW_COLUMNS`)."""
        item = self.item
        confidence = round(item.confidence, 2) if item.confidence is not None else None
        summary = item.summary if len(item.summary) <= SUMMARY_MAX else item.summary[: SUMMARY_MAX - 3] + "..."
        return [self.id, item.kind, _seconds(item.start_s), _seconds(item.end_s), confidence, summary]


#: Characters of an item's summary the prompt shows (a long OCR page is cut).
SUMMARY_MAX = 2000
#: The columns of an evidence row in the prompt.
ROW_COLUMNS = ("id", "kind", "start_s", "end_s", "confidence", "summary")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class Catalogue:
    """Every evidence item of the case under an id, and its media under theirs."""

    def __init__(self, media: Sequence[CaseMedia], evidence: Iterable[EvidenceItem]) -> None:
        self.media: dict[str, CaseMedia] = {m.media_id: m for m in media}
        order = {media_id: index for index, media_id in enumerate(self.media)}
        unique: dict[tuple[str, str, str], EvidenceItem] = {}
        for item in evidence:
            unique.setdefault((item.media_id, item.analyzer, item.key), item)
            order.setdefault(item.media_id, len(order))
        self.media_refs: dict[str, str] = {media_id: f"M{i + 1}" for media_id, i in order.items()}

        def position(item: EvidenceItem) -> tuple[int, float, int, str, str]:
            when = item.start_s if item.start_s is not None else 0.0
            return (order[item.media_id], when, item.keyframe or 0, item.analyzer, item.key)

        ranked = sorted(unique.values(), key=position)
        self.entries: dict[str, Entry] = {}
        self.by_ref: dict[tuple[str, str, str], Entry] = {}
        for number, item in enumerate(ranked, start=1):
            entry = Entry(f"E{number}", self.media_refs[item.media_id], item)
            self.entries[entry.id] = entry
            self.by_ref[entry.ref] = entry

    @classmethod
    def of(cls, case: CaseInput) -> Catalogue:
        return cls(case.media, case.evidence)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self.entries

    def get(self, entry_id: str) -> Entry | None:
        return self.entries.get(normalise_id(entry_id))

    def resolve(self, ids: Iterable[str]) -> tuple[list[Entry], list[str]]:
        """The entries of `ids` in their order without repeats, and the ids that name none."""
        found: dict[str, Entry] = {}
        unknown: list[str] = []
        for raw in ids:
            entry = self.get(raw)
            if entry is None:
                if raw not in unknown:
                    unknown.append(raw)
            else:
                found.setdefault(entry.id, entry)
        return list(found.values()), unknown

    def by_media(self, entries: Iterable[Entry] | None = None) -> dict[str, list[Entry]]:
        """Entries grouped by media id, in catalogue order."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.entries.values() if entries is None else entries:
            groups.setdefault(entry.item.media_id, []).append(entry)
        return groups

    def media_position(self, media_id: str) -> int:
        ref = self.media_refs.get(media_id)
        return int(ref[1:]) if ref else len(self.media_refs) + 1

    def media_rows(self, media_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The media list of the prompt: id, file name, kind, duration."""
        wanted = set(self.media) if media_ids is None else set(media_ids)
        rows: list[dict[str, Any]] = []
        for media_id, ref in self.media_refs.items():
            media = self.media.get(media_id)
            if media_id not in wanted:
                continue
            row: dict[str, Any] = {"media": ref}
            if media is not None:
                row.update(file=media.filename, kind=str(media.kind), duration_s=_seconds(media.duration_s))
            rows.append(row)
        return rows

    def evidence_table(self, media_id: str, entries: Sequence[Entry]) -> Mapping[str, Any]:
        """One media item's entries as the prompt quotes them."""
        return {
            "media": self.media_refs[media_id],
            "columns": list(ROW_COLUMNS),
            "rows": [entry.row() for entry in entries],
        }


def normalise_id(raw: str) -> str:
    """``" e12 "`` is ``E12``; models sometimes vary the case or pad."""
    return raw.strip().upper()
