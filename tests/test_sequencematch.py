"""SequenceMatch: the loss as a pure function, and `objective="sequencematch"` in the trainers."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import ARCHITECTURES, parameters

from hf_seqobj.backspace import add_backspace_token
from hf_seqobj.objectives.sequencematch import SequenceMatchObjective, sequencematch_loss, step_nll


def _random_case(seed=0, batch=4, steps=7, vocab=11, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, steps + 1, vocab, generator=generator) * scale
    actions = torch.randint(0, vocab, (batch, steps), generator=generator)
    lengths = [steps, steps - 2, 3, steps - 1][:batch]
    for row, length in enumerate(lengths):
        actions[row, length:] = -100
    if batch > 1:
        actions[1, 2] = -100  # a noise token: not a step
    return logits, actions


def _weighted_nll(logits, actions, gamma):
    log_probs = torch.log_softmax(logits[:, :-1].float(), -1)
    valid = actions != -100
    picked = log_probs.gather(-1, actions.clamp(min=0)[..., None])[..., 0]
    discount = gamma ** torch.arange(actions.shape[1]).float()
    return -(picked * valid * discount).sum() / valid.sum()


def test_without_rollins_and_chi2_the_loss_is_the_token_nll():
    logits, actions = _random_case()
    terms = sequencematch_loss(logits, actions, chi2_weight=0.0, gamma=1.0)
    torch.testing.assert_close(terms.loss, step_nll(logits, actions))
    torch.testing.assert_close(terms.loss, terms.data + terms.value)
    assert float(terms.chi2) == 0.0
    for gamma in (0.9, 0.998):  # per step the V terms telescope: the gamma^t-weighted NLL
        terms = sequencematch_loss(logits, actions, gamma=gamma, chi2_weight=0.0)
        torch.testing.assert_close(terms.loss, _weighted_nll(logits, actions, gamma))


def test_chi2_term_is_the_mean_squared_reward_over_four_alpha():
    logits, actions = _random_case(seed=1)
    gamma, alpha = 0.95, 0.05
    values = torch.logsumexp(logits, -1)
    q = logits[:, :-1].gather(-1, actions.clamp(min=0)[..., None])[..., 0]
    reward = q - gamma * values[:, 1:]
    valid = actions != -100
    discount = gamma ** torch.arange(actions.shape[1]).float()
    expected = (reward.pow(2) * valid * discount).sum() / (4 * alpha) / valid.sum()
    terms = sequencematch_loss(logits, actions, chi2_weight=1 / (4 * alpha), gamma=gamma)
    torch.testing.assert_close(terms.chi2, expected)
    torch.testing.assert_close(terms.loss, terms.data + terms.value + terms.chi2)


def test_absorbing_tail_equals_the_unrolled_sum():
    """The closed-form tail equals summing the absorbing state's steps explicitly (many of them)."""
    gamma, alpha, eos = 0.97, 0.1, 3
    logits, actions = _random_case(seed=2, batch=1, steps=6)
    actions[0, :4] = torch.tensor([5, 6, 7, eos])
    actions[0, 4:] = -100
    with_tail = sequencematch_loss(
        logits, actions, chi2_weight=1 / (4 * alpha), gamma=gamma, eos_token_id=eos, normalizer=1.0
    )
    without = sequencematch_loss(logits, actions, chi2_weight=1 / (4 * alpha), gamma=gamma, normalizer=1.0)
    # unroll: the absorbing state is row 4; steps t = 4, 5, ... take EOS and stay there
    value = torch.logsumexp(logits[0, 4], -1)
    reward = logits[0, 4, eos] - gamma * value
    discounts = gamma ** torch.arange(4, 4000, dtype=torch.float64)
    data = -(discounts * reward.double()).sum()
    value_sum = (discounts * (value.double() - gamma * value.double())).sum()
    chi2 = (discounts * reward.double() ** 2).sum() / (4 * alpha)
    torch.testing.assert_close((with_tail.data - without.data).double(), data, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((with_tail.value - without.value).double(), value_sum, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((with_tail.chi2 - without.chi2).double(), chi2, rtol=1e-4, atol=1e-4)
    # a row that does not end with EOS (a roll-in cut at the length limit) gets no tail
    actions[0, 3] = 8
    cut = sequencematch_loss(
        logits, actions, chi2_weight=1 / (4 * alpha), gamma=gamma, eos_token_id=eos, normalizer=1.0
    )
    plain = sequencematch_loss(logits, actions, chi2_weight=1 / (4 * alpha), gamma=gamma, normalizer=1.0)
    torch.testing.assert_close(cut.loss, plain.loss)


def test_mix_is_data_and_rollins_in_equal_parts():
    logits, actions = _random_case(seed=3)
    is_rollin = torch.tensor([False, False, True, True])
    both = sequencematch_loss(logits, actions, is_rollin, gamma=0.9, normalizer=10.0)
    data_only = sequencematch_loss(logits[:2], actions[:2], gamma=0.9, normalizer=10.0)
    rollins_only = sequencematch_loss(logits[2:], actions[2:], torch.tensor([True, True]), gamma=0.9, normalizer=10.0)
    torch.testing.assert_close(both.data, data_only.data)  # roll-ins are not in the data term
    torch.testing.assert_close(float(rollins_only.data), 0.0)
    torch.testing.assert_close(both.value, 0.5 * data_only.value + rollins_only.value)  # rollins_only has weight 1/2
    torch.testing.assert_close(both.chi2, 0.5 * data_only.chi2 + rollins_only.chi2)
    # one roll-in for two examples: scaled so that it weighs as much as the two examples
    fewer = sequencematch_loss(logits[:3], actions[:3], is_rollin[:3], gamma=0.9, normalizer=10.0, rollin_scale=2.0)
    single = sequencematch_loss(logits[2:3], actions[2:3], torch.tensor([True]), gamma=0.9, normalizer=10.0)
    torch.testing.assert_close(fewer.value, 0.5 * data_only.value + 2.0 * single.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_for_extreme_logits(dtype):
    logits, actions = _random_case(seed=4, scale=1e4)
    logits[0, 0, 0] = 3e4
    logits[1, 1, :] = -3e4
    logits = logits.to(dtype).requires_grad_(True)
    terms = sequencematch_loss(logits, actions, torch.tensor([False, True, False, True]), eos_token_id=2)
    assert all(torch.isfinite(t) for t in terms)
    terms.loss.backward()
    assert bool(torch.isfinite(logits.grad.float()).all())


def test_gradients_reach_exactly_the_states_of_steps():
    logits, actions = _random_case(seed=5)
    logits.requires_grad_(True)
    sequencematch_loss(logits, actions, gamma=0.9).loss.backward()
    touched = logits.grad.abs().sum(-1) > 0  # [B, T + 1]
    valid = actions != -100
    # a state gets a gradient iff it is the s or the s' of a step
    expected = torch.zeros_like(touched)
    expected[:, :-1] |= valid
    expected[:, 1:] |= valid
    assert torch.equal(touched, expected)
    # the data term of a roll-in row has no gradient
    logits.grad = None
    sequencematch_loss(logits, actions, torch.tensor([False, True, False, False])).data.backward()
    assert float(logits.grad[1].abs().sum()) == 0.0


def test_bad_settings_name_the_value():
    logits, actions = _random_case()
    with pytest.raises(ValueError, match="chi2_weight"):
        sequencematch_loss(logits, actions, chi2_weight=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        sequencematch_loss(logits, actions, gamma=1.0, eos_token_id=2)
    with pytest.raises(ValueError, match=r"\[B, T \+ 1, V\]"):
        sequencematch_loss(logits[:, :-1], actions)


def test_argument_validation():
    from hf_seqobj.trainers import SeqObjTrainingArguments

    base = dict(output_dir="/tmp/x", objective="sequencematch", report_to="none", use_cpu=True)
    for key, value in [
        ("sm_chi2_weight", -1.0),
        ("sm_gamma", 1.0),
        ("sm_bc_final_weight", 1.5),
        ("sm_noise_prob", -0.1),
        ("sm_buffer_size", 0),
        ("sm_rollout_every", 0),
        ("sm_max_new_tokens", 0),
        ("sm_rollin_fraction", 0.0),
        ("sm_bc_steps", -1),
        ("sm_chi2_on", "policy"),
        ("sm_temperature", 0.0),
    ]:
        with pytest.raises(ValueError, match=key):
            SeqObjTrainingArguments(**base, **{key: value})
    SeqObjTrainingArguments(**base, sm_gamma=1.0, sm_absorbing=False)


def test_bc_weight_schedule(make_trainer):
    trainer = make_trainer(
        "gpt2", objective="sequencematch", sm_bc_steps=10, sm_bc_anneal_steps=20, sm_bc_final_weight=0.2
    )
    objective = trainer.objective
    assert objective.bc_weight(0) == objective.bc_weight(9) == 1.0
    assert objective.bc_weight(10) == 1.0
    assert math.isclose(objective.bc_weight(20), 0.6)
    assert math.isclose(objective.bc_weight(30), 0.2) and math.isclose(objective.bc_weight(300), 0.2)


# ----------------------------------------------------------------------------------------------------------------
# The objective in the trainers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sequencematch_trains_and_logs(make_trainer, arch):
    trainer = make_trainer(
        arch,
        objective="sequencematch",
        max_steps=3,
        sm_bc_steps=1,
        sm_bc_anneal_steps=2,
        sm_noise_prob=0.2,
        rollin="sample",
        sm_rollout_every=2,
        sm_buffer_size=12,
        sm_max_new_tokens=12,
        sm_rollin_fraction=0.5 if arch == "t5" else 1.0,
    )
    assert trainer.model.config.bksp_token_id == trainer.processing_class.convert_tokens_to_ids("<bksp>")
    before = parameters(trainer.model)
    trainer.train()
    logs = {key for entry in trainer.state.log_history for key in entry}
    for key in (
        "sm_bc_weight",
        "bc_loss",
        "sm_data_term",
        "sm_value_term",
        "sm_chi2_term",
        "sm_noise_rate",
        "rollin_backspace_rate",
        "rollin_length",
        "buffer_age",
        "rollin_time_share",
        "rollin_two_cycle_rate",
        "rollin_truncated_rate",
    ):
        assert key in logs, key
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(loss) for loss in losses)
    after = parameters(trainer.model)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert len(trainer.objective.buffer) <= 12


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_bc_without_noise_equals_mle(make_trainer, arch):
    """BC on the one-pass layout without noise is teacher forcing: the same parameters as objective='mle'."""
    common = dict(max_steps=2, dropout=False)
    mle = make_trainer(arch, "mle", objective="mle", **common)
    add_backspace_token(mle.model, mle.processing_class)  # the same vocabulary (the softmax includes <bksp>)
    mle.train()
    sm = make_trainer(arch, "sm", objective="sequencematch", sm_bc_steps=100, **common)
    sm.train()
    reference = parameters(mle.model)
    for name, value in parameters(sm.model).items():
        torch.testing.assert_close(value, reference[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_gradient_accumulation_equals_one_big_batch(make_trainer, arch):
    settings = dict(
        objective="sequencematch",
        max_steps=2,
        dropout=False,
        sm_bc_steps=0,
        sm_bc_anneal_steps=1,
        sm_noise_prob=0.3,
        sm_max_new_tokens=10,
        rollin="greedy",
    )
    big = make_trainer(arch, "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **settings)
    big.train()
    small = make_trainer(arch, "small", per_device_train_batch_size=4, gradient_accumulation_steps=2, **settings)
    small.train()
    expected = parameters(big.model)
    for name, value in parameters(small.model).items():
        torch.testing.assert_close(value, expected[name], atol=2e-5, rtol=1e-4, msg=name)


def test_resume_equals_uninterrupted_run(make_trainer, tmp_path):
    """Resumed at step 2, the run draws step 2's roll-ins from the buffer saved at step 0's refresh."""
    settings = dict(
        objective="sequencematch",
        max_steps=4,
        dropout=False,
        sm_bc_steps=0,
        sm_bc_anneal_steps=2,
        sm_noise_prob=0.2,
        rollin="sample",
        sm_rollout_every=3,
        sm_buffer_size=12,
        sm_max_new_tokens=10,
        save_strategy="steps",
        save_steps=2,
    )
    full = make_trainer("bart", "full", **settings)
    full.train()  # also writes checkpoint-2 (with the buffer)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "sequencematch_buffer_rank0.pt").exists()
    resumed = make_trainer("bart", "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = parameters(full.model)
    for name, value in parameters(resumed.model).items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)
    # without the saved buffer the resumed run regenerates at step 2 and ends elsewhere
    shutil.copytree(checkpoint, tmp_path / "no_buffer")
    (tmp_path / "no_buffer" / "sequencematch_buffer_rank0.pt").unlink()
    other = make_trainer("bart", "other", **settings)
    other.train(resume_from_checkpoint=str(tmp_path / "no_buffer"))
    assert any(not torch.allclose(value, expected[name]) for name, value in parameters(other.model).items())


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_eval_generation_uses_backspace_decoding(make_trainer, arch):
    trainer = make_trainer(
        arch,
        objective="sequencematch",
        predict_with_generate=True,
        **({"generation_max_new_tokens": 8} if arch == "gpt2" else {"generation_max_length": 8}),
    )
    calls = []
    original = trainer._generate_with_backspace

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    trainer._generate_with_backspace = spy
    metrics = trainer.evaluate()
    assert calls and "eval_f1" in metrics
    assert 0.0 <= metrics["eval_backspace_rate"] <= 1.0 and "eval_perplexity" in metrics
    assert 0.0 <= metrics["eval_two_cycle_rate"] <= 1.0 and 0.0 <= metrics["eval_truncated_rate"] <= 1.0
    assert trainer.state.log_history[-1]["eval_backspace_rate"] == metrics["eval_backspace_rate"]
    test = trainer.evaluate(trainer.eval_dataset, metric_key_prefix="test")  # another split keeps its prefix
    assert "test_backspace_rate" in test and "eval_backspace_rate" not in test


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_sequencematch_with_lora(tiny_checkpoints, ner_task, tmp_path, arch):
    """<bksp> is added before the adapter, so its row trains; roll-ins and evaluation decode with backspace."""
    from peft import PeftModel

    from hf_seqobj.modeling import load_model_and_tokenizer
    from hf_seqobj.peft_utils import lora_config_for
    from hf_seqobj.run import build_trainer
    from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments

    task, splits = ner_task
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(splits, tokenizer, decoder_only=arch == "gpt2")
    args_class = SeqObjTrainingArguments if arch == "gpt2" else SeqObjSeq2SeqTrainingArguments
    args = args_class(
        output_dir=str(tmp_path / "out"),
        objective="sequencematch",
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=5e-2,
        sm_bc_steps=0,
        sm_bc_anneal_steps=1,
        sm_noise_prob=0.3,
        rollin="sample",
        sm_max_new_tokens=10,
        predict_with_generate=True,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        **({"generation_max_new_tokens": 8} if arch == "gpt2" else {"generation_max_length": 8}),
    )
    # the adapter is configured for the model as it will be: with <bksp> (the objective adds it before wrapping)
    SequenceMatchObjective.prepare_model(model, tokenizer)
    bksp = model.config.bksp_token_id
    peft_config = lora_config_for(model, tokenizer)
    assert bksp in peft_config.trainable_token_indices
    trainer = build_trainer(model, tokenizer, task, tokenized, args, peft_config=peft_config)
    assert isinstance(trainer.model, PeftModel)
    before = trainer.model.get_input_embeddings()(torch.tensor([bksp])).detach().clone()
    trainer.train()
    after = trainer.model.get_input_embeddings()(torch.tensor([bksp])).detach()
    assert not torch.allclose(before, after), "the <bksp> row did not train"
    logs = {key for entry in trainer.state.log_history for key in entry}
    assert {"sm_chi2_term", "rollin_backspace_rate"} <= logs
    trainer.evaluate()
    assert "eval_backspace_rate" in trainer.state.log_history[-1]


def test_temperature_is_a_scale_and_a_chi2_weight():
    """Q = tau l, V = tau logsumexp(l): the loss at temperature tau and weight c is tau times the loss at
    temperature 1 and weight c tau (the policy softmax(l) is the same)."""
    logits, actions = _random_case(seed=6)
    is_rollin = torch.tensor([False, False, True, True])
    for tau, c in [(0.01, 0.25), (3.0, 0.1)]:
        hot = sequencematch_loss(logits, actions, is_rollin, chi2_weight=c, temperature=tau, gamma=0.9, eos_token_id=2)
        cold = sequencematch_loss(logits, actions, is_rollin, chi2_weight=c * tau, gamma=0.9, eos_token_id=2)
        for term_hot, term_cold in zip(hot, cold, strict=True):
            torch.testing.assert_close(term_hot, tau * term_cold)
    with pytest.raises(ValueError, match="temperature"):
        sequencematch_loss(logits, actions, temperature=0.0)


def test_a_cut_rollin_does_not_reward_longer_outputs():
    """A roll-in cut at the length limit gets the bootstrapped tail gamma^n V(s_n): its value term is V(s_0), so
    raising the value of the state where it was cut (every logit there up by the same amount, the policy unchanged)
    no longer lowers the loss. Before, the value term kept -gamma^n V(s_n), a reward for never ending."""
    gamma, eos = 0.9, 2
    logits, actions = _random_case(seed=7, batch=2, steps=5)
    actions[0] = torch.tensor([5, 6, 7, eos, -100])  # data, ends with EOS
    actions[1] = torch.tensor([5, 8, 8, 9, 4])  # roll-in, cut after 5 actions
    is_rollin = torch.tensor([False, True])
    settings = dict(gamma=gamma, chi2_weight=0.0, eos_token_id=eos, normalizer=1.0)
    terms = sequencematch_loss(logits, actions, is_rollin, **settings)
    values = torch.logsumexp(logits, -1)
    # value term: (1/2) V(s_0) for each row (the data row's closed-form absorbing tail included)
    torch.testing.assert_close(terms.value, 0.5 * values[0, 0] + 0.5 * values[1, 0])
    raised = logits.clone()
    raised[1, 5] += 10.0  # V(s_5) of the cut roll-in up by 10, its policy there unchanged
    torch.testing.assert_close(sequencematch_loss(raised, actions, is_rollin, **settings).loss, terms.loss)
    # the old form (no bootstrapped tail): the same change lowers the loss by (1/2) gamma^5 * 10
    old = sequencematch_loss(logits, actions, is_rollin, truncated=torch.tensor([False, False]), **settings)
    old_raised = sequencematch_loss(raised, actions, is_rollin, truncated=torch.tensor([False, False]), **settings)
    torch.testing.assert_close(old.loss - old_raised.loss, torch.tensor(0.5 * gamma**5 * 10.0))
    # a roll-in that ends with EOS is not cut: its absorbing tail also makes its value term V(s_0)
    actions[1, 4] = eos
    ended = sequencematch_loss(logits, actions, is_rollin, **settings)
    torch.testing.assert_close(ended.value, 0.5 * values[0, 0] + 0.5 * values[1, 0])


def test_chi2_on_the_data_rows_only():
    logits, actions = _random_case(seed=8)
    is_rollin = torch.tensor([False, False, True, True])
    mixture = sequencematch_loss(logits, actions, is_rollin, chi2_weight=0.3, gamma=0.9, normalizer=10.0)
    data = sequencematch_loss(logits, actions, is_rollin, chi2_weight=0.3, gamma=0.9, chi2_on="data", normalizer=10.0)
    data_rows = sequencematch_loss(logits[:2], actions[:2], chi2_weight=0.3, gamma=0.9, normalizer=10.0)
    rollin_rows = sequencematch_loss(
        logits[2:], actions[2:], torch.tensor([True, True]), chi2_weight=0.3, gamma=0.9, normalizer=10.0
    )
    torch.testing.assert_close(data.chi2, data_rows.chi2)  # weight 1 on the data, none on the roll-ins
    torch.testing.assert_close(mixture.chi2, 0.5 * data_rows.chi2 + rollin_rows.chi2)
    torch.testing.assert_close(data.data, mixture.data)
    torch.testing.assert_close(data.value, mixture.value)
    with pytest.raises(ValueError, match="chi2_on"):
        sequencematch_loss(logits, actions, chi2_on="policy")


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_noise_targets_are_counted_in_the_normaliser(make_trainer, arch):
    """`num_items_in_batch` counts the noise's <bksp> targets as well as the gold tokens: BC is the mean NLL over
    every target of the layout, whether the Trainer counts ahead or the micro-batch counts itself."""
    trainer = make_trainer(arch, objective="sequencematch", sm_bc_steps=100, sm_noise_prob=0.5, dropout=False)
    objective = trainer.objective
    batch = next(iter(trainer.get_train_dataloader()))
    _, count = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
    config = trainer.model.config
    start = config.decoder_start_token_id if config.is_encoder_decoder else None
    data = objective._data_rows(batch, config.is_encoder_decoder, start, trainer.processing_class.pad_token_id, 0)
    noise = int((data["labels"] == objective.bksp).sum())
    assert noise > 0 and int(count) == int(data["target_lengths"].sum()) + noise
    trainer.model.train()
    counted, _ = objective.training_loss(trainer.model, batch, num_items_in_batch=count)
    local, _ = objective.training_loss(trainer.model, batch, num_items_in_batch=None)
    torch.testing.assert_close(counted, local)


@pytest.mark.parametrize("guard", [True, False])
def test_cycle_guard_setting_reaches_rollins_and_evaluation(make_trainer, monkeypatch, guard):
    import hf_seqobj.objectives.sequencematch as sequencematch
    import hf_seqobj.trainers.seqobj_trainer as seqobj_trainer

    guards = []
    for module in (sequencematch, seqobj_trainer):
        original = module.generate_with_backspace

        def spy(*args, _original=original, **kwargs):
            guards.append(kwargs["cycle_guard"])
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "generate_with_backspace", spy)
    trainer = make_trainer(
        "gpt2",
        objective="sequencematch",
        max_steps=2,
        sm_bc_steps=0,
        sm_bc_anneal_steps=1,
        sm_max_new_tokens=6,
        sm_cycle_guard=guard,
        predict_with_generate=True,
        generation_max_new_tokens=6,
    )
    trainer.train()
    trainer.evaluate()
    assert len(guards) >= 2 and set(guards) == {guard}


def test_without_a_chi2_term_on_the_mixture_no_rollins_are_generated(make_trainer, monkeypatch):
    """With the chi^2 term on the data rows only (or off), roll-ins cannot change the loss: none are generated."""
    for settings in ({"sm_chi2_on": "data"}, {"sm_chi2_weight": 0.0}):
        trainer = make_trainer(
            "gpt2", objective="sequencematch", max_steps=2, sm_bc_steps=0, sm_bc_anneal_steps=1, **settings
        )
        assert not trainer.objective.uses_rollins()
        calls = []

        def count(*args, _calls=calls, **kwargs):
            _calls.append(1)

        monkeypatch.setattr(trainer.objective, "_rollins", count)
        trainer.train()
        logs = {key for entry in trainer.state.log_history for key in entry}
        assert not calls and "sm_chi2_term" in logs and "rollin_length" not in logs


def test_two_cycle_warning_comes_once(caplog):
    from hf_seqobj.backspace import warn_on_two_cycles

    class Owner:
        pass

    owner = Owner()
    with caplog.at_level("WARNING"):
        warn_on_two_cycles(owner, "rollin", 0.1)
        assert not caplog.records
        warn_on_two_cycles(owner, "rollin", 0.5)
        warn_on_two_cycles(owner, "rollin", 0.9)
        warn_on_two_cycles(owner, "evaluation", 0.3)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and "50% of the rollin" in messages[0] and "evaluation" in messages[1]
