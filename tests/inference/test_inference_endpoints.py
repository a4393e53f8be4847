"""Both protocols end to end against the test model server over a real socket: structured output, images, streaming,
health, info, credentials."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from pydantic import BaseModel, Field

from aima.errors import ModelUnavailable
from aima.inference import ImagePart, Message, UnknownEndpoint, quoted
from aima.testing.model_server import ModelServer
from tests.inference.support import MODEL, make_endpoints

JPEG = b"\xff\xd8\xff\xe0 a tiny stand-in for a keyframe \xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n stand-in"


class Finding(BaseModel):
    label: str
    confidence: float = Field(ge=0, le=1)
    box: list[int] = Field(min_length=4, max_length=4)


class Description(BaseModel):
    caption: str
    people: int = Field(ge=0, le=50)
    setting: str = Field(json_schema_extra={"enum": ["indoor", "outdoor"]})
    findings: list[Finding]
    note: str | None = None


@pytest.mark.parametrize("stream", [True, False])
async def test_structured_output_is_parsed_and_validated(server: ModelServer, protocol: str, stream: bool) -> None:
    async with make_endpoints(server.url, protocol, stream=stream) as endpoints:
        result = await endpoints.vision.generate_json(
            [Message.system("Describe the frame."), Message.user("What is in the frame? " + quoted("ocr", "red car"))],
            Description,
        )
    described = Description.model_validate(result.parsed)
    assert described.caption == "red car"  # derived from the quoted data: the input reached the model
    assert described.setting == "indoor" and len(described.findings) == 1 and len(described.findings[0].box) == 4
    assert json.loads(result.text) == result.parsed
    assert result.endpoint == endpoints.vision.name and result.model == MODEL and result.attempts == 1
    assert result.prompt_tokens and result.prompt_tokens > 5 and result.completion_tokens
    assert result.finish_reason in ("eos_token", "stop") and result.latency_s > 0
    [sent] = server.requests
    assert sent.stream is stream
    assert sent.schema == Description.model_json_schema()
    if protocol == "tgi":
        assert sent.path == ("/generate_stream" if stream else "/generate")
        assert sent.body["parameters"]["grammar"] == {"type": "json", "value": Description.model_json_schema()}
        assert sent.body["parameters"]["do_sample"] is False and "temperature" not in sent.body["parameters"]
    else:
        assert sent.path == "/v1/chat/completions"
        format_ = sent.body["response_format"]
        assert format_["type"] == "json_schema" and format_["json_schema"]["strict"] is True
        assert format_["json_schema"]["name"] == "Description"
        assert sent.body["temperature"] == 0 and sent.body["model"] == MODEL


async def test_tgi_gets_the_chat_template_and_images_inline_as_markdown(server: ModelServer) -> None:
    async with make_endpoints(server.url, "tgi") as endpoints:
        await endpoints.vision.generate_json(
            [Message.system("You describe frames."), Message.user(ImagePart(JPEG), ImagePart(PNG, "image/png"), "Q?")],
            Description,
        )
    [sent] = server.requests
    inputs = sent.body["inputs"]
    jpeg = f"![](data:image/jpeg;base64,{base64.b64encode(JPEG).decode()})"
    png = f"![](data:image/png;base64,{base64.b64encode(PNG).decode()})"
    assert inputs == (
        "<|im_start|>system\nYou describe frames.<|im_end|>\n"
        f"<|im_start|>user\n{jpeg}\n{png}\nQ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert [(i.mime, i.data) for i in sent.images] == [("image/jpeg", JPEG), ("image/png", PNG)]
    assert sent.body["parameters"]["stop"] == ["<|im_end|>"]


async def test_openai_gets_image_url_parts(server: ModelServer) -> None:
    async with make_endpoints(server.url, "openai") as endpoints:
        await endpoints.vision.generate_json(
            [Message.system("You describe frames."), Message.user("Look:", ImagePart(JPEG), "what is it?")],
            Description,
        )
    [sent] = server.requests
    system, user = sent.body["messages"]
    assert system == {"role": "system", "content": "You describe frames."}
    assert user["content"] == [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}"}},
        {"type": "text", "text": "what is it?"},
    ]
    assert [(i.mime, i.data) for i in sent.images] == [("image/jpeg", JPEG)]


async def test_image_part_from_a_keyframe_file(server: ModelServer, tmp_path: object) -> None:
    from pathlib import Path

    frame = Path(str(tmp_path)) / "frame-0001.jpg"
    frame.write_bytes(JPEG)
    part = ImagePart.from_path(frame)
    assert part.mime == "image/jpeg" and part.data == JPEG
    assert "bytes" in repr(part) and "base64" not in repr(part)


async def test_streaming_yields_the_answer_piece_by_piece(server: ModelServer, protocol: str) -> None:
    async with make_endpoints(server.url, protocol) as endpoints:
        pieces = [p async for p in endpoints.vision.stream_text([Message.user("tell me about the harbour at night")])]
    assert len(pieces) > 3
    assert "".join(pieces) == "You asked: tell me about the harbour at night"
    assert server.requests[0].stream


async def test_stream_left_early_frees_its_slot(server: ModelServer) -> None:
    async with make_endpoints(server.url, "tgi", max_concurrency=1) as endpoints:
        stream = endpoints.vision.stream_text([Message.user("a long answer please")])
        async for _ in stream:
            break
        await stream.aclose()
        result = await endpoints.vision.generate_text([Message.user("again")])  # would wait forever without a slot
    assert result.text == "You asked: again"


async def test_free_text_and_sampling_parameters(server: ModelServer, protocol: str) -> None:
    async with make_endpoints(server.url, protocol) as endpoints:
        result = await endpoints.vision.generate_text([Message.user("hello")], max_new_tokens=64, temperature=0.7)
    assert result.text == "You asked: hello" and result.parsed is None
    [sent] = server.requests
    assert sent.max_new_tokens == 64
    if protocol == "tgi":
        assert sent.body["parameters"]["do_sample"] is True and sent.body["parameters"]["temperature"] == 0.7
    else:
        assert sent.body["temperature"] == 0.7


async def test_a_dict_schema_and_a_test_supplied_answer(server: ModelServer, protocol: str) -> None:
    schema = {
        "type": "object",
        "properties": {"cites": {"type": "array", "items": {"type": "string"}}},
        "required": ["cites"],
    }
    server.answer = lambda request: {"cites": [w for w in request.question.split() if w.startswith("E")]}
    async with make_endpoints(server.url, protocol) as endpoints:
        result = await endpoints.vision.generate_json([Message.user("evidence E1 and E7 and nothing else")], schema)
    assert result.parsed == {"cites": ["E1", "E7"]}


async def test_max_new_tokens_is_bounded_by_the_endpoint(server: ModelServer) -> None:
    async with make_endpoints(server.url, "tgi", max_new_tokens=100) as endpoints:
        with pytest.raises(ValueError, match="between 1 and 100"):
            await endpoints.vision.generate_text([Message.user("x")], max_new_tokens=101)
        await endpoints.vision.generate_text([Message.user("x")])
    assert server.requests[0].max_new_tokens == 100


async def test_api_key_is_sent_and_never_shown(server: ModelServer, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-0123456789-secret"
    caplog.set_level(logging.DEBUG)
    async with make_endpoints(f"{server.url}/", "openai", api_key=secret) as endpoints:
        endpoint = endpoints.vision
        await endpoint.generate_text([Message.user("hi")])
        server.fail(503, requests=1)
        await endpoint.generate_text([Message.user("hi")])  # a retry logs a warning
        info = await endpoint.info()
    assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    assert secret not in repr(endpoint) and secret not in repr(endpoint.settings) and secret not in repr(info)
    logged = [r for r in caplog.records if r.name.startswith("aima.inference")]
    assert logged
    assert all(secret not in r.getMessage() and secret not in repr(r.__dict__) for r in logged)


async def test_health_and_readiness_checks(server: ModelServer, protocol: str) -> None:
    async with make_endpoints(server.url, protocol) as endpoints:
        name = endpoints.vision.name
        assert await endpoints.health() == {name: None}
        checks = endpoints.readiness_checks()
        assert list(checks) == [f"model:{name}"]
        await checks[f"model:{name}"]()
        server.healthy = False
        assert "503" in str((await endpoints.health())[name])
        with pytest.raises(ModelUnavailable, match="503"):
            await checks[f"model:{name}"]()


async def test_health_names_a_model_the_server_does_not_serve(server: ModelServer) -> None:
    async with make_endpoints(server.url, "openai", model="someone/other-model") as endpoints:
        problem = (await endpoints.health())[endpoints.vision.name]
    assert problem is not None and "does not serve model 'someone/other-model'" in problem and MODEL in problem


async def test_health_of_an_unreachable_server(unused_tcp_port: int) -> None:
    async with make_endpoints(f"http://127.0.0.1:{unused_tcp_port}", "tgi") as endpoints:
        problem = (await endpoints.health())[endpoints.vision.name]
    assert problem is not None and problem.startswith("unreachable")


async def test_info_reports_the_server_limits(server: ModelServer, protocol: str) -> None:
    async with make_endpoints(server.url, protocol) as endpoints:
        info = await endpoints.vision.info()
    assert info.protocol == protocol and info.model == MODEL and info.url == server.url
    assert info.max_input_tokens == (4096 if protocol == "tgi" else 8192)
    async with make_endpoints(server.url, protocol, max_input_tokens=2000) as endpoints:
        assert (await endpoints.vision.info()).max_input_tokens == 2000


async def test_unknown_endpoints_name_what_is_configured(server: ModelServer) -> None:
    async with make_endpoints(server.url, "tgi") as endpoints:
        name = endpoints.vision.name
        with pytest.raises(UnknownEndpoint, match=f"Configured endpoints: {name}"):
            endpoints.get("nope")
        with pytest.raises(UnknownEndpoint, match=r"inference\.fusion_endpoint"):
            _ = endpoints.fusion
        assert name in endpoints and list(endpoints) == [name] and len(endpoints) == 1
