"""Token-level losses shared by the objectives, as pure functions of logits and labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_seqobj.constants import IGNORE_INDEX


def token_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    shift: bool = False,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Token-level negative log-likelihood, as the Transformers models compute their loss.

    Args:
        logits: `[batch, length, vocab]` scores.
        labels: `[batch, length]` target ids, `ignore_index` where there is no target.
        shift: True for decoder-only models, whose logits at position t predict the label at t + 1.
        num_items_in_batch: If given, the sum is divided by it (the Trainer's normaliser under gradient
            accumulation) instead of by the number of targets in this batch.
        ignore_index: The label value that marks positions without a target.

    Returns:
        The scalar loss (computed in float32).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [batch, length].")
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
    )
    if num_items_in_batch is None:
        num_items_in_batch = (labels != ignore_index).sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
