"""DAgger with dynamic oracles (docs/dagger.md): roll-in, relabelling, the objective in the trainers."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import ARCHITECTURES, parameters
from transformers import DataCollatorForSeq2Seq

from hf_seqobj.decoding.rollin import predicted_tokens
from hf_seqobj.objectives.dagger import DAggerDataCollator, DAggerRelabeler
from hf_seqobj.objectives.schedules import dagger_beta, rollin_fraction
from hf_seqobj.oracles import BIOTagSet, SpanF1Oracle, make_oracle, span_f1_oracle


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
EOS = 2


@pytest.fixture
def span_oracle():
    return SpanF1Oracle(BIOTagSet(TAGS, [10, 11, 12, 13, 14]), EOS)


def test_span_oracle_labels_tags_then_eos_and_nothing_after_the_rollin_ends(span_oracle):
    gold = torch.tensor([[11, 12, 10, EOS, -100], [10, 13, EOS, -100, -100]])
    rollin = torch.tensor([[11, 10, 10, 10, 10], [13, 99, EOS, 10, 10]])
    labels = span_oracle(rollin, gold)
    # row 0: B-PER (gold), then after [B-PER] continue with I-PER, after [B-PER, O] the span is lost: O; then EOS
    # row 1: after [] gold O; after [B-LOC] (a wrong span) the gold B-LOC at 1; then EOS at t = 2 = n; after the
    # roll-in's EOS (position 2) nothing
    assert labels.tolist() == [[11, 12, 10, EOS, EOS], [10, 13, EOS, -100, -100]]


def test_span_oracle_matches_the_scalar_oracle_and_next_token_matches_its_column(span_oracle):
    tag_set = span_oracle.tag_set
    rng = random.Random(0)
    for _ in range(200):
        batch, width = 3, 6
        gold = torch.full((batch, width + 1), -100)
        rollin = torch.zeros((batch, width + 1), dtype=torch.long)
        lengths = []
        for row in range(batch):
            n = rng.randint(1, width)
            gold_tags = [rng.choice(TAGS) for _ in range(n)]
            gold[row, :n] = torch.tensor(tag_set.encode(gold_tags))
            gold[row, n] = EOS
            rollin[row] = torch.tensor([rng.choice([*tag_set.token_ids.tolist(), 99]) for _ in range(width + 1)])
            lengths.append((n, gold_tags))
        labels = span_oracle(rollin, gold)
        for row, (n, gold_tags) in enumerate(lengths):
            for t in range(n):
                expected = span_f1_oracle(tag_set.decode(rollin[row, :t]), gold_tags)
                assert labels[row, t] == tag_set.token_id(expected)
            assert (labels[row, n:] == EOS).all()
        t = rng.randint(0, width)
        column = span_oracle.next_token(rollin[:, :t], torch.full((batch,), t), gold)
        assert torch.equal(column, labels[:, t])


def test_tag_set_is_read_from_a_vocabulary_and_incomplete_sets_are_named():
    tag_set = BIOTagSet.infer_from_vocab({"O": 4, "B-PER": 5, "I-PER": 6, "the": 7, "<s>": 0})
    assert tag_set.tags == ("O", "B-PER", "I-PER")
    with pytest.raises(ValueError, match="I-LOC"):
        BIOTagSet.infer_from_vocab({"O": 4, "B-LOC": 5})


def test_make_oracle_rejects_unknown_names(tiny_checkpoints):
    from hf_seqobj.modeling import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(tiny_checkpoints["bart"])
    with pytest.raises(ValueError, match="span_f1.*'f1'"):
        make_oracle("f1", tokenizer)


def test_beta_schedules():
    assert dagger_beta(3, 0.5, "linear", warmup_steps=5, max_steps=15) == 1.0
    assert dagger_beta(5, 0.5, "linear", warmup_steps=5, max_steps=15) == 0.5
    assert dagger_beta(10, 0.5, "linear", warmup_steps=5, max_steps=15) == pytest.approx(0.25)
    assert dagger_beta(15, 0.5, "linear", warmup_steps=5, max_steps=15) == 0.0
    assert dagger_beta(7, 0.5, "exponential", warmup_steps=5, decay=0.9) == pytest.approx(0.5 * 0.81)
    assert dagger_beta(1000, 0.3, "constant") == 0.3
    with pytest.raises(ValueError, match="'cosine'"):
        dagger_beta(0, 0.5, "cosine")
    assert dagger_beta(3, 0.5, "agreement", warmup_steps=5, agreement=0.1) == 1.0
    assert dagger_beta(7, 0.2, "agreement") == 0.2, "before any agreement is measured: the floor"
    assert dagger_beta(7, 0.2, "agreement", agreement=0.3) == pytest.approx(0.7)
    assert dagger_beta(7, 0.2, "agreement", agreement=0.9) == 0.2
    assert rollin_fraction(0.3, "constant", agreement=0.9) == 0.3
    assert rollin_fraction(0.1, "agreement") == 0.1
    assert rollin_fraction(0.1, "agreement", agreement=0.4) == 0.4
    assert rollin_fraction(0.5, "agreement", agreement=0.4) == 0.5
    with pytest.raises(ValueError, match="'cosine'"):
        rollin_fraction(0.5, "cosine")


def test_running_agreement_is_a_moving_average_over_whole_steps():
    from hf_seqobj.objectives.dagger.objective import OracleAgreementCallback

    running = OracleAgreementCallback(smoothing=0.5)
    running.on_step_end(None, None, None)
    assert running.value is None, "a step without counts (warm-up) leaves it unknown"
    running.add(torch.tensor(1), torch.tensor(4))
    running.add(torch.tensor(3), torch.tensor(4))  # two micro-batches of one step: 4 of 8
    running.on_step_end(None, None, None)
    assert running.value == 0.5
    running.add(torch.tensor(9), torch.tensor(10))
    running.on_step_end(None, None, None)
    assert running.value == pytest.approx(0.5 * 0.5 + 0.5 * 0.9)
    assert running.state()["attributes"] == {"value": running.value}

    class TwoProcesses:  # the other process counted 0 of 8 at this step
        num_processes = 2

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            return tensor + torch.tensor([0.0, 8.0], dtype=tensor.dtype)

    across = OracleAgreementCallback(smoothing=0.0)
    across.accelerator = TwoProcesses()
    across.add(torch.tensor(8), torch.tensor(8))
    across.on_step_end(None, None, None)
    assert across.value == 0.5, "the step's agreement is counted over every process"


def test_predicted_tokens_align_with_labels():
    logits = torch.randn(2, 5, 7)
    argmax = logits.argmax(-1)
    assert torch.equal(predicted_tokens(logits, encoder_decoder=True), argmax)
    shifted = predicted_tokens(logits, encoder_decoder=False)
    assert (shifted[:, 0] == -100).all() and torch.equal(shifted[:, 1:], argmax[:, :-1])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_beta_one_rolls_in_on_gold_and_gives_the_teacher_forcing_loss(arch, make_trainer):
    """With beta = 1 the span oracle forces the gold tags: roll-in = gold, labels = gold, loss = MLE loss."""
    trainer = make_trainer(arch, dropout=False, objective="dagger")
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {key: value.to(model.device) for key, value in batch.items()}
    relabeler = DAggerRelabeler(make_oracle("span_f1", trainer.processing_class))
    relabelled, stats = relabeler(model, batch, beta=1.0)
    assert stats.forced_fraction > 0.5
    gold = batch["labels"] if model.config.is_encoder_decoder else None
    if gold is not None:
        width = relabelled["labels"].shape[1]
        assert torch.equal(relabelled["labels"], gold[:, :width])
        assert (gold[:, width:] == -100).all()
    model.eval()
    with torch.no_grad():
        gold_loss = model(**batch).loss
        rollin_loss = model(**relabelled).loss
    torch.testing.assert_close(rollin_loss, gold_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dagger_trains_logs_its_metrics_and_evaluates_with_generation(arch, make_trainer):
    trainer = make_trainer(
        arch, objective="dagger", max_steps=3, predict_with_generate=True, **_generation_length(arch, 40)
    )
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    for key in (
        "dagger_beta",
        "rollin_length",
        "oracle_agreement",
        "oracle_forced_fraction",
        "rollin_time_share",
        "oracle_time_share",
    ):
        assert key in logged, f"{key} was not logged"
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_f1"] <= 1.0 and "eval_loss" in metrics


def _generation_length(arch: str, length: int) -> dict:
    return {"generation_max_new_tokens": length} if arch == "gpt2" else {"generation_max_length": length}


@pytest.mark.parametrize(
    "arch, beta", [*((arch, 0.0) for arch in ARCHITECTURES), *((arch, 0.5) for arch in ARCHITECTURES)]
)  # beta > 0: a row's mixing draws are its own, whichever micro-batch it falls in
def test_gradient_accumulation_makes_the_same_update_as_one_big_batch(arch, beta, make_trainer):
    common = dict(dropout=False, objective="dagger", dagger_beta=beta, max_steps=2, rollin="greedy")
    if beta:
        common["dagger_beta_schedule"] = "constant"
    big = make_trainer(arch, "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    small = make_trainer(arch, "small", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    initial = parameters(big.model)
    big.train()
    small.train()
    moved = max((value - initial[name]).abs().max().item() for name, value in parameters(big.model).items())
    assert moved > 1e-4
    if beta:  # the oracle's tokens were mixed in
        for trainer in (big, small):
            forced = [entry["oracle_forced_fraction"] for entry in trainer.state.log_history if "loss" in entry]
            assert len(forced) == 2 and min(forced) > 0, forced
    for name, value in parameters(big.model).items():
        torch.testing.assert_close(parameters(small.model)[name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["bart", "gpt2"])
def test_resume_from_checkpoint_ends_with_the_same_parameters(arch, make_trainer, tmp_path):
    """Mixing draws and beta are functions of the global step, so a resumed run repeats the uninterrupted one."""
    common = dict(dropout=False, objective="dagger", dagger_beta=0.5, dagger_beta_schedule="linear", max_steps=4)
    full = make_trainer(arch, "full", **common)
    full.train()
    first = make_trainer(arch, "parts", save_strategy="steps", save_steps=2, **common)
    first.train()
    resumed = make_trainer(arch, "parts", save_strategy="steps", save_steps=2, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    for name, value in parameters(full.model).items():
        torch.testing.assert_close(parameters(resumed.model)[name], value, atol=1e-6, rtol=0, msg=name)


def test_warmup_steps_are_teacher_forcing(make_trainer):
    dagger = make_trainer("bart", "dagger", dropout=False, objective="dagger", dagger_warmup_steps=2, max_steps=2)
    mle = make_trainer("bart", "mle", dropout=False, objective="mle", max_steps=2)
    dagger.train()
    mle.train()
    for name, value in parameters(mle.model).items():
        torch.testing.assert_close(parameters(dagger.model)[name], value, atol=1e-6, rtol=0, msg=name)
    betas = [entry["dagger_beta"] for entry in dagger.state.log_history if "dagger_beta" in entry]
    assert betas == [1.0, 1.0]


def test_collator_gives_relabelled_batches_to_a_custom_loop(make_trainer):
    trainer = make_trainer("bart", objective="mle")
    model, tokenizer = trainer.model, trainer.processing_class
    collator = DAggerDataCollator(
        DataCollatorForSeq2Seq(tokenizer, model=model),
        model,
        DAggerRelabeler(make_oracle("span_f1_partial", tokenizer), rollin="sample", temperature=0.7),
        beta=0.3,
    )
    dataset = trainer.train_dataset
    features = [dataset[i] for i in range(6)]
    batch = collator(features)
    assert set(batch) == {"input_ids", "attention_mask", "decoder_input_ids", "labels"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_bad_settings_are_named(tmp_path):
    from hf_seqobj import SeqObjSeq2SeqTrainingArguments

    for key, value, pattern in [
        ("oracle", "meteor", "'meteor'"),
        ("dagger_beta", 1.5, "1.5"),
        ("dagger_beta_schedule", "cosine", "'cosine'"),
        ("oracle_beam_size", 0, "oracle_beam_size"),
        ("rollin", "beam", "'beam'"),
        ("rollin_temperature", 0.0, "rollin_temperature"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective="dagger", **{key: value})


def test_rollin_ignores_the_checkpoint_generation_config_and_switches_checkpointing_off(make_trainer):
    """Roll-ins: an explicit GenerationConfig, no gradient checkpointing and the cache on in roll-ins."""
    trainer = make_trainer("bart", dropout=False, objective="dagger")
    model = trainer.model
    model.generation_config.num_beams = 3
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.max_length = 2
    model.activation_checkpointing_enable()
    model.train()
    seen = []

    def spy(module, args, kwargs):  # every forward pass of the roll-in decoder
        seen.append((model.is_activation_checkpointing, kwargs.get("use_cache"), model.training))

    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    batch = next(iter(trainer.get_train_dataloader()))
    relabelled, _ = DAggerRelabeler(make_oracle("span_f1", trainer.processing_class))(model, batch, beta=1.0)
    handle.remove()
    assert len(seen) > 1 and set(seen) == {(False, True, False)}
    assert model.is_activation_checkpointing and model.training
    width = relabelled["labels"].shape[1]
    assert torch.equal(relabelled["labels"], batch["labels"][:, :width]), "a checkpoint setting leaked in"


@pytest.mark.parametrize("arch, oracle", [("gpt2", "bleu"), ("t5", "rougeL"), ("bart", "rouge2")])
def test_dagger_with_the_beam_search_oracles(arch, oracle, make_trainer):
    """The BLEU / ROUGE oracles drive the same roll-in machinery (mixing included) on any tokens and log the score
    of the best completion they found."""
    trainer = make_trainer(
        arch,
        objective="dagger",
        oracle=oracle,
        oracle_beam_size=3,
        oracle_lookahead=2,
        dagger_beta=0.5,
        dagger_beta_schedule="constant",
        max_steps=2,
    )
    trainer.train()
    forced = [
        entry["oracle_forced_fraction"] for entry in trainer.state.log_history if "oracle_forced_fraction" in entry
    ]
    assert len(forced) == 2 and all(0.0 < value < 1.0 for value in forced)
    scores = [entry["oracle_score"] for entry in trainer.state.log_history if "oracle_score" in entry]
    assert len(scores) == 2 and all(0.0 <= value <= 1.0 for value in scores)


def test_beta_one_with_the_bleu_oracle_follows_the_reference(make_trainer):
    trainer = make_trainer("bart", dropout=False, objective="dagger")
    batch = next(iter(trainer.get_train_dataloader()))
    oracle = make_oracle("bleu", trainer.processing_class, beam_size=2, lookahead=2)
    relabelled, _ = DAggerRelabeler(oracle)(trainer.model, batch, beta=1.0)
    width = relabelled["labels"].shape[1]
    assert torch.equal(relabelled["labels"], batch["labels"][:, :width])


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_model_rollin_is_not_changed_by_the_checkpoint_generation_config(make_trainer, arch):
    """Without oracle forcing (beta = 0): a checkpoint's no_repeat_ngram_size / forced EOS do not alter roll-ins."""
    from transformers import GenerationConfig

    from hf_seqobj.decoding.rollin import generate_rollin, rollin_generation_config

    trainer = make_trainer(arch, dropout=False, objective="dagger")
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    config = rollin_generation_config(model, max_new_tokens=12)
    model.generation_config = GenerationConfig()
    clean = generate_rollin(model, batch, config)
    model.generation_config = GenerationConfig(no_repeat_ngram_size=1, forced_eos_token_id=model.config.eos_token_id)
    planted = generate_rollin(model, batch, config)
    assert torch.equal(planted.tokens, clean.tokens)
    if arch == "gpt2":  # the planted settings would change this roll-in: repeated tokens occur in it
        assert any(
            len(set(row[: int(n)].tolist())) < int(n) for row, n in zip(clean.tokens, clean.lengths, strict=True)
        )


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_rows_that_do_not_roll_in_are_teacher_forced_in_the_same_batch(arch, make_trainer):
    trainer = make_trainer(arch, dropout=False, objective="dagger")
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    relabeler = DAggerRelabeler(make_oracle("span_f1", trainer.processing_class))
    full, _ = relabeler(model, batch)
    rows = torch.tensor([True, False, True, True, False, False, True, False])
    mixed, stats = relabeler(model, batch, rollin_rows=rows)
    none, _ = relabeler(model, batch, rollin_rows=torch.zeros(8, dtype=torch.bool))
    with torch.no_grad():
        gold_loss = model(**batch).loss
        assert torch.allclose(model(**none).loss, gold_loss, atol=1e-5), "no roll-in rows: teacher forcing"
    for key in ("labels", "decoder_input_ids") if arch == "bart" else ("labels",):
        width = min(full[key].shape[1], mixed[key].shape[1])
        assert torch.equal(mixed[key][rows, :width], full[key][rows, :width]), key
    if arch == "bart":  # the other rows: the gold labels and the gold decoder inputs
        width = mixed["labels"].shape[1]
        gold = torch.nn.functional.pad(batch["labels"], (0, max(0, width - batch["labels"].shape[1])), value=-100)
        assert torch.equal(mixed["labels"][~rows], gold[~rows, :width])
    else:  # the other rows' labelled tokens are their gold targets, after the same prompt
        for row in (~rows).nonzero().flatten().tolist():
            assert mixed["labels"][row][mixed["labels"][row] != -100].tolist() == (
                batch["labels"][row][batch["labels"][row] != -100].tolist()
            )
    assert stats.rollin_length > 0


