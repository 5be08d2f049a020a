"""Approximate dynamic oracles for BLEU and ROUGE by beam search over completions (docs/oracles.md).

Given the gold output y* and a prefix y_<t of a roll-in, the oracle looks for the completion z that maximises
metric(y_<t + z, y*) and returns its first token as the label of position t. The metric is one of
`hf_seqobj.rewards.METRICS`, computed on token ids with the incremental statistics of `hf_seqobj.rewards`.

The search (per position t of each row, all of them batched together)
---------------------------------------------------------------------
- The reference is the row's tokens before its first EOS, without -100 and padding. Candidate next tokens: the
  distinct reference tokens, plus EOS.
- A completion is at most `lookahead` (h) tokens: tokens z_1..z_j followed by EOS (j < h), or h tokens. EOS adds
  no token to the hypothesis, so a completion scores metric(y_<t + z_1..z_j, y*); "EOS at once" scores the prefix
  itself. Partial completions are scored the same way, so every node of the search is a scored completion.
- Beam search: step 1 scores every candidate after the prefix; the `beam_size` (k) best non-EOS ones form the beam;
  each later step scores every non-EOS candidate after every beam entry and keeps the k best children, until h
  tokens. Among equal scores the beam keeps the earlier entry (parent rank, then reference order): deterministic.
- The gold-suffix continuation y*[t:t + h] (followed by EOS if shorter; EOS alone once t >= |y*|) is scored as
  well, so the oracle never does worse than continuing with the gold suffix.
- The label is the first token of the best-scoring completion seen. Ties (scores within `TIE_TOLERANCE`, which only
  absorbs float rounding) are broken in this order: the gold next token y*[t] (EOS when t >= |y*|), then EOS, then
  the first candidate in reference order (order of first occurrence in y*).

With k >= (number of distinct reference tokens)^(h - 1) the beam keeps every partial completion, and the label is
exact for completions of at most h tokens (the tests check this against brute force). With k = h = 1 it is the
greedy one-step choice argmax_a metric(y_<t + a, y*) over the candidates, EOS scoring the prefix itself.

Cost: one `__call__` on [B, T] runs B T searches at once: h steps, each O(B T k R) tensor work for R reference
positions (times the number of n-gram orders), on the device of the inputs. Python loops run over the h steps only
(and, for "rougeL", over the T roll-in positions to build the prefixes' LCS rows). On one CPU thread, B = 32,
T = R = 20, h = 4 took about 11 / 25 / 55-80 ms per call for BLEU at k = 1 / 5 / 20 (ROUGE-L: 6 / 10 / 25-31 ms).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.rewards import METRICS, MetricState, SentenceMetric, check_token_ids


__all__ = ["BeamOracle", "BeamSearchResult", "TIE_TOLERANCE"]

TIE_TOLERANCE = 1e-9
"""Scores this close to the best one count as ties (float rounding only: distinct scores of short sentences differ
by far more)."""


class BeamSearchResult(NamedTuple):
    """What `BeamOracle.search` found, per labelled position ([B, T] for every position, [B] for one per row).

    Attributes:
        labels: Oracle token ids; -100 where the prefix already holds EOS, -100 or padding.
        scores: float64 score of the best completion starting with the label (NaN where the label is -100).
        gold_scores: float64 score of the gold-suffix continuation (NaN where the label is -100).
        completions: With `return_completions`, the best completion starting with the label: [..., h] token ids
            (ending with EOS if shorter than h), -100 behind it and at unlabelled positions; else None.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    gold_scores: torch.Tensor
    completions: torch.Tensor | None = None


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} = {value!r}; accepted: an int >= 1.")
    return value


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


