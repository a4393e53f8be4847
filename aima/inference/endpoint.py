"""One model endpoint: what plugins call, with bounded concurrency, retries, timeouts, metrics and logs around
a wire protocol (`aima.inference.wire`).

Every call takes one of `max_concurrency` slots for each request it sends. A busy or unreachable server (HTTP 429,
5xx, connection errors, timeouts, a stream cut short) is tried again a few times within the call, after waits that
grow with jitter (and honour ``Retry-After``); then the call raises `ModelUnavailable`, so the task waits and runs
again later. Other 4xx answers raise `ModelError` (permanent); JSON that does not fit the schema raises
`InvalidModelOutput` at once, for the caller's own repair attempt. Prompts are never logged: they hold case data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ValidationError

from aima.errors import ModelUnavailable
from aima.inference.errors import InvalidModelOutput, ModelError, PromptTooLong
from aima.inference.messages import EndpointInfo, GenerationResult, Message
from aima.inference.wire import Completion, StreamError, Wire, WireRequest
from aima.metrics import INFERENCE_ERRORS, INFERENCE_IN_FLIGHT, INFERENCE_LATENCY, INFERENCE_TOKENS, INFERENCE_WAITING
from aima.settings import EndpointSettings

logger = logging.getLogger(__name__)

#: A JSON schema: a pydantic model (the answer is validated against it) or a schema as a mapping.
Schema = type[BaseModel] | Mapping[str, Any]

#: Statuses of a busy or failing server, worth another try.
_RETRY_STATUSES = frozenset({408, 424, 425, 429, 500, 502, 503, 504})
#: TGI's error types inside a stream that mean the same.
_RETRY_STREAM_ERRORS = frozenset({"overloaded", "generation", "incomplete_generation"})
_TOO_LONG = re.compile(
    r"maximum context length|context length exceeded|must have less than \d+ tokens|"
    r"tokens \+ `?max_new_tokens`? must be <=|prompt is too long|input too long",
    re.IGNORECASE,
)


class _Retryable(Exception):
    """A failure of one request that another may not have; `kind` labels metrics."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


def safe_url(url: str) -> str:
    """The URL without user, password, query or fragment: safe to log and show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _error_message(body: bytes) -> str:
    """The server's explanation from an error body (TGI, OpenAI and vLLM shapes), shortened."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300]
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("message", payload.get("detail", payload)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:300]
    return str(payload)[:300]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None  # an HTTP date, or nothing: the usual backoff applies


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


