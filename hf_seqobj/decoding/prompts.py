"""The prompts and targets of decoder-only examples, shared by roll-ins and by evaluation with `generate`."""

from __future__ import annotations

import torch

from hf_seqobj.constants import IGNORE_INDEX


def split_prompts(
    input_ids: torch.Tensor, labels: torch.Tensor, pad_token_id: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cuts the prompt off each decoder-only example and left-pads the prompts for `generate`.

    A decoder-only example is `prompt + target`, with `labels == ignore_index` on the prompt. The prompt of a row is
    everything before its first label.

    Args:
        input_ids: `[batch, length]` full examples (any padding after the target is ignored).
        labels: `[batch, length]` labels aligned with `input_ids`.
        pad_token_id: The id used for left padding.
        ignore_index: The label value on prompt (and padding) positions.

    Returns:
        `(prompt_ids, attention_mask)`, both `[batch, longest prompt]`, left-padded.

    Raises:
        ValueError: a row has no label at all (no target), so its prompt is undefined.
    """
    has_label = labels != ignore_index
    if not bool(has_label.any(dim=1).all()):
        bad = (~has_label.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"Rows {bad} of the batch have no target label, so their prompt cannot be found.")
    prompt_lengths = has_label.int().argmax(dim=1)
    width = int(prompt_lengths.max())
    # column c of a row's left-padded prompt holds its token c - (width - length), when that is >= 0
    source = torch.arange(width, device=input_ids.device)[None, :] - (width - prompt_lengths)[:, None]
    attention_mask = (source >= 0).long()
    prompt_ids = input_ids.gather(1, source.clamp(min=0)).masked_fill(source < 0, pad_token_id)
    return prompt_ids, attention_mask


def left_align(
    values: torch.Tensor, keep: torch.Tensor, fill: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moves the kept entries of each row to its left, in order, padded with `fill`.

    Returns:
        `(aligned [B, max kept (>= 1)], kept per row [B])`.
    """
    counts = keep.long().sum(1)
    width = max(int(counts.max()) if keep.shape[0] else 0, 1)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]
    if order.shape[1] < width:  # rows narrower than one column
        order = torch.nn.functional.pad(order, (0, width - order.shape[1]))
    aligned = values.gather(1, order) if values.shape[1] else values.new_full((values.shape[0], width), fill)
    column = torch.arange(width, device=values.device)[None, :]
    return aligned.masked_fill(column >= counts[:, None], fill), counts


def gather_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Moves the labelled positions of each row to the left, padded with `ignore_index` (decoder-only targets)."""
    return left_align(labels, labels != ignore_index, ignore_index)[0]
