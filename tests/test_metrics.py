"""The package's metrics as `evaluate` modules (loaded offline, equal to seqeval, sacrebleu and rouge-score and to the
tasks' own scores), an `evaluate` module as a run's metric (`evaluate_metric`), and `text_metric_scorer`."""

from __future__ import annotations

import json
import random
import re
import socket
from pathlib import Path

import evaluate
import numpy as np
import pytest
import sacrebleu
import torch
import yaml
from conftest import SHARED_DATA, requires_shared_data
from rouge_score import rouge_scorer
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from transformers import EvalPrediction

import hf_seqobj
from hf_seqobj import metrics
from hf_seqobj.arguments import DataArguments
from hf_seqobj.cli import main
from hf_seqobj.modeling import train_tokenizer
from hf_seqobj.oracles import corpus_partial_f1
from hf_seqobj.rewards import score as token_score
from hf_seqobj.run import read_run_config, write_run_config
from hf_seqobj.tasks import get_task
from hf_seqobj.tasks.base import OUTPUT_DIAGNOSTICS
from hf_seqobj.tasks.ner import INVALID_TAG, NERTask
from hf_seqobj.tasks.summarization import SummarizationTask
from hf_seqobj.tasks.translation import TranslationTask


ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran on under mat big small red house garden runs running quickly".split()
TYPES = ("PER", "LOC", "ORG")

USER_MODULE = '''"""A user's own metric: the share of exact matches, and some numbers of other shapes."""

import datasets
import evaluate


class MyOverlap(evaluate.Metric):
    def _info(self):
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description="exact matches",
            citation="",
            inputs_description="predictions and references: texts",
            features=datasets.Features({"predictions": text, "references": text}),
        )

    def _compute(self, predictions, references):
        same = [float(p == r) for p, r in zip(predictions, references)]
        return {
            "accuracy": sum(same) / max(len(same), 1),
            "counts": {"pairs": len(same), "words": sum(len(p.split()) for p in predictions)},
            "lengths": [min(map(len, predictions), default=0), max(map(len, predictions), default=0)],
            "note": "strings are left out",
        }
'''


def _user_module(folder: Path) -> Path:
    """Writes the local module `my_overlap` (a folder holding my_overlap.py) and returns the folder."""
    module = folder / "my_overlap"
    module.mkdir(parents=True, exist_ok=True)
    (module / "my_overlap.py").write_text(USER_MODULE, encoding="utf-8")
    return module


def _tags(rng: random.Random, length: int) -> list[str]:
    tags, previous = [], "O"
    for _ in range(length):
        roll = rng.random()
        if roll < 0.5:
            tag = "O"
        elif roll < 0.75 and previous != "O":
            tag = "I-" + previous[2:]
        else:
            tag = f"{rng.choice('BI')}-{rng.choice(TYPES)}"  # I- after O too: seqeval's conlleval mode counts it
        tags.append(tag)
        previous = tag
    return tags


def _corrupt_tags(rng: random.Random, tags: list[str], rate: float = 0.2) -> list[str]:
    return [f"B-{rng.choice(TYPES)}" if rng.random() < rate / 2 else "O" if rng.random() < rate else t for t in tags]


def _sentence(rng: random.Random, words: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words or rng.randint(1, 12)))


def _perturb(rng: random.Random, text: str) -> str:
    """Drops, repeats and replaces some words (never to an empty text)."""
    out = []
    for word in text.split():
        roll = rng.random()
        out += [] if roll < 0.15 else [word, word] if roll < 0.25 else [rng.choice(WORDS)] if roll < 0.4 else [word]
    return " ".join(out) or rng.choice(WORDS)


