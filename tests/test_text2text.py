"""The text2text task: TRL's prompt / completion data from files or data sets, selectable metrics, and every
sequence-level objective trained on it end to end with tiny GPT-2, BART and T5 models."""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import yaml
from conftest import SHARED_DATA, requires_shared_data
from datasets import Dataset, DatasetDict
from rouge_score import rouge_scorer

from hf_seqobj.arguments import DataArguments
from hf_seqobj.cli import load_yaml_config, main
from hf_seqobj.tasks import get_task
from hf_seqobj.tasks.text2text import TEXT2TEXT_METRICS, exact_match


ROOT = Path(__file__).resolve().parents[1]
WORDS = "red green blue cat dog bird runs sleeps eats big small old new".split()


def _pairs(count: int, seed: int, source: str = "prompt", target: str = "completion") -> list[dict[str, str]]:
    """`count` examples of a small task: reverse the words of the prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
        rows.append({source: "reverse: " + " ".join(words), target: " ".join(reversed(words))})
    return rows


def _write_splits(folder, train: int = 32, evaluation: int = 8) -> dict[str, str]:
    """Writes a train .jsonl, a validation .json (an array) and a test .csv; returns the data settings."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in _pairs(train, 0))
    (folder / "validation.json").write_text(json.dumps(_pairs(evaluation, 1)), encoding="utf-8")
    with open(folder / "test.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["prompt", "completion"])
        writer.writeheader()
        writer.writerows(_pairs(evaluation, 2))
    return {
        "train_file": str(folder / "train.jsonl"),
        "validation_file": str(folder / "validation.json"),
        "test_file": str(folder / "test.csv"),
    }


# ----------------------------------------------------------------------------------------------------------- data
def test_prompt_completion_files_in_every_format(tmp_path):
    files = _write_splits(tmp_path)
    splits = get_task(DataArguments(task="text2text", **files)).load()
    assert {split: len(data) for split, data in splits.items()} == {"train": 32, "validation": 8, "test": 8}
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        expected = _pairs(8, seed)[0]
        assert splits[split][0] == {"source": expected["prompt"], "target": expected["completion"]}


def test_dataset_directory_with_other_columns(tmp_path):
    rows = _pairs(6, 3, source="dialogue", target="summary")
    data = Dataset.from_list([{**row, "id": str(index)} for index, row in enumerate(rows)])
    DatasetDict({"train": data, "validation": data.select(range(2))}).save_to_disk(str(tmp_path / "hub"))
    args = DataArguments(
        task="text2text", dataset_name=str(tmp_path / "hub"), source_column="dialogue", target_column="summary"
    )
    splits = get_task(args).load()
    assert set(splits) == {"train", "validation"}
    assert splits["train"][1] == {"source": rows[1]["dialogue"], "target": rows[1]["summary"]}


def test_data_errors_name_the_place(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"d\.jsonl' has no column 'prompt'; its columns are \['question', 'answer'\]"
    ):
        get_task(DataArguments(task="text2text", train_file=str(jsonl))).load()
    # conversational data (lists of messages) is not a text
    chat = tmp_path / "chat.jsonl"
    rows = [
        {"prompt": "Hi", "completion": "Hello"},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}]},
    ]
    chat.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"chat\.jsonl:2: column 'prompt' holds \[\{"):
        get_task(DataArguments(task="text2text", train_file=str(chat))).load()
    with pytest.raises(ValueError, match=r"text2text files must end in \.jsonl, \.json or \.csv, not \.txt"):
        get_task(DataArguments(task="text2text", train_file=str(tmp_path / "d.txt"))).load()


# -------------------------------------------------------------------------------------------------------- metrics
PREDICTIONS = ["the cats are sitting on the mat", "a quick  brown fox", "hello world"]
REFERENCES = ["the cat sat on the mat", "a quick brown fox", "hello there world"]


def test_metrics_equal_the_libraries_and_can_be_chosen():
    scores = get_task(DataArguments(task="text2text", train_file="unused.jsonl")).score(PREDICTIONS, REFERENCES)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for rouge_type in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = np.mean([scorer.score(r, p)[rouge_type].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)])
        assert scores[rouge_type] == pytest.approx(100 * expected)
    assert scores["exact_match"] == pytest.approx(1 / 3)  # whitespace runs do not count
    assert exact_match([], []) == 0.0

    chosen = DataArguments(task="text2text", train_file="unused.jsonl", text2text_metrics=["exact_match", "chrf"])
    assert set(get_task(chosen).score(PREDICTIONS, REFERENCES)) == {"chrf", "exact_match"}
    single = DataArguments(task="text2text", train_file="unused.jsonl", text2text_metrics="rouge")
    assert set(get_task(single).score(PREDICTIONS, REFERENCES)) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


@pytest.mark.parametrize("metrics", [["bleu", "meteor"], [], ["bleu", "bleu"]])
def test_unknown_metrics_are_an_error(metrics):
    args = DataArguments(task="text2text", train_file="unused.jsonl", text2text_metrics=metrics)
    with pytest.raises(ValueError, match=rf"text2text_metrics must be .* from {re.escape(str(TEXT2TEXT_METRICS))}"):
        get_task(args)


