"""Every client AIMA talks to, opened and closed in one async context.

Nothing connects at import time: the API's lifespan and the worker's startup each enter `open_resources` once and
pass the `Resources` object down to whatever needs a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from argon2 import PasswordHasher
from arq.connections import ArqRedis, RedisSettings, create_pool
from beanie import init_beanie
from pymilvus import AsyncMilvusClient, MilvusClient
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.sql import text

from aima.db.documents import DOCUMENT_MODELS, AnalysisResultDocument
from aima.db.vectors import ensure_collections
from aima.inference import Endpoints, endpoints_for
from aima.media.inspect import Inspector
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.security import password_hasher
from aima.services.runtime_settings import MAX_RUNTIME_ACCESS_TOKEN_MINUTES
from aima.services.sessions import SessionRevocations
from aima.services.throttle import LoginThrottle
from aima.services.users import Authenticator
from aima.settings import Settings
from aima.storage import ObjectStore
from aima.workers.serialization import deserialize, serialize

logger = logging.getLogger(__name__)


#: pymilvus pings its connection every 10 s even without calls; gRPC servers on default settings (Milvus Lite's among
#: them) answer such pings on a quiet connection with GOAWAY "too many pings", which fails the next call. Ping only
#: while calls are in flight.
MILVUS_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 60_000, "grpc.keepalive_permit_without_calls": False}


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    mongo: AsyncMongoClient[dict[str, object]]
    milvus: AsyncMilvusClient
    store: ObjectStore
    arq: ArqRedis
    redis: Redis
    analyzers: AnalyzerRegistry
    password_hasher: PasswordHasher
    authenticator: Authenticator
    #: Probes uploads in child processes under memory and time limits (started on first use).
    inspector: Inspector
    #: The configured model endpoints (`aima.inference`): nothing connects before a request; the worker hands them
    #: to analyzers, the API only checks them for readiness.
    endpoints: Endpoints | None = None
    #: The settings the process started with (defaults, file, environment); `settings` adds the runtime overrides
    #: and is replaced whenever an administrator changes one (`aima.config_sync`), so read it at the time of use.
    base_settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.base_settings = self.settings

    @property
    def revocations(self) -> SessionRevocations:
        """Ended sessions, checked on every authenticated request."""
        # Kept as long as any token may live: a runtime change may have issued longer-lived ones than now.
        lifetime_minutes = max(self.base_settings.auth.access_token_minutes, MAX_RUNTIME_ACCESS_TOKEN_MINUTES)
        return SessionRevocations(self.redis, self.settings.redis_prefix, lifetime_minutes * 60)

    @property
    def login_throttle(self) -> LoginThrottle:
        """Failed password checks per account and address (sign-in, password change)."""
        return LoginThrottle(self.redis, self.settings.redis_prefix, self.settings.auth)

    @property
    def results(self) -> AsyncCollection[dict[str, Any]]:
        """The collection of `AnalysisResultDocument`s."""
        return self.mongo[self.settings.mongo_database][AnalysisResultDocument.Settings.name]

    async def check_backends(self) -> dict[str, str | None]:
        """Ask every backend for a sign of life; map each name to None when it answered, else the reason."""
        checks: dict[str, Callable[[], Awaitable[object]]] = {
            "postgresql": self._ping_postgres,
            "mongodb": lambda: self.mongo.admin.command("ping"),
            "milvus": self.milvus.list_collections,
            "s3": self.store.ping,
            "redis": self.redis.ping,
        }
        return await self._run_checks(checks)

    async def _run_checks(self, checks: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, str | None]:
        timeout = self.settings.readiness_timeout_s

        async def run(check: Callable[[], Awaitable[object]]) -> str | None:
            try:
                await asyncio.wait_for(check(), timeout)
            except TimeoutError:
                return f"no answer within {timeout:g} s"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"[:300]
            return None

        results = await asyncio.gather(*(run(c) for c in checks.values()))
        return dict(zip(checks, results, strict=True))

    async def check_models(self) -> dict[str, str | None]:
        """The same for each configured model endpoint, named ``model:<endpoint>`` (none configured: empty)."""
        if self.endpoints is None:
            return {}
        return await self._run_checks(self.endpoints.readiness_checks())

    async def _ping_postgres(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 3
    return settings


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, *, analyzers: AnalyzerRegistry | None = None, prepare: bool = True
) -> AsyncIterator[Resources]:
    """Open every client; with `prepare`, also create the bucket, Mongo indexes and Milvus collections."""
    async with contextlib.AsyncExitStack() as stack:
        # No pre-ping: it costs a round trip per checkout, on every request and task; a connection that died is
        # replaced when it fails, and none lives longer than pool_recycle.
        engine = create_async_engine(settings.database_url, pool_size=10, max_overflow=10, pool_recycle=1800)
        stack.push_async_callback(engine.dispose)

        mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True
        )
        stack.push_async_callback(mongo.close)
        await init_beanie(
            database=mongo[settings.mongo_database],
            document_models=DOCUMENT_MODELS,
            skip_indexes=not prepare,
        )

        if prepare:
            await asyncio.to_thread(_prepare_milvus, settings.milvus_url)
        # Dedicated: pymilvus otherwise shares one connection per URI through a process-wide manager, across
        # event loops and threads, which breaks when two sets of resources live in one process.
        milvus = AsyncMilvusClient(settings.milvus_url, dedicated=True, grpc_options=MILVUS_GRPC_OPTIONS)
        stack.push_async_callback(milvus.close)

        session = aioboto3.Session()
        s3 = await stack.enter_async_context(_s3_client(session, settings, settings.s3.endpoint_url))
        presigner = None
        if settings.s3.public_endpoint_url:
            presigner = await stack.enter_async_context(_s3_client(session, settings, settings.s3.public_endpoint_url))
        store = ObjectStore(s3, settings.s3.bucket, part_size=settings.s3.part_size, presigner=presigner)
        if prepare:
            await store.ensure_bucket()
        else:
            await store.detect_locking()

        arq = await create_pool(
            redis_settings(settings.redis_url),
            default_queue_name=settings.worker.queue_name,
            job_serializer=serialize,
            job_deserializer=deserialize,
        )
        stack.push_async_callback(arq.aclose)
        redis: Redis = Redis.from_url(settings.redis_url, health_check_interval=10)
        stack.push_async_callback(redis.aclose)

        uploads = settings.uploads
        inspector = await stack.enter_async_context(
            Inspector(
                processes=uploads.probe_processes,
                memory_mb=uploads.probe_memory_mb,
                timeout_s=uploads.probe_timeout_s,
                max_pixels=uploads.max_image_pixels,
            )
        )
        # Settings that cannot work (a TGI endpoint without a known chat template) stop the process here.
        endpoints = endpoints_for(settings)
        stack.push_async_callback(endpoints.aclose)
        hasher = password_hasher(settings.auth)
        yield Resources(
            settings=settings,
            engine=engine,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            mongo=mongo,
            milvus=milvus,
            store=store,
            arq=arq,
            redis=redis,
            analyzers=analyzers or AnalyzerRegistry(create_plugin_manager(), settings.plugins),
            password_hasher=hasher,
            authenticator=Authenticator(hasher),
            inspector=inspector,
            endpoints=endpoints,
        )


def _s3_client(session: aioboto3.Session, settings: Settings, endpoint_url: str) -> Any:
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=settings.s3.access_key,
        aws_secret_access_key=settings.s3.secret_key.get_secret_value(),
        region_name=settings.s3.region,
        config=AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=50,
        ),
    )


def _prepare_milvus(url: str) -> None:
    client = MilvusClient(url, dedicated=True)
    try:
        ensure_collections(client)
    finally:
        client.close()
