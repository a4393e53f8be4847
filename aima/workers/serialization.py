"""A safe serializer for arq jobs: msgpack carries plain data only, unlike arq's default pickle."""

from __future__ import annotations

from typing import Any

import msgpack


def serialize(data: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True, datetime=True)
    return packed


def deserialize(data: bytes) -> dict[str, Any]:
    unpacked: dict[str, Any] = msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=False)
    return unpacked
