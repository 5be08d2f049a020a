"""Exact dynamic oracles for span F1 on BIO tag sequences (docs/oracles.md).

NER is done as generation: one tag per input word, so a prediction has exactly as many tags as the gold sequence.
Given the gold tags `y*` (length n) and ANY predicted prefix `y_<t` (t < n), the oracle returns a next tag `a` with

    max_z F1(y_<t + [a] + z, y*)  maximal over a,

where z ranges over all completions (every sequence of n - t - 1 tags).

Reading spans
-------------
Spans are read exactly as seqeval reads them in its default (conlleval) mode, restricted to the tags `O`, `B-X` and
`I-X` (`seqeval.metrics.sequence_labeling.get_entities`): a span starts at a `B-X`, and at an `I-X` whose previous tag
is `O` or has another type; the span containing position i - 1 ends there when the tag at i is `O` or starts a span
(so `I-X` after `B-X` / `I-X` continues the span, `I-X` after `O` or after `B-Y` / `I-Y` starts a new one), and
the last span ends at the end of the sequence. Every position with a `B`/`I` tag lies in exactly one span, and all
positions of a span have the span's type.

Metrics (P = number of predicted spans, G = number of gold spans)
-----------------------------------------------------------------
- `exact` (seqeval's micro F1): TP = number of predicted spans equal to a gold span (same type, start and end);
  F1 = 2 TP / (P + G); F1 = 1.0 when P = G = 0. This equals `seqeval.metrics.f1_score([gold], [pred],
  zero_division=1)` (with `zero_division=0`, or the default "warn", seqeval scores the all-empty case 0 instead;
  then every tag ties there and the oracle's answer, `O`, is still optimal).
- `partial`: a predicted span is a hit if it overlaps (shares at least one position with) a gold span of the same
  type; a = number of predicted spans that are hits, b = number of gold spans overlapped by at least one
  same-type predicted span; precision = a / P, recall = b / G, F1 = 2 precision recall / (precision + recall)
  = 2 a b / (a G + b P); F1 = 0 when precision + recall = 0; F1 = 1.0 when P = G = 0 and F1 = 0 when exactly one of
  P, G is 0. (Under this definition, splitting a gold span into several one-word predicted spans raises
  precision, because each piece is a hit; the oracle is exact for the definition as written, so it does that
  whenever it pays, see `span_f1_oracle`.)

Derivation (exact)
------------------
State after the prefix: the closed predicted spans (fixed, TP0 of them correct, P0 in all) and the open span (the
span containing position t - 1, whose end is not yet decided). Adding a correct span never lowers 2 TP / (P + G)
and adding a wrong one lowers it whenever TP > 0, and one completion reaches both the largest TP and the smallest P
at once: continue the open span to its gold end if it can still equal a gold span (same start, same type, gold span
still running), then write every gold span that starts later and nothing else. Hence the best value after a next tag
is 2 (TP0' + m' + F') / (P0' + open' + F' + G), with m' = 1 if the (new or continued) open span can still equal a
gold span and F' the number of gold spans starting after t. The oracle evaluates this for each candidate tag.

Derivation (partial)
--------------------
F1 = 2 a b / (a G + b P) grows with precision and recall, and adding a hit span raises precision ((a + 1) / (P + 1)
>= a / P), so once the open span has ended the best remainder is one one-word span on every gold (non-`O`) position
(B tags, all hits, every remaining gold span covered) and nothing else. For a candidate next tag, what remains is
where the open span after it (type X, covering [s, t]) ends: at some e >= t. Stretching it over (t, e] may turn it
into a hit and cover gold spans of type X, but uses up the gold positions it passes (no one-word spans there) and
loses the uncovered gold spans of other types that end inside. The best value after the candidate is the maximum of
F1(a(e), b(e), P(e)) over the ends e. The scalar reference enumerates all ends; the batched form uses that only two
can be best, e = t and e = the first position after t with gold type X (before it nothing is gained, after it, or
once the span is a hit, every further position costs a hit or nothing). Both forms are exact: the tests check them
against brute force over all completions, and against each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fractions import Fraction

import torch

from hf_seqobj.constants import IGNORE_INDEX


__all__ = [
    "BIOTagSet",
    "MODES",
    "SpanF1Oracle",
    "span_f1_oracle",
    "span_f1_oracle_batch",
    "span_f1_score",
]

MODES = ("exact", "partial")
"""The accepted values of `mode`."""


BIO_TAG_PATTERN = re.compile(r"^(O|[BI]-\S+)$")
"""A BIO tag: `O`, `B-TYPE` or `I-TYPE` (TYPE without whitespace); shared with the ner task's data checks."""
_ACCEPTED = "accepted: 'O', 'B-TYPE' or 'I-TYPE', TYPE a non-empty string without whitespace"


def _parse(tag: object, where: str) -> tuple[str, str]:
    """Splits a BIO tag into (kind, type): ("O", "") or ("B"/"I", TYPE); raises ValueError naming a bad tag."""
    if not isinstance(tag, str) or not BIO_TAG_PATTERN.match(tag):
        raise ValueError(f"{where}: {tag!r} is not a BIO tag ({_ACCEPTED}).")
    if tag == "O":
        return "O", ""
    return tag[0], tag[2:]


