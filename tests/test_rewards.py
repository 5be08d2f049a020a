"""Tests of the token-id metrics (hf_seqobj.rewards) against sacrebleu and rouge-score, and of their incremental form.

Token id i is written as the word "w{i}": sacrebleu with `tokenize="none"` and its `sentence_bleu` defaults
(smooth_method="exp", effective order), scores divided by 100; rouge-score's `RougeScorer` F-measures without
stemming (its tokenizer keeps "w{i}" as it is).
"""

from __future__ import annotations

import random

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from hf_seqobj import rewards
from hf_seqobj.rewards import METRICS, SentenceMetric, compact_ids, rouge_l, rouge_n, score, sentence_bleu


EOS, PAD = 7, 8
_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])


def _words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def reference_scores(hyp: list[int], ref: list[int]) -> dict[str, float]:
    """The four metrics of clean token lists, by sacrebleu and rouge-score."""
    bleu = sacrebleu.sentence_bleu(_words(hyp), [_words(ref)], tokenize="none").score / 100
    rouge = _ROUGE.score(_words(ref), _words(hyp))
    return {"bleu": bleu, **{name: rouge[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}}


def _pad(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = max([len(r) for r in rows] + [width or 0])
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows], dtype=torch.long)


def _noisy(clean: list[int], rng: random.Random) -> list[int]:
    """`clean` with -100 / PAD inserted anywhere and, sometimes, EOS and junk behind it."""
    out = []
    for token in clean:
        while rng.random() < 0.1:
            out.append(rng.choice([-100, PAD]))
        out.append(token)
    if rng.random() < 0.5:
        out += [EOS] + [rng.randrange(10) for _ in range(rng.randrange(3))]
    return out


def _random_cases(n: int, seed: int, vocab: int = 6, max_len: int = 14) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        v = rng.randint(2, vocab)  # small vocabularies: many repeated n-grams, so clipping matters
        hyp = [rng.randrange(v) for _ in range(rng.randint(0, max_len))]
        ref = [rng.randrange(v) for _ in range(rng.randint(0, max_len))]
        if rng.random() < 0.3 and ref:  # a hypothesis sharing long stretches with the reference
            cut = rng.randrange(len(ref))
            hyp = ref[cut:] + hyp[: rng.randrange(4)] + ref[:cut]
        cases.append((hyp, ref))
    return cases


@pytest.fixture(scope="module")
def cases():
    return _random_cases(400, seed=0)


@pytest.fixture(scope="module")
def expected(cases):
    return [reference_scores(hyp, ref) for hyp, ref in cases]


