"""The test model server itself: answers valid for pydantic's schemas, TGI's routes as the real server shapes them,
and (where the `text-generation` client is installed) what TGI's own client makes of it."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from aima.testing.model_server import ModelServer, instance_for


class Kind(enum.StrEnum):
    PERSON = "person"
    VEHICLE = "vehicle"


class Box(BaseModel):
    x: Annotated[int, Field(ge=0)]
    y: Annotated[int, Field(gt=10, lt=20)]
    w: Annotated[float, Field(gt=0, le=1)]


class Citation(BaseModel):
    evidence_id: str = Field(min_length=3, max_length=5)
    quote: str


class Node(BaseModel):
    label: str
    children: list[Node]  # required: the instance stops recursing with an empty list
    depth: int = Field(ge=1, le=1)


class Report(BaseModel):
    kind: Kind
    mode: Literal["fast", "careful"]
    seen_at: datetime
    boxes: list[Box] = Field(min_length=2)
    corners: tuple[int, str]
    tags: set[str] = Field(min_length=3)
    citation: Citation | None
    scores: dict[str, float]
    tree: Node
    confidence: float = Field(ge=0.5, le=0.9)
    flagged: bool


def test_instances_validate_against_pydantic_schemas() -> None:
    value = instance_for(Report.model_json_schema(), 'The note says "harbour at dusk".', "what is it")
    report = Report.model_validate(value)
    assert report.kind is Kind.PERSON and report.mode == "fast" and report.flagged
    assert 10 < report.boxes[0].y < 20 and 0 < report.boxes[0].w <= 1 and len(report.tags) == 3
    assert report.citation is not None and report.citation.quote == "harbour at dusk"
    assert 0.5 <= report.confidence <= 0.9
    assert report.tree.children and report.tree.depth == 1


def test_a_schema_without_a_finite_instance_is_refused() -> None:
    schema = {
        "$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}, "required": ["n"]}},
        "$ref": "#/$defs/N",
    }
    with pytest.raises(ValueError, match="no small instance"):
        instance_for(schema)


def test_strings_come_from_the_question_without_quotes() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    value = instance_for(schema, "no quotes here", "describe the   red car please")
    assert value == {"a": "describe the red car please"}


async def test_tgi_root_answers_a_list_and_generate_an_object(server: ModelServer) -> None:
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 20, "details": True}}
    async with httpx.AsyncClient(base_url=server.url) as client:
        root = await client.post("/", json=body)
        generate = await client.post("/generate", json=body)
        bad = await client.post("/generate", json={"inputs": ""})
    assert isinstance(root.json(), list) and root.json()[0]["generated_text"] == "You asked: hello"
    assert generate.json()["generated_text"] == "You asked: hello"
    assert generate.json()["details"]["generated_tokens"] == int(generate.headers["x-generated-tokens"])
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
    assert server.count() == 2 and server.count("/") == 1


async def test_the_official_tgi_client_reads_the_server(server: ModelServer) -> None:
    """TGI's `text-generation` client (scripts/bootstrap installs it with the dev extra) against the test server:
    the wire format is TGI's."""
    text_generation = pytest.importorskip("text_generation")
    from text_generation.types import Grammar

    client = text_generation.AsyncClient(server.url)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    answer = await client.generate('say "hi"', max_new_tokens=30, grammar=Grammar(type="json", value=schema))
    assert answer.generated_text == '{"a": "hi"}' and answer.details.generated_tokens > 0
    events = [e async for e in client.generate_stream("hello world", max_new_tokens=30)]
    assert events[-1].generated_text == "You asked: hello world"
    assert "".join(e.token.text for e in events) == "You asked: hello world"
