"""The image half of the data path that runs on the training device, as batched tensor ops.

Workers hand over uint8 images (or JPEG bytes with --gpu-decode) with per-image crop boxes, flip
flags and colour parameters (`trainer.data.crop_params`); here the batch is decoded if need be,
cut and resized with one `grid_sample` (bilinear, the same sampling points as `F.interpolate` on
each crop, no antialiasing), flipped, colour-jittered and greyed where drawn, and normalised.
Equal to torchvision's RandomResizedCrop(scale, BILINEAR, antialias=False) +
RandomHorizontalFlip + RandomApply([ColorJitter], p) + RandomGrayscale(p) + Normalize on each
image, with the same seed (tests/test_trainer_augment.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CROP_SCALE = (0.9, 1.0)  # open_clip's AugmentationCfg default
CROP_RATIO = (3 / 4, 4 / 3)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision ColorJitter's fn_idx values


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation: open_clip's AugmentationCfg fields (scale, color_jitter,
    color_jitter_prob, gray_scale_prob) plus the flip. `color_jitter` is (brightness, contrast,
    saturation, hue) as torchvision's ColorJitter takes them."""

    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    hflip: bool = False
    color_jitter: tuple[float, float, float, float] | None = None
    color_jitter_prob: float = 0.8
    grayscale: float = 0.0
    # self-distillation's local crops per image (their boxes, flips and colours are drawn after
    # the whole batch's global ones: a run's global views do not depend on them)
    local_crops: int = 0
    local_scale: tuple[float, float] = (0.05, 0.4)
    # NaFlex: `ratio` multiplies each image's own aspect ratio (timm's
    # RandomResizedCropToSequence) instead of bounding the crop's
    native_aspect: bool = False

    def __post_init__(self):
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"--crop-scale needs 0 < MIN <= MAX <= 1, got {low} {high}")
        if self.color_jitter is not None:
            if len(self.color_jitter) != 4 or min(self.color_jitter) < 0:
                raise ValueError("--color-jitter takes 4 values >= 0: brightness contrast "
                                 f"saturation hue, got {self.color_jitter}")  # fmt: skip
            if self.color_jitter[3] > 0.5:
                raise ValueError(f"--color-jitter hue must be <= 0.5, got {self.color_jitter[3]}")
        low, high = self.local_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"--local-crop-scale needs 0 < MIN <= MAX <= 1, got {low} {high}")
        if self.local_crops < 0:
            raise ValueError(f"--local-crops must be >= 0, got {self.local_crops}")
        for name in ("color_jitter_prob", "grayscale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1]")

    @property
    def colours(self) -> bool:
        return (self.color_jitter is not None and self.color_jitter_prob > 0) or self.grayscale > 0


def draw_colour(aug: Augmentation, jitter) -> tuple[list[int], list[float], list[bool], bool]:
    """One image's colour parameters from torch's RNG, in the order torchvision's
    RandomApply([ColorJitter], p) then RandomGrayscale(p) draw them: (the four ops' order,
    their factors, which ops apply, grey or not). `jitter` is the T.ColorJitter of the flags."""
    order, factors, active = [0, 1, 2, 3], [1.0, 1.0, 1.0, 0.0], [False] * 4
    if jitter is not None and not aug.color_jitter_prob < torch.rand(1):  # RandomApply's test
        fn_idx, *drawn = jitter.get_params(
            jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue
        )
        order = [int(i) for i in fn_idx]
        for op, value in enumerate(drawn):
            if value is not None:
                factors[op], active[op] = float(value), True
    grey = aug.grayscale > 0 and bool(torch.rand(1) < aug.grayscale)
    return order, factors, active, grey


