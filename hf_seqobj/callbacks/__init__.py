"""Trainer callbacks: sample generations at each evaluation, and what the objective trains on at each log.

:class:`SampleGenerationsCallback` takes the first `eval_samples_to_log` evaluation examples, generates greedily
with the current model (explicit generation settings, as roll-ins do) and logs one table of input, output and
reference as text: to the Python log, to TensorBoard (when `report_to` includes it, as text under
`eval/sample_generations`) and in its `history`. The trainers add it when `eval_samples_to_log > 0`.

:class:`CompletionsCallback` (`log_completions`, as TRL's trainers have it) shows at each logging step, for the first
`num_completions_to_print` training examples, what the objective trains on (its
:meth:`~hf_seqobj.objectives.base.Objective.completions` hook: DAgger's roll-in, oracle labels and completion,
SequenceMatch's backspaces and masked targets, scheduled sampling's sampled tokens) with the source, the reference
and the sentence score: a table in the console (rich where installed), lines of `completions.jsonl` in the output
folder, TensorBoard text (`train/completions`) and a W&B table (`completions`) when `report_to` has them. It draws
nothing from the training random streams (docs/watching.md).
"""

from __future__ import annotations

import json
import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from hf_seqobj.callbacks.completions import SCORE_COLUMNS, columns_of, format_completions_table, print_completions
from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.rollin import generate_rollin, rollin_generation_config


if TYPE_CHECKING:
    from transformers import Trainer


logger = logging.getLogger(__name__)

SAMPLES_TAG = "eval/sample_generations"
"""The TensorBoard text tag of the sample table."""

COMPLETIONS_TAG = "train/completions"
"""The TensorBoard text tag of the completions table."""

COMPLETIONS_FILE = "completions.jsonl"
"""The file of the output folder that the completions tables are appended to, one JSON object per row."""


@dataclass
class SampleLoggingArguments:
    """What the trainers show of the model's outputs: sample generations at each evaluation, and what the objective
    trains on at each logging step (`log_completions`)."""

    eval_samples_to_log: int = field(
        default=0,
        metadata={
            "help": "At each evaluation, generate greedily for this many evaluation examples (the first ones) and log "
            "a table of input, output and reference as text (Python log; TensorBoard when report_to has it). 0: off."
        },
    )

    log_completions: bool = field(
        default=False,
        metadata={
            "help": "At each logging step, show what the objective trains on for the first num_completions_to_print "
            "training examples (source, the model's roll-in, the targets along it, the oracle's completion, the "
            "reference, the sentence score): a table in the console, completions.jsonl in output_dir, TensorBoard "
            "text and a W&B table when report_to has them. Training is the same with it on or off."
        },
    )
    num_completions_to_print: int = field(
        default=4,
        metadata={"help": "How many training examples (the first ones) log_completions shows at each logging step."},
    )

    def _validate_sample_logging(self) -> None:
        if self.eval_samples_to_log < 0:
            raise ValueError(f"eval_samples_to_log must be >= 0 (0 turns it off), got {self.eval_samples_to_log}.")
        if self.num_completions_to_print < 1:
            raise ValueError(f"num_completions_to_print must be >= 1, got {self.num_completions_to_print}.")


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def format_samples_table(rows: list[dict[str, str]]) -> str:
    """A markdown table with one row per sample: input, output (the model's) and reference."""
    lines = ["| input | output | reference |", "|---|---|---|"]
    lines += [f"| {_cell(row['input'])} | {_cell(row['output'])} | {_cell(row['reference'])} |" for row in rows]
    return "\n".join(lines)


def first_examples(trainer: Trainer, dataset, count: int) -> dict[str, torch.Tensor] | None:
    """The first `count` examples of a (map-style) data set, collated by the trainer's collator, on its device; None
    for no data set or no examples."""
    if dataset is None or count < 1 or not hasattr(dataset, "__getitem__"):
        return None
    count = min(count, len(dataset))
    if count == 0:
        return None
    keys = ("input_ids", "attention_mask", "labels")
    features = [{key: dataset[index][key] for key in keys if key in dataset[index]} for index in range(count)]
    batch = trainer.data_collator(features)
    device = trainer.args.device
    return {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}


