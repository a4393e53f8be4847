"""Splitting a case's catalogue into parts that each fit one prompt: by media item, then by time.

Whole media items go together while they fit; an item too large for a prompt of its own is cut into consecutive
stretches of time. Costs are estimated per entry (its row, plus the persons it adds to the prompt), then every part is
measured as the prompt it becomes and halved while it is still too large, so an estimate that errs cannot overflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from aima_fusion.catalogue import Catalogue, Entry
from aima_fusion.errors import ContextTooSmall
from aima_fusion.persons import Person
from aima_fusion.tokens import TokenCounter

#: Tokens an evidence id adds to a person's row in the prompt.
_ID_TOKENS = 4
#: Tokens of an empty evidence block of one media item (its data-block lines and column names).
_BLOCK_TOKENS = 60


def split(
    catalogue: Catalogue,
    persons: Sequence[Person],
    counter: TokenCounter,
    measure: Callable[[Sequence[Entry]], int],
    budget: int,
) -> list[list[Entry]]:
    """Parts of the catalogue whose prompts (`measure`) each fit `budget` tokens."""
    fixed = measure([])
    capacity = budget - fixed
    touching: dict[str, list[Person]] = {}
    for person in persons:
        for entry_id in {e.id for e in person.members} | {s.speech.id for s in person.statements}:
            touching.setdefault(entry_id, []).append(person)
    person_cost = {p.id: counter.count(json.dumps(p.prompt_row(1, set()))) for p in persons}

    parts: list[list[Entry]] = []
    current: list[Entry] = []
    used = 0
    seen: set[str] = set()

    def cost(entry: Entry, row: int, media_new: bool) -> int:
        """The entry's tokens in the prompt, its `row` (tokens, counted once) and what it adds besides."""
        extra = _BLOCK_TOKENS if media_new else 0
        for person in touching.get(entry.id, ()):
            extra += _ID_TOKENS + (person_cost[person.id] if person.id not in seen else 0)
        return row + 1 + extra

    def close() -> None:
        nonlocal current, used
        if current:
            parts.append(current)
        current, used = [], 0
        seen.clear()

    for group in catalogue.by_media().values():
        rows = [counter.count(json.dumps(e.row(), ensure_ascii=False)) for e in group]
        group_cost = sum(cost(e, row, i == 0) for i, (e, row) in enumerate(zip(group, rows, strict=True)))
        if current and used + group_cost > capacity:
            close()
        for index, (entry, row) in enumerate(zip(group, rows, strict=True)):
            needed = cost(entry, row, index == 0 or not current)
            if current and used + needed > capacity:
                close()
                needed = cost(entry, row, True)
            if needed > capacity:
                raise ContextTooSmall(
                    f"The fusion's prompt budget ({budget} tokens) cannot hold the fixed part of a prompt ({fixed} "
                    f"tokens) and evidence item {entry.id} ({needed} tokens); raise the endpoint's max_input_tokens."
                )
            current.append(entry)
            used += needed
            seen.update(p.id for p in touching.get(entry.id, ()))
    close()
    return [fitted for part in parts for fitted in _fit(part, measure, budget)]


def _fit(part: list[Entry], measure: Callable[[Sequence[Entry]], int], budget: int) -> list[list[Entry]]:
    """`part` as it is when its prompt fits, else its halves, fitted in turn."""
    size = measure(part)
    if size <= budget:
        return [part]
    if len(part) == 1:
        raise ContextTooSmall(
            f"The fusion's prompt budget ({budget} tokens) cannot hold a prompt with evidence item {part[0].id} alone "
            f"({size} tokens); raise the endpoint's max_input_tokens."
        )
    middle = len(part) // 2
    return _fit(part[:middle], measure, budget) + _fit(part[middle:], measure, budget)
