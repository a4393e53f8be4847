"""Runtime settings: the few keys administrators may change while AIMA runs, stored in PostgreSQL.

The layers, lowest first: the defaults, aima.toml and the environment (together a process's base `Settings`), then
these overrides. A change is checked against the settings schema, stored with the next configuration version (the
`runtime_settings_version` sequence) and announced on Redis; every API and worker process then re-reads the
overrides and swaps its settings (`aima.config_sync`), and records the version it applied in a Redis hash.

Only keys that running processes read afresh each time are changeable here, and never a secret or a connection URL.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from redis.asyncio import Redis
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aima.db.models import RuntimeSetting
from aima.errors import Forbidden, InvalidInput
from aima.services.access import Actor
from aima.settings import Settings, explicit_settings, field_adapter

if TYPE_CHECKING:
    from aima.resources import Resources

logger = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock that orders changes (exclusive) before reads (shared), so a reader never sees
#: a version whose change has not committed yet.
_CHANGE_LOCK = 0x41494D43  # "AIMC"
#: How often each process re-reads the overrides anyway (a lost message), and re-reports what it applied.
RESYNC_S = 30.0
#: A process that has not re-reported for this long is gone; its entry is dropped.
STALE_AFTER_S = 3 * RESYNC_S
#: Longest access-token lifetime a runtime change may set; ended sessions stay refused at least this long.
MAX_RUNTIME_ACCESS_TOKEN_MINUTES = 24 * 60
#: What a secret reads as wherever settings are shown.
MASK = "**********"
_MAX_VALUE_CHARS = 1000


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _token_minutes(value: int) -> int:
    if value > MAX_RUNTIME_ACCESS_TOKEN_MINUTES:
        raise ValueError(
            f"must be at most {MAX_RUNTIME_ACCESS_TOKEN_MINUTES} at runtime (ended sessions are kept refused that long)"
        )
    return value


@dataclass(frozen=True)
class RuntimeKey:
    """A dotted settings key that may change at runtime, and what changing it does."""

    key: str
    description: str
    #: A further check of a well-typed value: returns it (normalized) or raises ValueError with the reason.
    check: Callable[[Any], Any] | None = None


RUNTIME_KEYS: dict[str, RuntimeKey] = {
    spec.key: spec
    for spec in (
        RuntimeKey(
            "auth.registration",
            "Who may create an account: open, approval (an administrator approves) or "
            "closed (administrators create accounts).",
        ),
        RuntimeKey(
            "auth.access_token_minutes", "Lifetime of access tokens issued from now on, in minutes.", _token_minutes
        ),
        RuntimeKey("auth.refresh_token_days", "Lifetime of refresh tokens issued from now on, in days."),
        RuntimeKey(
            "auth.throttle_free_failures_account",
            "Failed sign-ins per account (within the window) before each further attempt waits.",
        ),
        RuntimeKey(
            "auth.throttle_free_failures_address",
            "Failed sign-ins per client address (within the window) before each further attempt waits.",
        ),
        RuntimeKey("auth.throttle_window_s", "Seconds a failed sign-in counts against an account and an address."),
        RuntimeKey("auth.throttle_base_delay_s", "First wait after the free failures, in seconds; doubles each time."),
        RuntimeKey("auth.throttle_max_delay_account_s", "Longest wait for one account, in seconds."),
        RuntimeKey("auth.throttle_max_delay_address_s", "Longest wait for one client address, in seconds."),
        RuntimeKey("max_upload_bytes", "Largest file an upload may carry, in bytes."),
        RuntimeKey(
            "log_level", "Logging level of every API and worker process: DEBUG, INFO, WARNING, ERROR.", _log_level
        ),
        RuntimeKey(
            "worker.max_tries",
            "Deliveries of an analysis task before a transient error (a backend that is down) fails it.",
        ),
        RuntimeKey(
            "readiness_timeout_s", "Seconds each readiness check (/readyz) may take before its backend counts as down."
        ),
        RuntimeKey(
            "retention_days",
            "Media older than this many days are deleted (with derived files, results and vectors) by the worker's "
            "retention sweep, every 10 minutes; 0 keeps everything.",
        ),
    )
}


class Layer(enum.StrEnum):
    """Where a setting's value comes from."""

    DEFAULT = "default"
    FILE = "file"
    ENVIRONMENT = "environment"
    RUNTIME = "runtime"


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    version: int
    updated_by: uuid.UUID | None
    updated_at: datetime