def sample_generations(trainer: Trainer, num_samples: int) -> list[dict[str, str]]:
    """Greedy generations of the current model for the first `num_samples` evaluation examples, decoded.

    Every process generates the same rows (under FSDP / ZeRO-3 generation is collective), in eval mode with the
    KV cache on and an explicit greedy `GenerationConfig`. Encoder-decoder models generate up to
    `generation_max_length` tokens (else the reference length + 16), decoder-only models continue each prompt for
    up to `generation_max_new_tokens`.

    Returns:
        `[{"input": ..., "output": ..., "reference": ...}]`, texts decoded without special tokens.
    """
    dataset = trainer.eval_dataset
    if isinstance(dataset, dict):
        dataset = next(iter(dataset.values()))
    batch = first_examples(trainer, dataset, num_samples)
    if batch is None:
        return []
    tokenizer = trainer.processing_class
    count = len(batch["input_ids"])
    model = trainer.model
    unwrapped = trainer.accelerator.unwrap_model(model)
    encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
    labels = batch["labels"]
    if encoder_decoder:
        longest = int((labels != IGNORE_INDEX).sum(1).max())
        max_new = getattr(trainer.args, "generation_max_length", None) or longest + 16
    else:
        max_new = trainer.args.generation_max_new_tokens
    config = rollin_generation_config(
        unwrapped,
        max_new,
        mode="greedy",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
    )
    rollin = generate_rollin(model, batch, config, trainer.accelerator)
    rows = []
    for index in range(count):
        source, reference = source_and_reference(tokenizer, batch, index, encoder_decoder)
        output = rollin.tokens[index][: int(rollin.lengths[index])]
        rows.append(
            {
                "input": source,
                "output": tokenizer.decode(output.tolist(), skip_special_tokens=True),
                "reference": reference,
            }
        )
    return rows


def source_and_reference(
    tokenizer, batch: dict[str, torch.Tensor], index: int, encoder_decoder: bool
) -> tuple[str, str]:
    """The decoded source (decoder-only: the prompt, the input tokens before the first label) and reference (the
    labels) of row `index` of a collated batch, without special tokens."""
    labels = batch["labels"][index]
    keep = batch["attention_mask"][index].bool()
    if not encoder_decoder:
        keep &= labels == IGNORE_INDEX
    source = batch["input_ids"][index][keep]
    reference = labels[labels != IGNORE_INDEX]
    return (
        tokenizer.decode(source.tolist(), skip_special_tokens=True),
        tokenizer.decode(reference.tolist(), skip_special_tokens=True),
    )


class SampleGenerationsCallback(TrainerCallback):
    """Logs a table of sample generations (input, greedy output, reference) at each evaluation.

    Args:
        trainer: The trainer whose model, evaluation data and tokenizer are used.
        num_samples: How many evaluation examples (the first ones).

    Attributes:
        history: `(global_step, rows)` for each evaluation, rows as :func:`sample_generations` returns them.
    """

    def __init__(self, trainer: Trainer, num_samples: int):
        self.trainer = trainer
        self.num_samples = num_samples
        self.history: list[tuple[int, list[dict[str, str]]]] = []

    def on_evaluate(self, args, state, control, **kwargs: Any):
        rows = sample_generations(self.trainer, self.num_samples)
        if not rows or not state.is_world_process_zero:
            return
        self.history.append((state.global_step, rows))
        table = format_samples_table(rows)
        logger.info("Sample generations at step %d:\n%s", state.global_step, table)
        for callback in self.trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None) if isinstance(callback, TensorBoardCallback) else None
            if writer is not None:
                writer.add_text(SAMPLES_TAG, table, state.global_step)
                writer.flush()


