"""The `aima` command: the process edge, where settings are read and logging is configured."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from aima.db.models import Role
from aima.settings import ConfigFileError, Environment, Settings

app = typer.Typer(help="AIMA: AI media analysis.", no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")
audit_app = typer.Typer(help="Check the audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
media_app = typer.Typer(help="Check stored media.", no_args_is_help=True)
app.add_typer(media_app, name="media")

logger = logging.getLogger("aima.cli")


def _settings(json_logs: bool | None = None) -> Settings:
    from aima.logs import configure_logging

    try:
        settings = Settings()
    except (ConfigFileError, ValidationError) as exc:
        typer.echo(f"aima: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, json_lines=settings.log_json if json_logs is None else json_logs)
    return settings


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address (default: AIMA_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: AIMA_API_PORT).")] = None,
) -> None:
    """Serve the GraphQL API with uvicorn."""
    import uvicorn

    from aima.app import create_app

    settings = _settings()
    app = create_app(settings)
    # Everything imported so far lives as long as the process: keep it out of the collector's way, and collect
    # less often, so that full collections do not pause the event loop for hundreds of milliseconds (they set the
    # p99 of event delivery to many subscribers).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    uvicorn.run(
        app,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        ws_per_message_deflate=False,  # messages are small; compressing them costs more latency than it saves
        lifespan="on",
    )


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once the queues are empty.")] = False,
    resources: Annotated[
        str,
        typer.Option(
            help="What this worker runs tasks on, comma-separated: cpu and/or model endpoint names (cpu,llava).",
        ),
    ] = "cpu",
) -> None:
    """Run arq workers that execute analysis tasks: one per resource queue, plus the periodic jobs."""
    import uvloop

    from aima.analysis import ModelNotInstalled
    from aima.workers.process import WorkerProcess
    from aima.workers.settings import periodic_worker_settings, worker_settings
    from aima.workers.worker import WakeableWorker, run_workers

    served = list(dict.fromkeys(r.strip() for r in resources.split(",") if r.strip()))
    if not served:
        typer.echo("aima: --resources names no resource", err=True)
        raise typer.Exit(2)
    settings = _settings()
    asyncio.set_event_loop(uvloop.new_event_loop())
    process = WorkerProcess(settings, serves=served)
    kwargs = [worker_settings(settings, r, process=process, periodic=False) for r in served]
    kwargs.append(periodic_worker_settings(settings, process=process))
    try:
        run_workers([WakeableWorker(**{**k, "handle_signals": False}, burst=burst) for k in kwargs])
    except ModelNotInstalled as exc:  # found at startup, before any task was taken
        typer.echo(f"aima worker: a model is missing: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the database migrations."""
    from aima.db.migrate import upgrade

    settings = _settings(json_logs=False)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {revision}")


@app.command()
def plugins() -> None:
    """List the installed plugins and the analyzers each provides."""
    from aima.plugins import AnalyzerRegistry, create_plugin_manager

    try:
        # Only the plugins' own settings are read: listing them needs no secrets, whatever the environment.
        config = Settings(environment=Environment.DEVELOPMENT).plugins
    except (ConfigFileError, ValidationError) as exc:
        typer.echo(f"aima: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from None
    registry = AnalyzerRegistry(create_plugin_manager(), config)
    analyzers = {a.name: a for a in registry.all()}
    case_analyzers = {a.name: a for a in registry.case_analyzers()}
    for info in registry.plugins():
        typer.echo(f"{info.name} {info.version or ''}".rstrip())
        for name in info.analyzers:
            if name in case_analyzers:
                c = case_analyzers[name]
                typer.echo(f"  {c.name} {c.version}  [case] on {c.runs_on}  {c.description}")
                continue
            a = analyzers[name]
            kinds = ",".join(sorted(a.media_kinds))
            typer.echo(f"  {a.name} {a.version}  [{kinds}] on {a.runs_on}  {a.description}")
    for embedder in registry.embedders():
        typer.echo(f"embedder {embedder.name} ({embedder.dimension}-d)")


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the GraphQL schema (SDL); graphql/schema.graphql is this output."""
    from aima.graphql.schema import schema_sdl

    sdl = schema_sdl()
    if output:
        output.write_text(sdl, encoding="utf-8")
    else:
        typer.echo(sdl, nl=False)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(prompt=True)],
    password: Annotated[str | None, typer.Option(help="Omit to generate one (printed once).")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Give the account the admin role.")] = False,
) -> None:
    """Create an account, e.g. the first administrator."""
    settings = _settings(json_logs=False)
    password = password or secrets.token_urlsafe(18)
    asyncio.run(create_account(settings, email, password, Role.ADMIN if admin else Role.USER))
    typer.echo(f"created {'admin' if admin else 'user'} {email} with password {password}")


async def create_account(settings: Settings, email: str, password: str, role: Role) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from aima.security import password_hasher
    from aima.services.users import create_user

    engine = create_async_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            await create_user(
                session=session, hasher=password_hasher(settings.auth), email=email, password=password, role=role
            )
    finally:
        await engine.dispose()


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit trail's hash chain; name the first broken entry (exit status 1)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from aima.services.audit import verify_chain

    settings = _settings(json_logs=False)

    async def run() -> None:
        engine = create_async_engine(settings.database_url)
        try:
            report = await verify_chain(engine)
        finally:
            await engine.dispose()
        if report.first_broken_id is None:
            typer.echo(f"audit trail intact: {report.entries} entries")
            return
        typer.echo(f"audit trail broken at entry {report.first_broken_id}: {report.reason}", err=True)
        raise typer.Exit(1)

    asyncio.run(run())


@media_app.command("verify")
def media_verify(
    case: Annotated[str | None, typer.Option(help="Only the media of this case (its id).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Originals hashed at once.")] = 4,
) -> None:
    """Re-hash stored originals against the SHA-256 recorded at upload; list changed or missing ones (exit 1)."""
    import uuid

    from aima.resources import open_resources
    from aima.services.custody import verify_originals

    settings = _settings(json_logs=False)

    async def run() -> int:
        checked = failed = 0
        async with open_resources(settings, prepare=False) as resources:
            case_id = uuid.UUID(case) if case else None
            async for result in verify_originals(resources, case_id=case_id, concurrency=concurrency):
                checked += 1
                if not result.ok:
                    failed += 1
                    typer.echo(f"CHANGED media {result.media_id} (case {result.case_id}): {result.problem}")
        typer.echo(f"{checked} originals checked, {checked - failed} intact, {failed} changed or missing")
        return failed

    if asyncio.run(run()):
        raise typer.Exit(1)


@app.command()
def dev(
    data_dir: Annotated[Path | None, typer.Option(help="Where the embedded servers keep data (AIMA_DATA_DIR).")] = None,
    port: Annotated[int | None, typer.Option(help="API port (AIMA_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    free_ports: Annotated[
        bool, typer.Option(help="Run the embedded servers on free ports instead of the fixed defaults.")
    ] = False,
) -> None:
    """Start everything on this machine: embedded servers, the API and workers. Ctrl-C stops it all."""
    from aima.devserver import run_dev

    os.environ.setdefault("AIMA_ENVIRONMENT", "development")
    settings = _settings(json_logs=False)
    raise typer.Exit(run_dev(settings, data_dir=data_dir, port=port, workers=workers, free_ports=free_ports))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
