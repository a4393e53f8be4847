"""The checks an analyzer's outputs pass before anything is stored (no servers: `outputs.prepare` alone)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from aima.analysis import AnalysisOutput, Embedder, Embedding, OutputFile, SearchableText
from aima.services import outputs
from aima.services.outputs import InvalidOutput, prepare


class Result(BaseModel):
    value: int = 1


class Constant(Embedder):
    """Every text the same unit vector; `count` vectors per call when set (a broken embedder)."""

    name = "constant"
    dimension = 384

    def __init__(self, count: int | None = None) -> None:
        self.count = count
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(len(texts))
        return [[1.0] + [0.0] * 383 for _ in range(len(texts) if self.count is None else self.count)]


def face(key: str = "face-0", vector: Any = None, **fields: Any) -> Embedding:
    return Embedding("face_embeddings", key, [0.5] * 512 if vector is None else vector, fields)


async def checked(output: AnalysisOutput, embedder: Embedder | None = None) -> outputs.Outputs:
    return await prepare(output, analyzer="faces", embedder=embedder or Constant())


async def test_a_bare_model_has_nothing_beside_it_and_replaces_nothing() -> None:
    prepared = await prepare(Result(value=3), analyzer="faces", embedder=None)
    assert (prepared.payload, prepared.rows, prepared.files, prepared.replaces) == ({"value": 3}, [], [], False)


async def test_texts_are_embedded_in_batches_blank_ones_left_out_long_ones_cut() -> None:
    embedder = Constant()
    texts = [SearchableText(f"s{i}", f"line {i}", start_s=i, end_s=i + 1) for i in range(70)]
    texts += [SearchableText("blank", "  \n"), SearchableText("long", "x" * 5000, fields={"lang": "en"})]
    prepared = await checked(AnalysisOutput(Result(), texts=texts), embedder)
    assert embedder.calls == [64, 7]
    assert prepared.replaces and len(prepared.rows) == 71
    first, long = prepared.rows[0], prepared.rows[-1]
    assert (first.collection, first.key, first.fields) == (
        "text_embeddings",
        "s0",
        {"text": "line 0", "start_s": 0.0, "end_s": 1.0},
    )
    assert (long.key, len(long.fields["text"]), long.fields["lang"]) == ("long", outputs.MAX_TEXT_CHARS, "en")


async def test_without_an_embedder_texts_are_counted_not_embedded() -> None:
    output = AnalysisOutput(Result(), embeddings=[face()], texts=[SearchableText("s0", "hello")])
    prepared = await prepare(output, analyzer="faces", embedder=None)
    assert ([r.key for r in prepared.rows], prepared.unembedded) == (["face-0"], 1)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            AnalysisOutput(Result(), embeddings=[Embedding("faces", "f", [1.0])]),
            "Analyzer faces made an embedding for 'faces', which is none of face_embeddings, voice_embeddings, "
            "text_embeddings.",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(vector=[1.0] * 511)]),
            "Analyzer faces made a 511-dimensional vector (embedding 'face-0') for face_embeddings, which holds "
            "512-dimensional vectors.",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(vector=[math.nan] * 512)]),
            "Analyzer faces made a vector (embedding 'face-0') for face_embeddings with values that are not finite.",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(vector=[0.0] * 512)]),
            "Analyzer faces made a zero vector (embedding 'face-0') for face_embeddings; it has no direction to "
            "compare.",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(), face()]),
            "Analyzer faces made two embeddings with the key 'face-0' for face_embeddings.",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(media_id="x")]),
            "Analyzer faces gave embedding 'face-0' the fields media_id, which the worker sets itself.",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(when=object())]),
            "Analyzer faces gave embedding 'face-0' fields that are not plain JSON values (Object of type object "
            "is not JSON serializable).",
        ),
        (
            AnalysisOutput(Result(), embeddings=[face(key="")]),
            "Analyzer faces gave an embedding the key ''; keys are 1 to 200 printable characters.",
        ),
        (
            AnalysisOutput(
                Result(),
                embeddings=[Embedding("text_embeddings", "s0", [1.0] * 384)],
                texts=[SearchableText("s0", "hello")],
            ),
            "Analyzer faces used the key 's0' twice for text_embeddings (texts and embeddings).",
        ),
        (
            AnalysisOutput(Result(), texts=[SearchableText("s0", "hello", start_s=math.inf)]),
            "Analyzer faces gave text 's0' a start_s that is not finite.",
        ),
        (
            AnalysisOutput(Result(), files=[OutputFile("../escape.jpg", b"x", "image/jpeg")]),
            "Analyzer faces named a file '../escape.jpg'; names are letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, in up to 4 '/'-separated parts.",
        ),
        (
            AnalysisOutput(Result(), files=[OutputFile("a.jpg", b"x", "image/jpeg")] * 2),
            "Analyzer faces made two files named 'a.jpg'.",
        ),
        (
            AnalysisOutput(Result(), files=[OutputFile("a.jpg", b"", "image/jpeg")]),
            "Analyzer faces made the file 'a.jpg' without data (bytes).",
        ),
        (
            AnalysisOutput(Result(), files=[OutputFile("a.jpg", b"x", "jpeg")]),
            "Analyzer faces gave the file 'a.jpg' the content type 'jpeg'.",
        ),
    ],
)
async def test_output_that_cannot_be_stored_is_refused_with_a_clear_message(
    output: AnalysisOutput, message: str
) -> None:
    with pytest.raises(InvalidOutput) as raised:
        await checked(output)
    assert (raised.value.code, raised.value.message) == ("INVALID_ANALYZER_OUTPUT", message)


async def test_a_broken_embedder_is_named() -> None:
    with pytest.raises(InvalidOutput, match=r"^Embedder constant returned 1 vectors for 2 texts\.$"):
        await checked(AnalysisOutput(Result(), texts=[SearchableText("a", "x"), SearchableText("b", "y")]), Constant(1))


async def test_a_result_too_large_for_a_document_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "MAX_PAYLOAD_BYTES", 100)

    class Big(BaseModel):
        text: str = "x" * 200

    with pytest.raises(InvalidOutput) as raised:
        await prepare(Big(), analyzer="faces", embedder=None)
    assert raised.value.code == "RESULT_TOO_LARGE"


def test_ids_are_stable_and_fit_the_primary_key() -> None:
    first = outputs.vector_id("6f1f6c4e-0000-4000-8000-000000000000", "faces", "face-0")
    assert first == outputs.vector_id("6f1f6c4e-0000-4000-8000-000000000000", "faces", "face-0")
    assert len(first) == 64 and first != outputs.vector_id("6f1f6c4e-0000-4000-8000-000000000000", "faces", "face-1")
