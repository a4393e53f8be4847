"""The two wire protocols: what to send and how to read the answers, without any transport.

TGI native (``POST /generate``, ``/generate_stream``): one prompt string in the model's chat template, images inline as
markdown, ``parameters.grammar = {"type": "json", "value": schema}``; tokens read from ``x-prompt-tokens`` and
``details``. OpenAI chat completions (vLLM, SGLang, TGI's Messages API): messages with ``image_url`` parts,
``response_format`` of type ``json_schema``, ``usage`` (streamed when ``stream_options.include_usage`` is set).

TGI's native API is spoken here rather than through its `text-generation` client (0.7.0), which cannot serve a
worker well: it pins ``huggingface-hub<1.0`` while AIMA's plugins need 2.x (it installs only with ``--no-deps``,
leaving a requirement ``pip check`` reports broken, and its imports of ``requests`` and ``huggingface_hub`` then go
undeclared); it opens a new aiohttp session, so a new connection, for every request; it has one total timeout, so a
stalled server cannot be told from a long generation; its errors drop the HTTP status (503 and 500 both become
``UnknownError``) and fail on non-JSON error bodies from proxies; it cannot read TGI's ``x-prompt-tokens``; its chat
API has no image parts. The wire format is the same: the test model server is checked against that client where it
is installed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from aima.inference.messages import ImagePart, Message
from aima.inference.prompts import PromptFormat, render_prompt, stop_sequences
from aima.inference.transport import dumps, loads

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(frozen=True)
class WireRequest:
    path: str
    body: dict[str, Any]
    stream: bool

    @functools.cached_property
    def data(self) -> bytes:
        """The body as JSON, written once however often the request is tried."""
        return dumps(self.body)


@dataclass(frozen=True)
class Completion:
    """A finished answer as the server reported it."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    model: str | None = None


@dataclass(frozen=True)
class StreamError:
    """An error the server reported with HTTP 200: an event inside a stream (TGI and vLLM send these), or the whole
    body of an answer (TGI under load, proxies in front of OpenAI-compatible servers)."""

    message: str
    #: The error's type: TGI's "overloaded", "validation", "generation", "incomplete_generation", ...; OpenAI's
    #: "InternalServerError", "rate_limit_error", ...
    kind: str
    #: The HTTP status the error stands for, when the server names one (OpenAI's ``code``, a ``status``).
    code: int | None = None


def error_in(payload: Any) -> StreamError | None:
    """The error a JSON answer or event reports instead of an answer, in any of the shapes servers use: TGI's
    ``{"error": "...", "error_type": "..."}``, OpenAI's ``{"error": {"message", "type", "code"}}`` and vLLM's
    older top-level ``{"object": "error", "message", "type", "code"}``; None when it reports none."""
    if not isinstance(payload, dict):
        return None
    if "error" in payload and payload["error"] is not None:
        error = payload["error"]
        if isinstance(error, dict):
            code = _status(error.get("code", error.get("status")))
            return StreamError(_text(error.get("message", error)), _text(error.get("type") or ""), code)
        kind = payload.get("error_type") or payload.get("type") or ""
        return StreamError(_text(error), _text(kind), _status(payload.get("code", payload.get("status"))))
    if payload.get("object") == "error" or (
        "choices" not in payload and "message" in payload and ("type" in payload or "code" in payload)
    ):
        code = _status(payload.get("code", payload.get("status")))
        return StreamError(_text(payload.get("message", "")), _text(payload.get("type") or ""), code)
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _status(value: Any) -> int | None:
    """An HTTP status from an error's code (OpenAI's may also be a name, such as "rate_limit_exceeded")."""
    status = _int(value)
    return status if status is not None and 100 <= status <= 599 else None