# ----------------------------------------------------------------------------------------------------------------
# Equality with sacrebleu and rouge-score
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_score_matches_sacrebleu_and_rouge_score(cases, expected, metric):
    rng = random.Random(1)
    hyps = _pad([_noisy(hyp, rng) for hyp, _ in cases])
    refs = _pad([_noisy(ref, rng) for _, ref in cases])
    got = score(metric, hyps, refs, eos_token_id=EOS, pad_token_id=PAD)
    assert got.dtype == torch.float64 and got.shape == (len(cases),)
    want = torch.tensor([e[metric] for e in expected], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_single_sequence_functions(cases, expected):
    for (hyp, ref), want in list(zip(cases, expected))[:60]:
        assert sentence_bleu(hyp, ref) == pytest.approx(want["bleu"], abs=1e-6)
        assert rouge_n(hyp, ref, 1) == pytest.approx(want["rouge1"], abs=1e-6)
        assert rouge_n(torch.tensor(hyp, dtype=torch.long), ref, n=2) == pytest.approx(want["rouge2"], abs=1e-6)
        assert rouge_l(hyp, torch.tensor(ref, dtype=torch.long)) == pytest.approx(want["rougeL"], abs=1e-6)


@pytest.mark.parametrize(
    "hyp, ref", [([], []), ([], [1, 2]), ([1, 2], []), ([3], [3]), ([1, 1, 1, 1, 1], [1]), ([1, 2, 3, 4], [1, 2])]
)
def test_edge_cases(hyp, ref):
    want = reference_scores(hyp, ref)
    for metric in METRICS:
        assert float(score(metric, _pad([hyp], 1), _pad([ref], 1))[0]) == pytest.approx(want[metric], abs=1e-9)


def test_eos_and_padding_are_not_tokens():
    ref = [1, 2, 3, 4, 5]
    clean = float(score("bleu", torch.tensor([[1, 2, 3, 9]]), torch.tensor([ref])))
    noisy_hyp = torch.tensor([[PAD, 1, -100, 2, 3, PAD, 9, EOS, 4, 5]])
    noisy_ref = torch.tensor([[1, 2, 3, -100, 4, 5, EOS, 1, 1, -100, -100]])
    assert float(score("bleu", noisy_hyp, noisy_ref, eos_token_id=EOS, pad_token_id=PAD)) == clean
    # Without an EOS id, EOS is an ordinary token.
    assert sentence_bleu([1, EOS], [1, EOS]) == 1.0
    assert sentence_bleu([1, EOS, 2], [1], eos_token_id=EOS) == 1.0


def test_compact_ids():
    ids = torch.tensor([[PAD, 3, -100, 4, EOS, 5], [EOS, 1, 1, 1, 1, 1], [1, 2, 3, 4, 5, 6]])
    tokens, lengths = compact_ids(ids, eos_token_id=EOS, pad_token_id=PAD)
    assert lengths.tolist() == [2, 0, 6]
    assert tokens.tolist() == [[3, 4, -1, -1, -1, -1], [-1] * 6, [1, 2, 3, 4, 5, 6]]
    tokens, lengths = compact_ids(torch.zeros(2, 0, dtype=torch.long))
    assert tokens.shape == (2, 1) and lengths.tolist() == [0, 0]


# ----------------------------------------------------------------------------------------------------------------
# Incremental statistics
# ----------------------------------------------------------------------------------------------------------------


def _fields(state):
    return {name: getattr(state, name) for name in ("length", "run", "spare", "matches", "lcs")}


@pytest.mark.parametrize("metric", METRICS)
def test_incremental_updates_equal_scores_from_scratch(metric):
    gen = torch.Generator().manual_seed(2)
    n, t, r, vocab = 32, 10, 9, 4
    hyps = torch.randint(0, vocab, (n, t), generator=gen)
    refs = torch.randint(0, vocab, (n, r), generator=gen)
    refs[torch.rand(n, r, generator=gen) < 0.15] = -100
    scorer = SentenceMetric(metric, refs)
    prefixes = scorer.prefix_states(hyps)
    assert prefixes.shape == (n, t + 1)
    c = vocab + 1
    candidates = torch.arange(c).expand(n, c)  # token `vocab` occurs in no reference
    # Hypotheses with extra dimensions [N, 2, 3]: six copies, each appended the same tokens.
    state = scorer.initial_state(2, 3)
    for step in range(t + 1):
        from_scratch = score(metric, hyps[:, :step], refs)
        at_step = prefixes.map(lambda x, s=step: x[:, s])
        for name, value in _fields(at_step).items():
            incremental = _fields(state)[name]
            assert (value is None) == (incremental is None)
            if value is not None:
                assert torch.equal(incremental, value[:, None, None].expand_as(incremental)), (step, name)
        torch.testing.assert_close(scorer.score(at_step), from_scratch, atol=1e-12, rtol=0)
        torch.testing.assert_close(
            scorer.score(state), from_scratch[:, None, None].expand(n, 2, 3), atol=1e-12, rtol=0
        )
        # Scores after each candidate, without building the states, equal append + score and scores from scratch.
        many = scorer.candidate_scores(state, candidates)
        assert many.shape == (n, 2, 3, c)
        children = state.map(lambda x: x.unsqueeze(3).expand(n, 2, 3, c, *x.shape[3:]))
        appended = scorer.score(scorer.append(children, candidates[:, None, None, :].expand(n, 2, 3, c)))
        torch.testing.assert_close(many, appended, atol=1e-13, rtol=0)
        with_c = torch.cat([hyps[:, None, :step].expand(n, c, step), candidates[:, :, None]], 2).reshape(n * c, -1)
        expected = score(metric, with_c, refs.repeat_interleave(c, 0)).view(n, c)
        torch.testing.assert_close(many[:, 0, 0], expected, atol=1e-12, rtol=0)
        if step < t:
            state = scorer.append(state, hyps[:, step, None, None].expand(n, 2, 3))


def test_state_map_and_where():
    scorer = SentenceMetric("bleu", torch.tensor([[1, 2, 3], [4, 4, -100]]))
    empty = scorer.initial_state(3)
    grown = scorer.append(empty, torch.tensor([[1, 2, 9], [4, 4, 4]]))
    mixed = grown.where(torch.tensor([[True, False, True], [False, True, False]]), empty)
    assert mixed.length.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert mixed.map(lambda x: x[:, :1]).shape == (2, 1)
    assert scorer.score(grown).shape == (2, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_equals_cpu(metric):
    gen = torch.Generator().manual_seed(3)
    hyps, refs = torch.randint(0, 6, (64, 15), generator=gen), torch.randint(0, 6, (64, 12), generator=gen)
    on_gpu = score(metric, hyps.cuda(), refs.cuda(), eos_token_id=5)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), score(metric, hyps, refs, eos_token_id=5), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_errors_name_the_bad_value():
    ok = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"Unknown metric 'bleu4'.*'rougeL'"):
        score("bleu4", ok, ok)
    with pytest.raises(ValueError, match=r"hyps \(2,\) and refs \(1, 2\)"):
        score("bleu", torch.tensor([1, 2]), ok)
    with pytest.raises(ValueError, match=r"same B"):
        score("bleu", torch.tensor([[1], [2]]), ok)
    with pytest.raises(ValueError, match=r"hyps\[0, 1\] = -5; accepted: token ids >= 0, or -100"):
        score("rouge1", torch.tensor([[1, -5]]), ok)
    with pytest.raises(ValueError, match=r"references\[0, 0\] = -1"):
        score("rouge1", ok, torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"dtype torch.float32"):
        score("rouge1", ok.float(), ok)
    with pytest.raises(ValueError, match=r"eos_token_id = -2; accepted"):
        score("rougeL", ok, ok, eos_token_id=-2)
    with pytest.raises(ValueError, match=r"n = 3; accepted: 1 or 2"):
        rouge_n([1], [1], 3)
    with pytest.raises(ValueError, match=r"accepted: two 1-D sequences"):
        sentence_bleu([[1]], [1])
    with pytest.raises(ValueError, match=r"hyps has shape \(2, 3\); accepted: \[N, T\] with N = 1"):
        SentenceMetric("bleu", ok).prefix_states(torch.zeros(2, 3, dtype=torch.long))
    assert rewards.METRICS == ("bleu", "rouge1", "rouge2", "rougeL")