@pytest.fixture
def no_network(monkeypatch):
    """Network connections fail, and every attempt is recorded (the test checks there was none: a library that
    catches the error still leaves its trace)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise ConnectionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"network connections were attempted: {attempts}"


# ----------------------------------------------------------------------------------------------- loading offline
@pytest.mark.parametrize("name", list(metrics.METRIC_MODULES))
def test_every_packaged_module_loads_offline_with_evaluate_load(name, no_network):
    folder = Path(metrics.path(name))
    assert folder.is_relative_to(Path(hf_seqobj.__file__).parent) and (folder / f"{name}.py").is_file()
    module = evaluate.load(metrics.path(name))
    assert isinstance(module, evaluate.EvaluationModule) and module.name == name
    assert hf_seqobj.load_metric(name).name == name


def test_load_metric_refuses_hub_names_and_missing_paths_without_a_connection(no_network, tmp_path):
    with pytest.raises(ValueError, match=r"metric 'sacrebleu' is neither a packaged metric \(span_f1, bleu_chrf"):
        metrics.load_metric("sacrebleu")
    with pytest.raises(ValueError, match="neither a packaged metric"):
        metrics.load_metric(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=r"Unknown packaged metric 'bleu'; accepted: span_f1, bleu_chrf"):
        metrics.path("bleu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken.py").write_text("import evaluate\n\nclass Broken(evaluate.Metric:\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metric '.*broken' could not be loaded as an evaluate module"):
        metrics.load_metric(str(broken))


def test_a_loaded_module_is_used_as_it_is(tmp_path):
    module = evaluate.load(str(_user_module(tmp_path)))
    assert metrics.load_metric(module) is module
    with pytest.raises(ValueError, match=r"evaluate_metric 3 is not an evaluate module"):
        metrics.check_metric_source(3)


# --------------------------------------------------------------------------------- equal to the libraries (small)
def test_span_f1_equals_seqeval_and_the_ner_task_on_generated_tags():
    rng = random.Random(0)
    gold = [_tags(rng, rng.randint(1, 9)) for _ in range(60)]
    pred = [_corrupt_tags(rng, tags) for tags in gold]
    pred[3] = pred[3][:-1] or ["O", "O"]  # a length mismatch
    pred[5] = ["<x>", *pred[5][1:]]  # a token that is not a tag
    module = metrics.load_metric("span_f1")
    as_lists = module.compute(predictions=pred, references=gold)
    as_strings = module.compute(predictions=[" ".join(p) for p in pred], references=[" ".join(g) for g in gold])
    decoded = [" ".join(INVALID_TAG if t == "<x>" else t for t in p) for p in pred]  # as the task decodes
    task = NERTask.__new__(NERTask).score(decoded, [" ".join(g) for g in gold])
    assert as_lists == as_strings
    assert as_lists == pytest.approx({k: v for k, v in task.items()})
    aligned = [(["O" if t == "<x>" else t for t in p] + ["O"] * len(g))[: len(g)] for p, g in zip(pred, gold)]
    assert as_lists["f1"] == pytest.approx(f1_score(gold, aligned))
    assert as_lists["precision"] == pytest.approx(precision_score(gold, aligned))
    assert as_lists["recall"] == pytest.approx(recall_score(gold, aligned))
    report = classification_report(gold, aligned, output_dict=True)
    for entity_type in TYPES:
        assert as_lists[f"f1_{entity_type}"] == pytest.approx(report[entity_type]["f1-score"])
    assert as_lists["partial_f1"] == pytest.approx(corpus_partial_f1(aligned, gold)["partial_f1"])
    assert as_lists["length_mismatch_rate"] == pytest.approx(1 / 60) and as_lists["invalid_tag_rate"] > 0
    assert 0 < as_lists["f1"] < as_lists["partial_f1"] < 1


def test_bleu_chrf_equals_sacrebleu_and_the_translation_task_on_generated_texts():
    rng = random.Random(1)
    references = [_sentence(rng) for _ in range(40)]
    predictions = [_perturb(rng, reference) for reference in references]
    module = metrics.load_metric("bleu_chrf")
    result = module.compute(predictions=predictions, references=references)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score, abs=1e-9)
    assert result == TranslationTask.__new__(TranslationTask).score(predictions, references)
    assert 0 < result["bleu"] < 100
    second = [_perturb(rng, reference) for reference in references]
    both = module.compute(predictions=predictions, references=[[a, b] for a, b in zip(references, second)])
    assert both["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references, second]).score, abs=1e-9)
    assert module.compute(predictions=predictions, references=references, metrics=["chrf"]) == {"chrf": result["chrf"]}
    with pytest.raises(ValueError, match=r"as many references \(at least one\); the counts are \[1, 2\]"):
        module.compute(predictions=predictions[:2], references=[[references[0]], references[:2]])


def test_rouge_equals_rouge_score_and_the_summarization_task_on_generated_texts():
    rng = random.Random(2)
    references = [_sentence(rng) + "\n" + _sentence(rng) for _ in range(40)]
    predictions = [_perturb(rng, reference.replace("\n", " . ")) for reference in references]
    module = metrics.load_metric("rouge")
    result = module.compute(predictions=predictions, references=references)
    assert result == SummarizationTask.__new__(SummarizationTask).score(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references)]
    each = module.compute(predictions=predictions, references=references, use_aggregator=False)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert each[name] == pytest.approx([100 * s[name].fmeasure for s in direct])
        assert result[name] == pytest.approx(100 * np.mean([s[name].fmeasure for s in direct]))
    assert 0 < result["rouge2"] < result["rouge1"] < 100


def _word_ids(texts: list[str], vocabulary: dict[str, int]) -> list[list[int]]:
    return [[vocabulary.setdefault(word, len(vocabulary) + 3) for word in text.split()] for text in texts]


def _check_token_modules(predictions: list[str], references: list[str]) -> None:
    """token_bleu / token_rouge on word ids equal sacrebleu's sentence BLEU and rouge-score on the words w{id}."""
    vocabulary: dict[str, int] = {}
    hyp_ids, ref_ids = _word_ids(predictions, vocabulary), _word_ids(references, vocabulary)
    words = [[" ".join(f"w{i}" for i in row) for row in rows] for rows in (hyp_ids, ref_ids)]
    bleu = metrics.load_metric("token_bleu").compute(predictions=hyp_ids, references=ref_ids, use_aggregator=False)
    expected = [sacrebleu.sentence_bleu(h, [r], tokenize="none").score / 100 for h, r in zip(*words)]
    assert bleu["bleu"] == pytest.approx(expected, abs=1e-9)
    rouge = metrics.load_metric("token_rouge").compute(predictions=hyp_ids, references=ref_ids)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(r, h) for h, r in zip(*words)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert rouge[name] == pytest.approx(np.mean([s[name].fmeasure for s in direct]), abs=1e-9)