def _shape_checked(read: Callable[_P, _T]) -> Callable[_P, _T]:
    """`ValueError` for an answer of the wrong shape (a string where an object belongs, a list too short), as for
    any other answer that is not one, rather than whatever its reading tripped over."""

    @functools.wraps(read)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return read(*args, **kwargs)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise ValueError(f"an answer of an unexpected shape ({type(exc).__name__}: {exc})"[:200]) from None

    return checked


#: What one streamed event says, in order: pieces of text, the end (a `Completion`), an error; often nothing.
Event = str | Completion | StreamError


class Wire:
    """The request and answer formats of one protocol."""

    protocol: str
    health_path: str
    info_path: str

    def request(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None,
        max_new_tokens: int,
        temperature: float,
        stream: bool,
    ) -> WireRequest:
        raise NotImplementedError

    def answer(self, payload: Any, headers: Mapping[str, str]) -> Completion:
        """Read a complete (not streamed) answer; raise `ValueError` when it is not one."""
        raise NotImplementedError

    def stream_reader(self) -> StreamReader:
        raise NotImplementedError

    def info(self, payload: Any) -> tuple[int | None, int | None, str | None, str | None]:
        """(max input tokens, max total tokens, served model, server version) from the info answer."""
        raise NotImplementedError


class StreamReader:
    """Reads the events of one stream, keeping what it needs to build the final `Completion`."""

    def events(self, data: bytes) -> list[Event]:
        """What the data of one server-sent event says; `ValueError` when it is not readable."""
        raise NotImplementedError

    def end(self) -> Completion | None:
        """The answer when the stream ended without its closing event but was complete; None: it was cut."""
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _reason(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class TgiWire(Wire):
    protocol = "tgi"
    health_path = "/health"
    info_path = "/info"

    def __init__(self, prompt_format: PromptFormat) -> None:
        self.prompt_format = prompt_format

    def request(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None,
        max_new_tokens: int,
        temperature: float,
        stream: bool,
    ) -> WireRequest:
        parameters: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "details": True,
            "return_full_text": False,
            "stop": stop_sequences(self.prompt_format),
        }
        if temperature > 0:  # TGI refuses a temperature of 0; greedy decoding is do_sample false
            parameters.update(do_sample=True, temperature=temperature)
        else:
            parameters["do_sample"] = False
        if schema is not None:
            parameters["grammar"] = {"type": "json", "value": dict(schema)}
        body = {"inputs": render_prompt(messages, self.prompt_format), "parameters": parameters}
        return WireRequest("/generate_stream" if stream else "/generate", body, stream)

    @_shape_checked
    def answer(self, payload: Any, headers: Mapping[str, str]) -> Completion:
        if isinstance(payload, list) and payload:  # the root route answers a list of one
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise ValueError("no generated_text in the answer")
        details = payload.get("details") or {}
        return Completion(
            text=self._strip_stop(payload["generated_text"]),
            prompt_tokens=_int(headers.get("x-prompt-tokens")),
            completion_tokens=_int(details.get("generated_tokens") or headers.get("x-generated-tokens")),
            finish_reason=_reason(details.get("finish_reason")),
        )

    def stream_reader(self) -> StreamReader:
        return _TgiStream(self)

    def info(self, payload: Any) -> tuple[int | None, int | None, str | None, str | None]:
        if not isinstance(payload, dict):
            raise ValueError("the info answer is not an object")
        max_input = _int(payload.get("max_input_tokens", payload.get("max_input_length")))
        return max_input, _int(payload.get("max_total_tokens")), payload.get("model_id"), payload.get("version")

    def _strip_stop(self, text: str) -> str:
        for stop in stop_sequences(self.prompt_format):
            if text.endswith(stop):
                return text[: -len(stop)]
        return text


