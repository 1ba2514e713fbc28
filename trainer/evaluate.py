"""Image-text retrieval recall@k on held-out pairs (the i-th image belongs with the i-th text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def embed(model, batches, transform, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised embeddings of `trainer.data` batch dicts; `transform` puts images on device."""
    images, texts = [], []
    for batch in batches:
        with autocast():
            images.append(model.encode_image(transform(batch)).float())
            texts.append(model.encode_text(batch["tokens"].to(device)).float())
    return F.normalize(torch.cat(images), dim=-1), F.normalize(torch.cat(texts), dim=-1)


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    scores = image_emb @ text_emb.T
    truth = torch.arange(len(scores), device=scores.device)
    out = {}
    for direction, s in (("image_to_text", scores), ("text_to_image", scores.T)):
        # rank of the true match = how many candidates score strictly higher
        true_scores = s[truth, truth].unsqueeze(1)
        ranks = (s > true_scores).sum(dim=1)
        for k in ks:
            out[f"{direction}_R@{k}"] = (ranks < k).float().mean().item()
    return out
