"""The objective registry, the MLE loss as a pure function, and objective metrics in the Trainer's log."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from hf_seqobj import OBJECTIVES, SeqObjTrainer, SeqObjTrainingArguments, get_objective, register_objective
from hf_seqobj.modeling import load_model_and_tokenizer
from hf_seqobj.objectives import MLEObjective, Objective


def test_registry_lookup_and_errors():
    assert get_objective("mle") is MLEObjective
    assert {"mle", "dagger", "scheduled_sampling"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match=r"Unknown objective 'daggr' \(did you mean 'dagger'\?\); registered .*mle"):
        get_objective("daggr")

    class Unnamed(Objective):
        def training_loss(self, model, inputs, num_items_in_batch):
            return torch.zeros(()), None

    with pytest.raises(ValueError, match="non-empty identifier string, got ''"):
        register_objective("")
    with pytest.raises(ValueError, match="'mle' is already registered by MLEObjective"):
        register_objective("mle")(Unnamed)
    with pytest.raises(ValueError, match="decorates Objective subclasses"):
        register_objective("not_an_objective")(int)
    with pytest.raises(ValueError, match="must be dataclasses with a validate"):
        register_objective("no_validate", settings=(int,))
    assert "not_an_objective" not in OBJECTIVES


def test_registration_is_the_one_source_of_settings_papers_and_validation():
    """The argument classes inherit every registered settings dataclass, and validate through each one's validate()."""
    from hf_seqobj.objectives.base import registered_settings
    from hf_seqobj.trainers import ObjectiveArguments

    for name, cls in OBJECTIVES.items():
        assert cls.name == name
        for setting in cls.settings:
            assert issubclass(ObjectiveArguments, setting), (name, setting)
    assert set(registered_settings()) == {s for cls in OBJECTIVES.values() for s in cls.settings}
    assert get_objective("dagger").papers and all("@" in paper for paper in get_objective("dagger").papers)
    with pytest.raises(ValueError, match="dagger_beta must be in"):
        SeqObjTrainingArguments(output_dir="unused", objective="mle", dagger_beta=2.0)


@pytest.mark.parametrize("shift", [True, False])
def test_token_nll_equals_cross_entropy(shift):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :3] = -100
    loss = MLEObjective.token_nll(logits, labels, shift=shift)
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    expected = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(loss, expected)
    total = MLEObjective.token_nll(logits, labels, num_items_in_batch=100)
    torch.testing.assert_close(total, expected * keep.sum() / 100)
    with pytest.raises(ValueError, match=r"disagree on \[batch, length\]"):
        MLEObjective.token_nll(logits, labels[:, :-1])


@pytest.mark.parametrize("arch", ["gpt2", "bart", "t5"])
def test_token_nll_equals_the_models_loss(arch, tiny_checkpoints, ner_task):
    task, splits = ner_task
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(splits, tokenizer, decoder_only=arch == "gpt2")["train"].select(range(4))
    collator = DataCollatorForSeq2Seq(tokenizer, model=None if arch == "gpt2" else model)
    batch = collator(list(tokenized))
    model.eval()
    with torch.no_grad():
        outputs = model(**batch)
    torch.testing.assert_close(
        MLEObjective.token_nll(outputs.logits, batch["labels"], shift=arch == "gpt2"), outputs.loss
    )


def test_a_registered_objective_is_selectable_and_logs_its_metrics(tiny_checkpoints, ner_task, tmp_path):
    """Adding an objective is registering a class with a training loss: the trainer routes compute_loss through the
    template, counts the micro-batches of each step and logs the objective's metrics."""
    seen_micro_steps = []

    @register_objective("test_half_mle")
    class HalfMLE(Objective):
        def training_loss(self, model, inputs, num_items_in_batch):
            seen_micro_steps.append(self.micro_step)
            loss, outputs = self.trainer.stock_compute_loss(model, inputs, True, num_items_in_batch)
            self.record_metric("full_loss", loss)
            return loss / 2, outputs

    try:
        task, splits = ner_task
        model, tokenizer = load_model_and_tokenizer(tiny_checkpoints["gpt2"], extra_tokens=task.extra_tokens(splits))
        tokenized = task.tokenize(splits, tokenizer, decoder_only=True)
        args = SeqObjTrainingArguments(
            output_dir=str(tmp_path),
            objective="test_half_mle",
            max_steps=2,
            logging_steps=1,
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = SeqObjTrainer(
            model=model,
            args=args,
            train_dataset=tokenized["train"],
            processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer),
        )
        trainer.train()
        assert seen_micro_steps == [0, 1, 0, 1]
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert len(logged) == 2
        for entry in logged:
            # the step's loss is l1 / 2 + l2 / 2 (each l normalised by the step's token count); the metric's mean
            # is (l1 + l2) / 2
            assert entry["loss"] == pytest.approx(entry["full_loss"], rel=1e-4)

        # The template: evaluation is the stock loss (not halved), and return_outputs packs the outputs.
        batch = trainer._prepare_inputs(DataCollatorForSeq2Seq(tokenizer)(list(tokenized["train"].select(range(4)))))
        model.eval()
        with torch.no_grad():
            stock = trainer.stock_compute_loss(model, dict(batch))
            evaluated, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
            assert torch.equal(evaluated, stock) and torch.equal(outputs.loss, stock)
            model.train()
            trained, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
            torch.testing.assert_close(trained, outputs.loss / 2)
            assert isinstance(trainer.compute_loss(model, dict(batch)), torch.Tensor)
    finally:
        OBJECTIVES.pop("test_half_mle", None)


def test_objectives_add_only_the_callbacks_they_need(make_trainer):
    """mle adds none (its callback list is the stock one); objectives that time parts of their step get the step
    clock, and those with checkpointed state (SequenceMatch's replay buffer) the state callback."""
    from hf_seqobj.objectives.base import ObjectiveStateCallback, StepClockCallback

    def added(trainer):
        return [type(cb) for cb in trainer.callback_handler.callbacks if type(cb).__module__.startswith("hf_seqobj")]

    assert added(make_trainer("gpt2", objective="mle")) == []
    assert added(make_trainer("gpt2", objective="dagger")) == [StepClockCallback]
    assert added(make_trainer("gpt2", objective="sequencematch")) == [StepClockCallback, ObjectiveStateCallback]
