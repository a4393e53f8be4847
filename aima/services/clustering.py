"""Placing faces and voices into clusters: the arithmetic of `aima.services.identities`, free of any store.

A `Unit` is what moves as a whole: one face, or the turns one speaker had in one media item (diarization already
grouped them, and their mean voice is steadier than any single turn). `Placement.place` puts a unit in the cluster it
is most similar to (best linkage: the highest cosine similarity between the unit and any member the placement knows
of the cluster, or any neighbour the caller found for it in Milvus), provided that the similarity reaches the
threshold and that nothing forbids it:

* *tokens*: a cluster may not hold one token twice under two owners. A face's token is its media and keyframe (two
  faces of one frame are two people); a voice's is its media, owned by its speaker label (two speakers diarization
  told apart in one recording are two voices).
* *exclusions*: a user said a member is not the person of cluster X. The unit may not join X, nor a cluster that
  members coming from X joined in this run; and members coming from X may not join the cluster the excluded member
  is in. An exclusion is about people, so it holds whatever the clusters' ids become.

A unit that fits nowhere goes back to the cluster it came from when that cluster is still there (it has members this
run does not move) or when nothing else is left in it and no other unit took it back first; else it opens a new
cluster. So a run over unchanged input gives the same clusters, names included, and automation moves a member only
to a cluster it resembles.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Vectors = NDArray[np.float32]


def normalised(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    scaled: Vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)
    return scaled


@dataclass(frozen=True)
class Unit:
    """Members placed together, with what decides where they may go."""

    members: tuple[uuid.UUID, ...]
    #: One unit-length row per member.
    vectors: Vectors
    #: Who holds the unit's tokens: members with the same owner may share a cluster whatever their tokens.
    owner: str
    tokens: frozenset[str]
    #: Clusters a user said these members do not belong to.
    excluded: frozenset[uuid.UUID] = frozenset()
    #: The cluster the members were in before this run, if they were all in one (or the most of them).
    previous: uuid.UUID | None = None
    #: Best similarities to clusters found outside the placement (nearest neighbours searched in Milvus).
    external: Mapping[uuid.UUID, float] = field(default_factory=dict)

    @property
    def centre(self) -> Vectors:
        """The normalised mean of the members' vectors: what is compared with the clusters."""
        centre: Vectors = normalised(self.vectors.mean(axis=0, keepdims=True))[0]
        return centre


@dataclass(frozen=True)
class Placed:
    cluster: uuid.UUID
    #: Cosine similarity that brought the unit in; None when it went back to, or opened, a cluster.
    similarity: float | None
    #: Whether the cluster was made for this unit and does not exist yet.
    new: bool


