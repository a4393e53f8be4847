"""One model endpoint: what plugins call, with bounded concurrency, retries, timeouts, metrics and logs around
a wire protocol (`aima.inference.wire`) and its HTTP transport (`aima.inference.transport`).

Every call takes one of `max_concurrency` slots for each request it sends. A busy or unreachable server (HTTP 429,
5xx, connection errors, timeouts, a stream cut short, and errors sent with HTTP 200 whose type or code says the same,
in a stream or as the whole answer) is tried again a few times within the call, after waits that grow with jitter
(and honour ``Retry-After``, in seconds or as an HTTP date); then the call raises `ModelUnavailable`, so the task
waits and runs again later. A ``Retry-After`` beyond ``retry_cap_s`` ends the call at once, the wait carried in the
error's ``retry_after_s``. Other 4xx answers and errors raise `ModelError` (permanent), as do answers of the wrong
shape; JSON that does not fit the schema raises `InvalidModelOutput` at once, for the caller's own repair attempt.
Prompts are never logged: they hold case data; the server's error text is shortened, with credentials and pydantic's
echo of the input redacted.
A request that succeeds is logged at DEBUG only (a long video makes hundreds; the metrics hold latency and tokens);
retries and refusals at WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NoReturn, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from aima.errors import ModelUnavailable
from aima.inference.errors import EndpointUnavailable, InvalidModelOutput, ModelError, PromptTooLong
from aima.inference.messages import EndpointInfo, GenerationResult, Message
from aima.inference.transport import MAX_ERROR_BYTES, AnswerTooLarge, Http, Retryable, SseDecoder, loads, read_body
from aima.inference.wire import Completion, StreamError, StreamReader, Wire, WireRequest, error_in
from aima.metrics import INFERENCE_ERRORS, INFERENCE_IN_FLIGHT, INFERENCE_LATENCY, INFERENCE_TOKENS, INFERENCE_WAITING
from aima.settings import EndpointSettings

logger = logging.getLogger(__name__)

#: A JSON schema: a pydantic model (the answer is validated against it) or a schema as a mapping.
Schema = type[BaseModel] | Mapping[str, Any]

_ModelT = TypeVar("_ModelT", bound=BaseModel)
_ValueT = TypeVar("_ValueT")

#: Statuses of a busy or failing server, worth another try.
_RETRY_STATUSES = frozenset({408, 424, 425, 429, 500, 502, 503, 504})
#: Error types that mean the same in an error the server sends with HTTP 200 (in a stream, or as the whole answer)
#: without a status of its own: TGI's, and OpenAI's names for rate limits and server errors (lower case).
_RETRY_ERROR_TYPES = frozenset(
    {"overloaded", "generation", "incomplete_generation", "rate_limit_error", "server_error", "internalservererror"}
)
_TOO_LONG = re.compile(
    r"maximum context length|context length exceeded|must have less than \d+ tokens|"
    r"tokens \+ `?max_new_tokens`? must be <=|prompt is too long|input too long|maximum model length",
    re.IGNORECASE,
)
#: What server text may not carry into logs and task errors: credentials, and pydantic's echo of the input (case
#: data) in validation errors, to the end of the text.
_CREDENTIAL = re.compile(r"\b(Bearer|Basic)\s+[^\s,;'\"]+", re.IGNORECASE)
_INPUT_ECHO = re.compile(r"input_value=.*", re.DOTALL)


def _retryable_status(status: int) -> bool:
    """A status saying the server is busy or failing (not that the request is wrong): worth trying again."""
    return status in _RETRY_STATUSES or status >= 500


def safe_url(url: str) -> str:
    """The URL without user, password, query or fragment: safe to log and show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _clean(text: str) -> str:
    """Server text as it may be logged and shown: credentials and echoed input redacted, shortened."""
    text = _CREDENTIAL.sub(r"\1 [redacted]", text)
    text = _INPUT_ECHO.sub("input_value=[redacted]", text)
    return text.strip()[:300]


def _error_message(body: bytes) -> str:
    """The server's explanation from an error body (TGI, OpenAI and vLLM shapes), with its error type, cleaned."""
    try:
        payload = loads(body)
    except ValueError:
        return _clean(body.decode("utf-8", "replace"))
    error = error_in(payload)
    if error is not None:
        return _described(error)
    if isinstance(payload, dict):
        return _clean(str(payload.get("message", payload.get("detail", payload))))
    return _clean(str(payload))


