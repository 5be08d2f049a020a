"""Tests of the BLEU / ROUGE oracles (hf_seqobj.oracles.beam, .exact, .align) against brute force.

The search space of the beam oracle is written down here in plain Python (`_space`): stopping now, every reference
tail p + ref[i : i + L_i], and every node p + u (u: 1..h distinct reference tokens) finished with the reference
suffix after its edit-distance alignment, L capped at the reference length under the stop rule
"reference_length". An exhaustive beam must return the best first token of that space (with the documented
tie-break); the exact ROUGE oracles must return the best first token over every completion of a small vocabulary
up to the allowed length (not only h tokens). Scores come from `hf_seqobj.rewards.score`, cross-checked against
sacrebleu and rouge-score.
"""

from __future__ import annotations

import itertools
import random

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from hf_seqobj.oracles import BeamOracle, BeamSearchResult, ExactRougeOracle, continuation_mask, make_oracle
from hf_seqobj.oracles.align import aligned_position, edit_distance_rows
from hf_seqobj.oracles.beam import TIE_TOLERANCE, _References
from hf_seqobj.rewards import SentenceMetric, score


EOS, PAD = 9, 8
_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
STOPS = ("reference_length", "metric")


def _words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def _library_score(metric: str, hyp: list[int], ref: list[int]) -> float:
    if metric == "bleu":
        return sacrebleu.sentence_bleu(_words(hyp), [_words(ref)], tokenize="none").score / 100
    return _ROUGE.score(_words(ref), _words(hyp))[metric].fmeasure


def _pad(rows: list[list[int]], width: int = 1) -> torch.Tensor:
    width = max([len(r) for r in rows] + [width])
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows], dtype=torch.long)


def _scores(metric: str, hyps: list[list[int]], refs: list[list[int]]) -> list[float]:
    return score(metric, _pad(hyps), _pad(refs)).tolist()


def _aligned(prefix: list[int], ref: list[int]) -> int:
    """The largest i with ED(prefix, ref[:i]) minimal (plain dynamic programme)."""
    row = list(range(len(ref) + 1))
    for a in prefix:
        new = [row[0] + 1]
        for i in range(1, len(ref) + 1):
            new.append(min(row[i - 1] + (ref[i - 1] != a), row[i] + 1, new[i - 1] + 1))
        row = new
    low = min(row)
    return max(i for i, d in enumerate(row) if d == low)


def _suffix(hyp: list[int], ref: list[int], start: int, cap: bool) -> list[int]:
    room = len(ref) - len(hyp) if cap else len(ref)
    return ref[start : start + max(0, min(len(ref) - start, room))]


def _space(prefix: list[int], ref: list[int], h: int, cap: bool) -> list[tuple[int, list[int]]]:
    """(first token, whole output) of every completion the beam oracle scores with an exhaustive beam."""
    out = [(EOS, list(prefix))]
    for i in range(len(ref) + 1):
        tail = _suffix(prefix, ref, i, cap)
        out.append((tail[0] if tail else EOS, prefix + tail))
    for depth in range(1, h + 1):
        if cap and len(prefix) + depth > len(ref):
            break
        for u in itertools.product(list(dict.fromkeys(ref)), repeat=depth):
            hyp = prefix + list(u)
            out.append((u[0], hyp + _suffix(hyp, ref, _aligned(hyp, ref), cap)))
    return out


def _expected(best: dict[int, float], prefix: list[int], ref: list[int]) -> tuple[int, set[int]]:
    """The documented choice among the best first tokens: the aligned token, then EOS, then reference order."""
    top = max(best.values())
    optimal = {tok for tok, v in best.items() if v >= top - TIE_TOLERANCE}
    j = _aligned(prefix, ref)
    gold = ref[j] if j < len(ref) else EOS
    if gold in optimal:
        return gold, optimal
    if EOS in optimal:
        return EOS, optimal
    order = sorted(range(len(ref)), key=lambda i: (i - j) % max(len(ref), 1))
    return next(ref[i] for i in order if ref[i] in optimal), optimal


def _random_case(rng: random.Random, vocab: int, max_ref: int, max_prefix: int):
    ref = [rng.randrange(vocab) for _ in range(rng.randint(0, max_ref))]
    if ref and rng.random() < 0.6:  # a roll-in close to the reference
        prefix = [tok if rng.random() < 0.7 else rng.randrange(vocab + 1) for tok in ref]
        prefix = prefix[: rng.randint(0, max_prefix)]
    else:
        prefix = [rng.randrange(vocab + 1) for _ in range(rng.randint(0, max_prefix))]
    return prefix, ref