class _TgiStream(StreamReader):
    """Token events; the last one also carries ``generated_text`` and ``details`` (with ``input_length``)."""

    def __init__(self, wire: TgiWire) -> None:
        self._wire = wire

    @_shape_checked
    def events(self, data: bytes) -> list[Event]:
        payload = loads(data)
        if not isinstance(payload, dict):
            raise ValueError("a stream event is not an object")
        error = error_in(payload)
        if error is not None:
            return [error]
        out: list[Event] = []
        token = payload.get("token") or {}
        text = token.get("text")
        if isinstance(text, str) and text and not token.get("special"):
            out.append(text)
        generated = payload.get("generated_text")
        if generated is not None:
            details = payload.get("details") or {}
            out.append(
                Completion(
                    text=self._wire._strip_stop(generated),
                    prompt_tokens=_int(details.get("input_length")),
                    completion_tokens=_int(details.get("generated_tokens")),
                    finish_reason=_reason(details.get("finish_reason")),
                )
            )
        return out


_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def _schema_name(schema: Mapping[str, Any]) -> str:
    name = _SCHEMA_NAME.sub("_", str(schema.get("title") or "result")).strip("_")
    return (name or "result")[:64]


class OpenAIWire(Wire):
    protocol = "openai"
    health_path = "/v1/models"
    info_path = "/v1/models"

    def __init__(self, model: str) -> None:
        self.model = model

    def request(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None,
        max_new_tokens: int,
        temperature: float,
        stream: bool,
    ) -> WireRequest:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [self._message(m) for m in messages],
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": dict(schema), "strict": True},
            }
        return WireRequest("/v1/chat/completions", body, stream)

    @staticmethod
    def _message(message: Message) -> dict[str, Any]:
        if not message.images:  # plain strings: every server takes them, some only them for system turns
            return {"role": message.role, "content": message.text}
        content = [
            {"type": "image_url", "image_url": {"url": part.data_uri()}}
            if isinstance(part, ImagePart)
            else {"type": "text", "text": part}
            for part in message.parts
        ]
        return {"role": message.role, "content": content}

    @_shape_checked
    def answer(self, payload: Any, headers: Mapping[str, str]) -> Completion:
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError("no choices[0].message.content in the answer") from None
        if not isinstance(text, str):
            raise ValueError("the answer's content is not text")
        usage = payload.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            finish_reason=_reason(choice.get("finish_reason")),
            model=_reason(payload.get("model")),
        )

    def stream_reader(self) -> StreamReader:
        return _OpenAIStream()

    def info(self, payload: Any) -> tuple[int | None, int | None, str | None, str | None]:
        models = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise ValueError("the models answer has no data list")
        card = next((m for m in models if isinstance(m, dict) and m.get("id") == self.model), None)
        if card is None:
            return None, None, None, None
        context = _int(card.get("max_model_len"))
        return context, context, card.get("id"), None


class _OpenAIStream(StreamReader):
    """Chunks until ``data: [DONE]``; usage arrives in a last chunk without choices (``include_usage``)."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}
        self._model: str | None = None

    @_shape_checked
    def events(self, data: bytes) -> list[Event]:
        if data.strip() == b"[DONE]":
            if self._finish is None:
                raise ValueError("the stream ended without a finish reason")
            return [self._completion()]
        payload = loads(data)
        if not isinstance(payload, dict):
            raise ValueError("a stream event is not an object")
        error = error_in(payload)
        if error is not None:
            return [error]
        self._model = _reason(payload.get("model")) or self._model
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        choices = payload.get("choices") or []
        if not choices:
            return []
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish = _reason(choice["finish_reason"]) or "unknown"
        piece = (choice.get("delta") or {}).get("content")
        if isinstance(piece, str) and piece:
            self._pieces.append(piece)
            return [piece]
        return []

    def end(self) -> Completion | None:
        return self._completion() if self._finish is not None else None

    def _completion(self) -> Completion:
        return Completion(
            text="".join(self._pieces),
            prompt_tokens=_int(self._usage.get("prompt_tokens")),
            completion_tokens=_int(self._usage.get("completion_tokens")),
            finish_reason=self._finish,
            model=self._model,
        )
