"""Model endpoints: TGI's native API and OpenAI-compatible servers behind one small typed API.

A process builds its endpoints once from settings (``[inference.endpoints.<name>]``) and passes them on::

    endpoints = endpoints_for(settings)          # the worker, at startup; `await endpoints.aclose()` on shutdown
    answer = await endpoints.vision.generate_json(
        [Message.system(PROMPT + DATA_RULES), Message.user(ImagePart.from_path(frame.path), quoted("ocr", text))],
        Description,                             # a pydantic model, or a JSON schema
    )
    description = answer.value                   # a Description, validated (None for a JSON schema: see .parsed)

Failures a caller sees: `ModelUnavailable` (transient: the task waits for the model; raised as
`EndpointUnavailable`, with the wait the server asked for), `ModelError` and
`PromptTooLong` (permanent), `InvalidModelOutput` (JSON that does not fit: one repair attempt is the caller's).
"""

from aima.errors import ModelUnavailable
from aima.inference.endpoint import Endpoint, Schema
from aima.inference.errors import (
    EndpointConfigError,
    EndpointUnavailable,
    InvalidModelOutput,
    ModelError,
    PromptTooLong,
    UnknownEndpoint,
)
from aima.inference.messages import EndpointInfo, GenerationResult, ImagePart, Message, Part
from aima.inference.prompts import DATA_RULES, PromptFormat, format_for_model, quoted, render_prompt
from aima.inference.registry import Endpoints, endpoints_for

__all__ = [
    "DATA_RULES",
    "Endpoint",
    "EndpointConfigError",
    "EndpointInfo",
    "EndpointUnavailable",
    "Endpoints",
    "GenerationResult",
    "ImagePart",
    "InvalidModelOutput",
    "Message",
    "ModelError",
    "ModelUnavailable",
    "Part",
    "PromptFormat",
    "PromptTooLong",
    "Schema",
    "UnknownEndpoint",
    "endpoints_for",
    "format_for_model",
    "quoted",
    "render_prompt",
]
