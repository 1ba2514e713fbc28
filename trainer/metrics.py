"""Metrics on embeddings and logits, computed with torch and returned as Python floats
(`.item()`): no `float()` of a NumPy array, which numpy >= 2.4 refuses and which breaks
CLIP_benchmark's and open_clip_train's `accuracy()`."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """acc@k for each k not above the number of classes."""
    ks = [k for k in ks if k <= logits.shape[1]]
    top = logits.topk(max(ks), dim=1).indices
    hit = top == target[:, None]
    return {f"acc{k}": hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def mean_per_class_recall(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the classes present in `target` of the fraction of their samples predicted
    right (scikit-learn's balanced_accuracy_score)."""
    classes = target.unique()
    recalls = torch.stack([(pred[target == c] == c).float().mean() for c in classes])
    return recalls.mean().item()


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    out = topk_accuracy(logits, target)
    out["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(dim=1), target)
    return out


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image: torch.Tensor,
    ks=(1, 5, 10),
    rows: int = 4096,
    info=None,
) -> dict[str, float]:
    """CLIP-paper recall@k with several texts per image (text t describes image text_image[t]):
    text->image, a text is a hit when its image is among its k best images
    (`image_retrieval_recall@k`, CLIP_benchmark's name); image->text, an image is a hit when any
    of its texts is among its k best texts (`text_retrieval_recall@k`).

    Scores are made `rows` texts (or images) at a time, and with `info` each rank scores its
    share of those row blocks and the hit counts are summed across ranks: no rank ever holds the
    whole texts x images matrix (XM3600's 3,600 images x 36 languages of captions would be
    0.5 GB in fp32 per rank). Row-wise top-k makes the result independent of `rows`."""
    n_texts, n_images = len(text_emb), len(image_emb)
    rank, world = (info.rank, info.world_size) if info is not None and info.enabled else (0, 1)
    device = image_emb.device
    hits = torch.zeros(2, len(ks), dtype=torch.float64, device=device)
    image_ids = torch.arange(n_images, device=device)
    for start in range(rank * rows, n_texts, world * rows):
        scores = text_emb[start : start + rows] @ image_emb.T
        truth = text_image[start : start + rows, None]
        for j, k in enumerate(ks):
            best_images = scores.topk(min(k, n_images), dim=1).indices
            hits[0, j] += (best_images == truth).any(dim=1).sum()
    for start in range(rank * rows, n_images, world * rows):
        scores = image_emb[start : start + rows] @ text_emb.T
        mine = image_ids[start : start + rows, None]
        for j, k in enumerate(ks):
            best_texts = scores.topk(min(k, n_texts), dim=1).indices
            hits[1, j] += (text_image[best_texts] == mine).any(dim=1).sum()
    if world > 1:
        dist.all_reduce(hits)
    counts = hits.tolist()
    out = {}
    for j, k in enumerate(ks):
        out[f"image_retrieval_recall@{k}"] = counts[0][j] / n_texts if n_texts else math.nan
        out[f"text_retrieval_recall@{k}"] = counts[1][j] / n_images if n_images else math.nan
    return out


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """The i-th image belongs with the i-th text (the trainer's held-out --val-data pairs)."""
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
