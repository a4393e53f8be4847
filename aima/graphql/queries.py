"""Read operations. Every field resolves the acting user first and lets the service layer check access."""

from __future__ import annotations

import uuid

import strawberry
from strawberry.types import Info

from aima.errors import InvalidInput
from aima.graphql.context import Context
from aima.graphql.types import (
    AnalyzerNode,
    AuditEntryNode,
    CaseNode,
    JobConnection,
    JobEdge,
    JobFilter,
    JobNode,
    MediaNode,
    PageInfo,
    ReceivedPartNode,
    SearchHitNode,
    UploadStatusNode,
    UserNode,
)
from aima.services import admin, audit, cases, jobs, media, uploads
from aima.services import search as search_service
from aima.services.audit import AuditAction
from aima.services.users import active_user


def parse_id(value: strawberry.ID, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{value!r} is not a valid {kind} id.") from None


@strawberry.type
class Query:
    @strawberry.field(description="The signed-in user.")
    async def me(self, info: Info[Context, None]) -> UserNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            return UserNode.of(await active_user(session=session, user_id=actor.user_id))

    @strawberry.field(description="Cases the signed-in user owns or that are shared with it, newest first.")
    async def cases(self, info: Info[Context, None]) -> list[CaseNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            return [CaseNode.of(row, access) for row, access in await cases.list_cases(session=session, actor=actor)]

    @strawberry.field
    async def case(self, info: Info[Context, None], id: strawberry.ID) -> CaseNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            row, access = await cases.case_with_access(session=session, actor=actor, case_id=parse_id(id, "case"))
            return CaseNode.of(row, access)

    @strawberry.field
    async def media(self, info: Info[Context, None], id: strawberry.ID) -> MediaNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            row = await media.get_media(session=session, actor=actor, media_id=parse_id(id, "media"))
            return MediaNode.of(row)

    @strawberry.field
    async def job(self, info: Info[Context, None], id: strawberry.ID) -> JobNode:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            return JobNode.of(await jobs.get_job(session=session, actor=actor, job_id=parse_id(id, "job")))

    @strawberry.field(
        description="The job history you may read (every job, for administrators), newest first; pass `after` the "
        "`endCursor` of the previous page."
    )
    async def jobs(
        self,
        info: Info[Context, None],
        filter: JobFilter | None = None,
        first: int = 20,
        after: str | None = None,
    ) -> JobConnection:
        ctx = info.context
        actor = ctx.require_actor()
        wanted = filter or JobFilter()
        async with ctx.resources.sessions() as session:
            page = await jobs.list_jobs(
                session=session,
                actor=actor,
                case_id=parse_id(wanted.case_id, "case") if wanted.case_id else None,
                media_id=parse_id(wanted.media_id, "media") if wanted.media_id else None,
                state=wanted.state,
                mine=wanted.mine,
                first=first,
                after=after,
            )
        edges = [JobEdge(cursor=jobs.job_cursor(row), node=JobNode.of(row)) for row in page.jobs]
        return JobConnection(
            edges=edges,
            page_info=PageInfo(has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None),
        )

    @strawberry.field(description="Which parts of a resumable upload have arrived (after a broken connection).")
    async def upload_status(self, info: Info[Context, None], upload_id: strawberry.ID) -> UploadStatusNode:
        ctx = info.context
        actor = ctx.require_actor()
        state = await uploads.upload_status(
            resources=ctx.resources, actor=actor, upload_id=parse_id(upload_id, "upload")
        )
        return UploadStatusNode(
            upload_id=upload_id,
            part_count=state.part_count,
            received_parts=[ReceivedPartNode(number=p.number, size_bytes=float(p.size_bytes)) for p in state.received],
            received_bytes=float(state.received_bytes),
            missing_parts=state.missing,
            expires_at=state.upload.expires_at,
        )

    @strawberry.field(description="Accounts whose email contains `search`, by email (administrators only).")
    async def users(
        self,
        info: Info[Context, None],
        search: str | None = None,
        pending_approval: bool | None = None,
        first: int = 50,
    ) -> list[UserNode]:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.resources.sessions() as session:
            rows = await admin.search_users(
                session=session, actor=actor, search=search, pending=pending_approval, limit=first
            )
        return [UserNode.of(row) for row in rows]

    @strawberry.field(description="The audit trail, newest first (administrators only).")
    async def audit_log(
        self,
        info: Info[Context, None],
        action: str | None = None,
        actor_id: strawberry.ID | None = None,
        target_id: str | None = None,
        before_id: strawberry.ID | None = None,
        first: int = 50,
    ) -> list[AuditEntryNode]:
        ctx = info.context
        actor = ctx.require_actor()
        rows = await audit.entries(
            ctx.resources.engine,
            actor=actor,
            action=action,
            actor_id=parse_id(actor_id, "user") if actor_id else None,
            target_id=target_id,
            before_id=int(before_id) if before_id and str(before_id).isdigit() else None,
            limit=first,
        )
        return [AuditEntryNode.of(row) for row in rows]

    @strawberry.field(description="The analyzers the installed plugins provide.")
    def analyzers(self, info: Info[Context, None]) -> list[AnalyzerNode]:
        info.context.require_actor()
        return [
            AnalyzerNode(
                name=a.name,
                version=a.version,
                description=a.description,
                media_kinds=sorted(a.media_kinds),
                runs_on=a.runs_on,
            )
            for a in info.context.resources.analyzers.all()
        ]

    @strawberry.field(
        description="Search what was said or written in a case by meaning (transcripts, on-screen text): the "
        "nearest texts first. Needs a text embedder plugin; `analyzers` limits the search to some analyzers' texts."
    )
    async def search_case(
        self,
        info: Info[Context, None],
        case_id: strawberry.ID,
        text: str,
        first: int = 20,
        analyzers: list[str] | None = None,
    ) -> list[SearchHitNode]:
        ctx = info.context
        actor = ctx.require_actor()
        hits = await search_service.search_case(
            resources=ctx.resources,
            actor=actor,
            case_id=parse_id(case_id, "case"),
            text=text,
            first=first,
            analyzers=analyzers,
        )
        await ctx.audit(
            AuditAction.RESULTS_READ,
            target_type="case",
            target_id=case_id,
            details={"view": "search", "text": text[:200], "hits": len(hits)},
        )
        return [SearchHitNode.of(hit) for hit in hits]
