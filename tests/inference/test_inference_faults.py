"""Every fault a model server shows, against the test server: what is retried, what waits, what fails for good, and
what the metrics say."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from aima.errors import AimaError, ModelUnavailable
from aima.inference import InvalidModelOutput, Message, ModelError, PromptTooLong
from aima.testing.model_server import ModelServer
from tests.inference.support import make_endpoints, metric


class Verdict(BaseModel):
    summary: str
    score: int


ASK = [Message.system("Judge."), Message.user("judge this")]


@pytest.mark.parametrize("stream", [True, False])
async def test_503_then_recovery_within_the_retries(server: ModelServer, protocol: str, stream: bool) -> None:
    server.fail(503, requests=2)
    async with make_endpoints(server.url, protocol, stream=stream, max_attempts=3) as endpoints:
        result = await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert result.attempts == 3 and server.count() == 3
    assert Verdict.model_validate(result.parsed).summary == "judge this"
    assert metric("aima_inference_errors_total", endpoint=name, kind="unavailable") == 2
    assert metric("aima_inference_request_duration_seconds_count", endpoint=name, outcome="unavailable") == 2
    assert metric("aima_inference_request_duration_seconds_count", endpoint=name, outcome="ok") == 1


async def test_503_for_a_while_then_recovery(server: ModelServer) -> None:
    server.fail(503, seconds=0.15)
    async with make_endpoints(server.url, "tgi", max_attempts=10, retry_base_s=0.05, retry_cap_s=0.1) as endpoints:
        result = await endpoints.vision.generate_json(ASK, Verdict)
    assert result.attempts > 1 and result.latency_s >= 0.15


async def test_503_persisting_is_model_unavailable(server: ModelServer, protocol: str) -> None:
    server.fail(503, requests=100)
    async with make_endpoints(server.url, protocol, max_attempts=3) as endpoints:
        with pytest.raises(ModelUnavailable, match="unavailable after 3 tries: HTTP 503") as caught:
            await endpoints.vision.generate_json(ASK, Verdict)
    assert caught.value.transient and caught.value.code == "MODEL_UNAVAILABLE"
    assert server.count() == 3


async def test_retry_after_is_honoured(server: ModelServer) -> None:
    server.fail(503, requests=1, retry_after=0.3)
    async with make_endpoints(server.url, "tgi", retry_cap_s=1.0) as endpoints:
        started = time.monotonic()
        result = await endpoints.vision.generate_text(ASK)
    assert result.attempts == 2 and time.monotonic() - started >= 0.3


async def test_an_unreachable_server_is_model_unavailable(unused_tcp_port: int) -> None:
    async with make_endpoints(f"http://127.0.0.1:{unused_tcp_port}", "openai", max_attempts=2) as endpoints:
        with pytest.raises(ModelUnavailable, match="cannot connect"):
            await endpoints.vision.generate_text(ASK)
        name = endpoints.vision.name
    assert metric("aima_inference_errors_total", endpoint=name, kind="connection") == 2


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_slower_than_the_read_timeout_is_transient(
    server: ModelServer, protocol: str, stream: bool
) -> None:
    server.slow(0.6)
    async with make_endpoints(server.url, protocol, stream=stream, read_timeout_s=0.15, max_attempts=2) as endpoints:
        with pytest.raises(ModelUnavailable, match="timed out waiting for the answer"):
            await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert server.count() == 2
    assert metric("aima_inference_errors_total", endpoint=name, kind="timeout") == 2


async def test_a_stream_that_trickles_past_the_request_timeout_is_transient(server: ModelServer) -> None:
    server.slow(0, token_delay_s=0.05)
    settings = {"read_timeout_s": 0.3, "request_timeout_s": 0.3, "max_attempts": 1}  # tokens come every 0.05 s
    async with make_endpoints(server.url, "tgi", **settings) as endpoints:
        with pytest.raises(ModelUnavailable, match="longer than request_timeout_s"):
            await endpoints.vision.generate_text([Message.user("a long answer with many many words in it")])


async def test_invalid_json_is_its_own_error_for_one_repair(server: ModelServer, protocol: str) -> None:
    server.invalid_json(1)
    async with make_endpoints(server.url, protocol) as endpoints:
        with pytest.raises(InvalidModelOutput) as caught:
            await endpoints.vision.generate_json(ASK, Verdict)
        broken = caught.value
        assert broken.code == "INVALID_MODEL_OUTPUT" and not broken.transient
        assert broken.problem.startswith("not valid JSON: ")
        assert broken.text and broken.problem and broken.result.endpoint == endpoints.vision.name
        assert server.count() == 1  # not retried: repairing is the caller's
        repaired = await endpoints.vision.generate_json(
            [*ASK, Message.assistant(broken.text), Message.user(f"Fix this JSON: {broken.problem}")], Verdict
        )
        name = endpoints.vision.name
    assert Verdict.model_validate(repaired.parsed)
    assert metric("aima_inference_errors_total", endpoint=name, kind="invalid_output") == 1


async def test_json_that_breaks_the_model_is_invalid_output(server: ModelServer) -> None:
    server.answer = lambda request: {"summary": "fine", "score": "high"}
    async with make_endpoints(server.url, "openai") as endpoints:
        with pytest.raises(InvalidModelOutput) as caught:
            await endpoints.vision.generate_json(ASK, Verdict)
        assert caught.value.problem == "score: Input should be a valid integer, unable to parse string as an integer"
        server.answer = lambda request: "[1, 2]"
        with pytest.raises(InvalidModelOutput, match="not an object"):
            await endpoints.vision.generate_json(ASK, Verdict)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_cut_answer_is_retried(server: ModelServer, protocol: str, stream: bool) -> None:
    server.cut_stream(1)
    async with make_endpoints(server.url, protocol, stream=stream) as endpoints:
        result = await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert result.attempts == 2 and Verdict.model_validate(result.parsed)
    assert metric("aima_inference_errors_total", endpoint=name, kind="stream_cut") == 1


async def test_streams_cut_every_time_are_model_unavailable(server: ModelServer, protocol: str) -> None:
    server.cut_stream(10)
    async with make_endpoints(server.url, protocol, max_attempts=2) as endpoints:
        with pytest.raises(ModelUnavailable, match="after 2 tries"):
            await endpoints.vision.generate_json(ASK, Verdict)


async def test_a_stream_cut_after_pieces_were_given_is_model_unavailable(server: ModelServer) -> None:
    server.cut_stream(1)
    async with make_endpoints(server.url, "openai", max_attempts=3) as endpoints:
        pieces: list[str] = []
        with pytest.raises(ModelUnavailable, match="broke"):
            async for piece in endpoints.vision.stream_text([Message.user("one two three four five six")]):
                pieces.append(piece)
    assert pieces and server.count() == 1  # what was given cannot be taken back: no silent restart


async def test_a_cut_before_the_first_piece_is_retried_by_stream_text(server: ModelServer) -> None:
    server.fail(503, requests=1)
    async with make_endpoints(server.url, "tgi") as endpoints:
        text = "".join([p async for p in endpoints.vision.stream_text([Message.user("hi there")])])
    assert text == "You asked: hi there" and server.count() == 2


@pytest.mark.parametrize(("error_type", "outcome"), [("overloaded", ModelUnavailable), ("validation", ModelError)])
async def test_tgi_error_events_inside_a_stream(server: ModelServer, error_type: str, outcome: type[Exception]) -> None:
    server.stream_error("Request failed", error_type, requests=5)
    async with make_endpoints(server.url, "tgi", max_attempts=2) as endpoints:
        with pytest.raises(outcome, match="Request failed"):
            await endpoints.vision.generate_json(ASK, Verdict)


async def test_429_at_capacity_then_room(server: ModelServer) -> None:
    server.limit(2)
    server.slow(0.5)  # all four arrive while the first two are in flight
    async with make_endpoints(server.url, "tgi", max_concurrency=4, max_attempts=1) as endpoints:
        outcomes = await asyncio.gather(
            *(endpoints.vision.generate_json(ASK, Verdict) for _ in range(4)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, ModelUnavailable)]
        assert len(refused) == 2 and all("HTTP 429" in r.message for r in refused)
        assert metric("aima_inference_errors_total", endpoint=endpoints.vision.name, kind="rate_limited") == 2
    # Up to 20 tries 0.1-0.2 s apart: the waits outlast the two answers in flight (0.5 s) with room to spare (with
    # 10 tries, jitter let about one run in thirty give up before they ended).
    async with make_endpoints(
        server.url, "tgi", max_concurrency=4, max_attempts=20, retry_base_s=0.1, retry_cap_s=0.2
    ) as endpoints:
        results = await asyncio.gather(*(endpoints.vision.generate_json(ASK, Verdict) for _ in range(4)))
    assert all(r.parsed for r in results) and any(r.attempts > 1 for r in results)


@pytest.mark.parametrize("stream", [True, False])
async def test_concurrency_is_bounded_per_endpoint(server: ModelServer, protocol: str, stream: bool) -> None:
    server.slow(0.05)
    async with make_endpoints(server.url, protocol, max_concurrency=3, stream=stream) as endpoints:
        name = endpoints.vision.name
        results = await asyncio.gather(*(endpoints.vision.generate_json(ASK, Verdict) for _ in range(10)))
    assert len(results) == 10 and server.count() == 10
    assert server.max_in_flight == 3
    assert metric("aima_inference_in_flight", endpoint=name) == 0
    assert metric("aima_inference_waiting", endpoint=name) == 0


async def test_a_refused_request_is_a_permanent_model_error(server: ModelServer) -> None:
    async with make_endpoints(server.url, "openai", model="someone/other-model") as endpoints:
        with pytest.raises(ModelError, match=r"HTTP 404 \(check url and protocol\)") as caught:
            await endpoints.vision.generate_text(ASK)
        name = endpoints.vision.name
    assert isinstance(caught.value, AimaError) and not caught.value.transient and caught.value.code == "MODEL_ERROR"
    assert caught.value.status == 404 and server.count() == 1
    assert metric("aima_inference_errors_total", endpoint=name, kind="model_error") == 1


async def test_a_prompt_beyond_the_context_is_prompt_too_long(server: ModelServer, protocol: str) -> None:
    server.max_total_tokens = 200
    async with make_endpoints(server.url, protocol, stream=protocol == "tgi") as endpoints:
        with pytest.raises(PromptTooLong) as caught:
            await endpoints.vision.generate_text([Message.user("word " * 300)], max_new_tokens=10)
    assert caught.value.code == "PROMPT_TOO_LONG" and server.count() == 1


async def test_metrics_of_a_successful_call(server: ModelServer, protocol: str) -> None:
    async with make_endpoints(server.url, protocol) as endpoints:
        name = endpoints.vision.name
        result = await endpoints.vision.generate_json(ASK, Verdict)
    assert result.prompt_tokens and result.completion_tokens
    assert metric("aima_inference_tokens_total", endpoint=name, kind="prompt") == result.prompt_tokens
    assert metric("aima_inference_tokens_total", endpoint=name, kind="completion") == result.completion_tokens
    assert metric("aima_inference_request_duration_seconds_count", endpoint=name, outcome="ok") == 1
    assert metric("aima_inference_in_flight", endpoint=name) == 0
