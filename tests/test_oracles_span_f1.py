"""Tests of the exact span F1 oracles (hf_seqobj.oracles.span_f1) against brute force over all completions.

Exact mode is scored with seqeval's own span reader (`get_entities`) and F1 = 2 TP / (P + G), 1.0 when P = G = 0,
which is `seqeval.metrics.f1_score(..., zero_division=1)` (checked below); partial mode with the definition in the
module docstring, on seqeval's spans.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import warnings

import numpy as np
import pytest
import torch
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities

from hf_seqobj.oracles import BIOTagSet, span_f1_oracle, span_f1_oracle_batch, span_f1_score
from hf_seqobj.oracles.span_f1 import _candidate_keys, _values_exact, _values_partial


TYPES = ("LOC", "PER")
TAGS = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
MODES = ("exact", "partial")


# ------------------------------------------------------------------------------------------------------------------
# Brute force: scores of all 5**n predictions, read with seqeval's get_entities
# ------------------------------------------------------------------------------------------------------------------


def _entity_id(typ: str, start: int, end: int, n: int) -> int:
    return TYPES.index(typ) * n * n + start * n + end


@functools.cache
def _all_predictions(n: int) -> np.ndarray:
    """[5**n, 2 n n] indicator of the entities of every prediction (rows in itertools.product order)."""
    table = np.zeros((len(TAGS) ** n, len(TYPES) * n * n), dtype=np.int32)
    for row, seq in enumerate(itertools.product(range(len(TAGS)), repeat=n)):
        for typ, start, end in get_entities([TAGS[i] for i in seq]):
            table[row, _entity_id(typ, start, end, n)] = 1
    return table


@functools.lru_cache(maxsize=4096)
def _scores(gold: tuple[str, ...], mode: str) -> np.ndarray:
    """F1 of every prediction against `gold`, shaped [5] * n (axis i = tag at position i)."""
    n = len(gold)
    table = _all_predictions(n)
    gold_spans = get_entities(list(gold))
    n_pred, n_gold = table.sum(1), len(gold_spans)
    if mode == "exact":
        gold_vec = np.zeros(table.shape[1], dtype=np.int32)
        for span in gold_spans:
            gold_vec[_entity_id(*span, n)] = 1
        num, den = 2 * (table @ gold_vec), n_pred + n_gold
        f1 = np.where(den == 0, 1.0, num / np.maximum(den, 1))
    else:
        ids = np.arange(table.shape[1])
        e_type, e_start, e_end = ids // (n * n), (ids // n) % n, ids % n
        overlap = np.zeros((table.shape[1], max(n_gold, 1)), dtype=np.int32)
        for j, (typ, start, end) in enumerate(gold_spans):
            overlap[:, j] = (e_type == TYPES.index(typ)) & (e_start <= end) & (start <= e_end)
        a = table @ overlap.any(1).astype(np.int32)
        b = ((table @ overlap) > 0).sum(1) if n_gold else np.zeros_like(a)
        num, den = 2 * a * b, a * n_gold + b * n_pred
        f1 = np.where(den > 0, num / np.maximum(den, 1), 0.0)
        f1 = np.where((n_pred == 0) & (n_gold == 0), 1.0, f1)
    return f1.reshape([len(TAGS)] * n)


def _best_per_tag(gold: tuple[str, ...], prefix: tuple[str, ...], mode: str) -> np.ndarray:
    """Best F1 over all completions after each next tag (brute force), in TAGS order."""
    sub = _scores(gold, mode)[tuple(TAGS.index(tag) for tag in prefix)]
    return sub.reshape(len(TAGS), -1).max(1)


def _argmax_set(gold: tuple[str, ...], prefix: tuple[str, ...], mode: str) -> set[str]:
    """The next tags maximising the best F1 over all completions (brute force)."""
    best = _best_per_tag(gold, prefix, mode)
    return {TAGS[i] for i in np.flatnonzero(best == best.max())}


def _check_case(prefix: tuple[str, ...], gold: tuple[str, ...], mode: str) -> None:
    """The oracle's tag is in the brute-force argmax set, and its best value per next tag is the brute-force one."""
    best = _best_per_tag(gold, prefix, mode)
    optimal = {TAGS[i] for i in np.flatnonzero(best == best.max())}
    tag = span_f1_oracle(list(prefix), list(gold), mode)
    assert tag in optimal, (mode, prefix, gold, tag, optimal)
    # Tie-breaking tiers 1-4 (gold tag, B-<gold type>, O, I-<open type>) always suffice.
    tiers = {gold[len(prefix)], "O", "B-" + gold[len(prefix)][2:]}
    if prefix and prefix[-1] != "O":
        tiers.add("I-" + prefix[-1][2:])
    assert tag in tiers, (mode, prefix, gold, tag)
    keys = _candidate_keys(list(prefix), list(gold), mode, types=TYPES)[0]
    for i, candidate in enumerate(TAGS):
        assert float(keys[candidate][0]) == pytest.approx(best[i], abs=1e-12), (mode, prefix, gold, candidate)


