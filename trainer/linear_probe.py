"""Linear probe on frozen image features, as CLIP_benchmark does it since its 2023 update
(`clip_benchmark/metrics/linear_probe.py`):

- features: the L2-normalised image embeddings of the train and test splits (its default);
- a validation split of `val_proportion` (CLIP_benchmark's README uses 0.1) drawn from the
  train split;
- the classifier: one `nn.Linear`, AdamW (lr 0.1, weight decay as the only regularisation),
  cross-entropy, batch 64, 10 epochs, a cosine schedule without warm-up;
- the weight decay: searched on the validation split over `logspace(-6, 2, 97)`, first the 7
  points of `logspace(-6, 2, 7)`, then around the best one at spans 8, 4, 2 and 1 (OpenAI's
  CLIP paper, appendix A.3, with AdamW instead of L-BFGS); a tie keeps the earlier candidate;
- the final probe: trained on train + validation with the chosen weight decay, scored on test
  (`lp_acc1`, `lp_acc5`, `lp_mean_per_class_recall`).

Where it differs, on purpose: every random draw (the validation split, the initialisation,
the batch order) comes from generators seeded with `seed`, so the search and its result are
the same at every run and on every rank; CLIP_benchmark draws the split and the batch order
from the global RNG. A weight decay evaluated twice in the search is trained once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trainer.metrics import classification_metrics

WEIGHT_DECAYS = np.logspace(-6, 2, num=97)
COARSE = [int(i) for i in np.linspace(0, 96, 7)]  # the indices of logspace(-6, 2, 7)
SPANS = (8, 4, 2, 1)


def train_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    n_classes: int,
    weight_decay: float,
    *,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.nn.Linear:
    """A linear classifier trained on (features, targets) with AdamW and a cosine schedule."""
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(features.shape[1], n_classes)
    bound = 1 / math.sqrt(features.shape[1])  # nn.Linear's own init, from the seeded generator
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
    probe = probe.to(features.device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for start in range(0, len(features), batch_size):
            for group in optimizer.param_groups:  # cosine from lr to 0, no warm-up
                group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total)) * lr
            rows = order[start : start + batch_size]
            loss = F.cross_entropy(probe(features[rows]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return probe


@torch.no_grad()
def _accuracy(probe, features, targets) -> float:
    return (probe(features).argmax(dim=1) == targets).float().mean().item()


def search_weight_decay(train_x, train_y, val_x, val_y, n_classes, seed=0) -> tuple[float, dict]:
    """(the weight decay with the best validation top-1, {weight decay: accuracy} tried)."""
    tried: dict[int, float] = {}

    def best_of(indices: list[int]) -> int:
        best, best_acc = None, -1.0
        for i in indices:
            if i not in tried:
                probe = train_probe(train_x, train_y, n_classes, WEIGHT_DECAYS[i], seed=seed)
                tried[i] = _accuracy(probe, val_x, val_y)
            if tried[i] > best_acc:  # strictly better: a tie keeps the earlier candidate
                best, best_acc = i, tried[i]
        return best

    peak = best_of(COARSE)
    for span in SPANS:
        peak = best_of([i for i in (peak - span, peak, peak + span) if 0 <= i < len(WEIGHT_DECAYS)])
    return float(WEIGHT_DECAYS[peak]), {
        float(WEIGHT_DECAYS[i]): a for i, a in sorted(tried.items())
    }


def validation_split(n: int, proportion: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, validation rows) of n, a seeded random `proportion` held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(proportion * n)))
    return order[n_val:], order[:n_val]


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    n_classes: int,
    *,
    val_proportion: float = 0.1,
    seed: int = 0,
) -> dict[str, float]:
    """The probe's test metrics and the chosen weight decay (features already normalised)."""
    fit, held = validation_split(len(train_x), val_proportion, seed)
    held, fit = held.to(train_x.device), fit.to(train_x.device)
    weight_decay, _ = search_weight_decay(
        train_x[fit], train_y[fit], train_x[held], train_y[held], n_classes, seed
    )
    probe = train_probe(train_x, train_y, n_classes, weight_decay, seed=seed)
    with torch.no_grad():
        logits = probe(test_x)
    metrics = {f"lp_{k}": v for k, v in classification_metrics(logits, test_y).items()}
    metrics["lp_weight_decay"] = weight_decay
    return metrics
