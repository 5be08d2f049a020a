"""Teacher forcing (maximum likelihood): the baseline objective, METHODS.md section 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_seqobj.objectives.base import Objective, register_objective


@register_objective
class MLEObjective(Objective):
    """Cross-entropy on the gold tokens given gold prefixes.

    In training the loss is :meth:`Objective.teacher_forced_loss`: the token cross-entropy summed and divided by the
    Trainer's `num_items_in_batch` (label smoothing as the Trainer applies it). That is the stock `Trainer`'s loss
    wherever the model's own loss honours `num_items_in_batch` (GPT-2: tested equal to 1e-6, with and without
    gradient accumulation). BART's and T5's own losses ignore it (they take the mean of the micro-batch), so with
    gradient accumulation or several processes the stock Trainer mis-scales their loss; ours makes the same update
    as one big batch (tested). Evaluation loss is the stock one. :meth:`token_nll` is the loss as a pure function.
    """

    name = "mle"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self.trainer.stock_compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss, outputs = self.teacher_forced_loss(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def token_nll(
        logits: torch.Tensor,
        labels: torch.Tensor,
        shift: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = -100,
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
            raise ValueError(
                f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [batch, length]."
            )
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
