"""GraphQL object types. Each is built from a row the service layer already checked the caller may read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from aima import dossier as dossier_schema
from aima import vision
from aima.analysis import MediaKind
from aima.db import models
from aima.db.documents import AnalysisResultDocument
from aima.errors import InvalidInput, NotFound
from aima.events import JobEvent as JobEventData
from aima.graphql.context import Context
from aima.services import dossiers as dossier_service
from aima.services import identities as identity_service
from aima.services import identity_views, result_views
from aima.services import jobs as job_service
from aima.services import media as media_service
from aima.services import search as search_service
from aima.services.access import CaseAccess
from aima.services.artifacts import ArtifactKind, artifacts_of
from aima.services.audit import AuditAction
from aima.services.cases import Membership, case_with_access, get_case, members_of_case

Role = strawberry.enum(models.Role, name="Role")
CaseRole = strawberry.enum(models.CaseRole, name="CaseRole")
CaseAccessLevel = strawberry.enum(CaseAccess, name="CaseAccess")
JobState = strawberry.enum(models.JobState, name="JobState")
TaskState = strawberry.enum(models.TaskState, name="TaskState")
PriorityEnum = strawberry.enum(models.Priority, name="Priority")


MediaKindEnum = strawberry.enum(MediaKind, name="MediaKind")


@strawberry.type(name="User")
class UserNode:
    id: strawberry.ID
    email: str
    role: Role  # type: ignore[valid-type]
    active: bool
    pending_approval: bool = strawberry.field(description="Registered, waiting for an administrator's approval.")
    created_at: datetime

    @classmethod
    def of(cls, row: models.User) -> UserNode:
        return cls(
            id=strawberry.ID(str(row.id)),
            email=row.email,
            role=row.role,
            active=row.is_active,
            pending_approval=row.pending_approval,
            created_at=row.created_at,
        )


@strawberry.type(name="AuthPayload")
class AuthPayload:
    access_token: str = strawberry.field(description="Short-lived JWT for `Authorization: Bearer`.")
    token_type: str
    expires_at: datetime
    refresh_token: str = strawberry.field(
        description="Opaque; exchange it with `refreshSession` for a new pair. Each refresh token works once."
    )
    refresh_expires_at: datetime
    user: UserNode


@strawberry.type(name="Registration")
class RegistrationPayload:
    pending_approval: bool = strawberry.field(
        description="True when registration needs an administrator's approval: sign in once approved."
    )
    session: AuthPayload | None = strawberry.field(description="The new session, when registration is open.")


@strawberry.type(name="CaseMember")
class CaseMemberNode:
    """A user a case is shared with, and as what."""

    user_id: strawberry.ID
    email: str
    role: CaseRole  # type: ignore[valid-type]

    @classmethod
    def of(cls, member: Membership) -> CaseMemberNode:
        return cls(user_id=strawberry.ID(str(member.user_id)), email=member.email, role=member.role)


@strawberry.type(name="AnalysisResult")
class AnalysisResultNode:
    analyzer: str
    analyzer_version: str
    payload: JSON
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, doc: AnalysisResultDocument) -> AnalysisResultNode:
        return cls(
            analyzer=doc.analyzer,
            analyzer_version=doc.analyzer_version,
            payload=cast(JSON, doc.payload),
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


@strawberry.type(name="Media")
class MediaNode:
    id: strawberry.ID
    case_id: strawberry.ID
    filename: str = strawberry.field(description="The uploaded file's name, for display only.")
    kind: MediaKindEnum  # type: ignore[valid-type]
    content_type: str
    format: str
    size_bytes: float = strawberry.field(description="Size in bytes (a Float: GraphQL's Int is 32-bit).")
    sha256: str
    probe: JSON = strawberry.field(description="What probing found at upload: container, streams, EXIF.")
    created_at: datetime
    duplicate: bool = strawberry.field(
        default=False,
        description="In the answer to an upload: true when the case already held these exact bytes, so this is "
        "the media registered first.",
    )

    @classmethod
    def of(cls, row: models.Media, *, duplicate: bool = False) -> MediaNode:
        return cls(
            id=strawberry.ID(str(row.id)),
            case_id=strawberry.ID(str(row.case_id)),
            filename=row.filename,
            kind=MediaKind(row.kind),
            content_type=row.content_type,
            format=row.format,
            size_bytes=float(row.size_bytes),
            sha256=row.sha256,
            probe=cast(JSON, row.probe),
            created_at=row.created_at,
            duplicate=duplicate,
        )

    @strawberry.field(description="The chain-of-custody record of the original.")
    async def custody(self, info: Info[Context, None]) -> CustodyNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            row = await media_service.get_media(session=session, actor=actor, media_id=uuid.UUID(self.id))
            uploader = await session.get(models.User, row.uploaded_by)
        return CustodyNode(
            sha256=row.sha256,
            size_bytes=float(row.size_bytes),
            content_type=row.content_type,
            uploaded_by_id=strawberry.ID(str(row.uploaded_by)),
            uploaded_by_email=uploader.email if uploader else None,
            uploaded_at=row.created_at,
            filename=row.filename,
            ingest=row.ingest,
            verified_at=row.verified_at,
            verified_ok=row.verified_ok,
            legal_hold=await ctx.resources.store.legal_hold(row.storage_key),
        )

    @strawberry.field(
        description="Files derived from the original (thumbnail, poster, keyframes, audio track), shared by analyzers."
    )
    async def derived(self, info: Info[Context, None], kind: str | None = None) -> list[DerivedFileNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            await media_service.get_media(session=session, actor=actor, media_id=uuid.UUID(self.id))
        if kind is not None and kind not in set(ArtifactKind):
            raise InvalidInput(f"kind must be one of: {', '.join(sorted(ArtifactKind))}.")
        rows = await artifacts_of(ctx.resources, uuid.UUID(self.id), ArtifactKind(kind) if kind else None)
        return [DerivedFileNode.of(row) for row in rows]

    @strawberry.field(
        description="Other images of the case that look the same (perceptual hash), nearest first; "
        "`maxDistance` is in differing bits of 64 (deployment default when omitted)."
    )
    async def near_duplicates(self, info: Info[Context, None], max_distance: int | None = None) -> list[MediaNode]:
        ctx = info.context
        actor = ctx.require_actor()
        bits = ctx.resources.settings.uploads.near_duplicate_bits if max_distance is None else max_distance
        async with ctx.resources.sessions() as session:
            found = await media_service.near_duplicates(
                session=session, actor=actor, media_id=uuid.UUID(self.id), max_bits=bits
            )
        return [MediaNode.of(row) for row in found]

    @strawberry.field(description="Stored analyzer results, one per (analyzer, analyzer version).")
    async def results(self, info: Info[Context, None]) -> list[AnalysisResultNode]:
        info.context.require_actor()
        loaded = await info.context.results_loader.load(str(self.id))
        if isinstance(loaded, NotFound):
            raise loaded
        docs = loaded
        await info.context.audit(
            AuditAction.RESULTS_READ, target_type="media", target_id=self.id, details={"results": len(docs)}
        )
        return [AnalysisResultNode.of(doc) for doc in docs]

    @strawberry.field(
        description="The newest transcript (of `analyzer`), each segment with its speaker (diarization by "
        "`speakers`) and that speaker's voice across the case; null when the media has not been transcribed."
    )
    async def transcript(
        self, info: Info[Context, None], analyzer: str = result_views.WHISPER, speakers: str = result_views.SPEAKERS
    ) -> TranscriptNode | None:
        ctx = info.context
        found = await result_views.transcript(
            resources=ctx.resources, actor=ctx.require_actor(), media_id=self._id, analyzer=analyzer, speakers=speakers
        )
        if found is None:
            return None
        await _audit_view(ctx, self.id, "transcript")
        return TranscriptNode.of(found)

    @strawberry.field(
        description="The faces `analyzer` found, in time order, each with its person across the case and its crop."
    )
    async def faces(self, info: Info[Context, None], analyzer: str = result_views.FACES) -> list[FaceNode]:
        ctx = info.context
        found = await result_views.faces(
            resources=ctx.resources, actor=ctx.require_actor(), media_id=self._id, analyzer=analyzer
        )
        await _audit_view(ctx, self.id, "faces")
        return [FaceNode.of(face) for face in found]

    @strawberry.field(description="The text `analyzer` read on screen; null when the media has not been read.")
    async def ocr(self, info: Info[Context, None], analyzer: str = result_views.OCR) -> OcrTextNode | None:
        ctx = info.context
        found = await result_views.ocr(
            resources=ctx.resources, actor=ctx.require_actor(), media_id=self._id, analyzer=analyzer
        )
        if found is None:
            return None
        await _audit_view(ctx, self.id, "ocr")
        return OcrTextNode.of(found)

    @strawberry.field(
        description="What the vision model saw (the newest result of an analyzer that describes pictures); null "
        "when the media has not been described."
    )
    async def description(self, info: Info[Context, None]) -> VisualDescriptionNode | None:
        ctx = info.context
        found = await result_views.description(resources=ctx.resources, actor=ctx.require_actor(), media_id=self._id)
        if found is None:
            return None
        await _audit_view(ctx, self.id, "description")
        return VisualDescriptionNode.of(*found)

    @property
    def _id(self) -> uuid.UUID:
        return uuid.UUID(str(self.id))


async def _audit_view(ctx: Context, media_id: strawberry.ID, view: str) -> None:
    await ctx.audit(AuditAction.RESULTS_READ, target_type="media", target_id=media_id, details={"view": view})


@strawberry.type(name="Custody")
class CustodyNode:
    """Where an original came from and whether it is still exactly what was received."""

    sha256: str = strawberry.field(description="SHA-256 computed while the upload streamed to storage.")
    size_bytes: float
    content_type: str = strawberry.field(description="Sniffed from the content, never taken from the client.")
    uploaded_by_id: strawberry.ID
    uploaded_by_email: str | None
    uploaded_at: datetime
    filename: str
    ingest: str = strawberry.field(description="multipart (uploadMedia) or resumable (startUpload).")
    verified_at: datetime | None = strawberry.field(description="The last re-hash of the stored original.")
    verified_ok: bool | None = strawberry.field(description="Whether that re-hash matched `sha256`.")
    legal_hold: bool = strawberry.field(
        description="Whether storage holds the original under an object-lock legal hold: it cannot be overwritten "
        "or deleted except through AIMA's audited deletion."
    )


@strawberry.type(name="DerivedFile")
class DerivedFileNode:
    kind: str = strawberry.field(description="thumbnail, poster, keyframe or audio_track.")
    seq: int = strawberry.field(description="Order within its kind: the keyframe number.")
    content_type: str
    size_bytes: float
    sha256: str
    details: JSON = strawberry.field(description="A keyframe's time (s) and whether it starts a scene; sizes.")
    created_at: datetime

    @classmethod
    def of(cls, row: models.Artifact) -> DerivedFileNode:
        return cls(
            kind=row.kind,
            seq=row.seq,
            content_type=row.content_type,
            size_bytes=float(row.size_bytes),
            sha256=row.sha256,
            details=cast(JSON, row.details),
            created_at=row.created_at,
        )


@strawberry.type(name="DownloadLink")
class DownloadLinkNode:
    url: str = strawberry.field(description="A presigned GET of the original; works without a token until expiry.")
    expires_at: datetime


@strawberry.type(name="PartUrl")
class PartUrlNode:
    number: int
    url: str = strawberry.field(description="PUT the part's bytes here (no token: the URL is signed).")


@strawberry.type(name="ResumableUpload")
class ResumableUploadNode:
    upload_id: strawberry.ID
    part_size: float = strawberry.field(description="Bytes in every part but the last.")
    part_count: int
    parts: list[PartUrlNode] = strawberry.field(
        description="URLs of the first parts (at most 1000; `uploadPartUrls` gives more, or fresh ones)."
    )
    urls_expire_at: datetime
    expires_at: datetime = strawberry.field(description="An upload not completed by then is aborted.")


@strawberry.type(name="ReceivedPart")
class ReceivedPartNode:
    number: int
    size_bytes: float


@strawberry.type(name="UploadStatus")
class UploadStatusNode:
    upload_id: strawberry.ID
    part_count: int
    received_parts: list[ReceivedPartNode]
    received_bytes: float
    missing_parts: list[int] = strawberry.field(description="Send these (again), then `completeUpload`.")
    expires_at: datetime


@strawberry.type(name="TaskError")
class TaskError:
    code: str
    message: str


@strawberry.type(name="Task")
class TaskNode:
    id: strawberry.ID
    job_id: strawberry.ID
    media_id: strawberry.ID | None = strawberry.field(
        description="The media item it analyses; null for a case task (a case analyzer over the whole case)."
    )
    analyzer: str
    analyzer_version: str
    state: TaskState  # type: ignore[valid-type]
    progress: float
    attempts: int
    error: TaskError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    resource: str = strawberry.field(default="cpu", description="What it runs on: cpu, or a model endpoint.")
    priority: PriorityEnum = strawberry.field(default=models.Priority.NORMAL)  # type: ignore[valid-type]
    worker: str | None = strawberry.field(default=None, description="The worker that ran it last.")
    heartbeat_at: datetime | None = None
    deadline_at: datetime | None = None
    next_attempt_at: datetime | None = strawberry.field(
        default=None, description="When a task waiting for its model endpoint is tried again."
    )
    depends_on: list[strawberry.ID] = strawberry.field(
        default_factory=list,
        description="Tasks that must succeed first (preparations); for a case task, every other task of its job, "
        "which must only have ended.",
    )

    @strawberry.field(description="Seconds it waited in the queue before a worker started it.")
    def queued_s(self) -> float | None:
        return (self.started_at - self.created_at).total_seconds() if self.started_at else None

    @strawberry.field(description="Seconds it ran (so far, while running).")
    def run_s(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or datetime.now(UTC)) - self.started_at).total_seconds()

    @classmethod
    def of(cls, row: models.Task) -> TaskNode:
        error = None
        if row.error_code:
            error = TaskError(code=row.error_code, message=row.error_message or "")
        return cls(
            id=strawberry.ID(str(row.id)),
            job_id=strawberry.ID(str(row.job_id)),
            media_id=strawberry.ID(str(row.media_id)) if row.media_id else None,
            analyzer=row.analyzer,
            analyzer_version=row.analyzer_version,
            state=row.state,
            progress=row.progress,
            attempts=row.attempts,
            error=error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            resource=row.resource,
            priority=models.Priority(row.priority),
            worker=row.worker,
            heartbeat_at=row.heartbeat_at,
            deadline_at=row.deadline_at,
            next_attempt_at=row.next_attempt_at,
            depends_on=[strawberry.ID(str(t)) for t in row.depends_on or []],
        )


@strawberry.type(name="Job")
class JobNode:
    id: strawberry.ID
    case_id: strawberry.ID
    media_id: strawberry.ID | None = strawberry.field(description="The media item analysed; null for a case job.")
    state: JobState  # type: ignore[valid-type]
    priority: PriorityEnum  # type: ignore[valid-type]
    created_by: strawberry.ID
    created_at: datetime
    finished_at: datetime | None
    cancel_requested_at: datetime | None

    @classmethod
    def of(cls, row: models.Job) -> JobNode:
        return cls(
            id=strawberry.ID(str(row.id)),
            case_id=strawberry.ID(str(row.case_id)),
            media_id=strawberry.ID(str(row.media_id)) if row.media_id else None,
            state=row.state,
            priority=models.Priority(row.priority),
            created_by=strawberry.ID(str(row.created_by)),
            created_at=row.created_at,
            finished_at=row.finished_at,
            cancel_requested_at=row.cancel_requested_at,
        )

    @strawberry.field
    async def tasks(self, info: Info[Context, None]) -> list[TaskNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            await job_service.get_job(session=session, actor=actor, job_id=uuid.UUID(self.id))
            rows = await job_service.tasks_of_job(session=session, job_id=uuid.UUID(self.id))
        return [TaskNode.of(row) for row in rows]


@strawberry.type(name="PageInfo")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(name="JobEdge")
class JobEdge:
    cursor: str
    node: JobNode


@strawberry.type(name="JobConnection")
class JobConnection:
    edges: list[JobEdge]
    page_info: PageInfo


@strawberry.input(name="JobFilter")
class JobFilter:
    case_id: strawberry.ID | None = None
    media_id: strawberry.ID | None = None
    state: JobState | None = None  # type: ignore[valid-type]
    mine: bool = strawberry.field(default=False, description="Only jobs the signed-in user started.")


@strawberry.type(name="Case")
class CaseNode:
    id: strawberry.ID
    title: str
    owner_id: strawberry.ID
    created_at: datetime
    #: The actor's access as found when the case was read (lists read it for every case in one query).
    access: strawberry.Private[CaseAccess | None] = None

    @classmethod
    def of(cls, row: models.Case, access: CaseAccess | None = None) -> CaseNode:
        return cls(
            id=strawberry.ID(str(row.id)),
            title=row.title,
            owner_id=strawberry.ID(str(row.owner_id)),
            created_at=row.created_at,
            access=access,
        )

    @strawberry.field(description="What the signed-in user may do with this case.")
    async def my_access(self, info: Info[Context, None]) -> CaseAccessLevel:  # type: ignore[valid-type]
        ctx = info.context
        actor = ctx.require_actor()
        if self.access is not None:
            return self.access
        async with ctx.resources.sessions() as session:
            _, access = await case_with_access(session=session, actor=actor, case_id=uuid.UUID(self.id))
        return access

    @strawberry.field(description="The users this case is shared with.")
    async def members(self, info: Info[Context, None]) -> list[CaseMemberNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            await get_case(session=session, actor=actor, case_id=uuid.UUID(self.id))
            rows = await members_of_case(session=session, case_id=uuid.UUID(self.id))
        return [CaseMemberNode.of(row) for row in rows]

    @strawberry.field
    async def media(self, info: Info[Context, None]) -> list[MediaNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            await get_case(session=session, actor=actor, case_id=uuid.UUID(self.id))
            rows = await media_service.media_of_case(session=session, case_id=uuid.UUID(self.id))
        return [MediaNode.of(row) for row in rows]

    @strawberry.field
    async def jobs(self, info: Info[Context, None]) -> list[JobNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            await get_case(session=session, actor=actor, case_id=uuid.UUID(self.id))
            rows = await job_service.jobs_of_case(session=session, case_id=uuid.UUID(self.id))
        return [JobNode.of(row) for row in rows]

    @strawberry.field(description="The people whose faces appear in the case's media, the most frequent first.")
    async def persons(
        self, info: Info[Context, None], first: int = 100, members_per_cluster: int = 20
    ) -> list[IdentityClusterNode]:
        kind = models.IdentityKind.FACE
        return await identity_clusters(info, uuid.UUID(self.id), kind, first, members_per_cluster)

    @strawberry.field(description="The voices heard in the case's media (speaker turns), the most frequent first.")
    async def voices(
        self, info: Info[Context, None], first: int = 100, members_per_cluster: int = 20
    ) -> list[IdentityClusterNode]:
        kind = models.IdentityKind.VOICE
        return await identity_clusters(info, uuid.UUID(self.id), kind, first, members_per_cluster)

    @strawberry.field(
        description="A version of the case's dossier (the latest when `version` is omitted), every citation resolved "
        "into its evidence; null when there is none. Audited."
    )
    async def dossier(self, info: Info[Context, None], version: int | None = None) -> DossierNode | None:
        ctx = info.context
        actor = ctx.require_actor()
        case_id = uuid.UUID(self.id)
        async with ctx.resources.sessions() as session:
            row = await dossier_service.dossier_of_case(session=session, actor=actor, case_id=case_id, version=version)
        if row is None:
            return None
        dossier = dossier_service.parse(row)
        resolved = await dossier_service.resolve_evidence(ctx.resources, case_id, dossier.citations())
        found = {dossier_service.citation_key(e.citation): e for e in resolved}
        await ctx.audit(
            AuditAction.DOSSIER_READ, target_type="case", target_id=case_id, details={"version": row.version}
        )
        return DossierNode.of(row, dossier, found, self.title)

    @strawberry.field(description="The versions of the case's dossier, newest first.")
    async def dossiers(self, info: Info[Context, None]) -> list[DossierVersionNode]:
        ctx = info.context
        async with ctx.resources.sessions() as session:
            rows = await dossier_service.versions_of_case(
                session=session, actor=ctx.require_actor(), case_id=uuid.UUID(self.id)
            )
        return [DossierVersionNode.of(row) for row in rows]

    @strawberry.field(description="Users' corrections of the persons and voices, newest first.")
    async def identity_corrections(self, info: Info[Context, None], first: int = 50) -> list[IdentityCorrectionNode]:
        ctx = info.context
        async with ctx.resources.sessions() as session:
            rows = await identity_views.corrections_of_case(
                session=session, actor=ctx.require_actor(), case_id=uuid.UUID(self.id), first=first
            )
        return [IdentityCorrectionNode.of(row) for row in rows]


@strawberry.type(name="Analyzer")
class AnalyzerNode:
    name: str
    version: str
    description: str
    media_kinds: list[MediaKindEnum]  # type: ignore[valid-type]
    runs_on: str


@strawberry.type(name="JobEvent")
class JobEventNode:
    """A change of a job or one of its tasks, or (`snapshot`) the job's whole state with every task.

    The first event of a subscription is a snapshot; after it, changes, numbered without gaps (`seq`).
    """

    job_id: strawberry.ID
    job_state: JobState  # type: ignore[valid-type]
    task_id: strawberry.ID | None
    analyzer: str | None
    task_state: TaskState | None  # type: ignore[valid-type]
    progress: float
    message: str
    error_code: str | None
    at: datetime
    seq: int = strawberry.field(
        description="The event's number in its stream (the job's for `jobEvents`, the case's for `caseEvents`); a "
        "snapshot has the number of the last change it includes. Reconnect with the last one seen as `after`."
    )
    epoch: str | None = strawberry.field(
        description="Names the stream `seq` counts in: a stream Redis lost and made anew has another, and counts from "
        "1 again. Reconnect with it as `epoch` next to `after`. Null while not known (the stream holds no event)."
    )
    eta_s: float | None = strawberry.field(
        description="Seconds until the task (on a job-level event: the job) is expected to end, where progress "
        "allows an estimate."
    )
    case_id: strawberry.ID | None
    snapshot: bool = strawberry.field(description="Whether this is the job's whole state rather than a change.")
    resync: bool = strawberry.field(
        description="A snapshot sent instead of the changes after `after`, which are no longer kept: rebuild the view "
        "from it."
    )
    tasks: Annotated[
        list[TaskNode] | None,
        strawberry.field(description="Every task's state; sent with snapshots only."),
    ] = None

    @classmethod
    def of(
        cls,
        event: JobEventData,
        tasks: list[TaskNode] | None = None,
        *,
        snapshot: bool = False,
        resync: bool = False,
    ) -> JobEventNode:
        return cls(
            job_id=strawberry.ID(event.job_id),
            job_state=models.JobState(event.job_state),
            task_id=strawberry.ID(event.task_id) if event.task_id else None,
            analyzer=event.analyzer,
            task_state=models.TaskState(event.task_state) if event.task_state else None,
            progress=event.progress,
            message=event.message,
            error_code=event.error_code,
            at=datetime.fromisoformat(event.at),
            seq=event.seq or 0,
            epoch=event.epoch,
            eta_s=event.eta_s,
            case_id=strawberry.ID(event.case_id) if event.case_id else None,
            snapshot=snapshot,
            resync=resync,
            tasks=tasks,
        )


@strawberry.type(name="AuditEntry")
class AuditEntryNode:
    id: strawberry.ID
    at: datetime
    actor_id: strawberry.ID | None
    actor_email: str | None
    action: str
    target_type: str | None
    target_id: str | None
    client_address: str | None
    details: JSON
    hash: str

    @classmethod
    def of(cls, row: models.AuditEntry) -> AuditEntryNode:
        return cls(
            id=strawberry.ID(str(row.id)),
            at=row.at,
            actor_id=strawberry.ID(str(row.actor_id)) if row.actor_id else None,
            actor_email=row.actor_email,
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            client_address=row.client_address,
            details=cast(JSON, row.details),
            hash=row.hash,
        )


IdentityKindEnum = strawberry.enum(models.IdentityKind, name="IdentityKind")
AssignmentEnum = strawberry.enum(models.Assignment, name="Assignment")


@strawberry.type(name="IdentityMember")
class IdentityMemberNode:
    """One face or speaker turn in a person or voice, with where and when it is."""

    id: strawberry.ID
    cluster_id: strawberry.ID
    media: MediaNode
    analyzer: str
    key: str = strawberry.field(description="The face's or turn's key in the analyzer's result.")
    start_s: float | None = strawberry.field(description="A face's keyframe time, or a turn's start (seconds).")
    end_s: float | None = strawberry.field(description="A turn's end (seconds); null for faces.")
    keyframe: int | None = strawberry.field(description="The keyframe a face is in (0 for an image).")
    box: list[float] | None = strawberry.field(description="A face's [x1, y1, x2, y2] in pixels of its keyframe.")
    det_score: float | None = strawberry.field(description="The face detector's confidence.")
    speaker: str | None = strawberry.field(description="A turn's speaker label within its media item (S1).")
    similarity: float | None = strawberry.field(
        description="Cosine similarity to the cluster when automation placed it; null when it opened the cluster "
        "or a user placed it."
    )
    assigned_by: AssignmentEnum = strawberry.field(  # type: ignore[valid-type]
        description="AUTO members may move when automation runs again; USER members stay where a user put them."
    )
    assigned_at: datetime
    crop_url: str | None = strawberry.field(
        default=None, description="A presigned link to the face's crop, when the result has one; short-lived."
    )

    @classmethod
    def of(cls, view: identity_views.MemberView, crop_url: str | None = None) -> IdentityMemberNode:
        member = view.member
        return cls(
            id=strawberry.ID(str(member.id)),
            cluster_id=strawberry.ID(str(member.cluster_id)),
            media=MediaNode.of(view.media),
            analyzer=member.analyzer,
            key=member.key,
            start_s=member.start_s,
            end_s=member.end_s,
            keyframe=member.keyframe,
            box=member.box,
            det_score=member.det_score,
            speaker=member.speaker,
            similarity=member.similarity,
            assigned_by=member.assigned_by,
            assigned_at=member.assigned_at,
            crop_url=crop_url,
        )


@strawberry.type(name="IdentityCluster")
class IdentityClusterNode:
    """A person (faces) or a voice (speaker turns) across the media of a case."""

    id: strawberry.ID
    case_id: strawberry.ID
    kind: IdentityKindEnum  # type: ignore[valid-type]
    analyzer: str = strawberry.field(description="The analyzer whose embeddings were grouped.")
    number: int = strawberry.field(description="Numbers the case's persons (or voices): Person 3.")
    label: str | None = strawberry.field(description="The name a user gave it.")
    name: str = strawberry.field(description="The label, else Person 3 or Voice 2.")
    member_count: int
    media_count: int = strawberry.field(description="Media items it appears in.")
    created_at: datetime
    updated_at: datetime
    members: list[IdentityMemberNode] = strawberry.field(
        description="Its first members, by upload order of their media and time within it."
    )

    @classmethod
    def of(cls, view: identity_views.ClusterView, crops: dict[uuid.UUID, str] | None = None) -> IdentityClusterNode:
        cluster = view.cluster
        return cls(
            id=strawberry.ID(str(cluster.id)),
            case_id=strawberry.ID(str(cluster.case_id)),
            kind=cluster.kind,
            analyzer=cluster.analyzer,
            number=cluster.number,
            label=cluster.label,
            name=identity_service.display_name(cluster),
            member_count=view.member_count,
            media_count=view.media_count,
            created_at=cluster.created_at,
            updated_at=cluster.updated_at,
            members=[IdentityMemberNode.of(m, (crops or {}).get(m.member.id)) for m in view.members],
        )


async def identity_clusters(
    info: Info[Context, None], case_id: uuid.UUID, kind: models.IdentityKind, first: int, members_per_cluster: int
) -> list[IdentityClusterNode]:
    ctx = info.context
    actor = ctx.require_actor()
    async with ctx.resources.sessions() as session:
        views = await identity_views.clusters_of_case(
            session=session,
            actor=actor,
            case_id=case_id,
            kind=kind,
            first=first,
            members_per_cluster=members_per_cluster,
        )
    crops = await result_views.crop_links(ctx.resources, [(m.member, m.media) for v in views for m in v.members])
    await ctx.audit(
        AuditAction.RESULTS_READ,
        target_type="case",
        target_id=case_id,
        details={"view": "persons" if kind is models.IdentityKind.FACE else "voices", "clusters": len(views)},
    )
    return [IdentityClusterNode.of(view, crops) for view in views]


@strawberry.type(name="IdentityCorrection")
class IdentityCorrectionNode:
    """A user's correction of the persons or voices of a case: which groupings are a person's judgement."""

    id: strawberry.ID
    kind: IdentityKindEnum  # type: ignore[valid-type]
    action: str = strawberry.field(description="rename, merge, split, move, remove or recluster.")
    actor_id: strawberry.ID | None
    details: JSON
    at: datetime

    @classmethod
    def of(cls, row: models.IdentityCorrection) -> IdentityCorrectionNode:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            action=row.action,
            actor_id=strawberry.ID(str(row.actor_id)) if row.actor_id else None,
            details=cast(JSON, row.details),
            at=row.at,
        )


@strawberry.type(name="ReclusterResult")
class ReclusterResultNode:
    members: int
    clusters: int
    moved: int = strawberry.field(description="Automatic members that changed cluster.")


@strawberry.type(name="TranscriptWord")
class TranscriptWordNode:
    start_s: float
    end_s: float
    word: str
    probability: float | None


@strawberry.type(name="TranscriptSegment")
class TranscriptSegmentNode:
    index: int
    start_s: float
    end_s: float
    text: str
    speaker: str | None = strawberry.field(
        description="The diarization speaker (S1) whose turns overlap the segment the most; null without one."
    )
    voice_id: strawberry.ID | None = strawberry.field(description="The speaker's voice across the case.")
    voice_name: str | None = strawberry.field(description="That voice's label, else Voice 2.")
    line: str = strawberry.field(description="[00:01:02.5-00:01:05.0] S1 / Alice: text")
    avg_logprob: float | None = strawberry.field(description="Near 0: confident; below -1: doubtful.")
    no_speech_prob: float | None
    words: list[TranscriptWordNode]

    @classmethod
    def of(cls, line: result_views.TranscriptLine) -> TranscriptSegmentNode:
        return cls(
            index=line.index,
            start_s=line.start_s,
            end_s=line.end_s,
            text=line.text,
            speaker=line.speaker,
            voice_id=strawberry.ID(str(line.voice.id)) if line.voice else None,
            voice_name=identity_service.display_name(line.voice) if line.voice else None,
            line=line.render(),
            avg_logprob=line.avg_logprob,
            no_speech_prob=line.no_speech_prob,
            words=[TranscriptWordNode(start_s=s, end_s=e, word=w, probability=p) for s, e, w, p in line.words],
        )


@strawberry.type(name="Transcript")
class TranscriptNode:
    analyzer_version: str
    language: str | None
    language_probability: float | None
    duration_s: float | None
    model: str | None
    diarized: bool = strawberry.field(description="Whether a speakers result said who spoke.")
    segments: list[TranscriptSegmentNode]

    @classmethod
    def of(cls, found: result_views.Transcript) -> TranscriptNode:
        return cls(
            analyzer_version=found.analyzer_version,
            language=found.language,
            language_probability=found.language_probability,
            duration_s=found.duration_s,
            model=found.model,
            diarized=found.diarized,
            segments=[TranscriptSegmentNode.of(line) for line in found.lines],
        )


@strawberry.type(name="Face")
class FaceNode:
    key: str
    keyframe: int
    timestamp_s: float
    box: list[float] = strawberry.field(description="[x1, y1, x2, y2] in pixels of the keyframe.")
    landmarks: list[list[float]] | None
    det_score: float | None
    crop_url: str | None = strawberry.field(description="A presigned link to the face's crop; short-lived.")
    member_id: strawberry.ID | None = strawberry.field(description="Its place in a person, once clustered.")
    person_id: strawberry.ID | None
    person_name: str | None
    assigned_by: AssignmentEnum | None  # type: ignore[valid-type]

    @classmethod
    def of(cls, face: result_views.FaceView) -> FaceNode:
        return cls(
            key=face.key,
            keyframe=face.keyframe,
            timestamp_s=face.timestamp_s,
            box=face.box,
            landmarks=face.landmarks,
            det_score=face.det_score,
            crop_url=face.crop_url,
            member_id=strawberry.ID(str(face.member.id)) if face.member else None,
            person_id=strawberry.ID(str(face.person.id)) if face.person else None,
            person_name=identity_service.display_name(face.person) if face.person else None,
            assigned_by=face.member.assigned_by if face.member else None,
        )


@strawberry.type(name="OcrLine")
class OcrLineNode:
    key: str
    keyframe: int
    timestamp_s: float
    text: str
    confidence: float | None
    box: list[list[float]] = strawberry.field(description="Four corners in pixels of the keyframe.")

    @classmethod
    def of(cls, line: result_views.OcrLineView) -> OcrLineNode:
        return cls(
            key=line.key,
            keyframe=line.keyframe,
            timestamp_s=line.timestamp_s,
            text=line.text,
            confidence=line.confidence,
            box=line.box,
        )


@strawberry.type(name="OcrSpan")
class OcrSpanNode:
    key: str
    text: str
    confidence: float | None
    variants: list[str]
    first_s: float = strawberry.field(description="First keyframe time it was read at.")
    last_s: float = strawberry.field(description="Last keyframe time it was read at.")
    frames: int

    @classmethod
    def of(cls, span: result_views.OcrSpanView) -> OcrSpanNode:
        return cls(
            key=span.key,
            text=span.text,
            confidence=span.confidence,
            variants=span.variants,
            first_s=span.first_s,
            last_s=span.last_s,
            frames=span.frames,
        )


@strawberry.type(name="OcrText")
class OcrTextNode:
    analyzer_version: str
    lines: list[OcrLineNode]
    spans: list[OcrSpanNode] = strawberry.field(description="A text read on consecutive keyframes, as one span.")

    @classmethod
    def of(cls, found: result_views.OcrView) -> OcrTextNode:
        return cls(
            analyzer_version=found.analyzer_version,
            lines=[OcrLineNode.of(line) for line in found.lines],
            spans=[OcrSpanNode.of(span) for span in found.spans],
        )


@strawberry.type(name="SearchHit")
class SearchHitNode:
    media: MediaNode
    analyzer: str
    key: str
    text: str
    start_s: float | None
    end_s: float | None
    score: float = strawberry.field(description="Cosine similarity of the query and the text (-1 to 1).")

    @classmethod
    def of(cls, hit: search_service.SearchHit) -> SearchHitNode:
        return cls(
            media=MediaNode.of(hit.media),
            analyzer=hit.analyzer,
            key=hit.key,
            text=hit.text,
            start_s=hit.start_s,
            end_s=hit.end_s,
            score=hit.score,
        )


# --- Visual descriptions (Media.description) -------------------------------------------------------------------


@strawberry.type(name="SeenObject")
class SeenObjectNode:
    name: str
    count: int
    position: str = strawberry.field(description="Where in the picture: 'left foreground', ...")
    confidence: float


@strawberry.type(name="SeenPerson")
class SeenPersonNode:
    appearance: str = strawberry.field(description="Clothing, build, apparent age range; never a name.")
    actions: str
    position: str
    confidence: float


@strawberry.type(name="SeenPeople")
class SeenPeopleNode:
    count: int
    persons: list[SeenPersonNode]


@strawberry.type(name="VisibleText")
class VisibleTextNode:
    text: str
    where: str


@strawberry.type(name="NotableElement")
class NotableElementNode:
    label: str
    description: str
    sensitive: bool = strawberry.field(description="Weapons, injuries, restraints, nudity, personal data, ...")
    confidence: float


@strawberry.type(name="FrameDescription")
class FrameDescriptionNode:
    """One picture (an image, or a video keyframe), as the vision model saw it."""

    scene: str
    setting: str
    objects: list[SeenObjectNode]
    people: SeenPeopleNode
    visible_text: list[VisibleTextNode] = strawberry.field(description="Text seen in the picture: data, quoted.")
    notable: list[NotableElementNode]
    confidence: float = strawberry.field(description="How sure the model is of the description as a whole.")

    @classmethod
    def of(cls, frame: vision.FrameDescription) -> FrameDescriptionNode:
        return cls(
            scene=frame.scene,
            setting=frame.setting,
            objects=[
                SeenObjectNode(name=o.name, count=o.count, position=o.position, confidence=o.confidence)
                for o in frame.objects
            ],
            people=SeenPeopleNode(
                count=frame.people.count,
                persons=[
                    SeenPersonNode(
                        appearance=p.appearance, actions=p.actions, position=p.position, confidence=p.confidence
                    )
                    for p in frame.people.persons
                ],
            ),
            visible_text=[VisibleTextNode(text=t.text, where=t.where) for t in frame.visible_text],
            notable=[
                NotableElementNode(
                    label=n.label, description=n.description, sensitive=n.sensitive, confidence=n.confidence
                )
                for n in frame.notable
            ],
            confidence=frame.confidence,
        )


@strawberry.type(name="VisualTimelineEntry")
class VisualTimelineEntryNode:
    keyframe: int = strawberry.field(description="Index of the keyframe among the media's keyframes.")
    timestamp_s: float
    description: FrameDescriptionNode


@strawberry.type(name="VisualDescription")
class VisualDescriptionNode:
    """What the vision model saw: an image has one entry at 0 s, a video one per keyframe, in time order."""

    analyzer: str
    analyzer_version: str
    kind: str = strawberry.field(description="image or video.")
    model: str
    endpoint: str
    timeline: list[VisualTimelineEntryNode]
    failed: list[str] = strawberry.field(description="Keyframes left without a description, and why.")

    @classmethod
    def of(cls, analyzer: str, version: str, found: vision.VisualDescription) -> VisualDescriptionNode:
        return cls(
            analyzer=analyzer,
            analyzer_version=version,
            kind=found.kind,
            model=found.model,
            endpoint=found.endpoint,
            timeline=[
                VisualTimelineEntryNode(
                    keyframe=e.keyframe, timestamp_s=e.timestamp_s, description=FrameDescriptionNode.of(e.description)
                )
                for e in found.timeline
            ],
            failed=found.failed,
        )


# --- Dossiers ----------------------------------------------------------------------------------------------------

SensitiveLabelEnum = strawberry.enum(dossier_schema.SensitiveLabel, name="SensitiveLabel")
AssessmentEnum = strawberry.enum(dossier_schema.Assessment, name="Assessment")


@strawberry.type(name="Evidence")
class EvidenceNode:
    """A citation resolved: the stored analyzer result item a statement comes from, where and when in its media."""

    media: MediaNode | None = strawberry.field(description="Null when the media item was deleted since.")
    media_id: strawberry.ID
    analyzer: str
    key: str | None = strawberry.field(description="The item in the result; null cites the whole result.")
    kind: str | None = strawberry.field(description="speech, speaker, face, text, scene, ... (null: whole result).")
    summary: str | None = strawberry.field(description="What the item says (a transcript line, a face, ...).")
    start_s: float | None
    end_s: float | None
    keyframe: int | None
    box: list[float] | None = strawberry.field(description="[x1, y1, x2, y2] in pixels of the keyframe.")
    confidence: float | None = strawberry.field(description="The analyzer's confidence in the item.")
    storage_key: strawberry.Private[str | None] = None

    @strawberry.field(description="A short-lived presigned link to the keyframe's JPEG, when the item has one.")
    async def keyframe_url(self, info: Info[Context, None]) -> str | None:
        info.context.require_actor()
        return await result_views.jpeg_url(info.context.resources, self.storage_key)

    @classmethod
    def of(cls, found: dossier_service.Evidence) -> EvidenceNode:
        citation, item = found.citation, found.item
        box = citation.box if citation.box is not None else (list(item.box) if item and item.box else None)
        return cls(
            media=MediaNode.of(found.media) if found.media is not None else None,
            media_id=strawberry.ID(citation.media_id),
            analyzer=citation.analyzer,
            key=citation.key,
            kind=item.kind if item else None,
            summary=item.summary if item else None,
            start_s=found.start_s,
            end_s=found.end_s,
            keyframe=found.keyframe,
            box=box,
            confidence=item.confidence if item else None,
            storage_key=found.keyframe_key,
        )


#: Resolved evidence by `dossiers.citation_key`.
EvidenceMap = dict[tuple[object, ...], dossier_service.Evidence]


def _evidence(citations: list[dossier_schema.Citation], found: EvidenceMap) -> list[EvidenceNode]:
    return [EvidenceNode.of(found[dossier_service.citation_key(c)]) for c in citations]


@strawberry.type(name="DossierFinding")
class FindingNode:
    statement: str
    confidence: float
    evidence: list[EvidenceNode]

    @classmethod
    def of(cls, finding: dossier_schema.Finding, found: EvidenceMap) -> FindingNode:
        return cls(
            statement=finding.statement, confidence=finding.confidence, evidence=_evidence(finding.evidence, found)
        )


@strawberry.type(name="DossierTimelineEvent")
class TimelineEventNode:
    media_id: strawberry.ID
    start_s: float | None
    end_s: float | None
    description: str
    evidence: list[EvidenceNode]


@strawberry.type(name="DossierAppearance")
class AppearanceNode:
    media_id: strawberry.ID
    start_s: float | None
    end_s: float | None
    evidence: list[EvidenceNode]


@strawberry.type(name="DossierPerson")
class DossierPersonNode:
    """A person of the case (a face cluster and/or a voice cluster), where they appear and what they say."""

    label: str
    face_cluster_id: strawberry.ID | None
    voice_cluster_id: strawberry.ID | None
    description: str
    appearances: list[AppearanceNode]
    statements: list[FindingNode] = strawberry.field(description="What they say, quoted from transcripts.")


@strawberry.type(name="DossierEntity")
class EntityNode:
    """A place, an object or an event."""

    name: str
    description: str
    evidence: list[EvidenceNode]

    @classmethod
    def of(cls, entity: dossier_schema.Entity, found: EvidenceMap) -> EntityNode:
        return cls(name=entity.name, description=entity.description, evidence=_evidence(entity.evidence, found))


@strawberry.type(name="SensitiveIndicator")
class SensitiveIndicatorNode:
    """A contextual flag (restraint, coercion, ...): the outcome, how sure, why, and the evidence behind it."""

    label: SensitiveLabelEnum  # type: ignore[valid-type]
    assessment: AssessmentEnum  # type: ignore[valid-type]
    confidence: float
    rationale: str
    evidence: list[EvidenceNode] = strawberry.field(description="Empty for insufficient evidence and not indicated.")


@strawberry.type(name="MissingModality")
class MissingModalityNode:
    """An analysis the dossier had to do without (the vision endpoint stayed down, a task failed)."""

    modality: str
    media_id: strawberry.ID | None
    reason: str


def _id(value: str | None) -> strawberry.ID | None:
    return strawberry.ID(value) if value else None


@strawberry.type(name="Dossier")
class DossierNode:
    """One version of a case's dossier: every statement with the evidence it cites, resolved."""

    version: int
    created_at: datetime
    analyzer: str = strawberry.field(description="The case analyzer that made it.")
    analyzer_version: str
    model: str = strawberry.field(description="The language model that wrote it.")
    strategy: str = strawberry.field(description="single (one call) or map-reduce (in parts, then combined).")
    summary: str
    timeline: list[TimelineEventNode]
    persons: list[DossierPersonNode]
    places: list[EntityNode]
    objects: list[EntityNode]
    events: list[EntityNode]
    findings: list[FindingNode]
    sensitive: list[SensitiveIndicatorNode]
    missing: list[MissingModalityNode]
    rejected: list[str] = strawberry.field(description="Statements dropped because their citations did not resolve.")
    case_id: strawberry.Private[uuid.UUID]
    case_title: strawberry.Private[str]
    row: strawberry.Private[models.DossierVersion]
    dossier: strawberry.Private[dossier_schema.Dossier]
    found: strawberry.Private[EvidenceMap]

    @classmethod
    def of(
        cls, row: models.DossierVersion, dossier: dossier_schema.Dossier, found: EvidenceMap, case_title: str
    ) -> DossierNode:
        def evidence(citations: list[dossier_schema.Citation]) -> list[EvidenceNode]:
            return _evidence(citations, found)

        return cls(
            version=row.version,
            created_at=row.created_at,
            analyzer=row.analyzer,
            analyzer_version=row.analyzer_version,
            model=dossier.model,
            strategy=dossier.strategy,
            summary=dossier.summary,
            timeline=[
                TimelineEventNode(
                    media_id=strawberry.ID(t.media_id),
                    start_s=t.start_s,
                    end_s=t.end_s,
                    description=t.description,
                    evidence=evidence(t.evidence),
                )
                for t in dossier.timeline
            ],
            persons=[
                DossierPersonNode(
                    label=p.label,
                    face_cluster_id=_id(p.face_cluster_id),
                    voice_cluster_id=_id(p.voice_cluster_id),
                    description=p.description,
                    appearances=[
                        AppearanceNode(
                            media_id=strawberry.ID(a.media_id),
                            start_s=a.start_s,
                            end_s=a.end_s,
                            evidence=evidence(a.evidence),
                        )
                        for a in p.appearances
                    ],
                    statements=[FindingNode.of(s, found) for s in p.statements],
                )
                for p in dossier.persons
            ],
            places=[EntityNode.of(e, found) for e in dossier.places],
            objects=[EntityNode.of(e, found) for e in dossier.objects],
            events=[EntityNode.of(e, found) for e in dossier.events],
            findings=[FindingNode.of(f, found) for f in dossier.findings],
            sensitive=[
                SensitiveIndicatorNode(
                    label=i.label,
                    assessment=i.assessment,
                    confidence=i.confidence,
                    rationale=i.rationale,
                    evidence=evidence(i.evidence),
                )
                for i in dossier.sensitive
            ],
            missing=[
                MissingModalityNode(modality=m.modality, media_id=_id(m.media_id), reason=m.reason)
                for m in dossier.missing
            ],
            rejected=dossier.rejected,
            case_id=row.case_id,
            case_title=case_title,
            row=row,
            dossier=dossier,
            found=found,
        )

    @strawberry.field(description="The job that made it; null when the job was deleted.")
    async def job(self, info: Info[Context, None]) -> JobNode | None:
        ctx = info.context
        actor = ctx.require_actor()
        if self.row.job_id is None:
            return None
        async with ctx.resources.sessions() as session:
            return JobNode.of(await job_service.get_job(session=session, actor=actor, job_id=self.row.job_id))

    @strawberry.field(
        description="The dossier as a readable report: every statement followed by its evidence (media file, time "
        "range, analyzer and item). Audited as an export."
    )
    async def markdown(self, info: Info[Context, None]) -> str:
        await _export(info.context, self, "markdown")
        return dossier_service.render_markdown(
            title=self.case_title, row=self.row, dossier=self.dossier, evidence=self.found
        )

    @strawberry.field(name="json", description="The dossier as stored (aima.dossier.Dossier). Audited as an export.")
    async def json_(self, info: Info[Context, None]) -> JSON:
        await _export(info.context, self, "json")
        return cast(JSON, self.row.content)


async def _export(ctx: Context, node: DossierNode, form: str) -> None:
    """Exports check access again (the node may be reused) and are audited."""
    actor = ctx.require_actor()
    async with ctx.resources.sessions() as session:
        await get_case(session=session, actor=actor, case_id=node.case_id)
    await ctx.audit(
        AuditAction.DOSSIER_EXPORT,
        target_type="case",
        target_id=node.case_id,
        details={"version": node.version, "format": form},
    )


@strawberry.type(name="DossierVersion")
class DossierVersionNode:
    version: int
    created_at: datetime
    job_id: strawberry.ID | None
    analyzer: str
    analyzer_version: str
    model: str
    strategy: str

    @classmethod
    def of(cls, info: dossier_service.VersionInfo) -> DossierVersionNode:
        return cls(
            version=info.version,
            created_at=info.created_at,
            job_id=strawberry.ID(str(info.job_id)) if info.job_id else None,
            analyzer=info.analyzer,
            analyzer_version=info.analyzer_version,
            model=info.model,
            strategy=info.strategy,
        )
