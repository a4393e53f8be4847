"""What callers hand to an endpoint and get back, the same for every protocol."""

from __future__ import annotations

import base64
import functools
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

Role = Literal["system", "user", "assistant"]
_ROLES = ("system", "user", "assistant")
#: What `GenerationResult.value` holds: the pydantic model a JSON answer was validated as, or None.
ValueT = TypeVar("ValueT", covariant=True)


@dataclass(frozen=True)
class ImagePart:
    """An image inside a user message, sent inline (as a data URI): model servers need no access to AIMA's store."""

    data: bytes
    mime: str = "image/jpeg"

    def __post_init__(self) -> None:
        if not self.mime.startswith("image/"):
            raise ValueError(f"an image part needs an image/* type, not {self.mime!r}")
        if not self.data:
            raise ValueError("an image part needs image data")

    @classmethod
    def from_path(cls, path: Path, mime: str | None = None) -> ImagePart:
        """Read an image file (a keyframe's JPEG); the type comes from the suffix unless given."""
        guessed = mime or mimetypes.guess_type(path.name)[0] or "image/jpeg"
        return cls(path.read_bytes(), guessed)

    def data_uri(self) -> str:
        """The image as a data URI, encoded once per part: a repair request or a second protocol reuses it."""
        return self._data_uri

    @functools.cached_property
    def _data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def __repr__(self) -> str:  # never dump megabytes into logs and tracebacks
        return f"ImagePart({self.mime}, {len(self.data)} bytes)"


#: One piece of a message: text, or an image.
Part = str | ImagePart


@dataclass(frozen=True)
class Message:
    """One turn of a conversation. Images belong to user turns; the parts keep their order in the prompt."""

    role: Role
    parts: tuple[Part, ...]

    def __init__(self, role: Role, parts: Sequence[Part] | str) -> None:
        if role not in _ROLES:
            raise ValueError(f"role must be one of {', '.join(_ROLES)}, not {role!r}")
        items = (parts,) if isinstance(parts, str) else tuple(parts)
        for part in items:
            if not isinstance(part, str | ImagePart):
                raise TypeError(f"a message part is text or an ImagePart, not {type(part).__name__}")
            if isinstance(part, ImagePart) and role != "user":
                raise ValueError("images belong to user messages")
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "parts", items)

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", (text,))

    @classmethod
    def user(cls, *parts: Part) -> Message:
        return cls("user", parts)

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls("assistant", (text,))

    @property
    def text(self) -> str:
        """The text parts joined (images left out)."""
        return "".join(part for part in self.parts if isinstance(part, str))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for part in self.parts if isinstance(part, ImagePart))


@dataclass(frozen=True)
class GenerationResult(Generic[ValueT]):
    """A model's answer with what it cost. Token counts are None where the server does not report them."""

    text: str
    #: The answer as JSON (`Endpoint.generate_json`), validated against the schema; None for free text.
    parsed: dict[str, Any] | None
    #: The answer as the pydantic model `generate_json` was given, validated; None for free text and a JSON schema.
    value: ValueT
    prompt_tokens: int | None
    completion_tokens: int | None
    #: Seconds the whole call took: waiting for a slot, every try and the waits between them.
    latency_s: float
    endpoint: str
    model: str
    #: Why generation stopped as the server says it ("stop", "eos_token", "length", ...), when it says.
    finish_reason: str | None = None
    #: Requests sent for this answer (1 unless a busy or unreachable server was retried).
    attempts: int = 1


@dataclass(frozen=True)
class EndpointInfo:
    """What an endpoint serves, as configured and as its server reports (`Endpoint.info`)."""

    name: str
    protocol: str
    #: The URL without credentials, query or fragment.
    url: str
    model: str
    max_concurrency: int
    #: The prompt budget: configured, else the server's (TGI ``max_input_tokens``, vLLM ``max_model_len``).
    max_input_tokens: int | None
    max_total_tokens: int | None
    server_version: str | None
    #: The server's own answer, for diagnostics.
    raw: Mapping[str, Any] = field(default_factory=dict)
