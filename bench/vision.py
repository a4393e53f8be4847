"""Vision benchmark: the keyframes of a long video described by the ``llava`` analyzer against the test model server.

The issue's target: with the server answering each request after 200 ms and taking at most 32 at once, the analyzer
keeps at least 90 % of that capacity busy and adds less than 5 ms per request.

The test model server (`aima.testing.model_server`) runs in a process of its own, so that the client's figures are
its own on a small machine; it waits --delay seconds before each answer, refuses with 429 beyond --capacity requests in
flight (a client that overshoots pays retries), and times every generation request from its arrival to its last
byte. The client is what a worker runs: `LlavaAnalyzer.analyze` on an `AnalysisInput` of --keyframes small JPEG
keyframes (distinct pictures, 4 s apart), with a vision endpoint of ``max_concurrency`` = --capacity, streaming as by
default (--no-stream: not), under uvloop. Each protocol is measured after a warm-up run (imports, first-call costs).

Figures, per protocol:

- achieved concurrency: the server's maximum in flight, and the time-averaged number in flight (the sum of the
  server's request durations over the client's wall time), against the capacity;
- client overhead per request, three ways: the client's latency of a request minus the server's duration of it (the
  HTTP client, the protocol, the event loop), the wall time a request costs beyond the delay at full capacity
  (``wall * capacity / requests - delay``: everything, the server's own work included), and the CPU time of this
  process per request (the whole client: reading keyframes, prompts, JSON, validation);
- how late a 5 ms timer of the client's event loop fires: late with little CPU used means the machine, not the
  client, is short of CPU (the figures are then the machine's; run it on a quiet one).

Run: .venv/bin/python bench/vision.py [--keyframes 320] [--capacity 32] [--delay 0.2] [--protocol both] [--no-stream]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop
from PIL import Image, ImageDraw
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.analysis import AnalysisInput, Keyframe, MediaKind
from aima.inference import endpoints_for
from aima.settings import InferenceSettings
from aima.testing.model_server import ModelServer
from aima.vision import VisualDescription
from aima_llava.analyzer import LlavaAnalyzer
from aima_llava.settings import LlavaSettings

MODEL = "llava-hf/llava-v1.6-34b-hf"
GENERATION_PATHS = frozenset({"/", "/generate", "/generate_stream", "/v1/chat/completions"})


# -- the server, in its own process --------------------------------------------------------------------------------


@dataclass
class TimedModelServer(ModelServer):
    """The test model server, timing each generation request from its arrival to the end of its answer."""

    spans: list[tuple[float, float]] = field(default_factory=list, init=False)
    #: The client's (host, port) of each generation request: how many connections it opened.
    peers: set[tuple[str, int]] = field(default_factory=set, init=False)

    def app(self) -> Any:
        inner = super().app()

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
                await inner(scope, receive, send)
                return
            started = time.monotonic()
            client = scope.get("client")
            if client:
                self.peers.add((str(client[0]), int(client[1])))
            try:
                await inner(scope, receive, send)
            finally:
                self.spans.append((started, time.monotonic()))

        app: ASGIApp = timed
        return app


def serve(conn: Connection, delay_s: float, capacity: int) -> None:
    """The server process: answers the parent's commands (reset, stats, stop) until told to stop."""
    logging.basicConfig(level=logging.ERROR)  # the server's own failures, if any, show on stderr
    server = TimedModelServer(model=MODEL)
    with server:

        def configure() -> None:
            server.reset()
            server.spans.clear()
            server.peers.clear()
            server.slow(delay_s)
            server.limit(capacity)

        configure()
        conn.send(server.url)
        cpu = time.process_time()
        while (command := conn.recv()) != "stop":
            if command == "reset":
                server.wait_idle()
                configure()
                cpu = time.process_time()
                conn.send(None)
            elif command == "stats":
                server.wait_idle()
                conn.send(
                    {
                        "max_in_flight": server.max_in_flight,
                        "requests": server.count(),
                        "spans": server.spans,
                        "connections": len(server.peers),
                        "cpu_s": time.process_time() - cpu,
                    }
                )


# -- the client ------------------------------------------------------------------------------------------------------


def make_keyframes(folder: Path, count: int) -> list[Keyframe]:
    """Small distinct JPEGs (320x180, a moving bar), 4 s apart, as a long video's keyframes would be."""
    frames = []
    for index in range(count):
        image = Image.new("RGB", (320, 180), ((index * 37) % 256, (index * 71) % 256, (index * 13) % 256))
        ImageDraw.Draw(image).rectangle((index % 300, 40, index % 300 + 20, 140), fill=(255, 255, 255))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        path = folder / f"{index:05d}.jpg"
        path.write_bytes(buffer.getvalue())
        frames.append(Keyframe(path=path, timestamp_s=index * 4.0, scene_change=True, width=320, height=180))
    return frames


def latency_sum(endpoint: str) -> tuple[float, float]:
    """(seconds, requests) the client observed for the endpoint's successful requests so far."""
    labels = {"endpoint": endpoint, "outcome": "ok"}
    total = REGISTRY.get_sample_value("aima_inference_request_duration_seconds_sum", labels)
    count = REGISTRY.get_sample_value("aima_inference_request_duration_seconds_count", labels)
    return total or 0.0, count or 0.0


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    client_latency_s: float
    client_requests: float
    described: int
    #: How late a 5 ms timer of the client's event loop fired, in ms (a busy client shows here).
    lag_ms: list[float]


