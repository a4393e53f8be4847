"""The ASGI application: GraphQL over HTTP and websockets, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aima.config_sync import ConfigSync
from aima.graphql.schema import create_schema
from aima.graphql.view import AimaGraphQL
from aima.logs import log_context
from aima.metrics import HTTP_LATENCY, HTTP_REQUESTS, QUEUE_DEPTH
from aima.plugins import AnalyzerRegistry
from aima.resources import Resources, open_resources
from aima.settings import Settings
from aima.upload_guard import UploadGuard

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KNOWN_ROUTES = {"/graphql", "/healthz", "/readyz", "/metrics"}


class RequestContextMiddleware:
    """Gives every request an id (the client's X-Request-ID when sane), logs it, and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        sent = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
        route = scope["path"] if scope["path"] in _KNOWN_ROUTES else "other"
        method = scope.get("method", "WS")
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if scope["type"] == "http":
                    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
                    HTTP_LATENCY.labels(method=method, route=route).observe(time.perf_counter() - started)


class GraphQLEndpoint:
    """The GraphQL view, created once the lifespan has opened the clients it needs."""

    view: AimaGraphQL | None = None

    def __init__(self, settings: Settings) -> None:
        self.base_settings = settings

    def settings(self) -> Settings:
        """The settings in effect now, runtime overrides included, for the middleware in front of the view."""
        return self.view.resources.settings if self.view is not None else self.base_settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.view is None:
            raise RuntimeError("the application has not started")
        await self.view(scope, receive, send)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when every backend answers. Model endpoints are reported beside them (``model:<endpoint>``) but a
    down one only makes the status "degraded": the API itself needs no model (its tasks wait for the model, and a
    dossier names what it had to do without), so taking it out of a load balancer would help no one."""
    resources: Resources = request.state.resources
    checks, models = await asyncio.gather(resources.check_backends(), resources.check_models())
    down = {name: reason for name, reason in checks.items() if reason is not None}
    models_down = {name: reason for name, reason in models.items() if reason is not None}
    status = "unavailable" if down else "degraded" if models_down else "ready"
    body: dict[str, Any] = {
        "status": status,
        "checks": {name: ("ok" if reason is None else "down") for name, reason in {**checks, **models}.items()},
    }
    for name, reason in sorted({**down, **models_down}.items()):  # the reasons may name hosts: logs only
        logger.warning("not ready: %s is down (%s)", name, reason)
    return JSONResponse(body, status_code=503 if down else 200)


async def metrics(request: Request) -> Response:
    resources: Resources = request.state.resources
    queue = resources.settings.worker.queue_name
    try:
        QUEUE_DEPTH.labels(queue=queue).set(await resources.arq.zcard(queue))
    except Exception:
        logger.warning("could not read the depth of queue %s", queue)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, analyzers: AnalyzerRegistry | None = None) -> Starlette:
    """Build the app; clients open in the lifespan, so creating the app connects to nothing."""
    schema = create_schema(settings.graphql, introspection=settings.introspection, suggestions=settings.suggestions)
    graphql_endpoint = GraphQLEndpoint(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_resources(settings, analyzers=analyzers) as resources, ConfigSync(resources, role="api"):
            graphql_endpoint.view = AimaGraphQL(schema, resources)
            logger.info("api ready with analyzers: %s", ", ".join(resources.analyzers.names()))
            yield {"resources": resources}

    app = Starlette(
        routes=[
            Route("/graphql", graphql_endpoint, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(UploadGuard, settings=graphql_endpoint.settings)
    app.add_middleware(RequestContextMiddleware)
    return app
