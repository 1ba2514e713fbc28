"""--pretrained / --pretrained-image: weights saved by open_clip in the formats users have load
into the trainer's model and give open_clip's own embeddings; mismatches are one line."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from trainer import locking, models, pretrained, train

MODEL = "tiny-clip"


def photographs(size: int) -> torch.Tensor:
    """scikit-image's bundled photographs through open_clip's eval preprocessing."""
    data = pytest.importorskip("skimage.data")
    from open_clip.transform import image_transform
    from PIL import Image

    transform = image_transform(size, is_train=False)
    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return torch.stack([transform(Image.fromarray(np.asarray(im))) for im in images])


def save_for_hf(model, cfg: dict, out: Path, **kwargs) -> None:
    """open_clip's own hub-folder writer (weights + open_clip_config.json)."""
    hub = importlib.import_module("open_clip.push_to_hf_hub")
    tokenizer = open_clip.get_tokenizer(MODEL)
    if not hasattr(tokenizer, "save_pretrained"):  # open_clip's SimpleTokenizer saves nothing
        tokenizer.save_pretrained = lambda directory: None
    hub.save_for_hf(model, tokenizer, cfg, out, **kwargs)


TEXTS = ["an astronaut in a suit", "a cup of coffee", "a cat", "a rocket on its pad", "x"]


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """A tiny-clip with weights of its own (seed 7), saved as open_clip saves them:
    save_for_hf's hub folder (.bin + .safetensors + open_clip_config.json), each weights file
    alone, a hub folder with the .bin only, and open_clip_train's epoch checkpoint."""
    models.register_configs()
    root = tmp_path_factory.mktemp("released")
    torch.manual_seed(7)
    model = open_clip.create_model(MODEL)
    save_for_hf(model, models.model_config(MODEL), root / "hub")
    bin_only = root / "hub_bin"
    bin_only.mkdir()
    for name in ("open_clip_pytorch_model.bin", "open_clip_config.json"):
        (bin_only / name).write_bytes((root / "hub" / name).read_bytes())
    # open_clip_train/main.py's checkpoint_dict, model wrapped in DDP (module. keys)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save(
        {
            "epoch": 3,
            "name": "tiny",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        },
        root / "epoch_3.pt",
    )
    return {
        "hub": root / "hub",
        "hub_bin": bin_only,
        "bin": root / "hub" / "open_clip_pytorch_model.bin",
        "safetensors": root / "hub" / "open_clip_model.safetensors",
        "open_clip_train": root / "epoch_3.pt",
    }


def open_clip_reference(path: Path, image_size: int | None = None):
    spec = (MODEL, str(path)) if path.is_file() else (f"local-dir:{path}", None)
    model, _, _ = open_clip.create_model_and_transforms(
        spec[0], pretrained=spec[1], force_image_size=image_size
    )
    return model.eval()


