"""HEIF item boxes: the few ISO-BMFF structures read to find a HEIF file's items, their types, data and properties.

ffmpeg decodes the coded images but does not say which item is the primary one, how a grid lays out its tiles, or
where the EXIF item lies, so `aima.media.probe` and `aima.media.derive` read those from the top-level ``meta`` box:
``pitm`` (primary item), ``iinf`` (item types), ``iloc`` (item locations), ``idat`` (item data kept in the box) and
``iprp`` (item properties, associated with items by ``ipma``).

The input is untrusted. The ``meta`` box is read whole only when it is at most `MAX_META_BOX` bytes and among the
first `MAX_TOP_LEVEL_BOXES` boxes; item, association and extent counts are capped; a field that runs past the data
raises `ValueError`, `struct.error` or `IndexError`, which callers catch (with `OSError`) and treat as "no item
boxes".
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

#: A ``meta`` box larger than this is not read.
MAX_META_BOX = 4 * 1024 * 1024
#: How many top-level boxes are looked at while looking for one.
MAX_TOP_LEVEL_BOXES = 64
#: Entries of ``iloc`` and ``ipma`` read at most; the rest are ignored.
MAX_ITEMS = 10_000
#: Extents of all the items of one ``iloc`` box together; more is an error.
MAX_EXTENTS = 65_536

#: A box inside a byte string: its type and where its payload starts and ends.
Box = tuple[bytes, int, int]


@dataclass(frozen=True)
class ItemLocation:
    """Where an item's data lies, from the ``iloc`` box."""

    item: int
    #: Construction method: 0, offsets into the file; 1, offsets into the ``idat`` box; 2, item references.
    method: int
    #: (offset, length) pairs, the base offset already added.
    extents: list[tuple[int, int]]


def read_top_level_box(f: BinaryIO, wanted: bytes, file_size: int) -> bytes | None:
    """The payload of the first top-level box of this type (None when absent, too far in or above `MAX_META_BOX`)."""
    pos = 0
    for _ in range(MAX_TOP_LEVEL_BOXES):
        if pos + 8 > file_size:
            return None
        f.seek(pos)
        header = f.read(16)
        if len(header) < 8:
            return None
        size, kind = struct.unpack_from(">I4s", header)
        header_len = 8
        if size == 1:
            size, header_len = struct.unpack_from(">Q", header, 8)[0], 16
        elif size == 0:
            size = file_size - pos
        if size < header_len:
            return None
        if kind == wanted:
            length = size - header_len
            if length > MAX_META_BOX:
                return None
            f.seek(pos + header_len)
            return f.read(length)
        pos += size
    return None


