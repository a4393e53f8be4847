"""Write operations: accounts, cases, uploads and analysis requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import strawberry
from strawberry.file_uploads import Upload
from strawberry.types import Info

from aima.db.models import CaseRole as DbCaseRole
from aima.db.models import IdentityKind as DbIdentityKind
from aima.db.models import Priority as DbPriority
from aima.db.models import Role as DbRole
from aima.db.models import User
from aima.errors import InvalidCredentials, InvalidInput, NotFound, RateLimited
from aima.graphql.context import Context
from aima.graphql.queries import parse_id
from aima.graphql.types import (
    AuthPayload,
    CaseMemberNode,
    CaseNode,
    CaseRole,
    DownloadLinkNode,
    IdentityClusterNode,
    IdentityKindEnum,
    IdentityMemberNode,
    JobNode,
    MediaNode,
    PartUrlNode,
    PriorityEnum,
    ReclusterResultNode,
    RegistrationPayload,
    ResumableUploadNode,
    Role,
    UserNode,
)
from aima.services import (
    admin,
    cases,
    identity_corrections,
    identity_views,
    jobs,
    media,
    result_views,
    signin,
    uploads,
    users,
)
from aima.services import identities as identity_service
from aima.services.access import Actor, CaseAccess
from aima.services.audit import AuditAction
from aima.services.refresh_tokens import RefreshTokenReused
from aima.streaming_form import IncomingFile


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Create an account with the 'user' role. Signs it in when registration is open; with "
        "approval, the account waits for an administrator. Refused when registration is closed."
    )
    async def register(self, info: Info[Context, None], email: str, password: str) -> RegistrationPayload:
        ctx = info.context
        async with ctx.resources.sessions() as session:
            user = await users.register(
                session=session,
                hasher=ctx.resources.password_hasher,
                email=email,
                password=password,
                registration=ctx.resources.settings.auth.registration,
            )
        if user is None or user.pending_approval:
            await ctx.audit(
                AuditAction.REGISTER_PENDING,
                target_type="user",
                target_id=user.id if user else None,
                actor_email=email.strip().lower()[:320],
                details={"new_account": user is not None},
            )
            return RegistrationPayload(pending_approval=True, session=None)
        await ctx.audit(AuditAction.REGISTER, target_type="user", target_id=user.id, actor=Actor.of(user))
        return RegistrationPayload(pending_approval=False, session=await _signed_in(ctx, user))

    @strawberry.mutation(description="Exchange email and password for an access token and a refresh token.")
    async def login(self, info: Info[Context, None], email: str, password: str) -> AuthPayload:
        ctx = info.context
        throttle = ctx.resources.login_throttle
        attempted_email = email.strip().lower()[:320]  # for the audit trail; the account may not exist
        try:
            await throttle.check(email, ctx.client_address)
        except RateLimited:
            await ctx.audit(AuditAction.LOGIN_THROTTLED, actor_email=attempted_email)
            raise
        try:
            async with ctx.resources.sessions() as session:
                user = await ctx.resources.authenticator.authenticate(session=session, email=email, password=password)
        except InvalidCredentials:
            await throttle.failed(email, ctx.client_address)
            await ctx.audit(AuditAction.LOGIN_FAILED, actor_email=attempted_email)
            raise
        await throttle.succeeded(email)
        await ctx.audit(AuditAction.LOGIN, target_type="user", target_id=user.id, actor=Actor.of(user))
        return await _signed_in(ctx, user)

    @strawberry.mutation(
        description="Exchange a refresh token for a new access token and a new refresh token; the old one is spent. "
        "Presenting a spent refresh token again ends that sign-in on every device that shares it."
    )
    async def refresh_session(self, info: Info[Context, None], refresh_token: str) -> AuthPayload:
        ctx = info.context
        try:
            signed_in = await signin.refresh_session(ctx.resources, refresh_token, client_address=ctx.client_address)
        except RefreshTokenReused as reused:
            await ctx.audit(
                AuditAction.TOKEN_REFRESH_REUSE,
                target_type="user",
                target_id=reused.user_id,
                details={"session_id": str(reused.family_id)},
            )
            raise
        return _payload(signed_in)

    @strawberry.mutation(description="End this session: its access and refresh tokens are refused from now on.")
    async def logout(self, info: Info[Context, None]) -> bool:
        ctx = info.context
        ctx.require_actor()
        assert ctx.token_claims is not None
        await signin.end_session(ctx.resources, ctx.token_claims)
        await ctx.audit(AuditAction.LOGOUT)
        return True

    @strawberry.mutation(description="End every session of the signed-in user, on every device.")
    async def logout_everywhere(self, info: Info[Context, None]) -> bool:
        ctx = info.context
        actor = ctx.require_actor()
        await signin.end_all_sessions(ctx.resources, actor.user_id)
        await ctx.audit(AuditAction.LOGOUT_EVERYWHERE)
        return True

    @strawberry.mutation(
        description="Change the password; every other session ends, and this one continues with new tokens."
    )
    async def change_password(self, info: Info[Context, None], current_password: str, new_password: str) -> AuthPayload:
        ctx = info.context
        actor = ctx.require_actor()
        resources = ctx.resources
        # Guessing the current password here is throttled like signing in: a stolen token must not open a
        # second door to the account's password.
        throttle = resources.login_throttle
        await throttle.check(actor.email, ctx.client_address)
        async with resources.sessions() as session:
            try:
                await users.change_password(
                    session=session,
                    hasher=resources.password_hasher,
                    authenticator=resources.authenticator,
                    actor=actor,
                    current=current_password,
                    new=new_password,
                )
            except InvalidCredentials:
                await throttle.failed(actor.email, ctx.client_address)
                raise
            user = await users.active_user(session=session, user_id=actor.user_id)
        revoked_ms = await signin.end_all_sessions(resources, actor.user_id)
        await ctx.audit(AuditAction.PASSWORD_CHANGE)
        # The new token must be newer than the mark that ended the old ones.
        issued = max(datetime.now(UTC), datetime.fromtimestamp((revoked_ms + 1) / 1000, UTC))
        return await _signed_in(ctx, user, now=issued)

    @strawberry.mutation(description="Give an account another role (administrators only).")
    async def set_user_role(self, info: Info[Context, None], user_id: strawberry.ID, role: Role) -> UserNode:  # type: ignore[valid-type]
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            user, previous = await admin.set_role(
                session=session, actor=actor, user_id=parse_id(user_id, "user"), role=DbRole(role)
            )
        await ctx.audit(
            AuditAction.USER_ROLE_CHANGE,
            target_type="user",
            target_id=user.id,
            details={"from": str(previous), "to": str(user.role)},
        )
        return UserNode.of(user)

    @strawberry.mutation(
        description="Deactivate (or reactivate) an account; a deactivated account's sessions end at once."
    )
    async def set_user_active(self, info: Info[Context, None], user_id: strawberry.ID, active: bool) -> UserNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            user = await admin.set_active(
                session=session, actor=actor, user_id=parse_id(user_id, "user"), active=active
            )
        if not active:
            await signin.end_all_sessions(ctx.resources, user.id)
        action = AuditAction.USER_ACTIVATE if active else AuditAction.USER_DEACTIVATE
        await ctx.audit(action, target_type="user", target_id=user.id)
        return UserNode.of(user)

    @strawberry.mutation(description="Let in an account that registered while approval was required (administrators).")
    async def approve_user(self, info: Info[Context, None], user_id: strawberry.ID) -> UserNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            user = await admin.approve(session=session, actor=actor, user_id=parse_id(user_id, "user"))
        await ctx.audit(AuditAction.USER_APPROVE, target_type="user", target_id=user.id)
        return UserNode.of(user)

    @strawberry.mutation(description="End every session of an account (administrators only).")
    async def end_user_sessions(self, info: Info[Context, None], user_id: strawberry.ID) -> bool:
        ctx = info.context
        actor = ctx.require_actor()
        admin.require_admin(actor)
        target = parse_id(user_id, "user")
        async with ctx.resources.sessions() as session:
            if await session.get(User, target) is None:
                raise NotFound("User", target)
        await signin.end_all_sessions(ctx.resources, target)
        await ctx.audit(AuditAction.USER_SESSIONS_END, target_type="user", target_id=target)
        return True

    @strawberry.mutation
    async def create_case(self, info: Info[Context, None], title: str) -> CaseNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            case = await cases.create_case(session=session, actor=actor, title=title)
        await ctx.audit(AuditAction.CASE_CREATE, target_type="case", target_id=case.id)
        return CaseNode.of(case, CaseAccess.OWNER)

    @strawberry.mutation(
        description="Share a case with the account of `email` as viewer or editor, or change its role "
        "(the case's owner and administrators). Guests can only be viewers."
    )
    async def share_case(
        self,
        info: Info[Context, None],
        case_id: strawberry.ID,
        email: str,
        role: CaseRole,  # type: ignore[valid-type]
    ) -> CaseMemberNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            member, previous = await cases.share_case(
                session=session, actor=actor, case_id=parse_id(case_id, "case"), email=email, role=DbCaseRole(role)
            )
        await ctx.audit(
            AuditAction.CASE_SHARE,
            target_type="case",
            target_id=case_id,
            details={"user_id": str(member.user_id), "email": member.email, "role": str(member.role), "from": previous},
        )
        return CaseMemberNode.of(member)

    @strawberry.mutation(
        description="Stop sharing a case with a user (owner and administrators; a member may remove itself). "
        "False when the case was not shared with that user."
    )
    async def unshare_case(self, info: Info[Context, None], case_id: strawberry.ID, user_id: strawberry.ID) -> bool:
        ctx = info.context
        actor = ctx.require_actor()
        member = parse_id(user_id, "user")
        async with ctx.resources.sessions() as session:
            removed = await cases.unshare_case(
                session=session, actor=actor, case_id=parse_id(case_id, "case"), user_id=member
            )
        if removed:
            await ctx.audit(
                AuditAction.CASE_UNSHARE, target_type="case", target_id=case_id, details={"user_id": str(member)}
            )
        return removed

    @strawberry.mutation(
        description="Upload one image, video or audio file into a case (GraphQL multipart request, one file). "
        "It streams to storage as it arrives; the same bytes uploaded again into the case return the existing "
        "media with `duplicate: true`."
    )
    async def upload_media(self, info: Info[Context, None], case_id: strawberry.ID, file: Upload) -> MediaNode:
        ctx = info.context
        actor = ctx.require_actor()
        if not isinstance(file, IncomingFile):
            raise InvalidInput("`file` must be a file part of a multipart request (GraphQL multipart request spec).")
        registered = await media.upload_media(
            resources=ctx.resources, actor=actor, case_id=parse_id(case_id, "case"), upload=file
        )
        await _audit_registered(ctx, registered)
        return MediaNode.of(registered.media, duplicate=registered.duplicate)

    @strawberry.mutation(
        description="Start a resumable upload of a large file: PUT its parts to the returned URLs (in any order, "
        "again after a broken connection), then call `completeUpload`. `sha256`, when given, is checked."
    )
    async def start_upload(
        self,
        info: Info[Context, None],
        case_id: strawberry.ID,
        filename: str,
        size_bytes: float,
        sha256: str | None = None,
    ) -> ResumableUploadNode:
        ctx = info.context
        actor = ctx.require_actor()
        if size_bytes != int(size_bytes):
            raise InvalidInput("sizeBytes must be a whole number.")
        started = await uploads.start_upload(
            resources=ctx.resources,
            actor=actor,
            case_id=parse_id(case_id, "case"),
            filename=filename,
            size_bytes=int(size_bytes),
            sha256=sha256,
        )
        row = started.upload
        return ResumableUploadNode(
            upload_id=strawberry.ID(str(row.id)),
            part_size=float(row.part_size),
            part_count=started.part_count,
            parts=[PartUrlNode(number=p.number, url=p.url) for p in started.parts],
            urls_expire_at=started.urls_expire_at,
            expires_at=row.expires_at,
        )

    @strawberry.mutation(description="Fresh part URLs of a resumable upload (at most 1000 per call).")
    async def upload_part_urls(
        self, info: Info[Context, None], upload_id: strawberry.ID, part_numbers: list[int]
    ) -> list[PartUrlNode]:
        ctx = info.context
        actor = ctx.require_actor()
        parts, _ = await uploads.part_urls(
            resources=ctx.resources, actor=actor, upload_id=parse_id(upload_id, "upload"), numbers=part_numbers
        )
        return [PartUrlNode(number=p.number, url=p.url) for p in parts]

    @strawberry.mutation(
        description="Finish a resumable upload: every part must have arrived; the stored file is hashed, checked "
        "against the announced size and SHA-256, probed and registered."
    )
    async def complete_upload(self, info: Info[Context, None], upload_id: strawberry.ID) -> MediaNode:
        ctx = info.context
        actor = ctx.require_actor()
        registered = await uploads.complete_upload(
            resources=ctx.resources, actor=actor, upload_id=parse_id(upload_id, "upload")
        )
        await _audit_registered(ctx, registered)
        return MediaNode.of(registered.media, duplicate=registered.duplicate)

    @strawberry.mutation(description="Give up a resumable upload; its parts are removed.")
    async def abort_upload(self, info: Info[Context, None], upload_id: strawberry.ID) -> bool:
        ctx = info.context
        actor = ctx.require_actor()
        await uploads.abort_upload(resources=ctx.resources, actor=actor, upload_id=parse_id(upload_id, "upload"))
        return True

    @strawberry.mutation(
        description="A short-lived link that downloads the original (anyone who may read the case); audited."
    )
    async def create_download_link(self, info: Info[Context, None], media_id: strawberry.ID) -> DownloadLinkNode:
        ctx = info.context
        actor = ctx.require_actor()
        link = await media.download_link(resources=ctx.resources, actor=actor, media_id=parse_id(media_id, "media"))
        await ctx.audit(
            AuditAction.MEDIA_DOWNLOAD,
            target_type="media",
            target_id=link.media.id,
            details={
                "case_id": str(link.media.case_id),
                "sha256": link.media.sha256,
                "expires_at": str(link.expires_at),
            },
        )
        return DownloadLinkNode(url=link.url, expires_at=link.expires_at)

    @strawberry.mutation(
        description="Analyse one media item with the named analyzers (all that accept it when omitted)."
    )
    async def analyze_media(
        self,
        info: Info[Context, None],
        media_id: strawberry.ID,
        analyzers: list[str] | None = None,
        priority: PriorityEnum = DbPriority.NORMAL,  # type: ignore[valid-type]
    ) -> JobNode:
        ctx = info.context
        actor = ctx.require_actor()
        job = await jobs.analyze_media(
            resources=ctx.resources,
            actor=actor,
            media_id=parse_id(media_id, "media"),
            analyzers=analyzers,
            priority=DbPriority(priority),
        )
        return JobNode.of(job)

    @strawberry.mutation(
        description="Analyse every media item of a case: each named analyzer (all installed when omitted) on each "
        "media item it accepts, in one job."
    )
    async def analyze_case(
        self,
        info: Info[Context, None],
        case_id: strawberry.ID,
        analyzers: list[str] | None = None,
        priority: PriorityEnum = DbPriority.NORMAL,  # type: ignore[valid-type]
    ) -> JobNode:
        ctx = info.context
        actor = ctx.require_actor()
        job = await jobs.analyze_case(
            resources=ctx.resources,
            actor=actor,
            case_id=parse_id(case_id, "case"),
            analyzers=analyzers,
            priority=DbPriority(priority),
        )
        return JobNode.of(job)

    @strawberry.mutation(
        description="Cancel a job: its queued tasks never start and its running ones stop within seconds; "
        "nothing a cancelled task made is kept."
    )
    async def cancel_job(self, info: Info[Context, None], job_id: strawberry.ID) -> JobNode:
        ctx = info.context
        actor = ctx.require_actor()
        job = await jobs.cancel_job(resources=ctx.resources, actor=actor, job_id=parse_id(job_id, "job"))
        await ctx.audit(
            AuditAction.JOB_CANCEL, target_type="job", target_id=job.id, details={"case_id": str(job.case_id)}
        )
        return JobNode.of(job)

    @strawberry.mutation(description="Run the failed and cancelled tasks of a job again.")
    async def retry_job(self, info: Info[Context, None], job_id: strawberry.ID) -> JobNode:
        ctx = info.context
        actor = ctx.require_actor()
        job, count = await jobs.retry_job(resources=ctx.resources, actor=actor, job_id=parse_id(job_id, "job"))
        await ctx.audit(
            AuditAction.JOB_RETRY,
            target_type="job",
            target_id=job.id,
            details={"case_id": str(job.case_id), "tasks": count},
        )
        return JobNode.of(job)

    @strawberry.mutation(description="Name a person or voice (editors of its case); an empty label clears it.")
    async def rename_cluster(
        self, info: Info[Context, None], cluster_id: strawberry.ID, label: str | None = None
    ) -> IdentityClusterNode:
        ctx = info.context
        cluster = await identity_corrections.rename_cluster(
            resources=ctx.resources, actor=ctx.require_actor(), cluster_id=parse_id(cluster_id, "cluster"), label=label
        )
        await _audit_correction(ctx, "rename", "cluster", cluster.id, label=label)
        return await _cluster_node(ctx, cluster.id)

    @strawberry.mutation(
        description="These are one person (or voice): the members of `fromIds` join `intoId`, where automation "
        "leaves them. Refused when two of their faces are in one keyframe."
    )
    async def merge_clusters(
        self, info: Info[Context, None], into_id: strawberry.ID, from_ids: list[strawberry.ID]
    ) -> IdentityClusterNode:
        ctx = info.context
        cluster = await identity_corrections.merge_clusters(
            resources=ctx.resources,
            actor=ctx.require_actor(),
            into_id=parse_id(into_id, "cluster"),
            from_ids=[parse_id(c, "cluster") for c in from_ids],
        )
        await _audit_correction(ctx, "merge", "cluster", cluster.id, merged=[str(c) for c in from_ids])
        return await _cluster_node(ctx, cluster.id)

    @strawberry.mutation(
        description="These members are someone else: they leave the cluster for a new one, and automation never "
        "puts them back. Returns the new cluster."
    )
    async def split_cluster(
        self, info: Info[Context, None], cluster_id: strawberry.ID, member_ids: list[strawberry.ID]
    ) -> IdentityClusterNode:
        ctx = info.context
        cluster = await identity_corrections.split_cluster(
            resources=ctx.resources,
            actor=ctx.require_actor(),
            cluster_id=parse_id(cluster_id, "cluster"),
            member_ids=[parse_id(m, "member") for m in member_ids],
        )
        await _audit_correction(
            ctx, "split", "cluster", cluster.id, source=str(cluster_id), members=[str(m) for m in member_ids]
        )
        return await _cluster_node(ctx, cluster.id)

    @strawberry.mutation(
        description="This face (or turn) belongs to that cluster: it moves there and stays, and is never put back "
        "into the cluster it left. Moving it into its own cluster confirms it there."
    )
    async def move_member(
        self, info: Info[Context, None], member_id: strawberry.ID, cluster_id: strawberry.ID
    ) -> IdentityMemberNode:
        ctx = info.context
        member = await identity_corrections.move_member(
            resources=ctx.resources,
            actor=ctx.require_actor(),
            member_id=parse_id(member_id, "member"),
            cluster_id=parse_id(cluster_id, "cluster"),
        )
        await _audit_correction(ctx, "move", "identity_member", member.id, cluster=str(cluster_id))
        return await _member_node(ctx, member.id)

    @strawberry.mutation(
        description="Not this person: the face (or turn) leaves its cluster for good and automation places it "
        "again, with the cluster it resembles most otherwise, or alone."
    )
    async def remove_member(self, info: Info[Context, None], member_id: strawberry.ID) -> IdentityMemberNode:
        ctx = info.context
        member = await identity_corrections.remove_member(
            resources=ctx.resources, actor=ctx.require_actor(), member_id=parse_id(member_id, "member")
        )
        await _audit_correction(ctx, "remove", "identity_member", member.id)
        return await _member_node(ctx, member.id)

    @strawberry.mutation(
        description="Place every automatic member of the case's persons (or voices) again, as if its media arrived "
        "in upload order (after a threshold change, or to pick up media whose clustering failed). Users' "
        "corrections hold."
    )
    async def recluster_case(
        self,
        info: Info[Context, None],
        case_id: strawberry.ID,
        kind: IdentityKindEnum,  # type: ignore[valid-type]
    ) -> ReclusterResultNode:
        ctx = info.context
        summary = await identity_service.recluster_case(
            ctx.resources, case_id=parse_id(case_id, "case"), kind=DbIdentityKind(kind), actor=ctx.require_actor()
        )
        await _audit_correction(
            ctx, "recluster", "case", parse_id(case_id, "case"), kind=str(kind), moved=summary.moved
        )
        return ReclusterResultNode(members=summary.members, clusters=summary.clusters, moved=summary.moved)


async def _audit_correction(
    ctx: Context, correction: str, target_type: str, target_id: object, **details: object
) -> None:
    """Corrections of persons and voices change what a case says about people: they go into the audit trail too."""
    await ctx.audit(
        AuditAction.IDENTITY_CORRECT,
        target_type=target_type,
        target_id=target_id,
        details={"correction": correction, **details},
    )


async def _cluster_node(ctx: Context, cluster_id: uuid.UUID) -> IdentityClusterNode:
    async with ctx.resources.sessions() as session:
        view = await identity_views.cluster_view(session, cluster_id)
    crops = await result_views.crop_links(ctx.resources, [(m.member, m.media) for m in view.members])
    return IdentityClusterNode.of(view, crops)


async def _member_node(ctx: Context, member_id: uuid.UUID) -> IdentityMemberNode:
    async with ctx.resources.sessions() as session:
        view = await identity_views.member_view(session, member_id)
    crops = await result_views.crop_links(ctx.resources, [(view.member, view.media)])
    return IdentityMemberNode.of(view, crops.get(view.member.id))


async def _signed_in(ctx: Context, user: User, now: datetime | None = None) -> AuthPayload:
    return _payload(await signin.sign_in(ctx.resources, user, client_address=ctx.client_address, now=now))


async def _audit_registered(ctx: Context, registered: media.Registered) -> None:
    row = registered.media
    await ctx.audit(
        AuditAction.MEDIA_UPLOAD,
        target_type="media",
        target_id=row.id,
        details={
            "case_id": str(row.case_id),
            "sha256": row.sha256,
            "size_bytes": row.size_bytes,
            "content_type": row.content_type,
            "filename": row.filename,
            "ingest": row.ingest,
            "duplicate": registered.duplicate,
        },
    )


def _payload(signed_in: signin.SignedIn) -> AuthPayload:
    return AuthPayload(
        access_token=signed_in.access.token,
        token_type="Bearer",  # noqa: S106 - the token scheme, not a secret
        expires_at=signed_in.access.expires_at,
        refresh_token=signed_in.refresh.token,
        refresh_expires_at=signed_in.refresh.expires_at,
        user=UserNode.of(signed_in.user),
    )
