"""How errors reach clients: domain errors keep their message and get `extensions.code`; the rest are masked."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension

from aima.errors import AimaError, Forbidden, NotFound
from aima.metrics import GRAPHQL_ERRORS, GRAPHQL_OPERATIONS
from aima.services.audit import AuditAction

logger = logging.getLogger(__name__)

INTERNAL_ERROR_CODE = "INTERNAL_SERVER_ERROR"
INTERNAL_ERROR_MESSAGE = "Internal server error. The incident was logged."


def format_error(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if isinstance(original, AimaError):
        code, message = original.code, original.message
    elif original is None or isinstance(original, GraphQLError):
        # Parse and validation errors: the message explains the query's own mistake.
        code = "GRAPHQL_PARSE_FAILED" if error.message.startswith("Syntax Error") else "GRAPHQL_VALIDATION_FAILED"
        if error.extensions and "code" in error.extensions:
            code = str(error.extensions["code"])
        message = error.message
    else:
        logger.error(
            "unexpected error in %s: %r",
            ".".join(map(str, error.path or [])) or "operation",
            original,
            exc_info=original,
        )
        code, message = INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={**(error.extensions or {}), "code": code},
    )


_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def format_errors_in_place(errors: list[GraphQLError], *, suggestions: bool = True) -> None:
    """Format a result's errors in its own list, which every transport (HTTP, websocket) then sends.

    Without `suggestions`, "Did you mean ...?" hints, which reveal names of the schema, are cut from messages.
    """
    errors[:] = [format_error(error) for error in errors]
    if not suggestions:
        for error in errors:
            error.message = _SUGGESTION.sub("", error.message)
    for error in errors:
        GRAPHQL_ERRORS.labels(code=str((error.extensions or {}).get("code"))).inc()


#: Refusals of a signed-in user that go to the audit trail: someone reaching for what is not theirs.
AUDITED_REFUSALS = frozenset({Forbidden.code, NotFound.code})


def _code(error: GraphQLError) -> str | None:
    if isinstance(error.original_error, AimaError):
        return error.original_error.code
    code = (error.extensions or {}).get("code")
    return str(code) if code else None


class OperationMetrics(SchemaExtension):
    """Counts operations by type and outcome, audits refusals, and gives each operation fresh DataLoaders.

    Errors themselves are formatted in `AimaSchema.process_errors`, which sees those of every transport.
    """

    async def on_operation(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        reset = getattr(context, "reset_loaders", None)
        if callable(reset):
            reset()
        yield
        errors = getattr(self.execution_context.result, "errors", None) or []
        try:
            operation_type = self.execution_context.operation_type.value
        except RuntimeError:  # the document did not parse
            operation_type = "unknown"
        GRAPHQL_OPERATIONS.labels(operation_type=operation_type, outcome="error" if errors else "ok").inc()
        refusals = [
            {"path": ".".join(map(str, e.path or [])), "code": code, "message": e.message}
            for e in errors
            if (code := _code(e)) in AUDITED_REFUSALS
        ]
        if refusals and getattr(context, "actor", None) is not None:
            try:
                await context.audit(
                    AuditAction.ACCESS_DENIED,
                    details={"operation": self.execution_context.operation_name, "refusals": refusals[:20]},
                )
            except Exception:
                logger.exception("could not record refused access in the audit trail")
