"""The consistency term of GIN-IPA: the views' predictions are pulled towards their mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def consistency_loss(view_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """KL(p_mean || p_v), averaged over the views and every element (classes and voxels included).

    With p_v = softmax(logits_v) over the class channel (dim 1) and p_mean = (1/V) sum_v p_v:
    loss = (1/V) sum_v mean(p_mean * (log p_mean - log p_v)), the reduction of the authors'
    `torch.nn.KLDivLoss()` (Ouyang et al., after Xu et al.'s RandConv) on the views stacked. It is zero
    when the views predict the same, and p_mean is not detached, so every view moves towards the others.
    """
    if len(view_logits) < 2:
        raise ValueError(f"the consistency term needs at least two views, got {len(view_logits)}")
    probs = [F.softmax(logits.float(), dim=1) for logits in view_logits]
    mean = torch.stack(probs).mean(dim=0)
    # torch.nn.KLDivLoss()'s sum of p log p - p log q over every element, divided by their number; written
    # out because F.kl_div's "mean" warns that its meaning will change. xlogy keeps 0 log 0 at 0.
    entropy = torch.xlogy(mean, mean)
    terms = [(entropy - mean * F.log_softmax(logits.float(), dim=1)).mean() for logits in view_logits]
    return torch.stack(terms).mean()


__all__ = ["consistency_loss"]
