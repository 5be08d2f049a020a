"""Sentence-level BLEU and ROUGE on token ids, with batched incremental n-gram statistics.

This is the one implementation of the task rewards used inside training (the BLEU / ROUGE dynamic oracle, RAML,
interpolation); evaluation still scores decoded text with sacrebleu / rouge-score. It imports nothing else from
hf_seqobj.

Sequences
---------
A sequence of token ids is read as its tokens before its first EOS (when an `eos_token_id` is given), ignoring
-100 and `pad_token_id`; any other negative id is an error. Token ids are compared as they are: id i plays the role
of the word "w{i}", so the scores below equal those of the reference implementations on such words.

Metrics (hypothesis h of length L, reference r of length G)
-----------------------------------------------------------
- `"bleu"`: sacrebleu's `sentence_bleu(h, [r], smooth_method="exp", use_effective_order=True)` (its defaults)
  divided by 100, i.e. BLEU-4 with the NIST / mteval "exp" smoothing (Chen and Cherry 2014, method 3) and the
  effective order. With m_n the clipped n-gram matches and t_n = max(L - n + 1, 0) the hypothesis n-grams:
  the score is 0 if every m_n is 0; otherwise, over the orders n <= e = min(L, 4), p_n = m_n / t_n when m_n > 0
  and p_n = 1 / (2^z t_n) for the z-th order (counted from n = 1) with m_n = 0, and
  BLEU = BP exp((1 / e) sum_n log p_n), BP = exp(1 - G / L) if L < G else 1.
- `"rouge1"`, `"rouge2"`: rouge-score's ROUGE-N F-measure (`RougeScorer([...]).score(r, h)[...].fmeasure`,
  no stemming): o = clipped n-gram overlap, precision o / max(L - n + 1, 1), recall o / max(G - n + 1, 1),
  F = 2 P R / (P + R) (0 when P + R = 0), computed as 2 o / (max(L - n + 1, 1) + max(G - n + 1, 1)).
- `"rougeL"`: rouge-score's ROUGE-L F-measure: with l = LCS(h, r), F = 2 l / (L + G), and 0 when L = 0 or G = 0.

Incremental statistics
----------------------
`SentenceMetric` holds a batch of N references; a `MetricState` holds the statistics of hypotheses against them,
shaped [N, *S] (any extra dimensions S: positions, beams), and is updated when one token is appended
(`SentenceMetric.append`) or scored for many candidate next tokens at once without building their states
(`SentenceMetric.candidate_scores`). Both are plain batched tensor operations: no Python loop over hypotheses,
candidates or reference positions (only over the 1 to 4 n-gram orders, in places). For the n-gram metrics the
state is, per reference position j:

- `run[j]`: the length (capped at the largest order) of the longest common suffix of the hypothesis and r[:j + 1].
  Appending token a gives run'[j] = min(run[j - 1] + 1, max order) if r[j] == a else 0, and the new n-gram of the
  hypothesis equals the reference n-gram ending at j exactly when run'[j] >= n;
- `spare[n, j]`: at the first occurrence j of each reference n-gram, its count in the reference minus its count in
  the hypothesis (minus the hypothesis count elsewhere, so never > 0 there). The new n-gram is a clipped match
  exactly when spare > 0 at its first occurrence, and at most one position qualifies, so sums over positions
  count matches exactly (the candidate scores use that: one matrix product over positions for all candidates);

plus the clipped matches per order and the length. Counts are int16: hypotheses up to 32767 tokens. For ROUGE-L
the state is the last row of the LCS table, lcs[j] = LCS(h, r[:j]); appending a gives the cumulative max of
max(lcs[j], lcs[j - 1] + (r[j - 1] == a)).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from hf_seqobj.constants import IGNORE_INDEX


__all__ = [
    "METRICS",
    "MetricState",
    "SentenceMetric",
    "check_token_ids",
    "compact_ids",
    "rouge_l",
    "rouge_n",
    "score",
    "sentence_bleu",
]

METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
"""The accepted metric names."""


_ORDERS = {"bleu": (1, 2, 3, 4), "rouge1": (1,), "rouge2": (2,), "rougeL": ()}
"""The n-gram orders whose clipped matches a metric needs (none for ROUGE-L, which uses the LCS row)."""

_FILL = -1
"""Padding of compacted sequences (behind their length): never compared as a token."""

_LN2 = math.log(2.0)


def _check_metric(metric: object) -> str:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; accepted metrics: {', '.join(repr(m) for m in METRICS)}.")
    return metric


def _check_special(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} = {value!r}; accepted: None or a non-negative int token id.")


def check_token_ids(ids: torch.Tensor, name: str) -> None:
    """Raises ValueError if `ids` is not an integer tensor, naming its first negative id other than -100."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} has dtype {ids.dtype}; accepted: an integer tensor of token ids.")
    bad = (ids < 0) & (ids != IGNORE_INDEX)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(where)} = {int(ids[where])}; accepted: token ids >= 0, or -100 for padding.")


