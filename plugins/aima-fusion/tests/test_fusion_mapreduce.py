"""A case larger than the prompt budget is fused in parts (map) and the parts' dossiers combined (reduce)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from fusion_cases import (
    ScriptedModel,
    assert_citations_resolve,
    catalogue_ids,
    large_case,
    make_endpoints,
    sample_case,
)

from aima.inference import PromptTooLong
from aima.testing.model_server import ModelServer, RecordedRequest
from aima_fusion import FusionAnalyzer
from aima_fusion.tokens import EstimatedTokens

BUDGET = 4000


async def test_a_large_case_is_mapped_and_reduced(server: ModelServer, protocol: str) -> None:
    model = ScriptedModel()
    server.answer = model
    case = large_case()
    progress: list[tuple[float, str]] = []
    async with make_endpoints(server.url, protocol, max_input_tokens=BUDGET, max_concurrency=3) as endpoints:
        item = replace(case, inference=endpoints, report_progress=lambda f, m: progress.append((f, m)))
        dossier = await FusionAnalyzer().analyze_case(item)

    maps, reduces = model.requests("map"), model.requests("reduce")
    assert len(maps) >= 3 and len(reduces) == 1 and model.requests("single") == []
    assert dossier.strategy == "map-reduce"
    assert_citations_resolve(dossier, case)
    # The parts cover the catalogue once, in order: by media item, then by time.
    ids = [i for request in sorted(maps, key=_part_number) for i in catalogue_ids(request)]
    assert ids == [f"E{n}" for n in range(1, len(case.evidence) + 1)]
    estimate = EstimatedTokens(3.5, 0.1)
    assert all(estimate.count(request.prompt) <= BUDGET for request in [*maps, *reduces])
    # The reduce step reads the parts' statements and ids, not the evidence.
    reduce_prompt = reduces[0].prompt
    assert "the shipment moves" not in reduce_prompt
    assert reduce_prompt.count('<<<DATA label="partial dossier ') == len(maps)
    # Each part's invented id was rejected there, and so was the reduce step's own.
    assert len(dossier.rejected) == len(maps) + 1
    assert all("E999" in line for line in dossier.rejected)
    # Persons come from the clusters across all parts, whatever the parts said.
    speaker_a = dossier.persons[0]
    assert speaker_a.label == "Speaker A" and len(speaker_a.statements) == 3 * 60
    assert {i.label.value for i in dossier.sensitive} == {"restraint", "coercion"}
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m == f"fused {len(maps)} of {len(maps)} parts" for _, m in progress)


async def test_many_parts_are_combined_in_rounds(server: ModelServer) -> None:
    model = ScriptedModel(cite_unknown=False)
    server.answer = model
    case = large_case()
    async with make_endpoints(server.url, "openai", max_input_tokens=2600) as endpoints:
        dossier = await FusionAnalyzer().analyze_case(replace(case, inference=endpoints))

    maps, reduces = model.requests("map"), model.requests("reduce")
    totals = [_partials_combined_of(r) for r in reduces]
    assert len(maps) > 6 and len(reduces) > 2
    assert totals[0] == len(maps) and totals[-1] < len(maps)  # a first round over the parts, then over its results
    assert all(EstimatedTokens(3.5, 0.1).count(r.prompt) <= 2600 for r in [*maps, *reduces])
    assert dossier.strategy == "map-reduce" and dossier.rejected == []
    assert_citations_resolve(dossier, case)


async def test_parts_keep_what_the_final_answer_forgot(server: ModelServer) -> None:
    """The combined dossier leaves restraint out: the parts' strongest assessment stands in for it."""
    parts_model = ScriptedModel(restraint="not_indicated")

    def answer(request: RecordedRequest) -> Mapping[str, Any] | None:
        given = parts_model(request)
        if given is not None and "Partial dossiers:" in request.prompt:
            return {**given, "sensitive": []}
        return given

    server.answer = answer
    async with make_endpoints(server.url, "tgi", max_input_tokens=BUDGET) as endpoints:
        dossier = await FusionAnalyzer().analyze_case(replace(large_case(), inference=endpoints))

    restraint, coercion = dossier.sensitive[:2]
    assert (restraint.label.value, restraint.assessment.value, restraint.rationale) == (
        "restraint",
        "not_indicated",
        "Cannot tell.",
    )
    assert coercion.assessment.value == "insufficient_evidence"


