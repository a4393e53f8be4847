"""Built-in plugin: the media probe, which says what a file holds and proves that it decodes."""

from __future__ import annotations

import logging

from aima.analysis import AnalysisInput, BlockingAnalyzer, MediaKind, Need, RegisterAnalyzer
from aima.hookspecs import hookimpl
from aima.media.probe import MediaProbe, probe_file
from aima.media.sniff import sniff_file

logger = logging.getLogger(__name__)


class MediaProbeAnalyzer(BlockingAnalyzer):
    name = "media-probe"
    version = "1.0.0"
    description = (
        "Container, codecs, dimensions, duration, frame rate, audio layout and EXIF (incl. GPS) of the "
        "original, read with Pillow and PyAV; fails when the file does not decode."
    )
    media_kinds = frozenset(MediaKind)
    needs = frozenset({Need.ORIGINAL})
    runs_on = "cpu"
    result_model = MediaProbe

    def analyze_blocking(self, item: AnalysisInput) -> MediaProbe:
        item.report_progress(0.0, "reading the file header")
        sniffed = sniff_file(item.original_path)
        item.report_progress(0.2, f"probing {sniffed.format}")
        probe = probe_file(item.original_path, sniffed)
        if probe.kind != item.kind:
            logger.info(
                "media %s registered as %s probes as %s (%s)",
                item.media_id,
                item.kind,
                probe.kind,
                probe.format,
            )
        item.report_progress(1.0, "done")
        return probe


@hookimpl
def register_analyzers(register: RegisterAnalyzer) -> None:
    register(MediaProbeAnalyzer())
