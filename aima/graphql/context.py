"""Per-request context: the shared clients, the acting user and request-scoped DataLoaders."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from aima.db.documents import AnalysisResultDocument
from aima.errors import AimaError, Forbidden, NotAuthenticated, NotFound
from aima.resources import Resources
from aima.security import TokenClaims
from aima.services import audit
from aima.services.access import Actor
from aima.services.audit import AuditAction, AuditRecord
from aima.services.media import readable_media_ids
from aima.services.results import results_for_media


def results_loader(
    resources: Resources, actor: Callable[[], Actor]
) -> DataLoader[str, list[AnalysisResultDocument] | NotFound]:
    """Results of many media in two queries: which of them the actor may read, then their results."""

    async def load(media_ids: list[str]) -> list[list[AnalysisResultDocument] | NotFound]:
        async with resources.sessions() as session:
            readable = await readable_media_ids(session=session, actor=actor(), media_ids=media_ids)
        found = await results_for_media(resources.results, [m for m in media_ids if m in readable])
        return [found[m] if m in readable else NotFound("Media", m) for m in media_ids]

    return DataLoader(load_fn=load)


@dataclass
class Context:
    request: Request | WebSocket
    response: Response | WebSocket | None
    resources: Resources
    actor: Actor | None = None
    #: The actor's access token: when it expires (a websocket connection outlives its token otherwise), its id.
    token_claims: TokenClaims | None = None
    #: Why the credentials sent were refused, raised when a resolver needs the actor.
    auth_error: AimaError | None = None
    request_id: str | None = None
    #: The client's address as the server saw it (a proxy's, behind one).
    client_address: str | None = None
    connection_params: dict[str, Any] | None = None
    results_loader: DataLoader[str, list[AnalysisResultDocument] | NotFound] = field(init=False)

    def __post_init__(self) -> None:
        self.reset_loaders()

    def reset_loaders(self) -> None:
        """Fresh DataLoaders: a websocket connection keeps one context for all its operations."""
        self.results_loader = results_loader(self.resources, self.require_actor)

    async def audit(
        self,
        action: AuditAction,
        *,
        target_type: str | None = None,
        target_id: object = None,
        details: dict[str, Any] | None = None,
        actor: Actor | None = None,
        actor_email: str | None = None,
    ) -> None:
        """Record an action of this request's actor (or of `actor`, for sign-ins) in the audit trail."""
        who = actor or self.actor
        await audit.record(
            self.resources.engine,
            AuditRecord(
                action=action,
                actor_id=who.user_id if who else None,
                actor_email=(who.email if who else actor_email),
                target_type=target_type,
                target_id=str(target_id) if target_id is not None else None,
                client_address=self.client_address,
                details=details,
            ),
        )

    @contextlib.asynccontextmanager
    async def refusals_audited(self, operation: str) -> AsyncIterator[None]:
        """Audit a refused access inside a subscription (queries and mutations are audited by `OperationMetrics`,
        which does not see the errors of subscriptions)."""
        try:
            yield
        except (Forbidden, NotFound) as refused:
            refusal = {"path": operation, "code": refused.code, "message": refused.message}
            await self.audit(AuditAction.ACCESS_DENIED, details={"operation": operation, "refusals": [refusal]})
            raise

    def require_actor(self) -> Actor:
        """The authenticated user; every resolver except register and login starts here."""
        if self.actor is None:
            raise self.auth_error or NotAuthenticated()
        if self.token_claims is not None and datetime.now(UTC) >= self.token_claims.expires_at:
            raise NotAuthenticated("The access token has expired.")
        return self.actor

    async def require_live_session(self) -> Actor:
        """`require_actor`, and the session must not have been ended since the connection authenticated."""
        actor = self.require_actor()
        if self.token_claims is not None:
            await self.resources.revocations.check(self.token_claims)
        return actor
