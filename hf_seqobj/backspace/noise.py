"""Backspace noise in training targets: a random wrong token followed by `<bksp>` (the wrong token is no
target, the `<bksp>` after it is)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    PreTrainedTokenizerBase,
)

from hf_seqobj.backspace.layout import build_backspace_batch
from hf_seqobj.constants import IGNORE_INDEX


def _check_candidates(candidates: torch.Tensor) -> None:
    if candidates.numel() < 2:
        raise ValueError(f"Backspace noise needs at least two candidate tokens, got {candidates.numel()}.")
    if bool((candidates[1:] <= candidates[:-1]).any()):
        raise ValueError("Backspace noise candidates must be sorted and distinct (as noise_candidates gives them).")


def _wrong_tokens(gold: torch.Tensor, candidates: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The wrong token of each position from a uniform draw in [0, 1): uniform over the candidates other than the gold
    token (its index is skipped when it is a candidate, a digit say), or over all of them when the gold token is no
    candidate (EOS, a special token)."""
    count = candidates.numel()
    gold_index = torch.searchsorted(candidates, gold)
    is_candidate = candidates[gold_index.clamp(max=count - 1)] == gold
    choices = torch.where(is_candidate, count - 1, count)
    picks = torch.minimum((uniforms * choices).long(), choices - 1)
    return candidates[picks + (is_candidate & (picks >= gold_index)).long()]


def insert_backspace_noise(
    targets: Sequence[int],
    prob: float,
    bksp_id: int,
    candidates: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[int]]:
    """Backspace noise: before each target position, with probability `prob`, a random wrong token and `<bksp>`.

    The wrong token is drawn uniformly from `candidates` other than the gold token at that position (from all of them
    when the gold token is no candidate, as EOS is not). It is not a training target (label -100); the action after
    it is `<bksp>`, whose target is `<bksp>`; then the gold token follows as usual.

    Args:
        targets: The gold actions (tokens, ending with EOS).
        prob: Probability per position of inserting a wrong token and `<bksp>`, in [0, 1].
        bksp_id: The id of `<bksp>`.
        candidates: 1-D sorted tensor of distinct token ids the wrong tokens are drawn from (at least two).
        generator: The source of the draws (CPU).

    Returns:
        `(actions, labels)`.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"The backspace noise probability must be in [0, 1], got {prob}.")
    _check_candidates(candidates)
    targets = [int(t) for t in targets]
    if prob == 0.0 or not targets:
        return list(targets), list(targets)
    draws = torch.rand(len(targets), generator=generator) < prob
    uniforms = torch.rand(len(targets), generator=generator, dtype=torch.float64)
    wrongs = _wrong_tokens(torch.tensor(targets, dtype=torch.long), candidates, uniforms).tolist()
    actions: list[int] = []
    labels: list[int] = []
    for position, gold in enumerate(targets):
        if bool(draws[position]):
            actions += [wrongs[position], bksp_id]
            labels += [IGNORE_INDEX, bksp_id]
        actions.append(gold)
        labels.append(gold)
    return actions, labels


def insert_backspace_noise_batch(
    targets: torch.Tensor,
    lengths: torch.Tensor,
    prob: float,
    bksp_id: int,
    candidates: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    pad_token_id: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`insert_backspace_noise` for a padded batch: the same draws, and the insertion done on tensors.

    Row b draws from `generators[b]` exactly what :func:`insert_backspace_noise` draws for it (so a row's noise is
    the same in either form, and in any batch split when the generators are keyed by row); the wrong tokens, the
    `<bksp>` actions and the shifted gold tokens are then placed for every row at once.

    Args:
        targets: [B, M] gold actions, left-aligned (anything past `lengths`).
        lengths: [B] gold actions per row.
        prob: Probability per position of inserting a wrong token and `<bksp>`, in [0, 1].
        bksp_id: The id of `<bksp>`.
        candidates: 1-D sorted tensor of distinct token ids the wrong tokens are drawn from (at least two).
        generators: One source of draws per row (CPU).
        pad_token_id: Fills the actions after each row's end.

    Returns:
        `(actions [B, T], labels [B, T] (-100 on the wrong tokens and after each row's end), num_actions [B])`.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"The backspace noise probability must be in [0, 1], got {prob}.")
    _check_candidates(candidates)
    batch, width = targets.shape
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for {batch} rows; accepted: one per row.")
    device = targets.device
    lengths = lengths.to(device).long()
    column = torch.arange(width, device=device)[None, :]
    valid = column < lengths[:, None]
    targets = targets.long()
    if prob == 0.0 or width == 0:
        actions = targets.masked_fill(~valid, pad_token_id)
        return actions, targets.masked_fill(~valid, IGNORE_INDEX), lengths
    draws = torch.zeros((batch, width), dtype=torch.bool)
    uniforms = torch.zeros((batch, width), dtype=torch.float64)
    for row, (generator, length) in enumerate(zip(generators, lengths.tolist(), strict=True)):
        if length:  # the draws of insert_backspace_noise, in its order
            draws[row, :length] = torch.rand(length, generator=generator) < prob
            uniforms[row, :length] = torch.rand(length, generator=generator, dtype=torch.float64)
    noise = draws.to(device) & valid
    wrong = _wrong_tokens(targets, candidates.to(device), uniforms.to(device))
    at = column + 2 * noise.long().cumsum(1)  # where gold action j lands
    num_actions = lengths + 2 * noise.long().sum(1)
    steps = int(num_actions.max()) if batch else 0
    actions = torch.full((batch, steps + 1), pad_token_id, dtype=torch.long, device=device)
    labels = torch.full((batch, steps + 1), IGNORE_INDEX, dtype=torch.long, device=device)
    gold_at = torch.where(valid, at, steps)  # column `steps` collects what is not placed
    actions.scatter_(1, gold_at, targets)
    labels.scatter_(1, gold_at, targets)
    actions.scatter_(1, torch.where(noise, at - 2, steps), wrong)
    bksp_at = torch.where(noise, at - 1, steps)
    actions.scatter_(1, bksp_at, torch.full_like(targets, bksp_id))
    labels.scatter_(1, bksp_at, torch.full_like(targets, bksp_id))
    return actions[:, :steps], labels[:, :steps], num_actions


def noise_candidates(tokenizer: PreTrainedTokenizerBase, bksp_id: int | None = None) -> torch.Tensor:
    """The ids backspace noise draws wrong tokens from: the vocabulary without special tokens and `<bksp>`."""
    special = set(tokenizer.all_special_ids) | ({bksp_id} if bksp_id is not None else set())
    ids = [index for index in range(len(tokenizer)) if index not in special]
    return torch.tensor(ids, dtype=torch.long)


class BackspaceDataCollator:
    """Collates tokenized examples into one-pass backspace batches, with optional backspace noise.

    Takes the examples the tasks make (`input_ids`, `labels`; decoder-only: prompt + target with -100 on the
    prompt) and returns a batch for :func:`backspace_forward`: the layout's `input_ids`, `position_ids`, `attend`,
    `step_labels` (the target of each action, step layout), and for encoder-decoders the encoder's `encoder_input_ids`
    and `encoder_attention_mask`. `labels` holds the targets in the model's own convention (decoder-only: aligned
    with `input_ids`, shifted by the model; encoder-decoder: aligned with the decoder inputs), so the token NLL of
    `backspace_forward(...).logits` against them is MLE with backspace noise.

    Args:
        tokenizer: Gives the pad id and the noise candidates.
        bksp_token_id: The id of `<bksp>`.
        encoder_decoder: Whether the model is an encoder-decoder.
        decoder_start_token_id: The decoder start token (encoder-decoder only).
        noise_prob: Backspace noise probability per target position (0: none).
        seed: Seed of the collator's own generator for the noise.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        bksp_token_id: int,
        encoder_decoder: bool,
        decoder_start_token_id: int | None = None,
        noise_prob: float = 0.0,
        seed: int = 0,
    ):
        if encoder_decoder and decoder_start_token_id is None:
            raise ValueError("An encoder-decoder BackspaceDataCollator needs decoder_start_token_id.")
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}.")
        self.tokenizer = tokenizer
        self.bksp_token_id = bksp_token_id
        self.encoder_decoder = encoder_decoder
        self.decoder_start_token_id = decoder_start_token_id
        self.noise_prob = noise_prob
        self.candidates = noise_candidates(tokenizer, bksp_token_id)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prefixes, targets = split_examples(features, self.encoder_decoder, self.decoder_start_token_id)
        noised = [
            insert_backspace_noise(row, self.noise_prob, self.bksp_token_id, self.candidates, self.generator)
            for row in targets
        ]
        pad = self.tokenizer.pad_token_id
        batch = build_backspace_batch(
            prefixes, [a for a, _ in noised], self.bksp_token_id, pad, labels=[lab for _, lab in noised]
        )
        batch["labels"] = model_labels(batch, self.encoder_decoder)
        if self.encoder_decoder:
            sources = [list(f["input_ids"]) for f in features]
            longest = max(len(s) for s in sources)
            batch["encoder_input_ids"] = torch.tensor([s + [pad] * (longest - len(s)) for s in sources])
            batch["encoder_attention_mask"] = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sources])
        return batch