def _check_mode(mode: object) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; accepted modes: {', '.join(repr(m) for m in MODES)}.")


def _read_spans(tags: Sequence[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """Spans (type, start, end), end inclusive, of parsed tags, read as seqeval's default mode reads them."""
    spans = []
    prev_kind, prev_type, begin = "O", "", 0
    for i, (kind, type_) in enumerate([*tags, ("O", "")]):
        starts = kind != "O" and (kind == "B" or type_ != prev_type)
        if prev_kind != "O" and (kind == "O" or starts):
            spans.append((prev_type, begin, i - 1))
        if starts:
            begin = i
        prev_kind, prev_type = kind, type_
    return spans


def _partial_counts(pred_spans, gold_spans, gold_types: Sequence[str]) -> tuple[int, int]:
    """(a, b) of the partial-match definition: hit predicted spans, gold spans overlapped by a same-type span."""
    a = sum(any(gold_types[i] == typ for i in range(s, e + 1)) for typ, s, e in pred_spans)
    b = sum(
        any(p_typ == g_typ and p_s <= g_e and g_s <= p_e for p_typ, p_s, p_e in pred_spans)
        for g_typ, g_s, g_e in gold_spans
    )
    return a, b


def _partial_f1(a: int, b: int, p: int, g: int) -> Fraction:
    if p == 0 and g == 0:
        return Fraction(1)
    if a == 0 or b == 0:
        return Fraction(0)
    return Fraction(2 * a * b, a * g + b * p)


def _exact_f1(tp: int, p: int, g: int) -> Fraction:
    return Fraction(1) if p + g == 0 else Fraction(2 * tp, p + g)


def span_f1_score(pred: Sequence[str], gold: Sequence[str], mode: str = "exact") -> float:
    """Span F1 of one predicted tag sequence against one gold sequence, as defined in the module docstring.

    Args:
        pred: Predicted BIO tags.
        gold: Gold BIO tags, as many as `pred`.
        mode: "exact" (seqeval's micro F1 with `zero_division=1`) or "partial" (overlap with a same-type span).

    Returns:
        The F1 score in [0, 1].

    Raises:
        ValueError: On a tag that is not a BIO tag, sequences of different lengths, or an unknown mode.
    """
    _check_mode(mode)
    pred_p = [_parse(tag, f"pred[{i}]") for i, tag in enumerate(pred)]
    gold_p = [_parse(tag, f"gold[{i}]") for i, tag in enumerate(gold)]
    if len(pred_p) != len(gold_p):
        raise ValueError(f"pred has {len(pred_p)} tags but gold has {len(gold_p)}; they must have the same length.")
    pred_spans, gold_spans = _read_spans(pred_p), _read_spans(gold_p)
    if mode == "exact":
        tp = len(set(pred_spans) & set(gold_spans))
        return float(_exact_f1(tp, len(pred_spans), len(gold_spans)))
    a, b = _partial_counts(pred_spans, gold_spans, [typ for _, typ in gold_p])
    return float(_partial_f1(a, b, len(pred_spans), len(gold_spans)))


def corpus_partial_f1(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus-level (micro) partial-match span precision, recall and F1, as defined in the module docstring.

    The counts a, b, P and G are summed over the sentences before precision = a / P and recall = b / G are taken,
    as seqeval micro-averages the exact-match counts.

    Args:
        predictions: Predicted BIO tag sequences.
        references: Gold BIO tag sequences, one per prediction, each as long as its prediction.

    Returns:
        `{"partial_precision", "partial_recall", "partial_f1"}`; precision (recall) is 0 when there are no
        predicted (gold) spans, and F1 is 0 when precision + recall = 0.

    Raises:
        ValueError: On a tag that is not a BIO tag, or sequences of different counts or lengths.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; they must be as many.")
    a = b = p = g = 0
    for row, (pred, gold) in enumerate(zip(predictions, references)):
        pred_p = [_parse(tag, f"predictions[{row}][{i}]") for i, tag in enumerate(pred)]
        gold_p = [_parse(tag, f"references[{row}][{i}]") for i, tag in enumerate(gold)]
        if len(pred_p) != len(gold_p):
            raise ValueError(f"predictions[{row}] has {len(pred_p)} tags but references[{row}] has {len(gold_p)}.")
        pred_spans, gold_spans = _read_spans(pred_p), _read_spans(gold_p)
        hits, covered = _partial_counts(pred_spans, gold_spans, [typ for _, typ in gold_p])
        a, b, p, g = a + hits, b + covered, p + len(pred_spans), g + len(gold_spans)
    precision = a / p if p else 0.0
    recall = b / g if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"partial_precision": precision, "partial_recall": recall, "partial_f1": f1}


# ----------------------------------------------------------------------------------------------------------------
# Scalar oracle
# ----------------------------------------------------------------------------------------------------------------


def _split_open(seq: list[tuple[str, str]]) -> tuple[list[tuple[str, int, int]], tuple[str, int] | None]:
    """Closed spans of `seq` and its open span (type, start): the span containing the last position, if any."""
    spans = _read_spans(seq)
    if seq and seq[-1][0] != "O":
        typ, start, _ = spans.pop()
        return spans, (typ, start)
    return spans, None


def _exact_key(seq: list[tuple[str, str]], gold_spans: list[tuple[str, int, int]]) -> tuple:
    """(best reachable exact F1, -P of the completion reaching it) after the tags `seq` (a prefix of length u)."""
    u = len(seq)
    closed, open_span = _split_open(seq)
    gold_set = set(gold_spans)
    tp0, p0 = sum(span in gold_set for span in closed), len(closed)
    # The open span covers [start, u - 1]; it can still equal a gold span with its type and start ending at >= u - 1.
    can_match = open_span is not None and any(
        typ == open_span[0] and start == open_span[1] and end >= u - 1 for typ, start, end in gold_spans
    )
    future = sum(start >= u for _, start, _ in gold_spans)
    tp = tp0 + can_match + future
    p = p0 + (open_span is not None) + future
    return _exact_f1(tp, p, len(gold_spans)), -p


def _partial_key(seq: list[tuple[str, str]], gold_spans: list[tuple[str, int, int]], gold_types: list[str]) -> tuple:
    """(best reachable partial F1,) after the tags `seq` (a prefix of length t + 1); see the module docstring."""
    n, t = len(gold_types), len(seq) - 1
    closed, open_span = _split_open(seq)
    a0, _ = _partial_counts(closed, [], gold_types)
    p0, g = len(closed), len(gold_spans)
    pred_types = [typ for _, typ in seq]
    # Gold spans already overlapped by a same-type predicted span on positions <= t (closed or open alike).
    covered = [any(pred_types[i] == typ for i in range(s, min(e, t) + 1)) for typ, s, e in gold_spans]

    def gold_positions_from(j: int) -> int:
        return sum(1 for i in range(j, n) if gold_types[i])

    if open_span is None:
        rest = gold_positions_from(t + 1)
        b = sum(cov or end > t for cov, (_, _, end) in zip(covered, gold_spans))
        return (_partial_f1(a0 + rest, b, p0 + rest, g),)
    x, start = open_span
    open_hit = any(gold_types[i] == x for i in range(start, t + 1))
    best = Fraction(-1)
    for e in range(t, n):  # the open span ends at e; one-word spans on every gold position after e
        hit = open_hit or any(gold_types[i] == x for i in range(t + 1, e + 1))
        rest = gold_positions_from(e + 1)
        b = sum(
            cov or g_e > e or (g_typ == x and g_e > t and g_s <= e)
            for cov, (g_typ, g_s, g_e) in zip(covered, gold_spans)
        )
        best = max(best, _partial_f1(a0 + hit + rest, b, p0 + 1 + rest, g))
    return (best,)


def _preference(gold_tag: str, gold_kind_type: tuple[str, str], open_type: str | None) -> list[str]:
    """The tie-breaking order of `span_f1_oracle` (its first four tiers)."""
    order = [gold_tag]
    if gold_kind_type[0] != "O":
        order.append(f"B-{gold_kind_type[1]}")
    order.append("O")
    if open_type is not None:
        order.append(f"I-{open_type}")
    return order


def _candidate_keys(
    prefix: Sequence[str], gold: Sequence[str], mode: str, types: Sequence[str] | None = None
) -> tuple[dict[str, tuple], str, tuple[str, str], str | None]:
    """Validates the inputs; the key of each candidate next tag (first item: its best reachable F1), and context.

    Candidates: `O`, `B-X`, `I-X` for X in `types` (default: the types of `gold` and of the open predicted span;
    tags of other types start a span that cannot overlap gold and are never better than `O`).
    """
    _check_mode(mode)
    prefix_p = [_parse(tag, f"prefix[{i}]") for i, tag in enumerate(prefix)]
    gold_p = [_parse(tag, f"gold[{i}]") for i, tag in enumerate(gold)]
    t, n = len(prefix_p), len(gold_p)
    if t >= n:
        raise ValueError(
            f"prefix has {t} tags and gold has {n}; accepted: a prefix strictly shorter than gold (0 <= t < n)."
        )
    gold_spans = _read_spans(gold_p)
    gold_types = [typ for _, typ in gold_p]
    open_type = prefix_p[-1][1] if t and prefix_p[-1][0] != "O" else None
    if types is None:
        types = sorted({typ for typ in gold_types if typ} | ({open_type} if open_type else set()))
    keys = {}
    for tag in ["O"] + [f"B-{typ}" for typ in types] + [f"I-{typ}" for typ in types]:
        seq = [*prefix_p, _parse(tag, "candidate")]
        keys[tag] = _exact_key(seq, gold_spans) if mode == "exact" else _partial_key(seq, gold_spans, gold_types)
    return keys, gold[t], gold_p[t], open_type


def span_f1_oracle(prefix: Sequence[str], gold: Sequence[str], mode: str = "exact") -> str:
    """The exact dynamic oracle for span F1: an optimal next BIO tag after `prefix` against `gold`.

    With t = len(prefix) and n = len(gold), the returned tag a maximises max_z F1(prefix + [a] + z, gold) over all
    completions z of n - t - 1 tags (spans, metrics and derivations: see the module docstring). This is the
    reference form, O(n^2) Python work per candidate tag; `span_f1_oracle_batch` is the fast one.

    Tie-breaking. The optimal set is the argmax set of that best reachable F1; in mode "exact" it is refined by
    the number of predicted spans of the best completion (fewest first), which changes the answer only when every
    completion scores 0 (it then avoids opening spans that cannot be correct). Among the optimal tags the oracle
    returns the first of:

    1. the gold tag `gold[t]` (so on the gold prefix the oracle returns the gold tag, as teacher forcing does;
       a gold `I-X` that starts a gold span after `O` is returned as `I-X` whenever it starts a span in the
       prediction too);
    2. `B-Y`, Y the type of `gold[t]` (e.g. a gold span starts at t but the open predicted span has type Y: `I-Y`
       would continue it, `B-Y` starts the span);
    3. `O`;
    4. `I-X` continuing the open predicted span of type X (e.g. in mode "partial", stretching a wrong span until it
       overlaps a gold span of its type);
    5. otherwise the first optimal tag in the order `O`, `B-` types, `I-` types (types sorted). This tier is never
       reached: one of 1-4 is always optimal.

    In mode "exact" this gives: continue the open span (`I-X`, the gold tag) while it can still equal the gold span
    it started with, and close it at that span's gold end; start every gold span (the gold tag, or `B-Y` where a
    gold `I-Y` would continue an open predicted span of type Y); elsewhere the gold tag if it opens no span (`O`, or
    `I-Z` continuing an unmatched open span of type Z: harmless, P does not change), else `O`.

    In mode "partial" the oracle also uses the definition's incentives: it may continue a wrong open span until it
    overlaps a gold span of its type, and it may split a gold span into several predicted spans (`B-Y` where the
    gold says `I-Y`) when that raises precision.

    Args:
        prefix: Predicted tags so far (any BIO tags, ill-formed sequences included); strictly shorter than `gold`.
        gold: Gold tags; the full prediction has exactly `len(gold)` tags.
        mode: "exact" (seqeval micro F1) or "partial" (overlap-based F1, defined in the module docstring).

    Returns:
        The oracle's next tag: `O`, or `B-X` / `I-X` for a type X of `gold` or of the open predicted span.

    Raises:
        ValueError: If a tag is not a BIO tag (naming it and its position), if `len(prefix) >= len(gold)`, or if
            `mode` is not one of `MODES`.
    """
    keys, gold_tag, gold_kind_type, open_type = _candidate_keys(prefix, gold, mode)
    best = max(keys.values())
    optimal = [tag for tag, key in keys.items() if key == best]
    for tag in _preference(gold_tag, gold_kind_type, open_type):
        if tag in optimal:
            return tag
    return optimal[0]


# ----------------------------------------------------------------------------------------------------------------
# Tag set and batched oracle
# ----------------------------------------------------------------------------------------------------------------


class BIOTagSet:
    """A BIO tag set and its mapping to token ids (label ids of a tagger, or vocabulary ids of a generator).

    Internally tags are numbered `O` = 0, `B-T_k` = k, `I-T_k` = K + k for the sorted types T_1..T_K; the
    batched oracle works on these indices and maps back to token ids.

    Args:
        tags: The tags; must contain `O`, and `B-X` and `I-X` for every type X that occurs (the oracle may emit
            either). No duplicates.
        token_ids: The id of each tag: a sequence aligned with `tags`, or a mapping tag -> id (for instance a
            tokenizer's vocabulary). Default: the position of the tag in `tags`. Ids must be distinct and >= 0.

    Raises:
        ValueError: On a non-BIO tag, a duplicate, a missing `O` / `B-X` / `I-X`, or bad or missing ids.

    Example:
        >>> tag_set = BIOTagSet.from_vocab(tokenizer.get_vocab(), ["O", "B-PER", "I-PER"])  # doctest: +SKIP
    """

    def __init__(self, tags: Sequence[str], token_ids: Sequence[int] | Mapping[str, int] | None = None):
        tags = list(tags)
        parsed = [_parse(tag, f"tags[{i}]") for i, tag in enumerate(tags)]
        seen = set()
        for tag in tags:
            if tag in seen:
                raise ValueError(f"Tag {tag!r} occurs twice in tags; accepted: distinct tags.")
            seen.add(tag)
        types = sorted({typ for _, typ in parsed if typ})
        missing = [tag for tag in ["O", *(f"{k}-{typ}" for typ in types for k in "BI")] if tag not in seen]
        if missing:
            raise ValueError(
                f"The tag set {tags} lacks {missing}; accepted: a set with 'O' and both 'B-X' and 'I-X' for each type."
            )
        if token_ids is None:
            ids = {tag: i for i, tag in enumerate(tags)}
        elif isinstance(token_ids, Mapping):
            absent = [tag for tag in tags if tag not in token_ids]
            if absent:
                raise ValueError(f"token_ids has no id for {absent}; accepted: a mapping with an id for every tag.")
            ids = {tag: token_ids[tag] for tag in tags}
        else:
            token_ids = list(token_ids)
            if len(token_ids) != len(tags):
                raise ValueError(f"{len(token_ids)} token_ids for {len(tags)} tags; accepted: one id per tag.")
            ids = dict(zip(tags, token_ids))
        for tag, token_id in ids.items():
            if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
                raise ValueError(f"Token id {token_id!r} of tag {tag!r} is not accepted: ids are ints >= 0.")
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"Token ids {ids} are not distinct; accepted: one distinct id per tag.")
        self.types: tuple[str, ...] = tuple(types)
        """The entity types, sorted."""
        self.tags: tuple[str, ...] = ("O", *(f"B-{typ}" for typ in types), *(f"I-{typ}" for typ in types))
        """The tags in internal order (`O`, `B-` types, `I-` types)."""
        self.token_ids = torch.tensor([ids[tag] for tag in self.tags], dtype=torch.long)
        """Token id of each internal index."""
        self._index = {tag: i for i, tag in enumerate(self.tags)}
        self._lookup = torch.full((int(self.token_ids.max()) + 1,), -1, dtype=torch.long)
        self._lookup[self.token_ids] = torch.arange(len(self.tags))

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int], tags: Sequence[str]) -> BIOTagSet:
        """The tag set `tags` with the ids they have in `vocab` (e.g. `tokenizer.get_vocab()`)."""
        return cls(tags, token_ids=vocab)

    @classmethod
    def infer_from_vocab(cls, vocab: Mapping[str, int]) -> BIOTagSet:
        """The tag set made of every token of `vocab` that is a BIO tag (`O`, `B-X`, `I-X`), with its id.

        Raises:
            ValueError: The vocabulary has no `O`, or a type with only one of `B-X` / `I-X` (add the missing tags to
                the tokenizer: the oracle may emit either).
        """
        tags = sorted(token for token in vocab if BIO_TAG_PATTERN.match(token))
        return cls(tags, token_ids=vocab)

    @property
    def num_types(self) -> int:
        """Number of entity types K."""
        return len(self.types)

    def __len__(self) -> int:
        return len(self.tags)

    def __repr__(self) -> str:
        pairs = ", ".join(f"{tag}={int(i)}" for tag, i in zip(self.tags, self.token_ids))
        return f"BIOTagSet({pairs})"

    def index(self, tag: str) -> int:
        """Internal index of `tag`; raises ValueError for a tag outside the set."""
        if tag not in self._index:
            raise ValueError(f"Tag {tag!r} is not in the tag set; accepted: {list(self.tags)}.")
        return self._index[tag]

    def token_id(self, tag: str) -> int:
        """Token id of `tag`."""
        return int(self.token_ids[self.index(tag)])

    def encode(self, tags: Sequence[str]) -> list[int]:
        """Token ids of tags."""
        return [self.token_id(tag) for tag in tags]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Tags of token ids; an id that is not a tag's (garbage, padding) reads as `O`, as in the oracle."""
        internal = self.to_internal(torch.as_tensor(ids, dtype=torch.long).reshape(-1))
        return [self.tags[i] if i >= 0 else "O" for i in internal.tolist()]

    def to_internal(self, ids: torch.Tensor) -> torch.Tensor:
        """Internal indices of token ids (same shape and device); -1 where an id is not a tag's."""
        lookup = self._lookup.to(ids.device)
        inside = (ids >= 0) & (ids < lookup.numel())
        return torch.where(inside, lookup[ids.clamp(0, lookup.numel() - 1)], -1)