def _random_gold(rng: random.Random, n: int) -> tuple[str, ...]:
    """Half uniform random tags (ill-formed ones included: I-X after O or after another type), half well-formed."""
    if rng.random() < 0.5:
        return tuple(rng.choice(TAGS) for _ in range(n))
    tags, i = [], 0
    while i < n:
        if rng.random() < 0.4:
            tags.append("O")
            i += 1
            continue
        typ, length = rng.choice(TYPES), rng.randint(1, 3)
        for j in range(min(length, n - i)):
            tags.append(("B-" if j == 0 else "I-") + typ)
        i += min(length, n - i)
    return tuple(tags)


def _random_prefixes(rng: random.Random, gold: tuple[str, ...]) -> list[tuple[str, ...]]:
    """For every t: the gold prefix, a perturbed gold prefix and a uniform random prefix."""
    out = []
    for t in range(len(gold)):
        out.append(gold[:t])
        out.append(tuple(rng.choice(TAGS) if rng.random() < 0.3 else tag for tag in gold[:t]))
        out.append(tuple(rng.choice(TAGS) for _ in range(t)))
    return out


# ------------------------------------------------------------------------------------------------------------------
# Oracle vs brute force
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_oracle_in_argmax_set_exhaustive_short(mode):
    """Every gold sequence and every prefix of length < n, for n <= 3 (3,875 + 150 + 5 cases per mode)."""
    count = 0
    for n in (1, 2, 3):
        for gold in itertools.product(TAGS, repeat=n):
            for t in range(n):
                for prefix in itertools.product(TAGS, repeat=t):
                    _check_case(prefix, gold, mode)
                    count += 1
    assert count == 4030


@pytest.mark.parametrize("mode", MODES)
def test_oracle_in_argmax_set_random(mode):
    """3,000+ random cases per mode with 4 <= n <= 7, 2 types, ill-formed golds and prefixes included."""
    rng = random.Random(1234 if mode == "exact" else 4321)
    count = 0
    while count < 3000:
        gold = _random_gold(rng, rng.randint(4, 7))
        for prefix in _random_prefixes(rng, gold):
            _check_case(prefix, gold, mode)
            count += 1


@pytest.mark.parametrize("mode", MODES)
def test_oracle_follows_gold_on_gold_prefix(mode):
    """Tie-break rule 1: on the gold prefix the oracle returns the gold tag (teacher forcing is a special case)."""
    rng = random.Random(7)
    for _ in range(300):
        gold = [rng.choice(TAGS) for _ in range(rng.randint(1, 9))]
        for t in range(len(gold)):
            assert span_f1_oracle(gold[:t], gold, mode) == gold[t]


