"""Argument classes of the hf_seqobj trainers: `TrainingArguments` / `Seq2SeqTrainingArguments` plus the objective.

Every field of the stock classes keeps its meaning. :class:`ObjectiveArguments` is built from the objective registry
(:func:`hf_seqobj.objectives.register_objective`): it inherits the fields of every registered objective's settings
dataclasses, and its `objective` field accepts the registered names. So both argument classes, and the command-line
parser that reads their fields, know every built-in objective's settings without a second list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments, TrainingArguments

import hf_seqobj.objectives  # noqa: F401 (registers the built-in objectives)
from hf_seqobj.callbacks import SampleLoggingArguments
from hf_seqobj.objectives.base import OBJECTIVES, get_objective, registered_settings


def _objective_arguments() -> type:
    """The dataclass of `objective` and the settings of every objective registered so far."""
    names = tuple(OBJECTIVES)
    objective = field(
        default="mle",
        metadata={
            "help": "The training objective: " + "; ".join(f"{n}: {c.description}" for n, c in OBJECTIVES.items())
        },
    )

    def validate_objective(self) -> None:
        """Validates every registered objective's settings (a bad value is an error even where it is unused), then
        the chosen objective's checks across arguments."""
        get_objective(self.objective)
        for setting in registered_settings():
            setting.validate(self)
        get_objective(self.objective).validate_args(self)

    namespace = {
        "__annotations__": {"objective": Literal[names]},
        "objective": objective,
        "__doc__": "The fields shared by both argument classes: which objective to train with, and its settings.",
        "__module__": __name__,
        "_validate_objective": validate_objective,
    }
    return dataclass(type("ObjectiveArguments", registered_settings(), namespace))


ObjectiveArguments = _objective_arguments()


def objective_of_field(name: str) -> str | None:
    """The settings dataclass that defines a field of the argument classes, by class name (None for stock fields)."""
    for setting in registered_settings():
        if name in {f.name for f in dataclasses.fields(setting)}:
            return setting.__name__
    return None


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
