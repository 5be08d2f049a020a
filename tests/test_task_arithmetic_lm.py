"""The arithmetic and language-modelling tasks."""

from __future__ import annotations

import math

import pytest

from hf_seqobj.arguments import DataArguments
from hf_seqobj.tasks import get_task
from hf_seqobj.tasks.arithmetic import arithmetic_problems, to_digits
from hf_seqobj.tasks.language_modeling import distinct_n, repetition_rate


def test_to_digits():
    assert to_digits(255, 16) == ["f", "f"]
    assert to_digits(-5, 2) == ["-", "1", "0", "1"]
    assert to_digits(0, 10) == ["0"]
    with pytest.raises(ValueError, match="base"):
        to_digits(3, 1)


@pytest.mark.parametrize("base", [2, 10, 16])
def test_arithmetic_problems_are_correct(base):
    data = arithmetic_problems(200, base=base, max_digits=4, seed=1)
    ops = set()
    for source, target in zip(data["source"], data["target"], strict=True):
        tokens = source.split()
        op = "+" if "+" in tokens else "-"
        ops.add(op)
        split = tokens.index(op, 1)
        a = int("".join(tokens[:split]), base)
        b = int("".join(tokens[split + 1 :]), base)
        expected = a + b if op == "+" else a - b
        assert int(target.replace(" ", ""), base) == expected
        assert all(len(operand) <= 4 for operand in (tokens[:split], tokens[split + 1 :]))
    assert ops == {"+", "-"}
    assert arithmetic_problems(5, seed=3)["source"] == arithmetic_problems(5, seed=3)["source"]


def test_arithmetic_task_loads_scores_and_validates():
    args = DataArguments(
        task="arithmetic", dataset_name="synthetic", synthetic_train_size=50, synthetic_eval_size=10, arithmetic_base=8
    )
    task = get_task(args)
    splits = task.load()
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [50, 10, 10]
    assert splits["train"]["source"] != splits["test"]["source"]
    scores = task.score(["1 2", "- 3", "1 x", ""], ["1 2", "- 4", "1 2", "5"])
    assert scores == {"accuracy": 0.25, "well_formed_rate": 0.5}
    assert "7" in " ".join(task.training_text(splits))
    with pytest.raises(ValueError, match="arithmetic_base"):
        DataArguments(task="arithmetic", dataset_name="synthetic", arithmetic_base=40)
    with pytest.raises(ValueError, match="arithmetic_operations"):
        DataArguments(task="arithmetic", dataset_name="synthetic", arithmetic_operations="*")


def test_sample_quality_metrics():
    assert distinct_n([["a", "b"], ["a", "c"]], 1) == 0.75
    assert distinct_n([["a"]], 2) == 0.0
    assert repetition_rate("a b c d a b c d".split(), 4) == 1 / 5
    assert repetition_rate("a b".split(), 4) == 0.0


def test_lm_task_from_a_text_file(tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("one two three four five six\n\nshort line\nalpha beta gamma delta epsilon\n", encoding="utf-8")
    args = DataArguments(task="lm", train_file=str(text), validation_file=str(text), lm_prompt_words=3)
    task = get_task(args)
    splits = task.load()
    assert splits["train"]["source"] == ["one two three", "alpha beta gamma"]
    assert splits["train"]["target"] == ["four five six", "delta epsilon"]
    scores = task.score(["a b a b a b", "c d"], ["x", "y"])
    assert math.isclose(scores["distinct_1"], 4 / 8) and scores["mean_length"] == 4.0
    with pytest.raises(ValueError, match="lm_prompt_words"):
        get_task(DataArguments(task="lm", train_file=str(text), lm_prompt_words=10)).load()


def test_lm_eval_logs_perplexity(tmp_path, tiny_checkpoints):
    from hf_seqobj.modeling import create_offline_model, load_model_and_tokenizer
    from hf_seqobj.run import build_trainer
    from hf_seqobj.trainers import SeqObjTrainingArguments

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"the cat number {i} sat on the mat and slept" for i in range(20)), encoding="utf-8")
    task = get_task(DataArguments(task="lm", train_file=str(text), validation_file=str(text), lm_prompt_words=4))
    splits = task.load()
    path = create_offline_model("gpt2", task.training_text(splits), tmp_path / "model", tokenizer_type="wordlevel")
    model, tokenizer = load_model_and_tokenizer(path)
    tokenized = task.tokenize(splits, tokenizer, decoder_only=True)
    args = SeqObjTrainingArguments(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        predict_with_generate=True,
        generation_max_new_tokens=6,
        per_device_eval_batch_size=8,
    )
    trainer = build_trainer(model, tokenizer, task, tokenized, args)
    metrics = trainer.evaluate()
    assert "eval_distinct_1" in metrics and "eval_repetition_4" in metrics
    logged = trainer.state.log_history[-1]
    assert math.isclose(logged["eval_perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-6)
