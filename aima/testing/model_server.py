"""A model server for tests: TGI's native API and the OpenAI chat API on 127.0.0.1, served by uvicorn in a thread.

It answers the way the real servers do on the wire, with JSON derived from the request: given the JSON schema of the
request (TGI ``parameters.grammar``, OpenAI ``response_format``) it builds a valid instance deterministically, its
strings taken from the prompt (quoted phrases first, then the last user turn's words), so a test can tell that its
input reached the "model". A test may supply its own answers (`ModelServer.answer`). The server records every
request (prompt text, decoded images, schema, headers), counts requests in flight and their maximum, and fails on
demand: an error status for some requests or seconds (with a ``Retry-After`` in seconds or as an HTTP date, and a
message of the test's choosing), errors sent with HTTP 200 in place of an answer, error events inside TGI and
OpenAI streams, slow answers, invalid JSON, streams cut in the middle, and 429 beyond a capacity.

    with ModelServer() as server:
        endpoint_url = server.url
        server.fail(503, requests=2)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

Protocol = Literal["tgi", "openai"]

_IMAGE_MARKDOWN = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_DATA_URI = re.compile(r"data:(image/[\w.+-]+);base64,([A-Za-z0-9+/=]+)")
_QUOTED = re.compile(r'(?<![=\\])"((?:[^"\\\n]|\\.){1,120})"')
_TOKEN = re.compile(r"\s*\S{1,4}|\s+")
#: Tokens an image counts for in `RecordedRequest.prompt_tokens` (a count for tests, not a tokenizer).
IMAGE_TOKENS = 576


def endpoint_settings(
    url: str, protocol: str, model: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One endpoint's settings (a value of `InferenceSettings.endpoints`) for a test server at `url`, retrying after
    10-50 ms instead of seconds, so that a test of a refusing server does not wait out the real backoff; `overrides`
    (any setting, the model too) win."""
    fast = {"url": url, "protocol": protocol, "model": model, "retry_base_s": 0.01, "retry_cap_s": 0.05}
    return {**fast, **(overrides or {})}


@dataclass(frozen=True)
class RecordedImage:
    mime: str
    data: bytes


@dataclass(frozen=True)
class RecordedRequest:
    """One generation request as the server understood it."""

    protocol: Protocol
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    #: The text the model reads: TGI's whole prompt, or the OpenAI messages' text, images as ``<image>``.
    prompt: str
    #: The last user turn's text (what the model is asked).
    question: str
    images: tuple[RecordedImage, ...]
    #: The JSON schema the answer must follow, when the request has one.
    schema: dict[str, Any] | None
    stream: bool
    max_new_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.split()) + IMAGE_TOKENS * len(self.images)


#: Supplies a test's own answer: raw text, an object (sent as JSON), or None for the derived answer.
AnswerFunction = Callable[[RecordedRequest], "str | Mapping[str, Any] | None"]


