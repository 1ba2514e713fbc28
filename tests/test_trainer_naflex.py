"""NaFlex (`--naflex --max-patches N`, trainer/naflex.py): the patch budget, the masked forward
(images of different aspect ratios batched give what each gives alone; on the native square
grid it is open_clip's own forward), and a tiny run that trains, evaluates and exports."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

from test_trainer_ddp import run_shards  # noqa: E402
from trainer_shards import captions, source_images  # noqa: E402

from trainer import augment, data, evaluate, models, naflex, train  # noqa: E402


def tiny(max_patches: int = 24, pool: str | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build_model("tiny-clip").eval()  # 32 px, 8 px patches: a 4 x 4 grid
    if pool:
        model.visual.pool_type = pool
    naflex.NaFlexVisionTransformer.enable(model.visual, max_patches)
    return model


def patchify(image: torch.Tensor, patch: int, index: torch.Tensor) -> torch.Tensor:
    """B x 3 x (R·p) x (C·p) -> B x N x (3·p·p): the patches at `index` (row-major), each in
    (channel, row, column) order, conv1's weight layout: what NaFlexBatch.patches holds."""
    b, c, h, w = image.shape
    rows, cols = h // patch, w // patch
    patches = image.view(b, c, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, rows * cols, c * patch * patch)
    return patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))


def photos(sizes) -> list[torch.Tensor]:
    return [torch.from_numpy(np.array(p.resize(s))) for p, s in zip(source_images(), sizes)]


