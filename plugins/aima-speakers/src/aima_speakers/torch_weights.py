"""Reads the tensors of a PyTorch checkpoint saved in the legacy format (torch < 1.6) without importing torch.

Resemblyzer ships its voice encoder as such a file: a few small pickles, the main pickle whose persistent ids name
raw storages, the list of storage keys, then each storage as an int64 element count and its raw little-endian
bytes. Only the classes a state dict needs may be unpickled; anything else is refused, so a checkpoint cannot run
code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from aima.errors import AimaError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES: dict[str, npt.DTypeLike] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointUnreadable(AimaError):
    code = "MODEL_UNREADABLE"


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass
class _Storages:
    """Storages by key, filled after the main pickle (their bytes follow it in the file)."""

    dtypes: dict[str, np.dtype[Any]] = field(default_factory=dict)
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class _TensorRef:
    storages: _Storages
    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> npt.NDArray[Any]:
        flat = self.storages.arrays[self.key]
        if not self.size:
            return flat[self.offset : self.offset + 1].reshape(()).copy()
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if needed > flat.size:
            raise CheckpointUnreadable(f"a tensor reaches past its storage {self.key}")
        base = flat[self.offset :]
        strides = tuple(s * flat.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(base, shape=self.size, strides=strides).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: _Storages) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise CheckpointUnreadable(f"the checkpoint holds {module}.{name}, which is not part of a plain state dict")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointUnreadable(f"unknown persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointUnreadable(f"unknown storage type {storage_type!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointUnreadable("storage views are not supported")
        self._storages.dtypes[key] = storage_type.dtype
        return key

    def _rebuild_tensor(self, key: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Any:
        return _TensorRef(self._storages, key, int(offset), tuple(size), tuple(stride))


def load_state_dict(path: Path, entry: str | None = "model_state") -> dict[str, npt.NDArray[Any]]:
    """The tensors of the checkpoint's state dict (``checkpoint[entry]``, or the whole checkpoint) as numpy arrays."""
    try:
        with path.open("rb") as f:
            return _load(f, entry)
    except CheckpointUnreadable:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise CheckpointUnreadable(f"cannot read the PyTorch checkpoint {path}: {exc}") from exc


def _load(f: IO[bytes], entry: str | None) -> dict[str, npt.NDArray[Any]]:
    if f.read(2) == b"PK":
        raise CheckpointUnreadable("zip-format checkpoints (torch >= 1.6) are not supported; use the legacy format")
    f.seek(0)
    if pickle.load(f) != MAGIC_NUMBER:  # noqa: S301 (plain ints; the main pickle goes through the restricted unpickler)
        raise CheckpointUnreadable("not a PyTorch checkpoint (wrong magic number)")
    pickle.load(f)  # noqa: S301 (protocol version)
    sys_info = pickle.load(f)  # noqa: S301
    if isinstance(sys_info, Mapping) and not sys_info.get("little_endian", True):
        raise CheckpointUnreadable("big-endian checkpoints are not supported")
    storages = _Storages()
    checkpoint = _Unpickler(f, storages).load()
    keys = _Unpickler(f, storages).load()
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = storages.dtypes[key]
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise CheckpointUnreadable(f"the checkpoint ends inside storage {key}")
        storages.arrays[key] = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
    state = checkpoint[entry] if entry is not None else checkpoint
    return {str(name): value.materialize() for name, value in state.items() if isinstance(value, _TensorRef)}
