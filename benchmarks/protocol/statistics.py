"""The quality benchmark's statistics, over whatever statistics the task defines: a run's per-example statistics
from its saved predictions, the paired bootstrap of a method against the control, the verdict, and the report's
output statistics. Nothing here knows a task: a task added to `hf_seqobj.tasks` (a user's own included) gets its
intervals from its :meth:`~hf_seqobj.tasks.Task.example_statistics` and
:meth:`~hf_seqobj.tasks.Task.corpus_metrics`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from benchmarks.protocol.settings import RESAMPLES
from hf_seqobj.tasks import Task
from hf_seqobj.tasks.base import Statistics
from hf_seqobj.tasks.base import output_statistics as task_output_statistics


def read_predictions(path: Path) -> tuple[list[str], list[str]]:
    """The predictions and references of a run's `predictions_{split}.jsonl` (one JSON object a line with
    `prediction` and `reference`, in the split's order)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["prediction"] for row in rows], [row["reference"] for row in rows]


def run_statistics(task: Task, path: Path) -> Statistics:
    """The task's per-example statistics of the predictions saved in `path` (see :func:`read_predictions`)."""
    return task.example_statistics(*read_predictions(path))


def paired_bootstrap(
    task: Task,
    metric: str,
    method: list[Statistics],
    control: list[Statistics],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """The difference method - control of the seed-averaged corpus metric, with a paired bootstrap 95% interval.

    `method[s]` and `control[s]` are the task's per-example statistics (:meth:`Task.example_statistics`) of seed s
    on the same n examples. Resample b draws n example indices with replacement; its weights w_bi count how often
    example i was drawn, and the corpus metric of each run is `task.corpus_metrics(statistics, w)[metric]` (the
    metric of the resampled corpus). With M_s(b) and C_s(b) those of seed s's method and control runs,
    Δ(b) = mean_s M_s(b) - mean_s C_s(b); `delta` is Δ on the whole set (all weights 1) and the interval the 2.5
    and 97.5 percentiles of Δ(b) over the `resamples` resamples (numpy's default, linear interpolation).

    Raises:
        ValueError: the runs are not paired (none, or different counts), or scored on different numbers of examples.
    """
    if not method or len(method) != len(control):
        raise ValueError(f"Paired seeds needed: {len(method)} method runs, {len(control)} control runs.")
    sizes = {len(next(iter(run.values()), ())) for run in (*method, *control)}
    if len(sizes) != 1:
        raise ValueError(f"Every run must be scored on the same examples; the runs have {sorted(sizes)} examples.")
    n = sizes.pop()
    generator = np.random.default_rng(seed)
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.repeat(np.arange(resamples), n), generator.integers(0, n, size=resamples * n)), 1.0)
    ones = np.ones((1, n))

    def averaged(runs: list[Statistics], w: np.ndarray) -> np.ndarray:
        return np.mean([task.corpus_metrics(run, w)[metric] for run in runs], axis=0)

    delta = float(averaged(method, ones)[0] - averaged(control, ones)[0])
    deltas = averaged(method, weights) - averaged(control, weights)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {"delta": delta, "ci_low": float(low), "ci_high": float(high), "resamples": resamples}


def verdict(ci_low: float, ci_high: float) -> str:
    """helps / hurts when the interval lies above / below 0; no difference when it contains 0."""
    if ci_low > 0:
        return "helps"
    if ci_high < 0:
        return "hurts"
    return "no difference"


def output_statistics(
    predictions: list[str], references: list[str], eos_reached: list[bool] | None = None
) -> dict[str, float]:
    """The report's length and repetition of generated texts, from the task-independent per-example
    :func:`hf_seqobj.tasks.base.output_statistics` (bigrams).

    Returns:
        `{"words": mean words per prediction, "reference_words": mean words per reference, "repeated_bigram": share
        of predictions that repeat a bigram}` (exact means, as the statistics module computes them), and with
        `eos_reached` given `"eos_rate"`: the share of predictions whose generation ended with EOS.

    Raises:
        ValueError: no predictions, or not one reference per prediction.
    """
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; need as many, at least 1.")
    columns = task_output_statistics(predictions, references, eos_reached, n=2)
    result = {
        "words": statistics.mean(int(value) for value in columns["output_length"]),
        "reference_words": statistics.mean(int(value) for value in columns["reference_length"]),
        "repeated_bigram": statistics.mean(float(value) for value in columns["repeated_ngram"]),
    }
    if eos_reached is not None:
        result["eos_rate"] = statistics.mean(float(value) for value in columns["eos_reached"])
    return result
