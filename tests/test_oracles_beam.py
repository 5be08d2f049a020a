"""Tests of the BLEU / ROUGE beam oracle (hf_seqobj.oracles.beam) against brute force over completions.

"Equals brute force" means: with a beam that keeps every partial completion, the oracle's label is the first token
of a best completion of at most h tokens (brute force: every sequence of h or fewer candidate tokens, candidates =
the distinct reference tokens, EOS = stopping), i.e. the label is in the brute-force argmax set of first tokens
(scores within `TIE_TOLERANCE` tie), and it is exactly the member of that set the documented tie-break picks (the
gold next token, else EOS, else the first in reference order). Brute-force scores come from
`hf_seqobj.rewards.score`, cross-checked here against sacrebleu and rouge-score.
"""

from __future__ import annotations

import collections
import itertools
import random

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from hf_seqobj.oracles import BeamOracle, BeamSearchResult
from hf_seqobj.oracles.beam import TIE_TOLERANCE
from hf_seqobj.rewards import METRICS, score


EOS, PAD = 5, 6
_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])


def _words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def _library_score(metric: str, hyp: list[int], ref: list[int]) -> float:
    if metric == "bleu":
        return sacrebleu.sentence_bleu(_words(hyp), [_words(ref)], tokenize="none").score / 100
    return _ROUGE.score(_words(ref), _words(hyp))[metric].fmeasure


def _pad(rows: list[list[int]], width: int = 1) -> torch.Tensor:
    width = max([len(r) for r in rows] + [width])
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows], dtype=torch.long)


def _random_batch(rng: random.Random, n: int, vocab: int, max_ref: int, width: int):
    """Roll-ins [n, width] and references (noisy tensors and clean lists); vocab <= EOS."""
    prefixes, refs, clean_refs = [], [], []
    for _ in range(n):
        ref = [rng.randrange(vocab) for _ in range(rng.randint(0, max_ref))]
        clean_refs.append(ref)
        noisy = []
        for token in ref:
            if rng.random() < 0.1:
                noisy.append(rng.choice([-100, PAD]))
            noisy.append(token)
        if rng.random() < 0.5:
            noisy += [EOS, rng.randrange(vocab)]
        refs.append(noisy)
        if ref and rng.random() < 0.5:  # a roll-in close to the reference
            prefix = [tok if rng.random() < 0.7 else rng.randrange(vocab) for tok in ref]
            prefix = (prefix + [rng.randrange(vocab) for _ in range(width)])[:width]
        else:
            prefix = [rng.randrange(vocab) for _ in range(width)]
        for i in range(width):
            if rng.random() < 0.06:
                prefix[i] = rng.choice([EOS, -100, PAD])
        prefixes.append(prefix)
    return torch.tensor(prefixes, dtype=torch.long), _pad(refs), clean_refs


def _open_positions(prefix: list[int]) -> list[bool]:
    """open[t]: prefix[:t] holds no EOS, -100 or PAD (t = 0..len(prefix))."""
    out, ok = [], True
    for token in [*prefix, None]:
        out.append(ok)
        ok = ok and token not in (EOS, -100, PAD)
    return out


def _candidates(ref: list[int]) -> list[int]:
    return list(dict.fromkeys(ref))


def _tie_break(best: dict[int, float], ref: list[int], t: int) -> tuple[int, set[int], str]:
    """The documented choice among the best first tokens, the set of best first tokens, and the rule that chose."""
    top = max(best.values())
    optimal = {token for token, value in best.items() if value >= top - TIE_TOLERANCE}
    gold = ref[t] if t < len(ref) else EOS
    if len(optimal) == 1:
        return next(iter(optimal)), optimal, "unique"
    if gold in optimal:
        return gold, optimal, "gold"
    if EOS in optimal:
        return EOS, optimal, "eos"
    return next(token for token in _candidates(ref) if token in optimal), optimal, "reference order"


def _brute_force(metric: str, problems: list[tuple[list[int], list[int], int]]):
    """For each (prefix, ref, h): the best score of every first token over all completions of <= h tokens."""
    hyps, owners, firsts = [], [], []
    for i, (prefix, ref, h) in enumerate(problems):
        for length in range(h + 1):
            for z in itertools.product(_candidates(ref), repeat=length):
                hyps.append(prefix + list(z))
                owners.append(i)
                firsts.append(z[0] if z else EOS)
    values = score(metric, _pad(hyps), _pad([problems[i][1] for i in owners])).tolist()
    best: list[dict[int, float]] = [{} for _ in problems]
    for i, first, value in zip(owners, firsts, values):
        best[i][first] = max(best[i].get(first, -1.0), value)
    return best, (hyps, owners, values)


