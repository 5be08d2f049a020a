"""Trainer callbacks: a table of sample generations at each evaluation.

:class:`SampleGenerationsCallback` takes the first `eval_samples_to_log` evaluation examples, generates greedily
with the current model (explicit generation settings, as roll-ins do) and logs one table of input, output and
reference as text: to the Python log, to TensorBoard (when `report_to` includes it, as text under
`eval/sample_generations`) and in its `history`. The trainers add it when `eval_samples_to_log > 0`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.rollin import generate_rollin, rollin_generation_config


if TYPE_CHECKING:
    from transformers import Trainer


logger = logging.getLogger(__name__)

SAMPLES_TAG = "eval/sample_generations"
"""The TensorBoard text tag of the sample table."""


@dataclass
class SampleLoggingArguments:
    """How many sample generations the trainers log at each evaluation."""

    eval_samples_to_log: int = field(
        default=0,
        metadata={
            "help": "At each evaluation, generate greedily for this many evaluation examples (the first ones) and log "
            "a table of input, output and reference as text (Python log; TensorBoard when report_to has it). 0: off."
        },
    )

    def _validate_sample_logging(self) -> None:
        if self.eval_samples_to_log < 0:
            raise ValueError(f"eval_samples_to_log must be >= 0 (0 turns it off), got {self.eval_samples_to_log}.")


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def format_samples_table(rows: list[dict[str, str]]) -> str:
    """A markdown table with one row per sample: input, output (the model's) and reference."""
    lines = ["| input | output | reference |", "|---|---|---|"]
    lines += [f"| {_cell(row['input'])} | {_cell(row['output'])} | {_cell(row['reference'])} |" for row in rows]
    return "\n".join(lines)


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
    if dataset is None or num_samples < 1:
        return []
    tokenizer = trainer.processing_class
    count = min(num_samples, len(dataset))
    features = [
        {key: dataset[index][key] for key in ("input_ids", "attention_mask", "labels") if key in dataset[index]}
        for index in range(count)
    ]
    batch = trainer.data_collator(features)
    device = trainer.args.device
    batch = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
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
        reference = labels[index][labels[index] != IGNORE_INDEX]
        keep = batch["attention_mask"][index].bool()
        if not encoder_decoder:  # the prompt: the input tokens before the first label
            keep &= labels[index] == IGNORE_INDEX
        source = batch["input_ids"][index][keep]
        output = rollin.tokens[index][: int(rollin.lengths[index])]
        rows.append(
            {
                "input": tokenizer.decode(source.tolist(), skip_special_tokens=True),
                "output": tokenizer.decode(output.tolist(), skip_special_tokens=True),
                "reference": tokenizer.decode(reference.tolist(), skip_special_tokens=True),
            }
        )
    return rows


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