AGREEMENT = dict(dagger_beta=0.1, dagger_beta_schedule="agreement", rollin_fraction_schedule="agreement")


@pytest.mark.parametrize(
    "arch, follow",
    [("gpt2", False), ("bart", False), ("t5", False), ("gpt2", True), ("t5", True)],
    ids=["gpt2", "bart", "t5", "gpt2-agreement", "t5-agreement"],
)  # (the tiny BART's roll-ins agree with no span label in these steps: following would be the floor throughout)
def test_rollin_fraction_with_accumulation_makes_the_update_of_one_big_batch(arch, follow, make_trainer):
    common = dict(
        dropout=False, objective="dagger", dagger_beta=0.0, max_steps=2, rollin="greedy", rollin_fraction=0.5
    )
    if follow:  # the share follows the agreement counted over each whole accumulated step
        common.update(rollin_fraction_schedule="agreement", rollin_fraction=0.2, max_steps=3, agreement_smoothing=0)
    big = make_trainer(arch, "big", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    small = make_trainer(arch, "small", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    big.train()
    small.train()
    fractions = [entry["rollin_fraction"] for entry in big.state.log_history if "rollin_fraction" in entry]
    assert len(fractions) == common["max_steps"] and all(0.0 <= value <= 1.0 for value in fractions), fractions
    if follow:
        running = [
            [entry.get("running_agreement") for entry in trainer.state.log_history if "loss" in entry]
            for trainer in (big, small)
        ]
        assert running[0][0] is None and None not in running[0][1:] and max(running[0][1:]) > 0.2, running
        assert running[0] == pytest.approx(running[1], abs=1e-6)
    for name, value in parameters(big.model).items():
        torch.testing.assert_close(parameters(small.model)[name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("follow", [False, True], ids=["fixed", "agreement"])
def test_rollin_fraction_resumes_exactly(follow, make_trainer, tmp_path):
    common = dict(dropout=False, objective="dagger", dagger_beta=0.5, max_steps=4, rollin_fraction=0.5)
    if follow:  # the running agreement at the checkpoint is restored (without it steps 3-4 would use the floors)
        common.update(AGREEMENT, rollin_fraction=0.2)
    full = make_trainer("bart", "full", **common)
    full.train()
    first = make_trainer("bart", "parts", save_strategy="steps", save_steps=2, **common)
    first.train()
    resumed = make_trainer("bart", "parts", save_strategy="steps", save_steps=2, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    for name, value in parameters(full.model).items():
        torch.testing.assert_close(parameters(resumed.model)[name], value, atol=1e-6, rtol=0, msg=name)
    if follow:  # beta = max(floor, 1 - the running agreement of the steps before)
        logged = [entry for entry in full.state.log_history if "dagger_beta" in entry]
        assert logged[0]["dagger_beta"] == 0.1 and "running_agreement" not in logged[0]
        for entry in logged[1:]:
            assert entry["dagger_beta"] == pytest.approx(max(0.1, 1 - entry["running_agreement"]), abs=1e-4)
        assert any(entry["dagger_beta"] > 0.1 for entry in logged[1:]), logged


def test_rollin_settings_are_checked(tmp_path):
    from hf_seqobj import SeqObjSeq2SeqTrainingArguments

    for settings, pattern in [
        ({"rollin_fraction": 0.0}, "rollin_fraction"),
        ({"rollin_fraction": 1.5}, "1.5"),
        ({"rollin_fraction_schedule": "cosine"}, "'cosine'"),
        ({"rollin_fraction_schedule": "agreement"}, "floor, got 1.0"),
        ({"agreement_smoothing": 1.0}, "agreement_smoothing must be in"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective="dagger", **settings)
    with pytest.raises(ValueError, match="rollin_static_cache"):
        SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective="dagger", rollin_compile=True)


def test_the_bleu_oracle_says_eos_once_more_tokens_cannot_raise_bleu():
    """Past a reference it has fully matched, or deep in a repeated phrase, the best completion is to stop."""
    oracle = make_oracle_by_ids("bleu")
    reference = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, EOS]])
    for prefix in ([10, 11, 12, 13, 14, 15, 16, 17], [10, 11, 12, 13, 14, 15, 16, 17, 12, 13, 12, 13, 12, 13]):
        labels = oracle(torch.tensor([prefix + [EOS]]), reference)
        assert labels[0, len(prefix)] == EOS, prefix


def make_oracle_by_ids(name):
    from hf_seqobj.oracles.beam import BeamOracle

    return BeamOracle(metric=name, beam_size=5, lookahead=4, eos_token_id=EOS, pad_token_id=0)


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_rollins_run_to_their_length_ratio_and_are_relabelled_past_the_gold_length(ratio, make_trainer):
    trainer = make_trainer("bart", dropout=False, objective="dagger")
    model = trainer.model.eval()
    with torch.no_grad():
        model.final_logits_bias[0, EOS] = -1e4  # this model never stops by itself
    batch = next(iter(trainer.get_train_dataloader()))
    oracle = make_oracle("bleu", trainer.processing_class, beam_size=2, lookahead=2)
    relabelled, stats = DAggerRelabeler(oracle, length_ratio=ratio)(model, batch)
    gold = (batch["labels"] != -100).sum(1)
    labelled = (relabelled["labels"] != -100).sum(1)
    # every label position of a roll-in that never drew EOS holds the oracle's token (EOS included)
    assert labelled.tolist() == torch.ceil(gold * ratio).long().tolist()
    assert stats.rollin_length == pytest.approx(float(torch.ceil(gold * ratio).mean()))


def test_rollin_length_ratio_is_checked(tmp_path):
    from hf_seqobj import SeqObjSeq2SeqTrainingArguments

    with pytest.raises(ValueError, match="rollin_length_ratio must be >= 1, got 0.5"):
        SeqObjSeq2SeqTrainingArguments(
            output_dir=str(tmp_path), objective="dagger", oracle="bleu", rollin_length_ratio=0.5
        )
    with pytest.raises(ValueError, match="length_ratio must be >= 1, got 0.9"):
        DAggerRelabeler(make_oracle_by_ids("bleu"), length_ratio=0.9)
