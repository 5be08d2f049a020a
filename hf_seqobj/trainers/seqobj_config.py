"""Argument classes of the hf_seqobj trainers: `TrainingArguments` / `Seq2SeqTrainingArguments` plus the objective.

Every field of the stock classes keeps its meaning. An objective with knobs contributes a dataclass of fields to
:class:`ObjectiveArguments`'s bases, so that both argument classes (and the YAML / command-line parser, which reads
the dataclass fields) know them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from hf_seqobj.objectives import OBJECTIVES, DAggerArguments, ScheduledSamplingArguments, get_objective
from hf_seqobj.rollin import RollinArguments


@dataclass
class ObjectiveArguments(DAggerArguments, ScheduledSamplingArguments, RollinArguments):
    """The fields shared by both argument classes: which objective to train with, and its settings."""

    objective: str = field(
        default="mle",
        metadata={
            "help": f"The training objective, one of the registered objectives: {', '.join(sorted(OBJECTIVES))}."
        },
    )

    def _validate_objective(self) -> None:
        get_objective(self.objective).validate_args(self)


@dataclass
class SeqObjTrainingArguments(ObjectiveArguments, TrainingArguments):
    """`transformers.TrainingArguments` for decoder-only models (GPT-2), plus the objective and generation at eval.

    Decoder-only examples are a prompt, a separator and a target; with `predict_with_generate`, evaluation generates
    a continuation of each prompt and `compute_metrics` receives the generated tokens and the target tokens.
    """

    predict_with_generate: bool = field(
        default=False,
        metadata={"help": "Generate a continuation of each eval prompt and pass it to compute_metrics."},
    )
    generation_max_new_tokens: int = field(
        default=128,
        metadata={"help": "The most tokens generated after each prompt at evaluation (predict_with_generate)."},
    )
    generation_num_beams: int | None = field(
        default=None,
        metadata={"help": "Beams for evaluation generation; None uses greedy decoding (1 beam)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self._validate_objective()
        if self.generation_max_new_tokens < 1:
            raise ValueError(f"generation_max_new_tokens must be >= 1, got {self.generation_max_new_tokens}.")
        if self.generation_num_beams is not None and self.generation_num_beams < 1:
            raise ValueError(f"generation_num_beams must be None or >= 1, got {self.generation_num_beams}.")


@dataclass
class SeqObjSeq2SeqTrainingArguments(ObjectiveArguments, Seq2SeqTrainingArguments):
    """`transformers.Seq2SeqTrainingArguments` for encoder-decoder models (BART, T5), plus the objective."""

    def __post_init__(self):
        super().__post_init__()
        self._validate_objective()