def test_the_grid_keeps_the_aspect_ratio_under_the_budget():
    assert naflex.grid_for(224, 224, 16, 256) == (16, 16)
    assert naflex.grid_for(100, 400, 16, 256) == (8, 32)
    assert naflex.grid_for(480, 640, 16, 256) == (14, 18)  # 252: the next scale needs 15 x 20
    for h, w in [(17, 1000), (1000, 17), (333, 500), (64, 64), (5, 3)]:
        for budget in (16, 24, 256, 576):
            gh, gw = naflex.grid_for(h, w, 16, budget)
            assert gh * gw <= budget, (h, w, budget)
            # one scale s gives both sides (each rounded up): the aspect ratio is kept
            low = max((gh - 1) * 16 / h, (gw - 1) * 16 / w)
            high = min(gh * 16 / h, gw * 16 / w)
            assert low < high, (h, w, budget, gh, gw)
            # and the next scale up would break the budget (or the scale is at its cap)
            bigger = (-(-h * high * 1.001 // 16), -(-w * high * 1.001 // 16))
            assert bigger[0] * bigger[1] > budget or high > 99, (h, w, budget, gh, gw)


@pytest.mark.parametrize("pool", ["tok", "avg"])
def test_images_of_different_aspect_ratios_batched_embed_as_each_alone(pool):
    """A tall (60 x 20 px: 8 x 3 patches) and a wide image (32 x 64: 3 x 6) batched, 24 and 18
    valid positions of 24: the padding is masked as attention keys and left out of the
    pooling, so each embedding is the one alone."""
    model = tiny(pool=pool)
    transform = augment.DeviceTransform.for_model(model, torch.device("cpu"))
    images = photos([(20, 60), (64, 32)])  # PIL sizes: width, height
    tokenizer = models.build_tokenizer("tiny-clip", None, model.context_length)

    def embed(imgs):
        batch = data.make_batch(imgs, captions(len(imgs)), tokenizer, 0, False, False)
        flex = transform(batch)
        with torch.no_grad():
            return flex, model.encode_image(flex)

    flex, both = embed(images)
    assert flex.grids == [(8, 3), (3, 6)] and flex.valid.sum(1).tolist() == [24, 18]
    assert flex.patches.shape == (2, 24, 3 * 8 * 8)
    for i, image in enumerate(images):
        _, alone = embed([image])
        torch.testing.assert_close(both[i], alone[0], rtol=1e-5, atol=1e-6)
    # a changed padding patch changes nothing
    flex.patches[1, 18:] = 7.0
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(flex), both, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool", ["tok", "avg"])
def test_on_the_native_grid_it_is_open_clips_forward(pool):
    """A square image at the config's size with the budget of its 4 x 4 grid: nothing padded,
    the position embeddings as learned: the same output as open_clip's VisionTransformer."""
    model = tiny(max_patches=16, pool=pool)
    image = torch.randn(3, 3, 32, 32)
    index = torch.arange(16).expand(3, 16)
    patches = patchify(image, 8, index)
    flex = naflex.NaFlexBatch(patches, torch.ones(3, 16, dtype=torch.bool), [(4, 4)] * 3)
    with torch.no_grad():
        torch.testing.assert_close(model.visual(flex), model.visual(image), rtol=1e-5, atol=1e-5)


def test_training_batches_keep_the_budget_and_the_image_aspect():
    model = tiny(max_patches=24)
    transform = augment.DeviceTransform.for_model(model, torch.device("cpu"))
    tokenizer = models.build_tokenizer("tiny-clip", None, model.context_length)
    sizes = [(40, 120), (120, 40), (64, 64), (50, 75)]
    aug = augment.Augmentation(hflip=True, native_aspect=True)
    batch = data.make_batch(photos(sizes), captions(4), tokenizer, 3, True, True, aug=aug)
    flex = transform(batch)
    assert all(gh * gw <= 24 for gh, gw in flex.grids)
    assert flex.valid.sum(1).tolist() == [gh * gw for gh, gw in flex.grids]
    # PIL sizes are (width, height): a 1:3 and a 3:1 image keep crops of at least 1:2.25
    (tall_h, tall_w), (wide_h, wide_w) = flex.grids[:2]
    assert tall_h >= 2 * tall_w and wide_w >= 2 * wide_h, flex.grids
    boxes = batch["boxes"].float()
    assert boxes[0, 2] / boxes[0, 3] >= 2.25 and boxes[1, 3] / boxes[1, 2] >= 2.25
    square = data.make_batch(photos(sizes), captions(4), tokenizer, 3, True, True)
    assert (square["boxes"][:, 2] / square["boxes"][:, 3]).max() <= 4 / 3 + 0.05  # not NaFlex
    with pytest.raises(ValueError, match="no local crops"):
        transform.views(batch, 16)
    # an image's patches, colour jitter included, do not depend on its neighbours: its crop
    # and colours are drawn first either way, and the contrast's mean is over its own patches
    aug = augment.Augmentation(native_aspect=True, color_jitter=(0.4, 0.9, 0.4, 0.1))
    for seed in range(4):
        pair = data.make_batch(photos([(40, 120), (120, 40)]), captions(2), tokenizer, seed,
                               True, False, aug=aug)  # fmt: skip
        alone = data.make_batch(photos([(40, 120)]), captions(1), tokenizer, seed, True, False,
                                aug=aug)  # fmt: skip
        torch.testing.assert_close(
            transform(pair).patches[0], transform(alone).patches[0], rtol=1e-5, atol=1e-5
        )


def test_the_contrast_jitter_averages_over_the_image_not_its_padding():
    """NaFlex pads a short sequence with copies of a patch: the contrast's grey mean is the
    image's own (torchvision's adjust_contrast on the image alone)."""
    contrast = ([1, 0, 2, 3], [1.0, 0.5, 1.0, 0.0], [False, True, False, False], False)
    colour = augment.colour_params([contrast])
    x = torch.rand(1, 3, 4, 8)
    x[..., 4:] = 1.0  # "padding": white
    inside = torch.zeros(1, 1, 4, 8)
    inside[..., :4] = 1
    alone = augment.apply_colour(x[..., :4].clone(), colour)
    padded = augment.apply_colour(x.clone(), colour, inside)[..., :4]
    torch.testing.assert_close(padded, alone)
    assert not torch.allclose(augment.apply_colour(x.clone(), colour)[..., :4], alone)


def test_a_tiny_naflex_run_trains_evaluates_and_exports(tmp_path):
    shards = run_shards(tmp_path / "shards")
    out = tmp_path / "run"
    summary = train.main([
        "--train-data", str(shards / "train" / "{00000..00003}.tar"),
        "--val-data", str(shards / "val" / "00100.tar"), "--model", "tiny-clip",
        "--batch-size", "16", "--steps", "20", "--lr", "1e-3", "--warmup", "2",
        "--precision", "fp32", "--workers", "1", "--log-every", "5", "--save-every", "20",
        "--naflex", "--max-patches", "24", "--output-dir", str(out),
    ])  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    assert summary["retrieval"]["pairs"] == 64
    assert summary["retrieval"]["image_to_text_R@5"] > 5 / 64  # above chance
    ckpt = out / "checkpoints" / "step_00000020.pt"
    # evaluation from the checkpoint: the held-out pairs as a retrieval set
    from trainer.benchmark_sets import write_benchmark_dir

    samples: dict[str, dict] = {}
    with tarfile.open(shards / "val" / "00100.tar") as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            if ext in ("jpg", "txt"):
                samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    chosen = [s for s in samples.values() if "jpg" in s and "txt" in s]
    write_benchmark_dir(tmp_path / "val_set", chosen, "retrieval")
    from_checkpoint = evaluate.main(
        ["--checkpoint", str(ckpt), "--dataset", str(tmp_path / "val_set")]
    )
    metrics = from_checkpoint["metrics"]["all"]
    assert metrics["images"] == 64
    assert metrics["image_retrieval_recall@5"] == pytest.approx(
        summary["retrieval"]["text_to_image_R@5"]
    )
    # the export: open_clip builds the square tower from it; trainer.evaluate the NaFlex one
    from trainer import export

    folder = export.export(ckpt, tmp_path / "exported")
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["trainer"]["naflex"] == {"max_patches": 24}
    import open_clip

    plain = open_clip.create_model(f"local-dir:{folder}", output_dict=True)
    assert type(plain.visual) is open_clip.transformer.VisionTransformer
    from_export = evaluate.main(
        ["--model-dir", str(folder), "--dataset", str(tmp_path / "val_set")]
    )
    assert from_export["metrics"] == from_checkpoint["metrics"]


def test_bad_combinations_fail_with_one_line(tmp_path, capsys):
    base = ["--train-data", "x.tar", "--model", "tiny-clip", "--output-dir", str(tmp_path)]
    cases = {
        ("--max-patches", "64"): "needs --naflex",
        ("--naflex", "--loss", "caption", "--model", "tiny-caption"): "caption loss",
        ("--naflex", "--fsdp"): "--fsdp",
        ("--naflex", "--self-distill-from", "0.5"): "--self-distill-from",
        ("--naflex", "--max-patches", "0"): "must be >= 1",
    }
    for extra, message in cases.items():
        with pytest.raises(SystemExit):
            train.parse_args([*base, *extra])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err, (extra, err)
