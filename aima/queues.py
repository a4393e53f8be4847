"""Where a task waits: one arq queue per resource, ordered by priority, then by age.

A task goes to the queue of what it runs on (`cpu`, or a model endpoint's name), so a worker only takes tasks it can
run (`aima worker --resources cpu,llava`). arq starts the queued job with the lowest score first and a job's score is
the time it may start, so a priority is a score moved back in time: every high-priority task sorts before every
normal one queued within the last `_PRIORITY_STEP`, and so on. PostgreSQL stays the state of record; a queue only
carries task ids.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aima.db.models import Priority
from aima.settings import Settings

#: How far back in time each priority step moves a task's score (arq's job expiry is set explicitly, see `enqueue`).
_PRIORITY_STEP = timedelta(hours=6)
_STEPS = {Priority.HIGH: 2, Priority.NORMAL: 1, Priority.LOW: 0}
#: How long a queued task's arq job lives; the reconciler re-enqueues from PostgreSQL anyway.
JOB_EXPIRY = timedelta(days=7)
CPU = "cpu"


def queue_name(settings: Settings, resource: str = CPU) -> str:
    """The queue of a resource. `worker.queue_name` names the CPU queue; others replace its last part."""
    base = settings.worker.queue_name
    if base.endswith(f":{CPU}"):
        base = base[: -len(CPU) - 1]
    return f"{base}:{resource}"


def start_score(priority: Priority | str, *, now: datetime | None = None, delay: timedelta | None = None) -> datetime:
    """The `_defer_until` of a task's arq job: moved back by its priority, or, for a retry after a transient error,
    `delay` from now (the retry waits its backoff; once due it queues behind the tasks already waiting)."""
    now = now or datetime.now(UTC)
    if delay:
        return now + delay
    return now - _PRIORITY_STEP * _STEPS[Priority(priority)]
