"""`aima.concurrency.task_group`: tasks run together fail with the failing task's own error, not a group."""

from __future__ import annotations

import asyncio

import pytest

from aima.concurrency import first_error, task_group
from aima.errors import AimaError


class Busy(AimaError):
    code = "TEST_BUSY"


async def test_a_failing_task_raises_its_own_error_and_the_others_are_cancelled() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise Busy("the endpoint is busy")

    with pytest.raises(Busy, match="the endpoint is busy"):
        async with task_group() as group:
            group.create_task(slow())
            group.create_task(failing())
    assert cancelled.is_set()


async def test_the_error_keeps_its_cause() -> None:
    async def failing() -> None:
        try:
            raise OSError("unreadable")
        except OSError as exc:
            raise ValueError("not a picture") from exc

    with pytest.raises(ValueError) as raised:
        async with task_group() as group:
            group.create_task(failing())
    assert isinstance(raised.value.__cause__, OSError)


async def test_an_error_in_the_body_is_raised_as_itself() -> None:
    with pytest.raises(KeyError):
        async with task_group() as group:
            group.create_task(asyncio.sleep(10))
            raise KeyError("body")


async def test_results_come_back_when_nothing_fails() -> None:
    async with task_group() as group:
        tasks = [group.create_task(asyncio.sleep(0, result=n)) for n in range(3)]
    assert [t.result() for t in tasks] == [0, 1, 2]


def test_first_error_searches_nested_groups_and_skips_cancellations() -> None:
    inner = ExceptionGroup("inner", [RuntimeError("first real one"), ValueError("second")])
    errors = BaseExceptionGroup("outer", [asyncio.CancelledError(), inner])
    found = first_error(errors)
    assert isinstance(found, RuntimeError) and str(found) == "first real one"
    only_cancelled = BaseExceptionGroup("outer", [asyncio.CancelledError()])
    assert isinstance(first_error(only_cancelled), asyncio.CancelledError)
