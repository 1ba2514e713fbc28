"""Captioning objectives built from open_clip parts.

- OpenVision 2 (`--loss caption`): an open_clip vision tower with `output_tokens=True`, and a
  caption decoder trained with the caption loss alone. No text encoder is built. During
  training each sample keeps a random subset of its N visual tokens (`--visual-token-keep R`):
  the encoder sees the whole image, the decoder only the kept tokens.
  - `--caption-fusion prefix` (the default for `--loss caption`; the release's
    `text_decoder_v2`, fusion_style 'concat'): `PrefixCaptionDecoder`. The kept tokens,
    int(R * N) of them in random order as the release draws them, are projected (a linear
    map without bias) and put in front of the text's token embeddings. One causal transformer
    (open_clip's `Transformer`) runs over [kept visual ; text], and only the text positions'
    outputs are read. The dropped tokens are not in the sequence, so they cost nothing.
  - `--caption-fusion cross` (LocCa's, the default beside a contrastive loss):
    `CaptionDecoder`, text self-attention plus cross-attention to round(R * N) kept tokens in
    their original order (open_clip's `MultimodalTransformer`).
- SigLIP 2 / CoCa-like (`--loss siglip+caption`, `clip+caption`): an open_clip CLIP model (both
  towers, pooled embeddings for the contrastive loss) plus the same decoder on the un-pooled
  visual tokens, LocCa-style.

Zero-shot classification of a model without a text tower scores a class by the caption
likelihood of its templates (`log_likelihood`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import MultimodalTransformer, Transformer
from torch import nn
from torch.utils.checkpoint import checkpoint


def keep_visual_tokens(tokens: torch.Tensor, keep: float, ordered: bool = True) -> torch.Tensor:
    """B x N x D -> B x k x D: a random subset per sample. `ordered` (cross fusion): k =
    round(keep * N), in their original order. Otherwise (prefix fusion, as OpenVision 2's
    release draws them): k = int(keep * N), in the random order drawn."""
    if keep >= 1.0:
        return tokens
    b, n, d = tokens.shape
    k = max(1, round(keep * n) if ordered else int(keep * n))
    chosen = torch.rand(b, n, device=tokens.device).argsort(dim=1)[:, :k]
    if ordered:
        chosen = chosen.sort(dim=1).values
    return tokens.gather(1, chosen[..., None].expand(b, k, d))


IGNORE = -100  # label of the positions after a text's end


def text_lengths(text: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Tokens up to and including the last non-pad one. (open_clip's tokenizer pads with id 0,
    which is also the token '!': a count of non-pad ids would miss those inside a text.)"""
    nonpad = text != pad_id
    last = text.shape[1] - 1 - nonpad.flip(1).int().argmax(dim=1)
    return torch.where(nonpad.any(dim=1), last + 1, torch.zeros_like(last))


