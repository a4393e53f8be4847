"""Common supervision for the servers `aima dev` and the tests run as child processes.

Each server is a plain child process on 127.0.0.1 in its own session (so a Ctrl-C in the terminal reaches
only the supervisor, which then stops the servers in order), logging to ``<root>/logs/<name>.log`` where
``<root>`` is the parent of the server's data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

logger = logging.getLogger(__name__)

#: How many lines of the server log an error message carries.
LOG_TAIL_LINES = 20
#: A log bigger than this at start is moved to `<name>.log.1` (one generation kept).
LOG_ROTATE_BYTES = 20 * 1024 * 1024

_live_servers: weakref.WeakSet[EmbeddedServer] = weakref.WeakSet()
_live_lock = threading.Lock()


class EmbeddedServerError(RuntimeError):
    """A server could not be started (or found its port taken); the message carries the log tail."""


def log_tail(path: Path, *, start: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """Last `lines` lines of a log written since byte offset `start`; empty when there is none."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (same SO_REUSEADDR rules the servers use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def make_runtime_root(prefix: str = "aima-embedded-") -> Path:
    """A fresh temporary root for a throwaway stack that the `nobody` user can traverse.

    PostgreSQL refuses to run as root, so as root it runs as `nobody`, which must be able to reach its
    data folder; pytest's own temporary folders are 0700 and so are not usable for it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def find_executable(name: str, hint: str) -> str:
    """A console script from this interpreter's bin folder (the venv), else from PATH."""
    bin_dir = str(Path(sys.executable).parent)
    found = shutil.which(name, path=os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)]))
    if found is None:
        raise EmbeddedServerError(f"{name} not found next to {sys.executable} nor on PATH; {hint}")
    return found


@functools.cache
def _sigint_default_prefix() -> tuple[str, ...]:
    """`env --default-signal=INT` when we run with SIGINT ignored (started in the background by a shell).

    Children inherit an ignored SIGINT; Python servers (milvus-lite) would then ignore their stop signal.
    """
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return ()
    env = shutil.which("env")
    if env is None:
        return ()
    probe = subprocess.run([env, "--default-signal=INT", "true"], capture_output=True, check=False, timeout=10)
    return (env, "--default-signal=INT") if probe.returncode == 0 else ()


def _stop_all_at_exit() -> None:
    """Last resort: children live in their own sessions and would outlive a crashed supervisor."""
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)


atexit.register(_stop_all_at_exit)