def decode_on_device(
    encoded: list[torch.Tensor], device: torch.device, sizes: torch.Tensor | None = None
) -> tuple[list[torch.Tensor], int]:
    """(3 x H x W uint8 per image, how many JPEGs no decoder could read). 1-d tensors are JPEG
    bytes, decoded in one batched `torchvision.io.decode_jpeg` call on `device` (nvJPEG on CUDA);
    3-d ones were decoded by the worker (H x W x 3). A batch the device refuses (one image with
    damage past its headers fails them all) is decoded image by image, on the device, then on
    the CPU; an image neither reads becomes a black one of its header's size (`sizes`), so that
    every rank's batch keeps its size, and is counted."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, t in enumerate(encoded) if t.ndim == 1]
    out = [
        t.permute(2, 0, 1).to(device, non_blocking=True) if t.ndim == 3 else None for t in encoded
    ]
    if not jpegs:
        return out, 0
    if device.type == "cuda":
        # torchvision's CUDA decode allocates from this stream but decodes on its own stream,
        # which does not wait for the work queued here (pytorch/vision#9606): let that finish
        torch.cuda.current_stream(device).synchronize()
    try:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = [_decode_one(encoded[i], device) for i in jpegs]
    failed = 0
    for i, image in zip(jpegs, decoded):
        if image is None:
            failed += 1
            h, w = (int(x) for x in sizes[i]) if sizes is not None else (1, 1)
            image = torch.zeros(3, h, w, dtype=torch.uint8, device=device)
        out[i] = image
    return out, failed


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    for where in dict.fromkeys([device, torch.device("cpu")]):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=where).to(device)
        except RuntimeError:
            continue
    return None


def _canvas(images: list[torch.Tensor], sizes: torch.Tensor, device) -> torch.Tensor:
    h, w = (int(x) for x in sizes.max(dim=0).values)
    canvas = torch.zeros(len(images), 3, h, w, dtype=torch.uint8, device=device)
    for i, image in enumerate(images):
        canvas[i, :, : image.shape[1], : image.shape[2]] = image
    return canvas


def _sample_points(start, length, size: int, flips=None) -> torch.Tensor:
    """B x size source coordinates: F.interpolate's (i + 0.5) * length / size - 0.5 inside each
    crop, clamped to the crop as interpolate clamps to its input."""
    i = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    points = start[:, None] + i[None, :] * (length / size)[:, None] - 0.5
    points = torch.clamp(points, min=start[:, None], max=(start + length - 1)[:, None])
    if flips is not None:
        points = torch.where(flips[:, None], points.flip(1), points)
    return points


def crop_resize_normalize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    mean,
    std,
    channels_last_input: bool = True,
    chunk: int = 32,
    colour: dict | None = None,
) -> torch.Tensor:
    """B x 3 x size x size float32 from a uint8 canvas (B x H x W x 3, or B x 3 x H x W). The
    canvas goes to float `chunk` images at a time: its float copy, 4 bytes per padded pixel,
    would otherwise be the data path's largest tensor (a batch of 256 at 512 px: 0.8 GB).
    `colour` (from `trainer.data.crop_params`) jitters and greys images in [0, 1] before the
    normalisation, as torchvision's tensor transforms do."""
    x = images.permute(0, 3, 1, 2) if channels_last_input else images
    # copies that do not wait for the device (pinned host memory from the loader makes them
    # truly asynchronous): the step must not block on a host round trip
    boxes = boxes.to(x.device, non_blocking=True).float()
    top, left, h, w = boxes.unbind(1)
    ys = _sample_points(top, h, size)
    xs = _sample_points(left, w, size, flips.to(x.device, non_blocking=True))
    return colour_normalize(resample(x, ys, xs, chunk), mean, std, colour)


def resample(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, chunk: int = 32):
    """B x 3 x len(ys) x len(xs) float32: each uint8 canvas image (B x 3 x H x W) sampled
    bilinearly at its rows `ys` (B x h) and columns `xs` (B x w) of source coordinates, `chunk`
    images at a time."""
    _, _, height, width = x.shape
    gy = (2 * ys + 1) / height - 1
    gx = (2 * xs + 1) / width - 1
    n, rows, cols = len(x), ys.shape[1], xs.shape[1]
    grid = torch.stack(
        (gx[:, None, :].expand(n, rows, cols), gy[:, :, None].expand(n, rows, cols)), -1
    )
    return torch.cat([
        F.grid_sample(x[i : i + chunk].float(), grid[i : i + chunk], mode="bilinear",
                      padding_mode="border", align_corners=False)
        for i in range(0, n, chunk)
    ])  # fmt: skip


