"""Reading order: detected lines grouped into rows (a caption split into two boxes is one row), top to bottom."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Boxed(Protocol):
    @property
    def box(self) -> Sequence[tuple[float, float]]: ...


B = TypeVar("B", bound=Boxed)


def _vertical(item: Boxed) -> tuple[float, float]:
    ys = [y for _, y in item.box]
    return min(ys), max(ys)


def _left(item: Boxed) -> float:
    return min(x for x, _ in item.box)


def _same_row(a: Boxed, b: Boxed) -> bool:
    """Whether the vertical centre of each box lies within the other's height."""
    a_top, a_bottom = _vertical(a)
    b_top, b_bottom = _vertical(b)
    a_mid, b_mid = (a_top + a_bottom) / 2, (b_top + b_bottom) / 2
    return a_top <= b_mid <= a_bottom and b_top <= a_mid <= b_bottom


def reading_rows(items: Sequence[B]) -> list[list[B]]:
    """The items grouped into rows, top to bottom, each row left to right."""
    grouped: list[list[B]] = []
    for item in sorted(items, key=lambda i: _vertical(i)[0]):
        row = next((r for r in grouped if any(_same_row(item, other) for other in r)), None)
        if row is None:
            grouped.append([item])
        else:
            row.append(item)
    return [sorted(row, key=_left) for row in grouped]
