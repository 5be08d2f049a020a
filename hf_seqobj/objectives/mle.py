"""Teacher forcing (maximum likelihood): the default objective, the stock Trainer's loss (docs/mle.md)."""

from __future__ import annotations

from typing import Any

import torch

from hf_seqobj.objectives.base import Objective, language_model_kind, register_objective
from hf_seqobj.objectives.losses import token_nll


@register_objective(
    "mle",
    settings=(),
    papers=(),
    description="teacher forcing (maximum likelihood on gold prefixes)",
)
class MLEObjective(Objective):
    """The stock `Trainer.compute_loss`: cross-entropy on the gold tokens given gold prefixes for a language model,
    and whatever loss any other model computes.

    With this objective the trainers train every model the stock `Trainer` / `Seq2SeqTrainer` trains, the same way:
    the model's own loss (a `ModelOutput` or a tuple), a `compute_loss_func`, label smoothing, and the stock handling
    of `model_accepts_loss_kwargs` and `num_items_in_batch`. It needs no language model, adds no callback and logs
    nothing of its own.

    One correction, for one kind of model only. With gradient accumulation or several processes, the Trainer
    counts the target tokens of the whole accumulated (and gathered) batch, passes the count as
    `num_items_in_batch` to a model whose `forward` takes `**kwargs`, and then trusts the model's loss to be the sum
    over this micro-batch divided by that count (so it neither divides by the accumulation steps nor averages over
    processes). Seq2seq LMs whose loss ignores the count (BART, T5, Marian, Pegasus and the other encoder-decoders
    that compute a `CrossEntropyLoss` mean in their `forward`) return this micro-batch's mean instead, so the stock
    update is `gradient_accumulation_steps` (times the processes) too large and weights micro-batches by example
    rather than by token. For those models only, the loss here is the sum of the token cross-entropies
    (:func:`~hf_seqobj.objectives.losses.token_nll`, from the same forward's logits) divided by
    `num_items_in_batch`: the update of one big batch. The model is recognised as ignoring the count on the first
    training micro-batch whose own token count differs from `num_items_in_batch`, by comparing its loss with both
    candidates computed from its logits (:attr:`model_loss_ignores_num_items`); with label smoothing or a
    `compute_loss_func` the stock loss is already normalised right and is used unchanged.
    """

    requires_language_model = False
    uses_compute_loss_func = True
    records_time_shares = False
    token_nll = staticmethod(token_nll)

    def __init__(self, trainer):
        super().__init__(trainer)
        self.model_loss_ignores_num_items: bool | None = None
        """Whether the model's own loss ignores `num_items_in_batch` (None until a micro-batch has told)."""
        self._seq2seq: bool | None = None

    def training_loss(self, model, inputs, num_items_in_batch):
        loss, outputs = self.trainer.stock_compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if not self._may_need_correction(model, inputs, outputs, num_items_in_batch):
            return loss, outputs
        labels = inputs["labels"]
        normalised = self.scale_for_processes(
            token_nll(outputs.logits, labels, num_items_in_batch=num_items_in_batch), num_items_in_batch
        )
        if self.model_loss_ignores_num_items is None:
            with torch.no_grad():
                mean = self.scale_for_processes(token_nll(outputs.logits, labels), num_items_in_batch)
                model_loss, normalised_value = loss.detach().float(), normalised.detach()
                if (mean - normalised_value).abs() <= 1e-3 * mean.abs():
                    return loss, outputs  # this micro-batch holds every counted token: both are the same loss
                ignores = (model_loss - mean).abs() < (model_loss - normalised_value).abs()
            self.model_loss_ignores_num_items = bool(ignores)
        return (normalised, outputs) if self.model_loss_ignores_num_items else (loss, outputs)

    def _may_need_correction(self, model, inputs: dict[str, Any], outputs: Any, num_items_in_batch) -> bool:
        """Whether the stock loss of this micro-batch may be the micro-batch mean that the Trainer takes for a loss
        normalised by `num_items_in_batch` (a seq2seq LM's own loss, given the count, not yet known to honour it)."""
        trainer, args = self.trainer, self.trainer.args
        if self.model_loss_ignores_num_items is False or num_items_in_batch is None or "labels" not in inputs:
            return False
        gathered = args.average_tokens_across_devices and trainer.accelerator.num_processes > 1
        if args.gradient_accumulation_steps == 1 and not gathered:
            return False  # the count is this micro-batch's own: the model's mean is the normalised loss
        if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
            return False
        if not trainer.model_accepts_loss_kwargs or trainer.loss_is_scaled_for_ga is False:
            return False
        logits = getattr(outputs, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.shape[:-1] != inputs["labels"].shape:
            return False
        if self._seq2seq is None:
            self._seq2seq = language_model_kind(model) == "seq2seq"
        return self._seq2seq
