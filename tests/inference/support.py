"""Helpers of the model-endpoint tests."""

from __future__ import annotations

import itertools
from typing import Any

from prometheus_client import REGISTRY

from aima.inference import Endpoints, endpoints_for
from aima.settings import InferenceSettings
from aima.testing.model_server import endpoint_settings

MODEL = "llava-hf/llava-v1.6-34b-hf"
_names = itertools.count()


def make_endpoints(url: str, protocol: str = "tgi", **settings: Any) -> Endpoints:
    """Endpoints with one endpoint, `vision`, under a fresh name (its metrics start at zero), retrying fast."""
    name = f"{protocol}-{next(_names)}"
    values = endpoint_settings(url, protocol, MODEL, settings)
    return endpoints_for(InferenceSettings(endpoints={name: values}, vision_endpoint=name))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
