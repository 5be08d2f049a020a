"""Drop-in replacements for `transformers.Trainer` and `transformers.Seq2SeqTrainer` with a selectable objective.

With `objective="mle"` (the default) they train every model the stock classes train, the same way (see
:class:`~hf_seqobj.objectives.mle.MLEObjective` for the one correction, BART / T5 under gradient accumulation);
other objectives replace the training loss through the objective registry (`hf_seqobj.objectives`) and need a
causal LM or a seq2seq LM.

What differs from the stock classes, and why:

- `args` must be one of our argument classes (they add `objective` and its settings); without `args` the default
  one is built, as the stock Trainer builds default `TrainingArguments` (the stock `Seq2SeqTrainer` fails there).
- `evaluate()` / `predict()` return the stock metrics plus, prefixed like them, the objective's evaluation metrics
  (e.g. `eval_backspace_rate`) and, for a language model, `{prefix}_perplexity` (exp of the teacher-forced loss).
- `save_model` (and so each checkpoint) also writes a model card, README.md.
- Objectives other than `mle` add the callbacks they need (:meth:`~hf_seqobj.objectives.base.Objective.callbacks`);
  `eval_samples_to_log > 0` adds a :class:`~hf_seqobj.callbacks.SampleGenerationsCallback`, `log_completions` a
  :class:`~hf_seqobj.callbacks.CompletionsCallback`.
- `peft_config=` wraps the model with a PEFT adapter, as TRL's trainers do.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, Seq2SeqTrainer, Trainer

from hf_seqobj.backspace import backspace_token_id, generate_with_backspace, warn_on_two_cycles
from hf_seqobj.callbacks import CompletionsCallback, SampleGenerationsCallback
from hf_seqobj.decoding.prompts import gather_targets, split_prompts
from hf_seqobj.decoding.rollin import first_eos_lengths
from hf_seqobj.model_card import trainer_model_card
from hf_seqobj.objectives import Objective, get_objective
from hf_seqobj.objectives.base import language_model_kind
from hf_seqobj.peft_utils import wrap_model_in_args
from hf_seqobj.trainers.seqobj_config import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments


if TYPE_CHECKING:
    from peft import PeftConfig


logger = logging.getLogger(__name__)


class _SeqObjMixin:
    """What both trainers add to their stock class: the objective, its loss and its logged metrics; PEFT adapters
    (`peft_config=`); model cards (README.md in the output directory, each checkpoint and Hub pushes); sample
    generations at evaluation."""

    objective: Objective
    task_name: str | None = None
    """The task (ner, translation, summarization) named in model cards; `hf-seqobj train` sets it."""
    dataset_name: str | None = None
    """The data (a Hub data set name, a local path, or "synthetic") named in model cards; `hf-seqobj train` sets it."""

    default_arguments_class: type = SeqObjTrainingArguments
    """The argument class built (with `output_dir="tmp_trainer"`, as the stock Trainer does) when `args` is None."""

    @classmethod
    def _constructor_arguments(cls, args: tuple, kwargs: dict[str, Any], peft_config: PeftConfig | None):
        """The constructor's arguments: default `args` when none are given, and the model wrapped by
        `get_peft_model` when `peft_config` is given."""
        names = list(inspect.signature(Trainer.__init__).parameters)[1:]
        args_index = names.index("args")
        if (args[args_index] if len(args) > args_index else kwargs.get("args")) is None:
            logger.info("No `TrainingArguments` passed, using `output_dir=tmp_trainer`.")
            default = cls.default_arguments_class(output_dir="tmp_trainer")
            if len(args) > args_index:
                args = (*args[:args_index], default, *args[args_index + 1 :])
            else:
                kwargs = {**kwargs, "args": default}
        if peft_config is None:
            return args, kwargs
        found = {name: args[i] if len(args) > i else kwargs.get(name) for i, name in enumerate(names)}
        model, training_args, tokenizer = found["model"], found["args"], found["processing_class"]
        if model is not None and hasattr(training_args, "objective"):  # e.g. <bksp>, before the adapter is added
            objective = get_objective(training_args.objective)
            objective.check_model(model)
            objective.prepare_model(model, tokenizer)
        return wrap_model_in_args(args, kwargs, peft_config, names)

    def _init_objective(self) -> None:
        if not hasattr(self.args, "objective"):
            raise TypeError(
                f"{type(self).__name__} needs SeqObjTrainingArguments or SeqObjSeq2SeqTrainingArguments (which have "
                f"an `objective` field), got {type(self.args).__name__}."
            )
        objective = get_objective(self.args.objective)
        objective.check_model(self.model)
        if self.compute_loss_func is not None and not objective.uses_compute_loss_func:
            function = getattr(self.compute_loss_func, "__name__", self.compute_loss_func)
            raise ValueError(
                f"The {objective.name!r} objective computes its own training loss and would ignore "
                f"compute_loss_func={function!r}; use objective='mle' with it."
            )
        self.objective = objective(self)
        self._is_language_model = language_model_kind(self.model) is not None
        for callback in self.objective.callbacks():
            self.add_callback(callback)
        if getattr(self.args, "eval_samples_to_log", 0) > 0:
            self.add_callback(SampleGenerationsCallback(self, self.args.eval_samples_to_log))
        if getattr(self.args, "log_completions", False):
            self.add_callback(CompletionsCallback(self, self.args.num_completions_to_print))

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_name: str | list[str] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Writes the model card (README.md) into `args.output_dir` (`push_to_hub` calls this before uploading).

        The card (:func:`hf_seqobj.model_card.trainer_model_card`) names the base model, the task and data, the
        objective with its settings, the final metrics (the last logged evaluation, plus `metrics`), the library
        versions and the objective's papers; its tags are hf_seqobj, the objective and the task (plus `tags`). The
        stock arguments are accepted: `tasks` and `dataset` stand for the task and `dataset_name`; `dataset_tags` and
        `dataset_args` are not used.
        """
        if not self.is_world_process_zero():  # type: ignore[attr-defined]
            return
        card = trainer_model_card(
            self,  # type: ignore[arg-type]
            model_name=model_name,
            dataset_name=dataset_name if dataset_name is not None else dataset,
            task=tasks if isinstance(tasks, str) else None,
            tags=tags,
            metrics=metrics,
            finetuned_from=finetuned_from,
            language=language,
            license=license,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The stock `save_model`, then the model card into the same directory (so every checkpoint has one)."""
        super().save_model(output_dir, _internal_call)  # type: ignore[misc]
        if not self.args.should_save:
            return
        directories = {output_dir or self.args.output_dir}
        if self.args.push_to_hub:  # checkpoint pushes upload output_dir: keep its card current too
            directories.add(self.args.output_dir)
        card = trainer_model_card(self)  # type: ignore[arg-type]
        for directory in directories:
            os.makedirs(directory, exist_ok=True)
            card.save(os.path.join(directory, "README.md"))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The objective's loss (:meth:`hf_seqobj.objectives.base.Objective.compute_loss`)."""
        return self.objective.compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

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

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """The stock `train`; when resuming, the objective's own state (:meth:`Objective.load_state`) is restored
        first from the checkpoint (`True`: the newest `checkpoint-*` of `output_dir`), under every backend."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            # None when output_dir holds no checkpoint: the stock train then raises its own error
            checkpoint = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
        if isinstance(checkpoint, str | os.PathLike) and checkpoint:
            self.objective.load_state(str(checkpoint))
            resume_from_checkpoint = checkpoint
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]

    def _generate_with_backspace(
        self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config
    ) -> torch.Tensor:
        """Evaluation generation of a model that has `<bksp>`: backspace decoding (with the cycle guard of
        `sm_cycle_guard`); logs `backspace_rate`, `two_cycle_rate` (warning once above 20%) and `truncated_rate`
        (answers that reach the length limit without EOS). Under DeepSpeed ZeRO-3 and FSDP every process steps until
        all have finished (`synced_gpus`), as `generate` does."""
        from transformers.distributed.fsdp import is_fsdp_managed_module
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        synced = self.accelerator.num_processes > 1 and (is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))
        result = generate_with_backspace(
            self.accelerator.unwrap_model(model),
            input_ids,
            attention_mask,
            config,
            return_actions=True,
            synced_gpus=synced,
            cycle_guard=getattr(self.args, "sm_cycle_guard", True),
        )
        self.objective.record_metric(
            "backspace_rate", float(result.num_backspaces.sum()) / max(1, int(result.num_actions.sum()))
        )
        share = float(result.two_cycles.float().mean())
        self.objective.record_metric("two_cycle_rate", share)
        warn_on_two_cycles(self, "evaluation", share)
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        ended = torch.isin(result.actions, torch.tensor(eos, device=result.actions.device)).any(1)
        self.objective.record_metric("truncated_rate", float((~ended).float().mean()))
        return result.sequences

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The stock batches of an optimizer step, with the count of their targets adjusted by the objective (e.g.
        SequenceMatch adds the `<bksp>` targets its backspace noise inserts)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        count_items = getattr(self.objective, "count_items", None)
        if count_items is not None:
            num_items_in_batch = count_items(batch_samples, num_items_in_batch)
        return batch_samples, num_items_in_batch

    def _objective_metrics(self, metrics: dict[str, float], prefix: str | None) -> dict[str, float]:
        """The objective's metrics recorded since the last call (training ones if `prefix` is None, else evaluation
        ones named `{prefix}_{key}`, plus a language model's `{prefix}_perplexity` when `metrics` has the loss),
        averaged over the processes (every rank calls this)."""
        extra = self.objective.pop_metrics("train" if prefix is None else "eval")
        if self.accelerator.num_processes > 1:  # every rank calls log: the mean of the ranks' means
            from accelerate.utils import gather_object

            per_rank = gather_object([extra])
            keys = sorted({key for rank_metrics in per_rank for key in rank_metrics})
            extra = {key: sum(m[key] for m in per_rank if key in m) / sum(key in m for m in per_rank) for key in keys}
        if prefix is None:
            return extra
        extra = {f"{prefix}_{key}": value for key, value in extra.items()}
        if self._is_language_model and f"{prefix}_loss" in metrics:  # perplexity on the targets (teacher forced)
            extra[f"{prefix}_perplexity"] = math.exp(min(float(metrics[f"{prefix}_loss"]), 100.0))
        return extra

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The stock `log`, with the objective's metrics added to `logs` (in place, as the stock `log` adds `epoch`,
        so that `evaluate()` returns them too)."""
        # An evaluation's logs carry `{prefix}_runtime` (prefix `eval`, or `test` and the like for other splits).
        prefix = next(
            (key[: -len("_runtime")] for key in logs if key.endswith("_runtime") and key != "train_runtime"), None
        )
        logs.update(self._objective_metrics(logs, prefix))
        super().log(logs, start_time)  # type: ignore[misc]

    def predict(self, test_dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test", **kwargs):
        """The stock `predict` (`kwargs`: the `Seq2SeqTrainer`'s generation arguments), with the objective's
        evaluation metrics (and a language model's perplexity) in its metrics, named `{metric_key_prefix}_{key}` as
        in `evaluate()`."""
        output = super().predict(  # type: ignore[misc]
            test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **kwargs
        )
        output.metrics.update(self._objective_metrics(output.metrics, metric_key_prefix))
        return output


class SeqObjTrainer(_SeqObjMixin, Trainer):
    """`transformers.Trainer` for decoder-only models with a sequence-level objective.

    Takes the same arguments as `transformers.Trainer`, with `args` a :class:`SeqObjTrainingArguments`. With
    `args.predict_with_generate`, evaluation generates from each example's prompt (the tokens before its first
    label) and `compute_metrics` gets the generated tokens as predictions and the target tokens as label ids, both
    left-aligned and padded with -100. `peft_config` (a `peft.PeftConfig`, as TRL's trainers take it) wraps the model
    with `get_peft_model`; :func:`hf_seqobj.peft_utils.lora_config_for` gives one with the right defaults.
    """

    def __init__(self, *args, peft_config: PeftConfig | None = None, **kwargs):
        args, kwargs = self._constructor_arguments(args, kwargs, peft_config)
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
            do_sample=self.args.generation_do_sample,
            temperature=self.args.generation_temperature if self.args.generation_do_sample else None,
            top_k=0 if self.args.generation_do_sample else None,
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
            if backspace_token_id(unwrapped) is not None:
                generated = self._generate_with_backspace(model, prompt_ids, prompt_mask, generation_config)
            else:
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

    Takes the same arguments as `transformers.Seq2SeqTrainer`, with `args` a :class:`SeqObjSeq2SeqTrainingArguments`,
    and `peft_config` as :class:`SeqObjTrainer` does.
    """

    default_arguments_class = SeqObjSeq2SeqTrainingArguments

    def __init__(self, *args, peft_config: PeftConfig | None = None, **kwargs):
        args, kwargs = self._constructor_arguments(args, kwargs, peft_config)
        super().__init__(*args, **kwargs)
        self._init_objective()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        unwrapped = self.accelerator.unwrap_model(model)
        if not self.args.predict_with_generate or prediction_loss_only or backspace_token_id(unwrapped) is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        # A model with <bksp>: the loss as usual, the generation with backspace decoding.
        loss, _, labels = super().prediction_step(model, inputs, True, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        kwargs = {**getattr(self, "_gen_kwargs", {}), **gen_kwargs}
        config = copy.deepcopy(unwrapped.generation_config)
        config.num_beams = 1
        config.do_sample = False
        max_length = kwargs.get("max_length") or self.args.generation_max_length or config.max_length or 128
        config.max_new_tokens = kwargs.get("max_new_tokens") or max_length
        generated = self._generate_with_backspace(model, inputs["input_ids"], inputs.get("attention_mask"), config)
        return loss, generated, inputs.get("labels")


__all__ = ["SeqObjSeq2SeqTrainer", "SeqObjSeq2SeqTrainingArguments", "SeqObjTrainer", "SeqObjTrainingArguments"]
