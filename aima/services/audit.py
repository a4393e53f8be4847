"""The audit trail: who did what to which object, when and from where, in a hash chain nobody can quietly edit.

Each entry's hash covers the previous entry's hash and the entry's own fields in a canonical JSON form, so changing,
removing or reordering any entry breaks every hash after it; `verify_chain` names the first broken entry. Appends
take a transaction-scoped advisory lock, so concurrent writers cannot fork the chain.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from aima.db.models import AuditEntry
from aima.errors import Forbidden
from aima.services.access import Actor

GENESIS_HASH = "0" * 64
#: Key of the PostgreSQL advisory lock that serializes appends.
_APPEND_LOCK = 0x41494D41  # "AIMA"
_audit = cast(Table, AuditEntry.__table__)


class AuditAction(enum.StrEnum):
    REGISTER = "auth.register"
    LOGIN = "auth.login"
    LOGIN_FAILED = "auth.login_failed"
    LOGIN_THROTTLED = "auth.login_throttled"
    LOGOUT = "auth.logout"
    LOGOUT_EVERYWHERE = "auth.logout_everywhere"
    PASSWORD_CHANGE = "auth.password_change"  # noqa: S105 - an action name
    USER_ROLE_CHANGE = "user.role_change"
    USER_DEACTIVATE = "user.deactivate"
    USER_ACTIVATE = "user.activate"
    USER_SESSIONS_END = "user.sessions_end"
    REGISTER_PENDING = "auth.register_pending"
    TOKEN_REFRESH_REUSE = "auth.refresh_reuse"  # noqa: S105 - an action name
    USER_APPROVE = "user.approve"
    CASE_CREATE = "case.create"
    CASE_SHARE = "case.share"
    CASE_UNSHARE = "case.unshare"
    CASE_DELETE = "case.delete"
    MEDIA_UPLOAD = "media.upload"
    MEDIA_DOWNLOAD = "media.download"
    MEDIA_DELETE = "media.delete"
    MEDIA_VERIFY_FAILED = "media.verify_failed"
    RESULTS_READ = "media.results_read"
    JOB_CANCEL = "job.cancel"
    JOB_RETRY = "job.retry"
    IDENTITY_CORRECT = "identity.correct"
    DOSSIER_READ = "dossier.read"
    DOSSIER_EXPORT = "dossier.export"
    ACCESS_DENIED = "access.denied"
    CONFIG_CHANGE = "config.change"
    CONFIG_RESET = "config.reset"


@dataclass(frozen=True)
class AuditRecord:
    """What an entry says, before it is chained."""

    action: AuditAction
    actor_id: uuid.UUID | None = None
    actor_email: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    client_address: str | None = None
    details: Mapping[str, Any] | None = None


def entry_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The hash of an entry: SHA-256 over the previous hash and the entry's fields as canonical JSON."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _fields(row: Mapping[str, Any]) -> dict[str, Any]:
    at = row["at"]
    return {
        "at": at.astimezone(UTC).isoformat(timespec="microseconds") if isinstance(at, datetime) else at,
        "actor_id": str(row["actor_id"]) if row["actor_id"] else None,
        "actor_email": row["actor_email"],
        "action": str(row["action"]),
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "client_address": row["client_address"],
        "details": dict(row["details"] or {}),
    }


async def append(conn: AsyncConnection, record: AuditRecord) -> str:
    """Add an entry inside the caller's transaction; returns its hash."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
    prev = await conn.scalar(select(_audit.c.hash).order_by(_audit.c.id.desc()).limit(1)) or GENESIS_HASH
    row = {
        # Microseconds are what PostgreSQL keeps, so the hash recomputes from the stored row.
        "at": datetime.now(UTC),
        "actor_id": record.actor_id,
        "actor_email": record.actor_email,
        "action": record.action.value,
        "target_type": record.target_type,
        "target_id": record.target_id,
        "client_address": record.client_address,
        "details": dict(record.details or {}),
    }
    digest = entry_hash(prev, _fields(row))
    await conn.execute(insert(_audit).values(**row, prev_hash=prev, hash=digest))
    return digest


async def record(engine: AsyncEngine, entry: AuditRecord) -> None:
    """Append an entry in a transaction of its own."""
    async with engine.begin() as conn:
        await append(conn, entry)


@dataclass(frozen=True)
class ChainReport:
    entries: int
    #: Id of the first entry whose hash or link does not match, None when the whole chain holds.
    first_broken_id: int | None
    reason: str | None


async def entries(
    engine: AsyncEngine,
    *,
    actor: Actor,
    action: str | None = None,
    actor_id: uuid.UUID | None = None,
    target_id: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Entries newest first, filtered; administrators only."""
    if not actor.is_admin:
        raise Forbidden("Only administrators may read the audit trail.")
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(min(max(limit, 1), 500))
    if action:
        query = query.where(AuditEntry.action == action)
    if actor_id:
        query = query.where(AuditEntry.actor_id == actor_id)
    if target_id:
        query = query.where(AuditEntry.target_id == target_id)
    if before_id:
        query = query.where(AuditEntry.id < before_id)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def verify_chain(engine: AsyncEngine, batch: int = 1000) -> ChainReport:
    """Recompute every hash in order and compare each link with the previous entry's hash."""
    expected_prev = GENESIS_HASH
    count = 0
    async for row in _rows(engine, batch):
        count += 1
        if row["prev_hash"] != expected_prev:
            return ChainReport(count, row["id"], "its previous-hash link does not match the entry before it")
        if entry_hash(row["prev_hash"], _fields(row)) != row["hash"]:
            return ChainReport(count, row["id"], "its content does not match its hash")
        expected_prev = row["hash"]
    return ChainReport(count, None, None)


async def _rows(engine: AsyncEngine, batch: int) -> AsyncIterator[Mapping[str, Any]]:
    last_id = 0
    async with engine.connect() as conn:
        while True:
            result = await conn.execute(select(_audit).where(_audit.c.id > last_id).order_by(_audit.c.id).limit(batch))
            rows = result.mappings().all()
            if not rows:
                return
            for row in rows:
                yield dict(row)
            last_id = rows[-1]["id"]
