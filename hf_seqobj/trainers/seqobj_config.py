"""Argument classes of the hf_seqobj trainers: `TrainingArguments` / `Seq2SeqTrainingArguments` plus the objective.

Every field of the stock classes keeps its meaning. An objective with knobs contributes a dataclass of fields to
:class:`ObjectiveArguments`'s bases, so that both argument classes (and the YAML / command-line parser, which reads
the dataclass fields) know them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from hf_seqobj.callbacks import SampleLoggingArguments
from hf_seqobj.objectives import (
    OBJECTIVES,
    DAggerArguments,
    DataNoisingArguments,
    InterpolationArguments,
    RAMLArguments,
    ScheduledSamplingArguments,
    SequenceMatchArguments,
    SPGArguments,
    get_objective,
)
from hf_seqobj.rollin import RollinArguments


@dataclass
class ObjectiveArguments(
    DAggerArguments,
    ScheduledSamplingArguments,
    SequenceMatchArguments,
    RAMLArguments,
    DataNoisingArguments,
    SPGArguments,
    InterpolationArguments,
    RollinArguments,
):
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
class SeqObjTrainingArguments(ObjectiveArguments, SampleLoggingArguments, TrainingArguments):
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
    generation_do_sample: bool = field(
        default=False,
        metadata={"help": "Sample evaluation generations (at generation_temperature) instead of greedy decoding."},
    )
    generation_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of evaluation generation (generation_do_sample); > 0."}
    )

    def __post_init__(self):
        super().__post_init__()
        self._validate_objective()
        self._validate_sample_logging()
        if self.generation_max_new_tokens < 1:
            raise ValueError(f"generation_max_new_tokens must be >= 1, got {self.generation_max_new_tokens}.")
        if self.generation_num_beams is not None and self.generation_num_beams < 1:
            raise ValueError(f"generation_num_beams must be None or >= 1, got {self.generation_num_beams}.")
        if not self.generation_temperature > 0:
            raise ValueError(f"generation_temperature must be > 0, got {self.generation_temperature}.")


@dataclass
class SeqObjSeq2SeqTrainingArguments(ObjectiveArguments, SampleLoggingArguments, Seq2SeqTrainingArguments):
    """`transformers.Seq2SeqTrainingArguments` for encoder-decoder models (BART, T5), plus the objective."""

    def __post_init__(self):
        super().__post_init__()
        self._validate_objective()
        self._validate_sample_logging()
