"""Structured logging: one JSON object per line, carrying the request, job and task ids of the current context.

Modules log through `logging.getLogger(__name__)`; only the process edge (the CLI) calls `configure_logging`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("aima_request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("aima_job_id", default=None)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("aima_task_id", default=None)

_CONTEXT_VARS = {"request_id": request_id_var, "job_id": job_id_var, "task_id": task_id_var}


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Bind ids (request_id, job_id, task_id) to every log record written inside the block."""
    tokens = [(_CONTEXT_VARS[name], _CONTEXT_VARS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT_VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and value is not None and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{name}={getattr(record, name)}" for name in _CONTEXT_VARS if getattr(record, name, None))
        base = super().format(record)
        return f"{base} [{ids}]" if ids else base


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.getLogger().handlers[:] = [handler]
    set_log_level(level)


#: Libraries too chatty below WARNING.
_NOISY_LOGGERS = ("botocore", "aiobotocore", "pymongo", "asyncio", "aioboto3")


def set_log_level(level: str) -> None:
    """The process's log level (also changed at runtime); chatty libraries stay at WARNING or above."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
