"""The plugin's settings (``[plugins.fusion]`` in aima.toml, or ``AIMA_PLUGINS__FUSION__<KEY>``).

The defaults work out of the box with an endpoint named ``llama`` (``[inference.endpoints.llama]``); the prompt budget
comes from the endpoint unless set here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aima.analysis import ModelNotInstalled


class FusionSettings(BaseModel):
    """How the fusion analyzer builds a dossier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The model endpoint (``[inference.endpoints.<name>]``) the fusion runs on; also the queue its tasks go to.
    endpoint: str = Field(default="llama", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    #: Prompt budget in tokens; None: the endpoint's ``max_input_tokens``, else what its server reports.
    max_input_tokens: int | None = Field(default=None, ge=256)
    #: Used when neither the settings nor the server tell the prompt budget.
    fallback_input_tokens: int = Field(default=8192, ge=256)
    #: Tokens one answer may have; None: the endpoint's ``max_new_tokens``.
    answer_tokens: int | None = Field(default=None, ge=64)
    #: A tokenizer.json of the served model, to count prompt tokens exactly (needs the ``tokenizers`` package);
    #: None: estimated from characters.
    tokenizer: Path | None = None
    #: ASCII characters per token in the estimate (non-ASCII characters count one token each).
    chars_per_token: float = Field(default=3.5, gt=0.5, le=10.0)
    #: Fraction added to every estimate, for the chat template and the estimate's error.
    token_margin: float = Field(default=0.1, ge=0.0, le=1.0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    #: Analyzers whose results describe pictures (`aima.vision.VisualDescription`); results of that shape count too.
    vision_analyzers: tuple[str, ...] = ("llava",)
    #: Evidence kinds that are transcript lines (what persons say).
    speech_kinds: tuple[str, ...] = ("speech",)
    #: Members of a person seen or heard within this many seconds of each other make one appearance.
    appearance_gap_s: float = Field(default=10.0, ge=0.0)
    #: Evidence ids listed per person in the prompt (the rest are counted).
    person_evidence_in_prompt: int = Field(default=20, ge=1, le=1000)

    @field_validator("tokenizer", "max_input_tokens", "answer_tokens", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any) -> Any:
        """An empty environment variable means the default."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("vision_analyzers", "speech_kinds", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """``AIMA_PLUGINS__FUSION__VISION_ANALYZERS=llava,qwen`` is a list too."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def check_tokenizer(self) -> None:
        """Raise `ModelNotInstalled` when a configured tokenizer cannot be used (looks for files only)."""
        if self.tokenizer is None:
            return
        if not self.tokenizer.is_file():
            raise ModelNotInstalled(
                f"the fusion tokenizer {self.tokenizer} does not exist; copy the served model's tokenizer.json there "
                "(huggingface-cli download meta-llama/Llama-3.1-70B-Instruct tokenizer.json --local-dir <dir>) or "
                "unset AIMA_PLUGINS__FUSION__TOKENIZER to estimate tokens"
            )
        try:
            import tokenizers  # noqa: F401
        except ImportError:
            raise ModelNotInstalled(
                "counting fusion prompt tokens with a tokenizer needs the tokenizers package; install it with: "
                "pip install 'aima-fusion[tokenizer]'"
            ) from None
