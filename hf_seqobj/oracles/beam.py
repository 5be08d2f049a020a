"""Dynamic oracles for BLEU and ROUGE-N by beam search over whole completions (docs/oracles.md).

Given the gold output y* (its tokens before EOS, length R) and a prefix p = y_<t of a roll-in, the oracle looks for
the completion z that maximises metric(p + z, y*) and returns its first token as the label of position t. The
metric is "bleu", "rouge1" or "rouge2" of `hf_seqobj.rewards` (ROUGE-L and ROUGE-1 also have exact oracles, in
:mod:`hf_seqobj.oracles.exact`), computed on token ids with incremental n-gram statistics.

Whole outputs, aligned (:mod:`hf_seqobj.oracles.align`)
------------------------------------------------------
- Every hypothesis the search scores is a finished output. A search node is p + u (u: up to `lookahead` tokens,
  each a distinct reference token), and it is scored as p + u + y*[j : j + L]: the reference suffix after the
  edit-distance alignment j = j(p + u) (SEARNN's best-suffix reference policy, aligned as in Optimal Completion
  Distillation), with L = R - j tokens, or, under the stop rule "reference_length", L = min(R - j, R - |p + u|).
  No node is a cut-off window scored as if finished, so two labels do not tie because both windows were cut.
- The search also scores, from the prefix itself: stopping now (metric(p)) and every reference tail
  p + y*[i : i + L_i] (i = 0..R, L_i as above), so the label is never worse than the best such tail.
- Search: depth 1 scores every candidate token a after p (as p + a + aligned suffix); the `beam_size` (k) best
  form the beam; each later depth expands every beam node by every candidate, scores the children the same way
  and keeps the k best, until `lookahead` (h) tokens. The label is the first token of the best whole completion
  found. With h = 0 (the default) only stopping and the reference tails are scored: SEARNN's best-suffix reference
  policy, exact over that space; the beam size matters from h = 2 on.
- Stop rule "reference_length" (the default for BLEU): no completion makes the output longer than R tokens, and
  once |p| >= R the label is EOS (for `__call__` and `next_token` alike), except that a word the prefix has begun
  as the aligned reference has is finished first (with `continuation_ids`; :func:`~.align.finish_word`). "metric":
  no cap.
- Ties (scores within `TIE_TOLERANCE`, float rounding only) go to the aligned reference token y*[j(p)] (EOS once
  j(p) = R), then EOS, then the candidate nearest after j(p) in reference order.
- With `continuation_ids`, a candidate that continues a word may only be the token y*[j] at the node's aligned
  position j (whole words).

With k >= (distinct reference tokens)^(h - 1) the beam keeps every node and the label is exact over this search
space (tested against brute force over it). With h <= 2, following the labels greedily never ends below the best
reference tail of the starting prefix: the completion that justified a label is still in the next search.

Cost: one `__call__` on [B, T] runs B T searches at once, h depths of tensor work O(B T k R (R + O R)) (the
alignment rows and the suffix statistics), on the device of the inputs; Python loops run over the depths, the
n-gram orders and the roll-in positions (to build the prefixes' alignment rows).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.oracles.align import (
    aligned_position,
    check_int,
    check_oracle_ids,
    check_search_inputs,
    check_stop,
    edit_distance_append,
    edit_distance_rows,
    finish_word,
    last_tokens,
    open_prefixes,
    stop_tokens,
)
from hf_seqobj.rewards import MetricState, SentenceMetric, check_token_ids


__all__ = ["BEAM_METRICS", "BeamOracle", "BeamSearchResult", "TIE_TOLERANCE"]

BEAM_METRICS = ("bleu", "rouge1", "rouge2")
"""The metrics the beam oracle searches for."""

TIE_TOLERANCE = 1e-9
"""Scores this close to the best one count as ties (float rounding only: distinct scores of short sentences differ
by far more)."""

_NEG = float("-inf")


class BeamSearchResult(NamedTuple):
    """What `BeamOracle.search` found, per labelled position ([B, T] for every position, [B] for one per row).

    Attributes:
        labels: Oracle token ids; -100 where the prefix already holds EOS, -100 or padding.
        scores: float64 score of the best whole completion starting with the label (NaN where the label is -100).
        gold_scores: float64 score of the prefix finished with the aligned reference suffix (NaN where unlabelled).
        completions: With `return_completions`, the best whole completion starting with the label, ending with EOS:
            [..., W] token ids, -100 behind it and at unlabelled positions; else None.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    gold_scores: torch.Tensor
    completions: torch.Tensor | None = None


