"""Smoke runs on the real data in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import json

from conftest import SHARED_DATA, requires_shared_data

from hf_seqobj.arguments import DataArguments
from hf_seqobj.cli import main
from hf_seqobj.modeling import train_tokenizer
from hf_seqobj.tasks import get_task


CONLL = SHARED_DATA / "conll2003"
MULTI30K = SHARED_DATA / "multi30k"


@requires_shared_data("conll2003", "train.txt")
def test_conll2003_loads_with_the_published_sizes():
    task = get_task(
        DataArguments(
            task="ner",
            train_file=str(CONLL / "train.txt"),
            validation_file=str(CONLL / "valid.txt"),
            test_file=str(CONLL / "test.txt"),
        )
    )
    splits = task.load()
    assert {split: len(data) for split, data in splits.items()} == {"train": 14041, "validation": 3250, "test": 3453}
    assert task.extra_tokens(splits) == sorted(f"{p}-{t}" for p in "BI" for t in ("LOC", "MISC", "ORG", "PER")) + ["O"]


@requires_shared_data("conll2003", "train.txt")
def test_conll2003_smoke_run(tmp_path):
    """A tiny BART tagger on 300 CoNLL-2003 sentences: trains, lowers its loss and scores with seqeval."""
    out = tmp_path / "conll"
    config = tmp_path / "conll.yaml"
    config.write_text(
        f"task: ner\ntrain_file: {CONLL / 'train.txt'}\nvalidation_file: {CONLL / 'valid.txt'}\n"
        "max_train_samples: 300\nmax_eval_samples: 32\narchitecture: bart\nmodel_size: tiny\n"
        f"output_dir: {out}\nmax_steps: 30\nper_device_train_batch_size: 16\nlearning_rate: 0.003\n"
        "logging_steps: 5\npredict_with_generate: true\ngeneration_max_length: 128\nreport_to: none\n"
        "use_cpu: true\nsave_strategy: 'no'\ndisable_tqdm: true\n"
    )
    assert main(["train", str(config)]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0]
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= results["eval_f1"] <= 1.0 and "eval_length_mismatch_rate" in results


@requires_shared_data("multi30k", "train.en")
def test_multi30k_loads_and_tokenizes():
    task = get_task(
        DataArguments(
            task="translation",
            train_file=str(MULTI30K / "train"),
            validation_file=str(MULTI30K / "val"),
            test_file=str(MULTI30K / "test_2016_flickr"),
        )
    )
    splits = task.load()
    assert {split: len(data) for split, data in splits.items()} == {"train": 29000, "validation": 1014, "test": 1000}
    small = splits["train"].select(range(500))
    tokenizer = train_tokenizer(task.training_text({"train": small}), "bpe", vocab_size=2000)
    from datasets import DatasetDict

    tokenized = task.tokenize(DatasetDict({"train": small}), tokenizer, decoder_only=False)["train"]
    assert len(tokenized) == 500 and all(ids[-1] == tokenizer.eos_token_id for ids in tokenized["labels"])
    decoded = tokenizer.decode(tokenized[0]["labels"][:-1]).strip()
    assert decoded == small[0]["target"].strip()