def _described(error: StreamError) -> str:
    message = _clean(error.message)
    kind = error.kind.strip()[:64]
    return f"{kind}: {message}" if kind and kind not in message else message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait: a number of seconds or an HTTP date; None without one."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None  # unreadable: the usual backoff applies
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _problem(exc: ValueError | ValidationError) -> str:
    """What is wrong with an answer, short enough to send back to the model in a repair prompt."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        listed = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in errors[:10])
        more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
        return f"{listed}{more}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at character {exc.pos}"
    return str(exc)[:500]


@functools.lru_cache(maxsize=256)
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()  # pydantic builds it anew on every call


def _schema_of(schema: Schema) -> tuple[dict[str, Any], type[BaseModel] | None]:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _model_schema(schema), schema
    if isinstance(schema, Mapping):
        return dict(schema), None
    raise TypeError("schema must be a pydantic model class or a JSON schema mapping")


class _Slot:
    """One of an endpoint's `max_concurrency` slots, held for one request; the gauges count who holds and who waits."""

    __slots__ = ("_in_flight", "_semaphore", "_waiting")

    def __init__(self, name: str, size: int) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self._in_flight = INFERENCE_IN_FLIGHT.labels(endpoint=name)
        self._waiting = INFERENCE_WAITING.labels(endpoint=name)

    async def __aenter__(self) -> None:
        if self._semaphore.locked():
            self._waiting.inc()
            try:
                await self._semaphore.acquire()
            finally:
                self._waiting.dec()
        else:
            await self._semaphore.acquire()
        self._in_flight.inc()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._in_flight.dec()
        self._semaphore.release()