@dataclass(frozen=True)
class Overrides:
    """The stored overrides and the configuration version they make up (the last version a change took)."""

    version: int
    items: dict[str, Override]

    @property
    def values(self) -> dict[str, Any]:
        return {key: item.value for key, item in self.items.items()}


@dataclass(frozen=True)
class SettingChange:
    key: str
    previous: Any
    value: Any
    #: The configuration version of the change; None when nothing changed (a reset of a key with no override).
    version: int | None


@dataclass(frozen=True)
class SettingReport:
    spec: RuntimeKey
    value: Any
    base_value: Any
    source: Layer
    override: Override | None


@dataclass(frozen=True)
class AppliedVersion:
    """What one process applied: its configuration version, when, and its runtime keys' values."""

    process: str
    version: int
    applied_at: datetime
    seen_at: datetime
    values: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "applied_at": self.applied_at.isoformat(),
                "seen_at": self.seen_at.isoformat(),
                "values": self.values,
            }
        )

    @classmethod
    def from_json(cls, process: str, raw: str | bytes) -> AppliedVersion:
        data = json.loads(raw)
        return cls(
            process=process,
            version=int(data["version"]),
            applied_at=datetime.fromisoformat(data["applied_at"]),
            seen_at=datetime.fromisoformat(data["seen_at"]),
            values=dict(data.get("values") or {}),
        )


@dataclass(frozen=True)
class RuntimeReport:
    version: int
    settings: list[SettingReport]
    processes: list[AppliedVersion]


def config_channel(prefix: str) -> str:
    """The Redis channel on which a change is announced."""
    return f"{prefix}:config"


def applied_key(prefix: str) -> str:
    """The Redis hash of what each process applied: process id -> `AppliedVersion` as JSON."""
    return f"{prefix}:config:applied"


def require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("Only administrators may read or change the configuration.")


def _field(key: str) -> FieldInfo:
    model: type[BaseModel] = Settings
    *parents, name = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[name]


@functools.cache
def _adapter(key: str) -> TypeAdapter[Any]:
    return field_adapter(_field(key))


def runtime_value(settings: Settings, key: str) -> Any:
    """The value of a dotted key, as JSON."""
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return _adapter(key).dump_python(value, mode="json")


def runtime_values(settings: Settings) -> dict[str, Any]:
    return {key: runtime_value(settings, key) for key in RUNTIME_KEYS}


def _unknown_key(key: str) -> InvalidInput:
    return InvalidInput(
        f"{key[:100]!r} cannot be changed at runtime. Runtime settings: {', '.join(sorted(RUNTIME_KEYS))}."
    )


def parse_value(key: str, value: Any) -> Any:
    """The value checked against the key's type and constraints, strictly (a string is no number), as JSON.

    The error messages never repeat the value: someone may try to store a secret under the wrong key.
    """
    spec = RUNTIME_KEYS.get(key)
    if spec is None:
        raise _unknown_key(key)
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"Invalid value for {key}: not JSON.") from None
    if len(encoded) > _MAX_VALUE_CHARS:
        raise InvalidInput(f"Invalid value for {key}: longer than {_MAX_VALUE_CHARS} characters.")
    adapter = _adapter(key)
    try:
        parsed = adapter.validate_json(encoded, strict=True)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid value for {key}: {exc.errors()[0]['msg']}.") from None
    if spec.check is not None:
        try:
            parsed = spec.check(parsed)
        except ValueError as exc:
            raise InvalidInput(f"Invalid value for {key}: {exc}.") from None
    return adapter.dump_python(parsed, mode="json")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, name = key.split(".")
    for part in parents:
        data = data[part]
    data[name] = value


