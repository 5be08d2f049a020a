"""What a finished run reports beyond its metrics: decoded predictions, bootstrap intervals, comparison plots.

- :func:`write_predictions` / :func:`read_predictions`: the decoded outputs and references of a split, which
  `hf_seqobj.run.train` and `evaluate` write to `{split}_predictions.jsonl` in the output folder.
- :func:`bootstrap_interval` gives a metric's interval over examples (`hf-seqobj evaluate` prints it).
- :func:`write_comparison_plots` draws, beside a comparison's `comparison.md`, each run's evaluation metric over the
  steps (`comparison_metric.png`) and its output lengths against the reference lengths (`comparison_lengths.png`).
  matplotlib is optional (`pip install "hf_seqobj[plots]"`); without it one line says so and no plot is written.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


PREDICTIONS_FILE = "{split}_predictions.jsonl"
"""The decoded predictions of a split in an output folder: one `{"source": ..., "prediction": ..., "reference": ...}`
a line (written by :meth:`hf_seqobj.tasks.Task.save_predictions`; `source` is optional for the readers here)."""

METRIC_PLOT = "comparison_metric.png"
"""Each run's evaluation metric over the training steps, beside `comparison.md`."""

LENGTH_PLOT = "comparison_lengths.png"
"""Each run's output length against the reference length (test predictions, in words), beside `comparison.md`."""


def write_predictions(path: str | Path, predictions: Sequence[str], references: Sequence[str]) -> None:
    """Writes decoded predictions and references as JSON lines (see :data:`PREDICTIONS_FILE`)."""
    with open(path, "w", encoding="utf-8") as handle:
        for prediction, reference in zip(predictions, references, strict=True):
            handle.write(json.dumps({"prediction": prediction, "reference": reference}, ensure_ascii=False) + "\n")


