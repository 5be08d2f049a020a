"""hf_seqobj: sequence-level training objectives for Hugging Face Transformers.

Drop-in trainers (`SeqObjTrainer`, `SeqObjSeq2SeqTrainer`) whose `objective` argument selects a registered
objective; tasks with offline metrics, also as `evaluate` modules (`load_metric`, `hf_seqobj.metrics`); and
offline model building for tests and demos.
"""

from hf_seqobj.backspace import add_backspace_token, build_backspace_inputs, generate_with_backspace
from hf_seqobj.metrics import load_metric
from hf_seqobj.objectives import OBJECTIVES, Objective, get_objective, register_objective
from hf_seqobj.trainers import (
    SeqObjSeq2SeqTrainer,
    SeqObjSeq2SeqTrainingArguments,
    SeqObjTrainer,
    SeqObjTrainingArguments,
)


__version__ = "0.1.0.dev0"

__all__ = [
    "OBJECTIVES",
    "Objective",
    "SeqObjSeq2SeqTrainer",
    "SeqObjSeq2SeqTrainingArguments",
    "SeqObjTrainer",
    "SeqObjTrainingArguments",
    "add_backspace_token",
    "build_backspace_inputs",
    "generate_with_backspace",
    "get_objective",
    "load_metric",
    "register_objective",
]