# ------------------------------------------------------------------------------------------------------------------
# Whole outputs: the closed-form suffix statistics equal scoring the whole sequence
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["bleu", "rouge1", "rouge2"])
@pytest.mark.parametrize("stop", STOPS)
def test_completion_scores_equal_the_whole_sequence(metric, stop):
    rng = random.Random(f"complete-{metric}-{stop}")
    hyps, refs, got = [], [], []
    for _ in range(120):
        ref = [rng.randrange(3) for _ in range(rng.randint(0, 8))]
        hyp = [rng.randrange(4) for _ in range(rng.randint(0, 8))]
        metric_state = SentenceMetric(metric, _pad([ref]))
        references = _References(metric_state, None, stop == "reference_length")
        state = metric_state.prefix_states(torch.tensor([hyp], dtype=torch.long)).map(lambda x: x[:, -1:])
        values, lengths = references.complete(state, torch.arange(len(ref) + 1)[None, None])
        for start in range(len(ref) + 1):
            tail = _suffix(hyp, ref, start, stop == "reference_length")
            assert int(lengths[0, 0, start]) == len(tail)
            hyps.append(hyp + tail)
            refs.append(ref)
            got.append(float(values[0, 0, start]))
    want = _scores(metric, hyps, refs)
    assert got == pytest.approx(want, abs=1e-12)
    for i in random.Random(0).sample(range(len(hyps)), 40):
        assert want[i] == pytest.approx(_library_score(metric, hyps[i], refs[i]), abs=1e-6)


def test_alignment_rows_and_positions():
    rng = random.Random(3)
    for _ in range(200):
        prefix, ref = _random_case(rng, 4, 7, 9)
        metric_state = SentenceMetric("bleu", _pad([ref]))
        rows = edit_distance_rows(
            torch.tensor([prefix], dtype=torch.long).view(1, -1), metric_state.ref, metric_state.ref_valid
        )
        for t in range(len(prefix) + 1):
            j = aligned_position(rows[:, t], metric_state.ref_len)
            assert int(j[0]) == _aligned(prefix[:t], ref), (prefix[:t], ref)
    # a substitution counts as the reference word it replaced; an insertion and a deletion are skipped
    assert _aligned([1, 7], [1, 2, 3, 4]) == 2
    assert _aligned([1, 7, 2], [1, 2, 3, 4]) == 2
    assert _aligned([1, 3], [1, 2, 3, 4]) == 3


# ------------------------------------------------------------------------------------------------------------------
# Brute force
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["bleu", "rouge2", "rouge1"])
@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("h", [0, 1, 2])
def test_exhaustive_beam_equals_brute_force_of_its_search_space(metric, stop, h):
    rng = random.Random(f"beam-{metric}-{stop}-{h}")
    cases = [_random_case(rng, 4, 5, 6) for _ in range(40)]
    oracle = BeamOracle(metric, beam_size=4 ** max(h - 1, 1), lookahead=h, eos_token_id=EOS, stop=stop)
    cap = stop == "reference_length"
    for prefix, ref in cases:
        result = oracle.search(torch.tensor([prefix + [0]], dtype=torch.long), _pad([ref]), return_completions=True)
        for t in range(len(prefix) + 1):
            p = prefix[:t]
            space = _space(p, ref, h, cap)
            values = _scores(metric, [hyp for _, hyp in space], [ref] * len(space))
            best: dict[int, float] = {}
            for (first, _), value in zip(space, values):
                best[first] = max(best.get(first, -1.0), value)
            label = int(result.labels[0, t])
            if cap and len(p) >= len(ref):
                assert label == EOS
                continue
            expected, optimal = _expected(best, p, ref)
            assert label == expected, (metric, stop, h, p, ref, label, best)
            assert float(result.scores[0, t]) == pytest.approx(max(best.values()), abs=1e-12)
            completion = [tok for tok in result.completions[0, t].tolist() if tok != -100]
            assert completion[-1] == EOS and completion[0] == label
            assert _scores(metric, [p + completion[:-1]], [ref])[0] == pytest.approx(max(best.values()), abs=1e-12)