def merge(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    """`base` with the overrides, validated as a whole by the settings schema; InvalidInput names the keys."""
    data = base.model_dump()
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"Invalid settings: {reasons}.") from None


def apply_overrides(base: Settings, overrides: Mapping[str, Any]) -> tuple[Settings, dict[str, str]]:
    """`base` with every override that is still valid; also returns the skipped ones (key -> reason).

    An override can go bad without anyone touching it: a new release may drop a key or tighten its type.
    """
    accepted: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for key, value in sorted(overrides.items()):
        if key not in RUNTIME_KEYS:
            skipped[key] = "not a runtime setting"
            continue
        try:
            parsed = parse_value(key, value)
            merge(base, {**accepted, key: parsed})
        except InvalidInput as exc:
            skipped[key] = exc.message
            continue
        accepted[key] = parsed
    return merge(base, accepted), skipped


async def _read(conn: AsyncConnection) -> Overrides:
    version = (
        await conn.execute(text("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM runtime_settings_version"))
    ).scalar_one()
    rows = await conn.execute(
        select(
            RuntimeSetting.key,
            RuntimeSetting.value,
            RuntimeSetting.version,
            RuntimeSetting.updated_by,
            RuntimeSetting.updated_at,
        )
    )
    items = {row.key: Override(row.key, row.value, row.version, row.updated_by, row.updated_at) for row in rows}
    return Overrides(version=int(version), items=items)


async def load_overrides(engine: AsyncEngine) -> Overrides:
    """The stored overrides and their version, read after any change in progress has committed."""
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _CHANGE_LOCK})
        return await _read(conn)


async def set_runtime_setting(*, resources: Resources, actor: Actor, key: str, value: Any) -> SettingChange:
    """Store an override (administrators only), with the next configuration version, and announce it."""
    require_admin(actor)
    parsed = parse_value(key, value)
    base = resources.base_settings
    async with resources.engine.connect() as conn, conn.begin():
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHANGE_LOCK})
        current = await _read(conn)
        effective, skipped = apply_overrides(base, current.values)
        others = {k: v for k, v in current.values.items() if k != key and k not in skipped}
        merge(base, {**others, key: parsed})  # the whole schema, model checks included
        version = int((await conn.execute(text("SELECT nextval('runtime_settings_version')"))).scalar_one())
        row = {"key": key, "value": parsed, "version": version, "updated_by": actor.user_id}
        upsert = insert(RuntimeSetting).values(**row, updated_at=func.now())
        await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[RuntimeSetting.key],
                set_={
                    "value": upsert.excluded.value,
                    "version": version,
                    "updated_by": actor.user_id,
                    "updated_at": func.now(),
                },
            )
        )
    change = SettingChange(key=key, previous=runtime_value(effective, key), value=parsed, version=version)
    logger.info("runtime setting %s set to %s (version %d) by %s", key, json.dumps(parsed), version, actor.email)
    await announce(resources.redis, resources.settings.redis_prefix, version, key)
    return change


async def reset_runtime_setting(*, resources: Resources, actor: Actor, key: str) -> SettingChange:
    """Drop an override (administrators only): the key has its base value again, in every process."""
    require_admin(actor)
    if key not in RUNTIME_KEYS:
        raise _unknown_key(key)
    base = resources.base_settings
    async with resources.engine.connect() as conn, conn.begin():
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHANGE_LOCK})
        current = await _read(conn)
        effective, _ = apply_overrides(base, current.values)
        version: int | None = None
        if key in current.items:
            await conn.execute(delete(RuntimeSetting).where(RuntimeSetting.key == key))
            version = int((await conn.execute(text("SELECT nextval('runtime_settings_version')"))).scalar_one())
    change = SettingChange(
        key=key, previous=runtime_value(effective, key), value=runtime_value(base, key), version=version
    )
    if version is not None:
        logger.info(
            "runtime setting %s reset to %s (version %d) by %s", key, json.dumps(change.value), version, actor.email
        )
        await announce(resources.redis, resources.settings.redis_prefix, version, key)
    return change


