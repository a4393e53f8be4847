"""Analyzer benchmark: the installed analyzer plugins on this machine's CPU, as a worker runs them.

The analyzers and the text embedder come from the plugins' entry points (`AnalyzerRegistry`, default settings, as a
worker builds them), and each is timed on `analyze_blocking` (or `embed`) with an `AnalysisInput` made here. Inputs
are made in a temporary folder, nothing is downloaded:

- whisper: a 60 s 16 kHz mono WAV of espeak-ng speech (several sentences in two voices, looped, padded with
  silence), against faster-whisper used directly with the same model and the same arguments (the plugin's
  `aima_whisper.bench` helpers: the raw side decodes the WAV with faster-whisper's own decoder). Raw and analyzer
  runs alternate, the order flipping every round (raw, analyzer, analyzer, raw, ...), so drift in the machine's load
  hits both alike, for --whisper-rounds rounds (more than the other repeats: on a shared 2-core machine one run's
  time varies by 10-15 %, and this ratio is a target). Figures: the ratio of the medians (the issue's target: at most
  1.05), the median of the per-round ratios, and the analyzer's real-time factor (seconds per second of audio);
- speakers: its real-time factor on the same clip;
- faces: scikit-image's astronaut (512x512 image) and the same picture scaled into a 1280x720 keyframe, with the
  packaged detector (OpenCV's Haar cascade, the default), then with aima_faces' tiny test pack, which measures
  insightface's own pre- and post-processing, alignment and crops only (its networks are a few operators, not a real
  SCRFD/ArcFace pack);
- ocr: a 1280x720 keyframe with rendered lines of text;
- embeddings: minilm-l6 at batch 32 on sentences of 20 words, in embeddings per second.

Every analyzer runs once to warm up (loading models, first-call allocations), which is not counted; the figures are
the median (and the fastest) of --repeats timed runs. The machine may be shared: compare medians with the fastest.

Run: .venv/bin/python bench/analyzers.py [--repeats 6] [--whisper-rounds 12] [--sentences 320]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.analysis import AnalysisInput, AnalysisOutput, Analyzer, BlockingAnalyzer, Embedder
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.testing.inputs import mono_samples, picture_input
from aima_faces.testing import build_tiny_pack
from aima_whisper.analyzer import WhisperAnalyzer
from aima_whisper.bench import analyzer_transcription, audio_input, raw_transcription

RATE = 16_000
CLIP_S = 60.0
SPEECH = [
    "The council met on Tuesday evening to discuss the new bridge across the river.",
    "Witnesses said the truck left the warehouse shortly after midnight and drove north.",
    "According to the report, the shipment was inspected twice before it reached the port.",
    "Police have asked anyone with information about the fire to contact them by phone.",
    "The minister declined to comment on the leaked documents during the press conference.",
    "Prices for bread and fuel rose sharply in the weeks before the election.",
]
VOICES = ("en-us", "en-gb+f3")  # two voices, so that the speakers analyzer has someone to tell apart
PAUSE_S = 0.6
WORDS = (  # the vocabulary of the sentences embedded
    "investigators reviewed footage from the station camera showing two people leaving a grey car near the market "
    "before the documents were signed by officials at the harbour office late on Friday while reporters waited "
    "outside the building for a statement about the contract and the missing payments to local suppliers"
)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
OCR_LINES = [
    "BREAKING: Harbour contract signed at 23:40",
    "Ministry of Transport - Press Office",
    "Shipment 7741-B inspected twice before arrival",
    "Call 0800 555 0199 with information",
]


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def repeat(run: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of `repeats` runs after one warm-up run."""
    run()
    return [timed(run) for _ in range(repeats)]