class Endpoint:
    """A named model server. Create through `aima.inference.endpoints_for`; one per process and event loop."""

    def __init__(self, name: str, settings: EndpointSettings, wire: Wire) -> None:
        self.name = name
        self.settings = settings
        self._wire = wire
        self._http = Http(settings)
        self._slot = _Slot(name, settings.max_concurrency)
        # The children of the metrics every request touches, looked up once.
        self._latency_ok = INFERENCE_LATENCY.labels(endpoint=name, outcome="ok")
        self._prompt_tokens = INFERENCE_TOKENS.labels(endpoint=name, kind="prompt")
        self._completion_tokens = INFERENCE_TOKENS.labels(endpoint=name, kind="completion")

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {self.protocol}, {safe_url(self.settings.url)})"

    @property
    def protocol(self) -> str:
        return self._wire.protocol

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def max_input_tokens(self) -> int | None:
        """The configured prompt budget; `info` adds the server's when none is configured."""
        return self.settings.max_input_tokens

    # -- generation ------------------------------------------------------------------------------------------

    @overload
    async def generate_json(
        self,
        messages: Sequence[Message],
        schema: type[_ModelT],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> GenerationResult[_ModelT]: ...

    @overload
    async def generate_json(
        self,
        messages: Sequence[Message],
        schema: Mapping[str, Any],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> GenerationResult[None]: ...

    async def generate_json(
        self,
        messages: Sequence[Message],
        schema: Schema,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> GenerationResult[BaseModel | None]:
        """An answer constrained to `schema` (TGI JSON grammar, OpenAI ``json_schema`` response format), parsed and,
        for a pydantic model, validated (the model in the result's `value`); `InvalidModelOutput` when it does not
        fit."""
        schema_dict, model_type = _schema_of(schema)
        completion, attempts, latency = await self._generate(messages, schema_dict, max_new_tokens, temperature)
        try:
            parsed = json.loads(completion.text)  # the stdlib's messages are the clearer ones for a repair prompt
            if not isinstance(parsed, dict):
                raise ValueError(f"the answer is a JSON {type(parsed).__name__}, not an object")
            value = model_type.model_validate(parsed) if model_type is not None else None
        except (ValueError, ValidationError) as exc:
            INFERENCE_ERRORS.labels(endpoint=self.name, kind="invalid_output").inc()
            cut = " (cut at max_new_tokens)" if completion.finish_reason == "length" else ""
            problem = f"{_problem(exc)}{cut}"
            logger.warning(
                "%s answered JSON that does not fit the schema%s",
                self.name,
                cut,
                extra={"endpoint": self.name, "completion_tokens": completion.completion_tokens},
            )
            raise InvalidModelOutput(
                f"The model at endpoint {self.name!r} did not answer valid JSON for the schema: {problem}",
                problem=problem,
                result=self._result(completion, None, None, attempts, latency),
            ) from None
        return self._result(completion, parsed, value, attempts, latency)

    async def generate_text(
        self, messages: Sequence[Message], *, max_new_tokens: int | None = None, temperature: float = 0.0
    ) -> GenerationResult[None]:
        """A free-text answer."""
        completion, attempts, latency = await self._generate(messages, None, max_new_tokens, temperature)
        return self._result(completion, None, None, attempts, latency)

    async def stream_text(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        schema: Schema | None = None,
    ) -> AsyncGenerator[str, None]:
        """The answer's text piece by piece as the server generates it. Failures before the first piece are retried
        like any call; a stream cut after it raises `ModelUnavailable` (the pieces already given cannot be taken
        back). Close the iterator (``aclose``) when leaving it early."""
        schema_dict = _schema_of(schema)[0] if schema is not None else None
        request = self._request(messages, schema_dict, max_new_tokens, temperature, stream=True)
        for attempt in range(1, self.settings.max_attempts + 1):
            given = False
            try:
                async with self._slot:
                    started = time.monotonic()
                    try:
                        async with contextlib.aclosing(self._stream(request)) as pieces:
                            async for piece in pieces:
                                if isinstance(piece, Completion):
                                    self._succeeded(started, piece, attempt)
                                    return
                                given = True
                                yield piece
                    except (Retryable, ModelError) as exc:
                        self._failed(started, exc)
                        raise
            except Retryable as exc:
                if given or attempt == self.settings.max_attempts or self._waits_too_long(exc):
                    raise self._unavailable(exc, attempt) from exc
                await self._back_off(attempt, exc)

    async def _generate(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any] | None,
        max_new_tokens: int | None,
        temperature: float,
    ) -> tuple[Completion, int, float]:
        """The answer, the requests it took and the seconds since the call, retries and waits included."""
        request = self._request(messages, schema, max_new_tokens, temperature, stream=self.settings.stream)
        called = time.monotonic()
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                completion = await self._attempt(request, attempt)
            except Retryable as exc:
                if attempt == self.settings.max_attempts or self._waits_too_long(exc):
                    raise self._unavailable(exc, attempt) from exc
                await self._back_off(attempt, exc)
                continue
            return completion, attempt, time.monotonic() - called
        raise AssertionError("unreachable: max_attempts >= 1")

    def _result(
        self, completion: Completion, parsed: dict[str, Any] | None, value: _ValueT, attempts: int, latency_s: float
    ) -> GenerationResult[_ValueT]:
        return GenerationResult(
            text=completion.text,
            parsed=parsed,
            value=value,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=latency_s,
            endpoint=self.name,
            model=completion.model or self.settings.model,
            finish_reason=completion.finish_reason,
            attempts=attempts,
        )

    def _request(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any] | None,
        max_new_tokens: int | None,
        temperature: float,
        *,
        stream: bool,
    ) -> WireRequest:
        if not messages:
            raise ValueError("a generation needs at least one message")
        if temperature < 0:
            raise ValueError("temperature must not be negative")
        limit = self.settings.max_new_tokens
        tokens = limit if max_new_tokens is None else max_new_tokens
        if not 1 <= tokens <= limit:
            raise ValueError(f"max_new_tokens must be between 1 and {limit} (the endpoint's max_new_tokens)")
        return self._wire.request(
            messages, schema=schema, max_new_tokens=tokens, temperature=temperature, stream=stream
        )

    async def _attempt(self, request: WireRequest, attempt: int) -> Completion:
        """One request in one slot, timed and counted."""
        async with self._slot:
            started = time.monotonic()
            try:
                completion = await (self._drain(request) if request.stream else self._post(request))
            except (Retryable, ModelError) as exc:
                self._failed(started, exc)
                raise
            self._succeeded(started, completion, attempt)
            return completion

    async def _drain(self, request: WireRequest) -> Completion:
        """A streamed answer read to its end."""
        async with contextlib.aclosing(self._stream(request)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Completion):
                    return piece
        raise Retryable("stream_cut", "the stream ended without an answer")  # _stream ends with the answer or raises

    async def _post(self, request: WireRequest) -> Completion:
        try:
            with self._http.failures:
                async with self._http.post(request.path, request.data) as response:
                    if response.status == 200:
                        body = await read_body(response)
                    else:
                        body = await read_body(response, MAX_ERROR_BYTES, cut=True)
        except AnswerTooLarge as exc:
            raise self._unexpected(exc) from None
        self._check_status(response.status, response.headers, body)
        try:
            payload = loads(body)
        except ValueError:
            raise Retryable("protocol", "the answer is not JSON") from None
        error = error_in(payload)  # an error sent with HTTP 200: TGI when overloaded, some proxies
        if error is not None:
            self._server_error(error, "in an answer of HTTP 200", _retry_after(response.headers))
        try:
            return self._wire.answer(payload, response.headers)
        except ValueError as exc:
            raise self._unexpected(exc) from None

    def _unexpected(self, exc: ValueError) -> ModelError:
        return ModelError(f"Model endpoint {self.name!r} gave an unexpected answer: {_clean(str(exc))}")

    async def _stream(self, request: WireRequest) -> AsyncGenerator[str | Completion, None]:
        """The answer's pieces, then its `Completion`; `Retryable` when it stalls, runs out of time or is cut (the
        session's timeouts: `read_timeout_s` of silence, `request_timeout_s` in all, keep-alive comments included)."""
        final: Completion | None = None
        try:
            with self._http.failures:
                async with self._http.post(request.path, request.data) as response:
                    if response.status != 200:
                        body = await read_body(response, MAX_ERROR_BYTES, cut=True)
                        self._check_status(response.status, response.headers, body)
                    reader = self._wire.stream_reader()
                    decoder = SseDecoder()
                    async for chunk in response.content.iter_any():
                        if final is not None:
                            continue  # read to the end, so that the connection can serve the next request
                        for event in self._events(reader, decoder.feed(chunk)):
                            if isinstance(event, Completion):
                                final = event
                                break
                            yield event
                    if final is None:
                        for event in self._events(reader, decoder.end()):
                            if isinstance(event, Completion):
                                final = event
                                break
                            yield event
                    final = final or reader.end()
        except Retryable:
            if final is None:
                raise
            # The answer was complete; only what came after it broke.
        if final is None:
            raise Retryable("stream_cut", "the stream ended before the answer was complete")
        yield final

    def _events(self, reader: StreamReader, data: list[bytes]) -> list[str | Completion]:
        """What the events' data say: pieces and the end; an error event raises."""
        out: list[str | Completion] = []
        for one in data:
            try:
                events = reader.events(one)
            except ValueError as exc:
                raise Retryable("stream_cut", f"an unreadable stream event ({exc})") from None
            for event in events:
                if isinstance(event, StreamError):
                    self._server_error(event, "in the stream")
                out.append(event)
        return out

    # -- failures ------------------------------------------------------------------------------------------------

    def _check_status(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        if status == 200:
            return
        message = _error_message(body)
        if status == 429:
            raise Retryable("rate_limited", f"HTTP 429: {message}", _retry_after(headers))
        if _retryable_status(status):
            raise Retryable("unavailable", f"HTTP {status}: {message}", _retry_after(headers))
        if status == 413 or _TOO_LONG.search(message):
            raise PromptTooLong(f"The prompt is too long for endpoint {self.name!r}: {message}", status=status)
        hint = {401: " (check api_key)", 403: " (check api_key)", 404: " (check url and protocol)"}.get(status, "")
        refused = f"Model endpoint {self.name!r} refused the request, HTTP {status}{hint}: {message}"
        raise ModelError(refused, status=status)

    def _server_error(self, error: StreamError, where: str, retry_after: float | None = None) -> NoReturn:
        """An error the server sent with HTTP 200, in a stream or as the whole answer: retried when its type or its
        status (OpenAI's ``code``) says the server is busy or failing, permanent otherwise."""
        kind = error.kind.lower()
        status = error.code
        said = f"{error.kind or 'error'}{f' (HTTP {status})' if status else ''} {where}: {_clean(error.message)}"
        if kind in _RETRY_ERROR_TYPES or (status is not None and _retryable_status(status)):
            busy = kind in ("overloaded", "rate_limit_error") or status == 429
            raise Retryable("rate_limited" if busy else "unavailable", said, retry_after)
        if status == 413 or _TOO_LONG.search(error.message):
            raise PromptTooLong(f"The prompt is too long for endpoint {self.name!r}: {said}", status=status)
        raise ModelError(f"Model endpoint {self.name!r} refused the request: {said}", status=status)

    def _waits_too_long(self, exc: Retryable) -> bool:
        """Whether the server asks for a longer wait than the endpoint's ``retry_cap_s``: then the call ends at once,
        and the task's next run waits for it."""
        return exc.retry_after is not None and exc.retry_after > self.settings.retry_cap_s

    def _unavailable(self, exc: Retryable, attempts: int) -> EndpointUnavailable:
        asked = ""
        if self._waits_too_long(exc):
            asked = f" (the server asks to wait {exc.retry_after:.0f} s)"
        return EndpointUnavailable(
            f"Model endpoint {self.name!r} is unavailable after {attempts} tr{'y' if attempts == 1 else 'ies'}: "
            f"{exc.reason}{asked}",
            retry_after_s=exc.retry_after,
        )

    async def _back_off(self, attempt: int, exc: Retryable) -> None:
        cap = self.settings.retry_cap_s
        delay = random.uniform(0, min(cap, self.settings.retry_base_s * 2 ** (attempt - 1)))  # noqa: S311 - jitter
        if exc.retry_after is not None:
            delay = max(delay, min(cap, exc.retry_after))
        logger.warning(
            "%s: %s; trying again in %.2f s",
            self.name,
            exc.reason,
            delay,
            extra={"endpoint": self.name, "attempt": attempt, "outcome": exc.kind},
        )
        await asyncio.sleep(delay)

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def _succeeded(self, started: float, completion: Completion, attempt: int) -> None:
        elapsed = time.monotonic() - started
        self._latency_ok.observe(elapsed)
        if completion.prompt_tokens:
            self._prompt_tokens.inc(completion.prompt_tokens)
        if completion.completion_tokens:
            self._completion_tokens.inc(completion.completion_tokens)
        if logger.isEnabledFor(logging.DEBUG):  # one line per request: the metrics hold the same, cheaper
            logger.debug(
                "%s answered in %.3f s",
                self.name,
                elapsed,
                extra={
                    "endpoint": self.name,
                    "latency_s": round(elapsed, 4),
                    "attempt": attempt,
                    "outcome": "ok",
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                },
            )

    def _failed(self, started: float, exc: Retryable | ModelError) -> None:
        kind = exc.kind if isinstance(exc, Retryable) else "model_error"
        elapsed = time.monotonic() - started
        INFERENCE_LATENCY.labels(endpoint=self.name, outcome=kind).observe(elapsed)
        INFERENCE_ERRORS.labels(endpoint=self.name, kind=kind).inc()
        if isinstance(exc, ModelError):
            logger.warning(
                "%s: %s", self.name, exc.message, extra={"endpoint": self.name, "latency_s": round(elapsed, 4)}
            )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- health and info -----------------------------------------------------------------------------------------

    async def health(self) -> str | None:
        """None when the server answers its health route (and, for OpenAI-compatible servers, serves `model`);
        otherwise why not."""
        try:
            reply = await self._http.get(self._wire.health_path, self.settings.connect_timeout_s)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"unreachable ({type(exc).__name__})"
        if reply.status != 200:
            return f"answered HTTP {reply.status}: {_error_message(reply.body)}"
        if self.protocol == "openai":
            try:
                served = [m.get("id") for m in loads(reply.body).get("data", [])]
            except (ValueError, AttributeError):
                return "its model list is not readable"
            if self.settings.model not in served:
                return f"does not serve model {self.settings.model!r} (it serves: {', '.join(map(str, served))})"
        return None

    async def ping(self) -> None:
        """`health` for readiness checks: raises `ModelUnavailable` with the reason when the endpoint is not well."""
        problem = await self.health()
        if problem is not None:
            raise ModelUnavailable(f"model endpoint {self.name!r} {problem}")

    async def info(self) -> EndpointInfo:
        """What the server says it serves (TGI ``/info``, OpenAI ``/v1/models``) with the configured limits."""
        raw: Any = {}
        try:
            reply = await self._http.get(self._wire.info_path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ModelUnavailable(f"model endpoint {self.name!r} is unreachable ({type(exc).__name__})") from None
        if reply.status == 200:
            with contextlib.suppress(ValueError):
                raw = loads(reply.body)
        try:
            max_input, max_total, model, version = self._wire.info(raw)
        except ValueError:
            max_input = max_total = model = version = None
        return EndpointInfo(
            name=self.name,
            protocol=self.protocol,
            url=safe_url(self.settings.url),
            model=self.settings.model or model or "",
            max_concurrency=self.settings.max_concurrency,
            max_input_tokens=self.settings.max_input_tokens or max_input,
            max_total_tokens=max_total,
            server_version=version,
            raw=raw if isinstance(raw, dict) else {"answer": raw},
        )
