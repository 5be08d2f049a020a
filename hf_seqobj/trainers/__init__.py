"""The drop-in trainers and their argument classes."""

from hf_seqobj.trainers.seqobj_config import (
    ObjectiveArguments,
    SeqObjSeq2SeqTrainingArguments,
    SeqObjTrainingArguments,
)
from hf_seqobj.trainers.seqobj_trainer import SeqObjSeq2SeqTrainer, SeqObjTrainer


__all__ = [
    "ObjectiveArguments",
    "SeqObjSeq2SeqTrainer",
    "SeqObjSeq2SeqTrainingArguments",
    "SeqObjTrainer",
    "SeqObjTrainingArguments",
]