def spoken(text: str, voice: str, folder: Path) -> npt.NDArray[np.int16]:
    """`text` spoken by espeak-ng, resampled with PyAV to the worker's 16 kHz mono 16-bit track."""
    raw = folder / "espeak.wav"
    subprocess.run(["/usr/bin/espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
    return mono_samples(raw, RATE)


def make_clip(folder: Path) -> Path:
    """60 s of sentences, alternating voices and separated by pauses, looped while whole sentences fit; then silence."""
    pause = np.zeros(int(PAUSE_S * RATE), dtype=np.int16)
    sentences = [spoken(text, VOICES[i % len(VOICES)], folder) for i, text in enumerate(SPEECH)]
    total = int(CLIP_S * RATE)
    parts: list[npt.NDArray[np.int16]] = []
    length = 0
    for i in range(1000):
        sentence = sentences[i % len(sentences)]
        if length + len(sentence) + len(pause) > total:
            break
        parts += [sentence, pause]
        length += len(sentence) + len(pause)
    parts.append(np.zeros(total - length, dtype=np.int16))
    path = folder / "clip-60s.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(np.concatenate(parts).astype("<i2").tobytes())
    return path


def face_pictures(folder: Path) -> dict[str, Path]:
    astronaut = Image.fromarray(np.asarray(data.astronaut(), dtype=np.uint8))  # type: ignore[no-untyped-call]
    keyframe = Image.new("RGB", (1280, 720))
    keyframe.paste(astronaut.resize((720, 720), Image.Resampling.BICUBIC), (280, 0))
    paths = {"image 512x512": folder / "astronaut.jpg", "keyframe 1280x720": folder / "astronaut-720p.jpg"}
    astronaut.save(paths["image 512x512"], quality=95)
    keyframe.save(paths["keyframe 1280x720"], quality=95)
    return paths


def ocr_picture(folder: Path) -> Path:
    """Light lines of text in two sizes on a dark 1280x720 frame, as a caption or slide would show them."""
    image = Image.new("RGB", (1280, 720), (28, 32, 40))
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(OCR_LINES):
        size = 52 if n == 0 else 36
        draw.text((80, 120 + 130 * n), line, font=ImageFont.truetype(FONT, size), fill=(245, 245, 235))
    path = folder / "text-720p.jpg"
    image.save(path, quality=92)
    return path


def output_of(analyzer: Analyzer, item: AnalysisInput) -> AnalysisOutput:
    assert isinstance(analyzer, BlockingAnalyzer)
    output = analyzer.analyze_blocking(item)
    return output if isinstance(output, AnalysisOutput) else AnalysisOutput(result=output)


def analyzer_runs(analyzer: Analyzer, item: AnalysisInput, repeats: int) -> tuple[list[float], AnalysisOutput]:
    assert isinstance(analyzer, BlockingAnalyzer)
    times = repeat(lambda: analyzer.analyze_blocking(item), repeats)
    return times, output_of(analyzer, item)


def whisper_vs_raw(analyzer: WhisperAnalyzer, wav: Path, repeats: int) -> dict[str, Any]:
    """Raw faster-whisper and the analyzer in alternating order (AB BA AB ...), after one warm-up of each."""
    raw, ours = raw_transcription(analyzer, wav), analyzer_transcription(analyzer, wav)
    raw_text, our_text = raw(), ours()
    raw_times: list[float] = []
    our_times: list[float] = []
    for round_ in range(repeats):
        if round_ % 2 == 0:
            raw_times.append(timed(raw))
            our_times.append(timed(ours))
        else:
            our_times.append(timed(ours))
            raw_times.append(timed(raw))
    return {
        "raw": raw_times,
        "ours": our_times,
        "paired": statistics.median(o / r for o, r in zip(our_times, raw_times, strict=True)),
        "same_text": raw_text.split() == our_text.split(),
        "words": len(our_text.split()),
    }


def sentences(count: int) -> list[str]:
    rng, words = random.Random(7), WORDS.split()
    return [" ".join(rng.choice(words) for _ in range(20)).capitalize() + "." for _ in range(count)]


def embed_rate(embedder: Embedder, texts: list[str], repeats: int) -> list[float]:
    """Embeddings per second of each timed run."""
    return [len(texts) / seconds for seconds in repeat(lambda: embedder.embed(texts), repeats)]


def ms(times: list[float]) -> str:
    return f"median {1000 * statistics.median(times):7.1f} ms, fastest {1000 * min(times):7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6, help="timed runs of each analyzer and of the embedder")
    parser.add_argument("--whisper-rounds", type=int, default=12, help="timed runs of whisper and raw faster-whisper")
    parser.add_argument("--sentences", type=int, default=320, help="texts embedded per timed run")
    args = parser.parse_args()
    registry = AnalyzerRegistry(create_plugin_manager(), {})
    for analyzer in registry.all():
        analyzer.check()

    with tempfile.TemporaryDirectory(prefix="aima-bench-analyzers-") as tmp:
        folder = Path(tmp)
        wav = make_clip(folder)
        audio = audio_input(wav)
        print(
            f"analyzers after a warm-up, median and fastest of {args.repeats} timed runs "
            f"({args.whisper_rounds} for whisper and raw faster-whisper, alternating)"
        )

        whisper = registry.get("whisper")
        assert isinstance(whisper, WhisperAnalyzer)
        figures = whisper_vs_raw(whisper, wav, args.whisper_rounds)
        raw_s, our_s = statistics.median(figures["raw"]), statistics.median(figures["ours"])
        resolved = whisper.resolved_settings()
        print(
            f"  whisper ({resolved.model_label()}, {resolved.device} {resolved.compute_type}, "
            f"{whisper.transcribe_kwargs()}) on a {CLIP_S:.0f} s espeak-ng clip:"
        )
        print(f"    faster-whisper alone: median {raw_s:.2f} s, fastest {min(figures['raw']):.2f} s")
        print(f"    whisper analyzer:     median {our_s:.2f} s, fastest {min(figures['ours']):.2f} s")
        print(
            f"    ratio analyzer/raw {our_s / raw_s:.3f} (target <= 1.05; median of per-round ratios "
            f"{figures['paired']:.3f}, fastest/fastest {min(figures['ours']) / min(figures['raw']):.3f}), "
            f"real-time factor {our_s / CLIP_S:.3f}; {figures['words']} words, "
            f"same text as raw: {'yes' if figures['same_text'] else 'no'}"
        )

        times, output = analyzer_runs(registry.get("speakers"), audio, args.repeats)
        result = output.result
        print(
            f"  speakers on the same clip: median {statistics.median(times):.2f} s, fastest {min(times):.2f} s, "
            f"real-time factor {statistics.median(times) / CLIP_S:.3f}; "
            f"{len(getattr(result, 'speakers', []))} speakers in {len(getattr(result, 'turns', []))} turns"
        )

        pack = build_tiny_pack(folder / "tiny-pack")
        faces = {
            "haar (packaged detector)": registry.get("faces"),
            "tiny pack (insightface's overhead only, not a real pack)": AnalyzerRegistry(
                create_plugin_manager(), {"faces": {"pack_dir": str(pack)}}
            ).get("faces"),
        }
        pictures = face_pictures(folder)
        for setup, analyzer in faces.items():
            print(f"  faces, {setup}:")
            for name, path in pictures.items():
                times, output = analyzer_runs(analyzer, picture_input(path), args.repeats)
                count = getattr(output.result, "face_count", "?")
                print(f"    {name:18} {ms(times)}  ({count} faces)")

        times, output = analyzer_runs(registry.get("ocr"), picture_input(ocr_picture(folder)), args.repeats)
        print(f"  ocr, keyframe 1280x720 with {len(OCR_LINES)} lines of text: {ms(times)}")
        read = [line.text for frame in getattr(output.result, "frames", []) for line in frame.lines]
        print(f"    read: {' | '.join(read) or 'nothing'}")

    embedder = registry.embedder()
    assert embedder is not None
    texts = sentences(args.sentences)
    rates = embed_rate(embedder, texts, args.repeats)
    batch = getattr(getattr(embedder, "settings", None), "batch_size", "?")
    print(
        f"  embeddings, {embedder.name} at batch {batch} on {len(texts)} sentences of 20 words: "
        f"median {statistics.median(rates):.0f}/s, fastest run {max(rates):.0f}/s"
    )


if __name__ == "__main__":
    main()
