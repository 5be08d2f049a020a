"""Exact dynamic oracles for ROUGE-L F and ROUGE-1 F under a stop rule (docs/oracles.md).

For a prefix p (length l) and the reference r (tokens before EOS, length R), these oracles return the first token
of a completion z that maximises the metric of p + z over EVERY completion allowed by the stop rule
(:mod:`hf_seqobj.oracles.align`: under "reference_length", |p + z| <= max(R, l), and EOS once l >= R; under
"metric", any length). No search: the optimum has a closed form.

ROUGE-L F = 2 LCS(h, r) / (|h| + R)
----------------------------------
With c[i] = LCS(p, r[:i]) and m = |z|: LCS(p + z, r) = max_i (c[i] + LCS(z, r[i:])) <= max_i (c[i] + min(m,
R - i)), and z = r[i : i + m] (m <= R - i) reaches c[i] + m, so the best value is the maximum over i and m of
2 (c[i] + m) / (l + m + R) (m = 0: 2 c[R] / (l + R)). For fixed i that grows with m (l + R > c[i]), so
m_i = min(R - i, room) with room = R - l under the cap (unbounded otherwise): the best completion is a reference
tail r[i : i + m_i], and the label is r[i*] (EOS when stopping is best). One O(R) scan per position over the LCS
row of the prefix (O(T R) per row, as the LCS table itself).

ROUGE-1 F = 2 o / (|h| + R) (o: clipped unigram overlap)
-------------------------------------------------------
Appending a token the reference still has unmatched ("spare": its count in r minus its count so far, > 0) adds 1
to o and to |h|, which raises F (o < |h| + R); any other token lowers it. So the best completion appends
s = min(spare tokens, room) of them, and the label is a spare token, EOS when s = 0.

Ties and whole words
--------------------
Among optimal labels: the aligned reference token r[j(p)] first (edit-distance alignment, as in the beam oracle),
then EOS, then the candidate nearest after j(p) in reference order. With `continuation_ids` a word-continuing id
is a label only where the aligned reference continues with it (ROUGE-L: the tails that start with such an id
elsewhere are not considered; ROUGE-1: when only such ids are spare, the label is EOS), and under the cap a word
the prefix has begun as the aligned reference has is finished before EOS (:func:`~.align.finish_word`). The
exactness above holds without these rules.
"""

from __future__ import annotations

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.oracles.align import (
    aligned_position,
    check_oracle_ids,
    check_search_inputs,
    check_stop,
    edit_distance_rows,
    finish_word,
    last_tokens,
    open_prefixes,
)
from hf_seqobj.oracles.beam import TIE_TOLERANCE, BeamSearchResult, SearchLabels
from hf_seqobj.rewards import SentenceMetric


__all__ = ["EXACT_METRICS", "ExactRougeOracle"]

EXACT_METRICS = ("rougeL", "rouge1")
"""The metrics with an exact oracle here."""


