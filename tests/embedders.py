"""A stand-in text embedder for tests of what is stored and searched by meaning, where no text model can run."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from aima.analysis import Embedder


class HashingEmbedder(Embedder):
    """Deterministic: words hashed into 384 signed buckets, normalised. Texts that share words are near; that is all a
    test of the search path needs."""

    name = "test-hashing"
    dimension = 384

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for text in texts:
            vector = np.zeros(self.dimension)
            for word in text.lower().split():
                digest = hashlib.sha256(word.strip(".,?!").encode()).digest()
                vector[int.from_bytes(digest[:4], "big") % self.dimension] += 1 if digest[4] % 2 else -1
            vectors.append((vector / (np.linalg.norm(vector) or 1.0)).tolist())
        return vectors
