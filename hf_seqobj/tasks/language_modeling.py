"""Plain language modelling on text files, with sample-quality metrics that work offline.

Each non-empty line of a file is a document. An example's source is its first `lm_prompt_words` words and its
target the rest, so that evaluation with generation continues each prompt. The metrics are those of the samples
alone (no reference model is needed): distinct-1 / distinct-2 (unique n-grams over all n-grams of all samples),
the repetition rate (the share of a sample's 4-grams that repeat an earlier 4-gram of the same sample) and the mean
length. The model's own perplexity on the held-out text is `eval_perplexity`, exp of the teacher-forced
`eval_loss`, which the trainers log at every evaluation.
"""

from __future__ import annotations

import logging

import numpy as np
from datasets import Dataset

from hf_seqobj.tasks.base import Statistics, Task, ratio, read_lines


logger = logging.getLogger(__name__)


def distinct_n(samples: list[list[str]], n: int) -> float:
    """Unique n-grams over all n-grams of the samples (0 when there are none)."""
    grams = [tuple(sample[i : i + n]) for sample in samples for i in range(len(sample) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sample: list[str], n: int = 4) -> float:
    """The share of the sample's n-grams that repeat an earlier n-gram of the same sample."""
    grams = [tuple(sample[i : i + n]) for i in range(len(sample) - n + 1)]
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


class LanguageModelingTask(Task):
    """`task="lm"`: text files (`train_file`, ...), one document a line; prompt and continuation per document."""

    name = "lm"

    def load_file(self, path: str) -> Dataset:
        lines = [line.strip() for line in read_lines(path) if line.strip()]
        return self._split_documents(lines, f"file {path!r}")

    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        if "text" not in dataset.column_names:
            raise ValueError(f"{where} has no column 'text'; its columns are {dataset.column_names}.")
        return self._split_documents([t.strip() for t in dataset["text"] if t and t.strip()], where)

    def _split_documents(self, documents: list[str], where: str) -> Dataset:
        words = self.args.lm_prompt_words
        sources, targets = [], []
        for document in documents:
            tokens = document.split()
            if len(tokens) <= words:
                continue  # too short to have a continuation
            sources.append(" ".join(tokens[:words]))
            targets.append(" ".join(tokens[words:]))
        if not sources:
            raise ValueError(f"{where}: no document has more than lm_prompt_words={words} words.")
        if len(sources) < len(documents):
            logger.info(
                "%s: %d of %d documents have at most lm_prompt_words=%d words (no continuation) and are left out.",
                where,
                len(documents) - len(sources),
                len(documents),
                words,
            )
        return Dataset.from_dict({"source": sources, "target": targets})

    def example_statistics(self, predictions: list[str], references: list[str]) -> Statistics:
        """Per sample: `repetition_4` (:func:`repetition_rate` of its 4-grams) and `length` (words)."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
        samples = [prediction.split() for prediction in predictions]
        return {
            "repetition_4": np.array([repetition_rate(sample) for sample in samples], dtype=np.float64),
            "length": np.array([len(sample) for sample in samples], dtype=np.float64),
        }

    def metrics_from_sums(self, sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
        """`repetition_4` = sum(repetition_4) / count and `mean_length` = sum(length) / count (0 for no samples)."""
        return {"repetition_4": ratio(sums["repetition_4"], count), "mean_length": ratio(sums["length"], count)}

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """distinct-1 / distinct-2 of all samples together, then the metrics of the summed statistics.

        distinct-n counts the unique n-grams of the whole set of samples, which no sum of per-sample numbers gives:
        it is the one metric of a task computed from the texts rather than from :meth:`example_statistics` (and has
        no bootstrap interval).
        """
        samples = [prediction.split() for prediction in predictions]
        distinct = {"distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2)}
        return {**distinct, **super().score(predictions, references)}
