"""The ROUGE oracles score rouge-score's units (lowercased words, no punctuation), the BLEU oracle sacrebleu's, and
their scores equal the libraries' on the decoded text (issue 33, item 4)."""

from __future__ import annotations

import random
import re

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from hf_seqobj.modeling import train_tokenizer
from hf_seqobj.oracles import BeamOracle, ExactRougeOracle, MetricUnitsOracle, make_oracle, rouge_units
from hf_seqobj.oracles.units import NO_UNIT


REFERENCES = [
    "Eric, Mary and Tom will come to the party.",
    "Hannah asks Betty for Larry's number; Betty doesn't have it.",
    "Amanda baked cookies and will bring Jerry some tomorrow!",
    "The meeting is moved to Friday at 5 pm.",
    "Tom is late again, so Anna will wait.",
]
WORDS = sorted({w.strip(",.;!'").lower() for r in REFERENCES for w in r.split()} | {"party", "cake", "monday"})


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE whose vocabulary holds every word of the texts (upper and lower case) as one id."""
    texts = REFERENCES + [" ".join(WORDS), " ".join(w.capitalize() for w in WORDS)]
    return train_tokenizer(texts * 30, vocab_size=2000, tokenizer_type="bpe")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _hypotheses(rng: random.Random, reference: str, n: int) -> list[str]:
    """Texts near `reference` with at least its number of words: words replaced, lowercased or capitalised, and
    punctuation added, dropped or repeated."""
    out = []
    for _ in range(n):
        words = []
        for word in reference.split() + rng.sample(WORDS, rng.randint(0, 3)):
            core = word.strip(",.;!'")
            roll = rng.random()
            core = rng.choice(WORDS) if roll < 0.3 else core.lower() if roll < 0.5 else core.capitalize()
            words.append(core + rng.choice(["", "", ",", ",,,,,,", ".", "!"]))
        out.append(" ".join(words))
    return out


def test_units_are_lowercased_words_and_punctuation_is_none(tokenizer):
    units = rouge_units(tokenizer)
    (eric,), (lower,) = _ids(tokenizer, " Eric"), _ids(tokenizer, " eric")
    assert eric != lower and units[eric] == units[lower] != NO_UNIT
    for mark in (",", ".", "!", ";"):
        assert all(units[i] == NO_UNIT for i in _ids(tokenizer, mark))
    for special in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        assert units[special] == special
    assert make_oracle("rougeL", tokenizer).units.equal(units)


@pytest.mark.parametrize("metric", ["rouge1", "rouge2", "rougeL"])
def test_the_rouge_oracles_score_what_rouge_score_scores_on_the_decoded_text(tokenizer, metric):
    """At the reference's length (in words) the oracle's best completion is to stop, so its score is the score of
    the output itself: equal to rouge-score's F on the decoded texts (no stemming), which raw ids miss."""
    scorer = rouge_scorer.RougeScorer([metric], use_stemmer=False)
    rng = random.Random(0)
    words = make_oracle(metric, tokenizer)
    ids = make_oracle(metric, tokenizer, units="ids")
    units = rouge_units(tokenizer)
    misses, scored = 0, 0
    for reference in REFERENCES:
        ref = torch.tensor([_ids(tokenizer, " " + reference) + [tokenizer.eos_token_id]])
        reference_units = int((units[ref] != NO_UNIT).sum()) - 1  # EOS is not a word
        for hypothesis in _hypotheses(rng, reference, 8) + [reference.lower().replace(",", ",,,,,,")]:
            hyp = _ids(tokenizer, " " + hypothesis)
            if int((units[hyp] != NO_UNIT).sum()) < reference_units:
                continue  # shorter than the reference in units: the oracle's best completion goes on
            prefix, length = torch.tensor([hyp + [tokenizer.pad_token_id]]), torch.tensor([len(hyp)])
            expected = scorer.score(reference, tokenizer.decode(hyp))[metric].fmeasure
            found = words.search(prefix, ref, length)
            # EOS, or the reference's closing punctuation first (free in units)
            assert found.labels.item() == tokenizer.eos_token_id or units[found.labels.item()] == NO_UNIT
            assert found.scores.item() == pytest.approx(expected, abs=1e-9)
            misses += abs(ids.search(prefix, ref, length).scores.item() - expected) > 1e-6
            scored += 1
    assert scored >= 25 and misses > 10  # scoring raw ids (case and punctuation count) is a different metric


