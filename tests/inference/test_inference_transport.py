"""The HTTP transport: server-sent events split from raw bytes, JSON written once per request, images encoded once,
kept-alive connections, and credentials from the URL or the key."""

from __future__ import annotations

import base64
import json
import time

import pytest

from aima.errors import ModelUnavailable
from aima.inference import ImagePart, Message, ModelError
from aima.inference.transport import MAX_ANSWER_BYTES, Retryable, SseDecoder, dumps, loads
from aima.inference.wire import OpenAIWire, TgiWire
from aima.testing.model_server import ModelServer
from tests.inference.support import make_endpoints


def test_sse_events_across_chunks_crlf_comments_and_multiline_data() -> None:
    decoder = SseDecoder()
    stream = b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\nevent: x\ndata: first\ndata:second\n\ndata: [DONE]'
    events: list[bytes] = []
    for cut in range(0, len(stream), 7):  # in pieces that split lines and events anywhere
        events += decoder.feed(stream[cut : cut + 7])
    events += decoder.end()
    assert events == [b'{"a": 1}', b"first\nsecond", b"[DONE]"]
    assert decoder.end() == []


def test_sse_refuses_a_line_without_end() -> None:
    decoder = SseDecoder()
    with pytest.raises(Retryable, match="stream line longer"):
        for _ in range(20):
            decoder.feed(b"x" * 1024 * 1024)


def test_json_bodies_are_written_once_and_still_take_odd_text() -> None:
    wire = TgiWire("chatml")
    request = wire.request([Message.user("hello")], schema=None, max_new_tokens=5, temperature=0, stream=False)
    assert request.data is request.data and json.loads(request.data) == request.body
    odd = "broken \udcff name"  # a file name decoded with surrogateescape: orjson refuses it, the stdlib escapes it
    assert json.loads(dumps({"text": odd})) == {"text": odd}
    assert loads(b'{"a": "\\ud800"}') == {"a": "\ud800"}


def test_an_image_is_encoded_once_and_inlined_without_change() -> None:
    picture = b"\xff\xd8\xff picture"
    part = ImagePart(picture)
    assert part.data_uri() is part.data_uri()
    assert part.data_uri() == f"data:image/jpeg;base64,{base64.b64encode(picture).decode()}"
    tgi = TgiWire("chatml").request(
        [Message.user(part, "Q?")], schema=None, max_new_tokens=5, temperature=0, stream=True
    )
    assert f"![]({part.data_uri()})\nQ?" in tgi.body["inputs"]
    openai = OpenAIWire("m").request([Message.user(part)], schema=None, max_new_tokens=5, temperature=0, stream=False)
    assert openai.body["messages"][0]["content"][0]["image_url"]["url"] == part.data_uri()


@pytest.mark.parametrize("stream", [True, False])
async def test_requests_reuse_a_kept_alive_connection(server: ModelServer, protocol: str, stream: bool) -> None:
    async with make_endpoints(server.url, protocol, stream=stream) as endpoints:
        for _ in range(5):
            await endpoints.vision.generate_text([Message.user("again")])
        connector = endpoints.vision._http.session().connector
        assert connector is not None
        assert sum(len(kept) for kept in connector._conns.values()) == 1  # one connection served all five
    assert server.count() == 5


async def test_credentials_in_the_url_unless_a_key_is_set(server: ModelServer) -> None:
    host = server.url.removeprefix("http://")
    async with make_endpoints(f"http://user:pass@{host}", "tgi") as endpoints:
        await endpoints.vision.generate_text([Message.user("hi")])
    basic = base64.b64encode(b"user:pass").decode()
    assert server.requests[-1].headers["authorization"] == f"Basic {basic}"
    async with make_endpoints(f"http://user:pass@{host}", "tgi", api_key="sk-key") as endpoints:
        await endpoints.vision.generate_text([Message.user("hi")])
        assert "pass" not in repr(endpoints.vision)
    assert server.requests[-1].headers["authorization"] == "Bearer sk-key"


def test_sse_a_long_line_in_small_chunks_costs_linear_time() -> None:
    decoder = SseDecoder()
    chunk = b"x" * 1024
    started = time.perf_counter()
    decoder.feed(b"data: ")
    for _ in range(8 * 1024):  # 8 MiB in 1 KiB chunks: copying the buffer on every chunk took about 25 s
        assert decoder.feed(chunk) == []
    assert decoder.feed(b"\n\n") == [b"x" * 8 * 1024 * 1024]
    assert time.perf_counter() - started < 2


def test_sse_refuses_an_event_without_end() -> None:
    decoder = SseDecoder()
    line = b"data: " + b"y" * 1023 + b"\n"  # data lines, never the blank line that ends the event
    with pytest.raises(Retryable, match="stream event larger than 16777216 bytes"):
        for _ in range(17 * 1024):
            decoder.feed(line)
    decoder = SseDecoder()  # below the limit, the same lines make one event
    events = [e for _ in range(1024) for e in decoder.feed(line)] + decoder.feed(b"\n")
    assert len(events) == 1 and len(events[0]) == 1024 * 1024 - 1


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_beyond_the_size_limit_is_refused(server: ModelServer, stream: bool) -> None:
    server.odd_answer({"generated_text": "x" * (MAX_ANSWER_BYTES + 1)})
    async with make_endpoints(server.url, "tgi", stream=stream, max_attempts=1) as endpoints:
        if stream:  # one event beyond the limit: an unreadable stream, like any other
            with pytest.raises(ModelUnavailable, match=r"a stream (line|event) (longer|larger) than 16777216 bytes"):
                await endpoints.vision.generate_text([Message.user("hi")])
        else:
            with pytest.raises(ModelError, match="unexpected answer: the answer is larger than 16777216 bytes"):
                await endpoints.vision.generate_text([Message.user("hi")])
        server.wait_idle()
        assert (await endpoints.vision.generate_text([Message.user("hi")])).text == "You asked: hi"
