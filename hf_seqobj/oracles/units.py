"""The units a text oracle scores: token ids as they are, or the words the reported ROUGE scores.

rouge-score (what the summarization task reports) lowercases the text, replaces every character outside [a-z0-9]
by a space and scores the words left. An oracle that scores raw sub-word ids instead counts case and punctuation
that the reported metric never sees: "Eric,,,,,,," is rewarded or punished by the oracle and invisible to ROUGE.
:class:`MetricUnitsOracle` makes any text oracle with a `search` method (:class:`~hf_seqobj.oracles.beam.BeamOracle`,
:class:`~hf_seqobj.oracles.exact.ExactRougeOracle`) score those units instead, as closely as token ids allow:

- Units (:func:`rouge_units`): each id's text, lowercased, is reduced to its [a-z0-9] runs. An id with none
  (punctuation, a lone space, a non-ASCII letter) is no unit: it is left out of the prefix and the reference before
  scoring, so n-grams and the longest common subsequence join across it as rouge-score's do. Ids with the same
  runs and the same word start ("ĠHannah", "Ġhannah") are one unit. Special tokens (EOS, padding) stay themselves.
  Sub-word pieces stay pieces (a word split into two ids is two units) and stemming is not applied: a Porter stem
  needs whole words, which one id does not know.
- Labels: the oracle searches in units. Its label (a reference unit or EOS) is written back as the reference's own
  id of that unit (the reference's casing). Punctuation costs nothing in units, so the tie between emitting it and
  not goes to the reference's text: where the prefix has just matched the reference unit that a run of punctuation
  follows, and the label is the unit after that run (or EOS), the label is the run's next punctuation id instead.
- The stop rule counts units: under "reference_length" EOS comes once the prefix has as many units as the
  reference.

BLEU is reported by sacrebleu, whose default tokenization keeps case and scores punctuation as tokens: its oracle
scores ids as they are (setting `oracle_units`, :data:`UNIT_CHOICES`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.oracles.align import check_search_inputs
from hf_seqobj.oracles.beam import BeamSearchResult, SearchLabels


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


__all__ = ["NO_UNIT", "UNIT_CHOICES", "MetricUnitsOracle", "check_units", "rouge_units"]

UNIT_CHOICES = ("metric", "ids")
"""The accepted values of `oracle_units`: "metric": the units of the metric the task reports (ROUGE oracles:
rouge-score's lowercased words without punctuation, :func:`rouge_units`; BLEU: ids, as sacrebleu scores case and
punctuation); "ids": every token id is a unit (case and punctuation count)."""

NO_UNIT = -1
"""The entry of :func:`rouge_units` for an id that is no unit of the metric (punctuation only)."""

_WORD = re.compile(r"[a-z0-9]+")


def check_units(units: object) -> str:
    """Returns `units` if it is one of :data:`UNIT_CHOICES`, else raises a one-line ValueError."""
    if units not in UNIT_CHOICES:
        raise ValueError(f"units = {units!r}; accepted: {', '.join(repr(u) for u in UNIT_CHOICES)}.")
    return units


def rouge_units(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """[V] int64 over the tokenizer's ids: the id that stands for each id's rouge-score unit, or :data:`NO_UNIT`.

    An id's unit is its decoded text lowercased and reduced to its [a-z0-9] runs, with whether it starts a word
    (byte-level BPE "Ġ", SentencePiece "▁", a vocabulary without markers: always, or text that begins with a
    character outside [a-z0-9]); the smallest id with that unit stands for it. Special tokens stand for themselves.
    """
    size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    texts = tokenizer.batch_decode([[index] for index in range(size)], clean_up_tokenization_spaces=False)
    markers = tuple(m for m in ("Ġ", "▁") if any(token.startswith(m) for token in vocab))
    special = set(tokenizer.all_special_ids)
    table = torch.arange(size, dtype=torch.long)
    first: dict[tuple[bool, str], int] = {}
    for index, (token, text) in enumerate(zip(tokens, texts, strict=True)):
        if index in special or token is None:
            continue
        words = _WORD.findall(text.lower())
        if not words:
            table[index] = NO_UNIT
            continue
        starts = not markers or str(token).startswith(markers) or not text[:1].lower().isalnum()
        table[index] = first.setdefault((starts, " ".join(words)), index)
    return table


def _lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The unit of each id (ids outside the table, such as -100, stay as they are)."""
    inside = (ids >= 0) & (ids < table.numel())
    return torch.where(inside, table[ids.clamp(0, table.numel() - 1)], ids)