def read_predictions(path: str | Path) -> tuple[list[str], list[str]]:
    """The predictions and references :func:`write_predictions` wrote."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["prediction"] for row in rows], [row["reference"] for row in rows]


@dataclass
class Interval:
    """A metric with its bootstrap interval over examples."""

    metric: str
    estimate: float
    """The metric on all examples."""
    low: float
    high: float
    confidence: float
    examples: int
    resamples: int
    method: str
    """`statistics`: each resample is a weighted sum of the task's per-example statistics
    (`Task.corpus_metrics`); `mean`: the metric is the mean of per-example scores, resampled as such; `rescoring`:
    each resample scored anew with `score`."""

    def __str__(self) -> str:
        return (
            f"{self.metric} = {self.estimate:.4f}, {self.confidence:.0%} bootstrap interval [{self.low:.4f}, "
            f"{self.high:.4f}] ({self.examples} examples, {self.resamples} resamples, {self.method})"
        )


def bootstrap_interval(
    score: Callable[[list[str], list[str]], dict[str, float]],
    predictions: Sequence[str],
    references: Sequence[str],
    metric: str | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_seconds: float = 3.0,
) -> Interval:
    """The bootstrap interval over examples of one metric of a task's `score`.

    Each resample draws as many examples as there are, with replacement, and scores the drawn predictions against
    their references. Three ways, with the same answer where they apply:

    - `statistics`: `score` is a task's bound `score` (a :class:`hf_seqobj.tasks.Task` with per-example sufficient
      statistics): a resample's metric is the corpus metric of the examples' statistics summed with the resample's
      counts as weights, exact for corpus BLEU and span F1 alike; all `resamples` are done (1000 in well under a
      second for 1000 examples).

    - `mean`: when the metric is the mean of the examples' own scores (ROUGE F, accuracy, exact match: found by
      scoring a few examples alone and in pairs, and confirmed on all), each example is scored once and a resample's
      metric is the mean of its examples' scores: `resamples` resamples in well under a second.
    - `rescoring`: otherwise (corpus BLEU, span F1), each resample is scored with `score`, until `resamples` are
      done or `max_seconds` have passed (span F1, or BLEU with chrF, of 1000 examples takes about 0.4 s here: about 7
      resamples in 3 s); the count done is reported. With 100 resamples or more the interval is the percentile
      interval, with fewer the normal one (estimate +- z x the resamples' standard deviation).

    The other two serve a `score` that is a plain function.

    Args:
        score: The task's `score(predictions, references) -> metrics`.
        predictions: Decoded predictions, one per example.
        references: Decoded references.
        metric: The metric; None: the first one `score` returns (the task's main metric: f1, bleu, rouge1, ...).
        resamples: How many resamples at most.
        confidence: The interval's coverage, in (0, 1).
        seed: Seed of the draws.
        max_seconds: The time the rescoring may take.

    Returns:
        The :class:`Interval`.
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; accepted: as many, >= 1.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    predictions, references = list(predictions), list(references)
    full = score(predictions, references)
    metric = metric if metric is not None else next(iter(full))
    if metric not in full:
        raise ValueError(f"metric {metric!r} is not one of the task's metrics {list(full)}.")
    estimate, count = float(full[metric]), len(predictions)
    rng = np.random.default_rng(seed)
    task = getattr(score, "__self__", None)  # a task's bound `score`: resample its summed statistics
    if callable(getattr(task, "example_statistics", None)) and callable(getattr(task, "corpus_metrics", None)):
        statistics_ = task.example_statistics(predictions, references)
        weights = np.stack(
            [np.bincount(rng.integers(0, count, size=count), minlength=count) for _ in range(resamples)]
        )
        draws = np.asarray(task.corpus_metrics(statistics_, weights.astype(np.float64))[metric], dtype=float)
        values, method = None, "statistics"
    else:
        values = _example_scores(score, predictions, references, metric, estimate)
        method = None
    if method == "statistics":
        pass  # the draws are done
    elif values is not None:
        draws = values[rng.integers(0, count, size=(resamples, count))].mean(1)
        method = "mean"
    else:
        start, scored = time.perf_counter(), []
        while len(scored) < resamples and (len(scored) < 2 or time.perf_counter() - start < max_seconds):
            index = rng.integers(0, count, size=count)
            scored.append(score([predictions[i] for i in index], [references[i] for i in index])[metric])
        draws, method = np.asarray(scored, dtype=float), "rescoring"
    tail = (1.0 - confidence) / 2
    if len(draws) >= 100:
        low, high = np.quantile(draws, [tail, 1.0 - tail])
    else:
        spread = statistics.NormalDist().inv_cdf(1.0 - tail) * float(np.std(draws, ddof=1))
        low, high = estimate - spread, estimate + spread
    return Interval(metric, estimate, float(low), float(high), confidence, count, len(draws), method)


def _example_scores(score, predictions, references, metric, estimate) -> np.ndarray | None:
    """Each example's own score, when the metric is their mean (else None): checked on a few pairs first, so that a
    corpus metric costs a few calls of `score` only, then on all examples."""

    def alone(i: int) -> float:
        with warnings.catch_warnings():  # e.g. seqeval on one sentence without entities
            warnings.simplefilter("ignore")
            return float(score([predictions[i]], [references[i]])[metric])

    count = len(predictions)
    for i in range(min(count - 1, 3)):
        pair = float(score(predictions[i : i + 2], references[i : i + 2])[metric])
        if not math.isclose(pair, (alone(i) + alone(i + 1)) / 2, rel_tol=1e-9, abs_tol=1e-12):
            return None
    values = np.asarray([alone(i) for i in range(count)], dtype=float)
    return values if math.isclose(float(values.mean()), estimate, rel_tol=1e-9, abs_tol=1e-12) else None


def plotted_metric(eval_metrics: dict[str, float]) -> str | None:
    """The evaluation metric a comparison plots: `f1` where there is one, else the first that is not a loss, a
    runtime or a throughput (names without the `eval_` prefix)."""
    names = [key[len("eval_") :] for key in eval_metrics if key.startswith("eval_")]
    if "f1" in names:
        return "f1"
    return next((name for name in names if name != "loss" and not name.endswith(("runtime", "per_second"))), None)


def metric_history(
    output_dir: str | Path, metric: str, results: dict[str, dict[str, float]]
) -> list[tuple[int, float]]:
    """`(step, value)` of `eval_{metric}` over a run: the evaluations logged in its trainer_state.json, then the
    final one of `results` (`train`'s return value) at the last step."""
    points = []
    state = Path(output_dir) / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
        points = [
            (int(entry["step"]), float(entry[f"eval_{metric}"])) for entry in history if f"eval_{metric}" in entry
        ]
    final = results.get("eval", {}).get(f"eval_{metric}")
    step = int(results.get("train", {}).get("global_step", 0))
    if final is not None and (step, float(final)) not in points:
        points.append((step, float(final)))
    return sorted(points)


def write_comparison_plots(
    folder: str | Path, runs: dict[str, tuple[str | Path, dict[str, dict[str, float]]]]
) -> list[Path]:
    """Writes :data:`METRIC_PLOT` and :data:`LENGTH_PLOT` into `folder` (see the module docstring).

    Args:
        folder: Where `comparison.md` is.
        runs: run name -> (its output folder, `train`'s results).

    Returns:
        The files written: none without matplotlib (a line says so), or without evaluations or test predictions.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print('matplotlib is not installed (pip install "hf_seqobj[plots]"): no comparison plots were written.')
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    first = next(iter(runs.values()), (None, {}))[1]
    metric = plotted_metric(first.get("eval", {}))
    histories = {name: metric_history(out, metric, results) for name, (out, results) in runs.items()} if metric else {}
    if any(histories.values()):
        figure = Figure(figsize=(6.4, 4.2))
        axes = figure.subplots()
        for name, points in histories.items():
            if points:
                axes.plot(*zip(*points), marker="o", label=name)
        axes.set(xlabel="training step", ylabel=f"eval {metric}", title=f"eval {metric} over training")
        axes.legend()
        axes.grid(alpha=0.3)
        FigureCanvasAgg(figure).print_png(folder / METRIC_PLOT)
        written.append(folder / METRIC_PLOT)
    lengths = {}
    for name, (output_dir, _) in runs.items():
        path = Path(output_dir) / PREDICTIONS_FILE.format(split="test")
        if path.is_file():
            predicted, references = read_predictions(path)
            lengths[name] = ([len(r.split()) for r in references], [len(p.split()) for p in predicted])
    if lengths:
        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.subplots()
        longest = max(max(ref + out, default=1) for ref, out in lengths.values())
        axes.plot([0, longest], [0, longest], color="grey", linewidth=1, label="output = reference")
        for name, (reference, output) in lengths.items():
            axes.scatter(reference, output, s=12, alpha=0.5, label=name)
        axes.set(xlabel="reference length (words)", ylabel="output length (words)", title="test output lengths")
        axes.legend()
        axes.grid(alpha=0.3)
        FigureCanvasAgg(figure).print_png(folder / LENGTH_PLOT)
        written.append(folder / LENGTH_PLOT)
    return written
