"""The conversations sent to the model: the whole case at once, one part of it (map), or the parts' dossiers (reduce).

Everything that comes from the case (file names, labels, transcript lines, on-screen text, picture descriptions,
error messages, and the partial dossiers made from them) reaches the prompt only through `aima.inference.quoted`,
with `DATA_RULES` in the system prompt: text in a video that says "ignore your instructions" stays a quoted value.
The only words outside data blocks are the plugin's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aima.dossier import MissingModality
from aima.inference import DATA_RULES, Message, quoted
from aima_fusion.catalogue import ROW_COLUMNS, Catalogue, Entry
from aima_fusion.persons import Person
from aima_fusion.schema import ModelDossier

_TASK = """\
You are an evidence analyst working for investigators and journalists. You receive the results of automatic \
analyses of the media of one case (transcript lines, speaker turns, faces, on-screen text, descriptions of pictures) \
as an evidence catalogue whose items have ids (E1, E2, ...), and you write a dossier of the case as JSON.

Rules:
- Every timeline event, person description, place, object, event, finding and sensitive indicator lists in \
"evidence" the catalogue ids it rests on. Cite only ids that appear in the catalogue you are given; never invent \
ids, media, times, names or facts. What no item supports, leave out.
- Keep to what the evidence shows or says. Automatic analyses err: weigh their confidence, and give each statement \
a confidence from 0 to 1 that says how well its evidence supports it.
- persons: describe only persons of the persons list, by their id (P1, P2, ...), from what they are seen doing and \
heard saying. Never guess who someone is; use a name only when a label or a transcript line gives it.
- timeline: what happens, in time order, each event citing the evidence of that moment.
- places, objects, events: what the media show or mention that matters to the case.
- findings: the facts an investigator should know, each a short statement.
- sensitive: always assess "restraint" (handcuffs, cable ties, ropes, tape, a person tied, held down or locked in) \
and "coercion" (threats, orders under duress, forced or scripted statements, intimidation, signs that a speaker is \
not free); add "violence", "weapon", "injury" or "other" when the evidence shows them. The assessment is \
"indicated" (cite the evidence), "not_indicated" (the evidence shows the situation and no sign of it) or \
"insufficient_evidence" (the evidence cannot tell, for example because pictures or sound were not analysed: say \
what is missing). Prefer "insufficient_evidence" to a guess.
- summary: a few sentences on what the case's media show and say, and what the dossier lacks.
- Analyses listed as missing did not run or failed: what they would have shown is unknown.
- Write in English. Answer with the JSON object only."""

_PART = """\

This request holds part {index} of {count} of a case too large for one request: write a partial dossier of this \
part only. A later step combines the parts, so keep every statement that matters, with its evidence ids."""

_REDUCE = """\
You are an evidence analyst working for investigators and journalists. A large case was analysed in parts; for each \
part a dossier was written whose statements cite evidence ids (E1, E2, ...). Combine the partial dossiers into one \
dossier of the whole case, as JSON of the same shape.