async def describe(url: str, protocol: str, name: str, frames: list[Keyframe], capacity: int, stream: bool) -> Run:
    endpoint = {
        "url": url,
        "protocol": protocol,
        "model": MODEL,
        "max_concurrency": capacity,
        "max_new_tokens": 512,
        "stream": stream,
    }
    settings = InferenceSettings(endpoints={name: endpoint}, vision_endpoint=name)
    async with endpoints_for(settings) as endpoints:
        item = AnalysisInput(
            media_id="bench",
            case_id="bench",
            kind=MediaKind.VIDEO,
            content_type="video/mp4",
            size_bytes=0,
            sha256="0" * 64,
            original_path=frames[0].path,
            keyframes=frames,
            inference=endpoints,
        )
        latency_before, requests_before = latency_sum(name)
        lag: list[float] = []
        ticker = asyncio.create_task(watch_loop(lag))
        cpu = time.process_time()
        started = time.monotonic()
        output = await LlavaAnalyzer(LlavaSettings(endpoint=name)).analyze(item)
        wall = time.monotonic() - started
        cpu = time.process_time() - cpu
        ticker.cancel()
        latency_after, requests_after = latency_sum(name)
    assert isinstance(output.result, VisualDescription)
    return Run(
        wall, cpu, latency_after - latency_before, requests_after - requests_before, len(output.result.timeline), lag
    )


async def watch_loop(lag: list[float], every_s: float = 0.005) -> None:
    while True:
        due = time.monotonic() + every_s
        await asyncio.sleep(every_s)
        lag.append((time.monotonic() - due) * 1000)


def measure(conn: Connection, url: str, protocol: str, frames: list[Keyframe], args: argparse.Namespace) -> None:
    conn.send("reset")
    conn.recv()
    uvloop.run(describe(url, protocol, f"warmup-{protocol}", frames[: args.capacity * 2], args.capacity, args.stream))
    conn.send("reset")
    conn.recv()
    run = uvloop.run(describe(url, protocol, f"bench-{protocol}", frames, args.capacity, args.stream))
    conn.send("stats")
    stats = conn.recv()
    durations = [end - start for start, end in stats["spans"]]
    requests = stats["requests"]
    busy = sum(durations) / run.wall_s
    server_mean = statistics.fmean(durations)
    client_mean = run.client_latency_s / run.client_requests
    by_latency_ms = (client_mean - server_mean) * 1000
    by_wall_ms = (run.wall_s * args.capacity / requests - args.delay) * 1000
    cpu_ms = run.cpu_s / requests * 1000
    ideal = math.ceil(len(frames) / args.capacity) * args.delay
    print(
        f"{protocol}: {run.described} keyframes described, {requests} requests ({requests - len(frames)} retried) "
        f"on {stats['connections']} connections"
    )
    print(f"  wall {run.wall_s:.3f} s (ideal {ideal:.3f} s: {len(frames)} requests / {args.capacity} x {args.delay} s)")
    print(
        f"  concurrency: server max in flight {stats['max_in_flight']} of {args.capacity}; time-averaged "
        f"{busy:.1f} = {busy / args.capacity:.1%} of capacity (target >= 90 %)"
    )
    print(
        f"  client overhead per request: {by_latency_ms:.2f} ms latency beyond the server's "
        f"(client {client_mean * 1000:.1f} ms, server {server_mean * 1000:.1f} ms); {by_wall_ms:.2f} ms of wall "
        f"beyond the delay at full capacity; {cpu_ms:.2f} ms CPU (target < 5 ms)"
    )
    lag = sorted(run.lag_ms)
    print(
        f"  client event loop: a 5 ms timer fired {statistics.median(lag):.2f} ms late at the median, "
        f"{lag[int(0.95 * (len(lag) - 1))]:.2f} ms at p95; client CPU {run.cpu_s / run.wall_s:.0%} of one core"
    )
    print(f"  server process: {stats['cpu_s'] / requests * 1000:.2f} ms CPU per request")
    ok = busy >= 0.9 * args.capacity and max(by_latency_ms, by_wall_ms) < 5.0
    print(f"  {'PASS' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keyframes", type=int, default=320)
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--protocol", choices=["tgi", "openai", "both"], default="both")
    parser.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=True, help="the endpoint's stream setting"
    )
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=serve, args=(theirs, args.delay, args.capacity), daemon=True)
    server.start()
    try:
        url = ours.recv()
        with tempfile.TemporaryDirectory(prefix="aima-bench-vision-") as folder:
            frames = make_keyframes(Path(folder), args.keyframes)
            size = sum(f.path.stat().st_size for f in frames) / len(frames)
            print(
                f"llava on the test model server ({args.delay * 1000:.0f} ms per request, capacity {args.capacity}), "
                f"{args.keyframes} keyframes of {size / 1024:.1f} KiB, endpoint max_concurrency {args.capacity}, "
                f"{'streaming' if args.stream else 'not streaming'}"
            )
            for protocol in ("tgi", "openai") if args.protocol == "both" else (args.protocol,):
                measure(ours, url, protocol, frames, args)
    finally:
        ours.send("stop")
        server.join(15)


if __name__ == "__main__":
    main()
