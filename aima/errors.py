"""Domain errors with stable codes.

Every error a user may see is an `AimaError`; its `code` reaches GraphQL clients as `extensions.code` and task
records as `error_code`. Anything else is a bug: it is logged and masked.
"""

from __future__ import annotations

from collections.abc import Iterable


class AimaError(Exception):
    """Base class of errors whose message is safe to show to the caller."""

    code = "AIMA_ERROR"
    #: Transient errors may succeed when retried (a model server that is down, a store hiccup).
    transient = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotAuthenticated(AimaError):
    code = "UNAUTHENTICATED"

    def __init__(self, message: str = "Authentication required: send 'Authorization: Bearer <token>'.") -> None:
        super().__init__(message)


class InvalidCredentials(AimaError):
    code = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("Invalid email or password.")


class Forbidden(AimaError):
    code = "FORBIDDEN"


class NotFound(AimaError):
    """Also the answer for objects the caller may not see, so ids cannot be probed."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident} not found.")
        self.kind = kind


class InvalidInput(AimaError):
    code = "BAD_USER_INPUT"


class Conflict(AimaError):
    code = "CONFLICT"


class UnknownAnalyzer(AimaError, KeyError):
    code = "UNKNOWN_ANALYZER"

    def __init__(self, name: str, available: Iterable[str]) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(f"Unknown analyzer {name!r}. Available analyzers: {names}.")
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


class AnalyzerNotApplicable(AimaError):
    code = "ANALYZER_NOT_APPLICABLE"


class EmptyUpload(AimaError):
    code = "EMPTY_FILE"

    def __init__(self) -> None:
        super().__init__("The uploaded file is empty.")


class UploadTooLarge(AimaError):
    code = "FILE_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The uploaded file exceeds the limit of {limit} bytes.")


class UnsupportedMedia(AimaError):
    code = "UNSUPPORTED_MEDIA"


class CorruptMedia(AimaError):
    code = "CORRUPT_MEDIA"


class RateLimited(AimaError):
    code = "RATE_LIMITED"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Too many failed sign-ins. Try again in {retry_after_s} s.")
        self.retry_after_s = retry_after_s


class BackendUnavailable(AimaError):
    code = "BACKEND_UNAVAILABLE"
    transient = True


class ModelUnavailable(AimaError):
    """A model endpoint that is down or busy (connection refused, HTTP 429 or 503): the task waits and is tried
    again later, shown as "waiting for model"."""

    code = "MODEL_UNAVAILABLE"
    transient = True
    #: How long the server asked to be left alone (``Retry-After``), when it said; the next run waits at least that.
    retry_after_s: float | None = None
