"""Dossiers: the versions a case's case tasks made, the server's check of their citations, and reading them back.

A case task's result is checked before it is stored: every citation in it (found by the server, not only those the
case analyzer lists) must resolve to the case's stored results and carry only its item's keyframe, box and time
(`check_citations`), else the task fails with `INVALID_CITATIONS` naming the first one that does not. A stored
dossier is the case's next version; a task that runs again (a redelivery) replaces its own version instead of adding
one. Versions are read with their citations resolved into the evidence items they name (`resolve_evidence`), and
exported as Markdown (`render_markdown`) or as the stored JSON.
"""

from __future__ import annotations

import logging
import math
import re
import string
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import BaseModel, ValidationError
from sqlalchemy import Table, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from aima.analysis import CaseAnalyzer, CaseInput, EvidenceItem
from aima.db.models import Artifact, DossierVersion, Job, Media
from aima.dossier import Citation, Dossier, citations_in
from aima.errors import AimaError, NotFound
from aima.resources import Resources
from aima.services.access import Actor
from aima.services.artifacts import ArtifactKind
from aima.services.case_input import evidence_index, read_results
from aima.services.cases import get_case

logger = logging.getLogger(__name__)

#: Seconds a citation's time range may reach beyond its item's (rounding by the model).
TIME_TOLERANCE_S = 0.5

_dossiers = cast(Table, DossierVersion.__table__)


class InvalidCitations(AimaError):
    """A case analyzer's result cites evidence that the case does not hold: nothing of it is stored."""

    code = "INVALID_CITATIONS"


# --- Checking ------------------------------------------------------------------------------------------------------


def as_citations(found: Iterable[object]) -> list[Citation]:
    """What `CaseAnalyzer.citations` returned, as citations; anything else is refused."""
    citations: list[Citation] = []
    for n, value in enumerate(found, start=1):
        if isinstance(value, Citation):
            citations.append(value)
            continue
        try:
            citations.append(Citation.model_validate(value, from_attributes=True))
        except ValidationError:
            raise InvalidCitations(f"Citation {n} is not a citation ({type(value).__name__}).") from None
    return citations


def check_citations(citations: Sequence[Citation], case: CaseInput) -> None:
    """Raise `InvalidCitations` naming the first citation that does not resolve (see `citation_problem`)."""
    media = {m.media_id: m.duration_s for m in case.media}
    evidence = {(e.media_id, e.analyzer, e.key): e for e in case.evidence}
    for n, citation in enumerate(citations, start=1):
        problem = citation_problem(citation, media, case.results, evidence)
        if problem is not None:
            raise InvalidCitations(f"Citation {n} ({describe(citation)}) does not resolve: {problem}.")


def citation_problem(
    citation: Citation,
    media: Mapping[str, float | None],
    results: Mapping[tuple[str, str], object],
    evidence: Mapping[tuple[str, str, str], EvidenceItem],
) -> str | None:
    """Why a citation does not resolve, or None when it does (`media`: duration by media id).

    Its media must be in the case, a result of its analyzer stored for that media, and its key (when given) an
    evidence item of that result. What else it carries must be the cited item's own, since the reader is shown it as
    the evidence: a time range within the item's give or take `TIME_TOLERANCE_S` (a whole result's: within the
    media's; an item without a time takes none), the item's keyframe exactly, and a box ``[x1, y1, x2, y2]`` equal
    to or inside the item's give or take `BOX_TOLERANCE` (an item of another box shape: equal to it). A keyframe or
    box on an item that has none, or on a whole result (which has no keyframe or box of its own), is refused.
    """
    if citation.media_id not in media:
        return "that media item is not in the case"
    if (citation.media_id, citation.analyzer) not in results:
        return f"no {citation.analyzer} result is stored for that media item"
    low, high = 0.0, media[citation.media_id] or math.inf
    item: EvidenceItem | None = None
    if citation.key is not None:
        item = evidence.get((citation.media_id, citation.analyzer, citation.key))
        if item is None:
            return f"the {citation.analyzer} result has no item {citation.key!r}"
        if item.start_s is not None:
            low, high = item.start_s, item.end_s if item.end_s is not None else item.start_s
        elif citation.start_s is not None or citation.end_s is not None:
            return "the cited item has no time, but the citation gives one"
    for value in (citation.start_s, citation.end_s):
        if value is not None and not low - TIME_TOLERANCE_S <= value <= high + TIME_TOLERANCE_S:
            return f"{value:g} s lies outside the cited item ({low:g}-{high:g} s)"
    if citation.start_s is not None and citation.end_s is not None and citation.start_s > citation.end_s:
        return "it ends before it starts"
    if citation.keyframe is not None:
        if item is None:
            return f"it names keyframe {citation.keyframe}, but a whole result has no keyframe (cite one of its items)"
        if item.keyframe is None:
            return f"it names keyframe {citation.keyframe}, but the cited item has none"
        if citation.keyframe != item.keyframe:
            return f"it names keyframe {citation.keyframe}, but the cited item is on keyframe {item.keyframe}"
    if citation.box is not None:
        return _box_problem(citation.box, item)
    return None


