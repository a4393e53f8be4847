"""PostgreSQL tables: the system of record for users, cases, media, jobs and tasks."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda members: [m.value for m in members])


class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"
    GUEST = "guest"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_FOR_MODEL = "waiting_for_model"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}


TERMINAL_TASK_STATES = [s for s in TaskState if s.terminal]
OPEN_JOB_STATES = [s for s in JobState if not s.terminal]


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False)
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"), nullable=False, default=Role.USER)
    is_active: Mapped[bool] = mapped_column(default=True, nullable=False)
    #: Registered while registration needs an administrator's approval, and not approved yet (inactive until then).
    pending_approval: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false", nullable=False)
    created_at: Mapped[datetime] = _now_column()


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), nullable=False)
    created_at: Mapped[datetime] = _now_column()

    __table_args__ = (Index("ix_cases_owner_created", "owner_id", "created_at"),)


class CaseRole(enum.StrEnum):
    """What a user a case is shared with may do: viewers read, editors also upload and start analyses."""

    VIEWER = "viewer"
    EDITOR = "editor"


class CaseMember(Base):
    """A case shared with a user. The owner is not a member: ownership is `Case.owner_id`."""

    __tablename__ = "case_members"

    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[CaseRole] = mapped_column(_enum(CaseRole, "case_role"), nullable=False)
    granted_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()

    __table_args__ = (Index("ix_case_members_user", "user_id"),)


class RefreshToken(Base):
    """An opaque refresh token, stored as its SHA-256 only. Each use replaces it with a new one of the same family;
    a second use of a replaced token means it was stolen, and the whole family is revoked."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    #: One family per sign-in; access tokens carry it as their `sid` claim.
    family_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = _now_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: When it was exchanged for its successor; a token with `used_at` set is never accepted again.
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    client_address: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_refresh_tokens_family", "family_id"), Index("ix_refresh_tokens_user", "user_id"))


class RuntimeSetting(Base):
    """An administrator's override of one runtime setting (dotted key), applied on top of file and environment."""

    __tablename__ = "runtime_settings"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[object] = mapped_column(JSONB, nullable=False)
    #: The configuration version this change made (from `runtime_settings_version`), to tell which processes
    #: have applied it.
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = _now_column()


class Media(Base):
    """One original, stored untouched in S3 under `storage_key`, which the server derives from ids."""

    __tablename__ = "media"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    uploaded_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), nullable=False)
    #: The name the client sent, kept for display only; never used to build paths or keys.
    filename: Mapped[str] = mapped_column(String(500), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    content_type: Mapped[str] = mapped_column(String(100), nullable=False)
    format: Mapped[str] = mapped_column(String(50), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    storage_key: Mapped[str] = mapped_column(String(300), unique=True, nullable=False)
    probe: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, default=dict)
    #: 64-bit perceptual hash (DCT) of a still image, for near-duplicate search; None for video and audio.
    phash: Mapped[int | None] = mapped_column(BigInteger)
    #: How the original arrived: "multipart" (GraphQL upload) or "resumable" (presigned parts).
    ingest: Mapped[str] = mapped_column(String(16), nullable=False, default="multipart", server_default="multipart")
    #: The last re-hash of the stored original (`aima media verify`): when, and whether it still matched.
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    verified_ok: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = _now_column()

    __table_args__ = (Index("ix_media_case_created", "case_id", "created_at"), Index("ix_media_sha256", "sha256"))


class Upload(Base):
    """A resumable upload in progress: an S3 multipart upload whose parts the client sends directly to S3."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    #: The media id the upload becomes; its object key is derived from it.
    media_id: Mapped[uuid.UUID] = mapped_column(nullable=False, unique=True)
    storage_key: Mapped[str] = mapped_column(String(300), nullable=False)
    s3_upload_id: Mapped[str] = mapped_column(String(1024), nullable=False)
    filename: Mapped[str] = mapped_column(String(500), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    part_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: The SHA-256 the client announced, checked on completion when given.
    expected_sha256: Mapped[str | None] = mapped_column(String(64))
    #: open, completed or aborted.
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="open")
    created_at: Mapped[datetime] = _now_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_uploads_state_expires", "state", "expires_at"),)


class Artifact(Base):
    """A file derived from an original (thumbnail, poster, keyframe, audio track), stored in S3, shared by analyzers."""

    __tablename__ = "artifacts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    media_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), nullable=False)
    #: thumbnail, poster, keyframe, audio_track.
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    #: Orders artifacts of one kind (the keyframe number); 0 for single ones.
    seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    storage_key: Mapped[str] = mapped_column(String(300), unique=True, nullable=False)
    content_type: Mapped[str] = mapped_column(String(100), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    #: Kind-specific facts: a keyframe's timestamp and whether it is a codec keyframe or a scene change, sizes.
    details: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, default=dict)
    created_at: Mapped[datetime] = _now_column()

    __table_args__ = (UniqueConstraint("media_id", "kind", "seq", name="uq_artifacts_media_kind_seq"),)


class Priority(enum.StrEnum):
    """Tasks of a higher priority start before queued tasks of a lower one."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    media_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"))
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), nullable=False)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), nullable=False, default=JobState.QUEUED)
    priority: Mapped[str] = mapped_column(String(8), nullable=False, default="normal", server_default="normal")
    #: When someone asked to cancel it: workers stop its running tasks, queued ones never start.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_jobs_case_created", "case_id", "created_at"),)