def _shift_right(x: torch.Tensor, fill: int | bool) -> torch.Tensor:
    """y[:, t] = x[:, t - 1], y[:, 0] = fill."""
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)


def _sum_upto(x: torch.Tensor, lag: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """y[:, t] = sum of x[:, i] over i <= t - lag (0 when t < lag)."""
    cs = x.to(dtype).cumsum(1, dtype=dtype)
    pad = torch.zeros(cs.shape[0], lag, dtype=cs.dtype, device=cs.device)
    return torch.cat([pad, cs], dim=1)[:, : cs.shape[1]]


def _chunks(x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Span structure of internal tags x [B, T] (right-padded with O): type, start, end and span start per position."""
    nonzero = x != 0
    typ = torch.where(nonzero, (x - 1) % max(k, 1) + 1, 0)
    is_b = nonzero & (x <= k)
    start = nonzero & (is_b | (_shift_right(typ, 0) != typ))
    next_nonzero = torch.cat([nonzero[:, 1:], torch.zeros_like(nonzero[:, :1])], dim=1)
    next_start = torch.cat([start[:, 1:], torch.zeros_like(start[:, :1])], dim=1)
    end = nonzero & (~next_nonzero | next_start)
    pos = torch.arange(x.shape[1], device=x.device).expand_as(x)
    span_start = torch.where(nonzero, torch.cummax(torch.where(start, pos, -1), dim=1).values, -1)
    return typ, start, end, span_start


def _values_exact(g: torch.Tensor, p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best reachable F1 [B, T, C] after each candidate at every t, P of that completion, open-span type at t."""
    b_, t_ = g.shape
    dev = g.device
    gtyp, gstart, gend, gss = _chunks(g, k)
    ptyp, _, pend, pss = _chunks(p, k)
    cand = torch.arange(2 * k + 1, device=dev)
    ctyp = torch.where(cand == 0, 0, (cand - 1) % max(k, 1) + 1)
    c_is_i, c_nonzero = cand > k, cand != 0
    # Predicted span ending at i (if it ends there) equals the gold span ending at i.
    match = (ptyp != 0) & gend & (gss == pss) & (gtyp == ptyp)
    p_closed, tp_closed = _sum_upto(pend, 2), _sum_upto(pend & match, 2)
    has_open, otyp, ostart, omatch = (
        _shift_right(ptyp != 0, False),
        _shift_right(ptyp, 0),
        _shift_right(pss, -1),
        _shift_right(match, False),
    )
    continues = has_open[..., None] & c_is_i & (ctyp == otyp[..., None])
    closes = has_open[..., None] & ~continues
    p0 = p_closed[..., None] + closes
    tp0 = tp_closed[..., None] + (closes & omatch[..., None])
    tpos = torch.arange(t_, device=dev)[None, :, None]
    new_start = torch.where(continues, ostart[..., None], tpos)
    can_match = c_nonzero & (gtyp[..., None] == ctyp) & (gss[..., None] == new_start)
    n_gold = gstart.long().sum(1)[:, None, None]
    future = (n_gold[:, :, 0] - gstart.long().cumsum(1))[..., None]
    tp = tp0 + can_match + future
    pred = p0 + c_nonzero + future
    num, den = 2 * tp, pred + n_gold
    empty = den == 0
    f1 = torch.where(empty, 1.0, num.double() / den.clamp(min=1).double())
    return f1, pred, otyp


def _partial_f1_tensor(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    den = (a * g + b * p).double()
    f1 = torch.where(den > 0, (2 * a * b).double() / den, 0.0)  # x / 0 is discarded, never an error
    return torch.where((p == 0) & (g == 0), 1.0, f1)


def _values_partial(g: torch.Tensor, p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best reachable F1 [B, T, C] after each candidate at every t, and the open-span type at t.

    After candidate c at t, the open span (type Y = type of c) covers [s, t]. Of its possible ends e >= t only two
    can be best: e = t, and e = q, the first position after t with gold type Y. Stretching over a position before
    q gains nothing (it is `O`, or a gold position of another type whose one-word hit span is lost:
    (a - 1) / (P - 1) <= a / P, and recall can only drop), and so does stretching past q or past t once the span is
    a hit. The scalar reference enumerates every end; the tests check that both agree.
    """
    b_, t_ = g.shape
    dev = g.device
    gtyp, gstart, gend, gss = _chunks(g, k)
    ptyp, _, pend, pss = _chunks(p, k)
    pos = torch.arange(t_, device=dev).expand(b_, t_)
    gse = torch.flip(torch.cummin(torch.flip(torch.where(gend, pos, t_), [1]), dim=1).values, [1])  # gold span end
    cand = torch.arange(2 * k + 1, device=dev)
    ctyp = torch.where(cand == 0, 0, (cand - 1) % max(k, 1) + 1)
    c_is_i, c_nonzero = cand > k, cand != 0

    # Prefix state at every t (positions < t are the prediction's).
    agree = (ptyp != 0) & (ptyp == gtyp)
    last_agree = torch.cummax(torch.where(agree, pos, -1), dim=1).values
    pgood = (ptyp != 0) & (last_agree >= pss)  # the predicted span containing i is a hit on positions <= i
    gcov = (gtyp != 0) & (last_agree >= gss)  # the gold span containing i is overlapped on positions <= i
    # Counts are int32 (they are at most T): half the memory traffic of int64 on the [B, T, C] tensors below.
    a_closed, p_closed = _sum_upto(pend & pgood, 2, torch.int32), _sum_upto(pend, 2, torch.int32)
    bcov_prefix = _sum_upto(gend & gcov, 1, torch.int32)  # covered gold spans that end before t
    covprev = (gtyp != 0) & (_shift_right(last_agree, -1) >= gss)  # gold span at t already overlapped before t
    has_open, otyp, ogood = _shift_right(ptyp != 0, False), _shift_right(ptyp, 0), _shift_right(pgood, False)

    # Gold counts.
    n_gold = gstart.sum(1, dtype=torch.int32)[:, None, None]
    gpos_cum = torch.nn.functional.pad((gtyp != 0).cumsum(1, dtype=torch.int32), (1, 0))
    gpos_suffix = gpos_cum[:, -1:] - gpos_cum  # [B, T + 1]: gold positions at >= j
    end_cum = gend.cumsum(1, dtype=torch.int32)
    nend_after = (end_cum[:, -1:] - end_cum)[..., None]  # gold spans ending after t
    onehot = torch.nn.functional.one_hot(gtyp, k + 1).bool()  # [B, T, K + 1]
    # Gold spans ending at <= i whose type is not the candidate's type: [B, T, C].
    end_other = end_cum[..., None] - (onehot & gend[..., None]).cumsum(1, dtype=torch.int32).index_select(2, ctyp)
    # q: first position > t with gold type = the candidate's type (t_ if none): [B, T, C].
    first_ge = torch.flip(torch.cummin(torch.flip(torch.where(onehot, pos[..., None], t_), [1]), dim=1).values, [1])
    q = torch.cat([first_ge[:, 1:], torch.full_like(first_ge[:, :1], t_)], dim=1).index_select(2, ctyp)
    has_q = q < t_
    q = q.clamp(max=t_ - 1)

    # Candidate c at t.
    agree_t = c_nonzero & (ctyp == gtyp[..., None])
    cov_t = covprev[..., None] | agree_t
    b_base = bcov_prefix[..., None] + (gend[..., None] & cov_t) + nend_after
    continues = has_open[..., None] & c_is_i & (ctyp == otyp[..., None])
    closes = has_open[..., None] & ~continues
    a0 = a_closed[..., None] + (closes & ogood[..., None])
    p0 = p_closed[..., None] + closes
    good0 = torch.where(continues, ogood[..., None] | agree_t, agree_t)
    rest = gpos_suffix[:, 1:, None]  # gold positions after t: one-word hit spans
    # Candidate O (c = 0) leaves no open span; the others (c >= 1) open or continue one.
    value_none = _partial_f1_tensor(a0[..., :1] + rest, b_base[..., :1], p0[..., :1] + rest, n_gold)
    a0, p0, b_base, good0, cov_t = a0[..., 1:], p0[..., 1:], b_base[..., 1:], good0[..., 1:], cov_t[..., 1:]
    q, has_q, end_other, ctyp = q[..., 1:], has_q[..., 1:], end_other[..., 1:], ctyp[1:]
    value_t = _partial_f1_tensor(a0 + good0 + rest, b_base, p0 + 1 + rest, n_gold)
    rest_q = gpos_suffix.gather(1, (q + 1).reshape(b_, -1)).reshape(q.shape)
    straddle_saved = (
        ((gtyp != 0) & ~gend)[..., None] & cov_t & (gtyp[..., None] != ctyp) & (gse[..., None] <= q)
    )  # the gold span running through t is lost by the stretch unless already overlapped
    lost = end_other.gather(1, q) - end_other - straddle_saved.int()
    value_q = _partial_f1_tensor(a0 + 1 + rest_q, b_base - lost, p0 + 1 + rest_q, n_gold)
    value_open = torch.where(has_q, torch.maximum(value_t, value_q), value_t)
    return torch.cat([value_none, value_open], dim=-1), otyp


def span_f1_oracle_batch(
    prefix_ids: torch.Tensor,
    gold_ids: torch.Tensor,
    tag_set: BIOTagSet | Sequence[str],
    mode: str = "exact",
    pad_id: int | None = None,
) -> torch.Tensor:
    """The span F1 oracle at every position of a batch: labels for DAgger relabelling.

    Row b's tag sequence is made of its gold positions that are not padding (`gold_ids == -100`, or `== pad_id`),
    in order; they need not be contiguous (a prompt marked -100 before the tags is fine). At the j-th such position
    the output is the token id of `span_f1_oracle(prefix, gold, mode)`, with `gold` the row's gold tags and `prefix`
    the predicted tags at the row's first j such positions (read from `prefix_ids` at those positions). Every
    other position gets -100.

    A `prefix_ids` entry that is not a tag's token id (garbage emitted by the model, padding, -100) reads as `O`.
    This is exact (equal to the scalar oracle everywhere, ties broken the same way) and fully vectorised: O(B T K)
    tensor work in both modes, no Python loop over rows or time steps. Works on the device of the inputs.

    Args:
        prefix_ids: [B, T] token ids of the predicted tags (the roll-in), aligned with `gold_ids`.
        gold_ids: [B, T] token ids of the gold tags; -100 (or `pad_id`) marks positions without a tag.
        tag_set: A `BIOTagSet`, or a list of tags (their ids are then their positions in the list).
        mode: "exact" or "partial" (see `span_f1_oracle`).
        pad_id: An extra gold padding id besides -100 (must not be a tag's id).

    Returns:
        [B, T] LongTensor of oracle token ids, -100 at padding positions.

    Raises:
        ValueError: On an unknown mode, tensors that are not 2-D of the same shape, a gold id that is neither a
            tag's id nor padding (naming it and its position), or a `pad_id` that is a tag's id.
    """
    _check_mode(mode)
    if not isinstance(tag_set, BIOTagSet):
        tag_set = BIOTagSet(tag_set)
    if prefix_ids.dim() != 2 or prefix_ids.shape != gold_ids.shape:
        raise ValueError(
            f"prefix_ids {tuple(prefix_ids.shape)} and gold_ids {tuple(gold_ids.shape)}; accepted: two [B, T] "
            "tensors of the same shape."
        )
    dev = gold_ids.device
    gold_ids, prefix_ids = gold_ids.long(), prefix_ids.long()
    valid = gold_ids != IGNORE_INDEX
    if pad_id is not None:
        if int(pad_id) in tag_set.token_ids.tolist():
            raise ValueError(f"pad_id {pad_id} is the id of a tag; accepted: an id that no tag has.")
        valid &= gold_ids != pad_id
    gold_int = tag_set.to_internal(gold_ids)
    bad = valid & (gold_int < 0)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"gold_ids[{row}, {col}] = {int(gold_ids[row, col])} is not a tag id nor padding; accepted: the ids of "
            f"{tag_set}, -100" + (f" or pad_id {pad_id}." if pad_id is not None else ".")
        )
    b_, t_ = gold_ids.shape
    out = torch.full_like(gold_ids, IGNORE_INDEX)
    if b_ == 0 or t_ == 0 or not valid.any():
        return out
    k = tag_set.num_types
    # Compact each row: its valid positions first, in order; padding after them reads as gold O.
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    inside = torch.arange(t_, device=dev)[None, :] < valid.sum(1, keepdim=True)
    g = torch.where(inside, gold_int.gather(1, order), 0)
    p = tag_set.to_internal(prefix_ids).gather(1, order).clamp(min=0)  # not a tag -> O
    if mode == "exact":
        f1, pred, otyp = _values_exact(g, p, k)
        optimal = f1 == f1.amax(-1, keepdim=True)
        fewest = torch.where(optimal, pred, torch.iinfo(torch.long).max).min(-1, keepdim=True).values
        optimal &= pred == fewest
    else:
        f1, otyp = _values_partial(g, p, k)
        optimal = f1 == f1.amax(-1, keepdim=True)
    # Ties go to the first optimal candidate in this order: gold tag, B-<gold type>, O, I-<open type>, then internal
    # order. The first optimal in internal order, overridden by each preferred candidate that is optimal (the
    # least preferred first, so that the most preferred one wins).
    gtyp = torch.where(g != 0, (g - 1) % max(k, 1) + 1, 0)
    choice = optimal.to(torch.uint8).argmax(-1)  # the first optimal one
    for allowed, preferred in ((otyp != 0, k + otyp), (None, torch.zeros_like(g)), (gtyp != 0, gtyp), (None, g)):
        ok = optimal.gather(-1, preferred[..., None])[..., 0]
        choice = torch.where(ok if allowed is None else ok & allowed, preferred, choice)
    labels = torch.where(inside, tag_set.token_ids.to(dev)[choice], IGNORE_INDEX)
    return out.scatter_(1, order, labels)


class SpanF1Oracle:
    """The exact span-F1 oracle for tag sequences generated token by token and ended by EOS (DAgger relabelling).

    A generated output is one tag token per word followed by EOS. For a roll-in `y` (any tokens) and a gold output
    with n tags, the label at position t (the target after `y[:t]`) is:

    - t < n: the token of `span_f1_oracle(tags of y[:t], gold tags, mode)` (a non-tag token in `y` reads as `O`);
    - t >= n: EOS (the output has all its tags; the task's scorer cuts longer outputs to n tags, so stopping is
      optimal);
    - -100 once `y[:t]` contains an EOS (the roll-in has ended).

    Args:
        tag_set: The tags and their token ids.
        eos_token_id: The end token.
        mode: "exact" or "partial" (see `span_f1_oracle`).
        pad_token_id: An extra padding id of gold outputs besides -100 (may equal EOS, as for GPT-2).
    """

    def __init__(self, tag_set: BIOTagSet, eos_token_id: int, mode: str = "exact", pad_token_id: int | None = None):
        _check_mode(mode)
        if int(eos_token_id) in tag_set.token_ids.tolist():
            raise ValueError(f"eos_token_id {eos_token_id} is the id of a tag; accepted: an id that no tag has.")
        self.tag_set = tag_set
        self.eos_token_id = int(eos_token_id)
        self.mode = mode
        self.pad_token_id = pad_token_id

    def __call__(self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """Labels [B, T] for roll-ins `prefix_ids` [B, T] against gold outputs `reference_ids` [B, M].

        `reference_ids` rows are tag ids, then EOS, then padding (-100 or `pad_token_id`).
        """
        if prefix_ids.dim() != 2 or reference_ids.dim() != 2 or prefix_ids.shape[0] != reference_ids.shape[0]:
            raise ValueError(
                f"prefix_ids {tuple(prefix_ids.shape)} and reference_ids {tuple(reference_ids.shape)}; accepted: "
                "[B, T] and [B, M] tensors with the same B."
            )
        b_, t_ = prefix_ids.shape
        gold = reference_ids.long()
        is_tag = self.tag_set.to_internal(gold) >= 0
        ended = torch.cumsum(~is_tag, dim=1) > 0  # a row's tags are the ones before its first non-tag token
        gold = gold.masked_fill(ended, IGNORE_INDEX)
        n = (~ended).sum(1)
        width = max(t_, gold.shape[1])
        pad = torch.full((b_, width), IGNORE_INDEX, dtype=torch.long, device=gold.device)
        gold_wide = pad.clone()
        gold_wide[:, : gold.shape[1]] = gold
        prefix_wide = pad.clone()
        prefix_wide[:, :t_] = prefix_ids.long()
        tags = span_f1_oracle_batch(prefix_wide, gold_wide, self.tag_set, self.mode)[:, :t_]
        position = torch.arange(t_, device=gold.device)[None, :]
        labels = torch.where(position < n[:, None], tags, self.eos_token_id)
        is_eos = prefix_ids == self.eos_token_id
        finished = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
        return labels.masked_fill(finished, IGNORE_INDEX)

    def next_token(
        self, prefix_ids: torch.Tensor, prefix_lengths: torch.Tensor, reference_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B] the label after `prefix_ids[b, :prefix_lengths[b]]` (-100 where that prefix contains EOS)."""
        b_ = prefix_ids.shape[0]
        column = torch.full((b_, 1), IGNORE_INDEX, dtype=prefix_ids.dtype, device=prefix_ids.device)
        extended = torch.cat([prefix_ids, column], dim=1)
        labels = self(extended, reference_ids)
        return labels[torch.arange(b_, device=labels.device), prefix_lengths.long()]
