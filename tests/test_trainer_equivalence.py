"""With objective="mle" our trainers train exactly as the stock Transformers trainers (docs/mle.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import TRAINER_DEFAULTS
from transformers import (
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
)

from hf_seqobj import SeqObjSeq2SeqTrainer, SeqObjSeq2SeqTrainingArguments, SeqObjTrainer, SeqObjTrainingArguments
from hf_seqobj.modeling import load_model_and_tokenizer


COMMON = {**TRAINER_DEFAULTS, "max_steps": 3, "per_device_train_batch_size": 4, "seed": 7}


def _train(trainer_class, args_class, path, task, splits, tmp_path, name, **extra):
    model, tokenizer = load_model_and_tokenizer(path, extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder)
    args = args_class(output_dir=str(tmp_path / name), **COMMON, **extra)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model if model.config.is_encoder_decoder else None),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "arch, accumulation",
    [("gpt2", 1), ("gpt2", 2), ("bart", 1), ("t5", 1)],
)
def test_mle_matches_stock_trainer(arch, accumulation, tiny_checkpoints, ner_task, tmp_path):
    """Where the stock Trainer scales the loss right, ours is the same (BART / T5 with accumulation: next test)."""
    task, splits = ner_task
    if arch == "gpt2":
        stock, ours = (Trainer, TrainingArguments), (SeqObjTrainer, SeqObjTrainingArguments)
    else:
        stock, ours = (
            (Seq2SeqTrainer, Seq2SeqTrainingArguments),
            (SeqObjSeq2SeqTrainer, SeqObjSeq2SeqTrainingArguments),
        )
    extra = {"gradient_accumulation_steps": accumulation}
    stock_losses, stock_params = _train(*stock, tiny_checkpoints[arch], task, splits, tmp_path, "stock", **extra)
    our_losses, our_params = _train(
        *ours, tiny_checkpoints[arch], task, splits, tmp_path, "ours", objective="mle", **extra
    )
    assert len(stock_losses) == 3 and len(our_losses) == 3
    assert our_losses == pytest.approx(stock_losses, abs=1e-6)
    initial, _ = load_model_and_tokenizer(tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits))
    moved = max((stock_params[n] - p).abs().max().item() for n, p in initial.named_parameters())
    assert moved > 1e-4, "training did not change the parameters, so the comparison would prove nothing"
    for name, value in stock_params.items():
        torch.testing.assert_close(our_params[name], value, atol=1e-6, rtol=0, msg=f"parameter {name} differs")


def test_trainer_rejects_stock_arguments(tiny_checkpoints, tmp_path):
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints["gpt2"])
    with pytest.raises(TypeError, match="SeqObjTrainingArguments"):
        SeqObjTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))


def test_unknown_objective_is_named(tmp_path):
    with pytest.raises(ValueError, match="'no_such_objective'.*mle"):
        SeqObjTrainingArguments(output_dir=str(tmp_path), objective="no_such_objective")


@pytest.mark.parametrize("arch", ["gpt2", "bart", "t5"])
def test_mle_with_accumulation_makes_the_update_of_one_big_batch(arch, make_trainer):
    """BART's and T5's losses ignore num_items_in_batch, so the stock Trainer gets this wrong for them; we don't."""
    from conftest import parameters

    big = make_trainer(arch, "big", dropout=False, objective="mle", max_steps=2, per_device_train_batch_size=8)
    small = make_trainer(
        arch,
        "small",
        dropout=False,
        objective="mle",
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    big.train()
    small.train()
    for name, value in parameters(big.model).items():
        torch.testing.assert_close(parameters(small.model)[name], value, atol=2e-5, rtol=1e-4, msg=name)
