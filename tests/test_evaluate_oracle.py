"""An `evaluate` module as the sentence metric of a DAgger oracle (`oracle: evaluate`, `register_evaluate_oracle`).

The module used here exists only as a user's local script (written into the test's folder): a word-overlap F1 on
decoded text that also counts its calls in a file, so the tests see that training went through it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_seqobj.metrics import EVALUATE_ORACLE, register_evaluate_oracle
from hf_seqobj.oracles import ORACLES, SentenceMetricOracle, make_oracle


MODULE = """
import collections

import datasets
import evaluate

CALLS = {calls!r}


class WordF1(evaluate.Metric):
    def _info(self):
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description="clipped word-overlap F1 of each pair",
            citation="",
            inputs_description="predictions and references: texts",
            features=datasets.Features({{"predictions": text, "references": text}}),
        )

    def _compute(self, predictions, references, use_aggregator=True):
        with open(CALLS, "a") as handle:
            handle.write(f"{{len(predictions)}}\\n")
        scores = []
        for prediction, reference in zip(predictions, references):
            p, r = prediction.split(), reference.split()
            overlap = sum((collections.Counter(p) & collections.Counter(r)).values())
            scores.append(2 * overlap / (len(p) + len(r)) if p or r else 1.0)
        return {{"f1": scores if not use_aggregator else sum(scores) / max(len(scores), 1)}}
"""


def _module(folder: Path) -> tuple[Path, Path]:
    """Writes the local module `word_f1` and returns (its folder, the file that counts its calls)."""
    calls = folder / "calls.txt"
    module = folder / "word_f1"
    module.mkdir(parents=True, exist_ok=True)
    (module / "word_f1.py").write_text(MODULE.format(calls=str(calls)), encoding="utf-8")
    return module, calls


def test_dagger_trains_with_a_metric_that_is_only_a_local_evaluate_module(make_trainer, tmp_path):
    module, calls = _module(tmp_path / "metric")
    trainer = make_trainer(
        "bart", objective="dagger", oracle=EVALUATE_ORACLE, oracle_metric=str(module), dagger_beta=0.0, max_steps=2
    )
    assert isinstance(trainer.objective.oracle, SentenceMetricOracle)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    assert changed and calls.exists() and sum(int(line) for line in calls.read_text().split()) > 0
    scores = [entry["oracle_score"] for entry in trainer.state.log_history if "oracle_score" in entry]
    assert len(scores) == 2 and all(0.0 <= value <= 1.0 for value in scores)


def test_the_evaluate_oracle_follows_its_module(tmp_path):
    from hf_seqobj.modeling import train_tokenizer

    module, _ = _module(tmp_path)
    tokenizer = train_tokenizer(["a b c d e", "the cat sat on the mat"], tokenizer_type="wordlevel")
    oracle = make_oracle(EVALUATE_ORACLE, tokenizer, metric=str(module), metric_key="f1")
    ids = tokenizer(["the cat sat on the mat"], add_special_tokens=False)["input_ids"][0]
    eos = tokenizer.eos_token_id
    reference = torch.tensor([ids + [eos]])
    # after a substituted second word, the oracle asks for the third reference word; at the reference length, EOS
    prefix = torch.tensor([[ids[0], ids[3], ids[2], ids[3], ids[4], ids[5]]])
    labels = oracle(prefix, reference)
    assert labels[0, :2].tolist() == ids[:2] and labels[0, 2] == ids[2]
    assert oracle.next_token(prefix, torch.tensor([6]), reference).tolist() == [eos]
    register_evaluate_oracle("word_f1_test", str(module), key="f1", replace=True)
    try:
        assert ORACLES["word_f1_test"].output == "text"
        assert torch.equal(make_oracle("word_f1_test", tokenizer)(prefix, reference), labels)
    finally:
        ORACLES.pop("word_f1_test")  # the registry is global: leave it as the other tests expect it


def test_evaluate_oracle_settings_are_checked(tmp_path):
    from hf_seqobj import SeqObjSeq2SeqTrainingArguments

    with pytest.raises(ValueError, match="oracle 'evaluate' needs oracle_metric"):
        SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective="dagger", oracle="evaluate")
    with pytest.raises(ValueError, match="read by oracle 'evaluate' only, not 'bleu'"):
        SeqObjSeq2SeqTrainingArguments(
            output_dir=str(tmp_path), objective="dagger", oracle="bleu", oracle_metric="rouge"
        )