def test_the_bleu_oracle_scores_what_sacrebleu_scores_on_the_decoded_text():
    """With punctuation split off the words (as sacrebleu's 13a splits it), a word-level tokenizer's ids are 13a's
    tokens: at the reference length the BLEU oracle's score is sacrebleu's sentence BLEU of the decoded texts (case
    and punctuation count in both)."""
    references = [re.sub(r"([,.;!])", r" \1", r) for r in REFERENCES]
    tokenizer = train_tokenizer(references * 5 + [" ".join(WORDS), " ".join(w.capitalize() for w in WORDS)])
    oracle = make_oracle("bleu", tokenizer)
    assert isinstance(oracle, BeamOracle)  # BLEU's units are the ids themselves
    words = [i for t, i in tokenizer.get_vocab().items() if not t.startswith("<")]
    rng = random.Random(1)
    for reference in references:
        ref_ids = _ids(tokenizer, reference)
        assert tokenizer.unk_token_id not in ref_ids
        ref = torch.tensor([ref_ids + [tokenizer.eos_token_id]])
        for _ in range(8):  # the reference's words and others, some dropped, at least the reference's length
            hyp = [i if rng.random() < 0.6 else rng.choice(words) for i in ref_ids]
            hyp += rng.sample(words, rng.randint(0, 3))
            found = oracle.search(torch.tensor([hyp + [tokenizer.pad_token_id]]), ref, torch.tensor([len(hyp)]))
            decoded, gold = tokenizer.decode(hyp), tokenizer.decode(ref_ids)
            expected = sacrebleu.sentence_bleu(decoded, [gold]).score / 100
            assert found.labels.item() == tokenizer.eos_token_id
            assert found.scores.item() == pytest.approx(expected, abs=1e-6), (decoded, gold)


def _follow(oracle, tokenizer, prefix: list[int], reference: list[int], limit: int = 40) -> str:
    ids, ref = list(prefix), torch.tensor([reference])
    for _ in range(limit):
        label = oracle.next_token(torch.tensor([ids + [tokenizer.pad_token_id]]), torch.tensor([len(ids)]), ref)
        ids.append(int(label))
        if ids[-1] == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("metric", ["rouge2", "rougeL", "rouge1"])
def test_labels_keep_the_references_text_where_punctuation_and_case_are_free(tokenizer, metric):
    oracle = make_oracle(metric, tokenizer)
    for reference in REFERENCES:
        ref = _ids(tokenizer, " " + reference) + [tokenizer.eos_token_id]
        assert _follow(oracle, tokenizer, [], ref) == " " + reference  # punctuation and case as the reference has
        first = reference.split()[0].strip(",")
        # a lowercased first word counts as the reference's; the run goes on with the reference's own text
        assert (
            _follow(oracle, tokenizer, _ids(tokenizer, " " + first.lower()), ref)
            == " " + first.lower() + (" " + reference)[len(first) + 1 :]
        )
    ref = _ids(tokenizer, " " + REFERENCES[0]) + [tokenizer.eos_token_id]
    # punctuation the reference does not have costs nothing: after "Eric,,,,,," the next label is the next word
    followed = _follow(oracle, tokenizer, _ids(tokenizer, " Eric,,,,,,"), ref)
    assert followed == " Eric,,,,,, Mary and Tom will come to the party."


@pytest.mark.parametrize("metric", ["rouge2", "rougeL"])
def test_next_token_equals_the_columns_and_units_ids_is_the_bare_oracle(tokenizer, metric):
    oracle = make_oracle(metric, tokenizer)
    assert isinstance(oracle, MetricUnitsOracle)
    bare = make_oracle(metric, tokenizer, units="ids")
    assert isinstance(bare, BeamOracle if metric == "rouge2" else ExactRougeOracle)
    rng = random.Random(2)
    rows, refs = [], []
    for reference in REFERENCES:
        rows.append(_ids(tokenizer, " " + _hypotheses(rng, reference, 1)[0]) + [tokenizer.eos_token_id])
        refs.append(_ids(tokenizer, " " + reference) + [tokenizer.eos_token_id])
    width, ref_width = max(map(len, rows)), max(map(len, refs))
    prefix = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    ref = torch.tensor([r + [-100] * (ref_width - len(r)) for r in refs])
    labels = oracle(prefix, ref)
    assert labels.shape == prefix.shape
    for t in range(width):
        column = oracle.next_token(prefix, torch.full((len(rows),), t), ref)
        assert column.equal(labels[:, t])
        assert oracle.next_token(prefix, torch.full((len(rows),), t), ref, rows=torch.tensor([1, 3])).equal(
            labels[[1, 3], t]
        )
    for b, row in enumerate(rows):  # nothing is labelled after EOS or padding
        assert (labels[b, row.index(tokenizer.eos_token_id) + 1 :] == -100).all()


def test_empty_prefixes_and_references(tokenizer):
    oracle = make_oracle("rougeL", tokenizer)
    ref = torch.tensor([_ids(tokenizer, " Eric, Mary.") + [tokenizer.eos_token_id]])
    assert oracle(torch.zeros(1, 0, dtype=torch.long), ref).shape == (1, 0)
    assert oracle.next_token(torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]), ref).tolist() == [ref[0, 0]]
    empty = torch.tensor([[tokenizer.eos_token_id]])
    assert oracle.next_token(torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]), empty).tolist() == [
        tokenizer.eos_token_id
    ]


def test_bad_units_are_one_line_errors(tokenizer):
    with pytest.raises(ValueError, match=r"units = 'words'; accepted: 'metric', 'ids'"):
        make_oracle("rougeL", tokenizer, units="words")
    with pytest.raises(ValueError, match="accepted: a text oracle with a search method"):
        MetricUnitsOracle(object(), rouge_units(tokenizer))
    with pytest.raises(ValueError, match=r"units has shape \(2, 2\)"):
        MetricUnitsOracle(make_oracle("rougeL", tokenizer, units="ids"), torch.zeros(2, 2, dtype=torch.long))