def compact_ids(
    ids: torch.Tensor, eos_token_id: int | None = None, pad_token_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of each row of `ids`, moved to the front: before the first EOS, without -100 and padding.

    Args:
        ids: [B, T] integer token ids.
        eos_token_id: The row ends before its first occurrence of this id (None: no EOS).
        pad_token_id: Ignored wherever it occurs, like -100 (None: only -100).

    Returns:
        (tokens, lengths): tokens [B, max(T, 1)] LongTensor, row b's tokens in order at 0..lengths[b] - 1 and -1
        behind them; lengths [B] LongTensor.
    """
    ids = ids.long()
    keep = ids != IGNORE_INDEX
    if pad_token_id is not None:
        keep &= ids != pad_token_id
    if eos_token_id is not None:
        keep &= (ids == eos_token_id).long().cumsum(1) == 0
    if ids.shape[1] == 0:
        ids, keep = ids.new_full((ids.shape[0], 1), _FILL), keep.new_zeros((ids.shape[0], 1))
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    lengths = keep.sum(1)
    inside = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
    return torch.where(inside, ids.gather(1, order), _FILL), lengths


def _shift(x: torch.Tensor, dim: int, fill: int = 0) -> torch.Tensor:
    """y[i] = x[i - 1] along `dim` (a negative dim), y[0] = fill."""
    if x.shape[dim] == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [1, 0]
    return torch.nn.functional.pad(x.narrow(dim, 0, x.shape[dim] - 1), pad, value=fill)


@dataclasses.dataclass(frozen=True)
class MetricState:
    """Statistics of hypotheses [N, *S] against the references of a `SentenceMetric` (see the module docstring).

    O is the number of n-gram orders the metric tracks (`SentenceMetric.orders`: 1..4 for "bleu", 1 for "rouge1",
    2 for "rouge2"); R the width of the compacted references.

    Attributes:
        length: [N, *S] hypothesis lengths (int64).
        run: [N, *S, R] int16 longest common suffix of the hypothesis and r[:j + 1], capped at the largest order
            (n-gram metrics; None for "rougeL").
        spare: [N, *S, O, R] int16 reference minus hypothesis counts of each reference n-gram, at its first
            occurrence (n-gram metrics; else None).
        matches: [N, *S, O] int64 clipped n-gram matches per tracked order (n-gram metrics; else None).
        lcs: [N, *S, R + 1] int16 LCS of the hypothesis and r[:j] ("rougeL"; else None).
    """

    length: torch.Tensor
    run: torch.Tensor | None = None
    spare: torch.Tensor | None = None
    matches: torch.Tensor | None = None
    lcs: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        """[N, *S]."""
        return self.length.shape

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MetricState:
        """A state whose tensors are `fn` of these ones (index, gather, expand the leading [N, *S] dimensions)."""
        return MetricState(**{f.name: _apply(fn, getattr(self, f.name)) for f in dataclasses.fields(self)})

    def where(self, mask: torch.Tensor, other: MetricState) -> MetricState:
        """This state where `mask` [N, *S] is true, `other` elsewhere."""

        def pick(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            if a is None:
                return None
            return torch.where(mask.view(*mask.shape, *[1] * (a.dim() - mask.dim())), a, b)

        names = [f.name for f in dataclasses.fields(self)]
        return MetricState(**{name: pick(getattr(self, name), getattr(other, name)) for name in names})


def _apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else fn(x)


_COUNT = torch.int16
"""dtype of the per-position statistics (fast elementwise arithmetic on CPU)."""


class SentenceMetric:
    """A sentence-level metric against a batch of references, with incremental hypothesis statistics.

    Args:
        metric: One of `METRICS`.
        references: [N, R] token ids (see the module docstring for how a row is read).
        eos_token_id: A reference ends before its first EOS (None: no EOS).
        pad_token_id: Ignored in references, like -100.

    Attributes:
        ref: [N, R'] the compacted references (-1 behind their lengths; R' = max(R, 1)).
        ref_len: [N] their lengths.
        first_index: [N, O, R'] for the n-gram metrics: the end position of the first occurrence in the reference
            of the order-`orders[o]` n-gram that ends at position j (j itself at a first occurrence), -1 where no
            such n-gram ends at j (j < n - 1, or j past the reference).
        orders: The tracked n-gram orders: (1, 2, 3, 4), (1,), (2,) or () for "rougeL".

    Raises:
        ValueError: On an unknown metric, a `references` tensor that is not 2-D or holds a negative id other than
            -100, or a special id that is not a non-negative int.
    """

    def __init__(
        self,
        metric: str,
        references: torch.Tensor,
        *,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self.metric = _check_metric(metric)
        _check_special("eos_token_id", eos_token_id)
        _check_special("pad_token_id", pad_token_id)
        references = torch.as_tensor(references)
        if references.dim() != 2:
            raise ValueError(f"references has shape {tuple(references.shape)}; accepted: [N, R].")
        check_token_ids(references, "references")
        self.ref, self.ref_len = compact_ids(references, eos_token_id, pad_token_id)
        self.device = self.ref.device
        self.orders = _ORDERS[metric]
        self.max_order = max(self.orders, default=0)
        r = self.ref.shape[1]
        self.ref_valid = torch.arange(r, device=self.device) < self.ref_len[:, None]  # [N, R]
        if self.orders:
            tracked = torch.tensor(self.orders, device=self.device)
            self._tracked = tracked - 1  # indices into the orders 1..max_order
            self._offsets = tracked.to(_COUNT)[:, None] - 1  # [O, 1]: n - 1
            # same[:, j', n - 1, j]: the reference n-grams ending at j' and at j are equal (both exist).
            same = self._diagonal_runs(self.ref[:, :, None] == self.ref[:, None, :], self.ref_valid[:, None, :])
            same = same[:, :, self._tracked]
            earlier = torch.arange(r, device=self.device)[:, None] < torch.arange(r, device=self.device)  # j' < j
            repeated = (same & earlier[None, :, None, :]).any(1)
            self._first_counts = torch.where(repeated, 0, same.sum(1)).to(_COUNT)  # [N, O, R]
            # first_index[:, o, j]: where the n-gram ending at j first ends (-1: no n-gram of that order ends at j).
            self.first_index = torch.where(same.any(1), same.to(torch.uint8).argmax(1), -1)  # [N, O, R]
            # BLEU of a child from its parent's matches: which orders gain a match, for the 2^O bit patterns.
            order_ids = torch.arange(len(self.orders), device=self.device)
            bits = torch.arange(2 ** len(self.orders), device=self.device)[:, None] >> order_ids
            self._pattern_bits_t = (bits & 1).double().T.contiguous()  # [O, 2^O]
            self._bit_values = (1 << order_ids).to(_COUNT)

    def select(self, rows: torch.Tensor) -> SentenceMetric:
        """The metric against references `rows` only (same width R', so a search over them runs as over all rows)."""
        picked = copy.copy(self)
        picked.ref, picked.ref_len, picked.ref_valid = self.ref[rows], self.ref_len[rows], self.ref_valid[rows]
        if self.orders:
            picked._first_counts = self._first_counts[rows]
            picked.first_index = self.first_index[rows]
        return picked

    @property
    def num_references(self) -> int:
        return self.ref.shape[0]

    # ------------------------------------------------------------------------------------------------------------
    # Building and updating states
    # ------------------------------------------------------------------------------------------------------------

    def _diagonal_runs(self, eq: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """E[..., s, n - 1, j] (n = 1..max order): the n tokens ending at s equal r[j - n + 1 : j + 1]."""
        eq = eq & valid
        runs = [eq]
        for _ in range(1, self.max_order):
            runs.append(_shift(_shift(runs[-1], -1), -2) & eq)
        return torch.stack(runs, dim=-2)

    def _view(self, x: torch.Tensor, extra: int) -> torch.Tensor:
        """A per-reference tensor [N, ...] viewed as [N, 1 * extra, ...] to broadcast over states [N, *S]."""
        return x.view(x.shape[0], *[1] * extra, *x.shape[1:])

    def initial_state(self, *shape: int) -> MetricState:
        """The state of empty hypotheses, [N, *shape]."""
        n, r = self.ref.shape
        dev = self.device
        length = torch.zeros(n, *shape, dtype=torch.long, device=dev)
        if not self.orders:
            return MetricState(length, lcs=torch.zeros(n, *shape, r + 1, dtype=_COUNT, device=dev))
        return MetricState(
            length,
            run=torch.zeros(n, *shape, r, dtype=_COUNT, device=dev),
            spare=self._view(self._first_counts, len(shape)).expand(n, *shape, -1, -1).clone(),
            matches=torch.zeros(n, *shape, len(self.orders), dtype=torch.long, device=dev),
        )

    def prefix_states(self, hyps: torch.Tensor) -> MetricState:
        """The states of every prefix hyps[:, :t], t = 0..T, of hypotheses [N, T] (tokens taken as they are).

        Returns:
            A state [N, T + 1]. The n-gram statistics are computed at once for all prefixes; the ROUGE-L row is
            carried along the T positions (one small [N, R + 1] update per position).
        """
        hyps = torch.as_tensor(hyps, device=self.device).long()
        if hyps.dim() != 2 or hyps.shape[0] != self.num_references:
            raise ValueError(
                f"hyps has shape {tuple(hyps.shape)}; accepted: [N, T] with N = {self.num_references} references."
            )
        n, t = hyps.shape
        length = torch.arange(t + 1, device=self.device).expand(n, t + 1)
        eq = hyps[:, :, None] == self.ref[:, None, :]  # [N, T, R]
        if not self.orders:
            rows = [torch.zeros(n, self.ref.shape[1] + 1, dtype=_COUNT, device=self.device)]
            for s in range(t):
                rows.append(self._lcs_append(rows[-1], eq[:, s].to(_COUNT)))
            return MetricState(length, lcs=torch.stack(rows, 1))
        ends = self._diagonal_runs(eq, self.ref_valid[:, None, :])  # [N, T, max order, R]
        run = ends.sum(2, dtype=_COUNT)
        ends = ends[:, :, self._tracked].to(_COUNT)  # [N, T, O, R]
        spare = self._first_counts[:, None] - ends.cumsum(1, dtype=_COUNT)  # after position s
        new_match = ((spare + ends) * ends).amax(-1) > 0  # spare before s > 0 where the n-gram ending at s starts
        return MetricState(
            length,
            run=_with_first(run),
            spare=_with_first(spare, self._first_counts),
            matches=_with_first(new_match.long().cumsum(1)),
        )

    @staticmethod
    def _lcs_append(lcs: torch.Tensor, eq: torch.Tensor) -> torch.Tensor:
        """LCS row [..., R + 1] after appending a token whose matches with the reference are eq [..., R] (0/1)."""
        step = torch.maximum(lcs[..., 1:], lcs[..., :-1] + eq)
        return torch.nn.functional.pad(torch.cummax(step, dim=-1).values, (1, 0))

    def append(self, state: MetricState, tokens: torch.Tensor) -> MetricState:
        """The state after appending one token to each hypothesis.

        Args:
            state: A state [N, *S].
            tokens: [N, *S] token ids (>= 0).

        Returns:
            The new state [N, *S].
        """
        extra = state.length.dim() - 1
        eq = (tokens[..., None] == self._view(self.ref, extra)) & self._view(self.ref_valid, extra)
        eq = eq.to(_COUNT)
        if not self.orders:
            return MetricState(state.length + 1, lcs=self._lcs_append(state.lcs, eq))
        run = (_shift(state.run, -1) + 1).clamp_(max=self.max_order).mul_(eq)
        ends = (run[..., None, :] - self._offsets).clamp_(0, 1)  # [N, *S, O, R]: the new n-gram ends at j
        new_match = torch.minimum(state.spare, ends).amax(-1).clamp_(min=0)  # [N, *S, O]: 1 where spare > 0
        return MetricState(state.length + 1, run=run, spare=state.spare - ends, matches=state.matches + new_match)

    # ------------------------------------------------------------------------------------------------------------
    # Scores
    # ------------------------------------------------------------------------------------------------------------

    def score(self, state: MetricState) -> torch.Tensor:
        """The metric of each hypothesis of `state` [N, *S], as a float64 tensor [N, *S]."""
        extra = state.length.dim() - 1
        ref_len = self._view(self.ref_len, extra)
        if not self.orders:
            return _rouge_l(state.lcs[..., -1], state.length, ref_len)
        if self.metric == "bleu":
            return _bleu(state.matches, state.length, ref_len)
        return _rouge_n(state.matches[..., 0], state.length, ref_len, self.orders[0])

    def score_counts(self, matches: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """The n-gram metric from clipped matches [N, *S, O] and hypothesis lengths [N, *S] (float64 [N, *S]).

        For hypotheses whose statistics were completed outside a `MetricState` (an oracle that appends a reference
        suffix in closed form).
        """
        if not self.orders:
            raise ValueError(f"score_counts needs an n-gram metric; {self.metric!r} has no n-gram counts.")
        ref_len = self._view(self.ref_len, length.dim() - 1)
        if self.metric == "bleu":
            return _bleu(matches, length, ref_len)
        return _rouge_n(matches[..., 0], length, ref_len, self.orders[0])

    def candidate_scores(self, state: MetricState, candidates: torch.Tensor) -> torch.Tensor:
        """The metric after appending each candidate token to each hypothesis, without building the new states.

        Args:
            state: A state [N, *S].
            candidates: [N, C] token ids, the same candidates for every hypothesis of a reference (entries < 0 are
                scored as a token that occurs nowhere in the reference).

        Returns:
            [N, *S, C] float64: the score of hypothesis + [candidates[n, c]] (equal to `score(append(...))` up to
            float rounding, about 1e-16).
        """
        n, r = self.ref.shape
        extra = state.length.dim() - 1
        candidates = candidates.to(self.device).long()
        c = candidates.shape[1]
        eq = (candidates[:, :, None] == self.ref[:, None, :]) & self.ref_valid[:, None, :]  # [N, C, R]
        length = state.length[..., None] + 1
        ref_len = self._view(self.ref_len, extra + 1)
        if not self.orders:
            # The new LCS is max(lcs[R], lcs[p] + 1) for the last reference position p holding the candidate
            # (the row is non-decreasing).
            pos = torch.arange(1, r + 1, device=self.device)
            last = (eq * pos).amax(-1) - 1  # [N, C], -1 if the candidate is not in the reference
            idx = self._view(last.clamp(min=0), extra).expand(*state.shape, c)
            grown = torch.where(self._view(last, extra) >= 0, state.lcs.gather(-1, idx) + 1, 0)
            return _rouge_l(torch.maximum(state.lcs[..., -1:], grown), length, ref_len)
        # fresh[..., o, j]: appending r[j] makes a clipped match of order n = orders[o] (j: the n-gram's first
        # occurrence; at most one j per order and candidate).
        grow = (_shift(state.run, -1)[..., None, :] - (self._offsets - 1)).clamp_(0, 1)  # run before j >= n - 1
        fresh = state.spare.clamp(0, 1).mul_(grow)  # [N, *S, O, R]
        bits = fresh[..., 0, :].clone()
        for o in range(1, len(self.orders)):
            bits += fresh[..., o, :] * self._bit_values[o]
        # pattern[..., c]: the bit set of orders that gain a match by appending candidate c (exact small integers).
        rows = math.prod(state.shape[1:])
        with torch.autocast(self.device.type, enabled=False):  # small exact integers: keep float32
            pattern = torch.bmm(bits.reshape(n, rows, r).to(torch.float32), eq.transpose(1, 2).to(torch.float32))
        pattern = pattern.view(*state.shape, c).long()
        if self.metric != "bleu":
            return _rouge_n(state.matches[..., :1] + pattern, length, ref_len, self.orders[0])
        # The BLEU of each parent's 16 possible children (sum of log matches and number of orders with a match,
        # from the parent's by the gained orders), looked up per candidate.
        matches = state.matches
        log_m = matches.clamp(min=1).double().log()
        gain = torch.stack([(matches + 1).double().log() - log_m, (matches == 0).double()], -2)  # [N, *S, 2, O]
        table = (gain.reshape(-1, len(self.orders)) @ self._pattern_bits_t).view(*state.shape, 2, -1)
        sum_log = log_m.sum(-1, keepdim=True) + table[..., 0, :]  # [N, *S, 2^O]
        positive = (matches > 0).sum(-1, keepdim=True) + table[..., 1, :]
        values = _bleu_from_logs(sum_log, positive, length, ref_len)  # [N, *S, 2^O]
        return values.gather(-1, pattern)


def _with_first(x: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """[N, T + 1, ...]: `first` [N, ...] (default zeros) then x [N, T, ...]."""
    first = x.new_zeros(x.shape[0], *x.shape[2:]) if first is None else first.to(x.dtype)
    return torch.cat([first[:, None], x], 1)


def _bleu(matches: torch.Tensor, length: torch.Tensor, ref_len: torch.Tensor) -> torch.Tensor:
    """Sentence BLEU-4 ("exp" smoothing, effective order) from matches [..., 4] and lengths (broadcastable)."""
    sum_log = matches.clamp(min=1).double().log().sum(-1)
    return _bleu_from_logs(sum_log, (matches > 0).sum(-1), length, ref_len)


def _bleu_from_logs(
    sum_log: torch.Tensor, positive: torch.Tensor, length: torch.Tensor, ref_len: torch.Tensor
) -> torch.Tensor:
    """Sentence BLEU-4 from sum_n log max(m_n, 1), the number of orders with m_n > 0, and the lengths.

    With e = min(L, 4) and z = e - positive zero-match orders, the "exp" smoothing divides their precisions by
    2, 4, ..., 2^z: a factor 2^(z (z + 1) / 2) in all.
    """
    orders = torch.arange(1, 5, device=length.device)
    log_t = (length[..., None] - orders + 1).clamp(min=1).double().log().sum(-1)
    eff = length.clamp(max=4).double()
    zero = eff - positive
    log_p = sum_log - log_t - _LN2 * zero * (zero + 1) / 2
    log_bp = torch.where(length < ref_len, 1 - ref_len / length.double().clamp(min=1), 0.0)
    value = torch.exp(log_bp + log_p / eff.clamp(min=1))
    return torch.where(positive > 0, value, 0.0)


def _rouge_n(overlap: torch.Tensor, length: torch.Tensor, ref_len: torch.Tensor, n: int) -> torch.Tensor:
    """ROUGE-N F-measure from the clipped overlap and the lengths (broadcastable)."""
    hyp_ngrams = (length - n + 1).clamp(min=1)
    ref_ngrams = (ref_len - n + 1).clamp(min=1)
    return 2 * overlap.double() / (hyp_ngrams + ref_ngrams).double()


def _rouge_l(lcs: torch.Tensor, length: torch.Tensor, ref_len: torch.Tensor) -> torch.Tensor:
    """ROUGE-L F-measure from the LCS and the lengths (broadcastable)."""
    value = 2 * lcs.double() / (length + ref_len).double().clamp(min=1)
    return torch.where((length > 0) & (ref_len > 0), value, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Whole sequences
# ----------------------------------------------------------------------------------------------------------------


def score(
    metric: str,
    hyps: torch.Tensor,
    refs: torch.Tensor,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """The metric of each hypothesis against its reference, on token ids.

    Args:
        metric: One of `METRICS`.
        hyps: [B, T] hypothesis token ids.
        refs: [B, R] reference token ids.
        eos_token_id: Each row ends before its first EOS (None: no EOS).
        pad_token_id: Ignored, like -100.

    Returns:
        [B] float64 scores in [0, 1], on the device of `refs`.

    Raises:
        ValueError: On an unknown metric, tensors that are not 2-D with the same number of rows, or a negative id
            other than -100.
    """
    _check_metric(metric)
    hyps, refs = torch.as_tensor(hyps), torch.as_tensor(refs)
    if hyps.dim() != 2 or refs.dim() != 2 or hyps.shape[0] != refs.shape[0]:
        raise ValueError(
            f"hyps {tuple(hyps.shape)} and refs {tuple(refs.shape)}; accepted: [B, T] and [B, R] with the same B."
        )
    check_token_ids(hyps, "hyps")
    scorer = SentenceMetric(metric, refs, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    tokens, lengths = compact_ids(hyps.to(scorer.device), eos_token_id, pad_token_id)
    states = scorer.prefix_states(tokens[:, : int(lengths.max()) if lengths.numel() else 0])
    final = states.map(lambda x: x[torch.arange(x.shape[0], device=x.device), lengths])
    return scorer.score(final)


def _one(metric: str, hyp_ids, ref_ids, eos_token_id: int | None, pad_token_id: int | None) -> float:
    hyp, ref = torch.as_tensor(hyp_ids, dtype=torch.long), torch.as_tensor(ref_ids, dtype=torch.long)
    if hyp.dim() != 1 or ref.dim() != 1:
        raise ValueError(
            f"hyp_ids {tuple(hyp.shape)} and ref_ids {tuple(ref.shape)}; accepted: two 1-D sequences of token ids."
        )
    value = score(metric, hyp[None], ref[None], eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return float(value[0])


def sentence_bleu(
    hyp_ids: Sequence[int] | torch.Tensor,
    ref_ids: Sequence[int] | torch.Tensor,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> float:
    """Sentence BLEU-4 of one hypothesis against one reference, on token ids (see the module docstring).

    Equals `sacrebleu.sentence_bleu(h, [r], tokenize="none").score / 100` (smooth_method="exp", effective order)
    with id i written as the word "w{i}".
    """
    return _one("bleu", hyp_ids, ref_ids, eos_token_id, pad_token_id)


def rouge_n(
    hyp_ids: Sequence[int] | torch.Tensor,
    ref_ids: Sequence[int] | torch.Tensor,
    n: int = 1,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> float:
    """ROUGE-N F-measure (n = 1 or 2) of one hypothesis against one reference, on token ids.

    Raises:
        ValueError: If n is not 1 or 2.
    """
    if n not in (1, 2) or isinstance(n, bool):
        raise ValueError(f"n = {n!r}; accepted: 1 or 2.")
    return _one(f"rouge{n}", hyp_ids, ref_ids, eos_token_id, pad_token_id)


def rouge_l(
    hyp_ids: Sequence[int] | torch.Tensor,
    ref_ids: Sequence[int] | torch.Tensor,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> float:
    """ROUGE-L F-measure of one hypothesis against one reference, on token ids."""
    return _one("rougeL", hyp_ids, ref_ids, eos_token_id, pad_token_id)
