"""Tasks run together that fail the way one task would: with its error, not an `ExceptionGroup`.

`asyncio.TaskGroup` wraps a task's failure in an `ExceptionGroup`, which is no `AimaError`: the worker would record a
transient `ModelUnavailable` as a crash, and an ``except PromptTooLong`` around the group would never match. Plugins
that fan work out (map-reduce fusion, keyframes described in parallel) use `task_group` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["first_error", "task_group"]


def first_error(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of `errors` that is neither a group (nested groups are searched) nor a cancellation: the
    failure that stopped the group; the others were cancelled because of it or failed beside it."""
    leaves = _leaves(errors)
    return next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0])


def _leaves(errors: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in errors.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An `asyncio.TaskGroup` that, when a task fails, cancels the others as usual and raises `first_error`.

    The error keeps its own cause (``raise ... from``) and traceback; the group is dropped as noise."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as errors:
        failure = first_error(errors)
        raise failure from failure.__cause__
