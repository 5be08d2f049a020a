"""Drop-in replacements for `transformers.Trainer` and `transformers.Seq2SeqTrainer` with a selectable objective.

With `objective="mle"` (the default) they train exactly as the stock classes; other objectives replace
`compute_loss` through the objective registry (`hf_seqobj.objectives`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, Seq2SeqTrainer, Trainer

from hf_seqobj.generation import gather_targets, split_prompts
from hf_seqobj.objectives import Objective, get_objective
from hf_seqobj.rollin import first_eos_lengths
from hf_seqobj.trainers.seqobj_config import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments


class _SeqObjMixin:
    """What both trainers add to their stock class: the objective, its loss and its logged metrics."""

    objective: Objective

    def _init_objective(self) -> None:
        if not hasattr(self.args, "objective"):
            raise TypeError(
                f"{type(self).__name__} needs SeqObjTrainingArguments or SeqObjSeq2SeqTrainingArguments (which have "
                f"an `objective` field), got {type(self.args).__name__}."
            )
        self.objective = get_objective(self.args.objective)(self)
        for callback in self.objective.callbacks():
            self.add_callback(callback)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        result = self.objective.compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            self.objective.micro_step += 1
        return result

    def stock_compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The stock `Trainer.compute_loss` (teacher forcing), for objectives that build on it."""
        return super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(key.startswith("eval_") for key in logs)
        extra = self.objective.pop_metrics("eval" if is_eval else "train")
        if self.accelerator.num_processes > 1:  # every rank calls log: the mean of the ranks' means
            from accelerate.utils import gather_object

            per_rank = gather_object([extra])
            keys = sorted({key for metrics in per_rank for key in metrics})
            extra = {key: sum(m[key] for m in per_rank if key in m) / sum(key in m for m in per_rank) for key in keys}
        if is_eval:
            extra = {f"eval_{key}": value for key, value in extra.items()}
        super().log({**logs, **extra}, start_time)  # type: ignore[misc]


class SeqObjTrainer(_SeqObjMixin, Trainer):
    """`transformers.Trainer` for decoder-only models with a sequence-level objective.

    Takes the same arguments as `transformers.Trainer`, with `args` a :class:`SeqObjTrainingArguments`. With
    `args.predict_with_generate`, evaluation generates from each example's prompt (the tokens before its first
    label) and `compute_metrics` gets the generated tokens as predictions and the target tokens as label ids, both
    left-aligned and padded with -100.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_objective()

    def eval_generation_config(self) -> GenerationConfig:
        """The explicit configuration of evaluation generation (a checkpoint's own settings do not leak in)."""
        tokenizer = self.processing_class
        model_config = self.accelerator.unwrap_model(self.model).config
        pad = getattr(tokenizer, "pad_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        return GenerationConfig(
            max_new_tokens=self.args.generation_max_new_tokens,
            num_beams=self.args.generation_num_beams or 1,
            do_sample=False,
            pad_token_id=pad if pad is not None else model_config.pad_token_id,
            eos_token_id=eos if eos is not None else model_config.eos_token_id,
            bos_token_id=model_config.bos_token_id,
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if "labels" not in inputs:
            raise ValueError("predict_with_generate with a decoder-only model needs `labels` to find each prompt.")
        loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        generation_config = self.eval_generation_config()
        prompt_ids, prompt_mask = split_prompts(inputs["input_ids"], inputs["labels"], generation_config.pad_token_id)
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad():
            generated = unwrapped.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config
            )
        new_tokens = generated[:, prompt_ids.shape[1] :]
        # Everything after the first EOS is padding: mark it -100 so that metrics never read it.
        lengths = first_eos_lengths(new_tokens, generation_config.eos_token_id)
        after_eos = torch.arange(new_tokens.shape[1], device=new_tokens.device)[None, :] >= lengths[:, None]
        new_tokens = new_tokens.masked_fill(after_eos, -100)
        return loss, new_tokens, gather_targets(inputs["labels"])


class SeqObjSeq2SeqTrainer(_SeqObjMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` for encoder-decoder models (BART, T5) with a sequence-level objective.

    Takes the same arguments as `transformers.Seq2SeqTrainer`, with `args` a :class:`SeqObjSeq2SeqTrainingArguments`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_objective()


__all__ = ["SeqObjSeq2SeqTrainer", "SeqObjSeq2SeqTrainingArguments", "SeqObjTrainer", "SeqObjTrainingArguments"]
