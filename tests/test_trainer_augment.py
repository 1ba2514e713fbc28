"""The device-side image path against torchvision's per-image CPU transforms, on real photos."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from trainer_shards import jpeg_kinds, source_images

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
    # the canvas is made float a few images at a time (issue 35, case 6): the same numbers
    args = (batch["pixels"], batch["boxes"], batch["flips"], SIZE, MEAN, STD)
    assert torch.equal(augment.crop_resize_normalize(*args, chunk=2), got)

    torch.manual_seed(seed)  # the reference draws crops image after image from this seed
    for i, image in enumerate(photos):
        torch.testing.assert_close(got[i], reference(image, train, hflip), atol=2e-4, rtol=0)
    if hflip:
        assert 0 < int(batch["flips"].sum()) < len(photos)  # both kinds occur at this seed


def colour_reference(image: torch.Tensor, aug: augment.Augmentation) -> torch.Tensor:
    """torchvision on one image, as OpenVision 2 / open_clip's aug-cfg would have it:
    RandomResizedCrop(scale) [+ flip] + RandomApply([ColorJitter], p) + RandomGrayscale(p) on
    floats in [0, 1], then Normalize."""
    steps = [
        T.RandomResizedCrop(SIZE, aug.scale, aug.ratio, T.InterpolationMode.BILINEAR, False),
        T.RandomHorizontalFlip() if aug.hflip else T.Lambda(lambda x: x),
        T.Lambda(lambda x: x / 255.0),
    ]
    if aug.color_jitter:
        steps.append(T.RandomApply([T.ColorJitter(*aug.color_jitter)], p=aug.color_jitter_prob))
    if aug.grayscale:
        steps.append(T.RandomGrayscale(aug.grayscale))
    steps.append(T.Normalize(MEAN, STD))
    if not aug.hflip:
        steps.pop(1)  # no flip: no draw either
    return T.Compose(steps)(image.permute(2, 0, 1).float())


COLOUR_CASES = [
    augment.Augmentation(scale=(0.4, 1.0), color_jitter=(0.32, 0.32, 0.32, 0.08), grayscale=0.2),
    augment.Augmentation(scale=(0.4, 1.0), hflip=True, color_jitter=(0.8, 0.0, 0.5, 0.0)),
    augment.Augmentation(color_jitter=(0.0, 0.0, 0.0, 0.5), color_jitter_prob=1.0),
    augment.Augmentation(grayscale=0.5),
]


@pytest.mark.parametrize("aug", COLOUR_CASES, ids=["openvision2", "flip-bs", "hue", "grey"])
def test_crop_scale_colour_jitter_and_grayscale_equal_torchvision_per_image(photos, aug):
    """#31, item 2: the device-side batch with --crop-scale, --color-jitter and --grayscale
    equals torchvision's transforms applied image after image from the same seed."""
    seed = 75  # one at which some images are jittered (greyed) and some not, in every case
    batch = data.make_batch(photos, ["x"] * len(photos), tokens, seed, True, False, aug=aug)
    got = augment.DeviceTransform(SIZE, MEAN, STD, torch.device("cpu"))(batch)
    torch.manual_seed(seed)
    for i, image in enumerate(photos):
        torch.testing.assert_close(got[i], colour_reference(image, aug), atol=2e-4, rtol=0)
    colour = batch["colour"]
    if aug.color_jitter and aug.color_jitter_prob < 1:
        assert 0 < int(colour["active"].any(1).sum()) < len(photos)  # some jittered, some not
    if aug.grayscale:
        grey = got[colour["grey"]] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(
            3, 1, 1
        )
        assert colour["grey"].any() and torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5)


def test_augmentation_flags_are_checked_and_off_by_default(photos):
    plain = data.make_batch(photos, ["x"] * len(photos), tokens, 3, True, True)
    same = data.make_batch(
        photos, ["x"] * len(photos), tokens, 3, True, False, aug=augment.Augmentation(hflip=True)
    )
    assert "colour" not in same and torch.equal(plain["boxes"], same["boxes"])
    assert torch.equal(plain["flips"], same["flips"])
    for bad in (
        {"scale": (0.0, 1.0)},
        {"scale": (0.9, 0.5)},
        {"color_jitter": (0.4, 0.4, 0.4, 0.6)},
        {"color_jitter": (-1.0, 0.0, 0.0, 0.0)},
        {"grayscale": 1.5},
    ):
        with pytest.raises(ValueError, match="^--"):
            augment.Augmentation(**bad)
    from trainer.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--train-data", "x", "--crop-scale", "0.5", "0.2"])
    args = parse_args(["--train-data", "x", "--crop-scale", "0.4", "1", "--grayscale", "0.2"])
    assert args.crop_scale == [0.4, 1.0] and args.grayscale == 0.2


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


def test_jpeg_kinds_are_sent_where_they_decode_and_a_refused_one_costs_one_image(photos):
    """Issue 35, case 3: the worker sends only baseline 8-bit YCbCr JPEGs to the device and
    decodes progressive, greyscale and CMYK ones itself; a JPEG that no decoder reads (its
    damage past the headers) no longer fails the batch: it is decoded image by image, becomes
    a black image (every rank's batch keeps its size) and is counted."""
    kinds = jpeg_kinds(Image.fromarray(photos[0].numpy()))
    routed = {name: data.jpeg_for_device(jpeg_bytes) for name, jpeg_bytes in kinds.items()}
    to_device = {name for name, item in routed.items() if isinstance(item, tuple)}
    assert to_device == {"baseline 4:2:0", "baseline 4:4:4", "no quantization tables"}
    for name in ("progressive", "greyscale", "cmyk"):
        assert routed[name] is None and data.decode_image(kinds[name]).shape[2] == 3
    assert data.decode_image(kinds["no quantization tables"]) is None  # PIL cannot read it either

    items = [routed["baseline 4:2:0"], routed["no quantization tables"], routed["baseline 4:4:4"]]
    batch = data.make_batch(items, ["x"] * 3, tokens, 5, False, False, encoded=True)
    transform = augment.DeviceTransform(SIZE, MEAN, STD, torch.device("cpu"))
    out = transform(batch)
    assert out.shape == (3, 3, SIZE, SIZE) and transform.undecodable == 1
    alone = transform(data.make_batch(items[::2], ["x"] * 2, tokens, 5, False, False, True))
    torch.testing.assert_close(out[::2], alone)  # the readable ones as if the bad one were absent
    black = (torch.zeros(3) - torch.tensor(MEAN) * 255) / (torch.tensor(STD) * 255)
    torch.testing.assert_close(out[1], black.view(3, 1, 1).expand(3, SIZE, SIZE))


def test_large_jpegs_decode_at_a_reduced_scale(photos):
    big = photos[0]  # 512 x 512 in scikit-image's set
    assert min(big.shape[:2]) >= 4 * SIZE
    small = data.decode_image(jpeg(big), draft_size=SIZE)
    assert SIZE <= min(small.shape[:2]) < 2 * SIZE
    assert data.decode_image(jpeg(big)).shape == big.shape  # no draft: full size