@pytest.mark.parametrize("metric", ["rougeL", "rouge1"])
@pytest.mark.parametrize("stop", STOPS)
def test_exact_rouge_oracles_equal_brute_force_over_every_completion(metric, stop):
    """Every completion over the reference's tokens and one foreign token, up to the allowed length (R + 2 when
    uncapped: longer ones only add tokens)."""
    rng = random.Random(f"exact-{metric}-{stop}")
    oracle = ExactRougeOracle(metric, eos_token_id=EOS, stop=stop)
    checked = 0
    for _ in range(70):
        prefix, ref = _random_case(rng, 4, 5, 6)
        result = oracle.search(torch.tensor([prefix + [0]], dtype=torch.long), _pad([ref]), return_completions=True)
        for t in range(len(prefix) + 1):
            p = prefix[:t]
            longest = max(len(ref) - t, 0) if stop == "reference_length" else len(ref) + 2
            hyps, firsts = [], []
            for length in range(longest + 1):
                for z in itertools.product([*dict.fromkeys(ref), 7], repeat=length):
                    hyps.append(p + list(z))
                    firsts.append(z[0] if z else EOS)
            best: dict[int, float] = {}
            for first, value in zip(firsts, _scores(metric, hyps, [ref] * len(hyps))):
                best[first] = max(best.get(first, -1.0), value)
            top = max(best.values())
            label = int(result.labels[0, t])
            assert best[label] >= top - TIE_TOLERANCE, (metric, stop, p, ref, label, best)
            assert float(result.scores[0, t]) == pytest.approx(top, abs=1e-12)
            completion = [tok for tok in result.completions[0, t].tolist() if tok != -100]
            assert completion[-1] == EOS and completion[0] == label
            assert _scores(metric, [p + completion[:-1]], [ref])[0] == pytest.approx(top, abs=1e-12)
            checked += 1
    assert checked > 150


# ------------------------------------------------------------------------------------------------------------------
# Following the oracle from one edit away reaches the best reference tail; the BLEU oracle stops
# ------------------------------------------------------------------------------------------------------------------


def _sentences(rng: random.Random, n: int) -> list[list[int]]:
    """Generated 'sentences': Zipf-like token ids with repeated function words, 5 to 14 tokens."""
    weights = [1 / (i + 1) for i in range(60)]
    return [rng.choices(range(10, 70), weights, k=rng.randint(5, 14)) for _ in range(n)]


def _one_edit(rng: random.Random, ref: list[int]) -> list[int]:
    """The reference's prefix up to a random point, with one substitution, insertion or deletion in it."""
    cut = rng.randint(1, len(ref))
    prefix = list(ref[:cut])
    at = rng.randrange(len(prefix))
    kind = rng.choice(["substitution", "insertion", "deletion"])
    if kind == "substitution":
        prefix[at] = rng.randrange(10, 70)
    elif kind == "insertion":
        prefix.insert(at, rng.randrange(10, 70))
    elif len(prefix) > 1:
        del prefix[at]
    return prefix


def _follow(oracle, prefix: list[int], ref: list[int]) -> list[int]:
    out = list(prefix)
    for _ in range(3 * len(ref) + 5):
        label = int(oracle.next_token(torch.tensor([out + [0]]), torch.tensor([len(out)]), _pad([ref]))[0])
        if label == EOS:
            return out
        out.append(label)
    raise AssertionError(f"the oracle did not stop: {out} for {ref}")


@pytest.mark.parametrize(
    "oracle",
    [
        BeamOracle("bleu", lookahead=0, eos_token_id=EOS),
        BeamOracle("bleu", beam_size=5, lookahead=1, eos_token_id=EOS),
        BeamOracle("bleu", beam_size=5, lookahead=2, eos_token_id=EOS),
        BeamOracle("rouge2", lookahead=0, eos_token_id=EOS),
        BeamOracle("rouge2", beam_size=5, lookahead=2, eos_token_id=EOS),
        ExactRougeOracle("rougeL", eos_token_id=EOS),
    ],
    ids=repr,
)
def test_following_the_oracle_from_one_edit_away_reaches_the_best_reference_tail(oracle):
    rng = random.Random(f"follow-{oracle!r}")
    refs = _sentences(rng, 40)
    for ref in refs:
        prefix = _one_edit(rng, ref)
        followed = _follow(oracle, prefix, ref)
        tails = [prefix + _suffix(prefix, ref, i, True) for i in range(len(ref) + 1)]
        best_tail = max(_scores(oracle.metric, tails, [ref] * len(tails)))
        assert len(followed) <= max(len(ref), len(prefix))
        assert _scores(oracle.metric, [followed], [ref])[0] >= best_tail - 1e-12, (prefix, ref, followed)