def test_span_reader_and_exact_score_match_seqeval():
    rng = random.Random(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(400):
            n = rng.randint(1, 7)
            pred, gold = [rng.choice(TAGS) for _ in range(n)], [rng.choice(TAGS) for _ in range(n)]
            if rng.random() < 0.2:
                pred = ["O"] * n
            if rng.random() < 0.2:
                gold = ["O"] * n
            expected = f1_score([gold], [pred], zero_division=1)
            assert span_f1_score(pred, gold, "exact") == pytest.approx(expected, abs=1e-12)
            index = tuple(TAGS.index(tag) for tag in pred)
            assert span_f1_score(pred, gold, "partial") == pytest.approx(_scores(tuple(gold), "partial")[index])
    # With seqeval's default zero_division the all-empty case is 0 (every tag ties there); ours is 1.
    assert span_f1_score(["O"], ["O"]) == 1.0 and span_f1_score(["O"], ["O"], "partial") == 1.0


# ------------------------------------------------------------------------------------------------------------------
# Hand-written cases
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "gold", "expected"),
    [
        # Empty prefix: start the gold span.
        ([], ["B-PER", "I-PER", "O"], "B-PER"),
        # The open span can still equal gold (PER, 0, 1): continue it up to the gold end ...
        (["B-PER"], ["B-PER", "I-PER", "O"], "I-PER"),
        # ... and close it there.
        (["B-PER", "I-PER"], ["B-PER", "I-PER", "O"], "O"),
        # The open span equals gold (PER, 0, 0) and a same-type gold span starts at 1: B-PER (I-PER would merge).
        (["B-PER"], ["B-PER", "B-PER", "O"], "B-PER"),
        # Gold I-PER after O starts a span (seqeval); after a predicted O, I-PER starts one too: the gold tag.
        (["O"], ["O", "I-PER", "I-PER"], "I-PER"),
        # Same gold, but the prefix has a wrong open PER span: I-PER would extend it, B-PER starts the gold span.
        (["B-PER"], ["O", "I-PER", "I-PER"], "B-PER"),
        # Gold I-LOC after I-PER starts a LOC span; after a predicted I-PER, I-LOC starts one as well.
        (["B-PER"], ["B-PER", "I-LOC"], "I-LOC"),
        # Open span (PER, 1) cannot match; gold O at 2: closing and continuing both keep P, O is preferred.
        (["B-PER", "B-PER"], ["B-PER", "I-PER", "O", "B-LOC"], "O"),
        # Nothing reachable is correct (every completion scores 0): fewest spans, so O (gold I-PER would add one).
        (["B-LOC"], ["B-PER", "I-PER", "O"], "O"),
        (["B-PER", "O"], ["B-PER", "I-PER", "I-PER"], "O"),
        # No gold spans: any span costs F1 = 1 -> 0 (P = G = 0 scores 1).
        ([], ["O", "O", "O"], "O"),
        (["B-PER"], ["O", "O", "O"], "O"),
        # Continue the matching LOC span, then start the next LOC span with B-LOC.
        (["O", "B-LOC"], ["O", "B-LOC", "I-LOC", "B-LOC"], "I-LOC"),
        (["O", "B-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC", "B-LOC"], "B-LOC"),
        # Overshot the gold end (gold span ended at 1): cannot match; gold O, so O.
        (["B-PER", "I-PER", "I-PER"], ["B-PER", "I-PER", "O", "O"], "O"),
    ],
)
def test_hand_written_exact(prefix, gold, expected):
    assert span_f1_oracle(prefix, gold, "exact") == expected


@pytest.mark.parametrize(
    ("prefix", "gold", "expected"),
    [
        # A wrong open PER span at 0; gold PER at 2. Continuing makes it overlap (a = b = P = 1, F1 = 1), while
        # closing it leaves a miss (a = 1, P = 2: F1 = 2/3). The gold tag O is not optimal: I-PER (rule 4).
        (["B-PER"], ["O", "O", "B-PER"], "I-PER"),
        # Splitting pays: a miss (LOC, 0) and a hit (PER, 1). At 2, B-PER adds a hit (a = 2, P = 3, F1 = 0.8);
        # I-PER or O keep a = 1, P = 2 (F1 = 2/3). The gold tag I-PER is not optimal: B-PER (rule 2).
        (["B-LOC", "B-PER"], ["O", "B-PER", "I-PER"], "B-PER"),
        # Contrast with exact mode (answer O): (PER, 0, 0) overlaps the gold span, so F1 is already 1 and stays 1
        # with I-PER (another hit); the gold tag is optimal.
        (["B-PER", "O"], ["B-PER", "I-PER", "I-PER"], "I-PER"),
        # On the gold prefix: the gold tag.
        (["B-PER"], ["B-PER", "I-PER", "O"], "I-PER"),
        # No gold spans: O.
        (["B-PER"], ["O", "O"], "O"),
        # (PER, 0, 1) already overlaps the gold PER span 1-4; the open LOC span at 2 is a miss. Stretching it with
        # I-LOC over 3-5 makes it overlap gold LOC at 5 (a = b = P = G = 2, F1 = 1) without losing the covered
        # PER span; anything else leaves a miss.
        (["I-PER", "I-PER", "B-LOC"], ["O", "I-PER", "I-PER", "I-PER", "I-PER", "I-LOC"], "I-LOC"),
    ],
)
def test_hand_written_partial(prefix, gold, expected):
    assert span_f1_oracle(prefix, gold, "partial") == expected
    assert expected in _argmax_set(tuple(gold), tuple(prefix), "partial")


# ------------------------------------------------------------------------------------------------------------------
# Batched form
# ------------------------------------------------------------------------------------------------------------------