def test_token_modules_equal_sacrebleu_and_rouge_score_on_word_ids():
    rng = random.Random(3)
    references = [_sentence(rng) for _ in range(40)]
    _check_token_modules([_perturb(rng, reference) for reference in references], references)


def test_token_modules_read_eos_and_padding_as_the_oracles_do():
    hyps = [[5, 6, 7, 2, 9, 9], [5, 0, 6, -100]]
    refs = [[5, 6, 7, 2], [5, 6, 0, 0]]
    token_bleu = metrics.load_metric("token_bleu")
    result = token_bleu.compute(predictions=hyps, references=refs, eos_token_id=2, pad_token_id=0)
    expected = token_score(
        "bleu",
        torch.tensor([[5, 6, 7, 2, 9, 9], [5, 0, 6, 0, 0, 0]]),
        torch.tensor(refs),
        eos_token_id=2,
        pad_token_id=0,
    )
    assert result["bleu"] == pytest.approx(float(expected.mean())) and expected[0] == 1.0
    assert metrics.load_metric("token_rouge").compute(
        predictions=[[1, 2]], references=[[1, 3]], rouge_types="rouge1"
    ) == {"rouge1": 0.5}
    with pytest.raises(ValueError, match=r"rouge_types must be some of 'rouge1', 'rouge2', 'rougeL', got \['bleu'\]"):
        metrics.load_metric("token_rouge").compute(predictions=[[1]], references=[[1]], rouge_types=["bleu"])


def test_module_scores_flatten_and_prefix_the_numbers(tmp_path):
    module = metrics.load_metric(str(_user_module(tmp_path)))
    scores = metrics.module_scores(module, ["a b", "c"], ["a b", "d"])
    assert scores == {
        "my_overlap_accuracy": 0.5,
        "my_overlap_counts_pairs": 2.0,
        "my_overlap_counts_words": 3.0,
        "my_overlap_lengths_0": 1.0,
        "my_overlap_lengths_1": 3.0,
    }


# ------------------------------------------------------------------------------------------- a run's metric
def test_evaluate_metric_setting_is_checked():
    with pytest.raises(ValueError, match=r"evaluate_metric 'rouge_l' is neither a packaged metric .*Hub names"):
        DataArguments(task="text2text", train_file="x.jsonl", evaluate_metric="rouge_l")
    assert DataArguments(task="ner", dataset_name="synthetic", evaluate_metric="span_f1").evaluate_metric == "span_f1"


