"""HTTP to one model server over aiohttp: a keep-alive connection pool per endpoint, timeouts by phase, JSON and
server-sent events read cheaply, and the failures another try may cure told apart from the rest.

aiohttp rather than httpx: with 32 requests in flight, httpx's pool (httpcore) scans every connection for every
request it places and every one it ends, which cost two thirds of the client's CPU in ``bench/vision.py`` (about
5 ms per request against 200 ms answers); aiohttp hands out a kept-alive connection in constant time. Bodies go out
as bytes that orjson writes once per request (the stdlib's encoder spends ~0.6 ms on a 200 KB keyframe's base64),
and events of a stream are split from the raw bytes as they arrive, not line by line through decoders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from yarl import URL

from aima.settings import EndpointSettings

#: Idle seconds after which the client drops a kept-alive connection itself: below the 5 s after which uvicorn (vLLM,
#: SGLang) closes one, so that a request seldom goes out on a connection the server is closing at that moment.
KEEPALIVE_S = 4.0
#: A line or an event of a stream may not grow beyond this without its end (a server that never ends its lines or
#: its events).
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: Nor a whole answer (not streamed) beyond this; an error answer is read this far for its message.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
_JSON_HEADERS = {"Content-Type": "application/json"}


class Retryable(Exception):
    """A failure of one request that another may not have; `kind` labels metrics."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


def dumps(value: Any) -> bytes:
    """JSON bytes of a request body. orjson refuses lone surrogates (text decoded with ``surrogateescape``); the
    stdlib escapes them, so such text still goes out."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def loads(data: bytes | str) -> Any:
    """A JSON answer or event; `ValueError` when it is not JSON. orjson first; the stdlib for what orjson refuses but
    JSON allows (escaped lone surrogates, integers beyond 64 bits)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole (not streamed) HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class SseDecoder:
    """The data of each server-sent event (its ``data:`` lines joined by newlines), from the bytes of a response as
    they arrive; comments, other fields and keep-alive lines are skipped. A line without its end waits in a
    `bytearray` that grows in place and is searched only where new bytes arrived (a long line in small chunks costs
    time linear in its length); a line or an event beyond `MAX_EVENT_BYTES` is refused."""

    __slots__ = ("_buffer", "_data", "_size")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._size = 0  # bytes of the data lines in `_data`

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events this chunk completes."""
        buffer = self._buffer
        if b"\n" not in chunk:  # the bytes before it hold no line end either: nothing completes
            buffer += chunk
            if len(buffer) > MAX_EVENT_BYTES:
                raise Retryable("protocol", f"a stream line longer than {MAX_EVENT_BYTES} bytes")
            return []
        if buffer:
            buffer += chunk
            lines = bytes(buffer).split(b"\n")  # each byte is copied here once, when its line ends
            buffer.clear()
        else:
            lines = chunk.split(b"\n")
        buffer += lines.pop()
        if len(buffer) > MAX_EVENT_BYTES:
            raise Retryable("protocol", f"a stream line longer than {MAX_EVENT_BYTES} bytes")
        return self._events(lines)

    def end(self) -> list[bytes]:
        """What the stream's end completes: a last event without its blank line (or one cut in the middle, which
        the protocol's reader then finds unreadable)."""
        lines = [bytes(self._buffer)] if self._buffer else []
        self._buffer.clear()
        events = self._events(lines)
        if self._data:
            events.append(b"\n".join(self._data))
            self._data = []
            self._size = 0
        return events

    def _events(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
                    self._size = 0
            elif line.startswith(b"data:"):
                piece = line[6:] if line.startswith(b"data: ") else line[5:]
                self._size += len(piece) + 1
                if self._size > MAX_EVENT_BYTES:
                    raise Retryable("protocol", f"a stream event larger than {MAX_EVENT_BYTES} bytes")
                data.append(piece)
        return events


class AnswerTooLarge(ValueError):
    """A whole answer beyond `MAX_ANSWER_BYTES`: not one a model server gives."""


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES, *, cut: bool = False) -> bytes:
    """The body of a (not streamed) answer, at most `limit` bytes: `AnswerTooLarge` beyond it, or, with `cut`
    (error bodies, read for their message), the first `limit` bytes."""
    if response.content_length is not None and response.content_length > limit and not cut:
        raise AnswerTooLarge(f"the answer is larger than {limit} bytes ({response.content_length})")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            if cut:
                del body[limit:]
                break  # the connection is not reused: aiohttp closes one released unread
            raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
    return bytes(body)


class _Failures:
    """Turns transport errors into `Retryable` failures with a reason (never the URL's credentials or headers)."""

    __slots__ = ("_read_s", "_request_s")

    def __init__(self, settings: EndpointSettings) -> None:
        self._read_s = settings.read_timeout_s
        self._request_s = settings.request_timeout_s

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, aiohttp.ClientError | TimeoutError):
            return
        name = type(exc).__name__
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise Retryable("timeout", f"timed out connecting ({name})") from None
        if isinstance(exc, aiohttp.ServerTimeoutError):
            raise Retryable(
                "timeout", f"timed out waiting for the answer (nothing for read_timeout_s, {self._read_s:g} s)"
            ) from None
        if isinstance(exc, TimeoutError):  # aiohttp's total: the whole request, streamed or not
            raise Retryable(
                "timeout", f"the answer took longer than request_timeout_s ({self._request_s:g} s)"
            ) from None
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise Retryable("connection", f"cannot connect ({exc.os_error.strerror or name})") from None
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
            raise Retryable("stream_cut", f"the connection broke ({name})") from None
        if isinstance(exc, aiohttp.ClientResponseError):
            raise Retryable("protocol", f"an unreadable HTTP answer ({name}: {exc.message})") from None
        raise Retryable("connection", f"transport error ({name})") from None


class Http:
    """One endpoint's connection pool: made in the event loop that first uses it, closed by `aclose`."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self.failures = _Failures(settings)
        base = URL(settings.url)
        if settings.api_key is not None and (base.user or base.password):
            base = base.with_user(None)  # the key is the credential; aiohttp refuses both at once
        self._base = base
        self._urls: dict[str, URL] = {}
        self._session: aiohttp.ClientSession | None = None

    def url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base.with_path(self._base.path.rstrip("/") + path)
        return url

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            headers = {"User-Agent": "aima"}
            if s.api_key is not None:
                headers["Authorization"] = f"Bearer {s.api_key.get_secret_value()}"
            # Generation never waits for a connection (the endpoint's slots bound it); health checks get the two more.
            connector = aiohttp.TCPConnector(limit=s.max_concurrency + 2, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                # connect: name lookup, a pooled connection and the TCP handshake; sock_read: the longest silence
                # (between streamed tokens, or the whole generation when not streaming); total: the whole request.
                timeout=aiohttp.ClientTimeout(
                    total=s.request_timeout_s,
                    connect=s.connect_timeout_s,
                    sock_connect=s.connect_timeout_s,
                    sock_read=s.read_timeout_s,
                ),
                trust_env=False,
            )
        return self._session

    def post(self, path: str, data: bytes) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """``async with http.post(path, data) as response``: a JSON body, the session's timeouts."""
        return self.session().post(self.url(path), data=data, headers=_JSON_HEADERS)

    async def get(self, path: str, timeout_s: float | None = None) -> Reply:
        """A small answer read whole (health, info); aiohttp's errors and `TimeoutError` propagate."""
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        async with self.session().get(self.url(path), **kwargs) as response:
            return Reply(response.status, response.headers, await response.read())

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