async def announce(redis: Redis, prefix: str, version: int, key: str) -> None:
    """Tell every process to re-read the overrides; if Redis is down, they still do within `RESYNC_S`."""
    try:
        await redis.publish(config_channel(prefix), json.dumps({"version": version, "key": key}))
    except Exception as exc:  # the change is committed: a lost announcement only delays it
        logger.warning(
            "could not announce configuration version %d (%s); processes re-read it within %g s", version, exc, RESYNC_S
        )


def _source(key: str, value: Any, layers: Mapping[str, str]) -> Layer:
    if key in layers:
        return Layer(layers[key])
    field = _field(key)
    default = field_adapter(field).dump_python(field.get_default(call_default_factory=True), mode="json")
    # Set neither by the file nor the environment, yet not the default: the arguments of whatever built the settings
    # (a parent process, a test); for a server that is its environment.
    return Layer.DEFAULT if value == default else Layer.ENVIRONMENT


async def runtime_report(*, resources: Resources, actor: Actor) -> RuntimeReport:
    """Every runtime key with its effective and base value and where it comes from; and what each process applied."""
    require_admin(actor)
    base = resources.base_settings
    overrides = await load_overrides(resources.engine)
    effective, skipped = apply_overrides(base, overrides.values)
    layers = explicit_settings(base)
    reports = []
    for key, spec in RUNTIME_KEYS.items():
        base_value = runtime_value(base, key)
        override = overrides.items.get(key) if key not in skipped else None
        source = Layer.RUNTIME if override is not None else _source(key, base_value, layers)
        reports.append(SettingReport(spec, runtime_value(effective, key), base_value, source, override))
    processes = await applied_versions(resources.redis, base.redis_prefix)
    return RuntimeReport(version=overrides.version, settings=reports, processes=processes)


_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.\-]*://[^:/@\s]*):[^@/\s]*@", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Settings as JSON with every secret masked: `SecretStr` values and passwords inside URLs."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\1:{MASK}@", value)
    return value


def redacted_configuration(*, resources: Resources, actor: Actor) -> dict[str, Any]:
    """This process's effective settings (administrators only), with no secret in them."""
    require_admin(actor)
    data: dict[str, Any] = redact(resources.settings.model_dump(mode="json"))
    return data


async def record_applied(redis: Redis, prefix: str, entry: AppliedVersion) -> None:
    key = applied_key(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, entry.process, entry.to_json())
        pipe.expire(key, int(STALE_AFTER_S))  # the whole hash goes once every process is gone
        await pipe.execute()


async def forget_applied(redis: Redis, prefix: str, process: str) -> None:
    await redis.hdel(applied_key(prefix), process)  # type: ignore[misc]


async def applied_versions(redis: Redis, prefix: str) -> list[AppliedVersion]:
    """What each live process applied, by process id; entries of processes gone silent are dropped."""
    raw: dict[bytes, bytes] = await redis.hgetall(applied_key(prefix))  # type: ignore[misc]
    now = datetime.now(UTC)
    live, stale = [], []
    for field, value in raw.items():
        process = field.decode()
        try:
            entry = AppliedVersion.from_json(process, value)
        except (ValueError, KeyError, TypeError):
            stale.append(process)
            continue
        if (now - entry.seen_at).total_seconds() > STALE_AFTER_S:
            stale.append(process)
        else:
            live.append(entry)
    if stale:
        await redis.hdel(applied_key(prefix), *stale)  # type: ignore[misc]
    return sorted(live, key=lambda entry: entry.process)