# ------------------------------------------------------------------------------------------------------------------
# (a) An exhaustive beam equals brute force
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_exhaustive_beam_equals_brute_force(metric):
    rng = random.Random(f"exhaustive-{metric}")
    prefixes, refs, clean_refs = _random_batch(rng, n=28, vocab=5, max_ref=4, width=4)
    h = 5  # >= reference length + 1
    oracle = BeamOracle(metric, beam_size=4 ** (h - 1), lookahead=h, eos_token_id=EOS, pad_token_id=PAD)
    result = oracle.search(prefixes, refs, return_completions=True)
    assert result.labels.shape == prefixes.shape and result.completions.shape == (*prefixes.shape, h)
    problems, where = [], []
    for b, ref in enumerate(clean_refs):
        prefix = prefixes[b].tolist()
        for t, is_open in enumerate(_open_positions(prefix)[:-1]):
            if not is_open:
                assert result.labels[b, t] == -100 and (result.completions[b, t] == -100).all()
                continue
            problems.append((prefix[:t], ref, h))
            where.append((b, t))
    best, (hyps, owners, values) = _brute_force(metric, problems)
    for (b, t), (prefix, ref, _), best_by_first in zip(where, problems, best):
        expected, optimal, _ = _tie_break(best_by_first, ref, t)
        label = int(result.labels[b, t])
        assert label in optimal, (metric, prefix, ref, label, best_by_first)
        assert label == expected, (metric, prefix, ref, label, best_by_first)
        assert float(result.scores[b, t]) == pytest.approx(max(best_by_first.values()), abs=1e-12)
    # The brute-force scores are the libraries' scores.
    for i in random.Random(0).sample(range(len(hyps)), 60):
        want = _library_score(metric, hyps[i], problems[owners[i]][1])
        assert values[i] == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# (b) Never worse than the gold suffix; the reported completion has the reported score
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_never_worse_than_gold_suffix(metric):
    rng = random.Random(f"gold-{metric}")
    prefixes, refs, clean_refs = _random_batch(rng, n=16, vocab=5, max_ref=7, width=7)
    for beam_size, lookahead in [(1, 1), (1, 3), (2, 2), (3, 6), (5, 4)]:
        oracle = BeamOracle(metric, beam_size=beam_size, lookahead=lookahead, eos_token_id=EOS, pad_token_id=PAD)
        result = oracle.search(prefixes, refs, return_completions=True)
        gold_hyps, best_hyps, got_gold, got_best = [], [], [], []
        ref_rows = []
        for b, ref in enumerate(clean_refs):
            prefix = prefixes[b].tolist()
            for t, is_open in enumerate(_open_positions(prefix)[:-1]):
                if not is_open:
                    continue
                completion = [tok for tok in result.completions[b, t].tolist() if tok != -100]
                assert completion[0] == result.labels[b, t]
                if completion[-1] == EOS:  # ended by EOS within h tokens, or cut at h tokens
                    assert len(completion) <= lookahead and EOS not in completion[:-1]
                else:
                    assert len(completion) == lookahead
                assert all(tok in ref for tok in completion if tok != EOS)
                best_hyps.append(prefix[:t] + [tok for tok in completion if tok != EOS])
                gold_hyps.append(prefix[:t] + ref[t : t + lookahead])
                got_best.append(float(result.scores[b, t]))
                got_gold.append(float(result.gold_scores[b, t]))
                ref_rows.append(ref)
        gold = score(metric, _pad(gold_hyps), _pad(ref_rows))
        best = score(metric, _pad(best_hyps), _pad(ref_rows))
        torch.testing.assert_close(torch.tensor(got_gold, dtype=torch.float64), gold, atol=1e-12, rtol=0)
        torch.testing.assert_close(torch.tensor(got_best, dtype=torch.float64), best, atol=1e-12, rtol=0)
        assert (best >= gold - 1e-12).all(), (metric, beam_size, lookahead)