BATCH_TAGS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]
BATCH_IDS = [17, 5, 9, 30, 31, 2, 11]  # arbitrary model token ids
PAD_ID = 0
GARBAGE = [3, 1000, PAD_ID, -100]  # not tag ids: read as O in a prefix


def _random_batch(gen: random.Random, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    gold = torch.full((rows, width), -100, dtype=torch.long)
    pred = torch.full((rows, width), -100, dtype=torch.long)
    for b in range(rows):
        offset = gen.randint(0, 3) if gen.random() < 0.3 else 0  # a "prompt" of -100 before the tags
        length = gen.randint(0, width - offset)
        gold_tags = [gen.choice(BATCH_TAGS[:5] if gen.random() < 0.5 else BATCH_TAGS) for _ in range(length)]
        if gen.random() < 0.5:  # a pad_id tail instead of -100
            gold[b, offset + length :] = PAD_ID
        gold[b, offset : offset + length] = torch.tensor([BATCH_IDS[BATCH_TAGS.index(tag)] for tag in gold_tags])
        for j in range(width):
            r = gen.random()
            if j >= offset and j - offset < length and r < 0.5:  # close to gold
                tag = gold_tags[j - offset] if gen.random() < 0.7 else gen.choice(BATCH_TAGS)
                pred[b, j] = BATCH_IDS[BATCH_TAGS.index(tag)]
            elif r < 0.9:
                pred[b, j] = gen.choice(BATCH_IDS)
            else:
                pred[b, j] = gen.choice(GARBAGE)
    return pred, gold


def _check_batch_against_scalar(pred, gold, tag_set, mode, **kwargs):
    out = span_f1_oracle_batch(pred, gold, tag_set, mode=mode, pad_id=PAD_ID, **kwargs)
    assert out.shape == gold.shape and out.dtype == torch.long
    valid = (gold != -100) & (gold != PAD_ID)
    assert (out[~valid] == -100).all()
    for b in range(gold.shape[0]):
        positions = valid[b].nonzero().flatten().tolist()
        gold_tags = tag_set.decode(gold[b, positions])
        pred_tags = tag_set.decode(pred[b, positions])  # garbage ids read as O
        for j, pos in enumerate(positions):
            expected = span_f1_oracle(pred_tags[:j], gold_tags, mode)
            assert int(out[b, pos]) == tag_set.token_id(expected), (mode, pred_tags[:j], gold_tags, expected)


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_scalar(mode):
    gen = random.Random(99)
    tag_set = BIOTagSet(BATCH_TAGS, BATCH_IDS)
    for _ in range(4):
        pred, gold = _random_batch(gen, rows=40, width=12)
        _check_batch_against_scalar(pred, gold, tag_set, mode)
    # Longer rows.
    pred, gold = _random_batch(gen, rows=6, width=30)
    _check_batch_against_scalar(pred, gold, tag_set, mode)


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_scalar_many_short_rows(mode):
    """2,000 rows of n <= 7 with 2 types (the brute-force distribution), every position of every row."""
    rng = random.Random(3)
    gold_rows, pred_rows = [], []
    for _ in range(2000):
        gold = list(_random_gold(rng, rng.randint(1, 7)))
        if rng.random() < 0.5:
            pred = [rng.choice(TAGS) if rng.random() < 0.4 else tag for tag in gold]
        else:
            pred = [rng.choice(TAGS) for _ in gold]
        gold_rows.append([TAGS.index(tag) for tag in gold] + [-100] * (7 - len(gold)))
        pred_rows.append([TAGS.index(tag) for tag in pred] + [0] * (7 - len(pred)))
    out = span_f1_oracle_batch(torch.tensor(pred_rows), torch.tensor(gold_rows), TAGS, mode=mode).tolist()
    # The batched best values per candidate (internal tag order), on the same rows (gold padding reads as O).
    tag_set = BIOTagSet(TAGS)
    internal_gold = tag_set.to_internal(torch.tensor(gold_rows)).clamp(min=0)
    internal_pred = tag_set.to_internal(torch.tensor(pred_rows))
    values = (_values_exact if mode == "exact" else _values_partial)(internal_gold, internal_pred, len(TYPES))[0]
    for row, (gold_row, pred_row, out_row) in enumerate(zip(gold_rows, pred_rows, out)):
        gold = [TAGS[i] for i in gold_row if i != -100]
        for t in range(len(gold)):
            prefix = [TAGS[i] for i in pred_row[:t]]
            assert TAGS[out_row[t]] == span_f1_oracle(prefix, gold, mode)
            keys = _candidate_keys(prefix, gold, mode, types=TYPES)[0]
            expected = [float(keys[tag][0]) for tag in tag_set.tags]
            assert values[row, t].tolist() == pytest.approx(expected, abs=1e-12), (mode, prefix, gold)
        assert out_row[len(gold) :] == [-100] * (7 - len(gold))


def test_batch_small_tag_sets_and_list_tag_set():
    # A list of tags: ids are positions. Only O: the oracle says O everywhere.
    out = span_f1_oracle_batch(torch.tensor([[0, 0, 0]]), torch.tensor([[0, 0, -100]]), ["O"])
    assert out.tolist() == [[0, 0, -100]]
    tags = ["O", "B-PER", "I-PER"]
    gold = torch.tensor([[1, 2, 0, 1], [0, 2, 2, -100]])
    pred = torch.tensor([[0, 2, 0, 0], [1, 0, 0, 0]])
    assert span_f1_oracle_batch(pred, gold, tags).tolist() == [[1, 0, 0, 1], [0, 1, 0, -100]]
    empty = torch.zeros((0, 5), dtype=torch.long)
    assert span_f1_oracle_batch(empty, empty, tags).shape == (0, 5)


def test_tag_set():
    tag_set = BIOTagSet.from_vocab({"O": 4, "B-PER": 7, "I-PER": 1, "hello": 0}, ["I-PER", "O", "B-PER"])
    assert tag_set.tags == ("O", "B-PER", "I-PER") and tag_set.types == ("PER",) and len(tag_set) == 3
    assert tag_set.encode(["O", "I-PER"]) == [4, 1]
    assert tag_set.decode([7, 0, 1, -100, 99]) == ["B-PER", "O", "I-PER", "O", "O"]
    assert tag_set.to_internal(torch.tensor([7, 0, 99])).tolist() == [1, -1, -1]


# ------------------------------------------------------------------------------------------------------------------
# Errors name the bad value
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["X-PER", "B-", "b-PER", "", "B-NEW YORK", "IPER"])
def test_bad_tags_are_named(bad):
    with pytest.raises(ValueError, match=r"prefix\[0\]: " + re.escape(repr(bad)) + ".*accepted"):
        span_f1_oracle([bad], ["O", "O"])
    with pytest.raises(ValueError, match=r"gold\[1\].*accepted"):
        span_f1_oracle([], ["O", bad])
    with pytest.raises(ValueError, match="accepted"):
        BIOTagSet(["O", bad])


