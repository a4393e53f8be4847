"""Vision benchmark: the keyframes of a long video described by the ``llava`` analyzer against the test model server.

The issue's target: with the server answering each request after 200 ms and taking at most 32 at once, the analyzer
keeps at least 90 % of that capacity busy and adds less than 5 ms per request.

The test model server (`aima.testing.model_server`) runs in a process of its own, so that the client's figures are
its own; it waits --delay seconds before each answer, refuses with 429 beyond --capacity requests in flight (a client
that overshoots pays retries), and times every generation request from the moment its application is called to the
moment the last byte of its answer is handed to the socket, under the keyframe it describes. The client is what a
worker runs: `LlavaAnalyzer.analyze` on an `AnalysisInput` of --keyframes JPEG keyframes (distinct pictures of
--frame-size, 4 s apart), with a vision endpoint of ``max_concurrency`` = --capacity, streaming as the endpoint's
settings say unless --stream/--no-stream, under uvloop. Each protocol is measured --runs times after a warm-up run
(imports, first-call costs, connections), each run followed by the floor (--no-baseline leaves it out): aiohttp alone
sending the very same request bodies, made before the clock starts, and reading each answer to its end unparsed.

Figures, per run:

- achieved concurrency: the server's maximum in flight, and the time-averaged number in flight: the sum of the
  server's request durations over the client's wall time, as a share of the capacity (target >= 90 %);
- client overhead per request (target < 5 ms), median and p95, paired by keyframe: the client's time before the
  request left (from calling ``generate_json`` to its body written to the socket, noted by an aiohttp trace: the
  prompt, the picture's encoding, the JSON, a slot, the client's event loop) plus its time after the answer's last
  byte (from the server handing it to the socket to the parsed, validated answer: the loopback, the client's loop,
  reading, parsing, validation). Both clocks are the system-wide monotonic one;
- waited beyond the server: what the client observed of a request minus the server's own duration of it, which
  adds to the client overhead the time a request sat in the kernel and in the server's queue (a single-threaded
  server takes a wave of 32 requests arriving together one after the other);
- CPU per request of the client process (the whole client: reading keyframes, prompts, JSON, validation, the loop)
  and of the server process;
- the machine: load average, the share of the cores the client, the server and every other process used during the
  run, and how late a 5 ms timer of the client's event loop fired.

The floor tells the client's part from the machine's: what bare aiohttp does not reach, the machine and the test
server (one Python thread, all requests of a wave arriving together) do not allow.

Run: .venv/bin/python bench/vision.py [--keyframes 320] [--capacity 32] [--delay 0.2] [--protocol both] [--runs 3]
     [--frame-size 320x180] [--stream | --no-stream] [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import logging
import math
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import aiohttp
import uvloop
from PIL import Image, ImageDraw
from starlette.types import ASGIApp, Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.analysis import AnalysisInput, Keyframe, MediaKind
from aima.inference import Endpoint, Endpoints, GenerationResult, endpoints_for, format_for_model
from aima.inference import Message as ChatMessage
from aima.inference.wire import OpenAIWire, TgiWire, Wire
from aima.settings import EndpointSettings, InferenceSettings
from aima.testing.model_server import ModelServer
from aima.vision import FrameDescription, VisualDescription
from aima_llava.analyzer import LlavaAnalyzer
from aima_llava.describe import image_of
from aima_llava.prompts import describe_messages, question
from aima_llava.settings import LlavaSettings

MODEL = "llava-hf/llava-v1.6-34b-hf"
MAX_NEW_TOKENS = 512
GENERATION_PATHS = frozenset({"/", "/generate", "/generate_stream", "/v1/chat/completions"})
#: How a request names its keyframe (the llava analyzer's question: "This is keyframe 12 of 320 of a video").
KEYFRAME = re.compile(rb"keyframe (\d+) of \d+")
KEYFRAME_TEXT = re.compile(r"keyframe (\d+) of \d+")


# -- the server, in its own process --------------------------------------------------------------------------------


@dataclass
class TimedModelServer(ModelServer):
    """The test model server, timing each generation request from its arrival (the application is called) to the
    last byte of its answer (handed to the socket)."""

    #: (keyframe number or 0, start, end) of each generation request, on the server's monotonic clock.
    spans: list[tuple[int, float, float]] = field(default_factory=list, init=False)
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
            key = 0
            ended = 0.0

            async def keyed() -> Message:
                nonlocal key
                message = await receive()
                if not key and message["type"] == "http.request":
                    found = KEYFRAME.search(message.get("body", b""))
                    key = int(found.group(1)) if found else 0
                return message

            async def sent(message: Message) -> None:
                nonlocal ended
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    ended = time.monotonic()  # the last byte handed to the socket

            try:
                await inner(scope, keyed, sent)
            finally:
                self.spans.append((key, started, ended or time.monotonic()))

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


# -- the clients ----------------------------------------------------------------------------------------------------


def make_keyframes(folder: Path, count: int, width: int, height: int) -> list[Keyframe]:
    """Distinct JPEGs (a textured picture, turned, with a moving bar), 4 s apart, as a long video's keyframes."""
    texture = Image.effect_noise((width, height), 16).convert("RGB")
    frames = []
    for index in range(count):
        colour = ((index * 37) % 256, (index * 71) % 256, (index * 13) % 256)
        image = Image.blend(Image.new("RGB", (width, height), colour), texture.rotate(index % 360), 0.5)
        bar = index * 7 % max(1, width - 20)
        ImageDraw.Draw(image).rectangle((bar, height // 5, bar + 20, height * 4 // 5), fill=(255, 255, 255))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        path = folder / f"{index:05d}.jpg"
        path.write_bytes(buffer.getvalue())
        frames.append(Keyframe(path=path, timestamp_s=index * 4.0, scene_change=True, width=width, height=height))
    return frames


#: Keyframe number -> (when the client asked, when it had the answer, tries), on the system-wide monotonic clock.
Calls = dict[int, tuple[float, float, int]]
#: Keyframe number -> when the body of its (last) request was written to the socket.
Sent = dict[int, float]


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    calls: Calls
    sent: Sent
    #: How late a 5 ms timer of the client's event loop fired, in ms (a busy client or machine shows here).
    lag_ms: list[float]
    #: Busy CPU seconds of the whole machine over the run (/proc/stat; None elsewhere).
    machine_cpu_s: float | None


def machine_cpu_s() -> float | None:
    """Busy CPU seconds of all the machine's cores so far (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed_calls(endpoint: Endpoint, calls: Calls) -> None:
    """Wraps the endpoint's ``generate_json`` to note, per keyframe, when the client asked and had its answer."""
    inner = endpoint.generate_json

    async def generate_json(messages: list[ChatMessage], *args: Any, **kwargs: Any) -> GenerationResult[Any]:
        asked = time.monotonic()
        result = await inner(messages, *args, **kwargs)
        found = KEYFRAME_TEXT.search(messages[-1].text)
        if found:
            calls[int(found.group(1))] = (asked, time.monotonic(), result.attempts)
        return result

    endpoint.generate_json = generate_json  # type: ignore[method-assign,assignment]


def noting_sent(sent: Sent) -> aiohttp.TraceConfig:
    """An aiohttp trace that notes when each request's body was written to the socket, under its keyframe."""
    trace = aiohttp.TraceConfig()

    async def chunk_sent(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        found = KEYFRAME.search(params.chunk)
        if found:
            context.key = int(found.group(1))
        context.sent = time.monotonic()

    async def headers_received(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        key = getattr(context, "key", 0)
        if key:
            sent[key] = context.sent

    trace.on_request_chunk_sent.append(chunk_sent)
    trace.on_request_end.append(headers_received)
    return trace


async def timed_run(work: Awaitable[None], calls: Calls, sent: Sent) -> Run:
    lag: list[float] = []
    ticker = asyncio.create_task(watch_loop(lag))
    machine = machine_cpu_s()
    cpu = time.process_time()
    started = time.monotonic()
    await work
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu
    machine_after = machine_cpu_s()
    ticker.cancel()
    busy = None if machine is None or machine_after is None else machine_after - machine
    return Run(wall, cpu, calls, sent, lag, busy)


async def watch_loop(lag: list[float], every_s: float = 0.005) -> None:
    while True:
        due = time.monotonic() + every_s
        await asyncio.sleep(every_s)
        lag.append((time.monotonic() - due) * 1000)


async def describe(
    url: str, protocol: str, name: str, frames: list[Keyframe], capacity: int, stream: bool | None
) -> Run:
    """The llava analyzer on the keyframes, as a worker runs it."""
    endpoint: dict[str, Any] = {
        "url": url,
        "protocol": protocol,
        "model": MODEL,
        "max_concurrency": capacity,
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    if stream is not None:
        endpoint["stream"] = stream
    settings = InferenceSettings(endpoints={name: endpoint}, vision_endpoint=name)
    calls: Calls = {}
    sent: Sent = {}
    # The endpoint makes its own aiohttp session: the trace joins every session made meanwhile (only this one).
    traced = functools.partial(aiohttp.ClientSession, trace_configs=[noting_sent(sent)])
    with mock.patch.object(aiohttp, "ClientSession", traced):
        async with endpoints_for(settings) as endpoints:
            return await described(endpoints, name, frames, calls, sent)


async def described(endpoints: Endpoints, name: str, frames: list[Keyframe], calls: Calls, sent: Sent) -> Run:
    """The llava analyzer describing the keyframes as a worker runs it, every request timed."""
    timed_calls(endpoints[name], calls)
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

    async def work() -> None:
        output = await LlavaAnalyzer(LlavaSettings(endpoint=name)).analyze(item)
        assert isinstance(output.result, VisualDescription) and len(output.result.timeline) == len(frames)

    return await timed_run(work(), calls, sent)


def bare_bodies(protocol: str, frames: list[Keyframe], stream: bool) -> list[tuple[int, str, bytes]]:
    """(keyframe number, path, body) of the very requests the analyzer sends, made before the clock starts."""
    wire: Wire = OpenAIWire(MODEL) if protocol == "openai" else TgiWire(format_for_model(MODEL) or "chatml")
    schema = FrameDescription.model_json_schema()
    bodies = []
    for index, frame in enumerate(frames):
        messages = describe_messages(image_of(index, frame), question(index, frame, len(frames), True))
        request = wire.request(messages, schema=schema, max_new_tokens=MAX_NEW_TOKENS, temperature=0, stream=stream)
        bodies.append((index + 1, request.path, request.data))
    return bodies


async def bare(url: str, bodies: list[tuple[int, str, bytes]], capacity: int) -> Run:
    """The floor: aiohttp alone sending the prepared bodies, `capacity` at once, reading each answer to its end
    without looking at it. What it cannot reach, the machine and the server do not allow."""
    calls: Calls = {}
    sent: Sent = {}
    pending = iter(bodies)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=capacity + 2)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[noting_sent(sent)]) as session:

        async def worker() -> None:
            for key, path, body in pending:
                asked = time.monotonic()
                async with session.post(url + path, data=body, headers=headers) as response:
                    async for _ in response.content.iter_any():
                        pass
                calls[key] = (asked, time.monotonic(), 1)

        async def work() -> None:
            await asyncio.gather(*(worker() for _ in range(capacity)))

        return await timed_run(work(), calls, sent)


# -- figures -------------------------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Figures:
    concurrency: float
    overhead_median_ms: float
    overhead_p95_ms: float
    cpu_ms: float

    def passed(self) -> bool:
        return self.concurrency >= 0.9 and self.overhead_median_ms < 5.0 and self.cpu_ms < 5.0


def report(label: str, run: Run, stats: dict[str, Any], capacity: int, delay_s: float) -> Figures:
    spans: list[tuple[int, float, float]] = stats["spans"]
    requests: int = stats["requests"]
    busy = sum(end - start for _, start, end in spans) / run.wall_s
    by_key: dict[int, list[tuple[float, float]]] = {}
    for key, start, end in spans:
        by_key.setdefault(key, []).append((start, end))
    # Requests tried once, paired by keyframe: what the client waited beyond the server's own time, split into
    # before the server's application had it (the client's preparation, the socket, the server's queue) and after
    # its last byte (the socket, the client's reading, parsing and validation).
    paired = [
        (asked, answered, *by_key[key][0])
        for key, (asked, answered, tries) in run.calls.items()
        if tries == 1 and len(by_key.get(key, ())) == 1
    ]
    waited = [((answered - asked) - (end - start)) * 1000 for asked, answered, start, end in paired]
    sent = [(key, run.sent[key]) for key in run.calls if key in run.sent]
    before = {key: (left - run.calls[key][0]) * 1000 for key, left in sent}
    after = {key: (run.calls[key][1] - by_key[key][0][1]) * 1000 for key, _ in sent if len(by_key.get(key, ())) == 1}
    overhead = [before[key] + after[key] for key in after if run.calls[key][2] == 1]
    server_ms = [(end - start) * 1000 for _, start, end in spans]
    figures = Figures(
        concurrency=busy / capacity,
        overhead_median_ms=statistics.median(overhead),
        overhead_p95_ms=percentile(overhead, 0.95),
        cpu_ms=run.cpu_s / requests * 1000,
    )
    ideal = math.ceil(len(run.calls) / capacity) * delay_s
    print(
        f"{label}: {requests} requests ({requests - len(run.calls)} retried) on {stats['connections']} connections; "
        f"wall {run.wall_s:.3f} s (ideal {ideal:.3f} s)"
    )
    print(
        f"  concurrency: server max in flight {stats['max_in_flight']} of {capacity}; time-averaged {busy:.1f} = "
        f"{figures.concurrency:.1%} of capacity (target >= 90 %)"
    )
    print(
        f"  client overhead per request ({len(overhead)} paired): median {figures.overhead_median_ms:.2f} ms, "
        f"p95 {figures.overhead_p95_ms:.2f} ms (target < 5 ms); before the request left: median "
        f"{statistics.median(before.values()):.2f} ms, p95 {percentile(list(before.values()), 0.95):.2f}; after "
        f"the answer's last byte: median {statistics.median(after.values()):.2f} ms, p95 "
        f"{percentile(list(after.values()), 0.95):.2f}"
    )
    print(
        f"  waited beyond the server's time (client overhead, the kernel and the server's queue): median "
        f"{statistics.median(waited):.2f} ms, p95 {percentile(waited, 0.95):.2f} ms; server time median "
        f"{statistics.median(server_ms):.1f} ms"
    )
    rest = ""
    if run.machine_cpu_s is not None:
        others = run.machine_cpu_s - run.cpu_s - stats["cpu_s"]
        rest = f", other processes {others / run.wall_s:.0%} (all: {run.machine_cpu_s / run.wall_s:.0%})"
    load = os.getloadavg()
    server_cpu_ms = stats["cpu_s"] / requests * 1000
    print(
        f"  CPU per request: client {figures.cpu_ms:.2f} ms (target < 5 ms), server {server_cpu_ms:.2f} ms; "
        f"of {os.cpu_count()} cores (load {load[0]:.2f}): client {run.cpu_s / run.wall_s:.0%}, "
        f"server {stats['cpu_s'] / run.wall_s:.0%}{rest}"
    )
    print(
        f"  a 5 ms timer of the client fired {statistics.median(run.lag_ms):.2f} ms late at the median, "
        f"{percentile(run.lag_ms, 0.95):.2f} ms at p95"
    )
    print(f"  {'PASS' if figures.passed() else 'FAIL'}")
    return figures


def measure(
    conn: Connection, label: str, client: Callable[[], Coroutine[Any, Any, Run]], args: argparse.Namespace
) -> Figures:
    conn.send("reset")
    conn.recv()
    run = uvloop.run(client())
    conn.send("stats")
    return report(label, run, conn.recv(), args.capacity, args.delay)


def summary(label: str, runs: list[Figures]) -> None:
    def listed(values: list[float], unit: str) -> str:
        return " ".join(f"{v:.1f}{unit}" for v in values)

    print(
        f"{label}, {len(runs)} runs: concurrency {listed([r.concurrency * 100 for r in runs], '%')}; overhead median "
        f"{listed([r.overhead_median_ms for r in runs], ' ms')}, p95 {listed([r.overhead_p95_ms for r in runs], ' ms')}"
        f"; client CPU {listed([r.cpu_ms for r in runs], ' ms')}; {sum(r.passed() for r in runs)} of {len(runs)} pass"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keyframes", type=int, default=320)
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--protocol", choices=["tgi", "openai", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frame-size", default="320x180", help="WIDTHxHEIGHT of the keyframes (AIMA's: up to 1280)")
    parser.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=None, help="override the endpoint's stream setting"
    )
    parser.add_argument(
        "--baseline", action=argparse.BooleanOptionalAction, default=True, help="also time bare aiohttp (the floor)"
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.frame_size.lower().split("x"))
    stream: bool = EndpointSettings.model_fields["stream"].default if args.stream is None else args.stream

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=serve, args=(theirs, args.delay, args.capacity), daemon=True)
    server.start()
    try:
        url = ours.recv()
        with tempfile.TemporaryDirectory(prefix="aima-bench-vision-") as folder:
            frames = make_keyframes(Path(folder), args.keyframes, width, height)
            size = sum(f.path.stat().st_size for f in frames) / len(frames)
            print(
                f"llava on the test model server ({args.delay * 1000:.0f} ms per request, capacity {args.capacity}), "
                f"{args.keyframes} keyframes of {width}x{height} ({size / 1024:.1f} KiB), endpoint max_concurrency "
                f"{args.capacity}, {'streaming' if stream else 'not streaming'}"
            )
            results: dict[str, list[Figures]] = {}
            for protocol in ("tgi", "openai") if args.protocol == "both" else (args.protocol,):
                warm = frames[: args.capacity * 2]
                uvloop.run(describe(url, protocol, f"warmup-{protocol}", warm, args.capacity, stream))
                bodies = bare_bodies(protocol, frames, stream) if args.baseline else []
                for number in range(1, args.runs + 1):
                    name = f"bench-{protocol}-{number}"
                    client = functools.partial(describe, url, protocol, name, frames, args.capacity, stream)
                    results.setdefault(protocol, []).append(measure(ours, f"{protocol} run {number}", client, args))
                    if args.baseline:
                        floor = functools.partial(bare, url, bodies, args.capacity)
                        label = f"bare aiohttp, {protocol}"
                        results.setdefault(label, []).append(measure(ours, f"{label} run {number}", floor, args))
            for label, runs in results.items():
                summary(label, runs)
    finally:
        ours.send("stop")
        server.join(15)


if __name__ == "__main__":
    main()