def trim_padding(text: torch.Tensor, pad_id: int, multiple: int = 1) -> torch.Tensor:
    """Drop trailing all-pad columns (the length rounded up to a multiple: under torch.compile
    8 keeps the number of shapes small)."""
    longest = int(text_lengths(text, pad_id).max())
    length = min(text.shape[1], max(2, -(-longest // multiple) * multiple))
    return text[:, :length]


def shifted_labels(text: torch.Tensor, pad_id: int) -> torch.Tensor:
    """text[:, 1:], with IGNORE after each text's end: the targets of decoder(text[:, :-1])."""
    labels = text[:, 1:]
    position = torch.arange(1, text.shape[1], device=text.device)
    return labels.masked_fill(position[None, :] >= text_lengths(text, pad_id)[:, None], IGNORE)


def caption_plan(text: torch.Tensor, pad_id: int, multiple: int = 1) -> dict:
    """The host's part of a caption forward, from the tokens while they are still on the CPU:
    the trimmed length (`caption_length`) and the flat indices of the positions that have a
    next token (`caption_targets`). Computed on the device, the length is a read of a device
    value and the positions a boolean mask: each a host sync in every training step."""
    short = trim_padding(text, pad_id, multiple)
    targets = (shifted_labels(short, pad_id) != IGNORE).flatten().nonzero().squeeze(1)
    return {"caption_length": short.shape[1], "caption_targets": targets}


def _cross_entropy_sum(hidden, head, labels):
    return F.cross_entropy((hidden @ head).float(), labels, ignore_index=IGNORE, reduction="sum")


def chunked_caption_loss(hidden, head, labels, chunk_logits: int = 1 << 26) -> torch.Tensor:
    """Mean next-token cross-entropy of rows `hidden` (N x width) under the vocabulary head
    (width x vocab), labels N (CoCaLoss's caption term), without ever holding N x vocab logits:
    rows go through the head in chunks of about `chunk_logits` logits, and each chunk's logits
    are recomputed in the backward (activation checkpointing) instead of kept. XLM-V's 901,629
    tokens at batch 294 and ~30 tokens would be ~32 GB of fp32 logits; a chunk is 256 MiB."""
    rows = max(1, chunk_logits // head.shape[1])
    if len(hidden) <= rows:
        total = _cross_entropy_sum(hidden, head, labels)
    else:
        total = sum(
            checkpoint(_cross_entropy_sum, h, head, y, use_reentrant=False)
            for h, y in zip(hidden.split(rows), labels.split(rows), strict=True)
        )
    return total / max(1, len(labels))


def _init_blocks(blocks, width: int, layers: int) -> None:
    """open_clip's text-tower scheme for residual attention blocks, which OpenVision 2's release
    also uses (attention weights width^-0.5, output projections scaled by depth); the biases
    keep torch's zeros."""
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    for block in blocks:
        nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class CaptionDecoder(nn.Module):
    """Token + position embeddings, a projector of the visual tokens to the decoder width,
    open_clip's MultimodalTransformer (causal self-attention, cross-attention to the visual
    tokens; its output projection is the vocabulary head, applied by the caller to the
    positions that have a target only: `hidden` + `head`)."""

    fusion = "cross"

    def __init__(
        self, vocab_size, context_length, width, layers, heads, vision_width, mlp_ratio=4.0
    ):
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.projector = nn.Sequential(
            nn.Linear(vision_width, width), nn.GELU(), nn.Linear(width, width)
        )
        self.transformer = MultimodalTransformer(
            width=width,
            layers=layers,
            heads=heads,
            context_length=context_length,
            mlp_ratio=mlp_ratio,
            output_dim=vocab_size,
        )
        # its output projection becomes the vocabulary head, applied by the caller
        self.vocab_head = nn.Parameter(self.transformer.text_projection.detach().clone())
        self.transformer.text_projection = None
        self._init(width, layers)

    def _init(self, width: int, layers: int) -> None:
        # open_clip's text-tower scheme (MultimodalTransformer.init_parameters is not usable)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        _init_blocks([*self.transformer.resblocks, *self.transformer.cross_attn], width, layers)
        nn.init.normal_(self.vocab_head, std=width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)

    def hidden(self, projected: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """B x L x width: the decoder state after each of text_in's tokens, given the visual
        tokens already projected (`projector`)."""
        x = self.token_embedding(text_in) + self.positional_embedding[: text_in.shape[1]]
        return self.transformer(projected, x)  # ln_final applied; no projection

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.vocab_head

    def forward(self, visual_tokens: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """B x L x vocab logits of the token after each of text_in's L tokens."""
        return self.head(self.hidden(self.projector(visual_tokens), text_in))


class PrefixCaptionDecoder(nn.Module):
    """OpenVision 2's decoder as released (`text_decoder_v2`, fusion_style 'concat'): the
    projected visual tokens (a linear map without bias) in front of the text's token embeddings,
    one transformer (open_clip's `Transformer`, pre-LN blocks) with one causal mask over the
    whole sequence, a final LayerNorm, and a vocabulary head without bias read at the text
    positions only.

    As in the release, the mask is causal over the visual prefix too: its `Encoder` is built
    without the fusion style, so the prefix-LM mask in its block code, where image tokens see
    each other, is never used. Also as released, there are no positional embeddings: causal
    attention orders the text, and the kept visual tokens come in random order."""

    fusion = "prefix"

    def __init__(
        self, vocab_size, context_length, width, layers, heads, vision_width, mlp_ratio=4.0
    ):
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.projector = nn.Linear(vision_width, width, bias=False)
        self.transformer = Transformer(width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        self.vocab_head = nn.Parameter(torch.empty(width, vocab_size))
        # the release's initialisers (text_decoder_v2 and its Encoder1DBlock)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.projector.weight, std=vision_width**-0.5)
        _init_blocks(self.transformer.resblocks, width, layers)
        nn.init.normal_(self.vocab_head, std=width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def sequence(self, projected: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """B x (kept + L) x width: what the transformer runs over."""
        text = self.token_embedding(text_in).to(projected.dtype)
        return torch.cat([projected, text], dim=1)

    def hidden(self, projected: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """B x L x width: the decoder state after each of text_in's tokens, given the visual
        tokens already projected (`projector`)."""
        x = self.sequence(projected, text_in)
        n = x.shape[1]
        causal = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        x = self.transformer(x, attn_mask=causal)
        return self.ln_final(x[:, projected.shape[1] :])

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.vocab_head

    def forward(self, visual_tokens: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """B x L x vocab logits of the token after each of text_in's L tokens."""
        return self.head(self.hidden(self.projector(visual_tokens), text_in))


class CaptionModel(nn.Module):
    """Vision tower + caption decoder, and with `clip` (open_clip CLIP without its vision tower)
    the text tower and logit scale/bias of a contrastive objective."""

    def __init__(self, visual, decoder, clip=None, visual_token_keep=1.0, pad_id=0):
        super().__init__()
        visual.output_tokens = True
        self.visual = visual
        self.decoder = decoder
        self.text = clip
        self.visual_token_keep = visual_token_keep
        self.pad_id = pad_id
        self.context_length = decoder.context_length
        self.trim_multiple = 1  # 8 under torch.compile (train.py): fewer distinct shapes

    @property
    def has_text_tower(self) -> bool:
        return self.text is not None

    @property
    def logit_scale(self):
        return self.text.logit_scale

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)
        if self.text is not None:
            self.text.transformer.grad_checkpointing = enable

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled, _ = self.visual(image)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.text is None:
            raise ValueError("a caption-only model has no text tower (no text embeddings)")
        return self.text.encode_text(text, normalize=normalize)

    def caption_plan(self, text: torch.Tensor) -> dict:
        """`caption_plan` of CPU tokens, for `forward`'s keyword arguments."""
        return caption_plan(text, self.pad_id, self.trim_multiple)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, caption_length=None, caption_targets=None
    ) -> dict:
        """open_clip's output dict plus `caption_loss`. The training loop passes
        `caption_plan(text)` computed on the host; without it the plan is computed here from
        `text`, which on a GPU costs two host syncs."""
        if caption_length is None:
            plan = self.caption_plan(text)
            caption_length = plan["caption_length"]
            caption_targets = plan["caption_targets"].to(text.device)
        pooled, tokens = self.visual(image)
        if self.training:
            ordered = self.decoder.fusion == "cross"
            tokens = keep_visual_tokens(tokens, self.visual_token_keep, ordered)
        short = text[:, :caption_length]
        hidden = self.decoder.hidden(self.decoder.projector(tokens), short[:, :-1])
        # the vocabulary head runs on the positions that have a next token only
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, caption_targets)
        labels = short[:, 1:].reshape(-1).index_select(0, caption_targets)
        out = {"caption_loss": chunked_caption_loss(hidden, self.decoder.vocab_head, labels)}
        if self.text is not None:
            out["image_features"] = F.normalize(pooled, dim=-1)
            out["text_features"] = self.text.encode_text(text, normalize=True)
            out["logit_scale"] = self.text.logit_scale.exp()
            if getattr(self.text, "logit_bias", None) is not None:
                out["logit_bias"] = self.text.logit_bias
        return out

    @torch.no_grad()
    def log_likelihood(self, image: torch.Tensor, texts: torch.Tensor, chunk_tokens=1 << 22):
        """B x T: sum over each text's non-pad tokens of log p(token | earlier tokens, image),
        all visual tokens kept. Computed in chunks of (image, text) pairs so that the logits of
        one chunk stay near `chunk_tokens` x vocab floats."""
        _, tokens = self.visual(image)
        visual = self.decoder.projector(tokens)  # B x N x W, projected once
        texts = trim_padding(texts, self.pad_id, multiple=1)
        text_in, labels = texts[:, :-1], shifted_labels(texts, self.pad_id)
        b, t = len(image), len(texts)
        vocab = self.decoder.vocab_head.shape[1]
        per_chunk = max(1, chunk_tokens // (labels.shape[1] * vocab))
        pairs = torch.cartesian_prod(torch.arange(b), torch.arange(t)).to(image.device)
        scores = torch.empty(b * t, device=image.device)
        for s in range(0, len(pairs), per_chunk):
            i, j = pairs[s : s + per_chunk].unbind(1)
            lab = labels[j]
            target = lab != IGNORE
            hidden = self.decoder.hidden(visual[i], text_in[j])[target]
            logp = self.decoder.head(hidden).float().log_softmax(dim=-1)
            picked = logp.gather(1, lab[target][:, None]).squeeze(1)
            pair = torch.arange(len(i), device=image.device)[:, None].expand_as(lab)[target]
            scores[s : s + len(i)] = torch.zeros(len(i), device=image.device).index_add(
                0, pair, picked
            )
        return scores.view(b, t)
