"""What a vision-language model says about one picture: the structured description `Media.description` shows.

The schema is the core's, not a plugin's, so that the API can type it and the fusion can read it whichever plugin
(LLaVA on TGI, any OpenAI-compatible server) made it. Every list is bounded, so that a model cannot flood a result.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeenObject(_Strict):
    name: str = Field(max_length=200)
    count: int = Field(default=1, ge=0, le=10_000)
    position: str = Field(default="", max_length=200, description="Where in the picture: 'left foreground', ...")
    confidence: float = Field(ge=0.0, le=1.0)


class SeenPerson(_Strict):
    appearance: str = Field(max_length=500, description="Clothing, build, apparent age range; never a name.")
    actions: str = Field(default="", max_length=500)
    position: str = Field(default="", max_length=200)
    confidence: float = Field(ge=0.0, le=1.0)


class People(_Strict):
    count: int = Field(ge=0, le=10_000)
    persons: list[SeenPerson] = Field(default_factory=list, max_length=50)


class VisibleText(_Strict):
    text: str = Field(max_length=1000)
    where: str = Field(default="", max_length=200)


class NotableElement(_Strict):
    label: str = Field(max_length=200)
    description: str = Field(max_length=1000)
    #: Sensitive elements (weapons, injuries, restraints, nudity, documents with personal data, ...).
    sensitive: bool = False
    confidence: float = Field(ge=0.0, le=1.0)


class FrameDescription(_Strict):
    """One picture (an image, or a video keyframe), as the model saw it."""

    scene: str = Field(max_length=2000, description="One or two sentences: what the picture shows.")
    setting: str = Field(max_length=500, description="Indoor/outdoor, kind of place, time of day if visible.")
    objects: list[SeenObject] = Field(default_factory=list, max_length=50)
    people: People
    visible_text: list[VisibleText] = Field(default_factory=list, max_length=50)
    notable: list[NotableElement] = Field(default_factory=list, max_length=30)
    confidence: float = Field(ge=0.0, le=1.0, description="How sure the model is of the description as a whole.")


class TimelineEntry(BaseModel):
    """A keyframe's description, placed in its video."""

    keyframe: int = Field(ge=0, description="Index of the keyframe in the media's keyframes.")
    timestamp_s: float = Field(ge=0.0)
    description: FrameDescription


class VisualDescription(BaseModel):
    """The vision result of one media item: an image has one entry at 0 s; a video one per keyframe, in time order."""

    kind: Literal["image", "video"]
    model: str
    endpoint: str
    timeline: list[TimelineEntry]
    #: Keyframes left without a description (the model kept answering invalid JSON), with the reason.
    failed: list[str] = Field(default_factory=list)
