"""The endpoints of one process, built from settings: what the worker creates once and hands to analyzers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

from aima.inference.endpoint import Endpoint
from aima.inference.errors import EndpointConfigError, UnknownEndpoint
from aima.inference.prompts import format_for_model
from aima.inference.wire import OpenAIWire, TgiWire, Wire
from aima.settings import EndpointSettings, InferenceSettings, Settings


def _wire(name: str, settings: EndpointSettings) -> Wire:
    if settings.protocol == "openai":
        return OpenAIWire(settings.model)
    prompt_format = settings.prompt_format or format_for_model(settings.model)
    if prompt_format is None:
        raise EndpointConfigError(
            f"endpoint {name!r}: set prompt_format (chatml, llama3, mistral or vicuna): TGI's native API needs the "
            f"model's chat template, and model {settings.model!r} does not name a known family"
        )
    return TgiWire(prompt_format)


class Endpoints:
    """Every configured endpoint by name, each with its own connection pool and concurrency slots.

    Nothing connects until the first request. Use it in one event loop, and close it on shutdown (``aclose``, or
    ``async with``).
    """

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._endpoints = {name: Endpoint(name, s, _wire(name, s)) for name, s in settings.endpoints.items()}

    def get(self, name: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise UnknownEndpoint(name, self._endpoints) from None

    def __getitem__(self, name: str) -> Endpoint:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._endpoints

    def __iter__(self) -> Iterator[str]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    @property
    def vision(self) -> Endpoint:
        """The vision-language model's endpoint (``inference.vision_endpoint``)."""
        return self._role(self.settings.vision_endpoint, "vision_endpoint")

    @property
    def fusion(self) -> Endpoint:
        """The language model's endpoint for fusing findings (``inference.fusion_endpoint``)."""
        return self._role(self.settings.fusion_endpoint, "fusion_endpoint")

    def _role(self, name: str, setting: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            hint = f" (inference.{setting}; configure [inference.endpoints.{name}] or name another endpoint)"
            raise UnknownEndpoint(name, self._endpoints, hint) from None

    async def health(self, timeout_s: float = 5.0) -> dict[str, str | None]:
        """Each endpoint's `Endpoint.health`, asked at once: None when well, else why not."""

        async def one(endpoint: Endpoint) -> str | None:
            try:
                return await asyncio.wait_for(endpoint.health(), timeout_s)
            except TimeoutError:
                return f"no answer within {timeout_s:g} s"

        results = await asyncio.gather(*(one(e) for e in self._endpoints.values()))
        return dict(zip(self._endpoints, results, strict=True))

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[object]]]:
        """Checks in the shape of `Resources.check_backends` (raise when down), named ``model:<endpoint>``."""
        return {f"model:{name}": endpoint.ping for name, endpoint in self._endpoints.items()}

    async def aclose(self) -> None:
        await asyncio.gather(*(e.aclose() for e in self._endpoints.values()))

    async def __aenter__(self) -> Endpoints:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def endpoints_for(settings: Settings | InferenceSettings) -> Endpoints:
    """The endpoints the settings configure, for one process: create once (the worker at startup), pass to whatever
    calls models, close on shutdown. Raises `EndpointConfigError` for settings that cannot work."""
    return Endpoints(settings.inference if isinstance(settings, Settings) else settings)
