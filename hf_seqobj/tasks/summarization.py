"""Summarization: jsonl / json / csv files or Hub datasets with source and target columns; ROUGE via rouge-score."""

from __future__ import annotations

from datasets import Dataset
from rouge_score import rouge_scorer

from hf_seqobj.tasks.base import Task, read_records, text_pairs


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_example_scores(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """Each pair's ROUGE-1/2/L/Lsum F-measure (in [0, 1]) of rouge-score with stemming; Lsum splits sentences on
    newlines."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    values: dict[str, list[float]] = {rouge_type: [] for rouge_type in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for rouge_type in ROUGE_TYPES:
            values[rouge_type].append(scores[rouge_type].fmeasure)
    return values


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure (x100) of rouge-score with stemming (:func:`rouge_example_scores`)."""
    count = max(len(predictions), 1)
    values = rouge_example_scores(predictions, references)
    return {rouge_type: 100.0 * sum(scores) / count for rouge_type, scores in values.items()}


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

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Mean ROUGE-1/2/L/Lsum F-measure (x100): :func:`rouge_scores`."""
        return rouge_scores(predictions, references)
