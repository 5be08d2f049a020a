"""The oracle registry (hf_seqobj.oracles.register_oracle) and the oracles of users' sentence metrics
(register_sentence_metric, SentenceMetricOracle): one registration reaches the settings, the command line, the task
check, the model card and the docs; a user's metric trains DAgger; with the library's BLEU as the user's metric the
labels are those of the BLEU beam oracle."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from hf_seqobj.oracles import (
    ORACLES,
    BeamOracle,
    OracleSettings,
    SentenceMetricOracle,
    continuation_mask,
    get_oracle,
    make_oracle,
    oracle_names,
    register_oracle,
    register_sentence_metric,
)
from hf_seqobj.rewards import score


EOS, PAD = 9, 8
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry():
    """The registry, restored after the test (so that other tests and the generated docs see the built-in oracles)."""
    before = dict(ORACLES)
    yield ORACLES
    ORACLES.clear()
    ORACLES.update(before)


def _pad(rows: list[list[int]], width: int = 1) -> torch.Tensor:
    width = max([len(r) for r in rows] + [width])
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows], dtype=torch.long)


def library_bleu(candidates: list[list[int]], references: list[list[int]]) -> torch.Tensor:
    """The library's sentence BLEU as a user's batched metric."""
    return score("bleu", _pad(candidates), _pad(references))


def token_f1(candidates: list[list[int]], references: list[list[int]]) -> list[float]:
    out = []
    for candidate, reference in zip(candidates, references, strict=True):
        overlap = sum((Counter(candidate) & Counter(reference)).values())
        out.append(2 * overlap / max(len(candidate) + len(reference), 1))
    return out


def _random_batch(rng: random.Random, rows: int, vocab: int, max_ref: int, width: int):
    refs, rollins = [], []
    for _ in range(rows):
        ref = [rng.randrange(vocab) for _ in range(rng.randint(0, max_ref))]
        if ref and rng.random() < 0.6:  # a roll-in close to the reference
            rollin = [tok if rng.random() < 0.7 else rng.randrange(vocab + 1) for tok in ref]
        else:
            rollin = [rng.randrange(vocab + 1) for _ in range(rng.randint(0, width))]
        rollins.append((rollin + [rng.randrange(vocab)] * width)[:width])
        refs.append(ref + [EOS])
    return torch.tensor(rollins, dtype=torch.long), _pad(refs)


# ------------------------------------------------------------------------------------------------------------------
# The generic search equals the BLEU beam oracle with the library's BLEU as the metric
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["reference_length", "metric"])
@pytest.mark.parametrize("h, k", [(0, 5), (1, 5), (2, 2), (2, 16)])
def test_library_bleu_as_the_users_metric_gives_the_bleu_oracles_labels(h, k, stop):
    rng = random.Random(f"generic-{h}-{k}-{stop}")
    beam = BeamOracle("bleu", beam_size=k, lookahead=h, eos_token_id=EOS, pad_token_id=PAD, stop=stop)
    generic = SentenceMetricOracle(
        library_bleu, beam_size=k, lookahead=h, eos_token_id=EOS, pad_token_id=PAD, stop=stop
    )
    checked = 0
    for _ in range(4):
        rollins, refs = _random_batch(rng, 12, 4, 6, 8)
        rollins[0, 3] = EOS  # a roll-in that has ended: -100 after it
        refs[1, 2] = PAD  # padding inside a reference is skipped
        want, got = beam.search(rollins, refs), generic.search(rollins, refs)
        assert torch.equal(got.labels, want.labels)
        torch.testing.assert_close(got.scores, want.scores, equal_nan=True, atol=1e-12, rtol=0)
        torch.testing.assert_close(got.gold_scores, want.gold_scores, equal_nan=True, atol=1e-12, rtol=0)
        checked += int((want.labels != -100).sum())
        assert (got.labels[0, 4:] == -100).all()
    assert checked > 300


@pytest.mark.parametrize("h", [0, 1])
def test_whole_words_and_next_token_with_rows_equal_the_bleu_oracle(h):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": EOS, **{f"Ġw{i}": 10 + i for i in range(6)}}
    vocab.update({f"p{i}": 20 + i for i in range(4)})  # pieces that continue a word
    mask = continuation_mask(vocab)
    beam = BeamOracle("bleu", lookahead=h, eos_token_id=EOS, continuation_ids=mask)
    generic = SentenceMetricOracle(library_bleu, lookahead=h, eos_token_id=EOS, continuation_ids=mask)
    rng = random.Random(f"words-{h}")
    tokens = list(vocab.values())
    refs = _pad([[rng.choice(tokens[3:]) for _ in range(rng.randint(1, 7))] + [EOS] for _ in range(10)])
    rollins = torch.tensor([[rng.choice(tokens[3:]) for _ in range(8)] for _ in range(10)])
    columns = beam(rollins, refs)
    assert torch.equal(generic(rollins, refs), columns)
    for t in (0, 3, 8):
        rows = torch.tensor([1, 4, 5, 9])
        lengths = torch.full((10,), t)
        want = beam.next_token(rollins[:, :t], lengths, refs)
        if t < 8:
            assert torch.equal(want, columns[:, t])
        assert torch.equal(generic.next_token(rollins[:, :t], lengths, refs, rows=rows), want[rows])
        assert torch.equal(generic.next_token(rollins[:, :t], lengths, refs), want)
    assert (columns[..., None] == torch.tensor([20, 21, 22, 23])).any()  # continuations are still labelled


def test_one_call_of_a_batched_metric_per_call_and_the_per_sentence_form_agrees():
    calls = []

    def counted(candidates, references):
        calls.append(len(candidates))
        assert all(EOS not in c and -100 not in c for c in candidates)
        return token_f1(candidates, references)

    rollins, refs = _random_batch(random.Random(1), 6, 5, 7, 8)
    batched = SentenceMetricOracle(counted, lookahead=1, eos_token_id=EOS)
    labels = batched(rollins, refs)
    assert len(calls) == 1 and calls[0] > 6 * 8  # one call, every distinct candidate of the batch
    single = SentenceMetricOracle(lambda c, r: token_f1([c], [r])[0], batched=False, lookahead=1, eos_token_id=EOS)
    assert torch.equal(single(rollins, refs), labels)
    deeper = SentenceMetricOracle(counted, beam_size=2, lookahead=3, eos_token_id=EOS)
    calls.clear()
    deeper(rollins, refs)
    assert len(calls) == 3  # depths 0-1, 2, 3


def test_bad_metrics_and_settings_are_one_line_errors():
    rollins, refs = torch.tensor([[1, 2]]), torch.tensor([[1, 2, EOS]])
    few = SentenceMetricOracle(lambda c, r: [0.5], eos_token_id=EOS, name="few")
    with pytest.raises(ValueError, match=r"score_fn of oracle 'few' returned 1 scores for \d+ candidates"):
        few(rollins, refs)
    nan = SentenceMetricOracle(lambda c, r: [float("nan")] * len(c), eos_token_id=EOS, name="nan")
    with pytest.raises(ValueError, match=r"returned nan for candidate .*; accepted: finite floats"):
        nan(rollins, refs)
    text = SentenceMetricOracle(lambda c, r: "high", eos_token_id=EOS, name="text")
    with pytest.raises(ValueError, match=r"returned str .*accepted: one float per candidate"):
        text(rollins, refs)
    with pytest.raises(ValueError, match="score_fn = 3; accepted: a callable"):
        SentenceMetricOracle(3, eos_token_id=EOS)
    with pytest.raises(ValueError, match="lookahead = -1; accepted: an int >= 0"):
        SentenceMetricOracle(token_f1, lookahead=-1, eos_token_id=EOS)
    with pytest.raises(ValueError, match="stop = 'never'"):
        SentenceMetricOracle(token_f1, eos_token_id=EOS, stop="never")
    with pytest.raises(ValueError, match=r"prefix_lengths\[0\] = 5; accepted: 0 <= length <= T = 2"):
        SentenceMetricOracle(token_f1, eos_token_id=EOS).next_token(rollins, torch.tensor([5]), refs)


# ------------------------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------------------------


def test_the_built_in_oracles_are_registrations():
    assert list(ORACLES) == ["span_f1", "span_f1_partial", "bleu", "rouge1", "rouge2", "rougeL", "evaluate"]
    assert oracle_names(output="bio_tags") == ("span_f1", "span_f1_partial")
    assert oracle_names(output="text", exact=True) == ("rouge1", "rougeL")
    assert get_oracle("bleu").settings == ("beam_size", "lookahead", "stop", "whole_words")
    with pytest.raises(
        ValueError, match=r"registered oracles \(span_f1, .*evaluate\), got 'blue' \(did you mean 'bleu'"
    ):
        get_oracle("blue")


def test_register_oracle_checks_its_arguments(registry):
    def factory(tokenizer, settings):
        return SentenceMetricOracle(token_f1, eos_token_id=tokenizer.eos_token_id)

    for kwargs, pattern in [
        ({"name": "bleu"}, "'bleu' is already registered; pass replace=True"),
        ({"name": "a b"}, "oracle name = 'a b'; accepted"),
        ({"output": "tags"}, "output = 'tags'; accepted: 'bio_tags', 'text'"),
        ({"factory": None}, "factory = None; accepted: a callable"),
        ({"doc": "two\nlines"}, "doc = 'two\\\\nlines'; accepted: one non-empty line"),
        ({"settings": ("beam",)}, r"settings = \('beam',\); accepted: names among beam_size, lookahead"),
    ]:
        arguments = {"name": "mine", "output": "text", "factory": factory, "doc": "my oracle", **kwargs}
        with pytest.raises(ValueError, match=pattern):
            register_oracle(arguments.pop("name"), **arguments)
    assert "mine" not in ORACLES
    spec = register_oracle("mine", output="text", factory=factory, doc="my oracle", settings=("stop",))
    assert ORACLES["mine"] is spec and spec.exact is False
    with pytest.raises(ValueError, match="beam_size = 0; accepted: an int >= 1"):
        OracleSettings(beam_size=0)


def test_make_oracle_passes_the_settings_to_a_registered_factory(registry, tiny_checkpoints):
    from hf_seqobj.modeling import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(tiny_checkpoints["bart"])
    register_sentence_metric("token_f1", token_f1, doc="bag-of-tokens F1")
    oracle = make_oracle("token_f1", tokenizer, beam_size=3, lookahead=2, stop="metric", whole_words=False)
    assert isinstance(oracle, SentenceMetricOracle) and oracle.name == "token_f1"
    assert (oracle.beam_size, oracle.lookahead, oracle.stop, oracle.continuation_ids) == (3, 2, "metric", None)
    assert oracle.eos_token_id == tokenizer.eos_token_id and oracle.pad_token_id == tokenizer.pad_token_id
    assert make_oracle("token_f1", tokenizer).continuation_ids is not None  # whole words by default (BPE)


def test_a_name_registered_after_import_is_a_setting_a_flag_and_checked_against_the_task(registry, tmp_path):
    from hf_seqobj import SeqObjSeq2SeqTrainingArguments
    from hf_seqobj.cli import parse_settings, train_parser
    from hf_seqobj.run import check_oracle_fits_task

    base = {"task": "ner", "dataset_name": "synthetic", "architecture": "bart", "output_dir": "unused"}
    with pytest.raises(ValueError, match=r"oracle must be one of the registered oracles \(.*rougeL.*\), got 'tag_f1'"):
        SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective="dagger", oracle="tag_f1")
    register_sentence_metric("tag_f1", token_f1, doc="bag-of-tags F1")
    args = SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective="dagger", oracle="tag_f1")
    assert args.oracle == "tag_f1"
    assert "--oracle {span_f1,span_f1_partial,bleu,rouge1,rouge2,rougeL,evaluate,tag_f1}" in train_parser(
        base, "test"
    ).format_help().replace("\n", " ")
    data, training = parse_settings({**base, "task": "arithmetic"}, ["--objective", "dagger"], "test")[1:]
    training.oracle = "tag_f1"
    check_oracle_fits_task(training, data)  # a text oracle fits a text task
    data, training = parse_settings(base, ["--objective", "dagger"], "test")[1:]
    training.oracle = "tag_f1"
    with pytest.raises(
        ValueError, match=r"oracle 'tag_f1' scores text, but task 'ner' outputs BIO tag.*span_f1_partial"
    ):
        check_oracle_fits_task(training, data)
    register_oracle("tag_f1", output="bio_tags", factory=lambda t, s: None, doc="bag-of-tags F1", replace=True)
    check_oracle_fits_task(training, data)  # the registration decides, not the name
    with pytest.raises(Exception, match="invalid choice: 'tag_f2'"):
        parse_settings(base, ["--objective", "dagger", "--oracle", "tag_f2"], "test")


# ------------------------------------------------------------------------------------------------------------------
# DAgger with a user's metric; the documented example
# ------------------------------------------------------------------------------------------------------------------


def test_dagger_trains_with_a_user_registered_sentence_metric(registry, make_trainer):
    from hf_seqobj.model_card import trainer_model_card

    seen = []

    def my_metric(candidates, references):
        seen.append(len(candidates))
        assert all(isinstance(token, int) for candidate in candidates for token in candidate)
        return token_f1(candidates, references)

    register_sentence_metric("my_token_f1", my_metric, doc="my bag-of-tokens F1 on token ids")
    trainer = make_trainer(
        "gpt2",
        objective="dagger",
        oracle="my_token_f1",
        oracle_lookahead=1,
        dagger_beta=0.5,
        dagger_beta_schedule="constant",
        max_steps=2,
    )
    assert isinstance(trainer.objective.oracle, SentenceMetricOracle)
    before = {name: value.detach().clone() for name, value in trainer.model.named_parameters()}
    trainer.train()
    forced = [e["oracle_forced_fraction"] for e in trainer.state.log_history if "oracle_forced_fraction" in e]
    assert len(forced) == 2 and all(0.0 < value < 1.0 for value in forced)
    assert len(seen) > 2 and sum(seen) > 100  # relabelling and the roll-in's mixing both asked the metric
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    card = trainer_model_card(trainer).text
    assert "| `oracle` | `my_token_f1` |" in card
    assert "Oracle: `my_token_f1`, my bag-of-tokens F1 on token ids (scores text)." in card


def test_the_documented_example_runs(registry, capsys):
    text = (ROOT / "docs" / "oracles.md").read_text(encoding="utf-8")
    section = text.split("## Your own metric", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/oracles.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "tensor([[5, 6, 7, 2]])"
    assert ORACLES["token_f1"].output == "text" and ORACLES["token_f1"].doc == "bag-of-tokens F1 on token ids"
