"""What the face plugin's tests share: the types of the `keyframe` and `item` fixtures (conftest.py), real pictures
to find faces in, and crops read back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from aima.analysis import AnalysisInput, Keyframe

KeyframeWriter = Callable[[NDArray[np.uint8], float], Keyframe]
ItemFactory = Callable[[Sequence[Keyframe]], AnalysisInput]


def picture(name: str) -> NDArray[np.uint8]:
    """One of scikit-image's test pictures (shipped in its wheel), as RGB."""
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.uint8)


def decode(jpeg: bytes) -> NDArray[np.uint8]:
    """A JPEG (a stored crop or keyframe) as BGR pixels."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image, dtype=np.uint8)