async def test_a_prompt_the_server_finds_too_long_is_split(server: ModelServer) -> None:
    """The estimate let a prompt through that the server refuses: the fusion starts again with less."""
    case = large_case()
    async with make_endpoints(server.url, "tgi", max_input_tokens=20_000) as endpoints:
        item = replace(case, inference=endpoints)
        await FusionAnalyzer().analyze_case(item)
        assert server.count() == 1  # the whole case fits the estimate
        whole = server.requests[0].prompt_tokens
        server.reset()
        model = ScriptedModel()
        server.answer = model
        server.max_total_tokens = whole + 2048 - 1  # but not the server
        dossier = await FusionAnalyzer().analyze_case(item)

    assert server.requests[0].prompt_tokens == whole  # refused
    assert dossier.strategy == "map-reduce"
    assert len(model.requests("map")) >= 2 and len(model.requests("reduce")) == 1
    assert_citations_resolve(dossier, case)


async def test_a_part_the_server_finds_too_long_makes_the_parts_smaller(server: ModelServer) -> None:
    """Map-reduce too: a part the server refuses starts the fusion again with a smaller budget, so smaller parts."""
    case = large_case()
    async with make_endpoints(server.url, "tgi", max_input_tokens=BUDGET, max_concurrency=3) as endpoints:
        item = replace(case, inference=endpoints)
        await FusionAnalyzer().analyze_case(item)
        largest = max(r.prompt_tokens for r in server.requests if "This request holds part" in r.prompt)
        server.reset()
        model = ScriptedModel()
        server.answer = model
        server.max_total_tokens = largest + 2048 - 1  # the largest part fits the estimate but not the server
        dossier = await FusionAnalyzer().analyze_case(item)

    refused = [r for r in server.requests if r.prompt_tokens + r.max_new_tokens > server.max_total_tokens]
    assert refused and all("This request holds part" in r.prompt for r in refused)
    assert dossier.strategy == "map-reduce"
    assert_citations_resolve(dossier, case)
    # The second try's parts (more of them, each smaller) cover the catalogue once.
    parts = max(_parts_of(r) for r in model.requests("map"))
    maps = sorted((r for r in model.requests("map") if _parts_of(r) == parts), key=_part_number)
    assert [_part_number(r) for r in maps] == list(range(1, parts + 1))
    assert [i for r in maps for i in catalogue_ids(r)] == [f"E{n}" for n in range(1, len(case.evidence) + 1)]
    assert all(r.prompt_tokens < largest for r in maps)


async def test_a_server_that_refuses_everything_fails_the_task(server: ModelServer) -> None:
    server.max_total_tokens = 2100  # no prompt fits beside 2048 answer tokens
    async with make_endpoints(server.url, "openai", max_input_tokens=20_000) as endpoints:
        with pytest.raises(PromptTooLong):
            await FusionAnalyzer().analyze_case(sample_case(inference=endpoints))


def _part_number(request: RecordedRequest) -> int:
    marker = request.prompt.split("This request holds part ", 1)[1]
    return int(marker.split(" ", 1)[0])


def _parts_of(request: RecordedRequest) -> int:
    """How many parts the case was split into for the map request `request`."""
    marker = request.prompt.split("This request holds part ", 1)[1]
    return int(marker.split(" ", 3)[2])


def _partials_combined_of(request: RecordedRequest) -> int:
    """How many partial dossiers the reduce round of `request` combines."""
    found = re.search(r'partial dossier \d+ of (\d+)"', request.prompt)
    assert found is not None
    return int(found.group(1))
