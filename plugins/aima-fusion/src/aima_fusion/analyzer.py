"""The fusion case analyzer: a whole case, through a language model (Llama 3.1), into an evidence-linked dossier.

The model sees the case's evidence as a numbered catalogue and cites ids; everything a reader follows to the
evidence (citations, persons' appearances and statements, missing modalities) is built by this plugin from the case
itself, so the model can describe and connect but cannot invent where something comes from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from aima.analysis import CaseAnalyzer, CaseInput, LazyModel
from aima.dossier import Dossier, MissingModality
from aima.inference import Endpoint
from aima_fusion.assemble import REQUIRED, assemble, insufficient
from aima_fusion.catalogue import Catalogue
from aima_fusion.errors import NoEndpoint
from aima_fusion.fuse import Fusion
from aima_fusion.missing import missing_modalities
from aima_fusion.persons import Person, build_persons
from aima_fusion.prompts import Prompts
from aima_fusion.schema import ModelDossier, ModelIndicator, empty_answer
from aima_fusion.settings import FusionSettings
from aima_fusion.tokens import EstimatedTokens, TokenCounter, TokenizerTokens

logger = logging.getLogger(__name__)

NO_EVIDENCE = "The case holds no analysis result to assess."


@dataclass(frozen=True)
class Case:
    """What the plugin makes of a case before and after the model: its catalogue, persons and missing modalities."""

    catalogue: Catalogue
    persons: list[Person]
    missing: list[MissingModality]
    appearance_gap_s: float

    @classmethod
    def of(cls, item: CaseInput, settings: FusionSettings) -> Case:
        catalogue = Catalogue.of(item)
        return cls(
            catalogue=catalogue,
            persons=build_persons(item.identities, catalogue, settings.speech_kinds),
            missing=missing_modalities(item, settings.vision_analyzers),
            appearance_gap_s=settings.appearance_gap_s,
        )

    def dossier(
        self,
        answer: ModelDossier,
        rejected: Sequence[str],
        model: str,
        strategy: str,
        fallback: Sequence[ModelIndicator] = (),
    ) -> Dossier:
        return assemble(
            answer,
            catalogue=self.catalogue,
            persons=self.persons,
            missing=self.missing,
            rejected=rejected,
            model=model,
            strategy=strategy,
            appearance_gap_s=self.appearance_gap_s,
            fallback_indicators=fallback,
        )


class FusionAnalyzer(CaseAnalyzer):
    name = "fusion"
    version = "1.0.0"
    description = (
        "Fuses every analysis of a case into a dossier with a language model (Llama 3.1): summary, timeline, persons "
        "with appearances and statements, places, objects, events, findings and a restraint and coercion assessment, "
        "each statement citing its evidence; large cases map-reduce."
    )
    runs_on = "llama"
    result_model = Dossier

    def __init__(self, settings: FusionSettings | None = None) -> None:
        self.settings = settings or FusionSettings()
        # Tasks go to the queue of the endpoint this instance uses: the configured one, not the class default.
        vars(self)["runs_on"] = self.settings.endpoint
        self._counter: LazyModel[TokenCounter] = LazyModel(self._make_counter)

    def check(self) -> None:
        self.settings.check_tokenizer()

    def citations(self, result: BaseModel) -> Sequence[Any]:
        return result.citations() if isinstance(result, Dossier) else []

    async def analyze_case(self, item: CaseInput) -> Dossier:
        endpoint = self._endpoint(item)
        item.report_progress(0.0, "reading the case's evidence")
        # Building the catalogue and persons of a large case takes a while: not on the worker's event loop.
        case = await asyncio.to_thread(Case.of, item, self.settings)
        if not len(case.catalogue):
            item.report_progress(1.0, "no evidence to fuse")
            summary = (
                f"The case has {len(item.media)} media item(s) but no analysis result that can be cited, so the "
                "dossier cannot say what they show or say."
            )
            unassessed = [insufficient(label, NO_EVIDENCE) for label in REQUIRED]
            return case.dossier(empty_answer(summary), [], endpoint.model or endpoint.name, "none", unassessed)
        limit = endpoint.settings.max_new_tokens
        answer_tokens = min(self.settings.answer_tokens or limit, limit)
        budget = await self._budget(endpoint, answer_tokens)
        counter = await asyncio.to_thread(self._counter.get)
        limit_ids = self.settings.person_evidence_in_prompt
        fusion = Fusion(
            endpoint=endpoint,
            prompts=Prompts(item.title, case.catalogue, case.persons, case.missing, limit_ids),
            catalogue=case.catalogue,
            persons=case.persons,
            counter=counter,
            budget=budget,
            answer_tokens=answer_tokens,
            temperature=self.settings.temperature,
            progress=item.report_progress,
        )
        outcome = await fusion.run()
        dossier = await asyncio.to_thread(
            case.dossier,
            outcome.answer,
            outcome.rejected,
            outcome.model or endpoint.model or endpoint.name,
            outcome.strategy,
            outcome.fallback,
        )
        logger.info(
            "case %s fused into dossier version %d (%s, %d requests): %d findings, %d statements rejected",
            item.case_id,
            item.version,
            outcome.strategy,
            outcome.requests,
            len(dossier.findings),
            len(dossier.rejected),
        )
        item.report_progress(1.0, f"dossier version {item.version} ready ({len(dossier.findings)} findings)")
        return dossier

    def _endpoint(self, item: CaseInput) -> Endpoint:
        if item.inference is None:
            raise NoEndpoint(
                f"The fusion needs the model endpoint {self.settings.endpoint!r}, but this worker has no model "
                f"endpoints; configure [inference.endpoints.{self.settings.endpoint}]."
            )
        return item.inference.get(self.settings.endpoint)

    async def _budget(self, endpoint: Endpoint, answer_tokens: int) -> int:
        """The prompt budget: configured here or on the endpoint, else as its server reports (and within the
        server's total with the answer's tokens)."""
        configured = [b for b in (self.settings.max_input_tokens, endpoint.max_input_tokens) if b is not None]
        if configured:
            return min(configured)
        info = await endpoint.info()
        budget = info.max_input_tokens or self.settings.fallback_input_tokens
        if info.max_total_tokens is not None:
            budget = min(budget, info.max_total_tokens - answer_tokens)
        return budget

    def _make_counter(self) -> TokenCounter:
        s = self.settings
        if s.tokenizer is not None:
            return TokenizerTokens(s.tokenizer, s.token_margin)
        return EstimatedTokens(s.chars_per_token, s.token_margin)
