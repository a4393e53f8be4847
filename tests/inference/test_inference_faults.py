"""Every fault a model server shows, against the test server: what is retried, what waits, what fails for good, and
what the metrics say."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import BaseModel

from aima.errors import AimaError, ModelUnavailable
from aima.inference import EndpointUnavailable, InvalidModelOutput, Message, ModelError, PromptTooLong
from aima.inference.endpoint import _retry_after
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


# -- errors sent with HTTP 200, error events of OpenAI streams, answers of the wrong shape -------------------------


@pytest.mark.parametrize(
    ("protocol", "message", "error_type", "code", "kind"),
    [
        ("tgi", "Model is overloaded", "overloaded", None, "rate_limited"),
        ("openai", "Rate limit reached", "rate_limit_error", 429, "rate_limited"),
        ("openai", "upstream failed", "proxy_error", 502, "unavailable"),
        ("openai", "EngineDeadError", "InternalServerError", None, "unavailable"),
    ],
)
async def test_a_busy_server_answering_http_200_with_an_error_is_retried(
    server: ModelServer, protocol: str, message: str, error_type: str, code: int | None, kind: str
) -> None:
    server.error_answer(message, error_type, code=code, requests=1)
    async with make_endpoints(server.url, protocol, stream=False, max_attempts=3) as endpoints:
        result = await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert result.attempts == 2 and Verdict.model_validate(result.parsed)
    assert metric("aima_inference_errors_total", endpoint=name, kind=kind) == 1
    server.error_answer(message, error_type, code=code, requests=10)
    async with make_endpoints(server.url, protocol, stream=False, max_attempts=2) as endpoints:
        with pytest.raises(ModelUnavailable, match=f"after 2 tries: {error_type}.*{message}"):
            await endpoints.vision.generate_json(ASK, Verdict)


@pytest.mark.parametrize(("protocol", "code"), [("tgi", None), ("openai", 400)])
async def test_a_refusal_answered_with_http_200_is_a_clear_model_error(
    server: ModelServer, protocol: str, code: int | None
) -> None:
    server.error_answer("Input validation error: bad grammar", "validation", code=code, requests=1)
    async with make_endpoints(server.url, protocol, stream=False, max_attempts=3) as endpoints:
        with pytest.raises(ModelError, match=r"refused the request: validation.* HTTP 200: Input valid") as caught:
            await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert caught.value.status == code and server.count() == 1
    assert metric("aima_inference_errors_total", endpoint=name, kind="model_error") == 1


@pytest.mark.parametrize("flat", [False, True])
async def test_openai_stream_error_events_of_a_failing_server_are_retried(server: ModelServer, flat: bool) -> None:
    message = "EngineDeadError: engine loop is not running"
    server.stream_error(message, "InternalServerError", requests=1, code=500, flat=flat)
    async with make_endpoints(server.url, "openai", stream=True, max_attempts=3) as endpoints:
        result = await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert result.attempts == 2 and server.count() == 2
    assert metric("aima_inference_errors_total", endpoint=name, kind="unavailable") == 1
    server.stream_error("Too many requests", "TooManyRequests", requests=10, code=429, flat=flat)
    async with make_endpoints(server.url, "openai", stream=True, max_attempts=2) as endpoints:
        with pytest.raises(ModelUnavailable, match=r"after 2 tries: TooManyRequests \(HTTP 429\) in the stream"):
            await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert metric("aima_inference_errors_total", endpoint=name, kind="rate_limited") == 2


async def test_an_openai_stream_error_event_of_a_refusal_is_permanent(server: ModelServer) -> None:
    server.stream_error("guided decoding failed", "BadRequestError", requests=5, code=400)
    async with make_endpoints(server.url, "openai", stream=True, max_attempts=3) as endpoints:
        with pytest.raises(ModelError, match="guided decoding failed") as caught:
            await endpoints.vision.generate_json(ASK, Verdict)
    assert caught.value.status == 400 and server.count() == 1


@pytest.mark.parametrize(
    ("protocol", "payload"),
    [
        ("tgi", {"generated_text": "{}", "details": "oops"}),
        ("tgi", [{"generated_text": "{}", "details": ["x"]}]),
        ("openai", {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}], "usage": [1]}),
        ("openai", {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}], "usage": "many"}),
    ],
)
async def test_an_answer_of_the_wrong_shape_is_a_model_error_in_the_metrics(
    server: ModelServer, protocol: str, payload: object
) -> None:
    server.odd_answer(payload)
    async with make_endpoints(server.url, protocol, stream=False) as endpoints:
        with pytest.raises(ModelError, match="gave an unexpected answer: an answer of an unexpected shape"):
            await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert metric("aima_inference_errors_total", endpoint=name, kind="model_error") == 1


@pytest.mark.parametrize(
    ("protocol", "payload"),
    [("tgi", {"token": "x", "generated_text": None}), ("openai", {"choices": [{"delta": "x", "finish_reason": None}]})],
)
async def test_a_stream_event_of_the_wrong_shape_is_an_unreadable_event(
    server: ModelServer, protocol: str, payload: object
) -> None:
    server.odd_answer(payload)
    async with make_endpoints(server.url, protocol, stream=True) as endpoints:
        result = await endpoints.vision.generate_json(ASK, Verdict)
        name = endpoints.vision.name
    assert result.attempts == 2
    assert metric("aima_inference_errors_total", endpoint=name, kind="stream_cut") == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_vllms_maximum_model_length_message_is_prompt_too_long(server: ModelServer, stream: bool) -> None:
    message = (
        "The decoder prompt (length 9000) is longer than the maximum model length of 8192. Make sure that "
        "`max_model_len` is no smaller than the number of text tokens plus multimodal tokens."
    )
    server.fail(400, requests=1, message=message, error_type="BadRequestError")
    async with make_endpoints(server.url, "openai", stream=stream) as endpoints:
        with pytest.raises(PromptTooLong, match="maximum model length"):
            await endpoints.vision.generate_text(ASK)
    assert server.count() == 1


# -- Retry-After -------------------------------------------------------------------------------------------------


async def test_retry_after_as_an_http_date_is_honoured(server: ModelServer) -> None:
    when = datetime.now(UTC) + timedelta(seconds=2)  # the date has whole seconds: a wait of 1 to 2 s
    server.fail(503, requests=1, retry_after=format_datetime(when, usegmt=True))
    async with make_endpoints(server.url, "tgi", retry_cap_s=5.0) as endpoints:
        started = time.monotonic()
        result = await endpoints.vision.generate_text(ASK)
    assert result.attempts == 2 and time.monotonic() - started >= 0.9


@pytest.mark.parametrize("retry_after", [3600, "Wed, 21 Oct 2099 07:28:00 GMT"])
async def test_a_retry_after_beyond_the_cap_ends_the_call_for_the_task_to_wait(
    server: ModelServer, protocol: str, retry_after: float | str
) -> None:
    server.fail(429, requests=10, retry_after=retry_after)
    async with make_endpoints(server.url, protocol, max_attempts=5, retry_cap_s=0.05) as endpoints:
        started = time.monotonic()
        with pytest.raises(
            EndpointUnavailable, match=r"after 1 try: HTTP 429.*\(the server asks to wait \d+ s\)"
        ) as caught:
            await endpoints.vision.generate_text(ASK)
    assert time.monotonic() - started < 1 and server.count() == 1
    assert isinstance(caught.value, ModelUnavailable) and caught.value.transient
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 3590


async def test_a_retry_after_within_the_cap_is_carried_too(server: ModelServer) -> None:
    server.fail(503, requests=10, retry_after=0.02)
    async with make_endpoints(server.url, "tgi", max_attempts=2) as endpoints:
        with pytest.raises(EndpointUnavailable, match="after 2 tries") as caught:
            await endpoints.vision.generate_text(ASK)
    assert caught.value.retry_after_s == pytest.approx(0.02)


# -- what server text may carry ----------------------------------------------------------------------------------

LEAKY = (
    "Invalid header Authorization: Bearer sk-live-5ecret for request 1 validation error: messages.0.content "
    "Input should be a valid string [type=string_type, input_value={'text': 'the suspect said: meet at pier 4'}]"
)


@pytest.mark.parametrize("stream", [True, False])
async def test_server_text_is_shortened_and_redacted_in_errors_and_logs(
    server: ModelServer, protocol: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(401, requests=1, message=LEAKY + " x" * 400, error_type="authentication_error")
    async with make_endpoints(server.url, protocol, stream=stream) as endpoints:
        with pytest.raises(ModelError) as caught:
            await endpoints.vision.generate_text(ASK)
    said = caught.value.message
    assert "HTTP 401 (check api_key): authentication_error: Invalid header Authorization: Bearer [redacted]" in said
    assert "input_value=[redacted]" in said
    logged = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("aima.inference"))
    for text in (said, logged):
        assert "5ecret" not in text and "suspect" not in text and "pier" not in text
    assert "Bearer [redacted]" in logged


async def test_redaction_of_errors_sent_in_a_stream(server: ModelServer) -> None:
    server.stream_error(LEAKY, "BadRequestError", requests=1, code=400)
    async with make_endpoints(server.url, "openai", stream=True) as endpoints:
        with pytest.raises(ModelError, match=r"Bearer \[redacted\]") as caught:
            await endpoints.vision.generate_text(ASK)
    assert "5ecret" not in caught.value.message and "suspect" not in caught.value.message


def test_retry_after_values() -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert _retry_after({"retry-after": "2.5"}) == 2.5
    assert 58 <= (_retry_after({"retry-after": in_a_minute}) or 0) <= 60
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past: no wait
    for unreadable in ("", "soon", "nan", "inf", "Wed, 99 Foo 2015"):
        assert _retry_after({"retry-after": unreadable}) is None
