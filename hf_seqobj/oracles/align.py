"""What the BLEU / ROUGE oracles share: alignment to the reference, the stop rule and the whole-word rule.

Alignment
---------
A roll-in prefix p is aligned to the reference r (tokens before EOS, length R) by edit distance (unit costs for
substitution, insertion and deletion), as Optimal Completion Distillation (Sabour et al. 2018) does: with
D[i] = ED(p, r[:i]) for i = 0..R, the aligned position is j(p) = the largest i with D[i] = min D, so that a
substituted word counts as the reference word it replaced and the prefix's next reference word is r[j(p)]. The
oracles take their fallback token, their tie-breaks and the reference suffix that finishes a completion from j(p),
never from the prefix's absolute position t (which is off by one after every insertion or deletion).

The row D is updated for one appended token a in O(R): D'[0] = D[0] + 1 and
D'[i] = min(D[i - 1] + [r[i - 1] != a], D[i] + 1, D'[i - 1] + 1), the last term a running minimum
(D'[i] = i + min_{i' <= i} (X[i'] - i') for the first two terms X).

Stop rule (`stop`)
------------------
- "reference_length" (SEARNN's cap): a completion never makes the output longer than the reference, and once the
  prefix holds as many tokens as the reference (counted before EOS) the label is EOS, whatever is still missing.
  Corpus BLEU (what translation reports) punishes outputs that run on, which the sentence metric alone rewards:
  each appended missing reference word adds a unigram match.
- "metric": the sentence metric alone decides when to stop (completions of any length).

Under the cap a word is never cut: a prefix at or past the reference's length that ends inside a reference word
(its last token is the reference token before the aligned position, and the aligned token continues a word) is
labelled with the word's next piece instead of EOS (:func:`finish_word`); EOS follows once the word is whole.
Measured on SAMSum validation summaries (byte-level BPE of 8000, 30% of the words replaced, oracles followed
greedily from a random cut), 5-20% of the followed outputs ended inside a word without this rule.

Whole words (`continuation_ids`)
--------------------------------
With a sub-word tokenizer, ids that continue a word (byte-level BPE pieces without the leading-space marker "Ġ",
SentencePiece pieces without "▁") may start a label only where the aligned reference continues with that very id
(r[j(p)]): a label never starts a word piece that the reference does not continue there.
"""

from __future__ import annotations

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.rewards import check_token_ids


__all__ = [
    "STOP_RULES",
    "aligned_position",
    "check_oracle_ids",
    "check_search_inputs",
    "continuation_mask",
    "edit_distance_append",
    "edit_distance_rows",
    "finish_word",
    "open_prefixes",
    "stop_tokens",
]

STOP_RULES = ("reference_length", "metric")
"""The accepted values of an oracle's `stop`: the reference-length cap, or the sentence metric alone."""

_ED = torch.int32


def check_stop(stop: object) -> str:
    """Returns `stop` if it is one of `STOP_RULES`, else raises a one-line ValueError."""
    if stop not in STOP_RULES:
        raise ValueError(f"stop = {stop!r}; accepted: {', '.join(repr(s) for s in STOP_RULES)}.")
    return stop


def check_int(name: str, value: object, low: int) -> int:
    """Returns `value` if it is an int >= `low` (not a bool), else raises a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} = {value!r}; accepted: an int >= {low}.")
    return value


def check_oracle_ids(eos_token_id: object, pad_token_id: object, continuation_ids: object) -> None:
    """Raises a one-line ValueError unless the EOS id is an int >= 0, the pad id None or an int >= 0, and
    `continuation_ids` None or a 1-D bool tensor (the arguments every text oracle takes)."""
    for name, value, optional in (("eos_token_id", eos_token_id, False), ("pad_token_id", pad_token_id, True)):
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} = {value!r}; accepted: {'None or ' if optional else ''}an int token id >= 0.")
    if continuation_ids is not None and (
        not isinstance(continuation_ids, torch.Tensor)
        or continuation_ids.dtype != torch.bool
        or continuation_ids.dim() != 1
    ):
        raise ValueError(f"continuation_ids = {continuation_ids!r}; accepted: None or a 1-D bool tensor.")


def check_search_inputs(
    prefix_ids: torch.Tensor, reference_ids: torch.Tensor, prefix_lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The inputs of a text oracle's search as tensors, checked: `prefix_ids` [B, T] token ids, `reference_ids`
    [B, R], `prefix_lengths` None or [B] integers in [0, T] (returned as int64 on the device of `prefix_ids`).

    Raises:
        ValueError: One line naming the first input that is not accepted.
    """
    prefix_ids, reference_ids = torch.as_tensor(prefix_ids), torch.as_tensor(reference_ids)
    if prefix_ids.dim() != 2 or reference_ids.dim() != 2 or prefix_ids.shape[0] != reference_ids.shape[0]:
        raise ValueError(
            f"prefix_ids {tuple(prefix_ids.shape)} and reference_ids {tuple(reference_ids.shape)}; accepted: "
            "[B, T] and [B, R] with the same B."
        )
    check_token_ids(prefix_ids, "prefix_ids")
    b, t = prefix_ids.shape
    if prefix_lengths is not None:
        prefix_lengths = torch.as_tensor(prefix_lengths, device=prefix_ids.device)
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
            raise ValueError(f"prefix_lengths[{row}] = {int(prefix_lengths[row])}; accepted: 0 <= length <= T = {t}.")
        prefix_lengths = prefix_lengths.long()
    return prefix_ids, reference_ids, prefix_lengths


def stop_tokens(tokens: torch.Tensor, eos_token_id: int, pad_token_id: int | None) -> torch.Tensor:
    """Where a roll-in ends: EOS, -100, or the padding id (a bool tensor of the shape of `tokens`)."""
    stop = (tokens == eos_token_id) | (tokens == IGNORE_INDEX)
    if pad_token_id is not None:
        stop |= tokens == pad_token_id
    return stop


