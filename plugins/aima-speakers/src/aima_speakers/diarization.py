"""Who spoke when: speech regions cut into windows, window embeddings clustered into speakers, windows merged into
turns. The number of speakers is not known in advance; a cosine-similarity threshold decides it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.cluster.hierarchy import fcluster, linkage

from aima_speakers.audio import SpeechRegion
from aima_speakers.mel import SAMPLE_RATE

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Window:
    """A stretch of speech embedded on its own (`start`/`end`, samples) and the part of the timeline it stands for
    when turns are drawn (`own_start`/`own_end`): overlapping windows split their overlap at its middle."""

    start: int
    end: int
    own_start: int
    own_end: int


def cut_windows(regions: Sequence[SpeechRegion], window_s: float, min_segment_s: float) -> list[Window]:
    """Windows of `window_s` every half window over each region at least `min_segment_s` long; the last window of a
    region ends with it, and a region shorter than a window is one window."""
    size = round(window_s * SAMPLE_RATE)
    hop = max(1, size // 2)
    min_len = round(min_segment_s * SAMPLE_RATE)
    windows: list[Window] = []
    for region in regions:
        length = region.end - region.start
        if length < max(min_len, 1):
            continue
        if length <= size:
            windows.append(Window(region.start, region.end, region.start, region.end))
            continue
        count = int(np.ceil((length - size) / hop)) + 1
        starts = [region.start + k * hop for k in range(count - 1)] + [region.end - size]
        for k, start in enumerate(starts):
            own_start = region.start if k == 0 else (start + starts[k - 1] + size) // 2
            own_end = region.end if k == count - 1 else (starts[k + 1] + start + size) // 2
            windows.append(Window(start, start + size, own_start, own_end))
    return windows


def cluster(embeddings: Vectors, threshold: float, max_speakers: int, max_tree: int = 4000) -> npt.NDArray[np.int64]:
    """A speaker index per embedding, numbered from 0 in order of first appearance.

    Average-linkage agglomerative clustering on cosine distance: two groups merge while their mean similarity is
    at least `threshold`. When that leaves more than `max_speakers`, the tree is cut at `max_speakers` instead.
    The tree costs memory in the square of its size, so beyond `max_tree` embeddings (about 90 minutes of speech)
    it is grown on an evenly spread sample and every embedding joins the speaker whose mean voice is closest.
    """
    count = len(embeddings)
    if count < 2:
        return np.zeros(count, dtype=np.int64)
    sample = np.linspace(0, count - 1, min(count, max_tree)).round().astype(np.int64)
    tree = linkage(embeddings[sample].astype(np.float64), method="average", metric="cosine")
    labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
    if labels.max() > max_speakers:
        labels = fcluster(tree, t=max_speakers, criterion="maxclust")
    if len(sample) < count:
        centroids = np.stack([mean_direction(embeddings[sample[labels == k]]) for k in np.unique(labels)])
        labels = np.argmax(embeddings @ centroids.T, axis=1)
    order: dict[int, int] = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    return np.array([order[int(label)] for label in labels], dtype=np.int64)


@dataclass(frozen=True)
class Turn:
    """Consecutive windows of one speaker: seconds on the media's timeline and the windows' indices."""

    speaker: int
    start_s: float
    end_s: float
    windows: tuple[int, ...]


def merge_turns(windows: Sequence[Window], speakers: npt.NDArray[np.int64], max_gap_s: float) -> list[Turn]:
    """Windows in time order joined into turns while the speaker stays and the pause between them is at most
    `max_gap_s`."""
    turns: list[Turn] = []
    current: list[int] = []
    max_gap = max_gap_s * SAMPLE_RATE

    def close() -> None:
        first, last = windows[current[0]], windows[current[-1]]
        speaker = int(speakers[current[0]])
        turns.append(Turn(speaker, first.own_start / SAMPLE_RATE, last.own_end / SAMPLE_RATE, tuple(current)))

    for index, window in enumerate(windows):
        if current:
            previous = windows[current[-1]]
            if speakers[index] != speakers[current[-1]] or window.own_start - previous.own_end > max_gap:
                close()
                current = []
        current.append(index)
    if current:
        close()
    return turns


def mean_direction(vectors: Vectors) -> Vectors:
    """The normalised mean of unit vectors: the embedding of a turn or a speaker."""
    mean = vectors.astype(np.float64).mean(axis=0)
    direction: Vectors = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return direction
