"""Teacher forcing (maximum likelihood): the baseline objective, METHODS.md section 1."""

from __future__ import annotations

from hf_seqobj.objectives.base import Objective, register_objective
from hf_seqobj.objectives.losses import token_nll


@register_objective(
    "mle",
    settings=(),
    papers=(),
    description="teacher forcing (maximum likelihood on gold prefixes)",
)
class MLEObjective(Objective):
    """Cross-entropy on the gold tokens given gold prefixes.

    In training the loss is :meth:`Objective.teacher_forced_loss`: the token cross-entropy summed and divided by the
    Trainer's `num_items_in_batch` (label smoothing as the Trainer applies it). That is the stock `Trainer`'s loss
    wherever the model's own loss honours `num_items_in_batch` (GPT-2: tested equal to 1e-6, with and without
    gradient accumulation). BART's and T5's own losses ignore it (they take the mean of the micro-batch), so with
    gradient accumulation or several processes the stock Trainer mis-scales their loss; ours makes the same update
    as one big batch (tested). Evaluation loss is the stock one. The loss as a pure function is
    :func:`~hf_seqobj.objectives.losses.token_nll` (also reachable as `MLEObjective.token_nll`).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self.trainer.stock_compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss, outputs = self.teacher_forced_loss(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    token_nll = staticmethod(token_nll)
