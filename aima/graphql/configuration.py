"""Configuration for administrators: the runtime settings, changed while AIMA runs, and the settings in effect."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import cast

import strawberry
from sqlalchemy import select
from strawberry.scalars import JSON
from strawberry.types import Info

from aima.db.models import User
from aima.errors import Forbidden, InvalidInput
from aima.graphql.context import Context
from aima.graphql.types import UserNode
from aima.services import runtime_settings
from aima.services.access import Actor
from aima.services.audit import AuditAction
from aima.services.runtime_settings import AppliedVersion, Layer, RuntimeReport, SettingReport

SettingSource = strawberry.enum(Layer, name="SettingSource", description="Where a setting's value comes from.")


@strawberry.type(name="RuntimeSetting", description="A setting administrators may change while AIMA runs.")
class RuntimeSettingNode:
    key: str = strawberry.field(
        description="Dotted name, as in aima.toml: `auth.registration` is `[auth] registration`."
    )
    description: str
    value: JSON = strawberry.field(description="The value in effect, with any runtime override.")
    base_value: JSON = strawberry.field(
        description="The value without a runtime override (default, file or environment)."
    )
    source: SettingSource  # type: ignore[valid-type]
    version: int | None = strawberry.field(description="The configuration version of the runtime override.")
    updated_at: datetime | None
    updated_by: UserNode | None = strawberry.field(description="The administrator who set the runtime override.")

    @classmethod
    def of(cls, report: SettingReport, users: dict[uuid.UUID, User]) -> RuntimeSettingNode:
        override = report.override
        author = users.get(override.updated_by) if override is not None and override.updated_by else None
        return cls(
            key=report.spec.key,
            description=report.spec.description,
            value=cast(JSON, report.value),
            base_value=cast(JSON, report.base_value),
            source=report.source,
            version=override.version if override else None,
            updated_at=override.updated_at if override else None,
            updated_by=UserNode.of(author) if author else None,
        )


@strawberry.type(name="AppliedConfiguration", description="The configuration version one running process applied.")
class AppliedConfigurationNode:
    process: str = strawberry.field(description="`api:<host>:<pid>` or `worker:<host>:<pid>`.")
    version: int
    current: bool = strawberry.field(description="Whether the process applied the latest version.")
    applied_at: datetime = strawberry.field(description="When the process applied this version.")
    seen_at: datetime = strawberry.field(description="When the process last confirmed it (every 30 s).")
    values: JSON = strawberry.field(description="The runtime settings in effect in that process.")

    @classmethod
    def of(cls, entry: AppliedVersion, latest: int) -> AppliedConfigurationNode:
        return cls(
            process=entry.process,
            version=entry.version,
            current=entry.version >= latest,
            applied_at=entry.applied_at,
            seen_at=entry.seen_at,
            values=cast(JSON, entry.values),
        )


@strawberry.type(name="RuntimeSettings")
class RuntimeSettingsNode:
    version: int = strawberry.field(description="The latest configuration version (0: nothing was ever changed).")
    settings: list[RuntimeSettingNode]
    processes: list[AppliedConfigurationNode] = strawberry.field(
        description="The running API and worker processes, and the version each applied; a change reaches them "
        "within about 2 s."
    )


async def _report(ctx: Context, actor: Actor) -> tuple[RuntimeReport, dict[uuid.UUID, User]]:
    report = await runtime_settings.runtime_report(resources=ctx.resources, actor=actor)
    authors = {s.override.updated_by for s in report.settings if s.override and s.override.updated_by}
    users: dict[uuid.UUID, User] = {}
    if authors:
        async with ctx.resources.sessions() as session:
            users = {
                user.id: user for user in (await session.execute(select(User).where(User.id.in_(authors)))).scalars()
            }
    return report, users


async def _setting(ctx: Context, actor: Actor, key: str) -> RuntimeSettingNode:
    report, users = await _report(ctx, actor)
    return next(RuntimeSettingNode.of(s, users) for s in report.settings if s.spec.key == key)


@strawberry.type
class ConfigurationQuery:
    @strawberry.field(
        description="The settings that may change at runtime, and what each process applied (administrators only)."
    )
    async def runtime_settings(self, info: Info[Context, None]) -> RuntimeSettingsNode:
        ctx = info.context
        actor = ctx.require_actor()
        report, users = await _report(ctx, actor)
        return RuntimeSettingsNode(
            version=report.version,
            settings=[RuntimeSettingNode.of(s, users) for s in report.settings],
            processes=[AppliedConfigurationNode.of(p, report.version) for p in report.processes],
        )

    @strawberry.field(
        description="The settings in effect in the answering process, as JSON; every secret reads `**********` "
        "(administrators only)."
    )
    async def configuration(self, info: Info[Context, None]) -> JSON:
        ctx = info.context
        actor = ctx.require_actor()
        return cast(JSON, runtime_settings.redacted_configuration(resources=ctx.resources, actor=actor))


@strawberry.type
class ConfigurationMutation:
    @strawberry.mutation(
        description="Override a runtime setting in every API and worker process; checked against the settings "
        "schema (administrators only)."
    )
    async def set_runtime_setting(self, info: Info[Context, None], key: str, value: JSON) -> RuntimeSettingNode:
        ctx = info.context
        actor = ctx.require_actor()
        change = runtime_settings.set_runtime_setting(resources=ctx.resources, actor=actor, key=key, value=value)
        return await _audited(ctx, actor, AuditAction.CONFIG_CHANGE, key, change)

    @strawberry.mutation(
        description="Drop the runtime override of a setting: its default, file or environment value applies again "
        "(administrators only)."
    )
    async def reset_runtime_setting(self, info: Info[Context, None], key: str) -> RuntimeSettingNode:
        ctx = info.context
        actor = ctx.require_actor()
        change = runtime_settings.reset_runtime_setting(resources=ctx.resources, actor=actor, key=key)
        return await _audited(ctx, actor, AuditAction.CONFIG_RESET, key, change)


async def _audited(
    ctx: Context, actor: Actor, action: AuditAction, key: str, change: Awaitable[runtime_settings.SettingChange]
) -> RuntimeSettingNode:
    """Make a change and record it, or its refusal, in the audit trail; answer with the setting as it is now."""
    try:
        done = await change
    except (InvalidInput, Forbidden) as exc:
        await _refused(ctx, action, key, exc)
        raise
    await ctx.audit(
        action,
        target_type="setting",
        target_id=key,
        details={"from": done.previous, "to": done.value, "version": done.version},
    )
    return await _setting(ctx, actor, key)


async def _refused(ctx: Context, action: AuditAction, key: str, error: InvalidInput | Forbidden) -> None:
    """Record a refused change: the reason, never the value (it may be a secret sent under the wrong key)."""
    await ctx.audit(action, target_type="setting", target_id=key[:200], details={"refused": error.message})
