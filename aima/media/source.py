"""Where the bytes of a media file come from when it is probed: a local file, or an object read over HTTP ranges.

Uploads stream straight to S3 and are probed there, never written to the API's disk: `HttpRangeFile` reads an
object through a short-lived presigned URL with ranged GETs, behind a read buffer, so decoders that seek (the MP4
index at the end of a file) read only what they need.
"""

from __future__ import annotations

import http.client
import io
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

#: Bytes fetched per ranged GET (the read buffer in front of the connection).
RANGE_BYTES = 1024 * 1024


class MediaSource(Protocol):
    """Something a decoder can open again and again, seekable, with a known size."""

    @property
    def name(self) -> str:
        """How it may appear in logs; never shown to users."""

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO: ...


@dataclass(frozen=True)
class LocalFile:
    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def open(self) -> BinaryIO:
        return self.path.open("rb")


@dataclass(frozen=True)
class HttpRangeFile:
    """An object behind a URL that answers `Range` requests (a presigned S3 GET)."""

    url: str
    size: int
    timeout_s: float = 30.0

    @property
    def name(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    def open(self) -> BinaryIO:
        raw = _RangeReader(self.url, self.size, self.timeout_s)
        return io.BufferedReader(raw, buffer_size=RANGE_BYTES)  # type: ignore[return-value]


class _RangeReader(io.RawIOBase):
    """A seekable raw stream over HTTP: each read is one ranged GET on a kept-alive connection."""

    def __init__(self, url: str, size: int, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("only http(s) URLs can be read")
        connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._connection = connection(parts.hostname, parts.port, timeout=timeout_s)
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        end = self._pos + want - 1
        self._connection.request("GET", self._target, headers={"Range": f"bytes={self._pos}-{end}"})
        answer = self._connection.getresponse()
        data = answer.read()
        if answer.status not in (200, 206):
            raise OSError(f"ranged read failed with HTTP {answer.status}")
        if answer.status == 200:  # the server ignored the range
            data = data[self._pos : end + 1]
        view = memoryview(buffer)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._connection.close()
        super().close()
