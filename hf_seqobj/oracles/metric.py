"""Dynamic oracles for any sentence metric: the beam oracle's search, scored by the metric on whole outputs.

A user's metric is a function that scores whole candidate outputs (token ids) against their references;
:func:`register_sentence_metric` makes it an oracle that `oracle=NAME` selects (docs/oracles.md, "Your own metric").

The metric (`score_fn`)
-----------------------
- batched (the default, and faster): `score_fn(candidates, references) -> scores`, `candidates` and `references`
  two lists of the same length of token-id lists (`list[list[int]]`: the tokens before EOS, without EOS or
  padding; `references[i]` is the reference of `candidates[i]`), `scores` one float per candidate (a sequence or
  a 1-D tensor). Higher is better.
- `batched=False`: `score_fn(candidate, reference) -> float` on one pair of token-id lists.

The metric is called on the distinct candidates of a whole batch at once: once per call with lookahead h <= 1, once
per depth of the search above that.

The search (the same as :class:`hf_seqobj.oracles.BeamOracle`'s, with the same labels)
---------------------------------------------------------------------------------------
For a prefix p (aligned to the reference r, of length R, at j(p) by edit distance, :mod:`hf_seqobj.oracles.align`)
the oracle scores the whole outputs: p itself (stopping now); every reference tail p + r[i : i + L_i] (i = 0..R);
with h >= 1, every candidate token a (the distinct tokens of r) as p + a + r[j : j + L] (j = j(p + a)); with
h >= 2, the `beam_size` best such nodes are grown by one candidate per depth, each node p + u finished with the
reference suffix after its own alignment, up to h tokens. L is R - j, capped under the stop rule
"reference_length" so that no output is longer than R (and the label is EOS once |p| >= R). Each candidate first
token keeps the best score of the outputs starting with it; the label is the best first token, ties (within
`TIE_TOLERANCE`) going to the aligned reference token r[j(p)] (EOS once j(p) = R), then EOS, then the candidate
nearest after j(p) in reference order. With `continuation_ids`, a word-continuing id starts a label or a node only
where the aligned reference continues with it. With the library's own sentence BLEU as `score_fn`, the labels are
those of `BeamOracle("bleu")` (tested).

Cost: per labelled position, 2 + R outputs with h = 0, about 2 R more with h = 1 and k R more per further depth,
each built as a Python list (O(R) tokens) and scored by the user's function, plus the batched alignment rows
(tensor operations). Slower than the built-in oracles, whose metrics are computed incrementally on tensors:
the speed benchmark's `oracles` section measures it beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

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
    open_prefixes,
)
from hf_seqobj.oracles.base import OracleSettings, OracleSpec, register_oracle
from hf_seqobj.oracles.beam import TIE_TOLERANCE, BeamSearchResult
from hf_seqobj.rewards import check_token_ids, compact_ids


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


__all__ = ["SentenceMetricOracle", "register_sentence_metric", "sentence_metric_oracle"]

BatchedScore = Callable[[list[list[int]], list[list[int]]], "Sequence[float] | torch.Tensor"]
"""`score_fn(candidates, references) -> one score per candidate` (token-id lists before EOS)."""

SentenceScore = Callable[[list[int], list[int]], float]
"""`score_fn(candidate, reference) -> score` (token-id lists before EOS)."""


class _Candidates:
    """The distinct whole outputs of one search depth, scored together by one call of the metric."""

    def __init__(self, oracle: SentenceMetricOracle, references: list[list[int]]) -> None:
        self.oracle, self.references = oracle, references
        self.index: dict[tuple[int, tuple[int, ...]], int] = {}
        self.outputs: list[list[int]] = []
        self.rows: list[int] = []

    def add(self, row: int, output: list[int]) -> int:
        key = (row, tuple(output))
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = len(self.outputs)
            self.outputs.append(output)
            self.rows.append(row)
        return found

    def scores(self) -> list[float]:
        if not self.outputs:
            return []
        return self.oracle.score(self.outputs, [self.references[row] for row in self.rows])


class SentenceMetricOracle:
    """Dynamic oracle for a user's sentence metric: the beam oracle's search, scored on whole outputs (module docs).

    Args:
        score_fn: The metric: `score_fn(candidates, references) -> scores` (batched), or with `batched=False`
            `score_fn(candidate, reference) -> float`; token-id lists before EOS, higher is better.
        batched: Whether `score_fn` takes lists of candidates and references (one call per search depth) or one
            pair (one call per distinct candidate).
        beam_size: k, the nodes kept per depth (>= 1; used from lookahead 2 on).
        lookahead: h, the most tokens searched before the aligned reference suffix finishes an output (>= 0; 0:
            the best reference tail).
        eos_token_id: The EOS id: ends references and roll-ins, and is the label that stops.
        pad_token_id: An extra padding id besides -100 (None: only -100).
        stop: "reference_length" (EOS once the output has the reference's length; no output longer) or "metric"
            (the metric alone; see :mod:`hf_seqobj.oracles.align`).
        continuation_ids: None, or a 1-D bool tensor over the vocabulary, True for the ids that continue a word.
        name: The oracle's name in messages and `repr`.

    Raises:
        ValueError: On a `score_fn` that is not callable, a bad beam size, lookahead or stop rule, or a special id
            that is not an int >= 0.
    """

    supports_rows = True
    """:meth:`next_token` takes `rows`."""

    def __init__(
        self,
        score_fn: BatchedScore | SentenceScore,
        *,
        batched: bool = True,
        beam_size: int = 5,
        lookahead: int = 0,
        eos_token_id: int,
        pad_token_id: int | None = None,
        stop: str = "reference_length",
        continuation_ids: torch.Tensor | None = None,
        name: str = "sentence_metric",
    ) -> None:
        if not callable(score_fn):
            raise ValueError(f"score_fn = {score_fn!r}; accepted: a callable (see hf_seqobj.oracles.metric).")
        if not isinstance(batched, bool):
            raise ValueError(f"batched = {batched!r}; accepted: True or False.")
        check_oracle_ids(eos_token_id, pad_token_id, continuation_ids)
        self.score_fn, self.batched, self.name = score_fn, batched, name
        self.beam_size = check_int("beam_size", beam_size, 1)
        self.lookahead = check_int("lookahead", lookahead, 0)
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.stop = check_stop(stop)
        self.continuation_ids = continuation_ids
        self._continues = [] if continuation_ids is None else continuation_ids.tolist()

    def __repr__(self) -> str:
        return (
            f"SentenceMetricOracle(name={self.name!r}, beam_size={self.beam_size}, lookahead={self.lookahead}, "
            f"eos_token_id={self.eos_token_id}, pad_token_id={self.pad_token_id}, stop={self.stop!r})"
        )

    def score(self, candidates: list[list[int]], references: list[list[int]]) -> list[float]:
        """The metric of each candidate against its reference, checked: one finite float each.

        Raises:
            ValueError: If `score_fn` returns another number of scores, or a score that is not a finite number.
        """
        if self.batched:
            values = self.score_fn(candidates, references)
        else:
            values = [self.score_fn(c, r) for c, r in zip(candidates, references, strict=True)]
        try:
            scores = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"score_fn of oracle {self.name!r} returned {type(values).__name__} ({error}); accepted: one float "
                "per candidate."
            ) from None
        if scores.numel() != len(candidates):
            raise ValueError(
                f"score_fn of oracle {self.name!r} returned {scores.numel()} scores for {len(candidates)} "
                "candidates; accepted: one float per candidate."
            )
        bad = ~torch.isfinite(scores)
        if bad.any():
            at = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"score_fn of oracle {self.name!r} returned {float(scores[at])} for candidate {candidates[at]} "
                f"against {references[at]}; accepted: finite floats."
            )
        return scores.tolist()

    def __call__(self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """Oracle labels for every position of a batch of roll-ins (as :meth:`BeamOracle.__call__`).

        Args:
            prefix_ids: [B, T] roll-in token ids, aligned with output positions 0..T-1.
            reference_ids: [B, R] gold output ids (-100, padding and everything from the first EOS on are ignored).

        Returns:
            [B, T] LongTensor on the device of `prefix_ids`; -100 where prefix_ids[b, :t] holds EOS, -100 or
            padding.
        """
        return self.search(prefix_ids, reference_ids).labels

    def next_token(
        self,
        prefix_ids: torch.Tensor,
        prefix_lengths: torch.Tensor,
        reference_ids: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The oracle label at position prefix_lengths[b] only (for mixing into a roll-in).

        Args:
            prefix_ids: [B, T] roll-in token ids; only prefix_ids[b, :prefix_lengths[b]] is read.
            prefix_lengths: [B] integers in [0, T].
            reference_ids: [B, R] gold output ids.
            rows: [b] indices of the rows to search (the others are not searched); None: all rows.

        Returns:
            [B] (or [b] with `rows`) LongTensor: `self(prefix_ids, reference_ids)[b, prefix_lengths[b]]`.
        """
        prefix_ids, reference_ids = torch.as_tensor(prefix_ids), torch.as_tensor(reference_ids)
        lengths = torch.as_tensor(prefix_lengths, device=prefix_ids.device)
        if rows is not None:
            rows = torch.as_tensor(rows, device=prefix_ids.device)
            if rows.numel() == 0:
                return torch.zeros(0, dtype=torch.long, device=prefix_ids.device)
            if prefix_ids.dim() == 2 and reference_ids.dim() == 2 and lengths.dim() == 1:
                prefix_ids, reference_ids = prefix_ids[rows], reference_ids[rows.to(reference_ids.device)]
                lengths = lengths[rows]
        return self.search(prefix_ids, reference_ids, lengths).labels

    def search(
        self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor, prefix_lengths: torch.Tensor | None = None
    ) -> BeamSearchResult:
        """The searches behind `__call__` (prefix_lengths None: every position) and `next_token`, with scores.

        Args:
            prefix_ids: [B, T] roll-in token ids.
            reference_ids: [B, R] gold output ids.
            prefix_lengths: None, or [B] integers in [0, T]: search only at these positions.

        Returns:
            A `BeamSearchResult` (without completions) whose tensors are [B, T] (or [B] with `prefix_lengths`), on
            the device of `prefix_ids`: labels, the best score found (float64, NaN where unlabelled) and the score
            of the prefix finished with its aligned reference suffix.

        Raises:
            ValueError: On tensors that are not [B, T] and [B, R] with the same B, a negative id other than -100,
                `prefix_lengths` that is not [B] integers in [0, T], or a bad return value of `score_fn`.
        """
        prefix_ids, reference_ids, prefix_lengths = check_search_inputs(prefix_ids, reference_ids, prefix_lengths)
        check_token_ids(reference_ids, "reference_ids")
        device = prefix_ids.device
        b, t = prefix_ids.shape
        prefix = prefix_ids.long().cpu()
        prefix_lengths = None if prefix_lengths is None else prefix_lengths.cpu()
        ref, ref_len = compact_ids(reference_ids.cpu(), self.eos_token_id, self.pad_token_id)
        valid = torch.arange(ref.shape[1]) < ref_len[:, None]
        open_prefix = open_prefixes(prefix, self.eos_token_id, self.pad_token_id)  # [B, T + 1]
        if prefix_lengths is None:
            query_rows, query_cols = open_prefix[:, :t].nonzero(as_tuple=True)
            shape = (b, t)
        else:
            rows = torch.arange(b)
            keep = open_prefix[rows, prefix_lengths]
            query_rows, query_cols = rows[keep], prefix_lengths[keep]
            shape = (b,)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        scores = torch.full(shape, float("nan"), dtype=torch.float64)
        gold_scores = scores.clone()
        if query_rows.numel():
            found = self._search(prefix, ref, ref_len, valid, query_rows, query_cols)
            at = (query_rows, query_cols) if prefix_lengths is None else (query_rows,)
            labels[at] = torch.tensor(found[0], dtype=torch.long)
            scores[at] = torch.tensor(found[1], dtype=torch.float64)
            gold_scores[at] = torch.tensor(found[2], dtype=torch.float64)
        return BeamSearchResult(labels.to(device), scores.to(device), gold_scores.to(device), None)

    def _continues_word(self, token: int) -> bool:
        """Whether `token` continues a word (False without word marks)."""
        return 0 <= token < len(self._continues) and bool(self._continues[token])

    def _allowed(self, token: int, aligned: int, reference: list[int]) -> bool:
        """The word rule: a word-continuing id only where the aligned reference continues with it."""
        continues = 0 <= token < len(self._continues) and self._continues[token]
        return not continues or (aligned < len(reference) and reference[aligned] == token)

    def _search(self, prefix, ref, ref_len, valid, query_rows, query_cols) -> tuple[list, list, list]:
        """Labels, best scores and gold scores of the queries (row, prefix length), in order."""
        eos, cap, h = self.eos_token_id, self.stop == "reference_length", self.lookahead
        references = [ref[row, : int(n)].tolist() for row, n in enumerate(ref_len)]
        prefixes = prefix.tolist()
        first_pos = [{} for _ in references]  # token -> its first position in the reference (its slot)
        for row, reference in enumerate(references):
            for i, token in enumerate(reference):
                first_pos[row].setdefault(token, i)
        slots = [sorted(f.values()) for f in first_pos]
        same = (ref[:, :, None] == ref[:, None, :]) & valid[:, None, :] & valid[:, :, None]  # [B, R(slot), R]
        eds = edit_distance_rows(prefix, ref, valid)  # [B, T + 1, R + 1]
        root_ed = eds[query_rows, query_cols]  # [Q, R + 1]
        aligned = aligned_position(root_ed, ref_len[query_rows]).tolist()
        child_ed, child_aligned = None, None
        if h >= 1:
            child_ed = edit_distance_append(root_ed[:, None, :], same[query_rows])  # [Q, R, R + 1]
            child_aligned = aligned_position(child_ed, ref_len[query_rows]).tolist()
        queries = list(zip(query_rows.tolist(), query_cols.tolist(), aligned, strict=True))

        # Depth 0 (stopping now, every reference tail) and depth 1 (every candidate token), scored together.
        batch = _Candidates(self, references)
        entries: list[list[tuple[int, int]]] = []  # per query: (first token, output index)
        gold: list[int] = []
        nodes: list[list[tuple[int, int, int]]] = []  # per query, depth 1: (slot, token, output index)
        for q, (row, col, j) in enumerate(queries):
            reference, p = references[row], prefixes[row][:col]
            mine = [(eos, batch.add(row, p))]
            for i in range(len(reference) + 1):
                tail = self._suffix(reference, i, col)
                if tail and not self._allowed(tail[0], j, reference):
                    continue
                mine.append((tail[0] if tail else eos, batch.add(row, p + tail)))
            gold.append(batch.add(row, p + self._suffix(reference, j, col)))
            children = []
            if h >= 1 and (not cap or col < len(reference)):
                for slot in slots[row]:
                    token = reference[slot]
                    if self._allowed(token, j, reference):
                        child = [*p, token]
                        done = child + self._suffix(reference, child_aligned[q][slot], col + 1)
                        children.append((slot, token, batch.add(row, done)))
            entries.append(mine)
            nodes.append(children)
        values = batch.scores()
        best: list[dict[int, float]] = []
        for mine, children in zip(entries, nodes, strict=True):
            top: dict[int, float] = {}
            for token, index in [*mine, *((token, index) for _, token, index in children)]:
                top[token] = max(top.get(token, float("-inf")), values[index])
            best.append(top)
        if h >= 2:
            self._deeper(
                references, prefixes, queries, slots, nodes, values, child_ed, child_aligned, same, ref_len, best
            )
        labels, chosen = [], []
        for q, (row, col, j) in enumerate(queries):
            reference, top = references[row], best[q]
            if cap and col >= len(reference):
                label = eos
                p = prefixes[row][:col]
                if 0 < j < len(reference) and p and p[-1] == reference[j - 1] and self._continues_word(reference[j]):
                    label = reference[j]  # no word is cut at the cap (hf_seqobj.oracles.align.finish_word)
            else:
                high = max(top.values())
                optimal = {token for token, value in top.items() if value >= high - TIE_TOLERANCE}
                target = reference[j] if j < len(reference) else eos
                if target in optimal:
                    label = target
                elif eos in optimal:
                    label = eos
                else:
                    span = max(len(reference), 1)
                    label = min(
                        (token for token in optimal if token != eos),
                        key=lambda token, row=row, j=j, span=span: (first_pos[row][token] - j) % span,
                    )
            labels.append(label)
            chosen.append(top[label if label in top else eos])
        return labels, chosen, [values[index] for index in gold]

    def _suffix(self, reference: list[int], start: int, length: int) -> list[int]:
        """The reference suffix from `start` that finishes an output of `length` tokens (capped under the stop rule
        "reference_length" so that the output is no longer than the reference)."""
        n = len(reference) - start
        if self.stop == "reference_length":
            n = min(n, len(reference) - length)
        return reference[start : start + max(n, 0)]

    def _deeper(
        self, references, prefixes, queries, slots, nodes, values, child_ed, child_aligned, same, ref_len, best
    ) -> None:
        """Depths 2..h: the `beam_size` best nodes per query (ties: the earlier slot, parent-major), each grown by
        every allowed candidate and finished with the reference suffix after its own alignment."""
        cap, k, r = self.stop == "reference_length", self.beam_size, same.shape[1]
        # a beam node: (first token, searched tokens, alignment row [R + 1], aligned position)
        beams = []
        for q, children in enumerate(nodes):
            ranked = sorted(children, key=lambda node: (-values[node[2]], node[0]))[:k]
            beams.append([(token, [token], child_ed[q, slot], child_aligned[q][slot]) for slot, token, _ in ranked])
        for depth in range(2, self.lookahead + 1):
            flat = [(q, parent) for q, beam in enumerate(beams) for parent in range(len(beam))]
            if not flat:
                return
            node_rows = torch.tensor([queries[q][0] for q, _ in flat], dtype=torch.long)
            node_ed = torch.stack([beams[q][parent][2] for q, parent in flat])
            kids_ed = edit_distance_append(node_ed[:, None, :], same[node_rows])  # [N, R, R + 1]
            kids_aligned = aligned_position(kids_ed, ref_len[node_rows]).tolist()
            batch = _Candidates(self, references)
            grown: list[list[tuple[int, int, int, int]]] = [[] for _ in queries]  # (parent, slot, node, output)
            for n, (q, parent) in enumerate(flat):
                row, col, _ = queries[q]
                reference = references[row]
                _, searched, _, j = beams[q][parent]
                length = col + len(searched)
                if cap and length >= len(reference):
                    continue
                base = prefixes[row][:col] + searched
                for slot in slots[row]:
                    token = reference[slot]
                    if not self._allowed(token, j, reference):
                        continue
                    done = [*base, token, *self._suffix(reference, kids_aligned[n][slot], length + 1)]
                    grown[q].append((parent, slot, n, batch.add(row, done)))
            scores = batch.scores()
            for q, kids in enumerate(grown):
                for parent, _, _, index in kids:
                    first = beams[q][parent][0]
                    best[q][first] = max(best[q][first], scores[index])
            if depth == self.lookahead:
                return
            for q, kids in enumerate(grown):
                ranked = sorted(kids, key=lambda kid: (-scores[kid[3]], kid[0] * r + kid[1]))[:k]
                reference = references[queries[q][0]]
                beams[q] = [
                    (
                        beams[q][parent][0],
                        [*beams[q][parent][1], reference[slot]],
                        kids_ed[n, slot],
                        kids_aligned[n][slot],
                    )
                    for parent, slot, n, _ in ranked
                ]


def sentence_metric_oracle(
    score_fn: BatchedScore | SentenceScore, *, batched: bool = True, name: str = "sentence_metric"
) -> Callable[[PreTrainedTokenizerBase, OracleSettings], SentenceMetricOracle]:
    """The factory of a :class:`SentenceMetricOracle` for `score_fn` (for :func:`register_oracle`).

    The factory takes the run's tokenizer (EOS, pad, word-start marks) and :class:`OracleSettings` (beam size,
    lookahead, stop rule, whole words).

    Args:
        score_fn: The metric (see :mod:`hf_seqobj.oracles.metric`).
        batched: Whether `score_fn` scores lists of candidates (True) or one candidate (False).
        name: The oracle's name in messages.
    """
    if not callable(score_fn):
        raise ValueError(f"score_fn = {score_fn!r}; accepted: a callable (see hf_seqobj.oracles.metric).")

    def factory(tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> SentenceMetricOracle:
        from hf_seqobj.oracles.builtin import text_oracle_arguments

        return SentenceMetricOracle(
            score_fn,
            batched=batched,
            beam_size=settings.beam_size,
            lookahead=settings.lookahead,
            name=name,
            **text_oracle_arguments(tokenizer, settings),
        )

    return factory


def register_sentence_metric(
    name: str,
    score_fn: BatchedScore | SentenceScore,
    *,
    doc: str,
    batched: bool = True,
    replace: bool = False,
) -> OracleSpec:
    """Registers an oracle for a sentence metric on token ids: `oracle=name` then relabels roll-ins with it.

        import sacrebleu
        from hf_seqobj.oracles import register_sentence_metric

        def chrf(candidates, references):  # token-id lists; here scored on decoded text
            texts = tokenizer.batch_decode(candidates), tokenizer.batch_decode(references)
            return [sacrebleu.sentence_chrf(c, [r]).score / 100 for c, r in zip(*texts)]

        register_sentence_metric("chrf", chrf, doc="sentence chrF on the decoded outputs")

    The oracle scores text outputs with :class:`SentenceMetricOracle` (the beam oracle's search, calling
    `score_fn` on whole candidate outputs) and reads the settings beam_size, lookahead, stop and whole_words.

    Args:
        name: The value of `oracle=` (see :func:`register_oracle`).
        score_fn: `score_fn(candidates, references) -> scores` (batched), or `score_fn(candidate, reference) ->
            float` with `batched=False`; token-id lists before EOS, higher is better.
        doc: One line saying what the metric is.
        batched: Whether `score_fn` takes lists (faster: one call per search depth).
        replace: Replace an oracle already registered under `name`.

    Returns:
        The :class:`OracleSpec` registered.
    """
    return register_oracle(
        name,
        output="text",
        factory=sentence_metric_oracle(score_fn, batched=batched, name=name),
        doc=doc,
        exact=False,
        settings=("beam_size", "lookahead", "stop", "whole_words"),
        replace=replace,
    )
