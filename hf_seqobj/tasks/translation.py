"""Translation: aligned parallel text files or Hub-style `translation` columns; sacrebleu BLEU and chrF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sacrebleu
from datasets import Dataset

from hf_seqobj.tasks.base import Reject, Statistics, Task, raise_invalid, read_lines, weighted_sums


def read_parallel(source_path: str | Path, target_path: str | Path, reject: Reject = raise_invalid) -> Dataset:
    """Reads two UTF-8 files aligned line by line (one sentence a line, untokenised; see :func:`read_lines`).

    Args:
        source_path: The source side.
        target_path: The target side.
        reject: Called with `(FILE:LINE, problem)` for a pair with an empty line on a side (the pair is left out
            when it returns); default: an error.

    Raises:
        ValueError: the files have different line counts, or (default `reject`) a line is empty on one side.
    """
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise ValueError(
            f"Parallel files are misaligned: {source_path} has {len(sources)} lines, {target_path} has {len(targets)}."
        )
    kept_sources, kept_targets = [], []
    for number, (source, target) in enumerate(zip(sources, targets), start=1):
        empty = source_path if not source.strip() else target_path if not target.strip() else None
        if empty is not None:
            reject(f"{empty}:{number}", "empty line in a parallel file")
            continue
        kept_sources.append(source)
        kept_targets.append(target)
    return Dataset.from_dict({"source": kept_sources, "target": kept_targets})


SACREBLEU_METRICS = ("bleu", "chrf")


def _sacrebleu_metric(name: str):
    """sacrebleu's metric object of `name` at its default settings (BLEU: 13a tokenisation; chrF: 6 character
    n-gram orders, beta 2)."""
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[name]()


def _check_sacrebleu_metrics(metrics: tuple[str, ...]) -> None:
    unknown = [name for name in metrics if name not in SACREBLEU_METRICS]
    if unknown:
        raise ValueError(f"sacrebleu computes {SACREBLEU_METRICS}, not {unknown}.")


def sacrebleu_statistics(
    predictions: list[str], references: list[str], metrics: tuple[str, ...] = SACREBLEU_METRICS
) -> Statistics:
    """sacrebleu's per-sentence sufficient statistics (one reference per prediction), as its corpus scores and its
    paired bootstrap sum them: for BLEU `bleu_0` .. `bleu_9` = [hypothesis length, reference length, matching
    1..4-grams, hypothesis 1..4-grams]; for chrF `chrf_0` .. `chrf_17` = per character n-gram order 1..6
    [hypothesis n-grams, reference n-grams, matching n-grams].

    Raises:
        ValueError: a metric is not one of `SACREBLEU_METRICS`, or the predictions and references differ in number.
    """
    _check_sacrebleu_metrics(metrics)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    columns: Statistics = {}
    for name in metrics:
        rows = np.asarray(
            _sacrebleu_metric(name)._extract_corpus_statistics(list(predictions), [list(references)]),
            dtype=np.float64,
        )
        width = rows.shape[1] if rows.ndim == 2 else 0
        columns.update({f"{name}_{k}": rows[:, k] for k in range(width)})
    return columns


def sacrebleu_from_sums(sums: Statistics, metrics: tuple[str, ...] = SACREBLEU_METRICS) -> dict[str, np.ndarray]:
    """Corpus BLEU and / or chrF (x100) from summed :func:`sacrebleu_statistics`, one value per weighting, by
    sacrebleu's own `_compute_score_from_stats` (what `corpus_bleu` / `corpus_chrf` apply to the summed
    statistics)."""
    _check_sacrebleu_metrics(metrics)
    scores = {}
    for name in metrics:
        metric = _sacrebleu_metric(name)
        keys = sorted((key for key in sums if key.startswith(f"{name}_")), key=lambda key: int(key.split("_")[1]))
        table = np.stack([sums[key] for key in keys], axis=1)
        scores[name] = np.array(
            [
                float(metric._compute_score_from_stats([int(v) if v.is_integer() else v for v in row.tolist()]).score)
                for row in table
            ]
        )
    return scores


def sacrebleu_scores(
    predictions: list[str], references: list[str] | list[list[str]], metrics: tuple[str, ...] = SACREBLEU_METRICS
) -> dict[str, float]:
    """Corpus BLEU and / or chrF of sacrebleu (default settings: 13a tokenisation): with one reference per
    prediction from the summed :func:`sacrebleu_statistics`, with several from sacrebleu's corpus scores.

    Args:
        predictions: Generated texts.
        references: One reference text per prediction, or one list of reference texts per prediction (all as long).
        metrics: Which of "bleu" and "chrf" to compute.
    """
    _check_sacrebleu_metrics(metrics)
    if all(isinstance(reference, str) for reference in references):
        sums, _ = weighted_sums(sacrebleu_statistics(predictions, references, metrics))
        return {name: float(values[0]) for name, values in sacrebleu_from_sums(sums, metrics).items()}
    counts = sorted({len(reference) for reference in references})
    if len(counts) != 1 or counts[0] == 0:
        raise ValueError(f"every prediction needs as many references (at least one); the counts are {counts}.")
    streams = [list(stream) for stream in zip(*references)]
    corpus = {"bleu": sacrebleu.corpus_bleu, "chrf": sacrebleu.corpus_chrf}
    return {name: float(corpus[name](predictions, streams).score) for name in metrics}


class TranslationTask(Task):
    """Translation from `source_lang` to `target_lang`.

    Files: `train_file` (and the others) is a path prefix; the data are `PREFIX.SOURCE_LANG` and
    `PREFIX.TARGET_LANG`, as in Multi30k (`train.en` / `train.de`).
    """

    name = "translation"

    def load_file(self, path: str) -> Dataset:
        return read_parallel(f"{path}.{self.args.source_lang}", f"{path}.{self.args.target_lang}", self.reject)

    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        if "translation" not in dataset.column_names:
            raise ValueError(f"{where} has no column 'translation'; its columns are {dataset.column_names}.")
        sources, targets = [], []
        for index, pair in enumerate(dataset["translation"]):
            langs = (self.args.source_lang, self.args.target_lang)
            missing = next((lang for lang in langs if lang not in pair), None)
            if missing is not None:
                raise ValueError(f"{where}, row {index}: 'translation' has no {missing!r} key (keys: {list(pair)}).")
            empty = next((lang for lang in langs if not isinstance(pair[lang], str) or not pair[lang].strip()), None)
            if empty is not None:
                self.reject(f"{where}, row {index}", f"the {empty!r} text is {pair[empty]!r}")
                continue
            sources.append(pair[self.args.source_lang])
            targets.append(pair[self.args.target_lang])
        return Dataset.from_dict({"source": sources, "target": targets})

    def example_statistics(self, predictions: list[str], references: list[str]) -> Statistics:
        """sacrebleu's per-sentence BLEU and chrF statistics (:func:`sacrebleu_statistics`)."""
        return sacrebleu_statistics(predictions, references)

    def metrics_from_sums(self, sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
        """Corpus BLEU and chrF of sacrebleu (default settings: 13a tokenisation, one reference), x100."""
        return sacrebleu_from_sums(sums)