@contextmanager
def isolated_random_state(seed: int):
    """Runs the block with every global random stream (torch CPU and CUDA, numpy, Python) seeded with `seed`, and
    puts back afterwards the states they had: what the block draws, training never sees."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def objective_completions(trainer: Trainer, num_examples: int) -> list[dict[str, Any]]:
    """What the objective trains on for the first `num_examples` training examples, now (`log_completions`).

    Every process computes the same rows (roll-ins are collective under FSDP / ZeRO-3), without gradients, with the
    global random states put back afterwards (:func:`isolated_random_state`) and the objective's own draws from a
    generator seeded with (seed, global step); the model's train / eval mode is restored.

    Returns:
        One mapping per example: `step`, `example`, `source`, the objective's columns
        (:meth:`~hf_seqobj.objectives.base.Objective.completions`), `reference`, then `score` / `oracle score`.
    """
    batch = first_examples(trainer, trainer.train_dataset, num_examples)
    if batch is None:
        return []
    model = trainer.model
    step = int(trainer.state.global_step)
    seed = (int(trainer.args.seed) * 1_000_003 + step) * 7919 + 17
    was_training = model.training
    with isolated_random_state(seed), torch.no_grad():
        generator = torch.Generator().manual_seed(seed % 2**63)
        try:
            columns = trainer.objective.completions(model, batch, generator)
        finally:
            model.train(was_training)
    tokenizer = trainer.processing_class
    encoder_decoder = bool(trainer.accelerator.unwrap_model(model).config.is_encoder_decoder)
    rows = []
    for index, row in enumerate(columns):
        source, reference = source_and_reference(tokenizer, batch, index, encoder_decoder)
        shown = {"step": step, "example": index, "source": source}
        shown.update({key: value for key, value in row.items() if key not in SCORE_COLUMNS})
        shown["reference"] = reference
        shown.update({key: row[key] for key in SCORE_COLUMNS if key in row})
        rows.append(shown)
    return rows


class CompletionsCallback(TrainerCallback):
    """Shows what the objective trains on at each logging step (`log_completions`; see the module docstring).

    Args:
        trainer: The trainer whose objective, model, training data and tokenizer are used.
        num_examples: How many training examples (the first ones).

    Attributes:
        history: `(global_step, rows)` for each logging step, rows as :func:`objective_completions` returns them.
    """

    def __init__(self, trainer: Trainer, num_examples: int):
        self.trainer = trainer
        self.num_examples = num_examples
        self.history: list[tuple[int, list[dict[str, Any]]]] = []
        self._last_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs: Any):
        # training logs only: an evaluation's logs and the closing summary carry `*_runtime`
        if logs is None or any(key.endswith("_runtime") for key in logs) or state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        rows = objective_completions(self.trainer, self.num_examples)
        if not rows or not state.is_world_process_zero:
            return
        self.history.append((state.global_step, rows))
        title = f"What {self.trainer.objective.name} trains on at step {state.global_step}"
        print_completions(rows, title)
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, COMPLETIONS_FILE), "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({"objective": self.trainer.objective.name, **row}, ensure_ascii=False) + "\n")
        table = format_completions_table(rows)
        for callback in self.trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None) if isinstance(callback, TensorBoardCallback) else None
            if writer is not None:
                writer.add_text(COMPLETIONS_TAG, table, state.global_step)
                writer.flush()
        report_to = args.report_to or []
        if "wandb" in report_to or "all" in report_to:
            log_wandb_table(rows)


def log_wandb_table(rows: list[dict[str, Any]]) -> None:
    """Logs the rows as a W&B table `completions` to the active run (as TRL's trainers log their completions);
    nothing without wandb or an active run."""
    try:
        import wandb
    except ImportError:
        return
    if getattr(wandb, "run", None) is None:
        return
    columns = columns_of(rows)
    wandb.log({"completions": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})
