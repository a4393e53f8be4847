"""Errors of model endpoints a caller tells apart.

A server that is down, busy or cut a stream is `aima.errors.ModelUnavailable` (transient: the task waits and runs
again later); the rest are permanent for this input.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aima.errors import AimaError, ModelUnavailable

if TYPE_CHECKING:
    from aima.inference.messages import GenerationResult


class ModelError(AimaError):
    """The server refused the request (HTTP 4xx other than 408 and 429): asking again will not help."""

    code = "MODEL_ERROR"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EndpointUnavailable(ModelUnavailable):
    """`ModelUnavailable` from a model endpoint. `retry_after_s`: the wait the server asked for (``Retry-After``),
    None when it named none; a wait beyond the endpoint's ``retry_cap_s`` ends the call's tries at once, and is
    for the task's next run to honour."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTooLong(ModelError):
    """The prompt and the tokens asked for exceed the model's context: shorten the input and ask again."""

    code = "PROMPT_TOO_LONG"


class InvalidModelOutput(AimaError):
    """The answer is not the JSON the schema asks for. `result` holds the raw answer and `problem` what is wrong,
    for the caller's one repair attempt (send both back to the model and ask for a corrected answer)."""

    code = "INVALID_MODEL_OUTPUT"

    def __init__(self, message: str, *, problem: str, result: GenerationResult[None]) -> None:
        super().__init__(message)
        self.problem = problem
        self.result = result

    @property
    def text(self) -> str:
        return self.result.text


class UnknownEndpoint(AimaError, KeyError):
    code = "UNKNOWN_ENDPOINT"

    def __init__(self, name: str, available: Iterable[str], hint: str = "") -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(f"Unknown model endpoint {name!r}{hint}. Configured endpoints: {names}.")
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


class EndpointConfigError(ValueError):
    """An endpoint's settings cannot work (found when the endpoints are built, before any request)."""