def test_the_bleu_oracle_says_eos_at_the_reference_length_with_40_percent_of_the_words_wrong():
    rng = random.Random(40)
    refs = _sentences(rng, 300)
    rollins = []
    for ref in refs:
        wrong = rng.sample(range(len(ref)), round(0.4 * len(ref)))
        rollins.append([rng.randrange(10, 70) if i in wrong else tok for i, tok in enumerate(ref)])
    oracle = make_oracle_by_ids("bleu")
    lengths = torch.tensor([len(r) for r in rollins])
    labels = oracle.next_token(_pad(rollins), lengths, _pad(refs))
    assert (labels == EOS).all()
    # uncapped, the sentence metric asks for more words on most rows (the run-on the cap prevents)
    uncapped = BeamOracle("bleu", lookahead=0, eos_token_id=EOS, pad_token_id=PAD, stop="metric")
    assert (uncapped.next_token(_pad(rollins), lengths, _pad(refs)) != EOS).float().mean() > 0.5


def make_oracle_by_ids(metric: str):
    return BeamOracle(metric, eos_token_id=EOS, pad_token_id=PAD)


# ------------------------------------------------------------------------------------------------------------------
# Whole words
# ------------------------------------------------------------------------------------------------------------------


def _word_vocab(marker: str) -> tuple[dict[str, int], list[list[int]]]:
    """A vocabulary of word starts and continuation pieces (compound words) and references made of whole words."""
    pieces = ["Haus", "tür", "schlüssel", "Fahr", "rad", "weg", "Ball", "spiel", "platz", "Mann", "Frau", "."]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": EOS}
    for piece in pieces:
        vocab.setdefault(marker + piece, len(vocab) + 10)
        vocab.setdefault(piece.lower(), len(vocab) + 10)
    start = [vocab[marker + p] for p in pieces[:-1]]
    cont = [vocab[p.lower()] for p in ("tür", "schlüssel", "rad", "weg", "spiel", "platz")]
    rng = random.Random(marker)
    refs = []
    for _ in range(60):
        ref = []
        for _ in range(rng.randint(2, 5)):
            ref.append(rng.choice(start))
            ref += rng.sample(cont, rng.randint(0, 2))
        refs.append(ref + [vocab["."]])
    return vocab, refs


@pytest.mark.parametrize("marker", ["Ġ", "▁"])
@pytest.mark.parametrize("metric", ["bleu", "rouge2", "rougeL", "rouge1"])
def test_labels_never_start_a_word_piece_the_aligned_reference_does_not_continue(marker, metric):
    vocab, refs = _word_vocab(marker)
    mask = continuation_mask(vocab)
    assert mask[vocab["tür"]] and not mask[vocab[marker + "Haus"]] and not mask[vocab["</s>"]]
    if metric in ("rougeL", "rouge1"):
        oracle = ExactRougeOracle(metric, eos_token_id=EOS, continuation_ids=mask)
    else:
        oracle = BeamOracle(metric, beam_size=5, lookahead=2, eos_token_id=EOS, continuation_ids=mask)
    rng = random.Random(f"words-{marker}-{metric}")
    continuation_labels = 0
    for ref in refs:
        tokens = list(vocab.values())
        rollin = [tok if rng.random() < 0.6 else rng.choice(tokens) for tok in ref]
        labels = oracle(torch.tensor([rollin]), _pad([ref]))[0].tolist()
        for t, label in enumerate(labels):
            if label >= 0 and label != EOS and mask[label]:
                continuation_labels += 1
                j = _aligned(rollin[:t], ref)
                assert j < len(ref) and ref[j] == label, (rollin[:t], ref, label)
    assert continuation_labels > 0  # the aligned continuations are still asked for


