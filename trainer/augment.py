"""The image half of the data path that runs on the training device, as batched tensor ops.

Workers hand over uint8 images (or JPEG bytes with --gpu-decode) with per-image crop boxes and
flip flags (`trainer.data.crop_params`); here the batch is decoded if need be, cut and resized
with one `grid_sample` (bilinear, the same sampling points as `F.interpolate` on each crop, no
antialiasing), flipped and normalised. Equal to torchvision's RandomResizedCrop(BILINEAR,
antialias=False) + RandomHorizontalFlip + Normalize on each image (tests/test_trainer_augment.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
) -> torch.Tensor:
    """B x 3 x size x size float32 from a uint8 canvas (B x H x W x 3, or B x 3 x H x W). The
    canvas goes to float `chunk` images at a time: its float copy, 4 bytes per padded pixel,
    would otherwise be the data path's largest tensor (a batch of 256 at 512 px: 0.8 GB)."""
    x = images.permute(0, 3, 1, 2) if channels_last_input else images
    _, _, height, width = x.shape
    # copies that do not wait for the device (pinned host memory from the loader makes them
    # truly asynchronous): the step must not block on a host round trip
    boxes = boxes.to(x.device, non_blocking=True).float()
    top, left, h, w = boxes.unbind(1)
    ys = _sample_points(top, h, size)
    xs = _sample_points(left, w, size, flips.to(x.device, non_blocking=True))
    gy = (2 * ys + 1) / height - 1
    gx = (2 * xs + 1) / width - 1
    n = len(x)
    grid = torch.stack(
        (gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)), -1
    )
    out = torch.cat([
        F.grid_sample(x[i : i + chunk].float(), grid[i : i + chunk], mode="bilinear",
                      padding_mode="border", align_corners=False)
        for i in range(0, n, chunk)
    ])  # fmt: skip
    return (out - _scaled(mean, x.device)) / _scaled(std, x.device)


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
        cfg = model.visual.preprocess_cfg
        size = model.visual.image_size
        return cls(size[0] if isinstance(size, tuple) else size, cfg["mean"], cfg["std"], device)

    def __call__(self, batch: dict) -> torch.Tensor:
        if "encoded" in batch:
            images, failed = decode_on_device(batch["encoded"], self.device, batch["sizes"])
            self.undecodable += failed
            canvas = _canvas(images, batch["sizes"], self.device)
            channels_last = False
        else:
            canvas = batch["pixels"].to(self.device, non_blocking=True)
            channels_last = True
        return crop_resize_normalize(
            canvas, batch["boxes"], batch["flips"], self.size, self.mean, self.std, channels_last
        )
