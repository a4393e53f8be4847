"""Talking to the model: one request for a case that fits the prompt budget, map-reduce for one that does not.

Map: each part of the catalogue (`aima_fusion.parts`) becomes a partial dossier, all parts at once (the endpoint
bounds how many run together). Reduce: the partial dossiers, checked, are combined, in as few requests as fit, until
one is left. Every answer that is not valid JSON of the schema gets one repair request; a second failure is the task's
error. A server that refuses a prompt as too long makes the whole fusion start again with a smaller budget. The first
request of a step to fail cancels the step's others, and its error is the fusion's (not an ExceptionGroup).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aima.analysis import ProgressCallback
from aima.concurrency import task_group
from aima.inference import Endpoint, InvalidModelOutput, Message, PromptTooLong
from aima_fusion.assemble import Checked, Checker
from aima_fusion.catalogue import Catalogue, Entry
from aima_fusion.errors import ContextTooSmall
from aima_fusion.parts import split
from aima_fusion.persons import Person
from aima_fusion.prompts import Part, Prompts, repair, shorten
from aima_fusion.schema import ModelDossier, ModelIndicator
from aima_fusion.tokens import TokenCounter, prompt_tokens

logger = logging.getLogger(__name__)

#: Tries of the whole fusion when the server finds a prompt too long (each with 60 % of the previous budget).
SHRINK_TRIES = 3
SHRINK = 0.6
#: Characters per spare token of the repair prompt that the failed answer may fill (a safe low figure for JSON).
REPAIR_CHARS_PER_TOKEN = 2.5


@dataclass
class Outcome:
    """The checked final answer and how it came about."""

    answer: ModelDossier
    rejected: list[str]
    strategy: str
    model: str
    #: The parts' sensitive assessments (map-reduce), for a required label the final answer left out.
    fallback: list[ModelIndicator] = field(default_factory=list)
    requests: int = 0


@dataclass
class Fusion:
    endpoint: Endpoint
    prompts: Prompts
    catalogue: Catalogue
    persons: Sequence[Person]
    counter: TokenCounter
    budget: int
    answer_tokens: int
    temperature: float
    progress: ProgressCallback
    _checker: Checker = field(init=False)
    _model: str = field(init=False, default="")
    _requests: int = field(init=False, default=0)
    #: The largest prompt sent (estimated tokens), which a server that refuses one as too long may have refused.
    _largest: int = field(init=False, default=0)
    _reported: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._checker = Checker(self.catalogue, self.persons)

    async def run(self) -> Outcome:
        budget = self.budget
        refused: PromptTooLong | None = None
        for attempt in range(1, SHRINK_TRIES + 1):
            try:
                return await self._run(budget)
            except ContextTooSmall:
                if refused is None:
                    raise
                raise refused from None  # the server's own words say more than the budget we shrank to
            except PromptTooLong as exc:
                if attempt == SHRINK_TRIES:
                    raise
                refused = exc
                smaller = int(min(budget, self._largest) * SHRINK)
                logger.warning(
                    "%s refused a fusion prompt as too long (%s); fusing again within %d tokens instead of %d",
                    self.endpoint.name,
                    exc.message,
                    smaller,
                    budget,
                )
                budget = smaller
                self._largest = 0
        raise AssertionError("unreachable: the last try returns or raises")

    async def _run(self, budget: int) -> Outcome:
        entries = list(self.catalogue.entries.values())
        messages = self.prompts.fuse(entries)
        size = self._size(messages)
        if size <= budget:
            self._report(0.05, f"fusing {len(entries)} evidence items in one request")
            answer = await self._ask(messages, size, "the case", budget)
            checked = self._checker.check(answer, set(self.catalogue.entries), "answer")
            return Outcome(checked.answer, checked.rejected, "single", self._model, requests=self._requests)

        parts = await asyncio.to_thread(split, self.catalogue, self.persons, self.counter, self._measure_part, budget)
        self._report(0.05, f"fusing {len(entries)} evidence items in {len(parts)} parts")
        steps = len(parts) + 1
        done = 0

        async def fuse_part(index: int, part: list[Entry]) -> Checked:
            nonlocal done
            what = f"part {index} of {len(parts)}"
            messages = self.prompts.fuse(part, Part(index, len(parts)))
            answer = await self._ask(messages, self._size(messages), what, budget)
            done += 1
            self._report(0.05 + 0.9 * done / steps, f"fused {done} of {len(parts)} parts")
            return self._checker.check(answer, {e.id for e in part}, what)

        # A failing part cancels the others and its own error escapes (not an ExceptionGroup): `run` must see a
        # PromptTooLong to shrink, the worker a ModelUnavailable to wait for the model.
        async with task_group() as group:
            tasks = [group.create_task(fuse_part(i, part)) for i, part in enumerate(parts, start=1)]
        partials = [task.result().answer for task in tasks]
        rejected = [line for task in tasks for line in task.result().rejected]  # in the parts' order
        fallback = [indicator for partial in partials for indicator in partial.sensitive]
        final = await self._reduce(partials, budget, rejected)
        return Outcome(final, rejected, "map-reduce", self._model, fallback, self._requests)

    async def _reduce(self, partials: list[ModelDossier], budget: int, rejected: list[str]) -> ModelDossier:
        """Combine the partial dossiers, in rounds of as many as fit one prompt, until one is left."""
        round_number = 0
        while len(partials) > 1:
            round_number += 1
            groups = self._groups(partials, budget)
            if all(len(g) == 1 for g in groups):
                raise ContextTooSmall(
                    f"The fusion's prompt budget ({budget} tokens) cannot hold two partial dossiers to combine; "
                    "raise the endpoint's max_input_tokens."
                )
            self._report(0.95, f"combining {len(partials)} partial dossiers")
            firsts = list(itertools.accumulate((len(g) for g in groups[:-1]), initial=1))
            async with task_group() as tasks:
                jobs = [
                    tasks.create_task(self._combine(g, first, len(partials), round_number, budget))
                    for first, g in zip(firsts, groups, strict=True)
                ]
            partials = [job.result().answer for job in jobs]
            rejected.extend(line for job in jobs for line in job.result().rejected)
            logger.info("fusion reduce round %d left %d partial dossiers", round_number, len(partials))
        return partials[0]

    async def _combine(
        self, group: list[ModelDossier], first: int, total: int, round_number: int, budget: int
    ) -> Checked:
        """One reduce request for `group`, partial dossiers `first`.. of `total` (one alone passes through)."""
        if len(group) == 1:
            return Checked(group[0])
        last = first + len(group) - 1
        what = f"the combination of partial dossiers {first}-{last} of {total} (round {round_number})"
        messages = self.prompts.reduce(group, first, total)
        answer = await self._ask(messages, self._size(messages), what, budget)
        return self._checker.check(answer, set().union(*(p.cited() for p in group)), what)

    def _groups(self, partials: list[ModelDossier], budget: int) -> list[list[ModelDossier]]:
        """Consecutive partial dossiers, as many per group as one reduce prompt holds."""
        groups: list[list[ModelDossier]] = []
        for partial in partials:
            if groups and self._size(self.prompts.reduce([*groups[-1], partial], 1, len(partials))) <= budget:
                groups[-1].append(partial)
            else:
                groups.append([partial])
        return groups

    async def _ask(self, messages: list[Message], size: int, what: str, budget: int) -> ModelDossier:
        """One answer to `messages` (`size` tokens), with one repair request when it is not valid JSON of the
        schema."""
        try:
            return await self._generate(messages, size)
        except InvalidModelOutput as exc:
            logger.warning("%s answered invalid JSON for %s; asking once to repair it", self.endpoint.name, what)
            cut = exc.result.finish_reason == "length"
            # The repair prompt is `messages` and one message more: only that one is counted.
            prompt = repair(messages, exc.problem, None, cut)
            added = self._size(prompt[-1:])
            room = budget - (size + added) - 64
            previous = shorten(exc.text, max(0, int(room * REPAIR_CHARS_PER_TOKEN)))
            if previous:
                prompt = repair(messages, exc.problem, previous, cut)
                added = self._size(prompt[-1:])
            try:
                return await self._generate(prompt, size + added)
            except InvalidModelOutput as again:
                raise InvalidModelOutput(
                    f"The fusion model at endpoint {self.endpoint.name!r} answered invalid JSON for {what} twice "
                    f"(the second time after a repair request): {again.problem}",
                    problem=again.problem,
                    result=again.result,
                ) from None

    async def _generate(self, messages: list[Message], size: int) -> ModelDossier:
        """The answer to `messages`, a prompt of `size` tokens (as `_size` counts them)."""
        self._requests += 1
        self._largest = max(self._largest, size)
        result = await self.endpoint.generate_json(
            messages, ModelDossier, max_new_tokens=self.answer_tokens, temperature=self.temperature
        )
        self._model = result.model or self._model
        return result.value

    def _measure_part(self, entries: Sequence[Entry]) -> int:
        return self._size(self.prompts.fuse(entries, Part(999, 999)))

    def _size(self, messages: Sequence[Message]) -> int:
        return prompt_tokens(self.counter, messages)

    def _report(self, fraction: float, message: str) -> None:
        self._reported = max(self._reported, fraction)  # never back, whatever order the parts finish in
        self.progress(self._reported, message)
