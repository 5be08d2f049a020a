"""Scheduled sampling, two-pass form (docs/scheduled_sampling.md)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ARCHITECTURES, parameters

from hf_seqobj.objectives.scheduled_sampling import mix_tokens
from hf_seqobj.objectives.schedules import scheduled_sampling_eps


def test_schedules_follow_their_formulas():
    assert scheduled_sampling_eps(100, "linear", k=1.0, c=0.001) == pytest.approx(0.9)
    assert scheduled_sampling_eps(5000, "linear", k=1.0, c=0.001, eps_min=0.2) == 0.2
    assert scheduled_sampling_eps(10, "exponential", k=0.9) == pytest.approx(0.9**10)
    assert scheduled_sampling_eps(1000, "inverse_sigmoid", k=500) == pytest.approx(500 / (500 + math.exp(2)))
    assert scheduled_sampling_eps(10**7, "inverse_sigmoid", k=500) == 0.0
    with pytest.raises(ValueError, match="'cosine'"):
        scheduled_sampling_eps(0, "cosine", k=1.0)


def test_mixing_replaces_only_replaceable_tokens_at_rate_one_minus_eps():
    gold = torch.zeros(200, 100, dtype=torch.long)
    predictions = torch.ones_like(gold)
    replaceable = torch.rand(gold.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    generator = torch.Generator().manual_seed(1)
    mixed, replaced = mix_tokens(gold, predictions, replaceable, eps=0.7, generator=generator)
    assert not replaced[~replaceable].any()
    assert torch.equal(mixed, replaced.long())
    rate = replaced[replaceable].float().mean().item()
    assert abs(rate - 0.3) < 0.01


def test_per_row_mixing_draws_do_not_depend_on_padding_or_other_rows():
    gold = torch.zeros(3, 12, dtype=torch.long)
    predictions = torch.ones_like(gold)
    replaceable = torch.zeros_like(gold, dtype=torch.bool)
    replaceable[:, 2:9] = True

    def rows(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    _, replaced = mix_tokens(gold, predictions, replaceable, eps=0.5, generator=rows([1, 2, 3]))
    _, alone = mix_tokens(gold[1:2, :10], predictions[1:2, :10], replaceable[1:2, :10], 0.5, generator=rows([2]))
    assert 0 < int(replaced.sum()) < int(replaceable.sum())
    assert torch.equal(alone[0], replaced[1, :10]) and not replaced[:, 9:].any()
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        mix_tokens(gold, predictions, replaceable, eps=0.5, generator=rows([1, 2]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eps_one_is_teacher_forcing(arch, make_trainer):
    settings = dict(dropout=False, max_steps=2)
    ss = make_trainer(arch, "ss", objective="scheduled_sampling", ss_schedule="linear", ss_k=1.0, ss_c=0.0, **settings)
    mle = make_trainer(arch, "mle", objective="mle", **settings)
    ss.train()
    mle.train()
    for name, value in parameters(mle.model).items():
        torch.testing.assert_close(parameters(ss.model)[name], value, atol=1e-6, rtol=0, msg=name)
    replaced = [entry["ss_replaced_fraction"] for entry in ss.state.log_history if "ss_replaced_fraction" in entry]
    assert replaced == [0.0, 0.0]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_second_pass_sees_the_model_predictions_and_gold_targets(arch, make_trainer):
    """With eps = 0 every target input is the pass-1 prediction; prompt tokens and labels are untouched."""
    trainer = make_trainer(arch, dropout=False, objective="scheduled_sampling", ss_schedule="linear", ss_k=0.0)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    captured = {}
    forward = model.forward

    def spy(*args, **kwargs):
        captured.setdefault("calls", []).append(kwargs)
        return forward(*args, **kwargs)

    model.forward = spy
    model.train()
    trainer.compute_loss(model, dict(batch))
    first, second = captured["calls"]
    labels = batch["labels"]
    with torch.no_grad():
        logits = forward(**{k: v for k, v in first.items()}).logits
    predicted = logits.argmax(-1)
    if model.config.is_encoder_decoder:
        mixed = second["decoder_input_ids"]
        target = labels[:, :-1] != -100
        assert torch.equal(mixed[:, 1:][target], predicted[:, :-1][target])
        assert torch.equal(mixed[:, 0], first["decoder_input_ids"][:, 0])
    else:
        mixed = second["input_ids"]
        target = labels[:, 1:] != -100
        assert torch.equal(mixed[:, 1:][target], predicted[:, :-1][target])
        prompt = labels == -100
        assert torch.equal(mixed[prompt], batch["input_ids"][prompt])
    assert "labels" not in second


@pytest.mark.parametrize("arch, eps", [(arch, eps) for eps in (0.0, 0.5) for arch in ARCHITECTURES])
def test_gradient_accumulation_makes_the_same_update_as_one_big_batch(arch, eps, make_trainer):
    """eps 0.5: each example's mixing draws are its own, whichever micro-batch it falls in."""
    schedule = dict(ss_schedule="linear", ss_k=eps, ss_c=0.0, ss_eps_min=0.0)
    common = dict(dropout=False, objective="scheduled_sampling", max_steps=2, **schedule)
    big = make_trainer(arch, "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    small = make_trainer(arch, "small", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    big.train()
    small.train()
    if eps:
        replaced = [entry["ss_replaced_fraction"] for entry in big.state.log_history if "loss" in entry]
        assert len(replaced) == 2 and all(0.0 < value < 1.0 for value in replaced), replaced
    for name, value in parameters(big.model).items():
        torch.testing.assert_close(parameters(small.model)[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_resume_from_checkpoint_ends_with_the_same_parameters(make_trainer, tmp_path):
    common = dict(dropout=False, objective="scheduled_sampling", ss_schedule="linear", ss_k=1.0, ss_c=0.2, max_steps=4)
    full = make_trainer("bart", "full", **common)
    full.train()
    make_trainer("bart", "parts", save_strategy="steps", save_steps=2, **common).train()
    resumed = make_trainer("bart", "parts", save_strategy="steps", save_steps=2, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    eps = [entry["ss_eps"] for entry in full.state.log_history if "ss_eps" in entry]
    assert eps == pytest.approx([1.0, 0.8, 0.6, 0.4])
    for name, value in parameters(full.model).items():
        torch.testing.assert_close(parameters(resumed.model)[name], value, atol=1e-6, rtol=0, msg=name)


def test_sampled_predictions_and_eval(make_trainer):
    trainer = make_trainer(
        "gpt2",
        objective="scheduled_sampling",
        rollin="sample",
        rollin_temperature=0.5,
        max_steps=2,
        predict_with_generate=True,
        generation_max_new_tokens=30,
    )
    trainer.train()
    assert "eval_f1" in trainer.evaluate()


def test_bad_settings_are_named(tmp_path):
    from hf_seqobj import SeqObjTrainingArguments

    for settings, pattern in [
        ({"ss_schedule": "cosine"}, "'cosine'"),
        ({"ss_schedule": "exponential", "ss_k": 1.5}, "1.5"),
        ({"ss_schedule": "inverse_sigmoid", "ss_k": 0.5}, "0.5"),
        ({"ss_eps_min": -0.1}, "-0.1"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            SeqObjTrainingArguments(output_dir=str(tmp_path), objective="scheduled_sampling", **settings)