class _Refused(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


class _CutStream(Exception):
    """Raised inside a response body: uvicorn drops the connection with the answer unfinished."""


@dataclass
class _Faults:
    status: int = 503
    fail_requests: int = 0
    fail_until: float = 0.0
    retry_after: str | None = None
    message: str | None = None
    error_type: str | None = None
    #: Answers replaced by a payload of the protocol's (`ModelServer.error_answer`, `ModelServer.odd_answer`).
    instead: int = 0
    instead_of_answer: Callable[[Protocol], Any] = lambda protocol: None
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    invalid_json: int = 0
    cut_streams: int = 0
    stream_errors: int = 0
    stream_error: tuple[str, str] = ("", "")
    stream_error_code: int | None = None
    stream_error_flat: bool = False
    capacity: int | None = None


@dataclass
class ModelServer:
    """The server; a context manager that starts it (``url`` is then set) and stops it."""

    #: The model it claims to serve (TGI ``/info``, OpenAI ``/v1/models``; OpenAI requests must name it).
    model: str = "llava-hf/llava-v1.6-34b-hf"
    max_input_tokens: int = 4096
    max_total_tokens: int = 8192
    answer: AnswerFunction | None = None
    healthy: bool = True
    url: str = field(default="", init=False)
    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    in_flight: int = field(default=0, init=False)
    max_in_flight: int = field(default=0, init=False)
    _faults: _Faults = field(default_factory=_Faults, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _server: uvicorn.Server | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    # -- control -------------------------------------------------------------------------------------------------

    def fail(
        self,
        status: int = 503,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        retry_after: float | str | None = None,
        message: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Answer generation requests with `status` for the next `requests` requests, or for `seconds`. A 429 or 503
        carries `retry_after` as ``Retry-After``: seconds, or a string sent as it is (an HTTP date). `message` and
        `error_type` replace the error body's own ("injected failure (HTTP 503)", "unavailable")."""
        if (requests is None) == (seconds is None):
            raise ValueError("give requests or seconds")
        with self._lock:
            self._faults.status = status
            self._faults.fail_requests = requests or 0
            self._faults.fail_until = time.monotonic() + seconds if seconds is not None else 0.0
            if retry_after is None or isinstance(retry_after, str):
                self._faults.retry_after = retry_after
            else:
                self._faults.retry_after = f"{retry_after:g}"
            self._faults.message = message
            self._faults.error_type = error_type

    def error_answer(self, message: str, error_type: str, *, code: int | None = None, requests: int = 1) -> None:
        """The next `requests` generation requests get HTTP 200 with an error body in place of the answer, as TGI
        sends when overloaded and proxies in front of OpenAI-compatible servers do: TGI's ``{"error": message,
        "error_type": error_type}`` (with ``code`` when given), OpenAI's ``{"error": {"message", "type", "param",
        "code"}}``. A streamed request gets it as its one event."""
        self._answer_instead(lambda protocol: _error_payload(protocol, message, error_type, code), requests)

    def odd_answer(self, payload: Any, requests: int = 1) -> None:
        """The next `requests` generation requests get `payload` as JSON with HTTP 200, whatever they asked for (an
        answer of the wrong shape, say); a streamed request gets it as its one event."""
        self._answer_instead(lambda protocol: payload, requests)

    def _answer_instead(self, payload: Callable[[Protocol], Any], requests: int) -> None:
        with self._lock:
            self._faults.instead_of_answer = payload
            self._faults.instead = requests

    def slow(self, delay_s: float, *, token_delay_s: float = 0.0) -> None:
        """Wait `delay_s` before each answer begins, and `token_delay_s` between streamed tokens."""
        self._faults.delay_s = delay_s
        self._faults.token_delay_s = token_delay_s

    def invalid_json(self, requests: int = 1) -> None:
        """The next `requests` answers are JSON cut in half."""
        self._faults.invalid_json = requests

    def cut_stream(self, requests: int = 1) -> None:
        """The next `requests` answers stop in the middle and drop the connection."""
        self._faults.cut_streams = requests

    def stream_error(
        self, message: str, error_type: str, requests: int = 1, *, code: int | None = None, flat: bool = False
    ) -> None:
        """The next `requests` streams send one token, then an error event, as servers do when generation fails after
        the answer began (HTTP 200): TGI ``{"error": message, "error_type": error_type}``; OpenAI (vLLM) ``{"error":
        {"object": "error", "message", "type", "param", "code"}}``, or with `flat` the older top-level ``{"object":
        "error", "message", "type", "param", "code"}``, then ``[DONE]``. `code`: OpenAI's ``code`` (TGI sends
        none)."""
        self._faults.stream_error = (message, error_type)
        self._faults.stream_error_code = code
        self._faults.stream_error_flat = flat
        self._faults.stream_errors = requests

    def limit(self, capacity: int | None) -> None:
        """Answer 429 to generation requests beyond `capacity` in flight (None: no limit)."""
        self._faults.capacity = capacity

    def reset(self) -> None:
        """Forget requests and faults (between tests sharing one server)."""
        with self._lock:
            self._faults = _Faults()
            self.requests.clear()
            self.max_in_flight = self.in_flight
        self.answer = None
        self.healthy = True

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until no request is in flight (answers a client gave up on still run to their end)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.in_flight:
            raise TimeoutError(f"{self.in_flight} requests still in flight after {timeout_s:g} s")

    def count(self, path: str | None = None) -> int:
        """Generation requests received (on `path` only, when given), answered or not."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> ModelServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="model-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the model server did not start")
            time.sleep(0.005)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._tgi_root, methods=["POST"]),
                Route("/generate", self._tgi_generate, methods=["POST"]),
                Route("/generate_stream", self._tgi_generate_stream, methods=["POST"]),
                Route("/info", self._tgi_info, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/chat/completions", self._openai_chat, methods=["POST"]),
                Route("/v1/models", self._openai_models, methods=["GET"]),
            ]
        )

    # -- TGI -----------------------------------------------------------------------------------------------------

    async def _tgi_root(self, request: Request) -> Response:
        """TGI's root route: ``stream`` picks the stream; otherwise a list of one answer (the `text-generation`
        client's `generate` reads ``payload[0]``)."""
        return await self._tgi(request, stream=None)

    async def _tgi_generate(self, request: Request) -> Response:
        return await self._tgi(request, stream=False)

    async def _tgi_generate_stream(self, request: Request) -> Response:
        return await self._tgi(request, stream=True)

    async def _tgi(self, request: Request, *, stream: bool | None) -> Response:
        try:
            body = await _json(request)
            as_list = stream is None and not body.get("stream")
            record = self._record_tgi(request, body, bool(body.get("stream")) if stream is None else stream)
        except _Refused as refused:
            return _tgi_error(refused)
        return await self._serve(record, lambda text, cut: self._tgi_answer(record, text, cut, as_list), _tgi_error)

    def _record_tgi(self, request: Request, body: dict[str, Any], stream: bool) -> RecordedRequest:
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise _Refused(422, "Input validation error: `inputs` cannot be empty", "validation")
        parameters = body.get("parameters") or {}
        images = []
        for url in _IMAGE_MARKDOWN.findall(inputs):
            images.append(_decode_image(url))
        prompt = _IMAGE_MARKDOWN.sub("<image>", inputs)
        grammar = parameters.get("grammar")
        schema = None
        if grammar is not None:
            if grammar.get("type") != "json":
                raise _Refused(422, "Input validation error: only json grammars here", "validation")
            value = grammar.get("value")
            schema = json.loads(value) if isinstance(value, str) else value
        record = RecordedRequest(
            protocol="tgi",
            path=request.url.path,
            body=body,
            headers=dict(request.headers),
            prompt=prompt,
            question=_last_user_turn(prompt),
            images=tuple(images),
            schema=schema,
            stream=stream,
            max_new_tokens=int(parameters.get("max_new_tokens") or 100),
        )
        with self._lock:
            self.requests.append(record)
        if record.prompt_tokens + record.max_new_tokens > self.max_total_tokens:
            raise _Refused(
                422,
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {record.prompt_tokens} `inputs` tokens and {record.max_new_tokens} `max_new_tokens`",
                "validation",
            )
        return record

    def _tgi_answer(self, record: RecordedRequest, text: str, cut: bool, as_list: bool) -> Response:
        tokens = _tokens(text)
        details = bool((record.body.get("parameters") or {}).get("details"))
        headers = {"x-prompt-tokens": str(record.prompt_tokens), "x-generated-tokens": str(len(tokens))}
        if not record.stream:
            answer: dict[str, Any] = {"generated_text": text}
            if details:
                answer["details"] = {
                    "finish_reason": "eos_token",
                    "generated_tokens": len(tokens),
                    "seed": None,
                    "prefill": [],
                    "tokens": [_tgi_token(i, t) for i, t in enumerate(tokens)],
                    "top_tokens": None,
                    "best_of_sequences": None,
                }
            return _body([answer] if as_list else answer, cut, headers)

        failure = None
        with self._lock:
            if self._faults.stream_errors > 0:
                self._faults.stream_errors -= 1
                failure = self._faults.stream_error

        async def events() -> AsyncIterator[bytes]:
            for index, token in enumerate(tokens, start=1):
                if cut and index > len(tokens) // 2:
                    raise _CutStream
                if failure is not None and index == 2:
                    yield f"data:{json.dumps({'error': failure[0], 'error_type': failure[1]})}\n\n".encode()
                    return
                last = index == len(tokens)
                event = {
                    "index": index,
                    "token": _tgi_token(index, token),
                    "top_tokens": None,
                    "generated_text": text if last else None,
                    "details": {
                        "finish_reason": "eos_token",
                        "generated_tokens": len(tokens),
                        "seed": None,
                        "input_length": record.prompt_tokens,
                    }
                    if last and details
                    else None,
                }
                yield f"data:{json.dumps(event)}\n\n".encode()
                if self._faults.token_delay_s:
                    await asyncio.sleep(self._faults.token_delay_s)

        return self._stream_response(events(), headers)

    async def _tgi_info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "model_id": self.model,
                "model_sha": None,
                "model_pipeline_tag": "image-text-to-text",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": self.max_input_tokens,
                "max_total_tokens": self.max_total_tokens,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "test",
                "sha": None,
                "docker_label": None,
            }
        )

    async def _health(self, request: Request) -> Response:
        if self.healthy:
            return Response(status_code=200)
        return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)

    # -- OpenAI --------------------------------------------------------------------------------------------------

    async def _openai_chat(self, request: Request) -> Response:
        try:
            record = self._record_openai(request, await _json(request))
        except _Refused as refused:
            return _openai_error(refused)
        return await self._serve(record, lambda text, cut: self._openai_answer(record, text, cut), _openai_error)

    def _record_openai(self, request: Request, body: dict[str, Any]) -> RecordedRequest:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Refused(400, "messages must be a non-empty list", "BadRequestError")
        texts: list[str] = []
        images: list[RecordedImage] = []
        question = ""
        for message in messages:
            content = message.get("content")
            parts: list[dict[str, Any]] = (
                [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            )
            turn: list[str] = []
            for part in parts:
                if part.get("type") == "text":
                    turn.append(part["text"])
                elif part.get("type") == "image_url":
                    images.append(_decode_image(str((part.get("image_url") or {}).get("url", ""))))
                    turn.append("<image>")
                else:
                    raise _Refused(400, f"unknown content part type {part.get('type')!r}", "BadRequestError")
            texts.append(f"{message.get('role')}: {''.join(turn)}")
            if message.get("role") == "user":
                question = "".join(turn)
        schema = None
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
        elif response_format.get("type") == "json":  # TGI's Messages API form
            schema = response_format.get("value")
        record = RecordedRequest(
            protocol="openai",
            path=request.url.path,
            body=body,
            headers=dict(request.headers),
            prompt="\n".join(texts),
            question=question,
            images=tuple(images),
            schema=schema,
            stream=bool(body.get("stream")),
            max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 100),
        )
        with self._lock:
            self.requests.append(record)
        if body.get("model") != self.model:
            raise _Refused(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if record.prompt_tokens + record.max_new_tokens > self.max_total_tokens:
            raise _Refused(
                400,
                f"This model's maximum context length is {self.max_total_tokens} tokens. However, you requested "
                f"{record.prompt_tokens + record.max_new_tokens} tokens.",
                "BadRequestError",
            )
        return record

    def _openai_answer(self, record: RecordedRequest, text: str, cut: bool) -> Response:
        tokens = _tokens(text)
        usage = {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": record.prompt_tokens + len(tokens),
        }
        base = {"id": f"chatcmpl-{len(self.requests)}", "created": int(time.time()), "model": self.model}
        if not record.stream:
            answer = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
            return _body(answer, cut, {})
        include_usage = bool((record.body.get("stream_options") or {}).get("include_usage"))
        failure: dict[str, Any] | None = None
        with self._lock:
            if self._faults.stream_errors > 0:
                self._faults.stream_errors -= 1
                message, error_type = self._faults.stream_error
                error = {
                    "object": "error",
                    "message": message,
                    "type": error_type,
                    "param": None,
                    "code": self._faults.stream_error_code,
                }
                failure = error if self._faults.stream_error_flat else {"error": error}

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""}, None)
            for index, token in enumerate(tokens, start=1):
                if cut and index > len(tokens) // 2:
                    raise _CutStream
                if failure is not None and index == 2:
                    yield f"data: {json.dumps(failure)}\n\n".encode()
                    yield b"data: [DONE]\n\n"
                    return
                yield chunk({"content": token}, None)
                if self._faults.token_delay_s:
                    await asyncio.sleep(self._faults.token_delay_s)
            yield chunk({}, "stop")
            if include_usage:
                last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield f"data: {json.dumps(last)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return self._stream_response(events(), {})

    async def _openai_models(self, request: Request) -> Response:
        if not self.healthy:
            return _openai_error(_Refused(503, "the server is starting", "ServiceUnavailable"))
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "aima-test", "max_model_len": 8192}
        return JSONResponse({"object": "list", "data": [card]})

    # -- common --------------------------------------------------------------------------------------------------

    async def _serve(
        self,
        record: RecordedRequest,
        respond: Callable[[str, bool], Response],
        error: Callable[[_Refused], Response],
    ) -> Response:
        """Faults first, then the answer; the request counts as in flight until its last byte is sent."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            faults = self._faults
            refusal = self._refusal(faults)
            instead: tuple[Any] | None = None
            if faults.instead > 0 and refusal is None:
                faults.instead -= 1
                instead = (faults.instead_of_answer(record.protocol),)
            invalid = faults.invalid_json > 0 and refusal is None and instead is None
            cut = faults.cut_streams > 0 and refusal is None and instead is None and not invalid
            if invalid:
                faults.invalid_json -= 1
            if cut:
                faults.cut_streams -= 1
        handed_over = False
        try:
            if refusal is not None:
                response = error(refusal)
                if faults.retry_after is not None and refusal.status in (429, 503):
                    response.headers["retry-after"] = faults.retry_after
                return response
            if instead is not None:
                if not record.stream:
                    return JSONResponse(instead[0])
                event = f"data: {json.dumps(instead[0])}\n\n".encode()
                response = _Tracked(self._stream_response(_once(event), {}), self._done)
                handed_over = True
                return response
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            text = self._answer_text(record)
            if invalid:
                text = text[: max(1, len(text) // 2)]
            response = _Tracked(respond(text, cut), self._done)
            handed_over = True
            return response
        finally:
            if not handed_over:
                self._done()

    def _refusal(self, faults: _Faults) -> _Refused | None:
        if faults.capacity is not None and self.in_flight > faults.capacity:
            return _Refused(429, "Model is overloaded", "overloaded")
        if faults.fail_requests > 0 or time.monotonic() < faults.fail_until:
            faults.fail_requests = max(0, faults.fail_requests - 1)
            message = faults.message or f"injected failure (HTTP {faults.status})"
            return _Refused(faults.status, message, faults.error_type or "unavailable")
        return None

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _answer_text(self, record: RecordedRequest) -> str:
        if self.answer is not None:
            given = self.answer(record)
            if isinstance(given, str):
                return given
            if given is not None:
                return json.dumps(given)
        if record.schema is not None:
            return json.dumps(instance_for(record.schema, record.prompt, record.question))
        words = record.question.split()[:20]
        return "You asked: " + " ".join(words) if words else "Nothing was asked."

    @staticmethod
    def _stream_response(events: AsyncIterator[bytes], headers: dict[str, str]) -> Response:
        return StreamingResponse(events, media_type="text/event-stream", headers={**headers, "x-accel-buffering": "no"})


class _Tracked(Response):
    """An answer that marks its request done just before its last byte is sent (or when it is abandoned)."""

    def __init__(self, inner: Response, done: Callable[[], None]) -> None:  # wraps `inner`: no body of its own
        self._inner = inner
        self._on_done = done
        self.raw_headers = inner.raw_headers
        self.status_code = inner.status_code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self._on_done()

        async def send_and_track(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()  # before the last byte leaves: a client may send its next request as soon as it arrives
            await send(message)

        try:
            await self._inner(scope, receive, send_and_track)
        finally:
            finish()


def _body(payload: Any, cut: bool, headers: dict[str, str]) -> Response:
    data = json.dumps(payload).encode()
    if not cut:
        return JSONResponse(payload, headers=headers)

    async def half() -> AsyncIterator[bytes]:
        yield data[: len(data) // 2]
        raise _CutStream

    return StreamingResponse(half(), media_type="application/json", headers=headers)


def _tgi_error(refused: _Refused) -> Response:
    return JSONResponse({"error": refused.message, "error_type": refused.error_type}, status_code=refused.status)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _error_payload(protocol: Protocol, message: str, error_type: str, code: int | None) -> dict[str, Any]:
    if protocol == "tgi":
        return {"error": message, "error_type": error_type, **({} if code is None else {"code": code})}
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _openai_error(refused: _Refused) -> Response:
    error = {"message": refused.message, "type": refused.error_type, "param": None, "code": refused.status}
    return JSONResponse({"error": error}, status_code=refused.status)


def _tgi_token(index: int, text: str) -> dict[str, Any]:
    return {"id": index, "text": text, "logprob": -0.1, "special": False}


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text) or [text]


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Refused(422, "Failed to deserialize the JSON body: not a JSON object", "validation")
    return body


def _decode_image(url: str) -> RecordedImage:
    match = _DATA_URI.fullmatch(url)
    if match is None:
        raise _Refused(422, f"only data: image URLs here, not {url[:40]!r}", "validation")
    try:
        return RecordedImage(match.group(1), base64.b64decode(match.group(2), validate=True))
    except binascii.Error:
        raise _Refused(422, "an image's base64 is invalid", "validation") from None


def _last_user_turn(prompt: str) -> str:
    """The text of the last user turn of a templated prompt (ChatML, Llama 3, Mistral, Vicuna), else the prompt."""
    for pattern in (
        r"<\|im_start\|>user\n(.*?)<\|im_end\|>",
        r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
        r"\[INST\] (.*?) \[/INST\]",
        r"USER: (.*?) ASSISTANT:",
    ):
        turns = re.findall(pattern, prompt, flags=re.DOTALL)
        if turns:
            return str(turns[-1])
    return prompt


# -- schema instances --------------------------------------------------------------------------------------------

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "uri": "https://example.org/",
    "email": "someone@example.org",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def instance_for(schema: Mapping[str, Any], prompt: str = "", question: str = "") -> Any:
    """A value valid for `schema` (the JSON schema subset pydantic emits: $ref/$defs, anyOf, enums, bounds; not
    ``pattern``), built deterministically; objects get their required properties only, arrays their minimum number
    of items (at least one), strings the prompt's quoted phrases in turn, else the first words of `question`."""
    phrases = [_unescape(p) for p in _QUOTED.findall(prompt)] or [" ".join(question.split()[:8]) or "text"]
    return _Builder(schema, itertools.cycle(phrases)).build(schema, 0)