class BeamOracle:
    """Approximate dynamic oracle for sentence BLEU / ROUGE: beam search over completions (see the module docs).

    Args:
        metric: One of `hf_seqobj.rewards.METRICS`: "bleu", "rouge1", "rouge2" or "rougeL".
        beam_size: k, the number of partial completions kept per step (>= 1).
        lookahead: h, the most tokens of a completion, EOS included (>= 1).
        eos_token_id: The EOS id: ends references and roll-ins, and is a candidate of every search.
        pad_token_id: An extra padding id besides -100 (None: only -100).

    Raises:
        ValueError: On an unknown metric, beam_size or lookahead < 1, or a special id that is not an int >= 0.
    """

    def __init__(
        self,
        metric: str = "bleu",
        beam_size: int = 5,
        lookahead: int = 4,
        *,
        eos_token_id: int,
        pad_token_id: int | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"Unknown metric {metric!r}; accepted metrics: {', '.join(repr(m) for m in METRICS)}.")
        if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int) or eos_token_id < 0:
            raise ValueError(f"eos_token_id = {eos_token_id!r}; accepted: an int token id >= 0.")
        if pad_token_id is not None and (
            isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0
        ):
            raise ValueError(f"pad_token_id = {pad_token_id!r}; accepted: None or an int token id >= 0.")
        self.metric = metric
        self.beam_size = _check_positive_int("beam_size", beam_size)
        self.lookahead = _check_positive_int("lookahead", lookahead)
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

    def __repr__(self) -> str:
        return (
            f"BeamOracle(metric={self.metric!r}, beam_size={self.beam_size}, lookahead={self.lookahead}, "
            f"eos_token_id={self.eos_token_id}, pad_token_id={self.pad_token_id})"
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

    supports_rows = True
    """:meth:`next_token` takes `rows` (a roll-in's mixing asks for the rows that draw the oracle only)."""

    def next_token(
        self,
        prefix_ids: torch.Tensor,
        prefix_lengths: torch.Tensor,
        reference_ids: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The oracle label at position prefix_lengths[b] only: one search per row (for mixing into a roll-in).

        A roll-in asks at every step, with the same `reference_ids` tensor and a prefix one token longer: the oracle
        then keeps the scorer of the references and each row's metric state after its prefix from the previous call
        and appends the new tokens, instead of building both again from the whole prefix (the labels are the same).

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
        scorer, state, open_prefix = session
        picked = torch.arange(prefix_ids.shape[0], device=prefix_ids.device) if rows is None else rows
        if picked.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=prefix_ids.device)
        root = state.map(lambda x: x[picked][:, None])
        result = self._search(scorer.select(picked), root, lengths[picked][:, None], False)
        return torch.where(open_prefix[picked], result.labels[:, 0], IGNORE_INDEX)

    def _stops(self, tokens: torch.Tensor) -> torch.Tensor:
        stop = (tokens == self.eos_token_id) | (tokens == IGNORE_INDEX)
        if self.pad_token_id is not None:
            stop |= tokens == self.pad_token_id
        return stop

    def _session(self, prefix_ids: torch.Tensor, lengths: torch.Tensor, reference_ids: torch.Tensor):
        """`(scorer, states after each prefix [B], prefix open [B])` for a call whose prefixes are whole rows.

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
            scorer, state, open_prefix = cached["scorer"], cached["state"], cached["open"]
            for column in range(cached["prefix"].shape[1], t):
                state = scorer.append(state, prefix[:, column])
                open_prefix = open_prefix & ~self._stops(prefix[:, column])
        else:
            scorer = SentenceMetric(
                self.metric,
                reference_ids.to(prefix.device),
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
            )
            state = scorer.prefix_states(prefix).map(lambda x: x[:, t])
            open_prefix = ~self._stops(prefix).any(1)
        self._cached = {
            "references": reference_ids,
            "version": reference_ids._version,
            "prefix": prefix.clone(),
            "scorer": scorer,
            "state": state,
            "open": open_prefix,
        }
        return scorer, state, open_prefix

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
            return_completions: Also return the best completion starting with each label.

        Returns:
            A `BeamSearchResult` whose tensors are [B, T] (or [B] with `prefix_lengths`), on the device of
            `prefix_ids`.
        """
        prefix_ids, reference_ids = torch.as_tensor(prefix_ids), torch.as_tensor(reference_ids)
        if prefix_ids.dim() != 2 or reference_ids.dim() != 2 or prefix_ids.shape[0] != reference_ids.shape[0]:
            raise ValueError(
                f"prefix_ids {tuple(prefix_ids.shape)} and reference_ids {tuple(reference_ids.shape)}; accepted: "
                "[B, T] and [B, R] with the same B."
            )
        check_token_ids(prefix_ids, "prefix_ids")
        dev = prefix_ids.device
        b, t = prefix_ids.shape
        prefix = prefix_ids.long()
        if prefix_lengths is not None:
            prefix_lengths = torch.as_tensor(prefix_lengths, device=dev)
            if (
                prefix_lengths.shape != (b,)
                or prefix_lengths.dtype.is_floating_point
                or prefix_lengths.dtype == torch.bool
            ):
                raise ValueError(
                    f"prefix_lengths has shape {tuple(prefix_lengths.shape)} and dtype {prefix_lengths.dtype}; "
                    f"accepted: [B] = [{b}] integers."
                )
            bad = (prefix_lengths < 0) | (prefix_lengths > t)
            if bad.any():
                row = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"prefix_lengths[{row}] = {int(prefix_lengths[row])}; accepted: 0 <= length <= T = {t}."
                )
            prefix_lengths = prefix_lengths.long()
        scorer = SentenceMetric(
            self.metric, reference_ids.to(dev), eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id
        )
        if b == 0 or (t == 0 and prefix_lengths is None):
            shape = (b,) if prefix_lengths is not None else (b, t)
            empty = torch.full(shape, float("nan"), dtype=torch.float64, device=dev)
            completions = (
                torch.full((*shape, self.lookahead), IGNORE_INDEX, device=dev) if return_completions else None
            )
            return BeamSearchResult(torch.full(shape, IGNORE_INDEX, device=dev), empty, empty.clone(), completions)
        stop = (prefix == self.eos_token_id) | (prefix == IGNORE_INDEX)
        if self.pad_token_id is not None:
            stop |= prefix == self.pad_token_id
        open_prefix = torch.nn.functional.pad(stop.long().cumsum(1), (1, 0)) == 0  # [B, T + 1]: no stop before t
        states = scorer.prefix_states(prefix)  # [B, T + 1]
        if prefix_lengths is None:
            positions = torch.arange(t, device=dev).expand(b, t)
            root = states.map(lambda x: x[:, :t])
            labelled = open_prefix[:, :t]
        else:
            positions = prefix_lengths[:, None]
            rows = torch.arange(b, device=dev)
            root = states.map(lambda x: x[rows, prefix_lengths][:, None])
            labelled = open_prefix.gather(1, positions)
        result = self._search(scorer, root, positions, return_completions)
        labels = torch.where(labelled, result.labels, IGNORE_INDEX)
        nan = torch.full_like(result.scores, float("nan"))
        completions = result.completions
        if completions is not None:
            completions = torch.where(labelled[..., None], completions, IGNORE_INDEX)
        out = BeamSearchResult(
            labels,
            torch.where(labelled, result.scores, nan),
            torch.where(labelled, result.gold_scores, nan),
            completions,
        )
        if prefix_lengths is not None:
            out = BeamSearchResult(*(None if x is None else x[:, 0] for x in out))
        return out

    def _search(
        self, scorer: SentenceMetric, root: MetricState, positions: torch.Tensor, completions: bool
    ) -> BeamSearchResult:
        """Beam searches from the states `root` [B, M] at `positions` [B, M] (all of them unmasked)."""
        ref, ref_len = scorer.ref, scorer.ref_len
        b, m = root.shape
        r = ref.shape[1]
        h, eos = self.lookahead, self.eos_token_id
        dev = ref.device
        neg = float("-inf")
        # Candidate slots: slot j < R is reference position j (valid at a first occurrence), slot R is EOS.
        first_pos = (ref[:, :, None] == ref[:, None, :]).to(torch.uint8).argmax(1)  # [B, R]
        slot_ids = torch.arange(r, device=dev)
        cand_ok = (first_pos == slot_ids) & scorer.ref_valid  # [B, R]
        cand_tok = torch.where(cand_ok, ref, -1)
        all_tok = torch.cat([cand_tok, torch.full_like(cand_tok[:, :1], eos)], 1)  # [B, R + 1]
        gold_slot = torch.where(
            positions < ref_len[:, None], first_pos.gather(1, positions.clamp(max=r - 1)), r
        )  # [B, M]
        rows = torch.arange(b, device=dev)[:, None, None]
        cols = torch.arange(m, device=dev)[None, :, None]

        def tokens_of(slots: torch.Tensor) -> torch.Tensor:
            return cand_tok.gather(1, slots.reshape(b, -1)).view(slots.shape)

        # Step 1: every candidate after the prefix; EOS scores the prefix itself.
        scores = torch.where(cand_ok[:, None], scorer.candidate_scores(root, cand_tok), neg)  # [B, M, R]
        best = torch.cat([scores, scorer.score(root)[..., None]], -1)  # [B, M, R + 1]: best score per first token
        k = min(self.beam_size, r)
        beam_score, first = _top(scores, k)  # [B, M, k]
        alive = beam_score > neg
        tokens = tokens_of(first)
        beams = scorer.append(root.map(lambda x: x[:, :, None].expand(b, m, k, *x.shape[2:])), tokens)
        history = tokens[..., None] if completions else None  # [B, M, k, steps so far]
        best_completion = None
        if completions:
            tail = torch.full((b, m, r + 1, h - 1), IGNORE_INDEX, dtype=torch.long, device=dev)
            if h > 1:
                tail[..., 0] = eos
            best_completion = torch.cat([all_tok[:, None, :, None].expand(b, m, r + 1, 1), tail], -1)
            best_completion[..., r, 1:] = IGNORE_INDEX
        for step in range(2, h + 1):
            scores = scorer.candidate_scores(beams, cand_tok)  # [B, M, k, R]
            scores = torch.where(cand_ok[:, None, None] & alive[..., None], scores, neg)
            if completions:
                child_best, child_slot = scores.max(-1)  # [B, M, k]
                per_first = torch.where(
                    first[..., None] == torch.arange(r + 1, device=dev), child_best[..., None], neg
                )  # [B, M, k, R + 1]
                first_best, first_beam = per_first.max(2)  # [B, M, R + 1]
                pick = (rows, cols, first_beam)
                new = torch.cat([history[pick], tokens_of(child_slot[pick])[..., None]], -1)
                new = torch.nn.functional.pad(new, (0, h - step), value=IGNORE_INDEX)
                if step < h:
                    new[..., step] = eos
                best_completion = torch.where((first_best > best)[..., None], new, best_completion)
                best = torch.maximum(best, first_best)
            else:
                best = best.scatter_reduce(-1, first, scores.amax(-1), "amax")
            if step == h:
                break
            beam_score, index = _top(scores.view(b, m, k * r), k)
            parent, slot = index // r, index % r
            alive = beam_score > neg
            first = first.gather(2, parent)
            tokens = tokens_of(slot)
            beams = scorer.append(beams.map(lambda x, p=parent: x[rows, cols, p]), tokens)
            if completions:
                history = torch.cat([history[rows, cols, parent], tokens[..., None]], -1)
        # The gold-suffix continuation ref[t:t + h].
        gold = root
        gold_tokens = []
        for i in range(h):
            at = positions + i
            active = at < ref_len[:, None]
            token = ref.gather(1, at.clamp(max=r - 1))
            gold = scorer.append(gold, token).where(active, gold)
            gold_tokens.append(torch.where(active, token, IGNORE_INDEX))
        gold_score = scorer.score(gold)  # [B, M]
        at_gold = gold_slot[..., None]
        if completions:
            seq = torch.stack(gold_tokens, -1)  # [B, M, h]
            ended = (seq == IGNORE_INDEX).long().cumsum(-1) == 1
            seq = torch.where(ended & (seq == IGNORE_INDEX), eos, seq)
            improved = gold_score > best.gather(-1, at_gold)[..., 0]
            current = best_completion.gather(2, at_gold[..., None].expand(b, m, 1, h))[:, :, 0]
            replaced = torch.where(improved[..., None], seq, current)
            best_completion = best_completion.scatter(2, at_gold[..., None].expand(b, m, 1, h), replaced[:, :, None])
        best = best.scatter_reduce(-1, at_gold, gold_score[..., None], "amax")
        # The label: best first token; ties -> gold next token, then EOS, then reference order.
        optimal = best >= best.amax(-1, keepdim=True) - TIE_TOLERANCE
        rank = torch.arange(2, r + 3, device=dev).expand(b, m, r + 1)
        rank = torch.where(torch.arange(r + 1, device=dev) == r, 1, rank)
        rank = rank.scatter(-1, at_gold, 0)
        choice = torch.where(optimal, rank, r + 3).argmin(-1, keepdim=True)  # [B, M, 1]
        labels = all_tok.gather(1, choice.view(b, -1)).view(b, m)
        chosen = None
        if completions:
            chosen = best_completion.gather(2, choice[..., None].expand(b, m, 1, h))[:, :, 0]
        return BeamSearchResult(labels, best.gather(-1, choice)[..., 0], gold_score, chosen)
