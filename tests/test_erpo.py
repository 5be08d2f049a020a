"""The ERPO family: RAML, data noising, SPG and interpolation."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import ARCHITECTURES, parameters

from hf_seqobj.objectives import (
    InterpolationAnnealingCallback,
    InterpolationObjective,
    RAMLObjective,
    SPGObjective,
)
from hf_seqobj.objectives.erpo.common import RewardGains, row_generators, row_seed, sample_from_logits, sampled_rollin
from hf_seqobj.objectives.erpo.data_noising import unigram_distribution, unigram_noise
from hf_seqobj.objectives.erpo.raml import hamming_distance_probs, perturb_target
from hf_seqobj.objectives.mle import MLEObjective
from hf_seqobj.rewards import score


EOS = 2
ALLOWED = torch.arange(5, 60)
"""Replacement tokens of the unit tests (ids 0-4 play the special tokens)."""

OBJECTIVES = ("raml", "data_noising", "spg", "interpolation")
SAMPLING = {
    "raml": dict(raml_num_samples=4),
    "data_noising": dict(noising_prob=0.3, noising_sources=True),
    "spg": dict(spg_reward="rouge2", spg_reward_scale=5.0, spg_model_step_prob=0.3),
    "interpolation": dict(interp_lambda=[0.3, 0.4, 0.3], interp_reward="rougeL"),
}
"""Settings under which every objective draws (for the gradient accumulation and resume tests)."""


def _logged(trainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def _assert_same_parameters(expected, actual, atol=1e-6, rtol=0.0):
    for name, value in parameters(expected).items():
        torch.testing.assert_close(parameters(actual)[name], value, atol=atol, rtol=rtol, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------


def test_raml_weights_sum_to_one_and_favour_higher_rewards():
    rewards = torch.rand(50, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = RAMLObjective.candidate_weights(rewards, tau=0.4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(weights.argsort(-1), rewards.argsort(-1))
    assert (weights.diff(dim=-1).sign() == rewards.diff(dim=-1).sign()).all()
    spaced = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(i)) for i in range(50)]) / 10
    sharp = RAMLObjective.candidate_weights(spaced, tau=1e-6)  # tau -> 0: all weight on the best candidate
    assert torch.equal(sharp, torch.nn.functional.one_hot(spaced.argmax(-1), 10).double())
    flat = RAMLObjective.candidate_weights(rewards, tau=1e6)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampling", ["ngram", "hamming"])
def test_raml_candidates_keep_the_gold_first_and_never_replace_the_final_token(sampling):
    generator = torch.Generator().manual_seed(1)
    changed_counts = []
    for trial in range(300):
        length = 1 + trial % 12
        target = torch.cat([torch.randint(5, 60, (length - 1,), generator=generator), torch.tensor([EOS])])
        samples = perturb_target(target, 6, ALLOWED, generator, sampling, max_ngram=3, hamming_tau=1.0)
        assert samples.shape == (6, length)
        assert torch.equal(samples[0], target)
        assert (samples[:, -1] == EOS).all(), "the final token was replaced"
        assert torch.isin(samples[:, :-1], ALLOWED).all(), "a special token was drawn"
        changed = samples[1:] != target
        for row in changed:
            where = row.nonzero().flatten()
            if sampling == "ngram" and where.numel():
                assert int(where[-1] - where[0]) < 3, "more than one n-gram of n <= 3 was replaced"
            changed_counts.append((int(row.sum()), length - 1))
    if sampling == "hamming":  # e follows the rescaled payoff distribution (replacements always differ)
        length = 11
        expected = (hamming_distance_probs(length, ALLOWED.numel(), 1.0) * torch.arange(length + 1)).sum()
        observed = torch.tensor([float(n) for n, m in changed_counts if m == length]).mean()
        assert abs(float(observed) - float(expected)) < 0.6
        assert hamming_distance_probs(5, 100, 0.3)[0] > 0.99


def test_raml_weighted_nll_is_the_weighted_token_cross_entropy():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (6, 5), generator=generator)
    labels[1, 3:] = -100
    labels[4, 1:] = -100
    weights = torch.rand(6, generator=generator)
    expected = 0.0
    for row in range(6):
        keep = labels[row] != -100
        ce = torch.nn.functional.cross_entropy(logits[row][keep], labels[row][keep], reduction="sum")
        expected = expected + weights[row] * ce
    count = ((labels != -100).sum(1) * weights).sum()
    torch.testing.assert_close(RAMLObjective.weighted_nll(logits, labels, weights), expected / count)
    torch.testing.assert_close(RAMLObjective.weighted_nll(logits, labels, weights, num_items_in_batch=7), expected / 7)
    one_hot = torch.tensor([1.0, 0, 0, 1.0, 0, 0])
    torch.testing.assert_close(
        RAMLObjective.weighted_nll(logits, labels, one_hot, shift=True),
        MLEObjective.token_nll(logits[[0, 3]], labels[[0, 3]], shift=True),
    )


def test_unigram_noising_rate_matches_the_probability_and_draws_follow_the_unigram():
    tokens = torch.full((400, 60), 7)
    noisable = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(3)) < 0.7
    unigram = torch.zeros(20, dtype=torch.float64)
    unigram[[10, 11, 12]] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    generators = [torch.Generator().manual_seed(row) for row in range(400)]
    noised, replaced = unigram_noise(tokens, noisable, 0.25, unigram, generators)
    assert not replaced[~noisable].any() and torch.equal(noised[~replaced], tokens[~replaced])
    rate = replaced[noisable].float().mean().item()
    assert abs(rate - 0.25) < 0.01
    drawn = noised[replaced]
    frequencies = torch.bincount(drawn, minlength=20).double() / drawn.numel()
    torch.testing.assert_close(frequencies, unigram, atol=0.02, rtol=0)
    same, none = unigram_noise(tokens, noisable, 0.0, unigram, generators)
    assert torch.equal(same, tokens) and not none.any()
    counted = unigram_distribution([[5, 5, 6, EOS], [-100, 6, EOS]], 8, exclude=[EOS])
    torch.testing.assert_close(counted, torch.tensor([0, 0, 0, 0, 0, 0.5, 0.5, 0], dtype=torch.float64))


@pytest.mark.parametrize("metric", ["bleu", "rouge2", "rougeL"])
def test_reward_gains_equal_the_reward_of_every_extended_prefix(metric):
    generator = torch.Generator().manual_seed(4)
    vocab = 12
    references = torch.randint(3, vocab, (3, 6), generator=generator)
    references[:, -1] = EOS
    references[2, 4:] = -100
    gains = RewardGains(metric, references, eos_token_id=EOS, pad_token_id=0)
    prefix = torch.randint(3, vocab, (3, 4), generator=generator)
    for t in range(prefix.shape[1] + 1):
        if t:
            gains.append(prefix[:, t - 1])
        table = gains.vocabulary_gains(vocab)
        base = score(metric, prefix[:, :t], references, eos_token_id=EOS) if t else torch.zeros(3, dtype=torch.float64)
        for token in range(3, vocab):
            extended = torch.cat([prefix[:, :t], torch.full((3, 1), token)], 1)
            expected = score(metric, extended, references, eos_token_id=EOS) - base
            torch.testing.assert_close(table[:, token], expected, atol=1e-9, rtol=0)
        assert (table[:, EOS] == 0).all()


def test_inverse_cdf_sampling_follows_the_softmax_and_never_takes_masked_tokens():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, -1.0]]).expand(20000, 4)
    uniform = torch.rand(20000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    tokens = sample_from_logits(logits, uniform)
    frequencies = torch.bincount(tokens, minlength=4).double() / 20000
    torch.testing.assert_close(frequencies, torch.softmax(logits[0].double(), 0), atol=0.01, rtol=0)
    assert row_seed(0, 1, 2) != row_seed(0, 2, 1) and row_seed(3, 4, 5) == row_seed(3, 4, 5)


def test_spg_proposal_is_the_model_log_probability_plus_the_scaled_gain():
    logits = torch.randn(3, 7)
    gains = torch.randn(3, 7).double()
    proposal = SPGObjective.proposal_logits(logits, gains, torch.tensor([0.0, 1.0, 4.0]))
    log_p = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(proposal[0], log_p[0])
    torch.testing.assert_close(proposal[2], log_p[2] + 4 * gains[2])


def test_interpolation_reward_logits_cover_the_reference_and_eos_with_penalties():
    reference = torch.tensor([[5, 6, 5, -1], [7, 8, 9, 6]])
    valid = reference >= 0
    gains = torch.tensor([[0.5, 0.2, 0.5, 0.0], [0.1, 0.3, 0.0, 0.4]], dtype=torch.float64)
    logits = InterpolationObjective.reward_logits(
        gains, reference, valid, torch.tensor([6, 3]), torch.tensor([True, False]), 12, EOS, 1.0, 2.0, 0.5
    )
    finite = logits.isfinite()
    assert finite[0].nonzero().flatten().tolist() == [EOS, 5, 6]
    assert finite[1].nonzero().flatten().tolist() == [EOS, 6, 7, 8, 9]
    assert logits[0, 5] == pytest.approx(0.5 / 0.5)
    assert logits[0, 6] == pytest.approx((0.2 - 1.0) / 0.5)  # the previous token: repeat penalty
    assert logits[0, EOS] == pytest.approx(-2.0 / 0.5)  # before the gold length: early-EOS penalty
    assert logits[1, EOS] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# The annealing callback
# ---------------------------------------------------------------------------------------------------------------


def test_annealing_moves_gold_to_reward_on_plateaus_then_gold_to_self_and_never_below_zero():
    callback = InterpolationAnnealingCallback([0.04, 0.96, 0.0], step=0.3, reward_moves=2, metric_key="eval_bleu")
    state = type("State", (), {"global_step": 0})()
    history = []
    for value in [0.1, 0.2, 0.15, 0.3, 0.25, 0.2, 0.1, 0.3, 0.2, 0.4, 0.3, 0.5, 0.1]:
        callback.on_evaluate(None, state, None, metrics={"eval_bleu": value, "eval_loss": 1.0})
        history.append(list(callback.lambdas))
        assert min(callback.lambdas) >= 0 and sum(callback.lambdas) == pytest.approx(1.0)
    # worse than the previous value at the same lambda: 0.15 < 0.2, 0.25 < 0.3, 0.1 < 0.2, 0.2 < 0.3, 0.3 < 0.4, ...
    assert callback.moves == ["reward", "reward", "self", "reward", "none", "none"]
    assert history[2] == pytest.approx([0.04, 0.66, 0.3])
    assert history[4] == pytest.approx([0.04, 0.36, 0.6])
    assert history[6] == pytest.approx([0.34, 0.06, 0.6])  # after 2 reward moves, one to self
    assert history[8] == pytest.approx([0.34, 0.0, 0.66])  # clipped: only 0.06 of gold was left
    assert history[-1] == pytest.approx([0.34, 0.0, 0.66])

    loss = InterpolationAnnealingCallback([0.0, 1.0, 0.0], step=0.5, reward_moves=0, metric_key="eval_loss")
    assert not loss.greater_is_better
    for value in [1.0, 2.0]:
        loss.on_evaluate(None, state, None, metrics={"eval_loss": value})
    assert loss.lambdas == pytest.approx([0.5, 0.5, 0.0])  # reward_moves=0: every move goes to self
    loss.on_evaluate(None, state, None, metrics={"eval_f1": 1.0})  # no metric: warned, nothing moves
    assert loss.lambdas == pytest.approx([0.5, 0.5, 0.0])


def test_annealing_state_round_trips_through_the_trainer_state():
    callback = InterpolationAnnealingCallback([0.1, 0.9, 0.0], step=0.2, reward_moves=1, metric_key="eval_bleu")
    for value in [0.3, 0.2, 0.5]:
        callback.update(value)
    exported = callback.state()
    rebuilt = InterpolationAnnealingCallback(**exported["args"])
    assert rebuilt.lambdas == pytest.approx([0.1, 0.9, 0.0])
    state = type("State", (), {"stateful_callbacks": {"InterpolationAnnealingCallback": exported}})()
    rebuilt.on_train_begin(None, state, None)
    assert rebuilt.state() == exported
    assert rebuilt.lambdas == pytest.approx([0.1, 0.7, 0.2]) and rebuilt.last_value == 0.5


def test_bad_settings_are_named(tmp_path):
    from hf_seqobj import SeqObjSeq2SeqTrainingArguments

    for objective, key, value, pattern in [
        ("raml", "raml_num_samples", 0, "raml_num_samples"),
        ("raml", "raml_tau", 0.0, "raml_tau"),
        ("raml", "raml_reward", "meteor", "'meteor'"),
        ("raml", "raml_sampling", "edit", "'edit'"),
        ("raml", "raml_max_ngram", 0, "raml_max_ngram"),
        ("data_noising", "noising_prob", 1.5, "1.5"),
        ("spg", "spg_reward", "cider", "'cider'"),
        ("spg", "spg_reward_scale", -1.0, "spg_reward_scale"),
        ("spg", "spg_model_step_prob", 2.0, "spg_model_step_prob"),
        ("interpolation", "interp_lambda", [0.5, 0.6, 0.0], "sum to 1"),
        ("interpolation", "interp_lambda", [0.5, 0.5], "three"),
        ("interpolation", "interp_lambda", [1.2, -0.2, 0.0], ">= 0"),
        ("interpolation", "interp_step", 1.5, "interp_step"),
        ("interpolation", "interp_reward_moves", -1, "interp_reward_moves"),
        ("interpolation", "interp_reward_temperature", 0.0, "interp_reward_temperature"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective=objective, **{key: value})
    with pytest.raises(ValueError, match="sum to 1"):
        InterpolationAnnealingCallback([0.3, 0.3, 0.3])


# ---------------------------------------------------------------------------------------------------------------
# In the trainers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_raml_batch_changes_only_target_tokens(arch, make_trainer):
    trainer = make_trainer(arch, dropout=False, objective="raml", raml_num_samples=5, raml_max_ngram=2)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return forward(*args, **kwargs)

    model.forward = spy
    model.train()
    trainer.compute_loss(model, dict(batch))
    (expanded,) = seen
    gold = batch["labels"].repeat_interleave(5, 0)
    labelled = gold != -100
    last = labelled.long().cumsum(1) == labelled.sum(1, keepdim=True)
    if model.config.is_encoder_decoder:  # each source is encoded once; its 5 candidates are decoder rows
        assert expanded["decoder_input_ids"].shape[0] == 5 * batch["labels"].shape[0]
        assert torch.equal(expanded["input_ids"], batch["input_ids"])
        assert torch.equal(expanded["attention_mask"], batch["attention_mask"])
        labels = model.prepare_decoder_input_ids_from_labels(labels=gold)  # gold decoder inputs
        assert expanded["decoder_input_ids"].shape == labels.shape
        assert torch.equal(expanded["decoder_input_ids"][:, 0], labels[:, 0])
    else:
        assert expanded["input_ids"].shape[0] == 5 * batch["labels"].shape[0]
        assert torch.equal(expanded["attention_mask"], batch["attention_mask"].repeat_interleave(5, 0))
        inputs = expanded["input_ids"]
        assert torch.equal(inputs[~labelled], batch["input_ids"].repeat_interleave(5, 0)[~labelled]), "prompt changed"
        assert torch.equal(inputs[labelled & last], gold[labelled & last]), "EOS changed"
        changed = (inputs != batch["input_ids"].repeat_interleave(5, 0)).view(-1, 5, inputs.shape[1])
        assert not changed[:, 0].any() and changed[:, 1:].any()
    assert trainer.objective.pop_metrics("train").keys() >= {"raml_reward", "raml_gold_weight", "raml_weight_entropy"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reductions_to_mle(arch, make_trainer):
    """RAML with tau -> 0, interpolation with lambda = (0, 1, 0) and data noising with prob 0 train exactly as MLE."""
    settings = dict(dropout=False, max_steps=2)
    mle = make_trainer(arch, "mle", objective="mle", **settings)
    mle.train()
    runs = {
        "raml": dict(objective="raml", raml_tau=1e-6, raml_num_samples=3),
        "interpolation": dict(objective="interpolation", interp_lambda=[0.0, 1.0, 0.0]),
        "data_noising": dict(objective="data_noising", noising_prob=0.0, noising_sources=True),
    }
    for name, extra in runs.items():
        trainer = make_trainer(arch, name, **settings, **extra)
        trainer.train()
        _assert_same_parameters(mle.model, trainer.model, atol=1e-5)
        torch.testing.assert_close(_logged(trainer, "loss"), _logged(mle, "loss"), atol=1e-5, rtol=0)
    assert _logged(trainer, "noising_rate") == [0.0, 0.0]


def test_interpolation_draws_follow_lambda(make_trainer):
    trainer = make_trainer("bart", dropout=False, objective="interpolation", interp_reward="rouge1")
    objective = trainer.objective
    rows, vocab = 3000, 20
    references = torch.randint(5, 12, (rows, 6), generator=torch.Generator().manual_seed(6))
    references[:, -1] = EOS
    counts = torch.zeros(3, dtype=torch.long)
    generators = [torch.Generator().manual_seed(row) for row in range(rows)]
    choose = objective.token_chooser(generators, [0.2, 0.5, 0.3], counts)(references)
    logits = torch.full((rows, vocab), float("-inf"))
    logits[:, 15] = 0.0  # the model always samples 15, which no reference holds
    prefix = torch.zeros(rows, 0, dtype=torch.long)
    taken = []
    for _ in range(4):
        tokens = choose(prefix, logits)
        taken.append(tokens)
        prefix = torch.cat([prefix, tokens[:, None]], 1)
    taken = torch.stack(taken, 1)
    fractions = counts.double() / counts.sum()
    torch.testing.assert_close(fractions, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), atol=0.015, rtol=0)
    self_rate = (taken == 15).double().mean().item()
    assert abs(self_rate - 0.2) < 0.015
    gold = (taken == references[:, :4]).double().mean().item()
    assert gold > 0.5  # the gold draws, plus reward draws that pick the gold token
    in_reference = torch.tensor(
        [[bool((references[r] == x).any()) or x == EOS for x in row] for r, row in enumerate(taken.tolist())]
    )
    assert ((taken == 15) | in_reference).all()


def test_spg_reward_scale_pulls_samples_toward_the_reference(make_trainer):
    rewards = {}
    for scale in (0.0, 50.0):
        trainer = make_trainer(
            "t5",
            f"spg{scale}",
            dropout=False,
            objective="spg",
            spg_reward="rougeL",
            spg_reward_scale=scale,
            max_steps=1,
        )
        trainer.train()
        rewards[scale] = _logged(trainer, "spg_reward")[0]
    assert rewards[50.0] > rewards[0.0] + 0.3


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_spg_rows_that_reach_their_gold_length_without_eos_end_with_eos_there(arch, make_trainer):
    """A SPG row open at its gold length is cut there; without an EOS label the model would learn not to stop."""
    trainer = make_trainer(arch, dropout=False, objective="spg")
    batch = next(iter(trainer.get_train_dataloader()))
    never_eos = 5 if EOS != 5 else 6

    def make(references):
        def choose(prefix, logits):
            return torch.full((logits.shape[0],), never_eos, dtype=torch.long)

        return choose

    for end in (False, True):
        training, rollin, references = sampled_rollin(
            trainer.objective, trainer.model, batch, make, end_at_gold_length=end
        )
        gold_lengths = (references != -100).sum(1)
        labels = training["labels"]
        kept = [row[row != -100] for row in labels]  # decoder-only: the prompt's labels are -100
        assert [len(row) for row in kept] == gold_lengths.tolist()
        assert rollin.forced == (len(kept) if end else 0)
        for row in kept:
            assert (row[:-1] == never_eos).all()
            assert row[-1] == (EOS if end else never_eos)


def test_rollins_sample_from_raw_logits_whatever_the_checkpoint_generation_config(make_trainer):
    """A checkpoint's forced EOS, no-repeat n-gram size or minimum length must not reach the roll-in's logits."""
    trainer = make_trainer("bart", dropout=False, objective="interpolation", interp_lambda=[1.0, 0.0, 0.0])
    model, objective = trainer.model, trainer.objective
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.min_new_tokens = 100
    model.generation_config.forced_eos_token_id = EOS
    batch = next(iter(trainer.get_train_dataloader()))
    finite = []

    def make(references):
        choose = objective.token_chooser(
            row_generators(objective, 8), [1.0, 0.0, 0.0], torch.zeros(3, dtype=torch.long)
        )(references)

        def spy(prefix, logits):
            finite.append(bool(logits.isfinite().all()))
            return choose(prefix, logits)

        return spy

    model.train()
    sampled_rollin(objective, model, batch, make)
    assert finite and all(finite)
    assert model.generation_config.no_repeat_ngram_size == 1 and model.training


@pytest.mark.parametrize(
    "objective, arch",
    [(objective, arch) for objective in OBJECTIVES for arch in ("gpt2", "bart")] + [("interpolation", "t5")],
)
def test_gradient_accumulation_makes_the_same_update_as_one_big_batch(objective, arch, make_trainer):
    common = dict(dropout=False, objective=objective, max_steps=2, **SAMPLING[objective])
    big = make_trainer(arch, "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    small = make_trainer(arch, "small", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    initial = parameters(big.model)
    big.train()
    small.train()
    moved = max((value - initial[name]).abs().max().item() for name, value in parameters(big.model).items())
    assert moved > 1e-4
    _assert_same_parameters(big.model, small.model, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("objective, arch", [("raml", "t5"), ("data_noising", "gpt2"), ("spg", "bart")])
def test_resume_from_checkpoint_ends_with_the_same_parameters(objective, arch, make_trainer, tmp_path):
    common = dict(dropout=False, objective=objective, max_steps=4, **SAMPLING[objective])
    full = make_trainer(arch, "full", **common)
    full.train()
    make_trainer(arch, "parts", save_strategy="steps", save_steps=2, **common).train()
    resumed = make_trainer(arch, "parts", save_strategy="steps", save_steps=2, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    _assert_same_parameters(full.model, resumed.model)


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_interpolation_resume_restores_lambda_and_the_annealing_state(restore_callback_states, make_trainer, tmp_path):
    """Eval after every step; a lower eval loss counts as worse here, so lambda moves (deterministically)."""
    common = dict(
        dropout=False,
        objective="interpolation",
        interp_lambda=[0.0, 1.0, 0.0],
        interp_step=0.5,
        interp_reward_moves=1,
        interp_reward="rouge2",
        interp_anneal_metric="loss",
        interp_anneal_greater_is_better=True,
        eval_strategy="steps",
        eval_steps=1,
        max_steps=4,
    )
    full = make_trainer("gpt2", "full", **common)
    full.train()
    lambdas = list(zip(*(_logged(full, f"interp_lambda_{name}") for name in ("self", "gold", "reward"))))
    assert lambdas[0] == (0.0, 1.0, 0.0) and lambdas[-1] != lambdas[0], "lambda never moved"
    assert full.objective.annealer.moves
    make_trainer("gpt2", "parts", save_strategy="steps", save_steps=2, **common).train()
    resumed = make_trainer(
        "gpt2",
        "parts",
        save_strategy="steps",
        save_steps=2,
        restore_callback_states_from_checkpoint=restore_callback_states,
        **common,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    expected, actual = full.objective.annealer, resumed.objective.annealer
    assert actual.lambdas == expected.lambdas and actual.moves == expected.moves
    assert actual.last_value == pytest.approx(expected.last_value, abs=1e-5)
    # the resumed history: steps 1-2 read back from checkpoint-2, steps 3-4 trained with the restored lambda
    resumed_lambdas = list(zip(*(_logged(resumed, f"interp_lambda_{name}") for name in ("self", "gold", "reward"))))
    assert resumed_lambdas == lambdas
    _assert_same_parameters(full.model, resumed.model)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_objective_trains_logs_and_evaluates(arch, make_trainer):
    expected = {
        "raml": {"raml_reward", "raml_gold_weight", "raml_weight_entropy", "sampling_time_share"},
        "data_noising": {"noising_rate", "noising_source_rate", "noising_time_share"},
        "spg": {"spg_reward", "rollin_length", "spg_forced_eos_fraction", "rollin_time_share"},
        "interpolation": {
            "interp_lambda_self",
            "interp_lambda_gold",
            "interp_lambda_reward",
            "interp_self_fraction",
            "interp_gold_fraction",
            "interp_reward_fraction",
            "interp_reward",
            "rollin_length",
        },
    }
    for objective in OBJECTIVES:
        trainer = make_trainer(arch, objective, objective=objective, max_steps=2, **SAMPLING[objective])
        trainer.train()
        logged = {key for entry in trainer.state.log_history for key in entry}
        assert expected[objective] <= logged, f"{objective}: {expected[objective] - logged} not logged"
        assert all(torch.isfinite(torch.tensor(value)) for value in _logged(trainer, "loss"))
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and not any(key.startswith("eval_interp") for key in metrics)


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_raml_encoding_each_source_once_gives_the_loss_and_gradients_of_repeated_sources(arch, make_trainer):
    from hf_seqobj.objectives.erpo.raml import repeated_encoder_states

    trainer = make_trainer(arch, dropout=False, objective="raml", raml_num_samples=3)
    model = trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"].repeat_interleave(3, 0))
    losses, grads = [], []
    for once in (True, False):
        model.zero_grad()
        sources = {
            key: batch[key] if once else batch[key].repeat_interleave(3, 0) for key in ("input_ids", "attention_mask")
        }
        with repeated_encoder_states(model, 3) if once else contextlib.nullcontext():
            logits = model(**sources, decoder_input_ids=decoder_inputs).logits
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name, value in grads[1].items():
        torch.testing.assert_close(grads[0][name], value, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_raml_shared_prefix_logits_give_the_full_loss_and_gradients(arch, make_trainer):
    """Candidates read the gold row's logits up to their first change; the LM head runs on the other positions only."""
    from hf_seqobj.objectives.erpo.raml import RAMLObjective, lm_head_on, shared_prefix_positions

    trainer = make_trainer(arch, dropout=False, objective="raml", raml_num_samples=4)
    model = trainer.model.train()
    objective = trainer.objective
    batch = next(iter(trainer.get_train_dataloader()))
    candidates, rewards = objective.candidates(batch["labels"])
    weights = objective.candidate_weights(rewards, 0.4).reshape(-1)
    labels = batch["labels"].repeat_interleave(4, 0)
    labels[labels != -100] = torch.cat([sample.reshape(-1) for sample in candidates])
    shift = not model.config.is_encoder_decoder
    if shift:
        inputs = {"input_ids": torch.where(labels != -100, labels, batch["input_ids"].repeat_interleave(4, 0))}
        inputs["attention_mask"] = batch["attention_mask"].repeat_interleave(4, 0)
    else:
        inputs = {key: batch[key].repeat_interleave(4, 0) for key in ("input_ids", "attention_mask")}
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    positions = shared_prefix_positions(labels, 4, shift=shift)
    assert 0 < positions.rows.numel() < int((labels != -100).sum())  # fewer logits than labelled positions
    results = []
    for shared in (True, False):
        model.zero_grad()
        if shared:
            with lm_head_on(model, positions.rows, positions.columns):
                logits = model(**inputs).logits
            loss = RAMLObjective.weighted_nll_at(logits, positions, labels, weights, shift=shift)
        else:
            loss = RAMLObjective.weighted_nll(model(**inputs).logits, labels, weights, shift=shift)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for name, value in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], value, atol=1e-5, rtol=1e-4, msg=name)