def _unescape(phrase: str) -> str:
    try:
        value = json.loads(f'"{phrase}"')
    except ValueError:
        return phrase
    return str(value)


class _Builder:
    def __init__(self, root: Mapping[str, Any], phrases: Iterator[str]) -> None:
        self.root = root
        self.phrases = phrases

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in schema and seen < 32:
            target: Any = self.root
            for key in schema["$ref"].lstrip("#/").split("/"):
                target = target[key.replace("~1", "/").replace("~0", "~")]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def build(self, schema: Mapping[str, Any], depth: int, index: int = 0) -> Any:
        if depth > 64:
            raise ValueError("the schema has no small instance (required recursion)")
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.resolve(o) for o in schema[key]]
                chosen = next((o for o in options if o.get("type") != "null"), options[0])
                return self.build(chosen, depth + 1, index)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                part = self.resolve(part)
                merged = {
                    **merged,
                    **part,
                    "properties": {**merged.get("properties", {}), **part.get("properties", {})},
                    "required": [*merged.get("required", []), *part.get("required", [])],
                }
            return self.build(merged, depth + 1, index)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            properties = schema.get("properties", {})
            return {name: self.build(properties.get(name, {}), depth + 1) for name in schema.get("required", [])}
        if kind == "array":
            return self.array(schema, depth)
        if kind == "string":
            return self.string(schema, index)
        if kind in ("integer", "number"):
            return self.number(schema, kind, index)
        if kind == "boolean":
            return True
        return None

    def array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, 0 if depth > 8 else 1)
        if high is not None:
            count = min(count, int(high))
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", {})
        return [
            self.build(prefix[i] if i < len(prefix) else items if isinstance(items, Mapping) else {}, depth + 1, i)
            for i in range(count)
        ]

    def string(self, schema: Mapping[str, Any], index: int) -> str:
        value = _FORMATS.get(str(schema.get("format")), "") or next(self.phrases)
        if index:
            value = f"{value} {index + 1}"  # items of one array differ (uniqueItems)
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        if len(value) < low:
            value = value + "x" * (low - len(value))
        if high is not None:
            value = value[: int(high)]
        return value

    @staticmethod
    def number(schema: Mapping[str, Any], kind: str, index: int) -> float | int:
        integer = kind == "integer"
        low = schema.get("minimum")
        high = schema.get("maximum")
        if schema.get("exclusiveMinimum") is not None:
            bound = schema["exclusiveMinimum"]
            low = bound + 1 if integer else bound + ((high - bound) / 2 if high is not None else 1)
        if schema.get("exclusiveMaximum") is not None:
            bound = schema["exclusiveMaximum"]
            high = bound - 1 if integer else bound - ((bound - low) / 2 if low is not None else 1)
        value = low if low is not None else 0 if high is None or high >= 0 else high
        value = value + index if high is None or value + index <= high else value
        return int(value) if integer else float(value)
