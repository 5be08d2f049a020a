"""Generation helpers shared by evaluation and (later) roll-ins: prompts of decoder-only examples, configs."""

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
    batch = input_ids.shape[0]
    prompt_ids = torch.full((batch, width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    attention_mask = torch.zeros((batch, width), dtype=torch.long, device=input_ids.device)
    for row, length in enumerate(prompt_lengths.tolist()):
        if length:
            prompt_ids[row, width - length :] = input_ids[row, :length]
            attention_mask[row, width - length :] = 1
    return prompt_ids, attention_mask


def gather_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Moves the labelled positions of each row to the left, padded with `ignore_index` (decoder-only targets)."""
    keep = labels != ignore_index
    width = max(int(keep.sum(dim=1).max()), 1)
    targets = torch.full((labels.shape[0], width), ignore_index, dtype=labels.dtype, device=labels.device)
    for row in range(labels.shape[0]):
        values = labels[row][keep[row]]
        targets[row, : values.numel()] = values
    return targets
