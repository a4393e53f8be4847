"""GraphQL multipart requests read as a stream: the file part flows to its resolver as it arrives.

Starlette's form parser spools every file to disk before any resolver runs. Here the small fields the GraphQL
multipart request spec puts first (`operations`, `map`) are read, the file part becomes an `IncomingFile` whose
bytes the resolver pulls straight from the connection, and nothing is held whole in memory or written locally.
One file per request: files must be consumed in the order they arrive, and one is what `uploadMedia` takes.
"""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from aima.errors import InvalidInput

#: The largest `operations` or `map` field accepted.
MAX_FIELD_BYTES = 1024 * 1024

_Event = tuple[str, Any]


class MultipartError(InvalidInput):
    """The body is not a GraphQL multipart request this server accepts."""


class StreamingForm:
    """Pull-based parts over a multipart body stream."""

    def __init__(self, body: AsyncIterator[bytes], content_type: str) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise MultipartError("The multipart body has no boundary.")
        self._body = body
        self._events: collections.deque[_Event] = collections.deque()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={  # type: ignore[typeddict-item]
                "on_part_begin": lambda: self._events.append(("begin", None)),
                "on_part_data": lambda data, start, end: self._events.append(("data", bytes(data[start:end]))),
                "on_part_end": lambda: self._events.append(("end", None)),
                "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_end": lambda: self._events.append(("finished", None)),
            },
        )

    def _header_end(self) -> None:
        self._events.append(("header", (bytes(self._header_field).lower(), bytes(self._header_value))))
        self._header_field.clear()
        self._header_value.clear()

    async def _next_event(self) -> _Event:
        while not self._events:
            if self._ended:
                return ("finished", None)
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._ended = True
                continue
            if chunk:
                self._parser.write(chunk)
        return self._events.popleft()

    async def next_part(self) -> tuple[str, str | None, str | None] | None:
        """The next part's field name, file name and content type; None after the last part."""
        event = await self._next_event()
        while event[0] == "data":  # the rest of a part nobody read
            event = await self._next_event()
        if event[0] == "end":
            event = await self._next_event()
        if event[0] == "finished":
            return None
        if event[0] != "begin":
            raise MultipartError("Malformed multipart body.")
        headers: dict[bytes, bytes] = {}
        while True:
            kind, value = await self._next_event()
            if kind != "header":
                self._events.appendleft((kind, value))
                break
            headers[value[0]] = value[1]
        _, disposition = parse_options_header(headers.get(b"content-disposition"))
        name = disposition.get(b"name")
        if name is None:
            raise MultipartError("A multipart part has no name.")
        filename = disposition.get(b"filename")
        content_type = headers.get(b"content-type")
        return (
            name.decode("utf-8", "replace"),
            filename.decode("utf-8", "replace") if filename is not None else None,
            content_type.decode("latin-1") if content_type else None,
        )

    async def part_data(self) -> AsyncIterator[bytes]:
        """The current part's bytes as they arrive."""
        while True:
            kind, value = await self._next_event()
            if kind == "data":
                if value:
                    yield value
                continue
            self._events.appendleft((kind, value))
            return

    async def read_field(self, limit: int = MAX_FIELD_BYTES) -> bytes:
        data = bytearray()
        async for chunk in self.part_data():
            data += chunk
            if len(data) > limit:
                raise MultipartError(f"A multipart field is larger than {limit} bytes.")
        return bytes(data)


class IncomingFile:
    """The file part of a streamed request. Its bytes can be read once, in order, while the request arrives."""

    def __init__(self, form: StreamingForm, filename: str | None, content_type: str | None) -> None:
        self.filename = filename
        self.content_type = content_type
        self._form = form
        self._taken = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._taken:
            raise RuntimeError("an incoming file can be read once")
        self._taken = True
        async for chunk in self._form.part_data():
            yield chunk


async def read_operations(body: AsyncIterator[bytes], content_type: str) -> dict[str, Any]:
    """The GraphQL request of a multipart body, with its file in place of the mapped variable.

    Reads `operations` and `map`, then stops at the file part: the resolver reads the file from the connection.
    """
    form = StreamingForm(body, content_type)
    fields: dict[str, Any] = {}
    while "operations" not in fields or "map" not in fields:
        part = await form.next_part()
        if part is None:
            raise MultipartError("A multipart request needs the `operations` and `map` fields before its file.")
        name, filename, _ = part
        if filename is not None or name not in ("operations", "map"):
            raise MultipartError("`operations` and `map` must come first (GraphQL multipart request spec).")
        try:
            fields[name] = json.loads(await form.read_field())
        except json.JSONDecodeError as exc:
            raise MultipartError(f"The `{name}` field is not JSON.") from exc
    operations, files_map = fields["operations"], fields["map"]
    if not isinstance(operations, dict) or not isinstance(files_map, dict):
        raise MultipartError("`operations` must be a JSON object (no batching) and `map` an object.")
    if len(files_map) > 1:
        raise MultipartError("Send one file per request; for many or large files use `startUpload`.")
    for field_name, paths in files_map.items():
        part = await form.next_part()
        if part is None or part[0] != field_name or part[1] is None:
            raise MultipartError(f"The file part {field_name!r} named in `map` is missing.")
        incoming = IncomingFile(form, part[1], part[2])
        if not isinstance(paths, list) or len(paths) != 1 or not isinstance(paths[0], str):
            raise MultipartError("`map` must name one variable path per file.")
        _place(operations, paths[0], incoming)
    return operations


def _place(operations: dict[str, Any], path: str, value: IncomingFile) -> None:
    *parents, last = path.split(".")
    target: Any = operations
    try:
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise MultipartError(f"`map` names {path!r}, which `operations` does not have.") from exc
