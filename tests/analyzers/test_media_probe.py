"""The built-in media-probe analyzer, loaded through the plugin manager as the worker loads it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aima.analysis import AnalysisInput, Analyzer, BlockingAnalyzer, MediaKind, Need
from aima.analyzers import media_probe
from aima.errors import CorruptMedia, UnknownAnalyzer
from aima.media.probe import MediaProbe
from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.testing import media


@pytest.fixture
def registry() -> AnalyzerRegistry:
    return AnalyzerRegistry(create_plugin_manager(load_external=False))


def _item(path: Path, kind: MediaKind, progress: list[tuple[float, str]] | None = None) -> AnalysisInput:
    data = path.read_bytes()

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress.append((fraction, message))

    return AnalysisInput(
        media_id="m-1",
        case_id="c-1",
        kind=kind,
        content_type="application/octet-stream",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        original_path=path,
        report_progress=report,
    )


def test_registry_lists_the_media_probe(registry: AnalyzerRegistry) -> None:
    assert "media-probe" in registry.names()
    analyzer = registry.get("media-probe")
    assert isinstance(analyzer, media_probe.MediaProbeAnalyzer)
    assert isinstance(analyzer, BlockingAnalyzer)
    assert (analyzer.name, analyzer.version, analyzer.runs_on) == ("media-probe", "1.0.0", "cpu")
    assert analyzer.description
    assert analyzer.needs == frozenset({Need.ORIGINAL})
    assert analyzer.result_model is MediaProbe
    assert all(analyzer.accepts(kind) for kind in MediaKind)


def test_the_hook_registers_one_analyzer() -> None:
    registered: list[Analyzer] = []
    media_probe.register_analyzers(registered.append)
    assert [a.name for a in registered] == ["media-probe"]


def test_unknown_analyzer_names_the_available_ones(registry: AnalyzerRegistry) -> None:
    with pytest.raises(UnknownAnalyzer) as caught:
        registry.get("no-such-analyzer")
    assert isinstance(caught.value, KeyError)
    assert "no-such-analyzer" in str(caught.value)
    assert "media-probe" in str(caught.value)


async def test_probes_an_image(registry: AnalyzerRegistry, tmp_path: Path) -> None:
    path = tmp_path / "original"
    path.write_bytes(media.make_jpeg(64, 48))
    progress: list[tuple[float, str]] = []
    result = await registry.get("media-probe").analyze(_item(path, MediaKind.IMAGE, progress))
    assert isinstance(result, MediaProbe)
    assert (result.kind, result.width, result.height) == (MediaKind.IMAGE, 64, 48)
    assert result.image is not None and result.image.exif["Make"] == media.EXIF_MAKE
    fractions = [f for f, _ in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


async def test_probes_a_video(registry: AnalyzerRegistry, tmp_path: Path) -> None:
    path = tmp_path / "original"
    path.write_bytes(media.make_mp4(seconds=1.0, width=160, height=120, fps=10))
    result = await registry.get("media-probe").analyze(_item(path, MediaKind.VIDEO))
    assert isinstance(result, MediaProbe)
    assert (result.kind, result.width, result.height) == (MediaKind.VIDEO, 160, 120)
    assert result.frame_rate == pytest.approx(10.0)
    assert result.duration_s == pytest.approx(1.0, abs=0.2)
    assert result.model_dump(mode="json")["kind"] == "video"


async def test_probes_audio_registered_as_video(registry: AnalyzerRegistry, tmp_path: Path) -> None:
    """The upload registered the provisional kind; the probe reports the real one."""
    path = tmp_path / "original"
    path.write_bytes(media.make_mp4(video=False))
    result = await registry.get("media-probe").analyze(_item(path, MediaKind.VIDEO))
    assert isinstance(result, MediaProbe)
    assert (result.kind, result.content_type) == (MediaKind.AUDIO, "audio/mp4")


async def test_corrupt_media_reaches_the_caller(registry: AnalyzerRegistry, tmp_path: Path) -> None:
    path = tmp_path / "original"
    data = media.make_mp4()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMedia):
        await registry.get("media-probe").analyze(_item(path, MediaKind.VIDEO))