def test_bad_lengths_modes_and_ids():
    with pytest.raises(ValueError, match="prefix has 2 tags and gold has 2"):
        span_f1_oracle(["O", "O"], ["O", "O"])
    with pytest.raises(ValueError, match="prefix has 0 tags and gold has 0"):
        span_f1_oracle([], [])
    with pytest.raises(ValueError, match="'fuzzy'.*'exact', 'partial'"):
        span_f1_oracle([], ["O"], mode="fuzzy")
    with pytest.raises(ValueError, match="'strict'.*accepted modes"):
        span_f1_oracle_batch(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), ["O"], "strict")
    with pytest.raises(ValueError, match=r"gold_ids\[1, 2\] = 42"):
        span_f1_oracle_batch(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[0, 1, 2], [0, 0, 42]]), TAGS)
    with pytest.raises(ValueError, match="same shape"):
        span_f1_oracle_batch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), TAGS)
    with pytest.raises(ValueError, match="pad_id 1 is the id of a tag"):
        span_f1_oracle_batch(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), TAGS, pad_id=1)
    with pytest.raises(ValueError, match=r"lacks \['I-PER'\]"):
        BIOTagSet(["O", "B-PER"])
    with pytest.raises(ValueError, match=r"lacks \['O'\]"):
        BIOTagSet(["B-PER", "I-PER"])
    with pytest.raises(ValueError, match="'O' occurs twice"):
        BIOTagSet(["O", "O"])
    with pytest.raises(ValueError, match=r"no id for \['I-PER'\]"):
        BIOTagSet.from_vocab({"O": 0, "B-PER": 1}, ["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match="not distinct"):
        BIOTagSet(["O", "B-PER", "I-PER"], [0, 1, 1])
    with pytest.raises(ValueError, match="Token id -3"):
        BIOTagSet(["O", "B-PER", "I-PER"], [0, 1, -3])
