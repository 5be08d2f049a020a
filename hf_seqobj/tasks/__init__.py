"""Tasks: data loading, tokenisation for decoder-only and encoder-decoder models, and offline metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_seqobj.tasks.arithmetic import ArithmeticTask, arithmetic_problems
from hf_seqobj.tasks.base import SPLITS, Task
from hf_seqobj.tasks.language_modeling import LanguageModelingTask
from hf_seqobj.tasks.ner import NERTask, read_conll, tag_metrics
from hf_seqobj.tasks.summarization import SummarizationTask
from hf_seqobj.tasks.synthetic import synthetic_ner, synthetic_ner_splits
from hf_seqobj.tasks.text2text import TEXT2TEXT_METRICS, Text2TextTask
from hf_seqobj.tasks.translation import TranslationTask, read_parallel


if TYPE_CHECKING:
    from hf_seqobj.arguments import DataArguments

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (NERTask, TranslationTask, SummarizationTask, Text2TextTask, ArithmeticTask, LanguageModelingTask)
}


def get_task(args: DataArguments) -> Task:
    """The task that `args.task` names, set up with `args`."""
    if args.task not in TASKS:
        raise ValueError(f"Unknown task {args.task!r}; available tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[args.task](args)


__all__ = [
    "SPLITS",
    "ArithmeticTask",
    "LanguageModelingTask",
    "TASKS",
    "TEXT2TEXT_METRICS",
    "NERTask",
    "SummarizationTask",
    "Task",
    "Text2TextTask",
    "TranslationTask",
    "arithmetic_problems",
    "get_task",
    "read_conll",
    "read_parallel",
    "synthetic_ner",
    "synthetic_ner_splits",
    "tag_metrics",
]