class SearchLabels:
    """`__call__` and `next_token` of an oracle whose `search(prefix_ids, reference_ids, prefix_lengths)` returns a
    :class:`BeamSearchResult` (the exact ROUGE oracles, :class:`~hf_seqobj.oracles.units.MetricUnitsOracle`)."""

    supports_rows = True
    """:meth:`next_token` takes `rows`."""

    def __call__(self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] labels: at t the oracle's token after prefix_ids[b, :t]; -100 once the prefix holds EOS, -100 or
        padding."""
        return self.search(prefix_ids, reference_ids).labels

    def next_token(
        self,
        prefix_ids: torch.Tensor,
        prefix_lengths: torch.Tensor,
        reference_ids: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B] (or [b] with `rows`): the label after prefix_ids[b, :prefix_lengths[b]]."""
        labels = self.search(prefix_ids, reference_ids, prefix_lengths).labels
        return labels if rows is None else labels[rows]


def _top(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of x (scores in [0, 1] or -inf) along the last dim, best first, and their indices.

    Equal entries keep their order (the earlier index first): the scores are ranked by an int64 key that holds the
    score (to about 1e-15) and then the reversed index, so the ranking is the same on every device.
    """
    n = x.shape[-1]
    index_bits = max(n - 1, 1).bit_length()
    scale = float(2 ** (61 - index_bits))
    reverse = torch.arange(n - 1, -1, -1, device=x.device)
    key = (x.clamp(min=-1.0) * scale).round_().long().mul_(2**index_bits).add_(reverse)
    indices = key.topk(k, dim=-1).indices
    return x.gather(-1, indices), indices


class _References:
    """Per-batch constants of a search: the scorer, candidate slots, suffix n-gram counts and the word rule."""

    def __init__(self, scorer: SentenceMetric, continuation: torch.Tensor | None, cap: bool) -> None:
        self.scorer, self.cap = scorer, cap
        ref, self.ref_len, valid = scorer.ref, scorer.ref_len, scorer.ref_valid
        self.ref = ref
        n, r = ref.shape
        self.r = r
        dev = ref.device
        self.first_pos = (ref[:, :, None] == ref[:, None, :]).to(torch.uint8).argmax(1)  # [N, R]
        self.cand_ok = (self.first_pos == torch.arange(r, device=dev)) & valid  # [N, R]: slot j holds a candidate
        self.cand_tok = torch.where(self.cand_ok, ref, -1)
        self.all_tok = torch.cat([self.cand_tok, torch.full_like(self.cand_tok[:, :1], -1)], 1)  # EOS set later
        self.slot_eq = (ref[:, :, None] == ref[:, None, :]) & valid[:, None, :] & self.cand_ok[:, :, None]
        if continuation is None:
            self.continues = torch.zeros_like(valid)
        else:
            continuation = continuation.to(dev)
            inside = (ref >= 0) & (ref < continuation.shape[0])
            self.continues = continuation[ref.clamp(0, max(continuation.shape[0] - 1, 0))] & inside & valid
        # counts[:, o, e, g]: order-o n-grams of the reference ending before e whose first occurrence ends at g.
        first = scorer.first_index  # [N, O, R]
        self.first_index = first
        self.order_values = torch.tensor(scorer.orders, device=dev, dtype=torch.long)  # [O]
        onehot = (first[..., None] == torch.arange(r, device=dev)).to(torch.int16)  # [N, O, R(e), R(g)]
        self.counts = torch.nn.functional.pad(onehot.cumsum(2, dtype=torch.int16), (0, 0, 1, 0))  # [N, O, R + 1, R]
        # same[q][:, j, e]: ref[j .. j + q] == ref[e - q .. e], all inside the reference (j = 0..R).
        eq = torch.nn.functional.pad(
            (ref[:, :, None] == ref[:, None, :]) & valid[:, :, None] & valid[:, None, :], (0, 0, 0, 1)
        )  # [N, R + 1, R]
        self.same = [eq]
        for q in range(1, max(scorer.max_order - 1, 1)):
            shifted_start = torch.nn.functional.pad(eq[:, q:], (0, 0, 0, q))  # eq[j + q, e]
            previous = torch.nn.functional.pad(self.same[-1][:, :, :-1], (1, 0))  # same[q - 1][j, e - 1]
            self.same.append(previous & shifted_start)

    def view(self, x: torch.Tensor, extra: int) -> torch.Tensor:
        return x.view(x.shape[0], *[1] * extra, *x.shape[1:])

    def gather_ref(self, index: torch.Tensor) -> torch.Tensor:
        """ref[n, index[n, ...]] for index [N, *S] (clamped into the reference's width)."""
        flat = index.reshape(index.shape[0], -1).clamp(0, self.r - 1)
        return self.ref.gather(1, flat).view(index.shape)

    def _counts_at(self, e: torch.Tensor) -> torch.Tensor:
        """counts at e [N, *S, O] (one index per order): [N, *S, O, R]."""
        n, o = e.shape[0], e.shape[-1]
        rows = torch.arange(n, device=e.device).view(n, 1, 1)
        orders = torch.arange(o, device=e.device).view(1, 1, o)
        return self.counts[rows, orders, e.reshape(n, -1, o)].view(*e.shape, self.r)

    def complete(self, state: MetricState, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the hypotheses of `state` [N, *S] finished with the reference suffixes from `j` [N, *S, X].

        The suffix's n-grams are counted in closed form, without building states: those inside the suffix from
        the reference's prefix sums, the few that cross the junction (order n, ending q < n - 1 tokens into the
        suffix) from the hypothesis's common-suffix runs with the reference; clipping against what the
        hypothesis has left (`spare`) is exact. Each hypothesis is finished X ways (one per entry of `j`).

        Returns:
            (scores float64 [N, *S, X], L [N, *S, X] the suffixes' lengths: R - j, capped at R - length under the
            cap).
        """
        extra = state.length.dim()  # dims of [*S] plus the X dim
        ref_len = self.view(self.ref_len, extra)
        length = state.length[..., None]
        suffix = (ref_len - j).clamp(min=0)
        if self.cap:
            suffix = torch.minimum(suffix, (ref_len - length).clamp(min=0))
        end = j + suffix
        inner_start = torch.minimum(j[..., None] + self.order_values - 1, end[..., None])  # [N, *S, X, O]
        count = self._counts_at(end[..., None].expand(inner_start.shape)) - self._counts_at(inner_start)
        n = j.shape[0]
        flat_j = j.reshape(n, -1)
        rows = torch.arange(n, device=j.device)[:, None]
        for o, order in enumerate(self.scorer.orders):
            for q in range(order - 1):
                # The n-gram of the hypothesis's last order - 1 - q tokens and ref[j .. j + q].
                same = self.same[q][rows, flat_j].view(*j.shape, self.r)
                before = torch.nn.functional.pad(state.run, (q + 1, 0))[..., : self.r]  # run[e - q - 1]
                match = same & (before >= order - 1 - q).unsqueeze(-2) & (suffix > q)[..., None]
                found = match.any(-1)
                at = match.to(torch.uint8).argmax(-1)  # [N, *S, X]
                g = self.first_index[:, o].gather(1, at.reshape(n, -1)).view(at.shape)
                hit = (torch.arange(self.r, device=g.device) == g[..., None]) & found[..., None]
                count[..., o, :] += hit.to(count.dtype)
        spare = state.spare.clamp(min=0).unsqueeze(-3)  # [N, *S, 1, O, R]
        gained = torch.minimum(count, spare).sum(-1, dtype=torch.long)
        return self.scorer.score_counts(state.matches[..., None, :] + gained, length + suffix), suffix

    def allowed(self, aligned: torch.Tensor, extra: int) -> torch.Tensor:
        """[N, *S, R]: the candidate slots that may follow nodes aligned at `aligned` [N, *S] (the word rule)."""
        at_aligned = self.gather_ref(aligned)  # [N, *S]
        within = aligned < self.view(self.ref_len, extra)
        same = (self.view(self.cand_tok, extra) == at_aligned[..., None]) & within[..., None]
        return self.view(self.cand_ok, extra) & (~self.view(self.continues, extra) | same)

    def children(self, state: MetricState, ed: torch.Tensor) -> tuple[MetricState, torch.Tensor]:
        """Every candidate appended to every node [N, *S]: states [N, *S, R] and alignment rows [N, *S, R, R + 1]."""
        extra = state.length.dim() - 1
        shape = (*state.shape, self.r)
        expanded = state.map(lambda x: x.unsqueeze(extra + 1).expand(*shape, *x.shape[extra + 1 :]))
        tokens = self.view(self.cand_tok, extra).expand(shape)
        child_state = self.scorer.append(expanded, tokens)
        child_ed = edit_distance_append(ed.unsqueeze(-2), self.view(self.slot_eq, extra))
        return child_state, child_ed


class BeamOracle:
    """Dynamic oracle for sentence BLEU / ROUGE-N: beam search over whole completions (see the module docs).

    Args:
        metric: One of `BEAM_METRICS`: "bleu", "rouge1" or "rouge2".
        beam_size: k, the number of nodes kept per depth (>= 1).
        lookahead: h, the most tokens searched before the aligned reference suffix finishes a completion (>= 1).
        eos_token_id: The EOS id: ends references and roll-ins, and is the label that stops.
        pad_token_id: An extra padding id besides -100 (None: only -100).
        stop: "reference_length" (EOS once the output has the reference's length; no completion longer) or
            "metric" (the sentence metric alone; see :mod:`hf_seqobj.oracles.align`).
        continuation_ids: None, or a bool tensor over the vocabulary, True for ids that continue a word (from
            :func:`hf_seqobj.oracles.align.continuation_mask`): such an id is a label only where the aligned
            reference continues with it.

    Raises:
        ValueError: On an unknown metric or stop rule, beam_size or lookahead < 1, or a special id that is not an
            int >= 0.
    """

    supports_rows = True
    """:meth:`next_token` takes `rows` (a roll-in's mixing asks for the rows that draw the oracle only)."""

    def __init__(
        self,
        metric: str = "bleu",
        beam_size: int = 5,
        lookahead: int = 0,
        *,
        eos_token_id: int,
        pad_token_id: int | None = None,
        stop: str = "reference_length",
        continuation_ids: torch.Tensor | None = None,
    ) -> None:
        if metric not in BEAM_METRICS:
            raise ValueError(
                f"metric = {metric!r}; accepted by the beam oracle: {', '.join(repr(m) for m in BEAM_METRICS)} "
                "(ROUGE-L has an exact oracle: hf_seqobj.oracles.ExactRougeOracle)."
            )
        check_oracle_ids(eos_token_id, pad_token_id, continuation_ids)
        self.metric = metric
        self.beam_size = check_int("beam_size", beam_size, 1)
        self.lookahead = check_int("lookahead", lookahead, 0)
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.stop = check_stop(stop)
        self.continuation_ids = continuation_ids

    def __repr__(self) -> str:
        return (
            f"BeamOracle(metric={self.metric!r}, beam_size={self.beam_size}, lookahead={self.lookahead}, "
            f"eos_token_id={self.eos_token_id}, pad_token_id={self.pad_token_id}, stop={self.stop!r})"
        )

    def __call__(self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """Oracle labels for every position of a batch of roll-ins (DAgger relabelling).

        Args:
            prefix_ids: [B, T] roll-in token ids, aligned with output positions 0..T-1.
            reference_ids: [B, R] gold output ids (-100, padding and everything from the first EOS on are ignored).

        Returns:
            [B, T] LongTensor on the device of `prefix_ids`: at position t the first token of the best completion
            found for prefix_ids[b, :t]; -100 where prefix_ids[b, :t] holds EOS, -100 or padding.

        Raises:
            ValueError: On tensors that are not [B, T] and [B, R] with the same B, or a negative id other than -100.
        """
        return self.search(prefix_ids, reference_ids).labels

    def next_token(
        self,
        prefix_ids: torch.Tensor,
        prefix_lengths: torch.Tensor,
        reference_ids: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The oracle label at position prefix_lengths[b] only: one search per row (for mixing into a roll-in).

        A roll-in asks at every step, with the same `reference_ids` tensor and a prefix one token longer: the oracle
        then keeps the references' constants and each row's statistics and alignment row after its prefix from the
        previous call and appends the new tokens, instead of building them again (the labels are the same).

        Args:
            prefix_ids: [B, T] roll-in token ids; only prefix_ids[b, :prefix_lengths[b]] is read.
            prefix_lengths: [B] integers in [0, T].
            reference_ids: [B, R] gold output ids.
            rows: [b] indices of the rows to search (the others are not searched); None: all rows.

        Returns:
            [B] (or [b] with `rows`) LongTensor: `self(prefix_ids, reference_ids)[b, prefix_lengths[b]]` (also
            defined for length T).

        Raises:
            ValueError: As `__call__`, or on `prefix_lengths` that is not [B] integers in [0, T].
        """
        prefix_ids, reference_ids = torch.as_tensor(prefix_ids), torch.as_tensor(reference_ids)
        lengths = torch.as_tensor(prefix_lengths, device=prefix_ids.device)
        session = self._session(prefix_ids, lengths, reference_ids)
        if session is None:
            labels = self.search(prefix_ids, reference_ids, lengths).labels
            return labels if rows is None else labels[rows]
        refs, state, ed, open_prefix = session
        picked = torch.arange(prefix_ids.shape[0], device=prefix_ids.device) if rows is None else rows
        if picked.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=prefix_ids.device)
        sub = _References(refs.scorer.select(picked), self.continuation_ids, refs.cap)
        last = last_tokens(prefix_ids.long()[picked], lengths.long()[picked])
        result = self._search(sub, state.map(lambda x: x[picked][:, None]), ed[picked][:, None], False, last)
        return torch.where(open_prefix[picked], result.labels[:, 0], IGNORE_INDEX)

    def _references(self, reference_ids: torch.Tensor, device: torch.device) -> _References:
        scorer = SentenceMetric(
            self.metric, reference_ids.to(device), eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id
        )
        return _References(scorer, self.continuation_ids, self.stop == "reference_length")

    def _session(self, prefix_ids: torch.Tensor, lengths: torch.Tensor, reference_ids: torch.Tensor):
        """`(references, states [B], alignment rows [B, R + 1], prefix open [B])` for prefixes that are whole rows.

        Kept from the previous call when the references are the same tensor (unchanged) and the previous prefix
        starts this one; else built anew. None for calls with prefixes of different lengths (no session).
        """
        b, t = prefix_ids.shape if prefix_ids.dim() == 2 else (0, 0)
        if (
            prefix_ids.dim() != 2
            or reference_ids.dim() != 2
            or reference_ids.shape[0] != b
            or b == 0
            or lengths.shape != (b,)
            or lengths.dtype.is_floating_point
            or bool((lengths != t).any())
        ):
            return None
        check_token_ids(prefix_ids, "prefix_ids")
        prefix = prefix_ids.long()
        cached = getattr(self, "_cached", None)
        if (
            cached is not None
            and cached["references"] is reference_ids
            and cached["version"] == reference_ids._version
            and cached["prefix"].shape[1] <= t
            and cached["prefix"].shape[0] == b
            and cached["prefix"].device == prefix.device
            and torch.equal(cached["prefix"], prefix[:, : cached["prefix"].shape[1]])
        ):
            refs, state, ed, open_prefix = cached["refs"], cached["state"], cached["ed"], cached["open"]
            scorer = refs.scorer
            for column in range(cached["prefix"].shape[1], t):
                token = prefix[:, column]
                state = scorer.append(state, token)
                ed = edit_distance_append(ed, (token[:, None] == scorer.ref) & scorer.ref_valid)
                open_prefix = open_prefix & ~stop_tokens(token, self.eos_token_id, self.pad_token_id)
        else:
            refs = self._references(reference_ids, prefix.device)
            state = refs.scorer.prefix_states(prefix).map(lambda x: x[:, t])
            ed = edit_distance_rows(prefix, refs.scorer.ref, refs.scorer.ref_valid)[:, t]
            open_prefix = ~stop_tokens(prefix, self.eos_token_id, self.pad_token_id).any(1)
        self._cached = {
            "references": reference_ids,
            "version": reference_ids._version,
            "prefix": prefix.clone(),
            "refs": refs,
            "state": state,
            "ed": ed,
            "open": open_prefix,
        }
        return refs, state, ed, open_prefix

    def search(
        self,
        prefix_ids: torch.Tensor,
        reference_ids: torch.Tensor,
        prefix_lengths: torch.Tensor | None = None,
        *,
        return_completions: bool = False,
    ) -> BeamSearchResult:
        """The searches behind `__call__` (prefix_lengths None: every position) and `next_token`, with scores.

        Args:
            prefix_ids: [B, T] roll-in token ids.
            reference_ids: [B, R] gold output ids.
            prefix_lengths: None, or [B] integers in [0, T]: search only at these positions.
            return_completions: Also return the best whole completion starting with each label.

        Returns:
            A `BeamSearchResult` whose tensors are [B, T] (or [B] with `prefix_lengths`), on the device of
            `prefix_ids`.
        """
        prefix_ids, reference_ids, prefix_lengths = check_search_inputs(prefix_ids, reference_ids, prefix_lengths)
        dev = prefix_ids.device
        b, t = prefix_ids.shape
        prefix = prefix_ids.long()
        refs = self._references(reference_ids, dev)
        scorer = refs.scorer
        width = self.lookahead + scorer.ref.shape[1] + 1
        if b == 0 or (t == 0 and prefix_lengths is None):
            shape = (b,) if prefix_lengths is not None else (b, t)
            empty = torch.full(shape, float("nan"), dtype=torch.float64, device=dev)
            completions = torch.full((*shape, width), IGNORE_INDEX, device=dev) if return_completions else None
            return BeamSearchResult(torch.full(shape, IGNORE_INDEX, device=dev), empty, empty.clone(), completions)
        open_prefix = open_prefixes(prefix, self.eos_token_id, self.pad_token_id)  # [B, T + 1]
        states = scorer.prefix_states(prefix)  # [B, T + 1]
        eds = edit_distance_rows(prefix, scorer.ref, scorer.ref_valid)  # [B, T + 1, R + 1]
        if prefix_lengths is None:
            root = states.map(lambda x: x[:, :t])
            root_ed = eds[:, :t]
            labelled = open_prefix[:, :t]
        else:
            rows = torch.arange(b, device=dev)
            root = states.map(lambda x: x[rows, prefix_lengths][:, None])
            root_ed = eds[rows, prefix_lengths][:, None]
            labelled = open_prefix.gather(1, prefix_lengths[:, None])
        result = self._search(refs, root, root_ed, return_completions, last_tokens(prefix, prefix_lengths))
        nan = torch.full_like(result.scores, float("nan"))
        completions = result.completions
        if completions is not None:
            completions = torch.where(labelled[..., None], completions, IGNORE_INDEX)
        out = BeamSearchResult(
            torch.where(labelled, result.labels, IGNORE_INDEX),
            torch.where(labelled, result.scores, nan),
            torch.where(labelled, result.gold_scores, nan),
            completions,
        )
        if prefix_lengths is not None:
            out = BeamSearchResult(*(None if x is None else x[:, 0] for x in out))
        return out

    def _search(
        self, refs: _References, root: MetricState, root_ed: torch.Tensor, completions: bool, last: torch.Tensor
    ) -> BeamSearchResult:
        """Searches from the states `root` [B, M] with alignment rows `root_ed` [B, M, R + 1]; `last` [B, M]: the
        prefixes' last tokens (for the cap's whole words)."""
        scorer, ref, ref_len = refs.scorer, refs.ref, refs.ref_len
        b, m = root.shape
        r = refs.r
        dev = ref.device
        aligned = aligned_position(root_ed, ref_len)  # [B, M]
        length = root.length
        room = ref_len[:, None] - length  # [B, M]: tokens the cap still allows
        capped = refs.cap
        # Stopping now (the EOS slot, index R) and every reference tail p + ref[i : i + L_i].
        best = torch.full((b, m, r + 1), _NEG, dtype=torch.float64, device=dev)
        finish = scorer.score(root)
        best[..., r] = finish
        starts = torch.arange(r + 1, device=dev).expand(b, m, r + 1)
        tail_score, tail_len = refs.complete(root, starts)
        tail_slot = torch.where(
            tail_len > 0, refs.first_pos.gather(1, starts.clamp(max=r - 1).reshape(b, -1)).view(b, m, r + 1), r
        )
        word_ok = torch.cat([refs.allowed(aligned, 1), torch.ones_like(aligned[..., None], dtype=torch.bool)], -1)
        tail_ok = (starts <= ref_len[:, None, None]) & word_ok.gather(-1, tail_slot)
        best = best.scatter_reduce(-1, tail_slot, torch.where(tail_ok, tail_score, _NEG), "amax")
        gold_score = tail_score.gather(-1, aligned[..., None])[..., 0]
        track = None
        if completions:
            # Per first slot: the searched tokens (-100 padded), the suffix start and its length.
            track = {
                "hist": torch.full((b, m, r + 1, self.lookahead), IGNORE_INDEX, dtype=torch.long, device=dev),
                "start": torch.zeros(b, m, r + 1, dtype=torch.long, device=dev),
                "len": torch.zeros(b, m, r + 1, dtype=torch.long, device=dev),
            }
            tail_best = torch.full((b, m, r + 1), _NEG, dtype=torch.float64, device=dev)
            tail_best[..., r] = finish
            masked = torch.where(tail_ok, tail_score, _NEG)
            for i in range(r + 1):  # earliest tail first: a later one replaces it only when strictly better
                slot = tail_slot[..., i : i + 1]
                better = masked[..., i : i + 1] > tail_best.gather(-1, slot)
                tail_best = tail_best.scatter(
                    -1, slot, torch.where(better, masked[..., i : i + 1], tail_best.gather(-1, slot))
                )
                track["start"] = track["start"].scatter(
                    -1, slot, torch.where(better, starts[..., i : i + 1], track["start"].gather(-1, slot))
                )
                track["len"] = track["len"].scatter(
                    -1, slot, torch.where(better, tail_len[..., i : i + 1], track["len"].gather(-1, slot))
                )
        if self.lookahead == 0:
            result = self._label(refs, best, aligned, room, track, gold_score)
            return self._whole_words(result, refs, length, aligned, last)
        # Depth 1: every candidate after the prefix.
        child, child_ed = refs.children(root, root_ed)  # [B, M, R]
        child_aligned = aligned_position(child_ed, ref_len)
        score1, len1 = (x[..., 0] for x in refs.complete(child, child_aligned[..., None]))
        ok = refs.allowed(aligned, 1)
        if capped:
            ok = ok & (room > 0)[..., None]
        score1 = torch.where(ok, score1, _NEG)
        if track is not None:
            better = score1 > best[..., :r]
            hist = track["hist"][..., :r, :]
            new_hist = torch.full_like(hist, IGNORE_INDEX)
            new_hist[..., 0] = refs.view(refs.cand_tok, 1).expand(b, m, r)
            track["hist"][..., :r, :] = torch.where(better[..., None], new_hist, hist)
            track["start"][..., :r] = torch.where(better, child_aligned, track["start"][..., :r])
            track["len"][..., :r] = torch.where(better, len1, track["len"][..., :r])
        best[..., :r] = torch.maximum(best[..., :r], score1)
        k = min(self.beam_size, r)
        if self.lookahead > 1 and k > 0:
            beam_score, first = _top(score1, k)  # [B, M, k]
            alive = beam_score > _NEG
            rows_i = torch.arange(b, device=dev)[:, None, None]
            cols_i = torch.arange(m, device=dev)[None, :, None]
            beams = child.map(lambda x: x[rows_i, cols_i, first])
            beam_ed = child_ed[rows_i, cols_i, first]
            beam_aligned = child_aligned[rows_i, cols_i, first]
            history = refs.view(refs.cand_tok, 1).expand(b, m, r).gather(-1, first)[..., None]
            for depth in range(2, self.lookahead + 1):
                kids, kids_ed = refs.children(beams, beam_ed)  # [B, M, k, R]
                kids_aligned = aligned_position(kids_ed, ref_len)
                scores, kids_len = (x[..., 0] for x in refs.complete(kids, kids_aligned[..., None]))
                ok = refs.allowed(beam_aligned, 2) & alive[..., None]
                if capped:
                    ok = ok & (beams.length < ref_len[:, None, None])[..., None]
                scores = torch.where(ok, scores, _NEG)
                node_best, node_slot = scores.max(-1)  # [B, M, k]
                if track is not None:
                    pick = node_slot[..., None]
                    kid_tok = refs.view(refs.cand_tok, 1).expand(b, m, r).gather(-1, node_slot)
                    self._track(
                        track,
                        best,
                        first,
                        node_best,
                        torch.cat([history, kid_tok[..., None]], -1),
                        kids_aligned.gather(-1, pick)[..., 0],
                        kids_len.gather(-1, pick)[..., 0],
                        r,
                    )
                best = best.scatter_reduce(-1, first, node_best, "amax")
                if depth == self.lookahead:
                    break
                beam_score, index = _top(scores.view(b, m, k * r), k)
                parent, slot = index // r, index % r
                alive = beam_score > _NEG
                first = first.gather(2, parent)
                beams = kids.map(lambda x, p=parent, s=slot: x[rows_i, cols_i, p, s])
                beam_ed = kids_ed[rows_i, cols_i, parent, slot]
                beam_aligned = kids_aligned[rows_i, cols_i, parent, slot]
                token = refs.view(refs.cand_tok, 1).expand(b, m, r).gather(-1, slot)
                history = torch.cat([history.gather(2, parent[..., None].expand_as(history)), token[..., None]], -1)
        result = self._label(refs, best, aligned, room, track, gold_score)
        return self._whole_words(result, refs, length, aligned, last)

    def _whole_words(self, result: BeamSearchResult, refs: _References, length, aligned, last) -> BeamSearchResult:
        """`result` with no word cut at the cap (:func:`~.align.finish_word`; with `continuation_ids` only)."""
        if not refs.cap or self.continuation_ids is None:
            return result
        labels = finish_word(result.labels, length, aligned, last, refs.ref, refs.ref_len, refs.continues)
        return result._replace(labels=labels)

    def _label(self, refs: _References, best, aligned, room, track, gold_score) -> BeamSearchResult:
        """The label: the best first token; ties -> the aligned reference token, then EOS, then reference order
        from the aligned position on; EOS wherever the cap is reached."""
        b, m, _ = best.shape
        r, ref, ref_len, dev = refs.r, refs.ref, refs.ref_len, refs.ref.device
        all_tok = refs.all_tok.clone()
        all_tok[:, r] = self.eos_token_id
        optimal = best >= best.amax(-1, keepdim=True) - TIE_TOLERANCE
        slots = torch.arange(r + 1, device=dev)
        rank = (slots - aligned[..., None]) % max(r, 1) + 2  # [B, M, R + 1]
        rank = torch.where(slots == r, 1, rank)
        gold_slot = torch.where(
            aligned < ref_len[:, None], refs.first_pos.gather(1, aligned.clamp(max=r - 1)), r
        )  # [B, M]
        rank = rank.scatter(-1, gold_slot[..., None], 0)
        choice = torch.where(optimal, rank, r + 4).argmin(-1, keepdim=True)  # [B, M, 1]
        if refs.cap:
            choice = torch.where((room <= 0)[..., None], r, choice)
        labels = all_tok.gather(1, choice.view(b, -1)).view(b, m)
        scores = best.gather(-1, choice)[..., 0]
        chosen = None
        if track is not None:
            chosen = self._completion(track, choice, ref, r)
        return BeamSearchResult(labels, scores, gold_score, chosen)

    @staticmethod
    def _track(track, best, first, value, history, start, length, r) -> None:
        """Keeps, per first slot, the completion (searched tokens, suffix start and length) of a better value."""
        b, m, k = first.shape
        h = track["hist"].shape[-1]
        for i in range(k):
            slot = first[..., i : i + 1]
            current = best.gather(-1, slot)
            better = value[..., i : i + 1] > current
            best.scatter_(-1, slot, torch.maximum(current, value[..., i : i + 1]))
            hist = torch.nn.functional.pad(history[..., i, :], (0, h - history.shape[-1]), value=IGNORE_INDEX)
            old = track["hist"].gather(2, slot[..., None].expand(b, m, 1, h))
            track["hist"].scatter_(
                2, slot[..., None].expand(b, m, 1, h), torch.where(better[..., None], hist[:, :, None], old)
            )
            for key, new in (("start", start[..., i : i + 1]), ("len", length[..., i : i + 1])):
                old_v = track[key].gather(-1, slot)
                track[key].scatter_(-1, slot, torch.where(better, new, old_v))

    def _completion(self, track, choice, ref, r) -> torch.Tensor:
        """The chosen whole completions: searched tokens, the reference suffix, EOS ([B, M, h + R + 1])."""
        b, m, _ = choice.shape
        h = self.lookahead
        hist = track["hist"].gather(2, choice[..., None].expand(b, m, 1, h))[:, :, 0]  # [B, M, h]
        start = track["start"].gather(-1, choice)[..., 0]
        length = track["len"].gather(-1, choice)[..., 0]
        steps = torch.arange(r, device=ref.device)
        suffix_at = (start[..., None] + steps).clamp(max=max(r - 1, 0))
        suffix = ref.gather(1, suffix_at.reshape(b, -1)).view(b, m, r) if r else suffix_at
        suffix = torch.where(steps < length[..., None], suffix, IGNORE_INDEX)
        tokens = torch.cat([hist, suffix, torch.full_like(suffix[..., :1], IGNORE_INDEX)], -1)
        # Compact: the real tokens to the front, then EOS.
        keep = tokens != IGNORE_INDEX
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices
        tokens = tokens.gather(-1, order)
        count = keep.sum(-1, keepdim=True)
        positions = torch.arange(tokens.shape[-1], device=ref.device)
        tokens = torch.where(positions < count, tokens, IGNORE_INDEX)
        return tokens.scatter(-1, count, self.eos_token_id)
