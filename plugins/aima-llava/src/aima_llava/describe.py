"""Describing keyframes on a model endpoint: one request per keyframe, one repair attempt per invalid answer, as
many keyframes at once as the endpoint has slots.

One keyframe per request because one LLaVA-1.6 picture already fills most of a 4k context. The endpoint bounds the
requests in flight across the whole process; the pool here is as large as that bound, so that a long video keeps every
slot busy without reading all its keyframes into memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aima.analysis import Keyframe
from aima.concurrency import task_group
from aima.errors import AimaError, CorruptMedia
from aima.inference import Endpoint, GenerationResult, ImagePart, InvalidModelOutput
from aima.vision import FrameDescription
from aima_llava.prompts import describe_messages, question, repair_messages
from aima_llava.settings import LlavaSettings

logger = logging.getLogger(__name__)

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"WEBP", 8, "image/webp"),
)


class InvalidDescription(AimaError):
    """The model answered JSON that does not fit the description schema, even after it was asked to correct it."""

    code = "INVALID_MODEL_OUTPUT"

    def __init__(self, index: int, keyframe: Keyframe, problem: str) -> None:
        super().__init__(
            f"The vision model did not describe keyframe {index} (at {keyframe.timestamp_s:.2f} s) with valid JSON, "
            f"even after one repair request: {problem}"
        )
        self.index = index
        self.problem = problem


class UnreadableKeyframe(CorruptMedia):
    """A keyframe's file could not be read or holds no picture the model can be sent (an empty file, a GIF)."""

    def __init__(self, index: int, keyframe: Keyframe, problem: str) -> None:
        super().__init__(f"Keyframe {index} (at {keyframe.timestamp_s:.2f} s) {problem}")
        self.index = index
        self.problem = problem


#: Why a keyframe was left without a description.
KeyframeFailure = InvalidDescription | UnreadableKeyframe


@dataclass(frozen=True)
class Described:
    """One keyframe's description and what it took."""

    index: int
    keyframe: Keyframe
    description: FrameDescription
    model: str
    repaired: bool
    completion_tokens: int


@dataclass(frozen=True)
class Outcome:
    described: list[Described]
    #: Keyframes left without a description (only with `keep_partial`), with the reason.
    failed: list[KeyframeFailure]


def image_of(index: int, keyframe: Keyframe) -> ImagePart:
    """The keyframe's picture as it is sent: its bytes and the type its first bytes say (not its name)."""
    try:
        data = keyframe.path.read_bytes()
    except OSError as exc:
        raise UnreadableKeyframe(index, keyframe, f"could not be read: {exc.strerror or exc}") from exc
    for signature, offset, mime in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return ImagePart(data, mime)
    raise UnreadableKeyframe(index, keyframe, f"is not a JPEG, PNG or WebP picture ({len(data)} bytes).")


async def describe_keyframe(
    endpoint: Endpoint, index: int, keyframe: Keyframe, ask: str, settings: LlavaSettings
) -> Described:
    """One keyframe's description; an invalid answer gets one repair request, then `InvalidDescription`. A keyframe
    without a picture raises `UnreadableKeyframe`; `ModelUnavailable` (and the endpoint's other errors) propagate
    as they are."""
    # Read inline: a keyframe is a small local JPEG (tens to hundreds of KB), and a thread hop per frame costs more
    # under load than the read (it lowered the endpoint's achieved concurrency by 4-6 points in bench/vision.py).
    image = image_of(index, keyframe)
    limit = endpoint.settings.max_new_tokens
    tokens = min(settings.max_new_tokens or limit, limit)
    repaired = False
    try:
        result = await endpoint.generate_json(describe_messages(image, ask), FrameDescription, max_new_tokens=tokens)
    except InvalidModelOutput as invalid:
        logger.info("keyframe %d: the answer does not fit the schema; asking once for a corrected one", index)
        cut = invalid.result.finish_reason == "length"
        messages = repair_messages(
            image, ask, invalid.text, invalid.problem, cut=cut, quote_chars=settings.repair_quote_chars
        )
        try:
            result = await endpoint.generate_json(messages, FrameDescription, max_new_tokens=tokens)
        except InvalidModelOutput as again:
            raise InvalidDescription(index, keyframe, again.problem) from None
        repaired = True
    return _described(index, keyframe, result, repaired)


def _described(index: int, keyframe: Keyframe, result: GenerationResult[FrameDescription], repaired: bool) -> Described:
    return Described(index, keyframe, result.value, result.model, repaired, result.completion_tokens or 0)


async def describe_keyframes(
    endpoint: Endpoint,
    keyframes: list[Keyframe],
    settings: LlavaSettings,
    *,
    video: bool,
    progress: Callable[[int, int], None],
) -> Outcome:
    """Every keyframe described, at most the endpoint's `max_concurrency` at once, in time order of sending;
    `progress(done, total)` after each. The first failure cancels the rest and is raised (an invalid description or
    an unreadable keyframe only without `keep_partial`: with it, that keyframe is listed in `failed`)."""
    total = len(keyframes)
    pending: Iterator[tuple[int, Keyframe]] = iter(sorted(enumerate(keyframes), key=lambda p: p[1].timestamp_s))
    described: list[Described] = []
    failed: list[KeyframeFailure] = []

    async def work() -> None:
        for index, keyframe in pending:  # one iterator shared by the pool: each keyframe is taken once
            try:
                described.append(
                    await describe_keyframe(
                        endpoint, index, keyframe, question(index, keyframe, total, video), settings
                    )
                )
            except (InvalidDescription, UnreadableKeyframe) as failure:
                if not settings.keep_partial:
                    raise
                logger.warning("%s", failure.message)
                failed.append(failure)
            progress(len(described) + len(failed), total)

    async with task_group() as group:  # raises the first failure; the others were its consequences or cancelled
        for _ in range(min(endpoint.settings.max_concurrency, total)):
            group.create_task(work())
    return Outcome(described, failed)