# -------------------------------------------------------------------------------------------- objectives, end to end
RUNS = {
    "mle": {"objective": "mle"},
    "dagger_bleu": {"objective": "dagger", "oracle": "bleu"},
    "dagger_rouge": {"objective": "dagger", "oracle": "rougeL"},
    "scheduled_sampling": {"objective": "scheduled_sampling"},
    "raml": {"objective": "raml", "raml_num_samples": 3},
    "data_noising": {"objective": "data_noising"},
    "spg": {"objective": "spg"},
    "interpolation": {"objective": "interpolation"},
    "sequencematch": {"objective": "sequencematch"},
}
"""One run per objective (DAgger with both kinds of beam oracle): a `compare` config of the command line."""

OWN_LOG = {"dagger_bleu": "oracle_agreement", "dagger_rouge": "oracle_agreement", "scheduled_sampling": "ss_eps"}
"""Runs whose objective's own logged figure is checked by name (the others: any figure beyond the Trainer's)."""

STOCK_LOGS = {"loss", "grad_norm", "learning_rate", "epoch", "step"}


@pytest.mark.parametrize("architecture", ["gpt2", "bart", "t5"])
def test_every_objective_trains_on_prompt_completion_files(tmp_path, capsys, architecture):
    """`hf-seqobj train` with a `compare` of every objective: 2 steps each from a tiny model built offline, then
    validation and test scores with generation."""
    files = _write_splits(tmp_path / "data")
    out = tmp_path / "out"
    config = {
        "task": "text2text",
        **files,
        "architecture": architecture,
        "model_size": "tiny",
        "output_dir": str(out),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "predict_with_generate": True,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        ("generation_max_new_tokens" if architecture == "gpt2" else "generation_max_length"): 12,
        "compare": RUNS,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| run | objective | starts from | test bleu | test chrf | test rouge1 |" in printed
    for name, settings in RUNS.items():
        assert f"| {name} | {settings['objective']} | scratch |" in printed
        state = json.loads((out / name / "trainer_state.json").read_text())
        assert state["global_step"] == 2
        train_logs = {key: value for entry in state["log_history"] if "loss" in entry for key, value in entry.items()}
        assert math.isfinite(train_logs["loss"]), f"{name}: loss {train_logs['loss']}"
        own = OWN_LOG.get(name)
        if own is not None:
            assert own in train_logs, f"{name} did not log {own}: {sorted(train_logs)}"
        elif settings["objective"] != "mle":
            assert set(train_logs) - STOCK_LOGS, f"{name} logged nothing of its own: {sorted(train_logs)}"
        test = json.loads((out / name / "test_results.json").read_text())
        for key in ("test_bleu", "test_chrf", "test_rougeL", "test_exact_match"):
            assert key in test and math.isfinite(test[key]), f"{name}: {key} missing or not finite in {test}"


# ------------------------------------------------------------------------------------------------------ real data
SAMSUM_CONFIG = ROOT / "configs" / "text2text_samsum_bart.yaml"


@requires_shared_data("samsum", "train.jsonl")
def test_samsum_config_trains_a_few_steps(tmp_path):
    """The SAMSum config's files are the real data; a few steps on a small part of it train and score with ROUGE."""
    config = load_yaml_config(SAMSUM_CONFIG)
    for key, name in (("train_file", "train"), ("validation_file", "validation"), ("test_file", "test")):
        assert (ROOT / config[key]).resolve() == (SHARED_DATA / "samsum" / f"{name}.jsonl").resolve()
    flags = {
        "validation_file": str(SHARED_DATA / "samsum" / "validation.jsonl"),
        "test_file": str(SHARED_DATA / "samsum" / "test.jsonl"),
        "output_dir": str(tmp_path / "out"),
        "max_train_samples": "64",
        "max_eval_samples": "8",
        "max_steps": "3",
        "vocab_size": "2000",
        "per_device_train_batch_size": "8",
        "eval_strategy": "no",
        "save_strategy": "no",
        "generation_max_length": "24",
        "use_cpu": "true",
        "disable_tqdm": "true",
        "save_eval_predictions": "true",
    }
    # SAMSum's train split holds one empty dialogue (line 6055): an error unless the config skips it
    assert config["skip_invalid_examples"] is True
    strict = DataArguments(
        task="text2text",
        train_file=str(SHARED_DATA / "samsum" / "train.jsonl"),
        source_column="dialogue",
        target_column="summary",
    )
    with pytest.raises(ValueError, match=r"train\.jsonl:6055: column 'dialogue' holds ''"):
        get_task(strict).load()
    flags["train_file"] = str(SHARED_DATA / "samsum" / "train.jsonl")
    argv = [item for key, value in flags.items() for item in (f"--{key}", value)]
    assert main(["train", str(SAMSUM_CONFIG), *argv]) == 0
    results = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert {"test_rougeL", "test_bleu"} <= set(results) and "test_exact_match" not in results
    # the decoded texts beside the results: test always, the final evaluation with save_eval_predictions
    for split, data in (("eval", "validation"), ("test", "test")):
        lines = (tmp_path / "out" / f"{split}_predictions.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        expected = [json.loads(line) for line in (SHARED_DATA / "samsum" / f"{data}.jsonl").open(encoding="utf-8")][:8]
        assert [row["source"] for row in rows] == [record["dialogue"] for record in expected]
        assert all(
            set(row) == {"source", "prediction", "reference", "eos_reached"} and row["reference"] for row in rows
        )