# ------------------------------------------------------------------------------------------------------------------
# (c) k = h = 1 is the greedy one-step choice
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_k1_h1_is_greedy_reward_gain(metric):
    rng = random.Random(f"greedy-{metric}")
    prefixes, refs, clean_refs = _random_batch(rng, n=40, vocab=5, max_ref=6, width=6)
    labels = BeamOracle(metric, beam_size=1, lookahead=1, eos_token_id=EOS, pad_token_id=PAD)(prefixes, refs)
    hyps, ref_rows, keys = [], [], []
    for b, ref in enumerate(clean_refs):
        prefix = prefixes[b].tolist()
        for t, is_open in enumerate(_open_positions(prefix)[:-1]):
            if is_open:
                for a in [*_candidates(ref), EOS]:
                    hyps.append(prefix[:t] + ([a] if a != EOS else []))
                    ref_rows.append(ref)
                    keys.append((b, t, a))
            else:
                assert labels[b, t] == -100
    values = score(metric, _pad(hyps), _pad(ref_rows)).tolist()
    per_position: dict[tuple[int, int], dict[int, float]] = {}
    for (b, t, a), value in zip(keys, values):
        per_position.setdefault((b, t), {})[a] = value
    rules = collections.Counter()
    for (b, t), gains in per_position.items():
        expected, _, rule = _tie_break(gains, clean_refs[b], t)
        rules[rule] += 1
        assert labels[b, t] == expected, (metric, prefixes[b, :t].tolist(), clean_refs[b], gains)
    assert rules["unique"] and rules["gold"] and rules["reference order"], rules  # the cases include ties


# ------------------------------------------------------------------------------------------------------------------
# (d) next_token is one column of __call__
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_next_token_equals_column(metric):
    rng = random.Random(f"next-{metric}")
    prefixes, refs, _ = _random_batch(rng, n=30, vocab=5, max_ref=6, width=6)
    oracle = BeamOracle(metric, beam_size=3, lookahead=3, eos_token_id=EOS, pad_token_id=PAD)
    extended = torch.cat([prefixes, torch.full((30, 1), 2)], 1)  # labels at t = 6 need prefix[:6] only
    full = oracle.search(extended, refs)
    for trial in range(3):
        lengths = torch.tensor([rng.randint(0, 6) for _ in range(30)])
        if trial == 0:
            lengths[:5] = 6  # the position after the whole roll-in
        got = oracle.next_token(prefixes, lengths, refs)
        assert got.shape == (30,) and got.dtype == torch.long
        assert torch.equal(got, full.labels[torch.arange(30), lengths])
        one = oracle.search(prefixes, refs, lengths)
        assert torch.equal(one.labels, got)
        torch.testing.assert_close(one.scores, full.scores[torch.arange(30), lengths], equal_nan=True)


# ------------------------------------------------------------------------------------------------------------------
# (e) Masking, documented choices, shapes, errors
# ------------------------------------------------------------------------------------------------------------------


def test_positions_after_eos_or_padding_are_ignored():
    oracle = BeamOracle("bleu", beam_size=2, lookahead=2, eos_token_id=EOS, pad_token_id=PAD)
    refs = torch.tensor([[1, 2, 3, EOS], [1, 2, 3, -100], [1, 2, 3, PAD]])
    prefixes = torch.tensor([[1, EOS, 2, 3, 4], [1, 2, -100, 3, 4], [PAD, 1, 2, 3, 4]])
    labels = oracle(prefixes, refs)
    assert labels[0, :2].tolist() == [1, 2] and (labels[0, 2:] == -100).all()  # t = 1: the first EOS is labelled
    assert labels[1, :3].tolist() == [1, 2, 3] and (labels[1, 3:] == -100).all()
    assert labels[2, 0] == 1 and (labels[2, 1:] == -100).all()
    result = oracle.search(prefixes, refs)
    assert torch.isnan(result.scores[0, 2:]).all() and torch.isnan(result.gold_scores[0, 2:]).all()


@pytest.mark.parametrize("metric", METRICS)
def test_teacher_forcing_prefix_gets_the_gold_token(metric):
    rng = random.Random(f"gold-prefix-{metric}")
    refs = [[rng.randrange(4) for _ in range(rng.randint(1, 6))] for _ in range(12)]
    oracle = BeamOracle(metric, beam_size=4, lookahead=7, eos_token_id=EOS)
    labels = oracle(_pad([ref + [EOS] for ref in refs]), _pad(refs))
    for ref, row in zip(refs, labels.tolist()):
        assert row == ref + [EOS] + [-100] * (6 - len(ref))