class Endpoint:
    """A named model server. Create through `aima.inference.endpoints_for`; one per process and event loop."""

    def __init__(self, name: str, settings: EndpointSettings, wire: Wire) -> None:
        self.name = name
        self.settings = settings
        self._wire = wire
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._in_flight = INFERENCE_IN_FLIGHT.labels(endpoint=name)
        self._waiting = INFERENCE_WAITING.labels(endpoint=name)

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

    async def generate_json(
        self,
        messages: Sequence[Message],
        schema: Schema,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> GenerationResult:
        """An answer constrained to `schema` (TGI JSON grammar, OpenAI ``json_schema`` response format), parsed and,
        for a pydantic model, validated; `InvalidModelOutput` when it does not fit."""
        schema_dict, model_type = _schema_of(schema)
        result = await self._generate(messages, schema_dict, max_new_tokens, temperature)
        try:
            parsed = json.loads(result.text)
            if not isinstance(parsed, dict):
                raise ValueError(f"the answer is a JSON {type(parsed).__name__}, not an object")
            if model_type is not None:
                model_type.model_validate(parsed)
        except (ValueError, ValidationError) as exc:
            INFERENCE_ERRORS.labels(endpoint=self.name, kind="invalid_output").inc()
            cut = " (cut at max_new_tokens)" if result.finish_reason == "length" else ""
            problem = f"{_problem(exc)}{cut}"
            logger.warning(
                "%s answered JSON that does not fit the schema%s",
                self.name,
                cut,
                extra={"endpoint": self.name, "completion_tokens": result.completion_tokens},
            )
            raise InvalidModelOutput(
                f"The model at endpoint {self.name!r} did not answer valid JSON for the schema: {problem}",
                problem=problem,
                result=result,
            ) from None
        return dataclasses.replace(result, parsed=parsed)

    async def generate_text(
        self, messages: Sequence[Message], *, max_new_tokens: int | None = None, temperature: float = 0.0
    ) -> GenerationResult:
        """A free-text answer."""
        return await self._generate(messages, None, max_new_tokens, temperature)

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
                async with self._slot():
                    started = time.monotonic()
                    try:
                        async with contextlib.aclosing(self._stream(request, started)) as pieces:
                            async for piece in pieces:
                                if isinstance(piece, Completion):
                                    self._succeeded(started, piece, attempt)
                                    return
                                given = True
                                yield piece
                    except (_Retryable, ModelError) as exc:
                        self._failed(started, exc)
                        raise
            except _Retryable as exc:
                if given or attempt == self.settings.max_attempts:
                    raise self._unavailable(exc, attempt) from exc
                await self._back_off(attempt, exc)

    async def _generate(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any] | None,
        max_new_tokens: int | None,
        temperature: float,
    ) -> GenerationResult:
        request = self._request(messages, schema, max_new_tokens, temperature, stream=self.settings.stream)
        called = time.monotonic()
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                completion = await self._attempt(request, attempt)
            except _Retryable as exc:
                if attempt == self.settings.max_attempts:
                    raise self._unavailable(exc, attempt) from exc
                await self._back_off(attempt, exc)
                continue
            return GenerationResult(
                text=completion.text,
                parsed=None,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_s=time.monotonic() - called,
                endpoint=self.name,
                model=completion.model or self.settings.model,
                finish_reason=completion.finish_reason,
                attempts=attempt,
            )
        raise AssertionError("unreachable: max_attempts >= 1")

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
        async with self._slot():
            started = time.monotonic()
            try:
                if request.stream:
                    completion = None
                    async with contextlib.aclosing(self._stream(request, started)) as pieces:
                        async for piece in pieces:
                            if isinstance(piece, Completion):
                                completion = piece
                    if completion is None:  # _stream ends with the answer or raises
                        raise _Retryable("stream_cut", "the stream ended without an answer")
                else:
                    completion = await self._post(request)
            except (_Retryable, ModelError) as exc:
                self._failed(started, exc)
                raise
            self._succeeded(started, completion, attempt)
            return completion

    async def _post(self, request: WireRequest) -> Completion:
        deadline = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(deadline):
                with self._transport_errors():
                    response = await self._http().post(request.path, json=request.body)
        except TimeoutError:
            raise _Retryable("timeout", f"no answer within request_timeout_s ({deadline:g} s)") from None
        self._check_status(response.status_code, response.headers, response.content)
        try:
            payload = response.json()
        except ValueError:
            raise _Retryable("protocol", "the answer is not JSON") from None
        try:
            return self._wire.answer(payload, response.headers)
        except ValueError as exc:
            raise ModelError(f"Model endpoint {self.name!r} gave an unexpected answer: {exc}") from None

    async def _stream(self, request: WireRequest, started: float) -> AsyncGenerator[str | Completion, None]:
        """The answer's pieces, then its `Completion`; `_Retryable` when it stalls, runs out of time or is cut."""
        deadline = started + self.settings.request_timeout_s
        final: Completion | None = None
        try:
            with self._transport_errors():
                async with self._http().stream("POST", request.path, json=request.body) as response:
                    if response.status_code != 200:
                        self._check_status(response.status_code, response.headers, await response.aread())
                    reader = self._wire.stream_reader()
                    async for data in _sse_data(response.aiter_lines(), deadline, self.settings.request_timeout_s):
                        if final is not None:
                            continue  # read to the end, so that the connection can serve the next request
                        try:
                            events = reader.events(data)
                        except ValueError as exc:
                            raise _Retryable("stream_cut", f"an unreadable stream event ({exc})") from None
                        for event in events:
                            if isinstance(event, StreamError):
                                self._stream_error(event)
                            if isinstance(event, Completion):
                                final = event
                                break
                            yield event
                    final = final or reader.end()
        except _Retryable:
            if final is None:
                raise
            # The answer was complete; only what came after it broke.
        if final is None:
            raise _Retryable("stream_cut", "the stream ended before the answer was complete")
        yield final

    # -- failures ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transport_errors(self) -> Any:
        try:
            yield
        except httpx.TimeoutException as exc:
            what = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for the answer"
            raise _Retryable("timeout", f"timed out {what} ({type(exc).__name__})") from None
        except httpx.ConnectError as exc:
            raise _Retryable("connection", f"cannot connect ({exc or type(exc).__name__})") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise _Retryable("stream_cut", f"the connection broke ({exc or type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable("connection", f"transport error ({type(exc).__name__})") from None

    def _check_status(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        if status == 200:
            return
        message = _error_message(body)
        if status == 429:
            raise _Retryable("rate_limited", f"HTTP 429: {message}", _retry_after(headers))
        if status in _RETRY_STATUSES or status >= 500:
            raise _Retryable("unavailable", f"HTTP {status}: {message}", _retry_after(headers))
        if status == 413 or _TOO_LONG.search(message):
            raise PromptTooLong(f"The prompt is too long for endpoint {self.name!r}: {message}", status=status)
        hint = {401: " (check api_key)", 403: " (check api_key)", 404: " (check url and protocol)"}.get(status, "")
        refused = f"Model endpoint {self.name!r} refused the request, HTTP {status}{hint}: {message}"
        raise ModelError(refused, status=status)

    def _stream_error(self, error: StreamError) -> NoReturn:
        if error.kind in _RETRY_STREAM_ERRORS:
            kind = "rate_limited" if error.kind == "overloaded" else "unavailable"
            raise _Retryable(kind, f"{error.kind or 'error'} in the stream: {error.message[:300]}")
        if _TOO_LONG.search(error.message):
            raise PromptTooLong(f"The prompt is too long for endpoint {self.name!r}: {error.message[:300]}")
        raise ModelError(f"Model endpoint {self.name!r} refused the request: {error.message[:300]}")

    def _unavailable(self, exc: _Retryable, attempts: int) -> ModelUnavailable:
        return ModelUnavailable(
            f"Model endpoint {self.name!r} is unavailable after {attempts} tr{'y' if attempts == 1 else 'ies'}: "
            f"{exc.reason}"
        )

    async def _back_off(self, attempt: int, exc: _Retryable) -> None:
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

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        self._waiting.inc()
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting.dec()
        self._in_flight.inc()
        try:
            yield
        finally:
            self._in_flight.dec()
            self._semaphore.release()

    def _succeeded(self, started: float, completion: Completion, attempt: int) -> None:
        elapsed = time.monotonic() - started
        INFERENCE_LATENCY.labels(endpoint=self.name, outcome="ok").observe(elapsed)
        if completion.prompt_tokens:
            INFERENCE_TOKENS.labels(endpoint=self.name, kind="prompt").inc(completion.prompt_tokens)
        if completion.completion_tokens:
            INFERENCE_TOKENS.labels(endpoint=self.name, kind="completion").inc(completion.completion_tokens)
        logger.info(
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

    def _failed(self, started: float, exc: _Retryable | ModelError) -> None:
        kind = exc.kind if isinstance(exc, _Retryable) else "model_error"
        elapsed = time.monotonic() - started
        INFERENCE_LATENCY.labels(endpoint=self.name, outcome=kind).observe(elapsed)
        INFERENCE_ERRORS.labels(endpoint=self.name, kind=kind).inc()
        if isinstance(exc, ModelError):
            logger.warning(
                "%s: %s", self.name, exc.message, extra={"endpoint": self.name, "latency_s": round(elapsed, 4)}
            )

    def _http(self) -> httpx.AsyncClient:
        """The endpoint's connection pool, made on first use (in the event loop that uses it)."""
        if self._client is None:
            s = self.settings
            headers = {"User-Agent": "aima"}
            if s.api_key is not None:
                headers["Authorization"] = f"Bearer {s.api_key.get_secret_value()}"
            self._client = httpx.AsyncClient(
                base_url=s.url,
                headers=headers,
                timeout=httpx.Timeout(
                    connect=s.connect_timeout_s, read=s.read_timeout_s, write=s.read_timeout_s, pool=s.request_timeout_s
                ),
                # Generation never waits for a connection (the slots bound it); health checks get their own.
                limits=httpx.Limits(max_connections=s.max_concurrency + 2, max_keepalive_connections=s.max_concurrency),
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- health and info -----------------------------------------------------------------------------------------

    async def health(self) -> str | None:
        """None when the server answers its health route (and, for OpenAI-compatible servers, serves `model`);
        otherwise why not."""
        timeout = httpx.Timeout(self.settings.connect_timeout_s)
        try:
            response = await self._http().get(self._wire.health_path, timeout=timeout)
        except httpx.HTTPError as exc:
            return f"unreachable ({type(exc).__name__})"
        if response.status_code != 200:
            return f"answered HTTP {response.status_code}: {_error_message(response.content)}"
        if self.protocol == "openai":
            try:
                served = [m.get("id") for m in response.json().get("data", [])]
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
            response = await self._http().get(self._wire.info_path)
            with contextlib.suppress(ValueError):
                raw = response.json() if response.status_code == 200 else {}
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"model endpoint {self.name!r} is unreachable ({type(exc).__name__})") from None
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


async def _sse_data(lines: AsyncIterator[str], deadline: float, limit_s: float) -> AsyncIterator[str]:
    """The data of each server-sent event (``data:`` lines up to a blank line); comments and keep-alives are
    skipped but still count against the deadline, so a server that only keeps the connection alive times out."""
    data: list[str] = []
    async for line in lines:
        if time.monotonic() > deadline:
            raise _Retryable("timeout", f"the answer took longer than request_timeout_s ({limit_s:g} s)")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # a last event without its blank line (or cut in the middle: the reader finds out)
        yield "\n".join(data)