class Placement:
    """The clusters as one run sees them: the vectors it knows of each, what each holds, where units may go back."""

    def __init__(
        self,
        threshold: float,
        dimension: int,
        *,
        staying: Iterable[uuid.UUID] = (),
        reusable: Iterable[uuid.UUID] = (),
        barred: Mapping[uuid.UUID, Iterable[uuid.UUID]] | None = None,
    ) -> None:
        """`staying`: clusters that keep members this run does not move; `reusable`: clusters left empty by it;
        `barred`: for clusters outside the run, the clusters their members were excluded from."""
        self.threshold = threshold
        self._buffer = np.zeros((64, dimension), dtype=np.float32)
        self._labels = np.zeros(64, dtype=np.int64)
        self._count = 0
        self._clusters: list[uuid.UUID] = []
        self._index: dict[uuid.UUID, int] = {}
        self._tokens: dict[uuid.UUID, dict[str, str]] = {}
        #: Clusters whose members (of this run) came from each cluster, itself included.
        self._lineage: dict[uuid.UUID, set[uuid.UUID]] = {}
        #: Clusters whose people each cluster's members are not.
        self._barred: dict[uuid.UUID, set[uuid.UUID]] = {c: set(b) for c, b in (barred or {}).items()}
        self._staying = set(staying)
        self._reusable = set(reusable) - self._staying
        #: Clusters this run made, in the order it made them.
        self.created: list[uuid.UUID] = []

    def seed(
        self,
        cluster: uuid.UUID,
        vectors: Vectors,
        *,
        owner: str,
        tokens: Iterable[str] = (),
        excluded: Iterable[uuid.UUID] = (),
    ) -> None:
        """Members that stay where they are (a user put them there): they attract and they block, but never move."""
        self._reusable.discard(cluster)
        self._staying.add(cluster)
        self._add(cluster, vectors, owner, frozenset(tokens), None, frozenset(excluded))

    def place(self, unit: Unit) -> Placed:
        for cluster, similarity in self._candidates(unit):
            if not self._blocked(cluster, unit):
                self._join(cluster, unit)
                return Placed(cluster, similarity, new=False)
        return self._open(unit)

    def _open(self, unit: Unit) -> Placed:
        previous = unit.previous
        if previous is not None and not self._blocked(previous, unit):
            if previous in self._staying:
                self._join(previous, unit)
                return Placed(previous, None, new=False)
            if previous in self._reusable:
                self._reusable.discard(previous)
                self._join(previous, unit)
                return Placed(previous, None, new=False)
        cluster = uuid.uuid4()
        self.created.append(cluster)
        self._join(cluster, unit)
        return Placed(cluster, None, new=True)

    def _candidates(self, unit: Unit) -> list[tuple[uuid.UUID, float]]:
        """Clusters at or above the threshold, most similar first (ties by id, so that runs repeat exactly)."""
        scores = {c: s for c, s in unit.external.items() if s >= self.threshold}
        if self._count:
            similarities = self._buffer[: self._count] @ unit.centre
            near = np.flatnonzero(similarities >= self.threshold)
            labels, values = self._labels[near], similarities[near]
            order = np.lexsort((-values, labels))  # by cluster, the most similar member first
            labels, values = labels[order], values[order]
            first = np.ones(len(labels), dtype=bool)
            first[1:] = labels[1:] != labels[:-1]
            for index, value in zip(labels[first], values[first], strict=True):
                cluster = self._clusters[int(index)]
                scores[cluster] = max(scores.get(cluster, -1.0), float(value))
        return sorted(scores.items(), key=lambda item: (-item[1], str(item[0])))

    def _blocked(self, cluster: uuid.UUID, unit: Unit) -> bool:
        if unit.excluded & self._lineage.get(cluster, {cluster}):
            return True
        if unit.previous is not None and unit.previous in self._barred.get(cluster, ()):
            return True
        held = self._tokens.get(cluster, {})
        return any(held.get(token, unit.owner) != unit.owner for token in unit.tokens)

    def _join(self, cluster: uuid.UUID, unit: Unit) -> None:
        self._add(cluster, unit.vectors, unit.owner, unit.tokens, unit.previous, unit.excluded)

    def _add(
        self,
        cluster: uuid.UUID,
        vectors: Vectors,
        owner: str,
        tokens: frozenset[str],
        previous: uuid.UUID | None,
        excluded: frozenset[uuid.UUID],
    ) -> None:
        index = self._index.get(cluster)
        if index is None:
            index = self._index[cluster] = len(self._clusters)
            self._clusters.append(cluster)
        held = self._tokens.setdefault(cluster, {})
        for token in tokens:
            held.setdefault(token, owner)
        lineage = self._lineage.setdefault(cluster, {cluster})
        if previous is not None:
            lineage.add(previous)
        self._barred.setdefault(cluster, set()).update(excluded)
        rows = np.atleast_2d(vectors)
        needed = self._count + len(rows)
        if needed > len(self._buffer):
            size = max(needed, 2 * len(self._buffer))
            self._buffer = np.resize(self._buffer, (size, self._buffer.shape[1]))
            self._labels = np.resize(self._labels, size)
        self._buffer[self._count : needed] = rows
        self._labels[self._count : needed] = index
        self._count = needed