class Task(Base):
    """One (media, analyzer) unit of work, or (no media) one case analyzer's run over the whole case; its row, not
    the queue, says where it stands."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    #: None for a case task (a case analyzer's run, which starts once every other task of its job ended).
    media_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"))
    analyzer: Mapped[str] = mapped_column(String(100), nullable=False)
    analyzer_version: Mapped[str] = mapped_column(String(50), nullable=False)
    state: Mapped[TaskState] = mapped_column(_enum(TaskState, "task_state"), nullable=False, default=TaskState.QUEUED)
    progress: Mapped[float] = mapped_column(default=0.0, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: The generation of its current delivery (`aima.services.task_runs.arq_job_id`): its runs over every round,
    #: plus one per retry from the start; never goes back (but for a run given back), so delivery ids never repeat.
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: What the task runs on ("cpu" or a model endpoint's name): the queue it goes to.
    resource: Mapped[str] = mapped_column(String(100), nullable=False, default="cpu", server_default="cpu")
    priority: Mapped[str] = mapped_column(String(8), nullable=False, default="normal", server_default="normal")
    #: When a task waiting after a transient error (a model endpoint down or busy) is tried again.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Tasks that must succeed before this one is handed to a worker (preparation before analysis); a case task's
    #: must only have ended, whatever their outcome.
    depends_on: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), nullable=False, default=list, server_default="{}")
    #: When its first run since it was (re)queued from the start began: how long it has waited for its model.
    first_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("job_id", "media_id", "analyzer", name="uq_tasks_job_media_analyzer"),
        # NULLs are distinct in the constraint above: one task per case analyzer and job needs its own index.
        Index(
            "uq_tasks_job_case_analyzer",
            "job_id",
            "analyzer",
            unique=True,
            postgresql_where=text("media_id IS NULL"),
        ),
        Index("ix_tasks_job", "job_id"),
        Index("ix_tasks_state", "state"),
        Index("ix_tasks_state_heartbeat", "state", "heartbeat_at"),
    )


class AuditEntry(Base):
    """One line of the append-only, hash-chained audit trail.

    `hash` covers `prev_hash` and the entry's own fields (see `aima.services.audit`); a database trigger refuses
    updates and deletes, and `aima audit verify` recomputes the chain.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    actor_id: Mapped[uuid.UUID | None] = mapped_column()
    actor_email: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)

    __table_args__ = (
        Index("ix_audit_actor_at", "actor_id", "at"),
        Index("ix_audit_action_at", "action", "at"),
        Index("ix_audit_target", "target_type", "target_id"),
    )


class IdentityKind(enum.StrEnum):
    """What a cluster gathers: faces (a person) or speaker turns (a voice)."""

    FACE = "face"
    VOICE = "voice"


class Assignment(enum.StrEnum):
    """Who put a member in its cluster: automation moves only its own assignments, never a user's."""

    AUTO = "auto"
    USER = "user"


class IdentityCluster(Base):
    """A person (faces) or a voice (speaker turns) found across the media of one case; users may name it."""

    __tablename__ = "identity_clusters"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[IdentityKind] = mapped_column(_enum(IdentityKind, "identity_kind"), nullable=False)
    #: The analyzer whose embeddings the members are: vectors of different models are not comparable.
    analyzer: Mapped[str] = mapped_column(String(100), nullable=False)
    #: Numbers clusters of one kind within the case ("Person 3") for display until a user names them.
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    label: Mapped[str | None] = mapped_column(String(200))
    labelled_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()

    __table_args__ = (
        UniqueConstraint("case_id", "kind", "number", name="uq_identity_clusters_case_kind_number"),
        Index("ix_identity_clusters_case_kind", "case_id", "kind", "analyzer"),
    )