Rules:
- Keep every statement that matters; merge statements that say the same thing (their evidence ids together) and \
resolve contradictions in favour of the better supported one, or state both.
- Cite only evidence ids that the partial dossiers cite, for the statements that cite them. Never invent ids, \
facts or names.
- timeline: one timeline of the whole case, in time order.
- persons: one description per person id (P1, P2, ...), combining the parts.
- sensitive: one indicator per label. "restraint" and "coercion" are always assessed: "indicated" when a part \
indicates it with evidence (keep that evidence), "not_indicated" when parts that could tell found no sign of it, \
"insufficient_evidence" otherwise.
- summary: a few sentences on the whole case, and what the dossier lacks.
- Write in English. Answer with the JSON object only."""

_REPAIR = (
    "Your previous answer could not be used: it is not valid JSON of the required shape. The problem and (as far as "
    "it fits) your previous answer follow as data. Answer again with the complete, corrected JSON object only."
)
_REPAIR_CUT = (
    " Your previous answer was cut off at the length limit: write a shorter dossier, with fewer and shorter "
    "statements, so that it ends within the limit."
)


@dataclass(frozen=True)
class Part:
    """Which part of a map-reduce fusion a request holds (None: the whole case)."""

    index: int
    count: int


class Prompts:
    """Builds the messages of one case's requests."""

    def __init__(
        self,
        title: str,
        catalogue: Catalogue,
        persons: Sequence[Person],
        missing: Sequence[MissingModality],
        person_limit: int,
    ) -> None:
        self.title = title
        self.catalogue = catalogue
        self.persons = persons
        self.missing = missing
        self.person_limit = person_limit

    def fuse(self, entries: Sequence[Entry], part: Part | None = None) -> list[Message]:
        """The case (or one part of it) with its evidence, for a dossier."""
        system = _TASK + (_PART.format(index=part.index, count=part.count) if part else "")
        groups = self.catalogue.by_media(entries)
        ids = {e.id for e in entries}
        persons = [p.prompt_row(self.person_limit, ids) for p in self.persons if p.touches(ids)]
        blocks = [
            self._context(groups if part else None),
            "Persons of the case (face and voice clusters; describe them by their id). For each, the evidence ids "
            "where they are seen or heard and of the transcript lines they say:\n" + quoted("persons", persons),
            "Evidence catalogue, one block per media item. Each row is "
            + ", ".join(ROW_COLUMNS)
            + " (times in seconds from the start of the media item; none for still images):\n"
            + "\n".join(self._evidence(media_id, group) for media_id, group in groups.items()),
            "Write the dossier"
            + (f" of part {part.index} of {part.count}" if part else "")
            + " as JSON. Cite only the evidence ids of the catalogue above.",
        ]
        return [Message.system(f"{system}\n\n{DATA_RULES}"), Message.user("\n\n".join(blocks))]

    def reduce(self, partials: Sequence[ModelDossier], first: int, total: int) -> list[Message]:
        """Partial dossiers (numbered from `first` of `total`) to combine."""
        persons = [
            {"person": p.id, "label": p.label if p.named else None, "clusters": p.prompt_row(1)["clusters"]}
            for p in self.persons
        ]
        blocks = [
            self._context(None),
            "Persons of the case:\n" + quoted("persons", persons),
            "Partial dossiers:\n"
            + "\n".join(
                quoted(f"partial dossier {first + n} of {total}", partial.model_dump(mode="json"))
                for n, partial in enumerate(partials)
            ),
            "Combine the partial dossiers into one dossier as JSON. Cite only evidence ids that they cite.",
        ]
        return [Message.system(f"{_REDUCE}\n\n{DATA_RULES}"), Message.user("\n\n".join(blocks))]

    def _evidence(self, media_id: str, entries: Sequence[Entry]) -> str:
        ref = self.catalogue.media_refs[media_id]
        return quoted(f"evidence {ref}", self.catalogue.evidence_table(media_id, entries))

    def _context(self, groups: dict[str, list[Entry]] | None) -> str:
        media = self.catalogue.media_rows(None if groups is None else groups.keys())
        missing = [
            {
                "modality": m.modality,
                "media": self.catalogue.media_refs.get(m.media_id) if m.media_id else None,
                "reason": m.reason,
            }
            for m in self.missing
        ]
        parts = [
            "Case title:\n" + quoted("case title", self.title),
            "Media of the case" + (" in this part" if groups is not None else "") + ":\n" + quoted("media", media),
        ]
        if missing:
            parts.append("Missing analyses:\n" + quoted("missing analyses", missing))
        return "\n\n".join(parts)


def repair(messages: Sequence[Message], problem: str, previous: str | None, cut: bool) -> list[Message]:
    """The conversation again, with the failed answer's problem (and the answer, when given) to correct."""
    text = _REPAIR + (_REPAIR_CUT if cut else "") + "\n\n" + quoted("problem", problem)
    if previous:
        text += "\n\n" + quoted("previous answer", previous)
    return [*messages, Message.user(text)]


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters in the middle, so both ends stay visible."""
    if len(text) <= limit:
        return text
    if limit < 40:
        return ""
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"