class EmbeddedServer(ABC):
    """One server as a supervised child process: start with a real readiness check, stop in stages."""

    #: Short name: log file, data folder of a stack, messages.
    name: ClassVar[str] = "server"
    #: The signal that asks the server for a clean, fast shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGINT

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop_sent = False
        self._log_offset = 0
        self._lock = threading.RLock()

    # -- what a subclass provides -------------------------------------------------------------------------

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the server process."""

    @abstractmethod
    def check_ready(self) -> None:
        """One readiness probe with the server's real client; raises while not ready."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL clients use."""

    def ports(self) -> Sequence[int]:
        """Every TCP port the server listens on; checked before the start."""
        return (self.port,)

    def prepare(self, deadline: float) -> None:
        """Make the data folder ready (first run: initialise it) before `deadline` (time.monotonic)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra `subprocess.Popen` arguments (user, cwd).

        The data folder is the working folder: servers that look for config files in "." find none of
        whatever happens to lie where `aima dev` was started.
        """
        return {"cwd": self.data_dir}

    def environment(self) -> Mapping[str, str] | None:
        """Environment of the child, None for ours."""
        return None

    def after_stop_signal(self) -> None:
        """Called right after the clean-shutdown signal went out (to help a server notice it)."""
        return None

    def after_stop(self) -> None:
        """Clean up after the process is gone (stale sockets)."""
        return None

    # -- paths ----------------------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The folder that holds this server's data folder, logs and helper files."""
        return self.data_dir.parent

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.root / "run" / f"{self.name}.pid"

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and not self._exited(proc)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of this run's log, for error messages."""
        return log_tail(self.log_path, start=self._log_offset, lines=lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid} data={self.data_dir}>"

    # -- start ----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the server and return once its own client gets an answer; no-op when already running."""
        with self._lock:
            if self.running:
                return
            if self._proc is not None:  # died on its own since: reap it, then start afresh
                self._kill_now()
            started = time.monotonic()
            deadline = started + timeout
            self._reap_orphan()
            taken = [port for port in self.ports() if not port_is_free(port, self.host)]
            if taken:
                raise EmbeddedServerError(
                    f"{self.name}: port(s) {', '.join(map(str, taken))} on {self.host} already in use; "
                    "another server (or a previous run that was not stopped) is listening there"
                )
            self._begin_log()
            try:
                self.prepare(deadline)
            except EmbeddedServerError:
                raise
            except (OSError, subprocess.SubprocessError) as exc:
                raise EmbeddedServerError(
                    f"{self.name}: preparing {self.data_dir} failed: {exc}\n{self.log_tail()}"
                ) from exc
            self._spawn()
            try:
                self._wait_ready(deadline)
            except BaseException:
                self._kill_now()
                raise
            logger.info("%s ready on %s (pid %s) in %.2f s", self.name, self.url, self.pid, time.monotonic() - started)

    def _begin_log(self) -> None:
        """Mark where this run's part of the log starts, so errors quote only this run."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.name}: start\n".encode())

    def run_helper(self, cmd: list[str], deadline: float, **kwargs: Any) -> None:
        """Run a one-shot helper (initdb) with its output in the server log; raise with the log tail."""
        with self.log_path.open("ab") as log:
            log.write(f"--- running: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                    env=self.environment(),
                    **kwargs,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedServerError(
                    f"{self.name}: {Path(cmd[0]).name} timed out; log {self.log_path}:\n{self.log_tail()}"
                ) from exc
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"{self.name}: {Path(cmd[0]).name} failed with code {result.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _spawn(self) -> None:
        cmd = [*_sigint_default_prefix(), *self.command()]
        self._stop_sent = False
        with self.log_path.open("ab") as log:
            log.write(f"--- running: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=self.environment(),
                    **self.popen_kwargs(),
                )
            except OSError as exc:
                raise EmbeddedServerError(f"{self.name}: cannot run {cmd[0]}: {exc}") from exc
        with _live_lock:
            _live_servers.add(self)
        self._write_pid()
        logger.debug("%s started: pid %s, log %s", self.name, self._proc.pid, self.log_path)

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        delay = 0.02
        last_error: BaseException | None = None
        while True:
            if self._exited(proc):
                self._signal(proc.pid, signal.SIGKILL, whole_group=True, leader=False)
                code = proc.wait()
                raise EmbeddedServerError(
                    f"{self.name} exited with code {code} while starting; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                # A bare TCP connect first: cheap, and spares clients logging retries at a shut port.
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                self.check_ready()
            except Exception as exc:
                last_error = exc
            else:
                if not self._exited(proc):
                    return
                continue
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"{self.name} not ready on {self.url} in time (last probe: {last_error!r}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.25)

    # -- stop -----------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Send the clean-shutdown signal without waiting, so several servers can wind down together."""
        with self._lock:
            proc = self._proc
            if proc is not None and not self._stop_sent and not self._exited(proc):
                self._stop_sent = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, self.stop_signal)
                self.after_stop_signal()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: its stop signal, then SIGTERM, then SIGKILL to its whole process group.

        Idempotent; returns once the process is reaped.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            stages = (
                (self.stop_signal, timeout * 0.7, False),
                (signal.SIGTERM, timeout * 0.2, True),
                (signal.SIGKILL, max(timeout * 0.1, 2.0), True),
            )
            for index, (sig, wait, whole_group) in enumerate(stages):
                if self._exited(proc):
                    break
                if index > 0:
                    logger.warning("%s (pid %s) still running, sending %s", self.name, proc.pid, sig.name)
                # A second SIGINT would interrupt a Python server's own clean shutdown.
                if index > 0 or not self._stop_sent:
                    self._signal(proc.pid, sig, whole_group=whole_group)
                    if index == 0:
                        self.after_stop_signal()
                self._stop_sent = True
                self._wait_exit(proc, time.monotonic() + wait)
            # The leader is gone (or a zombie, so its pid cannot be reused yet): sweep any forked helpers.
            self._signal(proc.pid, signal.SIGKILL, whole_group=True, leader=False)
            try:
                code = proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                logger.error("%s (pid %s) did not exit even after SIGKILL", self.name, proc.pid)
                return
            self._proc = None
            with _live_lock:
                _live_servers.discard(self)
            with contextlib.suppress(OSError):
                self.pid_path.unlink()
            self.after_stop()
            logger.info("%s stopped (exit %s) in %.2f s", self.name, code, time.monotonic() - started)

    def _kill_now(self) -> None:
        """After a failed start: no grace, the data of a half-started server is not worth waiting for."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._signal(proc.pid, signal.SIGKILL, whole_group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
        self._proc = None
        with _live_lock:
            _live_servers.discard(self)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        self.after_stop()

    @staticmethod
    def _signal(pid: int, sig: signal.Signals, *, whole_group: bool, leader: bool = True) -> None:
        if leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if whole_group:
            # start_new_session=True made the child the leader of a process group with its own pid.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)

    @staticmethod
    def _exited(proc: subprocess.Popen[bytes]) -> bool:
        """Whether the process has exited, without reaping it (its pid stays reserved)."""
        if proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _wait_exit(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        while not self._exited(proc):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # -- a previous supervisor that died without stopping us -----------------------------------------------

    def _write_pid(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._proc.pid}\n")

    def _reap_orphan(self) -> None:
        """Stop a server left running on our data folder by a supervisor that was killed."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if not self.owns_process(cmdline):
            with contextlib.suppress(OSError):
                self.pid_path.unlink()
            return
        logger.warning("%s: stopping pid %s left over from a previous run on %s", self.name, pid, self.data_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def owns_process(self, cmdline: list[bytes]) -> bool:
        """Whether a process with this argv is a server of ours (on our data folder)."""
        marker = str(self.data_dir).encode()
        return any(arg == marker or arg.endswith(b"=" + marker) for arg in cmdline)

    # -- context manager ------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
