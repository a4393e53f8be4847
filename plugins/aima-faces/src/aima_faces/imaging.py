"""Reading keyframes, cutting face crops for people to look at, and placing landmarks in a box when a detector gives
none (so that a face from the Haar cascade can still be aligned for recognition)."""

from __future__ import annotations

import cv2
import numpy as np

from aima.analysis import Keyframe
from aima.errors import CorruptMedia
from aima_faces.detectors import FloatArray, Image

#: Where eyes, nose tip and mouth corners sit in an OpenCV Haar frontal-face box, as fractions of its width and
#: height (measured on scikit-image's astronaut picture; frontal faces vary by a few hundredths).
HAAR_BOX_LANDMARKS = np.array(
    [[0.29, 0.37], [0.71, 0.37], [0.50, 0.60], [0.33, 0.80], [0.67, 0.80]],
    dtype=np.float32,
)
JPEG_QUALITY = 90


def read_keyframe(keyframe: Keyframe, index: int) -> Image:
    """The keyframe as a BGR image; an unreadable file is the user's corrupt media, not a bug."""
    where = f"keyframe {index} at {keyframe.timestamp_s:.2f} s ({keyframe.path.name})"
    try:
        data = np.fromfile(keyframe.path, dtype=np.uint8)
    except OSError as exc:
        raise CorruptMedia(f"Face detection could not read {where}: {exc.strerror or exc}.") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.size == 0:
        raise CorruptMedia(f"Face detection could not decode {where}: it is not a readable image.")
    return np.asarray(image, dtype=np.uint8)


def clip_box(box: FloatArray, width: int, height: int) -> FloatArray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array(
        [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)],
        dtype=np.float32,
    )


def box_landmarks(box: FloatArray) -> FloatArray:
    """Five template points placed in a box, for aligning a face whose detector found no landmarks."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    scale = np.array([x2 - x1, y2 - y1], dtype=np.float32)
    return np.asarray(HAAR_BOX_LANDMARKS * scale + np.array([x1, y1], dtype=np.float32), dtype=np.float32)


def crop_jpeg(image: Image, box: FloatArray, *, size: int, margin: float) -> bytes:
    """A square JPEG around the box with `margin` (a fraction of the box's larger side) on each side; parts outside
    the frame are black, so that every crop shows its face centred and at the same scale."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(round(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)), 1)
    left, top = round((x1 + x2 - side) / 2.0), round((y1 + y2 - side) / 2.0)
    height, width = image.shape[:2]
    region = image[max(top, 0) : min(top + side, height), max(left, 0) : min(left + side, width)]
    if region.size == 0:
        region = np.zeros((1, 1, 3), dtype=np.uint8)
    pad_top, pad_left = max(-top, 0), max(-left, 0)
    square = cv2.copyMakeBorder(
        region,
        pad_top,
        max(side - pad_top - region.shape[0], 0),
        pad_left,
        max(side - pad_left - region.shape[1], 0),
        cv2.BORDER_CONSTANT,
        value=(0, 0, 0),
    )
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    crop = cv2.resize(square, (size, size), interpolation=interpolation)
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a face crop as JPEG")
    return encoded.tobytes()