def embeddings(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("kind", ["hub", "hub_bin", "bin", "safetensors", "open_clip_train"])
def test_each_format_gives_open_clips_embeddings(released, kind):
    images = photographs(32)
    tokens = open_clip.get_tokenizer(MODEL)(TEXTS)
    model = models.build_model(MODEL).eval()
    line = pretrained.load_pretrained(model, str(released[kind]), MODEL, models.model_config(MODEL))
    assert f"{len(model.state_dict())} tensors" in line
    ours = embeddings(model, images, tokens)
    theirs = embeddings(open_clip_reference(released[kind]), images, tokens)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert model.logit_scale.item() == pytest.approx(np.log(1 / 0.07))


def test_position_embeddings_resized_as_open_clip_does(released):
    images = photographs(48)
    tokens = open_clip.get_tokenizer(MODEL)(TEXTS)
    model = models.build_model(MODEL, image_size=48).eval()
    pretrained.load_pretrained(model, str(released["safetensors"]), MODEL, {})
    assert model.visual.positional_embedding.shape[0] == 1 + 6 * 6
    theirs = open_clip_reference(released["safetensors"], image_size=48)
    assert torch.equal(embeddings(model, images, tokens)[0], embeddings(theirs, images, tokens)[0])


def test_image_tower_alone_and_a_caption_model_from_a_clip_checkpoint(released):
    state = torch.load(released["bin"], weights_only=True)
    torch.manual_seed(0)
    model = models.build_model(MODEL)
    torch.manual_seed(0)
    fresh = models.build_model(MODEL)
    line = pretrained.load_pretrained_image(model, str(released["open_clip_train"]))
    assert line.endswith(f"{sum(k.startswith('visual.') for k in state)} tensors")
    for key, value in model.state_dict().items():
        expected = state[key] if key.startswith("visual.") else fresh.state_dict()[key]
        assert torch.equal(value, expected), key
    # a tower's own state dict (no visual. prefix) is read the same way
    tower = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    torch.save(tower, released["bin"].parent.parent / "tower.bin")
    other = models.build_model(MODEL)
    pretrained.load_pretrained_image(other, str(released["bin"].parent.parent / "tower.bin"))
    assert torch.equal(other.visual.conv1.weight, state["visual.conv1.weight"])

    # a siglip+caption model (tiny-caption: tiny-clip's towers) from a CLIP checkpoint: the
    # towers load, the decoder and SigLIP bias keep their init
    torch.manual_seed(0)
    caption = models.build_model("tiny-caption", "siglip+caption")
    decoder_init = {k: v.clone() for k, v in caption.decoder.state_dict().items()}
    bias_init = caption.text.logit_bias.clone()
    line = pretrained.load_pretrained(caption, str(released["bin"]), "tiny-caption", {})
    assert line.endswith(f"{len(decoder_init) + 1} kept their init")
    assert torch.equal(caption.visual.conv1.weight, state["visual.conv1.weight"])
    assert torch.equal(caption.text.token_embedding.weight, state["token_embedding.weight"])
    assert torch.equal(caption.text.logit_scale, state["logit_scale"])
    assert torch.equal(caption.text.logit_bias, bias_init)
    for key, value in caption.decoder.state_dict().items():
        assert torch.equal(value, decoder_init[key]), key


def test_mismatches_are_one_line_naming_keys(released, tmp_path):
    state = torch.load(released["bin"], weights_only=True)
    state.pop("ln_final.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.bin")
    model = models.build_model(MODEL)
    with pytest.raises(ValueError) as info:
        pretrained.load_pretrained(model, str(tmp_path / "bad.bin"), MODEL, {})
    message = str(info.value)
    assert "\n" not in message
    assert "missing ln_final.weight" in message and "unexpected extra.weight" in message
    state = torch.load(released["bin"], weights_only=True)
    state["text_projection"] = torch.zeros(64, 32)
    torch.save(state, tmp_path / "shape.bin")
    with pytest.raises(ValueError) as info:
        pretrained.load_pretrained(model, str(tmp_path / "shape.bin"), MODEL, {})
    assert "text_projection is (64, 32) there, (64, 64) here" in str(info.value)
    # a bare file of another width (no config to compare): still one line
    with pytest.raises(ValueError) as info:
        pretrained.load_pretrained(
            models.build_model("tiny-clip-w32"), str(released["bin"]), "tiny-clip-w32", {}
        )
    assert "does not fit this model" in str(info.value) and "\n" not in str(info.value)
    # a hub folder of another architecture: the first differing config key
    with pytest.raises(ValueError, match=r"embed_dim is 64 there, 32 here"):
        pretrained.load_pretrained(
            models.build_model("tiny-clip-w32"), str(released["hub"]), "tiny-clip-w32",
            models.model_config("tiny-clip-w32"),
        )  # fmt: skip
    for bad, reason in (
        (tmp_path / "absent.bin", "does not exist"),
        (tmp_path, "without open_clip_config.json"),
        (Path(__file__), "not a readable checkpoint"),
    ):
        with pytest.raises(ValueError, match=reason):
            pretrained.load_pretrained(models.build_model(MODEL), str(bad), MODEL, {})


def test_locks_follow_open_clips_groups():
    args = train.parse_args(
        ["--train-data", "x", "--model", MODEL, "--lock-image", "--lock-image-unlocked-groups",
         "1", "--lock-text", "--lock-text-unlocked-layers", "2", "--lock-text-freeze-layer-norm"]
    )  # fmt: skip
    model = models.build_model(MODEL)
    counts = locking.lock_towers(model, args)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # image: the last group is the projection; text: the last two are the last block + ln_final
    # (its LayerNorms frozen by the flag) and the projection
    assert {n for n in trainable if n.startswith("visual.")} == {"visual.proj"}
    last = f"transformer.resblocks.{len(model.transformer.resblocks) - 1}."
    text = {n for n in trainable if not n.startswith("visual.")}
    assert "text_projection" in text and "logit_scale" in text
    assert all(n.startswith(last) or n in ("text_projection", "logit_scale") for n in text)
    assert not any(".ln_" in n or n.startswith("ln_final") for n in text)
    # ... and every other parameter of the last block is trainable (its group is unlocked)
    for name, param in model.named_parameters():
        if name.startswith(last) and ".ln_" not in name:
            assert param.requires_grad, name
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert {id(p) for g in train.param_groups(model, 0.1) for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }


def test_flags_that_cannot_work_are_refused(capsys):
    for argv, message in (
        (["--lock-image-unlocked-groups", "1"], "needs --lock-image"),
        (["--lock-text-unlocked-layers", "1"], "need --lock-text"),
        (["--init-from", "a", "--pretrained", "b"], "start from one of them"),
    ):
        with pytest.raises(SystemExit):
            train.parse_args(["--train-data", "x", *argv])
        assert message in capsys.readouterr().err
    args = train.parse_args(["--train-data", "x", "--model", "tiny-caption", "--loss", "caption",
                             "--lock-text"])  # fmt: skip
    with pytest.raises(ValueError, match="no text tower"):
        locking.lock_towers(models.build_model("tiny-caption", "caption"), args)


def test_quick_gelu_weights_need_force_quick_gelu(tmp_path):
    """A hub folder of a QuickGELU model (as MetaCLIP 2's ViT-H-14-quickgelu-worldwide is):
    refused for the plain config, loaded with --force-quick-gelu, and then equal to open_clip's
    create_model(force_quick_gelu=True) with the same weights."""
    models.register_configs()
    torch.manual_seed(11)
    quick = open_clip.create_model(MODEL, force_quick_gelu=True)
    cfg = dict(models.model_config(MODEL), quick_gelu=True)
    save_for_hf(quick, cfg, tmp_path / "hub", safe_serialization=True)
    with pytest.raises(ValueError, match=r"quick_gelu .*--force-quick-gelu"):
        pretrained.load_pretrained(
            models.build_model(MODEL), str(tmp_path / "hub"), MODEL, models.model_config(MODEL)
        )
    args = train.parse_args(["--train-data", "x", "--model", MODEL, "--force-quick-gelu",
                             "--pretrained", str(tmp_path / "hub")])  # fmt: skip
    model = models.build_model(MODEL, force_quick_gelu=True).eval()
    train.start_weights(model, args, verbose=False)
    images, tokens = photographs(32), open_clip.get_tokenizer(MODEL)(TEXTS)
    ours, theirs = embeddings(model, images, tokens), embeddings(quick.eval(), images, tokens)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    gelu = models.build_model(MODEL).eval()  # the same weights under GELU: other embeddings
    pretrained.load_into(gelu, quick.state_dict(), "quick weights")
    assert not torch.allclose(embeddings(gelu, images, tokens)[0], ours[0], atol=1e-3)
