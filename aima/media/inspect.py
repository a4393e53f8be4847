"""Probing untrusted uploads in child processes, under a memory limit and a time limit.

A crafted file can make a decoder allocate without bound or spin; in a child process with `RLIMIT_AS` set, that
costs the child, never the API. The child reads the stored object itself over a presigned URL (`HttpRangeFile`),
so the upload never touches the API's disk. A probe that overruns its time is killed with its pool, which is
then replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import resource
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from aima.errors import AimaError, CorruptMedia, EmptyUpload, UnsupportedMedia
from aima.media.probe import DEFAULT_MAX_PIXELS, MediaProbe, probe_file, sniff_source
from aima.media.source import HttpRangeFile, MediaSource

logger = logging.getLogger(__name__)

_ERRORS: dict[str, type[AimaError]] = {
    CorruptMedia.code: CorruptMedia,
    UnsupportedMedia.code: UnsupportedMedia,
    EmptyUpload.code: CorruptMedia,
}


@dataclass(frozen=True)
class Inspection:
    """What probing found, and the perceptual hash of a still image."""

    probe: MediaProbe
    phash: int | None


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT hash (pHash): the sign of the lowest 8x8 frequencies against their median, as a signed int64.

    Robust to rescaling, recompression and small edits; near-duplicates differ in few bits.
    """
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    n = 32
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    low = (basis @ grey @ basis.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value  # fits PostgreSQL's BIGINT


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def inspect_source(source: MediaSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Inspection:
    """Sniff (again, with seeking), probe, and hash a still image (runs inside the children, and in tests)."""
    sniffed = sniff_source(source)
    probe = probe_file(source, sniffed, max_pixels=max_pixels)
    phash = None
    if probe.image is not None and sniffed.format in {"jpeg", "png", "gif", "webp", "tiff"}:
        with source.open() as f, Image.open(f) as im:
            if im.format == "JPEG":
                im.draft("RGB", (256, 256))
            phash = perceptual_hash(im)
    return Inspection(probe=probe, phash=phash)


def _limit_child(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    os.nice(5)  # uploads wait on probing, but the API's other requests come first


def _inspect_in_child(url: str, size: int, max_pixels: int) -> tuple[str, Any]:
    """Runs in a child: ("ok", probe JSON, phash) or ("error", code, message); exceptions do not cross as such."""
    try:
        found = inspect_source(HttpRangeFile(url, size), max_pixels)
        return "ok", (found.probe.model_dump(mode="json"), found.phash)
    except AimaError as exc:
        return "error", (exc.code, exc.message)
    except MemoryError:
        return "error", (UnsupportedMedia.code, "The file needs more memory to decode than uploads are allowed.")


class Inspector:
    """A pool of probing processes. Use as an async context manager; `inspect` probes one stored object."""

    def __init__(self, *, processes: int, memory_mb: int, timeout_s: float, max_pixels: int) -> None:
        self._processes = processes
        self._memory_bytes = memory_mb * 1024 * 1024
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process with threads and an event loop
            initializer=_limit_child,
            initargs=(self._memory_bytes,),
            max_tasks_per_child=200,
        )

    async def __aenter__(self) -> Inspector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def inspect(self, url: str, size: int) -> Inspection:
        """Probe the object behind a presigned URL in a child process."""
        if size == 0:
            raise EmptyUpload()
        if self._pool is None:
            self._pool = self._new_pool()
        pool = self._pool
        future = asyncio.get_running_loop().run_in_executor(pool, _inspect_in_child, url, size, self.max_pixels)
        try:
            outcome, value = await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            self._kill(pool)
            raise UnsupportedMedia(
                f"The file took longer than {self.timeout_s:g} s to decode; it was refused as unsafe."
            ) from None
        except concurrent.futures.process.BrokenProcessPool:
            self._kill(pool)
            raise UnsupportedMedia("The file could not be decoded within the memory allowed for uploads.") from None
        if outcome == "error":
            code, message = value
            raise _ERRORS.get(code, CorruptMedia)(message)
        probe_json, phash = value
        return Inspection(probe=MediaProbe.model_validate(probe_json), phash=phash)

    def _kill(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        """Stop a pool whose child overran or died; the next probe starts a new one."""
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        if self._pool is pool:
            self._pool = None
        logger.warning("probing pool replaced after a child overran its limits")