class IdentityMember(Base):
    """One face or speaker turn (an analyzer's embedding, by media, analyzer and key) in its cluster."""

    __tablename__ = "identity_members"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    cluster_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("identity_clusters.id", ondelete="CASCADE"), nullable=False
    )
    media_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[IdentityKind] = mapped_column(_enum(IdentityKind, "identity_kind"), nullable=False)
    analyzer: Mapped[str] = mapped_column(String(100), nullable=False)
    key: Mapped[str] = mapped_column(String(200), nullable=False)
    #: The Milvus row id of the embedding.
    vector_id: Mapped[str] = mapped_column(String(64), nullable=False)
    #: A face's keyframe time, or a turn's start, in seconds from the start of the media.
    start_s: Mapped[float | None] = mapped_column()
    #: A turn's end; None for faces.
    end_s: Mapped[float | None] = mapped_column()
    #: The keyframe a face was found in (two faces of one keyframe are two people).
    keyframe: Mapped[int | None] = mapped_column(Integer)
    #: The speaker label diarization gave a turn within its media ("S1").
    speaker: Mapped[str | None] = mapped_column(String(50))
    #: A face's box [x1, y1, x2, y2] in pixels of its keyframe.
    box: Mapped[list[float] | None] = mapped_column(JSONB)
    #: The detector's confidence in a face.
    det_score: Mapped[float | None] = mapped_column()
    #: Cosine similarity to the cluster when automation placed it there (None: it opened the cluster, or a user).
    similarity: Mapped[float | None] = mapped_column()
    assigned_by: Mapped[Assignment] = mapped_column(_enum(Assignment, "identity_assignment"), nullable=False)
    assigned_by_user: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    assigned_at: Mapped[datetime] = _now_column()

    __table_args__ = (
        UniqueConstraint("media_id", "analyzer", "key", name="uq_identity_members_media_analyzer_key"),
        Index("ix_identity_members_cluster", "cluster_id"),
        Index("ix_identity_members_case_vector", "case_id", "vector_id"),
    )


class IdentityExclusion(Base):
    """ "Not this person": a user said the member does not belong to the cluster; automation never puts it back."""

    __tablename__ = "identity_exclusions"

    member_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("identity_members.id", ondelete="CASCADE"), primary_key=True
    )
    cluster_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("identity_clusters.id", ondelete="CASCADE"), primary_key=True
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()

    __table_args__ = (Index("ix_identity_exclusions_cluster", "cluster_id"),)


class IdentityCorrection(Base):
    """A user's correction of the clusters of a case (rename, merge, split, move, remove, recluster), kept as
    provenance: which groupings are a person's judgement rather than the model's."""

    __tablename__ = "identity_corrections"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[IdentityKind] = mapped_column(_enum(IdentityKind, "identity_kind"), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    details: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, default=dict)
    at: Mapped[datetime] = _now_column()

    __table_args__ = (Index("ix_identity_corrections_case_at", "case_id", "at"),)


class IdentitySync(Base):
    """When the faces or voices an analyzer stored for a media item were last placed into clusters: a run of the
    analyzer that started later and is not reflected here still has to be clustered (`identities.reconcile`)."""

    __tablename__ = "identity_syncs"

    media_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), primary_key=True)
    analyzer: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[IdentityKind] = mapped_column(_enum(IdentityKind, "identity_kind"), primary_key=True)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    members: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class DossierVersion(Base):
    """One version of a case's dossier (`aima.dossier.Dossier` as JSON), made by a case task. Every run adds the next
    version; earlier ones stay. Keyed by its task too, so that a task run twice leaves one version."""

    __tablename__ = "dossiers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=False)
    #: 1 for the case's first dossier, then 2, 3, ...
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    analyzer: Mapped[str] = mapped_column(String(100), nullable=False)
    analyzer_version: Mapped[str] = mapped_column(String(50), nullable=False)
    #: The language model that wrote it, as the dossier names it.
    model: Mapped[str] = mapped_column(String(200), nullable=False, default="", server_default="")
    created_at: Mapped[datetime] = _now_column()
    content: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False)
    #: Who started the job that made it.
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("case_id", "version", name="uq_dossiers_case_version"),
        UniqueConstraint("task_id", name="uq_dossiers_task"),
    )
