"""The device-side image path against torchvision's per-image CPU transforms, on real photos."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from trainer_shards import source_images

pytest.importorskip("skimage")

from trainer import augment, data  # noqa: E402

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE = 48


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    """Real photographs of several sizes, one smaller than the output (upsampling)."""
    out = []
    for i, image in enumerate(source_images()[:6]):
        w, h = image.size
        image = image.resize((w // (i + 1), h // (i + 2)), Image.BICUBIC)
        out.append(torch.from_numpy(__import__("numpy").array(image)))
    out.append(out[0][:30, :20].clone())  # 30 x 20 < 48 x 48
    return out


def tokens(texts):
    return torch.zeros(len(texts), 4, dtype=torch.long)


def reference(image: torch.Tensor, train: bool, hflip: bool) -> torch.Tensor:
    """torchvision on one image: RandomResizedCrop(BILINEAR, no antialias) [+ flip] for training,
    CenterCrop(shortest side) + Resize for evaluation, then Normalize."""
    x = image.permute(2, 0, 1).float()
    if train:
        steps = [
            T.RandomResizedCrop(
                SIZE, data.CROP_SCALE, data.CROP_RATIO, T.InterpolationMode.BILINEAR, False
            )
        ]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        side = min(x.shape[1:])
        resize = T.Resize((SIZE, SIZE), interpolation=T.InterpolationMode.BILINEAR, antialias=False)
        steps = [T.CenterCrop(side), resize]
    x = T.Compose(steps)(x)
    return T.Normalize([m * 255 for m in MEAN], [s * 255 for s in STD])(x)


@pytest.mark.parametrize(("train", "hflip"), [(True, True), (True, False), (False, False)])
def test_device_transform_equals_torchvision_per_image(photos, train, hflip):
    seed = 1234
    batch = data.make_batch(photos, ["x"] * len(photos), tokens, seed, train, hflip)
    assert batch["pixels"].dtype == torch.uint8
    got = augment.DeviceTransform(SIZE, MEAN, STD, torch.device("cpu"))(batch)
    assert got.shape == (len(photos), 3, SIZE, SIZE) and got.dtype == torch.float32

    torch.manual_seed(seed)  # the reference draws crops image after image from this seed
    for i, image in enumerate(photos):
        torch.testing.assert_close(got[i], reference(image, train, hflip), atol=2e-4, rtol=0)
    if hflip:
        assert 0 < int(batch["flips"].sum()) < len(photos)  # both kinds occur at this seed


def test_crops_follow_the_seed(photos):
    a = data.make_batch(photos, ["x"] * len(photos), tokens, 1, True, True)
    b = data.make_batch(photos, ["x"] * len(photos), tokens, 1, True, True)
    c = data.make_batch(photos, ["x"] * len(photos), tokens, 2, True, True)
    assert torch.equal(a["boxes"], b["boxes"]) and not torch.equal(a["boxes"], c["boxes"])


def jpeg(image: torch.Tensor, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_device_decode_matches_worker_decode(photos):
    """--gpu-decode: JPEG bytes decoded by torchvision.io.decode_jpeg (CPU here) give the same
    batch as the workers' PIL decode, up to the two libraries' IDCT rounding."""
    files = [jpeg(p) for p in photos]
    png = io.BytesIO()
    Image.fromarray(photos[1].numpy()).save(png, format="PNG")
    files[1] = png.getvalue()  # not a JPEG: the worker decodes it itself
    items = [data.jpeg_for_device(f) for f in files]
    assert items[1] is None and all(isinstance(it, tuple) for i, it in enumerate(items) if i != 1)
    encoded = [it if it is not None else data.decode_image(files[1]) for it in items]
    decoded = [data.decode_image(f) for f in files]

    transform = augment.DeviceTransform(SIZE, MEAN, STD, torch.device("cpu"))
    on_device = transform(data.make_batch(encoded, ["x"] * 7, tokens, 5, True, True, encoded=True))
    in_worker = transform(data.make_batch(decoded, ["x"] * 7, tokens, 5, True, True))
    diff = (on_device - in_worker).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.3, (diff.mean(), diff.max())

    truncated = files[0][: len(files[0]) // 2]
    assert data.jpeg_for_device(truncated) == "bad_image"


def test_large_jpegs_decode_at_a_reduced_scale(photos):
    big = photos[0]  # 512 x 512 in scikit-image's set
    assert min(big.shape[:2]) >= 4 * SIZE
    small = data.decode_image(jpeg(big), draft_size=SIZE)
    assert SIZE <= min(small.shape[:2]) < 2 * SIZE
    assert data.decode_image(jpeg(big)).shape == big.shape  # no draft: full size
