"""Errors of the fusion a user sees (task records show the code and the message)."""

from __future__ import annotations

from aima.errors import AimaError


class FusionError(AimaError):
    code = "FUSION_FAILED"


class NoEndpoint(FusionError):
    """The worker has no model endpoints, or none of the configured name."""

    code = "FUSION_NO_ENDPOINT"


class ContextTooSmall(FusionError):
    """The prompt budget cannot hold the fixed part of a prompt and one evidence item: no split helps."""

    code = "FUSION_CONTEXT_TOO_SMALL"