@pytest.mark.parametrize("metric", ["bleu", "rouge2", "rougeL", "rouge1"])
def test_the_cap_finishes_a_word_the_prefix_has_begun(metric):
    """At the reference length, a prefix that ends inside a reference word (one wrong word earlier made it long) gets
    the word's next piece, then EOS once the word is whole; without word marks the cap says EOS at once."""
    vocab, _ = _word_vocab("Ġ")
    mask = continuation_mask(vocab)
    haus, tuer, schluessel, mann, dot = (vocab[w] for w in ("ĠHaus", "tür", "schlüssel", "ĠMann", "."))
    ref = [mann, haus, tuer, schluessel, dot]
    prefix = [mann, vocab["ĠFrau"], mann, haus]  # as long as the reference up to "Haus": 4 of 5 tokens
    prefix += [tuer]  # now 5: at the cap, inside the word "Haustürschlüssel"

    def oracle(words: torch.Tensor | None):
        if metric in ("rougeL", "rouge1"):
            return ExactRougeOracle(metric, eos_token_id=EOS, continuation_ids=words)
        return BeamOracle(metric, beam_size=5, lookahead=2, eos_token_id=EOS, continuation_ids=words)

    with_words = oracle(mask)
    labels = with_words(torch.tensor([prefix + [schluessel, dot, EOS]]), _pad([ref]))[0].tolist()
    # the word is finished ("." without a mark continues it too, as byte-level BPE writes "party."), then EOS
    assert labels[5:] == [schluessel, dot, EOS]
    step = with_words.next_token(torch.tensor([prefix]), torch.tensor([5]), _pad([ref]))
    assert step.tolist() == [schluessel]
    wrong = prefix[:-1] + [vocab["spiel"]]  # a piece the reference does not have there: nothing to finish
    assert with_words.next_token(torch.tensor([wrong]), torch.tensor([5]), _pad([ref])).tolist() == [EOS]
    assert oracle(None).next_token(torch.tensor([prefix]), torch.tensor([5]), _pad([ref])).tolist() == [EOS]


def test_continuation_mask_without_markers_is_empty():
    assert not continuation_mask({"a": 0, "b": 1, "</s>": 2}).any()


# ------------------------------------------------------------------------------------------------------------------
# next_token, masking, shapes, errors
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "oracle",
    [
        BeamOracle("bleu", lookahead=0, eos_token_id=EOS, pad_token_id=PAD),
        BeamOracle("rouge2", beam_size=3, lookahead=2, eos_token_id=EOS, pad_token_id=PAD),
        ExactRougeOracle("rougeL", eos_token_id=EOS, pad_token_id=PAD),
        ExactRougeOracle("rouge1", eos_token_id=EOS, pad_token_id=PAD, stop="metric"),
    ],
    ids=repr,
)
def test_next_token_step_by_step_equals_the_columns(oracle):
    g = torch.Generator().manual_seed(7)
    batch, length = 12, 10
    refs = torch.randint(10, 30, (batch, length + 1), generator=g)
    refs[:, length] = EOS
    refs[2, 4] = EOS
    refs[3, 6:] = -100
    hyps = torch.randint(10, 30, (batch, length), generator=g)
    hyps[:, ::2] = refs[:, :length:2]
    hyps[5, 3] = EOS  # a roll-in that has ended: -100 after it
    columns = oracle(torch.cat([hyps, torch.full((batch, 1), 10)], 1), refs)
    rng = random.Random(7)
    for t in range(length + 1):
        rows = torch.tensor(sorted(rng.sample(range(batch), 5)))
        lengths = torch.full((batch,), t)
        assert torch.equal(oracle.next_token(hyps[:, :t], lengths, refs, rows=rows), columns[rows, t])
        assert torch.equal(oracle.next_token(hyps[:, :t], lengths, refs), columns[:, t])
    assert (columns[5, 4:] == -100).all()
    lengths = torch.tensor([rng.randint(0, length) for _ in range(batch)])
    assert torch.equal(oracle.next_token(hyps, lengths, refs), columns[torch.arange(batch), lengths])