#: How far (in the box's units: pixels, for the analyzers AIMA has) a citation's box may reach beyond its item's.
BOX_TOLERANCE = 0.5


def _box_problem(box: Sequence[float], item: EvidenceItem | None) -> str | None:
    shown = _box(box)
    if item is None:
        return f"it gives box {shown}, but a whole result has no box (cite one of its items)"
    if item.box is None:
        return f"it gives box {shown}, but the cited item has none"
    own = [float(v) for v in item.box]
    if len(own) != 4:  # not a rectangle: only the item's own box can be cited
        return None if [float(v) for v in box] == own else f"box {shown} is not the cited item's {_box(own)}"
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[0] > box[2] or box[1] > box[3]:
        return f"box {shown} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2"
    inside = (
        own[0] - BOX_TOLERANCE <= box[0]
        and own[1] - BOX_TOLERANCE <= box[1]
        and box[2] <= own[2] + BOX_TOLERANCE
        and box[3] <= own[3] + BOX_TOLERANCE
    )
    return None if inside else f"box {shown} lies outside the cited item's box {_box(own)}"


def _box(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def describe(citation: Citation) -> str:
    where = f"media {citation.media_id}, {citation.analyzer}"
    if citation.key is not None:
        where += f" {citation.key}"
    if citation.start_s is not None:
        where += f" @ {citation.start_s:g}" + (f"-{citation.end_s:g}" if citation.end_s is not None else "") + " s"
    return where


def checked_result(analyzer: CaseAnalyzer, result: BaseModel, case: CaseInput) -> dict[str, Any]:
    """The result as it is stored, once its type and every citation in it are checked: the citations the result
    holds (`citations_in`: a `Dossier`'s all, whatever the analyzer's hook says), then any further ones the
    analyzer's `CaseAnalyzer.citations` lists (citations it keeps in another shape)."""
    if not isinstance(result, analyzer.result_model):
        raise AimaError(
            f"Case analyzer {analyzer.name} returned {type(result).__name__}, not {analyzer.result_model.__name__}.",
            code="INVALID_OUTPUT",
        )
    held = citations_in(result)
    known = {_identity(c) for c in held}
    listed = [c for c in as_citations(analyzer.citations(result)) if _identity(c) not in known]
    check_citations([*held, *listed], case)
    content: dict[str, Any] = result.model_dump(mode="json")
    return content


def _identity(citation: Citation) -> tuple[object, ...]:
    return (*citation_key(citation), tuple(citation.box) if citation.box is not None else None)


# --- Storing -------------------------------------------------------------------------------------------------------

_LOCK_CASE = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


async def _version_of_task(conn: AsyncConnection, task_id: uuid.UUID) -> int | None:
    version = await conn.scalar(select(_dossiers.c.version).where(_dossiers.c.task_id == task_id))
    return int(version) if version is not None else None


async def _latest_version(conn: AsyncConnection, case_id: uuid.UUID) -> int:
    latest = await conn.scalar(select(func.max(_dossiers.c.version)).where(_dossiers.c.case_id == case_id))
    return int(latest or 0)


async def next_version(resources: Resources, *, case_id: uuid.UUID, task_id: uuid.UUID) -> int:
    """The version a case task's dossier will have: its own when it stored one already, else the case's next."""
    async with resources.engine.connect() as conn:
        own = await _version_of_task(conn, task_id)
        return own if own is not None else await _latest_version(conn, case_id) + 1


@dataclass(frozen=True)
class StoredDossier:
    id: uuid.UUID
    version: int


async def store_version(
    resources: Resources,
    *,
    case_id: uuid.UUID,
    job_id: uuid.UUID,
    task_id: uuid.UUID,
    analyzer: str,
    analyzer_version: str,
    content: Mapping[str, Any],
) -> StoredDossier:
    """Store a checked dossier as the case's next version, or replace the one this task stored before. Writers of
    one case take turns (an advisory lock), so versions are numbered without gaps or doubles."""
    model = str(content.get("model") or "")[:200]
    now = datetime.now(UTC)
    try:
        async with resources.engine.begin() as conn:
            await conn.execute(_LOCK_CASE, {"key": f"dossier:{case_id}"})
            own = await _version_of_task(conn, task_id)
            if own is not None:
                row = (
                    await conn.execute(
                        update(_dossiers)
                        .where(_dossiers.c.task_id == task_id)
                        .values(content=content, model=model, analyzer_version=analyzer_version, created_at=now)
                        .returning(_dossiers.c.id, _dossiers.c.version)
                    )
                ).one()
                return StoredDossier(row.id, row.version)
            version = await _latest_version(conn, case_id) + 1
            created_by = await conn.scalar(select(Job.created_by).where(Job.id == job_id))
            dossier_id = uuid.uuid4()
            await conn.execute(
                insert(_dossiers).values(
                    id=dossier_id,
                    case_id=case_id,
                    version=version,
                    job_id=job_id,
                    task_id=task_id,
                    analyzer=analyzer,
                    analyzer_version=analyzer_version,
                    model=model,
                    created_at=now,
                    content=content,
                    created_by=created_by,
                )
            )
    except IntegrityError:
        # The case, job or task went while the dossier was made: there is nothing to file it under.
        raise NotFound("Case", case_id) from None
    logger.info("case %s: dossier version %d stored by %s (task %s)", case_id, version, analyzer, task_id)
    return StoredDossier(dossier_id, version)


async def detach_versions(conn: AsyncConnection, task_ids: Sequence[uuid.UUID]) -> None:
    """Before case tasks run again from the start (a retry), the versions they stored stop being theirs: the new run
    stores a version of its own and the earlier one stays readable as it was (its ``task_id`` becomes null)."""
    await conn.execute(update(_dossiers).where(_dossiers.c.task_id.in_(task_ids)).values(task_id=None))


async def discard_version(resources: Resources, task_id: uuid.UUID) -> bool:
    """Delete the version a task stored (its job was cancelled while it ran); whether there was one."""
    async with resources.engine.begin() as conn:
        deleted = await conn.execute(delete(_dossiers).where(_dossiers.c.task_id == task_id).returning(_dossiers.c.id))
        return deleted.first() is not None


# --- Reading -------------------------------------------------------------------------------------------------------


async def dossier_of_case(
    *, session: AsyncSession, actor: Actor, case_id: uuid.UUID, version: int | None = None
) -> DossierVersion | None:
    """A version of the case's dossier (the latest when `version` is None); None when there is none."""
    await get_case(session=session, actor=actor, case_id=case_id)
    query = select(DossierVersion).where(DossierVersion.case_id == case_id)
    if version is not None:
        query = query.where(DossierVersion.version == version)
    row: DossierVersion | None = await session.scalar(query.order_by(DossierVersion.version.desc()).limit(1))
    return row


@dataclass(frozen=True)
class VersionInfo:
    """One version of a case's dossier without its content."""

    version: int
    created_at: datetime
    job_id: uuid.UUID | None
    analyzer: str
    analyzer_version: str
    model: str
    strategy: str


async def versions_of_case(*, session: AsyncSession, actor: Actor, case_id: uuid.UUID) -> list[VersionInfo]:
    """Every version of the case's dossier, newest first."""
    await get_case(session=session, actor=actor, case_id=case_id)
    strategy = _dossiers.c.content["strategy"].astext
    rows = await session.execute(
        select(
            _dossiers.c.version,
            _dossiers.c.created_at,
            _dossiers.c.job_id,
            _dossiers.c.analyzer,
            _dossiers.c.analyzer_version,
            _dossiers.c.model,
            func.coalesce(strategy, "").label("strategy"),
        )
        .where(_dossiers.c.case_id == case_id)
        .order_by(_dossiers.c.version.desc())
    )
    return [VersionInfo(**row._mapping) for row in rows]


def parse(row: DossierVersion) -> Dossier:
    """The stored content as a dossier (stored dossiers were checked against this schema when made)."""
    return Dossier.model_validate(row.content)


@dataclass(frozen=True)
class Evidence:
    """A citation resolved for the reader: its media (None when it was deleted since), the item it names (None for
    a whole result, or one no longer readable), and the storage key of its keyframe's JPEG when it has one."""

    citation: Citation
    media: Media | None
    item: EvidenceItem | None
    keyframe: int | None
    keyframe_key: str | None

    @property
    def start_s(self) -> float | None:
        if self.citation.start_s is not None or self.item is None:
            return self.citation.start_s
        return self.item.start_s

    @property
    def end_s(self) -> float | None:
        if self.citation.end_s is not None or self.item is None:
            return self.citation.end_s
        return self.item.end_s


async def resolve_evidence(resources: Resources, case_id: uuid.UUID, citations: Sequence[Citation]) -> list[Evidence]:
    """Each citation with its media row, evidence item and keyframe (four queries for the whole dossier). The caller
    checked that the actor may read the case."""
    wanted = {c.media_id for c in citations}
    ids = [uuid.UUID(m) for m in wanted if _is_uuid(m)]
    async with resources.sessions() as session:
        media = {
            str(m.id): m
            for m in (await session.execute(select(Media).where(Media.id.in_(ids), Media.case_id == case_id))).scalars()
        }
        frames: dict[str, list[str]] = {}
        rows = await session.execute(
            select(Artifact.media_id, Artifact.storage_key)
            .where(Artifact.media_id.in_([m.id for m in media.values()]), Artifact.kind == str(ArtifactKind.KEYFRAME))
            .order_by(Artifact.media_id, Artifact.seq)
        )
        for media_id, storage_key in rows.tuples():
            frames.setdefault(str(media_id), []).append(storage_key)
    pairs = {(c.media_id, c.analyzer) for c in citations if c.media_id in media}
    cited = await read_results(resources, sorted(media), {analyzer for _, analyzer in pairs})
    results = {k: v for k, v in cited.items() if k in pairs}
    index = evidence_index(resources.analyzers, results)
    resolved = []
    for citation in citations:
        item = index.get((citation.media_id, citation.analyzer, citation.key)) if citation.key is not None else None
        keyframe = citation.keyframe if citation.keyframe is not None else (item.keyframe if item else None)
        listed = frames.get(citation.media_id, [])
        frame = listed[keyframe] if keyframe is not None and 0 <= keyframe < len(listed) else None
        resolved.append(Evidence(citation, media.get(citation.media_id), item, keyframe, frame))
    return resolved


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- Markdown ------------------------------------------------------------------------------------------------------


def citation_key(citation: Citation) -> tuple[object, ...]:
    """What tells citations apart (two equal citations resolve alike)."""
    return (citation.media_id, citation.analyzer, citation.key, citation.start_s, citation.end_s, citation.keyframe)


#: Between the two ends of a time range.
DASH = "\u2013"


def hms(seconds: float) -> str:
    whole = max(int(seconds), 0)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


#: Characters `_plain` always escapes: what opens links, images, HTML, code spans, emphasis, strikethrough, tables,
#: entities, GitHub's math, an ATX heading's closing ``#`` (and the backslash itself).
_ALWAYS_ESCAPED = frozenset("\\`*[]<>#|~&$")
#: What turns into a link in GFM without brackets (``https://...``, ``www.``): its ``:`` or ``.`` is escaped.
_AUTOLINK = re.compile(r"(?i)(:)(?=//)|(?<![a-z0-9])www(\.)")
#: An ordered list's marker at the start of a block (``1.``, ``2)``).
_ORDERED = re.compile(r"\d{1,9}[.)]")


def _plain(value: str) -> str:
    """Model-written text as inert Markdown: one line that renders as itself in CommonMark and GitHub Flavored
    Markdown, with no links, images, HTML, code spans, emphasis or block structure (headings, lists, quotes,
    thematic breaks, tables) of its own, wherever AIMA puts it (a value may start a block: a list item's text).

    Backslash escapes (CommonMark renders any escaped ASCII punctuation as itself): `_ALWAYS_ESCAPED`; ``_`` unless
    it is between two letters or digits (where it can neither open nor close emphasis); the first character when
    it is ASCII punctuation (``#``, ``>``, ``-``, ``+``, ``=``, ...) and the ``.`` or ``)`` of a leading ordered-list
    marker; and the ``:`` of ``scheme://`` and the ``.`` of ``www.`` (GFM's bare-URL autolinks). Other punctuation
    (``.``, ``-``, ``:`` and the like inside a line) cannot start anything once these are escaped, and stays as
    written. Not prevented: GFM's e-mail autolinks (cmark-gfm finds addresses after resolving escapes, so a
    backslash cannot stop them; they make ``mailto:`` links only)."""
    flat = " ".join(value.split())
    escape = {m.start(m.lastindex or 0) for m in _AUTOLINK.finditer(flat)}
    if flat and flat[0] in string.punctuation:
        escape.add(0)
    if leading := _ORDERED.match(flat):
        escape.add(leading.end() - 1)
    out = []
    for n, ch in enumerate(flat):
        if ch == "_":
            inside = 0 < n < len(flat) - 1 and flat[n - 1].isalnum() and flat[n + 1].isalnum()
            if not inside:
                escape.add(n)
        out.append("\\" + ch if ch in _ALWAYS_ESCAPED or n in escape else ch)
    return "".join(out)


def evidence_line(evidence: Evidence) -> str:
    """``interview.mp4 @ 00:01:23-00:01:30, whisper segment-4 — "what was said"`` (the range with `DASH`)."""
    citation = evidence.citation
    name = _plain(evidence.media.filename) if evidence.media is not None else f"deleted media {citation.media_id}"
    where = name
    if evidence.start_s is not None:
        where += f" @ {_span(evidence.start_s, evidence.end_s)}"
    what = _plain(citation.analyzer) + (f" {_plain(citation.key)}" if citation.key is not None else " (whole result)")
    if evidence.keyframe is not None:
        what += f", keyframe {evidence.keyframe}"
    if citation.box is not None:
        what += f", box {_box(citation.box)}"
    said = f' — "{_plain(evidence.item.summary)}"' if evidence.item is not None and evidence.item.summary else ""
    return f"{where}, {what}{said}"


def render_markdown(
    *, title: str, row: DossierVersion, dossier: Dossier, evidence: Mapping[tuple[object, ...], Evidence]
) -> str:
    """A readable report: every statement followed by the evidence it cites."""
    lines = [
        f"# Dossier: {_plain(title)}",
        "",
        f"Version {row.version}, made {row.created_at:%Y-%m-%d %H:%M} UTC by {row.analyzer} {row.analyzer_version}"
        + (f" with {_plain(dossier.model)}" if dossier.model else "")
        + f" ({_plain(dossier.strategy)}).",
        "",
        "## Summary",
        "",
        _plain(dossier.summary) or "(none)",
    ]

    def cited(citations: Sequence[Citation], indent: str = "   ") -> list[str]:
        found = [evidence.get(citation_key(c)) for c in citations]
        return [f"{indent}- Evidence: {evidence_line(e)}" for e in found if e is not None]

    def section(heading: str, entries: list[list[str]]) -> None:
        if entries:
            lines.extend(["", f"## {heading}", ""])
            for entry in entries:
                lines.extend(entry)

    section(
        "Findings",
        [
            [f"{n}. {_plain(f.statement)} (confidence {f.confidence:.2f})", *cited(f.evidence)]
            for n, f in enumerate(dossier.findings, start=1)
        ],
    )
    section(
        "Timeline",
        [[f"- {_when(t.start_s, t.end_s)}{_plain(t.description)}", *cited(t.evidence, "  ")] for t in dossier.timeline],
    )
    persons = []
    for person in dossier.persons:
        entry = [f"- **{_plain(person.label)}**" + (f": {_plain(person.description)}" if person.description else "")]
        for appearance in person.appearances:
            entry.append(f"  - Appears {_when(appearance.start_s, appearance.end_s)}".rstrip())
            entry.extend(cited(appearance.evidence, "    "))
        for statement in person.statements:
            entry.append(f"  - Says: {_plain(statement.statement)} (confidence {statement.confidence:.2f})")
            entry.extend(cited(statement.evidence, "    "))
        persons.append(entry)
    section("Persons", persons)
    for heading, entities in (("Places", dossier.places), ("Objects", dossier.objects), ("Events", dossier.events)):
        section(
            heading,
            [
                [
                    f"- **{_plain(e.name)}**" + (f": {_plain(e.description)}" if e.description else ""),
                    *cited(e.evidence, "  "),
                ]
                for e in entities
            ],
        )
    section(
        "Sensitive content",
        [
            [
                f"- {i.label.value}: {i.assessment.value.replace('_', ' ')} (confidence {i.confidence:.2f}) — "
                f"{_plain(i.rationale)}",
                *cited(i.evidence, "  "),
            ]
            for i in dossier.sensitive
        ],
    )
    section(
        "Missing",
        [
            [f"- {_plain(m.modality)}" + (f" (media {m.media_id})" if m.media_id else "") + f": {_plain(m.reason)}"]
            for m in dossier.missing
        ],
    )
    section("Statements dropped for unresolved citations", [[f"- {_plain(s)}"] for s in dossier.rejected])
    return "\n".join(lines) + "\n"


def _when(start: float | None, end: float | None) -> str:
    return f"[{_span(start, end)}] " if start is not None else ""


def _span(start: float, end: float | None) -> str:
    """A time, or a range of times; an instant (a keyframe, a sign) shows one time, not a range to itself."""
    return hms(start) + (f"{DASH}{hms(end)}" if end is not None and hms(end) != hms(start) else "")
