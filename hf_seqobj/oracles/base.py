"""What every oracle is, and how to get one by name.

A dynamic oracle answers: given the gold output and ANY prefix, which next token keeps the best reachable score of
the metric? The exact span-F1 oracles (:mod:`.span_f1`) answer it exactly for BIO tagging; the beam-search oracles
(:mod:`.beam`) search whole completions for BLEU and ROUGE-2; :mod:`.exact` answers exactly for ROUGE-L and
ROUGE-1. The text oracles share an alignment, a stop rule and a whole-word rule (:mod:`.align`). All have the
interface of :class:`Oracle`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from hf_seqobj.oracles.align import continuation_mask
from hf_seqobj.oracles.beam import BeamOracle
from hf_seqobj.oracles.exact import EXACT_METRICS, ExactRougeOracle
from hf_seqobj.oracles.span_f1 import BIOTagSet, SpanF1Oracle


@runtime_checkable
class Oracle(Protocol):
    """The interface of a dynamic oracle over token ids.

    `oracle(prefix_ids, reference_ids)` labels every position of a batch of roll-ins at once: label[b, t] is the
    oracle's next token after `prefix_ids[b, :t]` (-100 once that prefix holds EOS). `oracle.next_token(prefix_ids,
    prefix_lengths, reference_ids)` gives the next token after each row's prefix only (what a roll-in that mixes in
    the oracle's tokens calls at every step).
    """

    def __call__(self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] oracle labels for every position of `prefix_ids` [B, T], given `reference_ids` [B, M]."""
        ...

    def next_token(
        self, prefix_ids: torch.Tensor, prefix_lengths: torch.Tensor, reference_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B] the oracle's token after `prefix_ids[b, :prefix_lengths[b]]`."""
        ...


ORACLES = ("span_f1", "span_f1_partial", "bleu", "rouge1", "rouge2", "rougeL")
"""The accepted values of `oracle`: the exact span-F1 oracles (NER), the beam-search BLEU / ROUGE-2 oracles and the
exact ROUGE-1 / ROUGE-L oracles."""

EXACT_ORACLES = ("span_f1", "span_f1_partial", "rouge1", "rougeL")
"""The oracles that are exact (the others search)."""


def make_oracle(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    beam_size: int = 5,
    lookahead: int = 0,
    stop: str = "reference_length",
    whole_words: bool = True,
) -> Oracle:
    """The oracle called `name` for outputs tokenized by `tokenizer`.

    Args:
        name: One of `ORACLES`. `span_f1` / `span_f1_partial`: the exact oracle for BIO tag outputs (the tags are
            the BIO tokens of the tokenizer's vocabulary). `bleu`, `rouge2`: the beam search over whole completions
            (:class:`BeamOracle`); `rouge1`, `rougeL`: the exact oracles (:class:`ExactRougeOracle`).
        tokenizer: Gives the EOS and pad ids (and, for span F1, the tag tokens; for text, the word-start marks).
        beam_size: Beam size k of the BLEU / ROUGE-2 oracle.
        lookahead: Free tokens h the BLEU / ROUGE-2 oracle searches before the aligned reference suffix (0: the
            best reference tail).
        stop: The text oracles' stop rule, "reference_length" or "metric" (:mod:`hf_seqobj.oracles.align`).
        whole_words: The text oracles start no word piece that the aligned reference does not continue.

    Returns:
        An oracle: `oracle(prefix_ids [B, T], reference_ids [B, M]) -> labels [B, T]` and
        `oracle.next_token(prefix_ids, prefix_lengths, reference_ids) -> [B]`.
    """
    if name not in ORACLES:
        raise ValueError(f"oracle must be one of {ORACLES}, got {name!r}.")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The oracles need the tokenizer's EOS token; this tokenizer has none.")
    if name.startswith("span_f1"):
        tag_set = BIOTagSet.infer_from_vocab(tokenizer.get_vocab())
        mode = "partial" if name == "span_f1_partial" else "exact"
        return SpanF1Oracle(tag_set, eos, mode=mode, pad_token_id=tokenizer.pad_token_id)
    continuation = continuation_mask(tokenizer.get_vocab(), len(tokenizer)) if whole_words else None
    if name in EXACT_METRICS:
        return ExactRougeOracle(
            name, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, stop=stop, continuation_ids=continuation
        )
    return BeamOracle(
        metric=name,
        beam_size=beam_size,
        lookahead=lookahead,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        stop=stop,
        continuation_ids=continuation,
    )
