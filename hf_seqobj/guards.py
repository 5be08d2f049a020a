"""What keeps a run from training on nonsense or leaving a broken folder: settings that cannot train (non-finite
numbers, lengths beyond the model's positions, a metric or optimizer the trainer cannot serve), weights that stop
being finite while training, and checkpoints that are complete (a marker written last) and belong to the run that
resumes them."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "hf_seqobj_checkpoint.json"
"""The file written last into each checkpoint folder, once every other piece (model, optimizer, scheduler, trainer
state, the objective's own state) is written: a checkpoint without it is incomplete. It holds what the run was
(:func:`run_identity`), which a resumed run must match."""

UNKNOWN_SHARE_WARNING = 0.10
"""The share of unknown tokens in the training targets (or sources) above which a run warns."""


# ------------------------------------------------------------------------------------------------- numbers
def check_finite_settings(*settings: Any) -> None:
    """Every number of the settings dataclasses (lists of numbers included) must be finite.

    Raises:
        ValueError: naming the first setting that is NaN or infinite.
    """
    for group in settings:
        for field in dataclasses.fields(group):
            value = getattr(group, field.name, None)
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"{field.name} must be a finite number, got {value!r}.")


def check_vocabulary(tokenizer, extra_tokens, vocab_size: int, min_frequency: int) -> None:
    """A tokenizer trained on the training text must know some token beyond the special and extra ones.

    Raises:
        ValueError: naming vocab_size and min_frequency.
    """
    known = set(tokenizer.all_special_tokens) | set(extra_tokens)
    if not [token for token in tokenizer.get_vocab() if token not in known]:
        raise ValueError(
            f"The tokenizer trained on the training text has no token beyond the special ones (vocab_size="
            f"{vocab_size}, min_frequency={min_frequency}): every word would be unknown. Lower min_frequency (most "
            "words of a small data set occur a few times) or raise vocab_size."
        )


def warn_unknown_tokens(tokenized, tokenizer, setting: str) -> dict[str, float]:
    """Warns when over `UNKNOWN_SHARE_WARNING` of the training split's target (or source) tokens are unknown.

    Args:
        tokenized: The tokenized splits (`input_ids`, `labels`).
        tokenizer: Its `unk_token_id` (a byte-level tokenizer has none: nothing to count).
        setting: The settings that made the vocabulary, named in the warning.

    Returns:
        The shares of unknown tokens, `{"target": ..., "source": ...}` (empty without an unknown token or a train
        split).
    """
    unknown = tokenizer.unk_token_id
    if unknown is None or "train" not in tokenized:
        return {}
    shares = {}
    rows = tokenized["train"]
    for what, column in (("target", "labels"), ("source", "input_ids")):
        ids = [token for row in rows[column] for token in row if token >= 0]
        shares[what] = sum(token == unknown for token in ids) / max(len(ids), 1)
        if shares[what] > UNKNOWN_SHARE_WARNING:
            logger.warning(
                "%.0f%% of the training %s tokens are unknown to the tokenizer (%s): the model cannot learn to "
                "output them.",
                100 * shares[what],
                what,
                setting,
            )
    return shares


class FiniteWeightsCallback(TrainerCallback):
    """Stops a run whose weights stop being finite (NaN or inf) after an optimizer step, naming the step and the
    likely setting. A step that fp16's loss scaler skips (its loss overflowed) leaves the weights as they were, so it
    goes on as usual."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        parameters = [(name, p) for name, p in model.named_parameters() if p.numel()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in parameters]).all() if parameters else True
        if bool(finite):
            return
        name = next(name for name, p in parameters if not torch.isfinite(p).all())
        learning_rate, decay = args.learning_rate, args.weight_decay
        likely = f"learning_rate={learning_rate:g}"
        if decay * learning_rate >= 1:
            likely = f"weight_decay={decay:g} (with learning_rate={learning_rate:g})"
        raise ValueError(
            f"Step {state.global_step}: the weights became NaN or infinite ({name}): training diverged, most likely "
            f"because {likely} is too large; lower it."
        )


# ------------------------------------------------------------------------------------------------- settings
def check_lengths_fit_model(model, data_args, training_args) -> None:
    """The length limits must fit the model's learned positions (BART, GPT-2; T5's relative positions have none).

    Raises:
        ValueError: naming the setting and the largest value the model takes.
    """
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not positions or config.model_type == "t5":
        return
    source, target = data_args.max_source_length, data_args.max_target_length
    if config.is_encoder_decoder:
        limits = {"max_source_length": source, "max_target_length": target}
        limits["generation_max_length"] = getattr(training_args, "generation_max_length", None) or 0
        for name, value in limits.items():
            if value > positions:
                raise ValueError(
                    f"{name}={value} is beyond the model's {positions} positions (max_position_embeddings): use "
                    f"at most {positions}."
                )
    elif source + target > positions:  # (a decoder-only example: source, separator, target, EOS)
        raise ValueError(
            f"max_source_length + max_target_length = {source + target} is beyond the model's {positions} positions "
            f"(n_positions), which hold the source, separator, target and EOS: lower them to fit {positions}."
        )


def check_metric_for_best_model(training_args, task) -> None:
    """`metric_for_best_model` must name a metric that evaluation produces: `loss` and the runtimes, and with
    `predict_with_generate` the task's metrics (the keys of its `score`) and `evaluate_metric`'s (`{name}_{key}`).

    Raises:
        ValueError: naming the setting and the metrics evaluation produces.
    """
    wanted = training_args.metric_for_best_model
    if wanted is None:
        return
    produced = ["loss", "runtime", "samples_per_second", "steps_per_second"]
    if getattr(training_args, "predict_with_generate", False):
        produced += list(task.score(["O"], ["O"]))
    name = wanted[len("eval_") :] if wanted.startswith("eval_") else wanted
    module = getattr(getattr(task, "args", None), "evaluate_metric", None)
    if module is not None and getattr(training_args, "predict_with_generate", False):
        from hf_seqobj.metrics import load_metric

        prefix = f"{load_metric(module).name}_"  # the evaluate module's numbers: `{name}_{key}`
        if name.startswith(prefix):
            return
        produced.append(f"{prefix}KEY (evaluate_metric's numbers)")
    if name not in produced:
        extra = "" if training_args.predict_with_generate else " (the task's metrics need predict_with_generate)"
        raise ValueError(
            f"metric_for_best_model {wanted!r} is not a metric that evaluation produces: use one of "
            f"{', '.join(produced)}{extra}."
        )


def check_optimizer(training_args) -> None:
    """The optimizer `optim` names must be usable here (its package installed).

    Raises:
        ValueError: naming `optim`, why it cannot be used and the optimizers that can.
    """
    from transformers import Trainer
    from transformers.training_args import OptimizerNames

    def problem(args) -> str | None:
        try:
            Trainer.get_optimizer_cls_and_kwargs(args)
        except (ImportError, ValueError, RuntimeError) as error:
            return " ".join(str(error).split())
        return None

    found = problem(training_args)
    if found is None:
        return
    usable = []
    for name in OptimizerNames:
        trial = copy.copy(training_args)
        trial.optim = name
        try:
            if problem(trial) is None:
                usable.append(name.value)
        except Exception:  # an optimizer that needs more settings (galore's target modules, ...)
            continue
    optim = getattr(training_args.optim, "value", training_args.optim)
    raise ValueError(f"optim {optim!r} cannot be used here ({found[:200]}); usable here: {', '.join(usable)}.")


# ------------------------------------------------------------------------------------------------- environment
ACCELERATE_FLAGS = ("ACCELERATE_USE_CPU", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_DEBUG_MODE")
"""The true/false environment variables of accelerate that change how a run trains."""

MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")


def check_accelerate_environment(training_args=None) -> None:
    """accelerate's environment variables meet the checks their settings meet: `ACCELERATE_MIXED_PRECISION` must be
    one of `MIXED_PRECISIONS`, and fp16 needs a CUDA GPU as `fp16: true` does (checked with `training_args`, which
    know the device); the variables of `ACCELERATE_FLAGS` must be true or false, and DeepSpeed needs its package
    (checked before the training arguments are made, which read them).

    Raises:
        ValueError: naming the variable, its value and what is accepted.
    """
    from accelerate.utils import str_to_bool

    precision = os.environ.get(MIXED_PRECISION_ENV)
    if precision is not None:
        if precision.lower() not in MIXED_PRECISIONS:
            raise ValueError(
                f"The environment variable {MIXED_PRECISION_ENV}={precision!r} is not one of "
                f"{', '.join(MIXED_PRECISIONS)}: set one of them or unset it."
            )
        cpu = training_args is not None and training_args.device.type == "cpu" and not training_args.bf16
        if precision.lower() == "fp16" and cpu:
            raise ValueError(
                f"The environment variable {MIXED_PRECISION_ENV}=fp16 asks for fp16, which has no effect on this "
                "machine, which trains on the CPU: fp16 needs a CUDA GPU. Unset it, or set it to bf16 or no."
            )
    for name in ACCELERATE_FLAGS:
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            enabled = bool(str_to_bool(value))
        except ValueError:
            raise ValueError(
                f"The environment variable {name}={value!r} is not true or false (accepted: true, false, 1, 0, yes, "
                "no, on, off): set one of them or unset it."
            ) from None
        if name == "ACCELERATE_USE_DEEPSPEED" and enabled:
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise ValueError(
                    f"The environment variable {name}={value!r} asks for DeepSpeed, which is not installed: unset it, "
                    "or install deepspeed."
                )


# ------------------------------------------------------------------------------------------------- checkpoints
def run_identity(model, tokenizer, objective: str, labels: list[str], model_size: str | None) -> dict[str, Any]:
    """What a run is, as stored with its checkpoints: model family and size, objective, label set and a digest of
    the tokenizer's vocabulary."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {
        "family": model.config.model_type,
        "size": model_size or f"{model.num_parameters()} parameters",
        "objective": objective,
        "labels": sorted(labels),
        "tokenizer": "sha256:" + hashlib.sha256(vocabulary.encode("utf-8")).hexdigest(),
    }


def is_complete_checkpoint(folder: str | Path) -> bool:
    """Whether a checkpoint folder holds `CHECKPOINT_MARKER` (written last)."""
    return (Path(folder) / CHECKPOINT_MARKER).is_file()


def check_resume_matches(checkpoint: str | Path, identity: dict[str, Any]) -> None:
    """What a complete checkpoint's marker stores must be this run.

    Raises:
        ValueError: the checkpoint was written by a run that differs from this one (naming each difference).
    """
    marker = Path(checkpoint) / CHECKPOINT_MARKER
    stored = json.loads(marker.read_text(encoding="utf-8")).get("run", {})
    differences = [
        f"{key} {stored[key]!r} there, {identity[key]!r} here"
        for key in identity
        if key in stored and stored[key] != identity[key]
    ]
    if differences:
        raise ValueError(
            f"resume_from_checkpoint {str(checkpoint)!r} was written by another kind of run: "
            f"{'; '.join(differences)}. Resume with the settings it was trained with, or train anew."
        )


class CheckpointMarkerCallback(TrainerCallback):
    """Writes `CHECKPOINT_MARKER` into each checkpoint once the trainer and every earlier callback (the objective's
    state) have written theirs; add it last. On the main process only; the file appears whole (renamed into place)."""

    def __init__(self, identity: dict[str, Any]):
        self.identity = identity

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every process has written its part (a replay buffer each)
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            return
        partial = folder / f".{CHECKPOINT_MARKER}.partial"
        partial.write_text(json.dumps({"global_step": state.global_step, "run": self.identity}, indent=1))
        os.replace(partial, folder / CHECKPOINT_MARKER)
