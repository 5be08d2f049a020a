"""Summarization: jsonl / json / csv files or Hub datasets with source and target columns; ROUGE via rouge-score."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from rouge_score import rouge_scorer

from hf_seqobj.tasks.base import Statistics, Task, ratio, read_records, text_pairs, weighted_sums


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_statistics(predictions: list[str], references: list[str]) -> Statistics:
    """Per-example ROUGE-1/2/L/Lsum F-measure (in [0, 1]) of rouge-score with stemming; Lsum splits sentences on
    newlines. Columns `rouge1`, `rouge2`, `rougeL`, `rougeLsum`.

    Raises:
        ValueError: the predictions and references differ in number.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    return {t: np.array([s[t].fmeasure for s in scores], dtype=np.float64) for t in ROUGE_TYPES}


def rouge_from_sums(sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
    """Mean ROUGE F-measure x100 from summed :func:`rouge_statistics`: 100 sum(F) / count (0 for no examples)."""
    return {rouge_type: ratio(100.0 * sums[rouge_type], count) for rouge_type in ROUGE_TYPES}


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure (x100) of rouge-score with stemming; Lsum splits sentences on newlines."""
    metrics = rouge_from_sums(*weighted_sums(rouge_statistics(predictions, references)))
    return {name: float(values[0]) for name, values in metrics.items()}


def rouge_example_scores(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """Each pair's ROUGE-1/2/L/Lsum F-measure (in [0, 1]) of rouge-score with stemming (:func:`rouge_statistics`
    as lists)."""
    return {name: values.tolist() for name, values in rouge_statistics(predictions, references).items()}


class SummarizationTask(Task):
    """Summarization of `source_column` into `target_column` (default columns `document` / `summary`)."""

    name = "summarization"
    default_columns: tuple[str, str] = ("document", "summary")
    """The (source, target) columns read when `source_column` / `target_column` are not set."""

    @property
    def columns(self) -> tuple[str, str]:
        """The (source, target) columns of the data: `source_column` / `target_column`, or the task's defaults."""
        source, target = self.default_columns
        return (self.args.source_column or source, self.args.target_column or target)

    def load_file(self, path: str) -> Dataset:
        suffix = path.rsplit(".", 1)[-1].lower()
        if suffix not in ("jsonl", "json", "csv"):
            raise ValueError(f"{path}: {self.name} files must end in .jsonl, .json or .csv, not .{suffix}.")
        where = f"file {path!r}"
        return text_pairs(read_records(path), *self.columns, where, self.reject)

    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        columns = self.columns
        for column in columns:
            if column not in dataset.column_names:
                raise ValueError(
                    f"{where} has no column {column!r}; its columns are {dataset.column_names} (set source_column / "
                    "target_column)."
                )
        rows = [(f"{where}, row {index}", row) for index, row in enumerate(dataset.select_columns(list(columns)))]
        return text_pairs(rows, *columns, where, self.reject)

    def example_statistics(self, predictions: list[str], references: list[str]) -> Statistics:
        """Per-example ROUGE-1/2/L/Lsum F-measure (:func:`rouge_statistics`)."""
        return rouge_statistics(predictions, references)

    def metrics_from_sums(self, sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
        """Mean ROUGE-1/2/L/Lsum F-measure (x100): :func:`rouge_from_sums`."""
        return rouge_from_sums(sums, count)