def boxes(data: bytes, start: int, end: int) -> Iterator[Box]:
    """Child boxes in data[start:end] as (type, payload start, payload end); stops at the first one that overruns."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header_len = 8
        if size == 1:
            size, header_len = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header_len or pos + size > end:
            return
        yield kind, pos + header_len, pos + size
        pos += size


@dataclass(frozen=True)
class MetaBox:
    """The payload of a file's top-level ``meta`` box and where its child boxes lie (the last of each type)."""

    data: bytes
    children: dict[bytes, tuple[int, int]]

    @classmethod
    def read(cls, f: BinaryIO, file_size: int) -> MetaBox | None:
        """The file's ``meta`` box; None when it has none that may be read (see `read_top_level_box`)."""
        data = read_top_level_box(f, b"meta", file_size)
        if data is None:
            return None
        # meta is a full box: its children follow the version and flags.
        return cls(data, {kind: (start, end) for kind, start, end in boxes(data, 4, len(data))})

    def primary_item(self) -> int | None:
        """The primary item's id, from ``pitm``; None without one."""
        if b"pitm" not in self.children:
            return None
        data, (start, _end) = self.data, self.children[b"pitm"]
        return _uint(data, start + 4, 2 if data[start] == 0 else 4)

    def item_types(self) -> list[tuple[int, bytes]]:
        """(item id, item type) of each ``infe`` entry of ``iinf``, in file order; versions before 2 are skipped."""
        if b"iinf" not in self.children:
            return []
        data, (start, end) = self.data, self.children[b"iinf"]
        items = []
        for kind, s, _e in boxes(data, start + (6 if data[start] == 0 else 8), end):
            if kind != b"infe" or data[s] < 2:
                continue
            if data[s] == 2:
                item, item_type = _uint(data, s + 4, 2), data[s + 8 : s + 12]
            else:
                item, item_type = _uint(data, s + 4, 4), data[s + 10 : s + 14]
            items.append((item, item_type))
        return items

    def locations(self) -> Iterator[ItemLocation]:
        """The entries of ``iloc`` in file order (at most `MAX_ITEMS`), parsed as they are taken."""
        if b"iloc" not in self.children:
            return
        data, (start, _end) = self.data, self.children[b"iloc"]
        version = data[start]
        pos = start + 4
        offset_size, length_size = data[pos] >> 4, data[pos] & 0x0F
        base_offset_size = data[pos + 1] >> 4
        index_size = data[pos + 1] & 0x0F if version in (1, 2) else 0
        pos += 2
        id_size = 2 if version < 2 else 4
        count = _uint(data, pos, id_size)
        pos += id_size
        extents_left = MAX_EXTENTS
        for _ in range(min(count, MAX_ITEMS)):
            item = _uint(data, pos, id_size)
            pos += id_size
            method = 0
            if version in (1, 2):
                method = _uint(data, pos, 2) & 0x0F
                pos += 2
            pos += 2  # data_reference_index
            base = _uint(data, pos, base_offset_size)
            pos += base_offset_size
            extent_count = _uint(data, pos, 2)
            pos += 2
            extents_left -= extent_count
            if extents_left < 0:
                raise ValueError("too many extents in iloc box")
            extents = []
            for _ in range(extent_count):
                pos += index_size
                offset = _uint(data, pos, offset_size)
                pos += offset_size
                length = _uint(data, pos, length_size)
                pos += length_size
                extents.append((base + offset, length))
            yield ItemLocation(item, method, extents)

    def properties(self, item: int) -> Iterator[Box]:
        """The ``ipco`` properties ``ipma`` associates with an item, in association order, parsed as they are taken."""
        if b"iprp" not in self.children:
            return
        data = self.data
        inner = {kind: (s, e) for kind, s, e in boxes(data, *self.children[b"iprp"])}
        if b"ipco" not in inner or b"ipma" not in inner:
            return
        properties = list(boxes(data, *inner[b"ipco"]))
        start, _end = inner[b"ipma"]
        version, flags = data[start], int.from_bytes(data[start + 1 : start + 4], "big")
        pos = start + 4
        count = _uint(data, pos, 4)
        pos += 4
        id_size = 2 if version < 1 else 4
        for _ in range(min(count, MAX_ITEMS)):
            item_id = _uint(data, pos, id_size)
            pos += id_size
            n = data[pos]
            pos += 1
            for _ in range(n):
                if flags & 1:
                    index = _uint(data, pos, 2) & 0x7FFF
                    pos += 2
                else:
                    index = data[pos] & 0x7F
                    pos += 1
                if item_id == item and 0 < index <= len(properties):
                    yield properties[index - 1]

    def idat(self) -> bytes:
        """The payload of the ``idat`` box (empty without one): the data of items with construction method 1."""
        if b"idat" not in self.children:
            return b""
        start, end = self.children[b"idat"]
        return self.data[start:end]


def read_item(f: BinaryIO, idat: bytes, location: ItemLocation, *, max_bytes: int) -> bytes | None:
    """An item's data, from the file (method 0) or `idat` (method 1); None for other methods or above `max_bytes`."""
    if location.method not in (0, 1):
        return None
    chunks = []
    total = 0
    for offset, length in location.extents:
        total += length
        if total > max_bytes:
            return None
        if location.method == 1:
            chunks.append(idat[offset : offset + length])
        else:
            f.seek(offset)
            chunks.append(f.read(length))
    return b"".join(chunks)


def _uint(data: bytes, pos: int, size: int) -> int:
    """A big-endian unsigned field of 0, 2, 4 or 8 bytes (0: the field is absent, and reads as 0)."""
    if size not in (0, 2, 4, 8) or pos + size > len(data):
        raise ValueError("bad field size in HEIF item box")
    return int.from_bytes(data[pos : pos + size], "big")
