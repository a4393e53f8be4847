"""The Strawberry ASGI view: builds each request's context and authenticates websocket connections."""

from __future__ import annotations

import uuid
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from aima.errors import AimaError, NotAuthenticated
from aima.graphql.context import Context
from aima.logs import request_id_var
from aima.resources import Resources
from aima.security import TokenClaims, decode_access_token
from aima.services.access import Actor
from aima.services.users import active_actor
from aima.streaming_form import MultipartError, read_operations


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: list[str]) -> str | None:
    """The client's address: the peer's, or, behind a trusted proxy, the last hop it did not add itself."""
    if peer in trusted_proxies and forwarded_for:
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            if hop and hop not in trusted_proxies:
                return hop[:64]
    return peer


class AimaGraphQL(GraphQL[Context, None]):
    def __init__(self, schema: object, resources: Resources) -> None:
        settings = resources.settings
        super().__init__(
            schema,  # type: ignore[arg-type]
            graphql_ide="graphiql" if settings.environment == "development" else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            multipart_uploads_enabled=True,
            allowed_origins=settings.allowed_origins,
            keep_alive=True,
            keep_alive_interval=15,
        )
        self.resources = resources

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, Any]:
        """Stream uploads: the file reaches its resolver as it arrives, never spooled to disk (`streaming_form`)."""
        starlette_request: Request = request._request  # type: ignore[attr-defined]
        try:
            return await read_operations(starlette_request.stream(), request.content_type or "")
        except MultipartError as exc:
            raise HTTPException(400, exc.message) from exc

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        ctx = Context(
            request=request,
            response=response,
            resources=self.resources,
            request_id=request_id_var.get(),
            client_address=client_address(
                request.client.host if request.client else None,
                request.headers.get("x-forwarded-for"),
                self.resources.settings.trusted_proxies,
            ),
        )
        if isinstance(request, Request):
            header = request.headers.get("authorization")
            if header:
                try:
                    ctx.actor, ctx.token_claims = await self.authenticate(header)
                except AimaError as exc:
                    ctx.auth_error = exc
        return ctx

    async def on_ws_connect(self, context: Context) -> None:  # type: ignore[override]
        """The token travels in the connection_init payload: {"authorization": "Bearer <token>"}."""
        params = context.connection_params or {}
        header = params.get("authorization") or params.get("Authorization") or ""
        if not isinstance(header, str) or not header:
            raise ConnectionRejectionError({"code": NotAuthenticated.code, "message": "Send a token."})
        try:
            context.actor, context.token_claims = await self.authenticate(header)
        except AimaError as exc:
            raise ConnectionRejectionError({"code": exc.code, "message": exc.message}) from exc
        context.request_id = context.request_id or uuid.uuid4().hex

    async def authenticate(self, header: str) -> tuple[Actor, TokenClaims]:
        """The active user a bearer token names, with the token's claims; refused when its session has ended."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated("Use 'Authorization: Bearer <token>'.")
        claims = decode_access_token(self.resources.settings.auth, token.strip())
        await self.resources.revocations.check(claims)
        actor = await active_actor(engine=self.resources.engine, user_id=claims.user_id)
        return actor, claims
