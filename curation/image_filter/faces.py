"""Face detection and blurring.

Detector: dlib's HOG frontal-face detector, compiled into the `dlib-bin` wheel (no model file,
no network). Measured against OpenCV's bundled Haar cascades on scikit-image's LFW subset and
bundled photographs (docs/filtering.md): at 50-pixel faces, the size of a face in a 256-pixel
shard image, HOG found 92 of 100 faces and the best cascade 71, neither flagging any of the 100
non-faces.

Blur: DataComp's (mlfoundations/datacomp, `blur` in its face-blurring code, after Yang et al.'s
ImageNet obfuscation): each box grown by 15% of the largest face diagonal, a mask of the grown
boxes feathered by the same Gaussian (sigma 10% of that diagonal) that blurs the image, and the
blurred image composited through it. Pixels further than the grown box plus the blur's reach
are untouched.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

UPSAMPLE = 1  # HOG's window is 80 px: one 2x upsampling finds faces down to ~40 px
EXPAND = 0.15  # DataComp's diagonalExpand
SIGMA = 0.1  # DataComp's gaussianFraction
MIN_DIAGONAL = 0.025  # DataComp's floor on the diagonal, a fraction of the image's

_detector = None


def detector():
    global _detector
    if _detector is None:
        import dlib  # the filter extra (dlib-bin: dlib's binary wheel)

        _detector = dlib.get_frontal_face_detector()
    return _detector


def detect_faces(rgb: np.ndarray) -> list[list[int]]:
    """[x0, y0, x1, y1] boxes (pixels, clipped to the image) of the frontal faces found."""
    height, width = rgb.shape[:2]
    boxes = []
    for rect in detector()(np.ascontiguousarray(rgb), UPSAMPLE):
        x0, y0 = max(0, rect.left()), max(0, rect.top())
        x1, y1 = min(width, rect.right() + 1), min(height, rect.bottom() + 1)
        if x1 > x0 and y1 > y0:
            boxes.append([int(x0), int(y0), int(x1), int(y1)])
    return sorted(boxes)


def blur_radius(size: tuple[int, int], boxes: list[list[int]]) -> tuple[float, float]:
    """(grow, sigma) in pixels for an image of `size` (width, height) and its face boxes."""
    diagonal = MIN_DIAGONAL * float(np.hypot(*size))
    for x0, y0, x1, y1 in boxes:
        diagonal = max(diagonal, float(np.hypot(x1 - x0, y1 - y0)))
    return EXPAND * diagonal, SIGMA * diagonal


def blur_faces(image: Image.Image, boxes: list[list[int]]) -> Image.Image:
    """The image with its face boxes blurred (DataComp's method; see the module docstring)."""
    if not boxes:
        return image
    grow, sigma = blur_radius(image.size, boxes)
    mask = Image.new("L", image.size, 255)
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0 - grow, y0 - grow, x1 + grow, y1 + grow), fill=0)
    gaussian = ImageFilter.GaussianBlur(sigma)
    return Image.composite(image, image.filter(gaussian), mask.filter(gaussian))
