"""`aima dev`: embedded servers, migrations, a first admin, then the API and workers as child processes.

Same code path as production: the children are the ordinary `aima api` and `aima worker` commands, pointed at
the embedded servers through `AIMA_*` environment variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import SecretStr

from aima.db.migrate import upgrade
from aima.db.models import Role
from aima.embedded import DevStack, StackPorts, StackUrls
from aima.settings import Settings

logger = logging.getLogger(__name__)

FIRST_ADMIN_EMAIL = "admin@aima.local"


def run_dev(
    settings: Settings, *, data_dir: Path | None, port: int | None, workers: int, free_ports: bool = False
) -> int:
    root = (data_dir or settings.data_dir).resolve()
    port = port or settings.api_port
    started = time.monotonic()
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    stack = DevStack(root / "servers", StackPorts.free() if free_ports else StackPorts())
    children: list[subprocess.Popen[bytes]] = []
    try:
        logger.info("starting embedded servers under %s", root)
        stack.start()
        child_settings = with_stack(settings, stack.urls).model_copy(update={"api_port": port, "data_dir": root})
        env = {"AIMA_LOG_JSON": "false", **os.environ, **child_settings.child_environment()}
        upgrade(child_settings.database_url)
        admin_note = asyncio.run(_ensure_first_admin(child_settings))

        command = [sys.executable, "-m", "aima.cli"]
        # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops the children in order.
        children.append(subprocess.Popen([*command, "api", "--port", str(port)], env=env, start_new_session=True))
        children.extend(subprocess.Popen([*command, "worker"], env=env, start_new_session=True) for _ in range(workers))
        url = f"http://{settings.api_host}:{port}"
        if not _wait_ready(f"{url}/readyz", children, timeout=60, stop=lambda: stopping):
            logger.error("the API did not become ready; see the messages above")
            return 1
        sys.stdout.write(
            f"\nAIMA is running at {url}/graphql (ready in {time.monotonic() - started:.1f} s)\n"
            f"  data: {root}\n  {admin_note}\n  Ctrl-C stops everything.\n\n"
        )
        sys.stdout.flush()
        while not stopping:
            if any(child.poll() is not None for child in children):
                logger.error("a child process exited; stopping")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_children(children)
        stack.stop()
        logger.info("stopped")


def with_stack(settings: Settings, urls: StackUrls) -> Settings:
    """`settings` pointed at the embedded servers."""
    s3 = settings.s3.model_copy(
        update={
            "endpoint_url": urls.s3_url,
            "access_key": urls.s3_access_key,
            "secret_key": SecretStr(urls.s3_secret_key),
        }
    )
    return settings.model_copy(
        update={
            "database_url": urls.database_url,
            "mongo_url": urls.mongo_url,
            "milvus_url": urls.milvus_url,
            "redis_url": urls.redis_url,
            "s3": s3,
        }
    )


async def _ensure_first_admin(settings: Settings) -> str:
    """Create the first admin on the first start and say how to sign in; later starts only say who it is."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from aima.security import password_hasher
    from aima.services.users import count_admins, create_user

    engine = create_async_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            if await count_admins(session=session):
                return (
                    f"admin: {FIRST_ADMIN_EMAIL} (password shown at the first start; "
                    "`aima users create --admin` makes another)"
                )
            password = secrets.token_urlsafe(15)
            await create_user(
                session=session,
                hasher=password_hasher(settings.auth),
                email=FIRST_ADMIN_EMAIL,
                password=password,
                role=Role.ADMIN,
            )
            return f"first admin created: {FIRST_ADMIN_EMAIL} / {password}  (shown once: note it)"
    finally:
        await engine.dispose()


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], *, timeout: float, stop: object) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(stop) and stop():
            return False
        if any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own http URL
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
