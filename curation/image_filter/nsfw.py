"""NSFW score: NudeNet's detector (the YOLOv8n ONNX model inside the `nudenet` wheel, run with
onnxruntime; no network). The score of an image is the highest confidence, over every anchor
of the 320 x 320 input, of a class that shows exposed genitalia, breasts, buttocks or anus.

What it detects and misses is in docs/filtering.md: it is a body-part detector, not a scene
classifier (no sexual content without exposed parts, no drawings it was not trained on, no
violence), and it is not a child-safety tool (that is what --block-hashes lists are for).
Licence: the wheel's metadata says MIT, its bundled LICENSE file is AGPL-3.0 (the model is an
Ultralytics YOLOv8 export); it is an optional extra, never vendored.
"""

from __future__ import annotations

import os

import numpy as np

INPUT_SIZE = 320
# nudenet's label order (nudenet/nudenet.py); only the exposed sexual body parts count
LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)  # fmt: skip
NSFW_LABELS = (
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
)
_ROWS = np.array([4 + LABELS.index(label) for label in NSFW_LABELS])
DEFAULT_THRESHOLD = 0.5

_session = None


def session():
    """One onnxruntime session per process, single-threaded (Spark runs a task per core)."""
    global _session
    if _session is None:
        import nudenet  # the filter extra: the wheel that carries the model
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        model = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
        _session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return _session


def model_input(rgb: np.ndarray) -> np.ndarray:
    """nudenet's preprocessing: padded to a square at the bottom right with black, resized to
    320 x 320 (bilinear), scaled to [0, 1], 1 x 3 x 320 x 320 RGB."""
    import cv2

    height, width = rgb.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[:height, :width] = rgb
    resized = cv2.resize(square, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def nsfw_score(rgb: np.ndarray) -> float:
    """The image's NSFW score in [0, 1] (see the module docstring)."""
    run = session()
    output = run.run(None, {run.get_inputs()[0].name: model_input(rgb)})[0]
    return float(output[0, _ROWS, :].max())