class ExactRougeOracle(SearchLabels):
    """Exact dynamic oracle for ROUGE-L F or ROUGE-1 F on token ids (see the module docs).

    Args:
        metric: "rougeL" or "rouge1".
        eos_token_id: The EOS id.
        pad_token_id: An extra padding id besides -100 (None: only -100).
        stop: "reference_length" or "metric" (:mod:`hf_seqobj.oracles.align`).
        continuation_ids: None, or a bool tensor over the vocabulary, True for ids that continue a word.

    Raises:
        ValueError: On an unknown metric or stop rule, or a special id that is not an int >= 0.
    """

    def __init__(
        self,
        metric: str = "rougeL",
        *,
        eos_token_id: int,
        pad_token_id: int | None = None,
        stop: str = "reference_length",
        continuation_ids: torch.Tensor | None = None,
    ) -> None:
        if metric not in EXACT_METRICS:
            raise ValueError(f"metric = {metric!r}; accepted: {', '.join(repr(m) for m in EXACT_METRICS)}.")
        check_oracle_ids(eos_token_id, pad_token_id, continuation_ids)
        self.metric = metric
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.stop = check_stop(stop)
        self.continuation_ids = continuation_ids

    def __repr__(self) -> str:
        return (
            f"ExactRougeOracle(metric={self.metric!r}, eos_token_id={self.eos_token_id}, "
            f"pad_token_id={self.pad_token_id}, stop={self.stop!r})"
        )

    def search(
        self,
        prefix_ids: torch.Tensor,
        reference_ids: torch.Tensor,
        prefix_lengths: torch.Tensor | None = None,
        *,
        return_completions: bool = False,
    ) -> BeamSearchResult:
        """Labels with their exact best scores (as `BeamOracle.search`; completions end with EOS).

        Args:
            prefix_ids: [B, T] roll-in token ids.
            reference_ids: [B, R] gold output ids.
            prefix_lengths: None (every position) or [B] integers in [0, T].
            return_completions: Also return the best completion after each prefix ([..., R + 1], EOS-ended).
        """
        prefix_ids, reference_ids, prefix_lengths = check_search_inputs(prefix_ids, reference_ids, prefix_lengths)
        dev = prefix_ids.device
        b, t = prefix_ids.shape
        prefix = prefix_ids.long()
        scorer = SentenceMetric(
            self.metric, reference_ids.to(dev), eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id
        )
        ref, ref_len, valid = scorer.ref, scorer.ref_len, scorer.ref_valid
        r = ref.shape[1]
        open_prefix = open_prefixes(prefix, self.eos_token_id, self.pad_token_id)  # [B, T + 1]
        states = scorer.prefix_states(prefix)  # [B, T + 1]
        eds = edit_distance_rows(prefix, ref, valid)  # [B, T + 1, R + 1]
        if prefix_lengths is None:
            pick = slice(0, t)
            states = states.map(lambda x: x[:, pick])
            eds, labelled = eds[:, pick], open_prefix[:, pick]
        else:
            rows = torch.arange(b, device=dev)
            states = states.map(lambda x: x[rows, prefix_lengths][:, None])
            eds = eds[rows, prefix_lengths][:, None]
            labelled = open_prefix.gather(1, prefix_lengths[:, None])
        m = states.length.shape[1]
        length = states.length  # [B, M]
        aligned = aligned_position(eds, ref_len)  # [B, M]
        room = (ref_len[:, None] - length).clamp(min=0) if self.stop == "reference_length" else None
        at_aligned = ref.gather(1, aligned.clamp(max=r - 1))
        aligned_ok = aligned < ref_len[:, None]
        if self.continuation_ids is None:
            continues = torch.zeros_like(valid)
        else:
            vocab = self.continuation_ids.to(dev)
            inside = (ref >= 0) & (ref < vocab.shape[0])
            continues = vocab[ref.clamp(0, max(vocab.shape[0] - 1, 0))] & inside & valid
        word_ok = ~continues[:, None, :] | ((ref[:, None, :] == at_aligned[..., None]) & aligned_ok[..., None])
        positions = torch.arange(r, device=dev)
        order = (positions - aligned[..., None]) % max(r, 1)  # [B, M, R]: reference order from the aligned position
        ref_len3 = ref_len[:, None, None]
        if self.metric == "rougeL":
            lcs = states.lcs  # [B, M, R + 1]
            most = ref_len3 - positions  # R - i
            if room is not None:
                most = torch.minimum(most, room[..., None])
            tail_ok = (positions < ref_len3) & (most > 0) & word_ok  # [B, M, R]
            tail_len = most.clamp(min=0).expand(b, m, r)
            value = 2 * (lcs[..., :r] + tail_len).double() / (length[..., None] + tail_len + ref_len3).double()
            value = torch.where(tail_ok, value, float("-inf"))
            stop_value = torch.where(
                (length > 0) & (ref_len[:, None] > 0),
                2
                * lcs.gather(-1, ref_len[:, None, None].expand(b, m, 1))[..., 0].double()
                / (length + ref_len[:, None]).double().clamp(min=1),
                0.0,
            )
            gold = value.gather(-1, aligned.clamp(max=r - 1)[..., None])[..., 0]
            gold_score = torch.where(aligned_ok & (gold > float("-inf")), gold, stop_value)
            label_pos = self._choose(value, stop_value, aligned_ok, order)
            best = torch.where(label_pos >= 0, value.gather(-1, label_pos.clamp(min=0)[..., None])[..., 0], stop_value)
            labels = torch.where(label_pos >= 0, ref.gather(1, label_pos.clamp(min=0)), self.eos_token_id)
            completions = None
            if return_completions:
                start = label_pos.clamp(min=0)
                count = torch.where(label_pos >= 0, tail_len.gather(-1, start[..., None])[..., 0], 0)
                completions = self._tail_completions(ref, start, count)
        else:
            spare = states.spare[..., 0, :].clamp(min=0).long()  # [B, M, R] at first occurrences
            is_spare = spare > 0
            eligible = is_spare & word_ok
            total = spare.sum(-1)
            s = total if room is None else torch.minimum(total, room)
            if self.continuation_ids is not None:  # only whole-word spare tokens (or the aligned one) may start
                s = torch.where(eligible.any(-1), s, 0)
            overlap = states.matches[..., 0]
            best = 2 * (overlap + s).double() / (length + s + ref_len[:, None]).double().clamp(min=1)
            best = torch.where(length + s > 0, best, 0.0)
            # Preference: the aligned token, then the others in reference order from the aligned position on.
            key = order + 1
            key = torch.where((ref[:, None, :] == at_aligned[..., None]) & aligned_ok[..., None] & is_spare, 0, key)
            key = torch.where(is_spare, key, 3 * r + 2)
            label_pos = torch.where(s > 0, torch.where(eligible, key, 3 * r + 3).argmin(-1), -1)
            labels = torch.where(label_pos >= 0, ref.gather(1, label_pos.clamp(min=0)), self.eos_token_id)
            stop_value = torch.where(
                length > 0, 2 * overlap.double() / (length + ref_len[:, None]).double().clamp(min=1), 0.0
            )
            gold_score = best
            completions = None
            if return_completions:
                completions = self._spare_completions(spare, key, s, ref)
        if room is not None and self.continuation_ids is not None:  # under the cap, no word is cut
            labels = finish_word(labels, length, aligned, last_tokens(prefix, prefix_lengths), ref, ref_len, continues)
        nan = torch.full_like(best, float("nan"))
        out = BeamSearchResult(
            torch.where(labelled, labels, IGNORE_INDEX),
            torch.where(labelled, best, nan),
            torch.where(labelled, gold_score, nan),
            None if completions is None else torch.where(labelled[..., None], completions, IGNORE_INDEX),
        )
        if prefix_lengths is not None:
            out = BeamSearchResult(*(None if x is None else x[:, 0] for x in out))
        return out

    @staticmethod
    def _choose(value, stop_value, aligned_ok, order):
        """The best tail's start [B, M] (-1: EOS); ties -> the aligned start, EOS, then reference order."""
        top = torch.maximum(value.amax(-1), stop_value)
        optimal = value >= top[..., None] - TIE_TOLERANCE
        r = value.shape[-1]
        rank = torch.where((order == 0) & aligned_ok[..., None], 0, order + 2)  # order 0: the aligned start
        rank = torch.where(optimal, rank, 4 * r + 8)
        best_rank, best_pos = rank.min(-1)
        stop_optimal = stop_value >= top - TIE_TOLERANCE
        use_stop = stop_optimal & (best_rank > 0)  # EOS beats every tail but the aligned one
        return torch.where(use_stop | (best_rank >= 4 * r + 8), -1, best_pos)

    def _tail_completions(self, ref: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        b, m = start.shape
        r = ref.shape[1]
        steps = torch.arange(r + 1, device=ref.device)
        at = (start[..., None] + steps).clamp(max=r - 1)
        tokens = ref.gather(1, at.reshape(b, -1)).view(b, m, r + 1)
        tokens = torch.where(steps < count[..., None], tokens, IGNORE_INDEX)
        return tokens.scatter(-1, count[..., None], self.eos_token_id)

    def _spare_completions(self, spare, key, s, ref) -> torch.Tensor:
        """The spare tokens in preference order, each as often as it is spare, up to s tokens, then EOS."""
        b, m, r = spare.shape
        order = key.argsort(dim=-1, stable=True)  # [B, M, R]
        counts = spare.gather(-1, order)
        tokens = ref[:, None, :].expand(b, m, r).gather(-1, order)
        repeated = torch.full((b, m, r + 1), IGNORE_INDEX, dtype=torch.long, device=ref.device)
        ends = counts.cumsum(-1)
        for step in range(r):
            inside = step < s
            which = (ends <= step).sum(-1).clamp(max=r - 1)
            repeated[..., step] = torch.where(inside, tokens.gather(-1, which[..., None])[..., 0], IGNORE_INDEX)
        return repeated.scatter(-1, s.clamp(max=r)[..., None], self.eos_token_id)