def colour_normalize(
    out: torch.Tensor, mean, std, colour: dict | None = None, inside: torch.Tensor | None = None
) -> torch.Tensor:
    """Resampled 0-255 floats -> colour-jittered where drawn, then normalised. `inside`
    (B x 1 x H x W, NaFlex's patches that are not padding) bounds the contrast's mean."""
    if colour is None:
        return (out - _scaled(mean, out.device)) / _scaled(std, out.device)
    out = apply_colour(out / 255.0, to_device(colour, out.device), inside)
    return (out - _scaled(mean, out.device) / 255.0) / (_scaled(std, out.device) / 255.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W luma, torchvision's rgb_to_grayscale weights."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue + shift (mod 1), -> RGB, per image, as torchvision's adjust_hue on floats."""
    r, g, b = x.unbind(1)
    high, low = x.max(dim=1).values, x.min(dim=1).values
    flat = high == low
    span = high - low
    saturation = span / torch.where(flat, torch.ones_like(high), high)
    span = torch.where(flat, torch.ones_like(span), span)
    rc, gc, bc = (high - r) / span, (high - g) / span, (high - b) / span
    hue = torch.where(high == r, bc - gc, torch.where(high == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    sector = torch.floor(hue * 6.0)
    f = hue * 6.0 - sector
    sector = sector.to(torch.int64) % 6
    p = (high * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (high * (1.0 - saturation * f)).clamp(0.0, 1.0)
    t = (high * (1.0 - saturation * (1.0 - f))).clamp(0.0, 1.0)
    # per sector (0..5): which of v, q, p, t is red, green, blue
    table = torch.stack(
        (
            torch.stack((high, q, p, p, t, high), 1),
            torch.stack((t, high, high, q, p, p), 1),
            torch.stack((p, p, t, high, high, q), 1),
        ),
        1,
    )  # B x 3 x 6 x H x W
    index = sector.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


def colour_params(drawn: list) -> dict:
    """A batch's colour parameters from each image's `draw_colour` (in the worker): the drawn
    `order`, `factors`, `active` and `grey`, and which rows take which op: `rows`, 16 index
    tensors (step-major: step x 4 + op) and `grey_rows`. `apply_colour` selects with these;
    choosing the rows on the device would make it report each count back to the host."""
    order, factors, active, grey = zip(*drawn)
    out = {
        "order": torch.tensor(order, dtype=torch.int64),
        "factors": torch.tensor(factors, dtype=torch.float32),
        "active": torch.tensor(active, dtype=torch.bool),
        "grey": torch.tensor(grey, dtype=torch.bool),
    }
    out["rows"] = [
        torch.nonzero((out["order"][:, step] == op) & out["active"][:, op]).flatten()
        for step in range(4)
        for op in range(4)
    ]
    out["grey_rows"] = torch.nonzero(out["grey"]).flatten()
    return out


def to_device(value, device: torch.device):
    """Host tensors (in dicts and lists) on `device` without waiting for its queue (a copy
    from pageable memory to a GPU waits for the stream first: pinned)."""
    if isinstance(value, dict):
        return {key: to_device(v, device) for key, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if not torch.is_tensor(value) or value.device == device:
        return value
    if device.type == "cuda" and not value.is_pinned():
        value = value.pin_memory()
    return value.to(device, non_blocking=True)


def _mean_grey(part: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
    """B x 1 x 1 x 1: each image's mean luma (over its `inside` pixels when given)."""
    grey = _grey(part)
    if inside is None:
        return grey.mean(dim=(1, 2, 3), keepdim=True)
    inside = inside.to(grey.dtype)
    total = inside.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    return (grey * inside).sum(dim=(1, 2, 3), keepdim=True) / total


def apply_colour(x: torch.Tensor, colour: dict, inside: torch.Tensor | None = None):
    """Colour jitter (each image's four ops in its drawn order, where drawn) and greyscale, on
    B x 3 x H x W floats in [0, 1]: torchvision's ColorJitter and RandomGrayscale per image.
    `colour` is `colour_params`'s (on the device): its row lists say which images take each
    op, and their sizes are known without asking the device. `inside`: see colour_normalize."""
    for index, rows in enumerate(colour["rows"]):
        if not rows.numel():
            continue
        op = index % 4
        factor = colour["factors"][rows, op]
        part = x.index_select(0, rows)
        if op == BRIGHTNESS:
            part = _blend(part, torch.zeros_like(part), factor)
        elif op == CONTRAST:
            where = None if inside is None else inside.index_select(0, rows)
            part = _blend(part, _mean_grey(part, where), factor)
        elif op == SATURATION:
            part = _blend(part, _grey(part), factor)
        else:
            part = _shift_hue(part, factor)
        x = x.index_copy(0, rows, part)
    rows = colour["grey_rows"]
    if rows.numel():
        x = x.index_copy(0, rows, _grey(x.index_select(0, rows)).expand(-1, 3, -1, -1))
    return x


_SCALED: dict[tuple, torch.Tensor] = {}


def _scaled(values: tuple, device: torch.device) -> torch.Tensor:
    """1 x 3 x 1 x 1 `values` x 255 on `device`, made once (not a host-to-device copy per step)."""
    key = (tuple(values), str(device))
    if key not in _SCALED:
        _SCALED[key] = torch.tensor(values, device=device).view(1, 3, 1, 1) * 255
    return _SCALED[key]


class DeviceTransform:
    """batch dict from `trainer.data` -> normalised float images on the device."""

    def __init__(self, size: int, mean, std, device: torch.device):
        self.size, self.mean, self.std, self.device = size, tuple(mean), tuple(std), device
        self.undecodable = 0  # --gpu-decode: JPEGs no decoder read, trained as black images

    @classmethod
    def for_model(cls, model, device):
        if hasattr(model.visual, "device_transform"):  # a tower with its own (NaFlex)
            return model.visual.device_transform(device)
        cfg = model.visual.preprocess_cfg
        size = model.visual.image_size
        return cls(size[0] if isinstance(size, tuple) else size, cfg["mean"], cfg["std"], device)

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.views(batch)[0]

    def canvas(self, batch: dict) -> tuple[torch.Tensor, bool]:
        """(the batch's uint8 canvas on the device, whether it is channels-last): the worker's
        pixels, or the JPEGs decoded here (--gpu-decode)."""
        if "encoded" in batch:
            images, failed = decode_on_device(batch["encoded"], self.device, batch["sizes"])
            self.undecodable += failed
            return _canvas(images, batch["sizes"], self.device), False
        return batch["pixels"].to(self.device, non_blocking=True), True

    def views(self, batch: dict, local_size: int | None = None):
        """(the global views, and with `local_size` the local crops at that size, crops x B in
        crop-major order, else None), cut from one canvas."""
        canvas, channels_last = self.canvas(batch)
        images = crop_resize_normalize(
            canvas, batch["boxes"], batch["flips"], self.size, self.mean, self.std, channels_last,
            colour=batch.get("colour"),
        )  # fmt: skip
        if local_size is None:
            return images, None
        crops = len(batch["local_boxes"])
        colour = batch.get("local_colour")
        local = [
            crop_resize_normalize(
                canvas,
                batch["local_boxes"][n],
                batch["local_flips"][n],
                local_size,
                self.mean,
                self.std,
                channels_last,
                colour=None if colour is None else colour[n],
            )  # fmt: skip
            for n in range(crops)
        ]
        return images, torch.cat(local)