@pytest.mark.parametrize(
    "metric, message",
    [
        ("sacrebleu", r"evaluate_metric 'sacrebleu' is neither a packaged metric \(span_f1, bleu_chrf, rouge, "),
        ("broken", r"metric '.*broken' could not be loaded as an evaluate module: .*SyntaxError|invalid syntax"),
    ],
)
def test_a_bad_evaluate_metric_ends_the_command_with_one_line(metric, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "broken.py").write_text("import evaluate\n\nclass Broken(evaluate.Metric:\n")
    config = {
        "task": "ner",
        "dataset_name": "synthetic",
        "synthetic_train_size": 16,
        "synthetic_eval_size": 4,
        "evaluate_metric": metric,
        "architecture": "bart",
        "output_dir": "out",
        "max_steps": 1,
        "predict_with_generate": True,
        "report_to": "none",
        "use_cpu": True,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    status = main(["train", "config.yaml"])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("hf-seqobj train: error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_compute_metrics_adds_the_modules_numbers(ner_task, tmp_path):
    """The ner task gives a module tag lists: span_f1 repeats the task's numbers under its name; a loaded module is
    accepted as the setting in Python."""
    task, splits = ner_task
    tokenizer = train_tokenizer(task.training_text(splits), extra_tokens=task.extra_tokens(splits))
    targets = splits["validation"]["target"][:6]
    rng = random.Random(4)
    predicted = [" ".join(_corrupt_tags(rng, target.split(), 0.3)) for target in targets]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [task.encode_target(t, tokenizer) + [eos] for t in predicted]
    labels = [task.encode_target(t, tokenizer) + [eos] for t in targets]
    width = max(map(len, rows + labels))
    prediction = EvalPrediction(
        np.array([row + [pad] * (width - len(row)) for row in rows]),
        np.array([row + [-100] * (width - len(row)) for row in labels]),
    )
    for metric in ("span_f1", metrics.load_metric("span_f1")):
        args = DataArguments(task="ner", dataset_name="synthetic", evaluate_metric=metric)
        scores = get_task(args).compute_metrics_fn(tokenizer)(prediction)
        assert 0 < scores["f1"] < 1
        for key in ("f1", "precision", "recall", "partial_f1", "invalid_tag_rate"):
            assert scores[f"span_f1_{key}"] == scores[key]


def test_run_config_saves_where_the_module_loads_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _user_module(tmp_path)
    from hf_seqobj.arguments import ModelArguments

    model_args = ModelArguments(architecture="bart")
    for given, saved in (("my_overlap", str((tmp_path / "my_overlap").resolve())), ("rouge", "rouge")):
        args = DataArguments(task="text2text", train_file="t.jsonl", evaluate_metric=given)
        write_run_config(str(tmp_path / "out"), model_args, args, {})
        assert read_run_config(str(tmp_path / "out"))["data"]["evaluate_metric"] == saved
    loaded = metrics.load_metric("my_overlap")
    args = DataArguments(task="text2text", train_file="t.jsonl", evaluate_metric=loaded)
    write_run_config(str(tmp_path / "out"), model_args, args, {})
    script = read_run_config(str(tmp_path / "out"))["data"]["evaluate_metric"]
    assert script.endswith("my_overlap.py") and metrics.load_metric(script).name == "my_overlap"


def test_a_run_reports_a_local_module_and_selects_the_best_checkpoint_by_it(tmp_path, capsys):
    """`hf-seqobj train` with `evaluate_metric` a user's local module: its numbers in eval_ / test_ results, usable
    as metric_for_best_model; `hf-seqobj evaluate` scores with it again from the saved settings."""
    rng = random.Random(5)
    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 24), ("validation", 6), ("test", 6)):
        rows = [_sentence(rng, rng.randint(2, 4)) for _ in range(count)]
        lines = [json.dumps({"prompt": "copy: " + row, "completion": row}) for row in rows]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    config = {
        "task": "text2text",
        "train_file": str(data / "train.jsonl"),
        "validation_file": str(data / "validation.jsonl"),
        "test_file": str(data / "test.jsonl"),
        "text2text_metrics": ["exact_match"],
        "evaluate_metric": str(_user_module(tmp_path)),
        "architecture": "bart",
        "model_size": "tiny",
        "output_dir": str(out),
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "predict_with_generate": True,
        "generation_max_length": 8,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "load_best_model_at_end": True,
        "metric_for_best_model": "my_overlap_accuracy",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(path)]) == 0
    for split in ("eval", "test"):
        results = json.loads((out / f"{split}_results.json").read_text())
        assert results[f"{split}_my_overlap_counts_pairs"] == 6.0
        assert 0.0 <= results[f"{split}_my_overlap_accuracy"] <= 1.0 and f"{split}_exact_match" in results
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] is not None and state["best_model_checkpoint"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test"]) == 0
    assert "| my_overlap_counts_pairs | 6.0000 |" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- text_metric_scorer
def test_text_metric_scorer_batches_a_module_with_use_aggregator():
    rng = random.Random(6)
    references = [_sentence(rng) for _ in range(12)]
    candidates = [_perturb(rng, reference) for reference in references]
    module = metrics.load_metric("rouge")
    calls = []
    compute = module.compute
    module.compute = lambda **kwargs: calls.append(kwargs) or compute(**kwargs)
    scores = metrics.text_metric_scorer(module, None, key="rougeL")(candidates, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [100 * scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]
    assert scores.dtype == torch.float64 and scores.tolist() == pytest.approx(expected)
    assert len(calls) == 1 and calls[0]["use_aggregator"] is False


def test_text_metric_scorer_decodes_ids_and_scores_pair_by_pair_otherwise(tmp_path):
    rng = random.Random(7)
    references = [_sentence(rng) for _ in range(5)]
    candidates = [_perturb(rng, reference) for reference in references]
    tokenizer = train_tokenizer(iter(references + candidates), "wordlevel")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    as_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in candidates]
    padded = [row + [eos] + [pad] * 3 for row in as_ids]  # cut at EOS, padding ignored
    score = metrics.text_metric_scorer("bleu_chrf", tokenizer, key="bleu")
    scores = score(padded, references)
    expected = [sacrebleu.corpus_bleu([c], [[r]]).score for c, r in zip(candidates, references)]
    assert scores.tolist() == pytest.approx(expected) and len(set(expected)) > 1
    width = max(map(len, padded))
    tensor = torch.tensor([row + [-100] * (width - len(row)) for row in padded])
    assert torch.equal(score(tensor, references), scores)
    user = metrics.text_metric_scorer(str(_user_module(tmp_path)), tokenizer, key="accuracy")
    assert user(candidates[:2] + references[2:3], references[:3]).tolist() == [
        float(candidates[0] == references[0]),
        float(candidates[1] == references[1]),
        1.0,
    ]


def test_text_metric_scorer_errors_name_the_problem(tmp_path):
    score = metrics.text_metric_scorer("rouge", None)
    with pytest.raises(ValueError, match=r"module 'rouge' returns \['rouge1', 'rouge2', 'rougeL', 'rougeLsum'\], not"):
        score(["a"], ["a"])
    with pytest.raises(ValueError, match="candidates holds token ids but no tokenizer was given"):
        score([[1, 2]], ["a"])
    with pytest.raises(ValueError, match="2 candidates for 1 references"):
        metrics.text_metric_scorer("rouge", None, key="rouge1")(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"module 'rouge' returns no 'bleu'; it returns \['rouge1'"):
        metrics.text_metric_scorer("rouge", None, key="bleu")(["a"], ["a"])
    assert metrics.text_metric_scorer("rouge", None, key="rouge1")([], []).shape == (0,)


# ------------------------------------------------------------------------------------------------------ real data
CONLL = SHARED_DATA / "conll2003"
MULTI30K = SHARED_DATA / "multi30k"
SAMSUM = SHARED_DATA / "samsum"


@requires_shared_data("conll2003", "valid.txt")
def test_span_f1_on_conll2003_equals_seqeval():
    """CoNLL-2003 validation (3,250 sentences), every gold sequence with some tags changed."""
    task = get_task(DataArguments(task="ner", validation_file=str(CONLL / "valid.txt")))
    gold = [target.split() for target in task.load()["validation"]["target"]]
    assert len(gold) == 3250
    rng = random.Random(8)
    pred = [_corrupt_tags(rng, tags, 0.1) for tags in gold]
    own = task.score([" ".join(p) for p in pred], [" ".join(g) for g in gold])
    result = metrics.load_metric("span_f1").compute(predictions=pred, references=gold)
    assert result == pytest.approx(own)
    assert result["f1"] == pytest.approx(f1_score(gold, pred))
    assert result["precision"] == pytest.approx(precision_score(gold, pred))
    assert result["recall"] == pytest.approx(recall_score(gold, pred))
    report = classification_report(gold, pred, output_dict=True)
    for entity_type in ("PER", "LOC", "ORG", "MISC"):
        assert result[f"f1_{entity_type}"] == pytest.approx(report[entity_type]["f1-score"])
    assert result["partial_f1"] == pytest.approx(corpus_partial_f1(pred, gold)["partial_f1"])
    assert 0.3 < result["f1"] < 0.95


@requires_shared_data("multi30k", "val.de")
def test_bleu_chrf_and_token_bleu_on_multi30k_equal_sacrebleu():
    """Multi30k validation (1,014 German captions) against changed copies of themselves."""
    task = get_task(DataArguments(task="translation", validation_file=str(MULTI30K / "val")))
    references = task.load()["validation"]["target"]
    assert len(references) == 1014
    rng = random.Random(9)
    predictions = [_perturb(rng, reference) for reference in references]
    result = metrics.load_metric("bleu_chrf").compute(predictions=predictions, references=references)
    assert result == task.score(predictions, references)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score, abs=1e-9)
    assert 20 < result["bleu"] < 90
    _check_token_modules(predictions, references)


