"""Bootstrap intervals over examples, decoded predictions, and the comparison plots (with and without matplotlib)."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest

from hf_seqobj.reports import (
    LENGTH_PLOT,
    METRIC_PLOT,
    bootstrap_interval,
    metric_history,
    read_predictions,
    write_comparison_plots,
    write_predictions,
)
from hf_seqobj.tasks.ner import tag_metrics
from hf_seqobj.tasks.summarization import rouge_scores


def _accuracy(predictions, references):
    return {"accuracy": float(np.mean([p == r for p, r in zip(predictions, references)])), "count": len(predictions)}


def _ratio(predictions, references):
    """A corpus metric that is not a mean of per-example scores: total predicted over total reference words."""
    return {"ratio": sum(len(p.split()) for p in predictions) / sum(len(r.split()) for r in references)}


def test_a_mean_metric_is_resampled_as_the_mean_of_the_examples_scores():
    rng = random.Random(0)
    references = [str(rng.randrange(10)) for _ in range(200)]
    predictions = [r if rng.random() < 0.7 else "x" for r in references]
    interval = bootstrap_interval(_accuracy, predictions, references, resamples=2000, seed=1)
    assert interval.method == "mean" and interval.resamples == 2000 and interval.metric == "accuracy"
    correct = np.array([p == r for p, r in zip(predictions, references)], dtype=float)
    draws = correct[np.random.default_rng(1).integers(0, 200, size=(2000, 200))].mean(1)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    # about the binomial interval: estimate +- 1.96 sqrt(p (1 - p) / n)
    half = 1.96 * np.sqrt(interval.estimate * (1 - interval.estimate) / 200)
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.15)


def test_a_corpus_metric_is_rescored_on_each_resample():
    rng = random.Random(0)
    references = [" ".join("w" * rng.randrange(1, 4) for _ in range(rng.randrange(1, 9))) for _ in range(60)]
    predictions = [" ".join(r.split()[: rng.randrange(1, 9)]) for r in references]
    interval = bootstrap_interval(_ratio, predictions, references, resamples=300, seed=2)
    assert interval.method == "rescoring" and interval.resamples == 300
    index = np.random.default_rng(2).integers(0, 60, size=(300, 60))
    draws = [_ratio([predictions[i] for i in row], [references[i] for i in row])["ratio"] for row in index]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert interval.low < interval.estimate < interval.high
    with pytest.raises(ValueError, match="metric 'bleu' is not one of the task's metrics"):
        bootstrap_interval(_ratio, predictions, references, metric="bleu")
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        bootstrap_interval(_ratio, ["a", "b"], ["a"])


def test_a_tasks_score_is_resampled_through_its_summed_statistics():
    """With a task's bound `score`, every resample is the corpus metric of the resample's summed statistics: the
    same as scoring the resampled texts, for corpus BLEU (not a mean of per-example scores)."""
    from hf_seqobj.arguments import DataArguments
    from hf_seqobj.tasks import get_task

    rng = random.Random(3)
    words = "ein Mann in einem blauen Hemd fährt Fahrrad auf der Straße".split()
    references = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(80)]
    predictions = [" ".join(w if rng.random() < 0.7 else "x" for w in r.split()) for r in references]
    task = get_task(DataArguments(task="translation", train_file="unused"))
    interval = bootstrap_interval(task.score, predictions, references, resamples=200, seed=4)
    assert interval.method == "statistics" and interval.resamples == 200 and interval.metric == "bleu"
    index = np.random.default_rng(4).integers(0, 80, size=(200, 80))
    draws = [task.score([predictions[i] for i in row], [references[i] for i in row])["bleu"] for row in index]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert interval.low < interval.estimate < interval.high


def test_plain_metric_functions_on_1000_examples_are_rescored_or_resampled_as_means():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [" ".join(rng.choice(tags) for _ in range(12)) for _ in range(1000)]
    guessed = [" ".join(t if rng.random() < 0.8 else rng.choice(tags) for t in g.split()) for g in gold]
    words = "the a cat dog sat on mat house big small red blue man woman".split()
    texts = [" ".join(rng.choice(words) for _ in range(15)) for _ in range(1000)]
    outputs = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in t.split()) for t in texts]
    ner = lambda p, r: tag_metrics([x.split() for x in p], [x.split() for x in r])  # noqa: E731
    for score, predictions, references, method in (
        (ner, guessed, gold, "rescoring"),
        (rouge_scores, outputs, texts, "mean"),
    ):
        interval = bootstrap_interval(score, predictions, references, max_seconds=2.0)
        assert interval.method == method and interval.examples == 1000
        assert interval.low < interval.estimate < interval.high


def test_predictions_round_trip_and_the_metric_history(tmp_path):
    write_predictions(tmp_path / "test_predictions.jsonl", ["a b", "ü"], ["a", "c d"])
    assert read_predictions(tmp_path / "test_predictions.jsonl") == (["a b", "ü"], ["a", "c d"])
    history = [{"loss": 1.0, "step": 1}, {"eval_f1": 0.5, "step": 2}, {"eval_f1": 0.6, "step": 4}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    results = {"train": {"global_step": 6}, "eval": {"eval_f1": 0.7}}
    assert metric_history(tmp_path, "f1", results) == [(2, 0.5), (4, 0.6), (6, 0.7)]


def test_plots_are_written_and_skipped_in_one_line_without_matplotlib(tmp_path, monkeypatch, capsys):
    runs = {}
    for name, shift in (("control", 0), ("dagger", 1)):
        folder = tmp_path / name
        folder.mkdir()
        write_predictions(folder / "test_predictions.jsonl", ["a b" + " c" * shift, "d"], ["a b", "d e"])
        runs[name] = (folder, {"train": {"global_step": 3}, "eval": {"eval_loss": 1.0, "eval_bleu": 10.0 + shift}})
    written = write_comparison_plots(tmp_path, runs)
    assert written == [tmp_path / METRIC_PLOT, tmp_path / LENGTH_PLOT]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in written)

    for path in written:
        path.unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert write_comparison_plots(tmp_path, runs) == []
    out = capsys.readouterr().out
    assert out == 'matplotlib is not installed (pip install "hf_seqobj[plots]"): no comparison plots were written.\n'
    assert not (tmp_path / METRIC_PLOT).exists()