def test_tie_break_examples():
    # ROUGE-1 ignores order: after [3], the completions [1, 2] and [2, 1] tie (F = 0.8); the gold next token 2 wins
    # although 1 comes first in the reference.
    oracle = BeamOracle("rouge1", beam_size=4, lookahead=3, eos_token_id=EOS)
    result = oracle.search(torch.tensor([[3, 3]]), torch.tensor([[1, 2]]), return_completions=True)
    assert result.labels[0, 1] == 2 and result.completions[0, 1].tolist() == [2, 1, EOS]
    assert float(result.scores[0, 1]) == pytest.approx(0.8)
    # ROUGE-L after [1, 2] against [3, 3, 1, 2] (gold next token 1), h = 3: stopping (LCS 2 of 2 + 4 tokens) and
    # [3, 3, 1] (LCS 3 of 5 + 4) both score 2/3, every completion starting with 1 less: EOS wins over 3.
    result = BeamOracle("rougeL", beam_size=9, lookahead=3, eos_token_id=EOS).search(
        torch.tensor([[1, 2, 0]]), torch.tensor([[3, 3, 1, 2]]), return_completions=True
    )
    assert result.labels[0, 2] == EOS and result.completions[0, 2].tolist() == [EOS, -100, -100]
    assert float(result.scores[0, 2]) == pytest.approx(2 / 3)
    # Empty reference: every completion scores 0 and EOS is the gold token.
    assert oracle(torch.tensor([[1, 2, 3]]), torch.tensor([[EOS, 1]])).tolist() == [[EOS] * 3]


def test_shapes_and_devices():
    oracle = BeamOracle("bleu", beam_size=3, lookahead=2, eos_token_id=EOS)
    assert oracle(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)).shape == (0, 4)
    assert oracle(torch.zeros(2, 0, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)).shape == (2, 0)
    # References with no columns, or no tokens: EOS everywhere.
    assert oracle(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long)).tolist() == [[EOS] * 3] * 2
    result = oracle.search(torch.tensor([[1, 2]]), torch.tensor([[1, 2, 3]]), return_completions=False)
    assert isinstance(result, BeamSearchResult) and result.completions is None
    assert result.scores.dtype == torch.float64 and result.labels.dtype == torch.long
    assert "beam_size=3" in repr(oracle)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_equals_cpu(metric):
    rng = random.Random(f"cuda-{metric}")
    prefixes, refs, _ = _random_batch(rng, n=64, vocab=5, max_ref=8, width=8)
    oracle = BeamOracle(metric, beam_size=5, lookahead=3, eos_token_id=EOS, pad_token_id=PAD)
    on_gpu = oracle.search(prefixes.cuda(), refs, return_completions=True)
    assert on_gpu.labels.device.type == "cuda"
    on_cpu = oracle.search(prefixes, refs, return_completions=True)
    assert torch.equal(on_gpu.labels.cpu(), on_cpu.labels)
    torch.testing.assert_close(on_gpu.scores.cpu(), on_cpu.scores, equal_nan=True, atol=1e-12, rtol=0)
    lengths = torch.tensor([rng.randint(0, 8) for _ in range(64)])
    on_gpu = oracle.next_token(prefixes.cuda(), lengths.cuda(), refs.cuda())
    assert torch.equal(on_gpu.cpu(), oracle.next_token(prefixes, lengths, refs))


@pytest.mark.parametrize("metric", METRICS)
def test_next_token_called_step_by_step_reuses_its_state_and_equals_the_columns(metric):
    """A roll-in asks at every step with a prefix one token longer (and only some rows): the same labels."""
    rng = random.Random(7)
    g = torch.Generator().manual_seed(7)
    batch, length = 12, 10
    refs = torch.randint(4, 30, (batch, length + 1), generator=g)
    refs[:, length] = 2
    refs[2, 4] = 2
    refs[3, 6:] = -100
    hyps = torch.randint(4, 30, (batch, length), generator=g)
    hyps[:, ::2] = refs[:, :length:2]
    hyps[5, 3] = 2  # a roll-in that has ended: -100 after it
    oracle = BeamOracle(metric, beam_size=3, lookahead=2, eos_token_id=2, pad_token_id=0)
    columns = BeamOracle(metric, beam_size=3, lookahead=2, eos_token_id=2, pad_token_id=0)(hyps, refs)
    for t in range(length):
        rows = torch.tensor(sorted(rng.sample(range(batch), 5)))
        lengths = torch.full((batch,), t)
        assert torch.equal(oracle.next_token(hyps[:, :t], lengths, refs, rows=rows), columns[rows, t])
        assert torch.equal(oracle.next_token(hyps[:, :t], lengths, refs), columns[:, t])
    assert (columns[5, 4:] == -100).all()
    changed = hyps.clone()
    changed[:, 1] = 7  # a different prefix with the same references: the state is built again
    assert torch.equal(
        oracle.next_token(changed[:, :5], torch.full((batch,), 5), refs),
        BeamOracle(metric, 3, 2, eos_token_id=2, pad_token_id=0)(changed, refs)[:, 5],
    )