def split_examples(
    features: Sequence[dict], encoder_decoder: bool, decoder_start_token_id: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """Per example, the protected prefix and the target actions (task examples, unpadded or padded with -100)."""
    prefixes, targets = [], []
    for feature in features:
        labels = [int(x) for x in feature["labels"]]
        if encoder_decoder:
            prefixes.append([int(decoder_start_token_id)])
            targets.append([x for x in labels if x != IGNORE_INDEX])
            continue
        ids = [int(x) for x in feature["input_ids"]]
        first = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), None)
        if first is None:
            raise ValueError("A decoder-only example has no target label, so its prompt cannot be found.")
        mask = feature.get("attention_mask")
        end = len(ids) if mask is None else first + sum(int(m) for m in list(mask)[first:])
        prefixes.append(ids[:first])
        targets.append(ids[first:end])
    return prefixes, targets


def model_labels(batch: dict[str, torch.Tensor], encoder_decoder: bool) -> torch.Tensor:
    """The layout's step labels in the model's convention (see :class:`BackspaceDataCollator`)."""
    step_labels = batch["step_labels"]
    width = int(batch["prefix_width"])
    full = torch.full(batch["input_ids"].shape, IGNORE_INDEX, dtype=torch.long)
    if encoder_decoder:  # decoder input t is followed by action t
        full[:, : step_labels.shape[1]] = step_labels
    else:  # the model shifts: the label at column W + t is predicted from column W - 1 + t
        full[:, width:] = step_labels
    return full
