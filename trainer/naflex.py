"""NaFlex (SigLIP 2): images at their own aspect ratio, as many patches as fit a budget.

Built on open_clip 3.3.0's VisionTransformer (the newest open_clip on the package index; its
NaFlex is on open_clip's main branch only, 4.2.0.dev0). Same parameters, same state dict: a
NaFlex tower is the open_clip tower with a second forward, taken when it is given a
`NaFlexBatch` instead of a B x 3 x H x W tensor.

- **Size.** Each image (its crop box in training, the whole image in evaluation) is resized to
  gh x gw patches, the largest size of its aspect ratio with gh x gw <= --max-patches
  (`grid_for`, the search of SigLIP 2's processor: both sides rounded up to whole patches).
- **Patches.** The device samples each image's gh x gw patches, row by row, straight into a
  sequence of --max-patches (padded), one grid_sample for the batch: the sampling points of
  each patch come from the image's own size and crop, worked out on the host.
- **Position embeddings.** The learned square grid is resized to each image's gh x gw
  (bicubic, antialiased, in fp32, as timm's NaFlexEmbeds: `resize_position_grid`).
- **Padding.** The padded positions are masked as attention keys in every block (the blocks'
  own weights, through scaled_dot_product_attention with a B x 1 x 1 x L mask rather than the
  B·heads x L x L one nn.MultiheadAttention would need) and left out of average pooling; the
  class token is the first position and always valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer


def grid_for(height: int, width: int, patch: int, max_patches: int) -> tuple[int, int]:
    """(gh, gw): the patch grid of an image of height x width, its aspect ratio kept, both
    sides rounded up to whole patches, at the largest scale with gh x gw <= max_patches
    (a bisection on the scale, as SigLIP 2's image processor searches it)."""

    def sides(scale: float) -> tuple[int, int]:
        return (
            max(1, math.ceil(height * scale / patch)),
            max(1, math.ceil(width * scale / patch)),
        )

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        mid = (low + high) / 2
        gh, gw = sides(mid)
        if gh * gw <= max_patches:
            low = mid
        else:
            high = mid
    gh, gw = sides(low)
    return gh, gw


@dataclass
class NaFlexBatch:
    """What a NaFlex tower takes: `patches` B x N x (3·p·p) pixels, `valid` B x N (the first
    gh·gw positions of each row), `grids` each image's (gh, gw) on the host."""

    patches: torch.Tensor
    valid: torch.Tensor
    grids: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def device(self) -> torch.device:
        return self.patches.device

    def rows(self, n: int) -> NaFlexBatch:
        return NaFlexBatch(self.patches[:n], self.valid[:n], self.grids[:n])

    def to(self, *args, **kwargs) -> NaFlexBatch:  # autocast / dtype moves touch pixels only
        return NaFlexBatch(self.patches.to(*args, **kwargs), self.valid, self.grids)


def resize_position_grid(pos: torch.Tensor, grid: tuple[int, int], size) -> torch.Tensor:
    """(gh·gw) x W position embeddings from the learned G x G grid (`pos` without its class
    row): bicubic, antialiased, in fp32 (timm's NaFlexEmbeds defaults)."""
    gh, gw = grid
    if (gh, gw) == tuple(size):
        return pos
    width = pos.shape[-1]
    image = pos.reshape(1, size[0], size[1], width).permute(0, 3, 1, 2)
    wide = torch.promote_types(pos.dtype, torch.float32)
    out = F.interpolate(image.to(wide), size=(gh, gw), mode="bicubic", antialias=True)
    return out.permute(0, 2, 3, 1).reshape(gh * gw, width).to(pos.dtype)


def _block(block: ResidualAttentionBlock, x: torch.Tensor, key_mask: torch.Tensor):
    """open_clip's ResidualAttentionBlock on B x L x W with padded keys masked out."""
    attn = block.attn
    b, length, width = x.shape
    heads = attn.num_heads
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(b, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    y = attn.out_proj(y.transpose(1, 2).reshape(b, length, width))
    x = x + block.ls_1(y)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def check_tower(visual) -> None:
    """A ValueError in one line unless `visual` is a tower this forward covers."""
    if not isinstance(visual, VisionTransformer):
        name = type(visual).__name__
        raise ValueError(f"--naflex needs an open_clip VisionTransformer, not {name}")
    if visual.attn_pool is not None or visual.pool_type == "none":
        raise ValueError("--naflex: attention-pooled towers are not covered")
    blocks = visual.transformer.resblocks
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        raise ValueError("--naflex covers open_clip's ResidualAttentionBlock towers only")


class NaFlexVisionTransformer(VisionTransformer):
    """open_clip's VisionTransformer with the NaFlex forward (`enable` turns a built tower
    into one in place: the parameters and their names stay as they are)."""

    max_patches: int

    @classmethod
    def enable(cls, visual: VisionTransformer, max_patches: int) -> NaFlexVisionTransformer:
        check_tower(visual)
        visual.__class__ = cls
        visual.max_patches = max_patches
        return visual

    def device_transform(self, device: torch.device) -> NaFlexTransform:
        """The data path's device half for this tower (`augment.DeviceTransform.for_model`)."""
        return NaFlexTransform.for_tower(self, device)

    def forward(self, x):
        if not isinstance(x, NaFlexBatch):
            return super().forward(x)
        weight = self.conv1.weight
        tokens = x.patches.to(weight.dtype) @ weight.flatten(1).T  # the patch embedding
        b, n, width = tokens.shape
        pos = self.positional_embedding  # resized from the parameter, then cast
        by_grid = {g: resize_position_grid(pos[1:], g, self.grid_size) for g in set(x.grids)}
        patch_pos = torch.zeros_like(tokens)
        for i, grid in enumerate(x.grids):
            patch_pos[i, : grid[0] * grid[1]] = by_grid[grid].to(tokens.dtype)
        cls = (self.class_embedding + pos[0]).to(tokens.dtype).expand(b, 1, width)
        tokens = self.ln_pre(torch.cat([cls, tokens + patch_pos], dim=1))
        valid = torch.cat([x.valid.new_ones(b, 1), x.valid], dim=1)
        key_mask = valid[:, None, None, :]  # True: attend
        for block in self.transformer.resblocks:
            tokens = _block(block, tokens, key_mask)
        # open_clip's _pool without attention pooling; the average over valid patches only
        if not self.final_ln_after_pool:
            tokens = self.ln_post(tokens)
        if self.pool_type == "avg":
            weights = valid[:, 1:, None].to(tokens.dtype)
            pooled = (tokens[:, 1:] * weights).sum(1) / weights.sum(1)
        else:
            pooled = tokens[:, 0]
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        if self.proj is not None:
            pooled = pooled @ self.proj
        if self.output_tokens:
            return pooled, tokens[:, 1:]
        return pooled


def _sample_points(start, length, sizes, largest: int) -> torch.Tensor:
    """B x largest source coordinates: F.interpolate's (i + 0.5) * length / size - 0.5 for
    each image's own output `sizes`, clamped to its crop (points past its size are padding)."""
    i = torch.arange(largest, dtype=torch.float32) + 0.5
    points = start[:, None] + i[None, :] * (length / sizes)[:, None] - 0.5
    return torch.clamp(points, min=start[:, None], max=(start + length - 1)[:, None])


def plan(boxes: torch.Tensor, patch: int, max_patches: int, flips=None) -> dict:
    """The host's part of a NaFlex batch from the crop boxes (B x 4: top, left, height,
    width) and flip flags: each image's grid; the source rows `ys` and columns `xs` of its
    own output size (flipped within its own width); and for each of the N positions, the
    patch row and column it holds (`rows`, `cols`) and whether it is one (`valid`)."""
    grids = [grid_for(int(h), int(w), patch, max_patches) for _, _, h, w in boxes.tolist()]
    boxes = boxes.float()
    heights = torch.tensor([g[0] * patch for g in grids], dtype=torch.float32)
    widths = torch.tensor([g[1] * patch for g in grids], dtype=torch.float32)
    ys = _sample_points(boxes[:, 0], boxes[:, 2], heights, max(g[0] for g in grids) * patch)
    xs = _sample_points(boxes[:, 1], boxes[:, 3], widths, max(g[1] for g in grids) * patch)
    flipped = [] if flips is None else [i for i, f in enumerate(flips.tolist()) if f]
    for i in flipped:
        w = grids[i][1] * patch
        xs[i, :w] = xs[i, :w].flip(0)
    rows = torch.zeros(len(grids), max_patches, dtype=torch.int64)
    cols = torch.zeros(len(grids), max_patches, dtype=torch.int64)
    valid = torch.zeros(len(grids), max_patches, dtype=torch.bool)
    for i, (gh, gw) in enumerate(grids):
        rows[i, : gh * gw] = torch.arange(gh).repeat_interleave(gw)
        cols[i, : gh * gw] = torch.arange(gw).repeat(gh)
        valid[i, : gh * gw] = True
    return {"grids": grids, "ys": ys, "xs": xs, "rows": rows, "cols": cols, "valid": valid}


def sample_patches(canvas, ys, xs, rows, cols, patch: int, chunk: int = 32) -> torch.Tensor:
    """B x 3 x (N·p) x p float32: position t of image b is its patch (rows[b, t], cols[b, t]),
    sampled bilinearly from its uint8 canvas image at source rows `ys` and columns `xs` (one
    grid_sample, `chunk` images at a time). Only the N patches are made: a canvas as tall as
    the tallest grid and as wide as the widest would hold up to N x N patches per image."""
    _, _, height, width = canvas.shape
    offsets = torch.arange(patch, device=canvas.device)
    out = []
    for i in range(0, len(canvas), chunk):
        part = slice(i, i + chunk)
        b, n = rows[part].shape
        gy = ys[part].gather(1, (rows[part, :, None] * patch + offsets).view(b, -1))
        gx = xs[part].gather(1, (cols[part, :, None] * patch + offsets).view(b, -1))
        gy = ((2 * gy + 1) / height - 1).view(b, n, patch, 1).expand(b, n, patch, patch)
        gx = ((2 * gx + 1) / width - 1).view(b, n, 1, patch).expand(b, n, patch, patch)
        grid = torch.stack((gx, gy), dim=-1).view(b, n * patch, patch, 2)
        out.append(
            F.grid_sample(canvas[part].float(), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
        )  # fmt: skip
    return torch.cat(out)


class NaFlexTransform:
    """batch dict from `trainer.data` -> a `NaFlexBatch` on the device: each image's crop box
    (training; in evaluation the whole image) resized to its own patch grid, colour-jittered
    where drawn, normalised and cut into patches. The device transform of a NaFlex tower
    (`augment.DeviceTransform.for_model` picks it)."""

    def __init__(self, patch: int, max_patches: int, mean, std, device: torch.device):
        from trainer.augment import DeviceTransform

        self.patch, self.max_patches = patch, max_patches
        # the side a worker decodes an evaluation image to (`data.decode_image`)
        self.size = patch * math.isqrt(max_patches)
        self.base = DeviceTransform(self.size, mean, std, device)
        self.mean, self.std, self.device = tuple(mean), tuple(std), device

    @classmethod
    def for_tower(cls, visual, device):
        cfg = visual.preprocess_cfg
        return cls(visual.patch_size[0], visual.max_patches, cfg["mean"], cfg["std"], device)

    @property
    def undecodable(self) -> int:
        return self.base.undecodable

    def __call__(self, batch: dict) -> NaFlexBatch:
        return self.views(batch)[0]

    def views(self, batch: dict, local_size: int | None = None):
        from trainer.augment import colour_normalize, to_device

        if local_size is not None:
            raise ValueError("--naflex has no local crops (self-distillation)")
        boxes = batch["boxes"]
        if not batch.get("train", True):  # evaluation: the whole image, no crop
            sizes = batch["sizes"].to(torch.int32)
            boxes = torch.cat([torch.zeros_like(sizes), sizes], dim=1)
        host = plan(boxes, self.patch, self.max_patches, batch.get("flips"))
        canvas, channels_last = self.base.canvas(batch)
        if channels_last:
            canvas = canvas.permute(0, 3, 1, 2)
        on = to_device({k: host[k] for k in ("ys", "xs", "rows", "cols", "valid")}, self.device)
        pixels = sample_patches(canvas, on["ys"], on["xs"], on["rows"], on["cols"], self.patch)
        b, n, p = len(canvas), self.max_patches, self.patch
        # the contrast jitter's mean is over an image's own patches, not its padding
        inside = on["valid"].view(b, 1, n, 1, 1).expand(b, 1, n, p, p).reshape(b, 1, n * p, p)
        pixels = colour_normalize(pixels, self.mean, self.std, batch.get("colour"), inside)
        patches = pixels.view(b, 3, n, p, p).transpose(1, 2).reshape(b, n, 3 * p * p)
        return NaFlexBatch(patches, on["valid"], host["grids"]), None
