"""Prometheus metrics for requests, GraphQL operations, tasks, queues and model calls.

Metric objects are declarations, not clients: like every prometheus_client user, they live at module level in the
default registry, which both the API's ``/metrics`` and the worker's metrics port expose.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("aima_http_requests_total", "HTTP requests served", ["method", "route", "status"])
HTTP_LATENCY = Histogram("aima_http_request_duration_seconds", "HTTP request latency", ["method", "route"])
GRAPHQL_OPERATIONS = Counter(
    "aima_graphql_operations_total", "GraphQL operations executed", ["operation_type", "outcome"]
)
GRAPHQL_ERRORS = Counter("aima_graphql_errors_total", "GraphQL errors returned, by code", ["code"])
UPLOADED_BYTES = Counter("aima_uploaded_bytes_total", "Bytes of media stored through uploads")
TASKS = Counter("aima_tasks_total", "Analysis tasks finished", ["analyzer", "state"])
TASK_DURATION = Histogram(
    "aima_task_duration_seconds",
    "Time an analysis task ran, from start to stored result",
    ["analyzer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
TASKS_RUNNING = Gauge("aima_tasks_running", "Analysis tasks running in this process", ["analyzer"])
QUEUE_DEPTH = Gauge("aima_queue_depth", "Tasks waiting in a queue", ["queue"])
MODEL_CALLS = Counter("aima_model_calls_total", "Calls to model code or endpoints", ["model", "outcome"])
MODEL_LATENCY = Histogram("aima_model_call_duration_seconds", "Model call latency", ["model"])
SUBSCRIPTIONS_ACTIVE = Gauge("aima_subscriptions_active", "Open GraphQL subscriptions")

# Requests to model endpoints (`aima.inference`): one observation per try, so retries show.
INFERENCE_LATENCY = Histogram(
    "aima_inference_request_duration_seconds",
    "Requests to model endpoints, from sending to the last token, by outcome",
    ["endpoint", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
INFERENCE_TOKENS = Counter(
    "aima_inference_tokens_total",
    "Tokens model endpoints read (prompt) and generated (completion)",
    ["endpoint", "kind"],
)
INFERENCE_ERRORS = Counter(
    "aima_inference_errors_total",
    "Failed requests to model endpoints and unusable answers, by kind (rate_limited, unavailable, timeout, "
    "connection, stream_cut, protocol, model_error, invalid_output)",
    ["endpoint", "kind"],
)
INFERENCE_IN_FLIGHT = Gauge("aima_inference_in_flight", "Requests to model endpoints in flight", ["endpoint"])
INFERENCE_WAITING = Gauge(
    "aima_inference_waiting", "Calls waiting for a free slot of an endpoint (max_concurrency)", ["endpoint"]
)
