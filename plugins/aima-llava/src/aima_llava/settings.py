"""The plugin's settings: ``[plugins.llava]`` in aima.toml or ``AIMA_PLUGINS__LLAVA__<KEY>``; defaults work as is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aima.errors import InvalidInput
from aima.settings import InferenceSettings

PLUGIN_NAME = "llava"
#: The vision endpoint's name when the inference settings keep their default (``inference.vision_endpoint``).
DEFAULT_ENDPOINT: str = InferenceSettings.model_fields["vision_endpoint"].default


class LlavaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The model endpoint (``[inference.endpoints.<name>]``) that describes the pictures; its name is also the queue
    #: the analyzer's tasks go to, so that only workers serving that endpoint take them. None: the inference
    #: settings' vision endpoint, whose default name is "llava" (set this when ``vision_endpoint`` names another).
    endpoint: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    #: Below this mean confidence of a media item's descriptions (0 to 1), `follow_up` is scheduled too.
    low_confidence: float = Field(default=0.4, ge=0.0, le=1.0)
    #: The analyzer scheduled for the same media item when a picture shows people or the descriptions are unsure
    #: (face detection); None or "" schedules nothing.
    follow_up: str | None = "faces"
    #: Tokens one description may have (None: the endpoint's max_new_tokens; 512 suits LLaVA-1.6's 4k context).
    max_new_tokens: int | None = Field(default=None, ge=64)
    #: Characters of an invalid answer quoted back in the repair request (the rest is left out: the repair has to
    #: fit the model's context next to the picture).
    repair_quote_chars: int = Field(default=1200, ge=100, le=20_000)
    #: False: a keyframe the model keeps describing with invalid JSON, or whose file holds no picture, fails the task.
    #: True: it is listed in the result's `failed` and the others are kept (the task still fails when no keyframe
    #: could be described).
    keep_partial: bool = False

    @field_validator("follow_up")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def queue(self) -> str:
        """The resource the analyzer runs on (`Analyzer.runs_on`): its endpoint's name."""
        return self.endpoint or DEFAULT_ENDPOINT


def llava_settings(config: Mapping[str, Mapping[str, Any]]) -> LlavaSettings:
    """The validated ``llava`` table of the plugin configuration; bad values stop the worker with a clear message."""
    try:
        return LlavaSettings.model_validate(dict(config.get(PLUGIN_NAME, {})))
    except ValidationError as exc:
        raise InvalidInput(f"Invalid settings for plugin {PLUGIN_NAME!r}: {exc}") from exc