def _pack(ids: torch.Tensor, keep: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width]: each row's kept ids moved to its front, in order, -100 behind them."""
    b, n = ids.shape
    where = torch.where(keep, keep.long().cumsum(1) - 1, width)
    out = torch.full((b, width + 1), IGNORE_INDEX, dtype=ids.dtype, device=ids.device)
    out.scatter_(1, where, ids)
    return out[:, :width]


class MetricUnitsOracle(SearchLabels):
    """A text oracle that scores the reported metric's units (see the module docs) instead of raw ids.

    Args:
        oracle: The oracle in units: any text oracle with `search(prefix_ids, reference_ids, prefix_lengths,
            return_completions=...)` returning a :class:`BeamSearchResult`.
        units: [V] the unit of each id, :data:`NO_UNIT` for ids that are none (:func:`rouge_units`).

    Raises:
        ValueError: `oracle` has no `search`, or `units` is not a 1-D integer tensor.
    """

    def __init__(self, oracle, units: torch.Tensor) -> None:
        if not callable(getattr(oracle, "search", None)):
            raise ValueError(f"oracle = {oracle!r}; accepted: a text oracle with a search method (BeamOracle, ...).")
        units = torch.as_tensor(units)
        if units.dim() != 1 or units.dtype.is_floating_point or units.dtype == torch.bool:
            raise ValueError(f"units has shape {tuple(units.shape)} and dtype {units.dtype}; accepted: [V] integers.")
        self.oracle = oracle
        self.units = units.long()

    def __repr__(self) -> str:
        return f"MetricUnitsOracle({self.oracle!r}, units over {self.units.numel()} ids)"

    def search(
        self,
        prefix_ids: torch.Tensor,
        reference_ids: torch.Tensor,
        prefix_lengths: torch.Tensor | None = None,
        *,
        return_completions: bool = False,
    ) -> BeamSearchResult:
        """The wrapped oracle's search over units, its labels written back as ids (see the module docs); the
        scores are the metric's over units. Completions, where asked for, are in units written back as the
        reference's ids (without the punctuation that costs nothing).

        Args:
            prefix_ids: [B, T] roll-in token ids.
            reference_ids: [B, R] gold output ids.
            prefix_lengths: None (every position) or [B] integers in [0, T].
            return_completions: Also return the best completions.
        """
        prefix_ids, reference_ids, prefix_lengths = check_search_inputs(prefix_ids, reference_ids, prefix_lengths)
        table = self.units.to(prefix_ids.device)
        prefix_units, reference_units = _lookup(table, prefix_ids), _lookup(table, reference_ids)
        keep_prefix, keep_reference = prefix_units != NO_UNIT, reference_units != NO_UNIT
        b, t = prefix_ids.shape
        packed_prefix = _pack(prefix_units, keep_prefix, t + 1)  # one spare column: a label after every unit
        packed_reference = _pack(reference_units, keep_reference, reference_ids.shape[1])
        counts = F.pad(keep_prefix.long().cumsum(1), (1, 0))  # [B, T + 1]: units in prefix[:t]
        if prefix_lengths is None:
            positions = torch.arange(t, device=prefix_ids.device).expand(b, t)
            found = self.oracle.search(packed_prefix, packed_reference, return_completions=return_completions)
            at = counts[:, :t]
            rows = torch.arange(b, device=at.device)[:, None]
            result = BeamSearchResult(*(None if x is None else x[rows, at] for x in found))
        else:
            positions = prefix_lengths[:, None]
            found = self.oracle.search(
                packed_prefix,
                packed_reference,
                counts.gather(1, positions)[:, 0],
                return_completions=return_completions,
            )
            result = BeamSearchResult(*(None if x is None else x[:, None] for x in found))
        labels = self._as_ids(result.labels, reference_units, reference_ids)
        labels = self._punctuation(
            labels, result.labels, positions, prefix_ids, prefix_units, reference_ids, reference_units
        )
        completions = result.completions
        if completions is not None:
            flat = completions.reshape(b, -1)
            completions = self._as_ids(flat, reference_units, reference_ids).reshape(completions.shape)
        if prefix_lengths is not None:
            return BeamSearchResult(
                labels[:, 0],
                result.scores[:, 0],
                result.gold_scores[:, 0],
                None if completions is None else completions[:, 0],
            )
        return BeamSearchResult(labels, result.scores, result.gold_scores, completions)

    @staticmethod
    def _as_ids(units: torch.Tensor, reference_units: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """[B, K] units written back as the first reference id with that unit (units the reference lacks, EOS and
        -100 stay as they are)."""
        match = (reference_units[:, None, :] == units[:, :, None]) & (units[:, :, None] >= 0)
        first = match.int().argmax(-1)
        return torch.where(match.any(-1), reference_ids.gather(1, first), units)

    @staticmethod
    def _punctuation(
        labels: torch.Tensor,
        unit_labels: torch.Tensor,
        positions: torch.Tensor,
        prefix_ids: torch.Tensor,
        prefix_units: torch.Tensor,
        reference_ids: torch.Tensor,
        reference_units: torch.Tensor,
    ) -> torch.Tensor:
        """Labels [B, K] at `positions`, with the reference's punctuation where it ties (see the module docs).

        With s the last unit of prefix[:t] (-1 for none) and a the punctuation ids after it: the label is
        reference[i + 1 + a] for the first i (-1 for the start) such that reference unit i equals prefix unit s,
        more than a punctuation ids follow it in the reference, the last a of them ends as the prefix does, and the
        unit after them is the oracle's label.
        """
        b, t = prefix_ids.shape
        m = reference_ids.shape[1]
        if m == 0:
            return labels
        dev = prefix_ids.device
        # one spare column, so that an empty prefix (T = 0) gathers too
        prefix_ids = F.pad(prefix_ids, (0, 1), value=IGNORE_INDEX)
        prefix_units = F.pad(prefix_units, (0, 1), value=IGNORE_INDEX)
        index_t = torch.arange(t, device=dev).expand(b, t)
        last = torch.where(prefix_units[:, :t] != NO_UNIT, index_t, -1)
        last = F.pad(last, (1, 0), value=-1).cummax(1).values  # [B, T + 1]: the last unit's index in prefix[:t]
        s = last.gather(1, positions)  # [B, K]
        a = positions - 1 - s  # punctuation ids after it
        # the reference with a start slot: slot 0 is "before the first id", slot i + 1 is reference id i
        punct = reference_units == NO_UNIT
        index_m = torch.arange(m, device=dev).expand(b, m)
        next_unit = torch.where(punct, m, index_m).flip(1).cummin(1).values.flip(1)  # first non-punct index >= j
        next_unit = F.pad(next_unit, (0, 1), value=m)  # [B, M + 1]
        run = next_unit - torch.arange(m + 1, device=dev)  # punctuation ids starting at j
        after_unit = torch.where(
            next_unit < m, reference_units.gather(1, next_unit.clamp(max=m - 1)), IGNORE_INDEX
        )  # [B, M + 1]: the unit after the run starting at j
        # slot i + 1 (i = -1..M-1): the run starts at i + 1
        slot_run, slot_next = run, after_unit  # [B, M + 1], indexed by i + 1
        slot_unit = F.pad(reference_units, (1, 0), value=IGNORE_INDEX)  # reference unit i (slot 0: none)
        prefix_unit = torch.where(s >= 0, prefix_units.gather(1, s.clamp(min=0)), IGNORE_INDEX)  # [B, K]
        anchor = torch.where(
            (s >= 0)[:, :, None],
            (slot_unit[:, None, :] == prefix_unit[:, :, None]) & (slot_unit[:, None, :] != NO_UNIT),
            (torch.arange(m + 1, device=dev) == 0)[None, None, :],
        )  # [B, K, M + 1]
        ok = anchor & (a[:, :, None] < slot_run[:, None, :]) & (slot_next[:, None, :] == unit_labels[:, :, None])
        ok &= (unit_labels >= 0)[:, :, None]
        # the a punctuation ids the prefix already has end as the reference's do: prefix[t - 1] == reference[i + a]
        slots = torch.arange(m + 1, device=dev)
        echo = (slots[None, None, :] - 1 + a[:, :, None]).clamp(0, m - 1)  # reference index i + a
        previous = prefix_ids.gather(1, (positions - 1).clamp(min=0))  # [B, K]
        same = reference_ids[:, None, :].expand(-1, positions.shape[1], -1).gather(2, echo) == previous[:, :, None]
        ok &= (a[:, :, None] == 0) | same
        target = (slots[None, None, :] + a[:, :, None]).clamp(max=m - 1)  # reference index i + 1 + a
        choice = ok.int().argmax(-1, keepdim=True)
        punctuation = reference_ids[:, None, :].expand(-1, positions.shape[1], -1).gather(2, target.gather(2, choice))
        return torch.where(ok.any(-1), punctuation[:, :, 0], labels)
