"""A task owns its scoring: per-example statistics whose sums give every metric, checked against the libraries."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from transformers import EvalPrediction

from hf_seqobj.arguments import DataArguments
from hf_seqobj.oracles.span_f1 import corpus_partial_f1
from hf_seqobj.tasks import TASKS, get_task, synthetic_ner
from hf_seqobj.tasks.base import output_statistics, output_summary, weighted_sums


WORDS = "the a cat dog sat on mat big small red run ran quickly over under".split()

ARGUMENTS = {
    "ner": {"dataset_name": "synthetic"},
    "translation": {"train_file": "unused"},
    "summarization": {"train_file": "unused.jsonl"},
    "text2text": {"train_file": "unused.jsonl", "text2text_metrics": ["bleu", "chrf", "rouge", "exact_match"]},
    "arithmetic": {"dataset_name": "synthetic"},
    "lm": {"train_file": "unused"},
}


def _texts(rng: random.Random, count: int, longest: int, empty: bool = True) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0 if empty else 1, longest))) for _ in range(count)]


def _data(task_name: str, count: int = 120, seed: int = 0) -> tuple[list[str], list[str]]:
    """Predictions (some empty, wrong length or with invalid tags) and references of a task."""
    rng = random.Random(seed)
    if task_name == "ner":
        references = list(synthetic_ner(count, seed=seed)["target"])
        tags = sorted({tag for reference in references for tag in reference.split()}) + ["<invalid>"]
        predictions = []
        for reference in references:
            predicted = [tag if rng.random() < 0.7 else rng.choice(tags) for tag in reference.split()]
            predictions.append(" ".join(predicted[: -rng.randint(1, 2)] if rng.random() < 0.1 else predicted))
        return predictions, references
    if task_name == "arithmetic":
        references = [" ".join(rng.choice("0123456789") for _ in range(rng.randint(1, 3))) for _ in range(count)]
        predictions = [r if rng.random() < 0.5 else rng.choice(["- 1 2", "1 x", "", "7"]) for r in references]
        return predictions, references
    references = _texts(rng, count, 25, empty=False)
    predictions = [r if rng.random() < 0.1 else t for r, t in zip(references, _texts(rng, count, 25), strict=True)]
    return predictions, references


def _rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    return {
        t: 100 * float(np.mean([s[t].fmeasure for s in scores])) for t in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    }


def _sacrebleu(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }


def _seqeval(predictions: list[str], references: list[str]) -> dict[str, float]:
    gold = [r.split() for r in references]
    aligned, mismatched, invalid, total = [], 0, 0, 0
    for predicted, reference in zip(predictions, gold, strict=True):
        tags = predicted.split()
        total, invalid = total + len(tags), invalid + tags.count("<invalid>")
        mismatched += len(tags) != len(reference)
        aligned.append(([t if t != "<invalid>" else "O" for t in tags] + ["O"] * len(reference))[: len(reference)])
    expected = {
        "f1": f1_score(gold, aligned, zero_division=0),
        "precision": precision_score(gold, aligned, zero_division=0),
        "recall": recall_score(gold, aligned, zero_division=0),
        "length_mismatch_rate": mismatched / len(gold),
        "invalid_tag_rate": invalid / total,
        **corpus_partial_f1(aligned, gold),
    }
    report = classification_report(gold, aligned, output_dict=True, zero_division=0)
    expected.update({f"f1_{t}": v["f1-score"] for t, v in report.items() if not t.endswith(" avg")})
    return expected


def _exact(predictions: list[str], references: list[str]) -> float:
    return float(np.mean([p.split() == r.split() for p, r in zip(predictions, references, strict=True)]))


def _lm(predictions: list[str], references: list[str]) -> dict[str, float]:
    from hf_seqobj.tasks.language_modeling import distinct_n, repetition_rate

    samples = [p.split() for p in predictions]
    return {
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "repetition_4": float(np.mean([repetition_rate(s) for s in samples])),
        "mean_length": float(np.mean([len(s) for s in samples])),
    }


def _arithmetic(predictions: list[str], references: list[str]) -> dict[str, float]:
    def well_formed(tokens: list[str]) -> bool:
        body = tokens[1:] if tokens[:1] == ["-"] else tokens
        return bool(body) and all(token.isdigit() for token in body)

    return {
        "accuracy": _exact(predictions, references),
        "well_formed_rate": float(np.mean([well_formed(p.split()) for p in predictions])),
    }


EXPECTED = {
    "ner": _seqeval,
    "translation": _sacrebleu,
    "summarization": _rouge,
    "text2text": lambda p, r: {**_sacrebleu(p, r), **_rouge(p, r), "exact_match": _exact(p, r)},
    "arithmetic": _arithmetic,
    "lm": _lm,
}
"""Per task, its metrics as the libraries (seqeval, sacrebleu, rouge-score) or their definitions compute them."""


def test_every_task_is_checked():
    assert set(EXPECTED) == set(TASKS) == set(ARGUMENTS)


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_every_metric_of_score_comes_from_the_summed_statistics_and_equals_the_library(task_name):
    task = get_task(DataArguments(task=task_name, **ARGUMENTS[task_name]))
    predictions, references = _data(task_name)
    statistics = task.example_statistics(predictions, references)
    assert all(column.shape == (len(predictions),) for column in statistics.values())
    from_sums = {name: float(values[0]) for name, values in task.corpus_metrics(statistics).items()}
    scores = task.score(predictions, references)
    expected = EXPECTED[task_name](predictions, references)
    assert list(scores) == list(expected)  # the same metrics, in the order the results files list them
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
        if not name.startswith("distinct_"):  # distinct-n counts unique n-grams of the whole set: no sum gives it
            assert from_sums[name] == scores[name], name
    if task_name == "ner":
        assert 0 < scores["length_mismatch_rate"] < 1 and 0 < scores["invalid_tag_rate"] < 1
        assert {"tp_PER", "predicted_PER", "gold_PER", "partial_hits", "partial_covered"} <= set(statistics)


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_weighted_sums_give_the_metrics_of_the_resampled_corpus(task_name):
    """A bootstrap resample as weights (how often each example is drawn) scores as the resampled corpus itself."""
    task = get_task(DataArguments(task=task_name, **ARGUMENTS[task_name]))
    predictions, references = _data(task_name, count=60, seed=1)
    statistics = task.example_statistics(predictions, references)
    generator = np.random.default_rng(0)
    draws = generator.integers(0, len(predictions), size=(3, len(predictions)))
    weights = np.stack([np.bincount(row, minlength=len(predictions)) for row in draws]).astype(float)
    metrics = task.corpus_metrics(statistics, weights)
    for resample, row in enumerate(draws):
        resampled = task.score([predictions[i] for i in row], [references[i] for i in row])
        for name, values in metrics.items():
            assert values[resample] == pytest.approx(resampled[name], rel=1e-9, abs=1e-12), (name, resample)


def test_statistics_of_mismatched_inputs_and_weights_are_errors():
    task = get_task(DataArguments(task="translation", **ARGUMENTS["translation"]))
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        task.example_statistics(["a", "b"], ["a"])
    statistics = task.example_statistics(["a b", "c"], ["a b", "d"])
    with pytest.raises(ValueError, match=r"weights of shape \(1, 3\) for 2 examples"):
        task.corpus_metrics(statistics, np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"different lengths \[1, 2\]"):
        weighted_sums({"a": np.ones(1), "b": np.ones(2)})


def test_output_statistics_length_ratio_eos_and_repeated_ngrams():
    predictions = ["a b a b", "x y z", ""]
    references = ["a b", "x y z w", "q"]
    statistics = output_statistics(predictions, references, eos_reached=[False, True, True])
    assert statistics["output_length"].tolist() == [4, 3, 0]
    assert statistics["reference_length"].tolist() == [2, 4, 1]
    assert statistics["repeated_ngram"].tolist() == [1, 0, 0]  # "a b" twice
    summary = {name: float(values[0]) for name, values in output_summary(statistics).items()}
    assert summary == pytest.approx(
        {
            "length_ratio": 7 / 7,
            "output_length": 7 / 3,
            "reference_length": 7 / 3,
            "repeated_ngram_rate": 1 / 3,
            "eos_rate": 2 / 3,
        }
    )
    assert output_statistics(["a b c a b"], ["r"], n=3)["repeated_ngram"].tolist() == [0]
    assert "eos_rate" not in output_summary(output_statistics(predictions, references))
    with pytest.raises(ValueError, match="3 predictions for 3 references and 2 EOS flags"):
        output_statistics(predictions, references, eos_reached=[True, True])


class _Tokenizer:
    """The ids 0..4 as the words a..e, with EOS 9, padding 8 and decoder start 7."""

    eos_token_id, pad_token_id = 9, 8
    all_special_ids = [7, 8, 9]

    def decode(self, ids, **kwargs):
        return " ".join("abcde"[i] for i in ids)


def test_compute_metrics_keeps_the_decoded_texts_and_eos_and_saves_them(tmp_path):
    task = get_task(DataArguments(task="translation", **ARGUMENTS["translation"]))
    compute_metrics = task.compute_metrics_fn(_Tokenizer(), decoder_start_token_id=7)
    predictions = np.array([[7, 0, 1, 9, 8], [7, 2, 2, 2, 2]])  # the second stops at the length limit
    labels = np.array([[0, 1, 9, -100, -100], [2, 3, 9, -100, -100]])
    with pytest.raises(ValueError, match="compute_metrics has not run"):
        task.save_predictions(tmp_path / "test_predictions.jsonl", ["s1", "s2"])
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert task.last_outputs.predictions == ["a b", "c c c c"]
    assert task.last_outputs.references == ["a b", "c d"]
    assert task.last_outputs.eos_reached == [True, False]
    # the task's metrics and the output diagnostics: (2 + 4) / (2 + 2) words, one of two reached EOS, one loops
    diagnostics = {"length_ratio": 1.5, "eos_rate": 0.5, "repeated_ngram_rate": 0.5}
    assert metrics == {**task.score(["a b", "c c c c"], ["a b", "c d"]), **diagnostics}
    task.save_predictions(tmp_path / "test_predictions.jsonl", ["s1", "s2 ü"])
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text("utf-8").splitlines()]
    assert rows == [
        {"source": "s1", "prediction": "a b", "reference": "a b", "eos_reached": True},
        {"source": "s2 ü", "prediction": "c c c c", "reference": "c d", "eos_reached": False},
    ]
    with pytest.raises(ValueError, match="1 sources for 2 decoded predictions"):
        task.save_predictions(tmp_path / "x.jsonl", ["s1"])


def test_overwriting_a_run_deletes_its_predictions(tmp_path):
    from hf_seqobj.run import prepare_output_dir

    for name in ("test_results.json", "test_predictions.jsonl", "eval_predictions.jsonl", "notes.txt"):
        (tmp_path / name).write_text("{}")
    prepare_output_dir(str(tmp_path), overwrite=True, resume=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