def open_prefixes(prefix: torch.Tensor, eos_token_id: int, pad_token_id: int | None) -> torch.Tensor:
    """[B, T + 1] bool: open[b, t] = prefix[b, :t] holds no stop token (:func:`stop_tokens`), so position t is
    labelled."""
    stops = stop_tokens(prefix, eos_token_id, pad_token_id).long().cumsum(1)
    return torch.nn.functional.pad(stops, (1, 0)) == 0


def edit_distance_append(ed: torch.Tensor, eq: torch.Tensor) -> torch.Tensor:
    """The edit-distance row after appending one token.

    Args:
        ed: [..., R + 1] D[i] = ED(prefix, r[:i]).
        eq: [..., R] bool, r[i] == the appended token (False past the reference).

    Returns:
        [..., R + 1] the new row.
    """
    x = torch.minimum(ed[..., :-1] + (~eq).to(ed.dtype), ed[..., 1:] + 1)
    x = torch.cat([(ed[..., :1] + 1).expand(*x.shape[:-1], 1), x], -1)
    idx = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
    return torch.cummin(x - idx, -1).values + idx


def edit_distance_rows(prefix: torch.Tensor, ref: torch.Tensor, ref_valid: torch.Tensor) -> torch.Tensor:
    """The rows D of every prefix prefix[:, :t], t = 0..T, against compacted references.

    Args:
        prefix: [B, T] token ids.
        ref: [B, R] compacted reference ids.
        ref_valid: [B, R] bool, inside the reference.

    Returns:
        [B, T + 1, R + 1] int32.
    """
    b, t = prefix.shape
    r = ref.shape[1]
    row = torch.arange(r + 1, device=ref.device, dtype=_ED).expand(b, r + 1)
    rows = [row]
    eq = (prefix[:, :, None] == ref[:, None, :]) & ref_valid[:, None, :]
    for s in range(t):
        row = edit_distance_append(row, eq[:, s])
        rows.append(row)
    return torch.stack(rows, 1)


def aligned_position(ed: torch.Tensor, ref_len: torch.Tensor) -> torch.Tensor:
    """j = the largest i <= ref_len with ed[..., i] minimal.

    Args:
        ed: [N, *S, R + 1] edit-distance rows.
        ref_len: [N] reference lengths.

    Returns:
        [N, *S] int64.
    """
    r1 = ed.shape[-1]
    idx = torch.arange(r1, device=ed.device)
    limit = ref_len.view(ref_len.shape[0], *[1] * (ed.dim() - 1))
    masked = torch.where(idx <= limit, ed, torch.iinfo(ed.dtype).max)
    return (r1 - 1) - masked.flip(-1).argmin(-1)


def last_tokens(prefix: torch.Tensor, prefix_lengths: torch.Tensor | None) -> torch.Tensor:
    """The token before each labelled position: [B, T] (prefix[:, t - 1], -100 at t = 0) or, with
    `prefix_lengths`, [B, 1] (prefix[b, length - 1], -100 for length 0)."""
    padded = torch.nn.functional.pad(prefix, (1, 0), value=IGNORE_INDEX)
    if prefix_lengths is None:
        return padded[:, : prefix.shape[1]]
    return padded.gather(1, prefix_lengths[:, None])


def finish_word(
    labels: torch.Tensor,
    length: torch.Tensor,
    aligned: torch.Tensor,
    last: torch.Tensor,
    ref: torch.Tensor,
    ref_len: torch.Tensor,
    continues: torch.Tensor,
) -> torch.Tensor:
    """Labels [B, M] under the cap with no word cut (module docs): where the prefix has at least the reference's
    length, its last token `last` is ref[j - 1] and ref[j] continues a word (j the aligned position, j < R), the
    label is ref[j].

    Args:
        labels: [B, M] the oracle's labels.
        length: [B, M] the prefixes' lengths; aligned: [B, M] their aligned positions; last: [B, M] their last
            tokens (-100 for empty prefixes).
        ref: [B, R] reference tokens; ref_len: [B] their lengths; continues: [B, R] whether each continues a word.
    """
    r = ref.shape[1]
    if r == 0:
        return labels
    at = aligned.clamp(max=r - 1)
    before = ref.gather(1, (aligned - 1).clamp(min=0))
    inside = (
        (length >= ref_len[:, None])
        & (aligned > 0)
        & (aligned < ref_len[:, None])
        & continues.gather(1, at)
        & (before == last)
    )
    return torch.where(inside, ref.gather(1, at), labels)


def continuation_mask(vocab: dict[str, int], size: int | None = None) -> torch.Tensor:
    """A bool tensor over ids: True for the ids that continue a word (see the module docstring).

    A vocabulary with a word-start marker ("Ġ" of byte-level BPE, "▁" of SentencePiece) marks a piece as
    continuing a word when it lacks the marker; special tokens (written "<...>") are never continuations. A
    vocabulary with neither marker (whitespace-split words) has no continuations.

    Args:
        vocab: token -> id (a tokenizer's `get_vocab()`).
        size: Length of the mask (default: the largest id + 1).
    """
    size = max(vocab.values(), default=-1) + 1 if size is None else size
    mask = torch.zeros(max(size, 0), dtype=torch.bool)
    markers = [m for m in ("Ġ", "▁") if any(tok.startswith(m) for tok in vocab)]
    if not markers:
        return mask
    for token, index in vocab.items():
        if 0 <= index < size and not token.startswith(tuple(markers)):
            special = token.startswith("<") and token.endswith(">")
            mask[index] = not special
    return mask
