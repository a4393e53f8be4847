"""Deleting media and cases. The service layer checks who may, deletes from every store and writes the audit trail."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from aima.graphql.context import Context
from aima.graphql.queries import parse_id
from aima.services import deletion


@strawberry.type
class LifecycleMutation:
    @strawberry.mutation(
        description="Delete a media item: its original, derived files, jobs, results and vectors (the case's owner "
        "and administrators). Audited with the original's SHA-256. True once it is deleted; a store that fails "
        "after that is cleaned later by the worker's sweep."
    )
    async def delete_media(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        ctx = info.context
        actor = ctx.require_actor()
        await deletion.delete_media(
            resources=ctx.resources, actor=actor, media_id=parse_id(id, "media"), client_address=ctx.client_address
        )
        return True

    @strawberry.mutation(
        description="Delete a case with all its media, derived files, jobs, results, vectors, shares and unfinished "
        "uploads (the owner and administrators). Audited, with an entry for each media item."
    )
    async def delete_case(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        ctx = info.context
        actor = ctx.require_actor()
        await deletion.delete_case(
            resources=ctx.resources, actor=actor, case_id=parse_id(id, "case"), client_address=ctx.client_address
        )
        return True