def test_positions_after_eos_or_padding_are_ignored_and_shapes():
    oracle = BeamOracle("bleu", eos_token_id=EOS, pad_token_id=PAD)
    refs = torch.tensor([[1, 2, 3, EOS], [1, 2, 3, -100], [1, 2, 3, PAD]])
    prefixes = torch.tensor([[1, EOS, 2, 3, 4], [1, 2, -100, 3, 4], [PAD, 1, 2, 3, 4]])
    labels = oracle(prefixes, refs)
    assert labels[0, :2].tolist() == [1, 2] and (labels[0, 2:] == -100).all()
    assert labels[1, :3].tolist() == [1, 2, 3] and (labels[1, 3:] == -100).all()
    assert labels[2, 0] == 1 and (labels[2, 1:] == -100).all()
    result = oracle.search(prefixes, refs)
    assert isinstance(result, BeamSearchResult) and result.completions is None
    assert torch.isnan(result.scores[0, 2:]).all() and result.scores.dtype == torch.float64
    assert oracle(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)).shape == (0, 4)
    assert oracle(torch.zeros(2, 0, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)).shape == (2, 0)
    for other in (oracle, ExactRougeOracle("rougeL", eos_token_id=EOS)):
        assert (
            other(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long)).tolist() == [[EOS] * 3] * 2
        )


@pytest.mark.parametrize("metric", ["bleu", "rouge2", "rougeL", "rouge1"])
def test_teacher_forcing_prefix_gets_the_gold_token(metric):
    rng = random.Random(f"gold-prefix-{metric}")
    refs = [[rng.randrange(4) for _ in range(rng.randint(1, 6))] for _ in range(12)]
    oracle = (
        ExactRougeOracle(metric, eos_token_id=EOS)
        if metric.startswith("rouge") and metric != "rouge2"
        else (BeamOracle(metric, eos_token_id=EOS))
    )
    labels = oracle(_pad([ref + [EOS] for ref in refs]), _pad(refs))
    for ref, row in zip(refs, labels.tolist()):
        assert row == ref + [EOS] + [-100] * (6 - len(ref))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="metric = 'rougeL'; accepted by the beam oracle"):
        BeamOracle("rougeL", eos_token_id=EOS)
    with pytest.raises(ValueError, match=r"stop = 'never'; accepted: 'reference_length', 'metric'"):
        BeamOracle("bleu", eos_token_id=EOS, stop="never")
    with pytest.raises(ValueError, match="lookahead = -1; accepted: an int >= 0"):
        BeamOracle("bleu", lookahead=-1, eos_token_id=EOS)
    with pytest.raises(ValueError, match="metric = 'bleu'; accepted: 'rougeL', 'rouge1'"):
        ExactRougeOracle("bleu", eos_token_id=EOS)
    with pytest.raises(ValueError, match="continuation_ids"):
        BeamOracle("bleu", eos_token_id=EOS, continuation_ids=[1, 2])


def test_make_oracle_picks_the_exact_and_searched_oracles(tmp_path):
    from hf_seqobj.modeling import train_tokenizer

    tokenizer = train_tokenizer(["ein Haus", "zwei Häuser und Haustüren"], vocab_size=300, tokenizer_type="bpe")
    for metric in ("rougeL", "rouge1"):  # by default in rouge-score's units (tests/test_oracle_units.py)
        assert isinstance(make_oracle(metric, tokenizer).oracle, ExactRougeOracle)
        assert isinstance(make_oracle(metric, tokenizer, units="ids"), ExactRougeOracle)
    bleu = make_oracle("bleu", tokenizer, stop="metric")
    assert isinstance(bleu, BeamOracle) and bleu.stop == "metric" and bleu.continuation_ids is not None
    assert make_oracle("rouge2", tokenizer, whole_words=False).oracle.continuation_ids is None
    assert make_oracle("rouge2", tokenizer, units="ids").continuation_ids is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("metric", ["bleu", "rouge2"])
def test_cuda_equals_cpu(metric):
    rng = random.Random(f"cuda-{metric}")
    cases = [_random_case(rng, 5, 8, 8) for _ in range(64)]
    prefixes = _pad([p for p, _ in cases], 8)[:, :8].clamp(min=0)
    refs = _pad([r for _, r in cases])
    oracle = BeamOracle(metric, beam_size=5, lookahead=2, eos_token_id=EOS, pad_token_id=PAD)
    on_gpu = oracle.search(prefixes.cuda(), refs, return_completions=True)
    on_cpu = oracle.search(prefixes, refs, return_completions=True)
    assert torch.equal(on_gpu.labels.cpu(), on_cpu.labels)
    torch.testing.assert_close(on_gpu.scores.cpu(), on_cpu.scores, equal_nan=True, atol=1e-12, rtol=0)
