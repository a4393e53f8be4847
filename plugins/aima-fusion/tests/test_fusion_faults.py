"""What the fusion does when the model fails: down, answering invalid JSON, or not configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from fusion_cases import ScriptedModel, catalogue_ids, large_case, make_endpoints, sample_case

from aima.errors import ModelUnavailable
from aima.inference import InvalidModelOutput, UnknownEndpoint
from aima.testing.model_server import ModelServer, RecordedRequest
from aima_fusion import FusionAnalyzer, FusionSettings
from aima_fusion.errors import NoEndpoint


async def test_an_unavailable_server_is_transient(server: ModelServer, protocol: str) -> None:
    server.fail(503, requests=2)
    async with make_endpoints(server.url, protocol, max_attempts=2) as endpoints:
        with pytest.raises(ModelUnavailable) as caught:
            await FusionAnalyzer().analyze_case(sample_case(inference=endpoints))
    assert caught.value.transient and caught.value.code == "MODEL_UNAVAILABLE"
    assert server.count() == 2


async def test_an_unavailable_server_during_map_reduce_is_transient(server: ModelServer, protocol: str) -> None:
    """The parts run together: the first to fail cancels the others and its own error (not a group) is the task's."""
    server.fail(503, seconds=30)
    async with make_endpoints(server.url, protocol, max_input_tokens=4000, max_concurrency=3, max_attempts=2) as eps:
        with pytest.raises(ModelUnavailable) as caught:
            await FusionAnalyzer().analyze_case(replace(large_case(), inference=eps))
    assert caught.value.transient and caught.value.code == "MODEL_UNAVAILABLE"
    assert "HTTP 503" in caught.value.message
    assert "This request holds part" in server.requests[0].prompt  # it was a part that failed


async def test_a_reduce_step_answering_invalid_json_twice_fails_the_task(server: ModelServer) -> None:
    model = ScriptedModel()

    def answer(request: RecordedRequest) -> str | Mapping[str, Any] | None:
        return "not json" if "Partial dossiers:" in request.prompt else model(request)

    server.answer = answer
    async with make_endpoints(server.url, "tgi", max_input_tokens=4000) as endpoints:
        with pytest.raises(InvalidModelOutput) as caught:
            await FusionAnalyzer().analyze_case(replace(large_case(), inference=endpoints))
    assert caught.value.code == "INVALID_MODEL_OUTPUT" and not caught.value.transient
    assert "answered invalid JSON for the combination of partial dossiers 1-" in caught.value.message


async def test_invalid_json_gets_one_repair_request(server: ModelServer, protocol: str) -> None:
    server.invalid_json(1)
    async with make_endpoints(server.url, protocol) as endpoints:
        dossier = await FusionAnalyzer().analyze_case(sample_case(inference=endpoints))

    assert server.count() == 2
    first, second = server.requests
    assert catalogue_ids(second) == catalogue_ids(first)  # the same conversation, with the repair request after it
    repair = second.question
    assert "could not be used" in repair
    assert '<<<DATA label="problem"' in repair and '<<<DATA label="previous answer"' in repair
    assert dossier.summary == "15 evidence items were reviewed."


async def test_invalid_json_twice_fails_the_task(server: ModelServer) -> None:
    server.invalid_json(2)
    async with make_endpoints(server.url, "tgi") as endpoints:
        with pytest.raises(InvalidModelOutput) as caught:
            await FusionAnalyzer().analyze_case(sample_case(inference=endpoints))

    assert server.count() == 2
    assert caught.value.code == "INVALID_MODEL_OUTPUT" and not caught.value.transient
    assert "answered invalid JSON for the case twice" in caught.value.message


async def test_a_worker_without_the_endpoint_is_told_what_to_configure(server: ModelServer) -> None:
    with pytest.raises(NoEndpoint, match=r"configure \[inference.endpoints.llama\]"):
        await FusionAnalyzer().analyze_case(sample_case())
    async with make_endpoints(server.url, "tgi") as endpoints:
        with pytest.raises(UnknownEndpoint, match="'big-llama'"):
            analyzer = FusionAnalyzer(FusionSettings(endpoint="big-llama"))
            await analyzer.analyze_case(sample_case(inference=endpoints))
    assert server.count() == 0