@requires_shared_data("samsum", "validation.jsonl")
def test_rouge_on_samsum_equals_rouge_score():
    """SAMSum validation (818 summaries) scored against the dialogues' first 30 words (a lead baseline)."""
    task = get_task(
        DataArguments(task="summarization", validation_file=str(SAMSUM / "validation.jsonl"), source_column="dialogue")
    )
    split = task.load()["validation"]
    assert len(split) == 818
    predictions = [" ".join(dialogue.split()[:30]) for dialogue in split["source"]]
    references = split["target"]
    result = metrics.load_metric("rouge").compute(predictions=predictions, references=references)
    assert result == task.score(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references)]
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert result[name] == pytest.approx(100 * np.mean([s[name].fmeasure for s in direct]), abs=1e-9)
    assert 10 < result["rouge1"] < 40


# ----------------------------------------------------------------------------------------------- documented examples
def _python_block(page: Path, containing: str) -> str:
    blocks = page.read_text(encoding="utf-8").split("```python\n")[1:]
    return next(block.split("```")[0] for block in blocks if containing in block)


@pytest.mark.parametrize("page", ["README.md", "docs/metrics.md"])
def test_the_documented_compute_metrics_gives_the_translation_tasks_numbers(page):
    """The `compute_metrics` of the README's drop-in example and of docs/metrics.md, run on generated ids (a BART-like
    decoder start token, EOS and padding), equal the translation task's own `compute_metrics`."""
    code = _python_block(ROOT / page, "def compute_metrics")
    code = code.split("\nargs = ")[0]  # the README's block goes on to build a trainer
    rng = random.Random(10)
    references = [_sentence(rng) for _ in range(8)]
    predictions = [_perturb(rng, reference) for reference in references]
    tokenizer = train_tokenizer(iter(references + predictions), "bpe", vocab_size=300)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    generated = [[eos, *tokenizer(p, add_special_tokens=False)["input_ids"], eos] for p in predictions]
    labels = [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in references]
    width = max(map(len, generated + labels))
    prediction = EvalPrediction(
        np.array([row + [pad] * (width - len(row)) for row in generated]),
        np.array([row + [-100] * (width - len(row)) for row in labels]),
    )
    namespace = {"tokenizer": tokenizer}
    exec(code, namespace)
    documented = namespace["compute_metrics"](prediction)
    task = get_task(DataArguments(task="translation", train_file="unused"))
    own = task.compute_metrics_fn(tokenizer, decoder_start_token_id=eos)(prediction)
    assert set(own) == set(documented) | set(OUTPUT_DIAGNOSTICS)  # the task adds its output diagnostics
    assert documented == pytest.approx({k: own[k] for k in documented}) and 0 < own["bleu"] < 100
