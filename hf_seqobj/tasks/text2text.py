"""Any text-to-text data a user already has: TRL's prompt / completion format, with selectable metrics.

The data are JSON Lines, JSON or CSV files, or a Hub (or local `save_to_disk`) data set, with one text column for
the input and one for the output: `prompt` and `completion` by default, as TRL's prompt-completion data sets name
them, or any other two (`source_column` / `target_column`). A decoder-only model (GPT-2) reads the prompt and
continues it with the completion; an encoder-decoder model (BART, T5) encodes the prompt and decodes the completion
(see :meth:`Task.tokenize`). Every value must be a non-empty string: conversational data (lists of messages) is
an error that names the row.

The metrics are chosen with `text2text_metrics`: corpus BLEU and chrF (sacrebleu, as the translation task scores),
ROUGE-1/2/L/Lsum F (rouge-score, as the summarization task scores) and exact match.
"""

from __future__ import annotations

import numpy as np

from hf_seqobj.tasks.base import Statistics, ratio
from hf_seqobj.tasks.summarization import SummarizationTask, rouge_from_sums, rouge_statistics
from hf_seqobj.tasks.translation import sacrebleu_from_sums, sacrebleu_statistics


TEXT2TEXT_METRICS = ("bleu", "chrf", "rouge", "exact_match")
"""The metrics `text2text_metrics` may name. `rouge` reports rouge1, rouge2, rougeL and rougeLsum."""


def exact_match(predictions: list[str], references: list[str]) -> float:
    """The fraction of predictions equal to their reference, once whitespace runs are one space and ends stripped."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        return 0.0
    same = sum(p.split() == r.split() for p, r in zip(predictions, references, strict=True))
    return same / len(references)


def check_text2text_metrics(metrics) -> list[str]:
    """`metrics` as a list of names from `TEXT2TEXT_METRICS` (a single name is accepted as a string).

    Raises:
        ValueError: a name is unknown or repeated, or the list is empty; the message names the value.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics or [])
    unknown = [name for name in names if name not in TEXT2TEXT_METRICS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"text2text_metrics must be a non-empty list of distinct names from {TEXT2TEXT_METRICS}, got {metrics!r}."
        )
    return names


class Text2TextTask(SummarizationTask):
    """`task="text2text"`: a source text column in, a target text column out (default `prompt` / `completion`).

    Loading is the summarization task's (files ending in .jsonl, .json or .csv, or `dataset_name`; each split
    checked for the two columns and for non-empty strings), with TRL's column names as the defaults; the metrics
    are those of `text2text_metrics`.
    """

    name = "text2text"
    default_columns = ("prompt", "completion")

    def __init__(self, args):
        super().__init__(args)
        self.metrics = check_text2text_metrics(args.text2text_metrics)

    @property
    def _sacrebleu_metrics(self) -> tuple[str, ...]:
        return tuple(name for name in ("bleu", "chrf") if name in self.metrics)

    def example_statistics(self, predictions: list[str], references: list[str]) -> Statistics:
        """The statistics of the chosen metrics: sacrebleu's per-sentence BLEU / chrF statistics, per-example ROUGE
        F-measures and `exact_match` (1 when the prediction equals its reference up to whitespace, else 0)."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
        statistics: Statistics = {}
        if self._sacrebleu_metrics:
            statistics.update(sacrebleu_statistics(predictions, references, self._sacrebleu_metrics))
        if "rouge" in self.metrics:
            statistics.update(rouge_statistics(predictions, references))
        if "exact_match" in self.metrics:
            same = [float(p.split() == r.split()) for p, r in zip(predictions, references, strict=True)]
            statistics["exact_match"] = np.array(same, dtype=np.float64)
        return statistics

    def metrics_from_sums(self, sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
        """The chosen metrics: `bleu` and `chrf` (x100), `rouge1` / `rouge2` / `rougeL` / `rougeLsum` (F x100) and
        `exact_match` = sum(exact_match) / count (a fraction in [0, 1])."""
        metrics: dict[str, np.ndarray] = {}
        if self._sacrebleu_metrics:
            metrics.update(sacrebleu_from_sums(sums, self._sacrebleu_metrics))
        if "rouge" in self.metrics:
            metrics.update(rouge_from_sums(sums, count))
        if "exact_match" in self.metrics:
            metrics["exact_match"] = ratio(sums["exact_match"], count)
        return metrics
