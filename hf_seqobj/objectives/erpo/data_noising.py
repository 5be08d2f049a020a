"""Data noising (Xie et al. 2017, unigram noising), a point of the ERPO family (docs/data_noising.md).

Each target token is replaced, with probability gamma, by a draw from the unigram distribution of the training
targets; optionally the source tokens too, from the unigram distribution of the training sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.objectives.base import Objective, register_objective
from hf_seqobj.objectives.erpo.common import (
    TAN2018,
    model_vocab_size,
    rebuild_decoder_inputs,
    row_generators,
    special_token_ids,
    target_positions,
)


@dataclass
class DataNoisingArguments:
    """Settings of `objective="data_noising"`."""

    noising_prob: float = field(
        default=0.1,
        metadata={
            "help": "gamma: probability that a target token (not the final EOS, no special token) is replaced by a "
            "draw from the unigram distribution of the training targets; 0 is MLE."
        },
    )
    noising_sources: bool = field(
        default=False,
        metadata={
            "help": "Noise the source tokens too (the encoder input, or a decoder-only prompt), with the same "
            "probability, from the unigram distribution of the training sources."
        },
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        if not 0.0 <= self.noising_prob <= 1.0:
            raise ValueError(f"noising_prob must be in [0, 1], got {self.noising_prob}.")


def unigram_distribution(
    sequences: Iterable[Sequence[int]], vocab_size: int, exclude: Sequence[int] = ()
) -> torch.Tensor:
    """The unigram distribution of token ids over `sequences` (-100 and the `exclude` ids not counted).

    Returns:
        [vocab_size] float64 probabilities (all zero when nothing was counted).

    Raises:
        ValueError: A token id is >= vocab_size.
    """
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for sequence in sequences:
        ids = torch.as_tensor(list(sequence), dtype=torch.long)
        ids = ids[ids >= 0]
        if ids.numel() and int(ids.max()) >= vocab_size:
            raise ValueError(f"Token id {int(ids.max())} is outside the model's vocabulary of {vocab_size}.")
        counts += torch.bincount(ids, minlength=vocab_size).double()
    if exclude:
        counts[torch.as_tensor([i for i in exclude if 0 <= i < vocab_size], dtype=torch.long)] = 0.0
    total = counts.sum()
    return counts / total if total > 0 else counts


def unigram_noise(
    tokens: torch.Tensor,
    noisable: torch.Tensor,
    prob: float,
    unigram: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces each noisable token, with probability `prob`, by a draw from `unigram`.

    Row b draws from `generators[b]`: one uniform per noisable token of the row, then one unigram draw per noisable
    token (so a row's draws depend on its own tokens only, not on the padding of its batch).

    Args:
        tokens: [B, L] token ids.
        noisable: [B, L] bool, the positions that may be replaced.
        prob: gamma, the replacement probability.
        unigram: [V] the distribution replacements are drawn from.
        generators: One generator per row.

    Returns:
        `(noised tokens [B, L], replaced mask [B, L])`.
    """
    if len(generators) != tokens.shape[0]:
        raise ValueError(f"{len(generators)} generators for {tokens.shape[0]} rows.")
    noised = tokens.clone()
    replaced = torch.zeros_like(noisable)
    if prob <= 0.0:
        return noised, replaced
    if float(unigram.sum()) <= 0.0:
        raise ValueError("The unigram distribution is empty: no training token to draw replacements from.")
    for row, generator in enumerate(generators):
        positions = noisable[row].nonzero().flatten()
        count = positions.numel()
        if count == 0:
            continue
        hit = torch.rand(count, generator=generator) < prob
        draws = torch.multinomial(unigram.float().cpu(), count, replacement=True, generator=generator)
        hit = hit.to(tokens.device)
        noised[row, positions[hit]] = draws.to(tokens.device)[hit]
        replaced[row, positions[hit]] = True
    return noised, replaced


@register_objective(
    "data_noising",
    settings=(DataNoisingArguments,),
    papers=(TAN2018,),
    description="data noising (ERPO family)",
)
class DataNoisingObjective(Objective):
    """`objective="data_noising"`: teacher forcing on targets (and optionally sources) with unigram noise.

    Which sequence is noised (our choice, following Xie et al. 2017 as ERPO uses it): the target sequence itself.
    A noised target token replaces the gold one both as the decoder input and as the label (decoder-only: the
    token at that position of `input_ids` and its label; encoder-decoder: the label, the decoder inputs being
    shifted from the noised labels again). So the model is trained by maximum likelihood on the noised data, the
    ERPO reading of data noising as a smoothed (non-delta) target distribution. The final token of each target
    (EOS) and special tokens are never noised. With `noising_sources`, source tokens (encoder inputs, or the prompt
    of a decoder-only example, special tokens excluded) are noised with the same probability from the unigram
    distribution of the training sources.

    The unigram distributions are counted once, on first use, from the trainer's `train_dataset` (its `labels`;
    and its `input_ids` outside the labels, for sources). Draws come from each example's own random stream
    (:func:`~hf_seqobj.objectives.erpo.row_generators`).

    The loss is :meth:`Objective.teacher_forced_loss` on the noised batch: the token cross-entropy summed and
    divided by the Trainer's `num_items_in_batch` (the noised batch has the gold batch's labelled positions), so
    gradient accumulation makes the same update as one big batch and `noising_prob=0` is MLE exactly.

    Logged (train): `noising_rate` (fraction of noisable target tokens replaced), `noising_source_rate`.
    """

    def __init__(self, trainer):
        super().__init__(trainer)
        tokenizer = trainer.processing_class
        if tokenizer is None:
            raise ValueError("objective='data_noising' needs the trainer's processing_class (the tokenizer).")
        self.special = special_token_ids(tokenizer)
        self.vocab_size = model_vocab_size(trainer.accelerator.unwrap_model(trainer.model))
        self._target_unigram: torch.Tensor | None = None
        self._source_unigram: torch.Tensor | None = None

    def unigrams(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(target unigram [V], source unigram [V] or None)`, counted from the training set on first use."""
        if self._target_unigram is None:
            dataset = self.trainer.train_dataset
            names = getattr(dataset, "column_names", None)
            if dataset is None or names is None or "labels" not in names:
                raise ValueError(
                    "objective='data_noising' counts its unigram distribution from the trainer's train_dataset, which "
                    f"must be a datasets.Dataset with a 'labels' column; got {type(dataset).__name__}."
                )
            labels = dataset["labels"]
            self._target_unigram = unigram_distribution(labels, self.vocab_size, self.special)
            if self.trainer.args.noising_sources:
                self._source_unigram = unigram_distribution(
                    self._sources(dataset["input_ids"], labels), self.vocab_size, self.special
                )
        return self._target_unigram, self._source_unigram

    def _sources(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> Iterable[list[int]]:
        encoder_decoder = bool(self.trainer.accelerator.unwrap_model(self.trainer.model).config.is_encoder_decoder)
        for ids, row_labels in zip(input_ids, labels):
            if encoder_decoder:
                yield list(ids)
            else:
                yield [token for token, label in zip(ids, row_labels) if label == IGNORE_INDEX]

    def source_positions(self, inputs: dict, encoder_decoder: bool) -> torch.Tensor:
        """[B, L] bool: the source tokens of `input_ids` (attended, not special; decoder-only: before the target)."""
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        positions = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
        positions &= ~torch.isin(input_ids, torch.as_tensor(self.special, device=input_ids.device))
        if not encoder_decoder:
            before_target = (inputs["labels"] != IGNORE_INDEX).long().cumsum(1) == 0
            positions &= before_target
        return positions

    def training_loss(self, model, inputs, num_items_in_batch):
        trainer = self.trainer
        args = trainer.args
        prob = args.noising_prob
        labels = inputs["labels"]
        unwrapped = trainer.accelerator.unwrap_model(model)
        encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
        with self.timed("noising"):
            target_unigram, source_unigram = self.unigrams()
            generators = row_generators(self, labels.shape[0])
            _, changeable = target_positions(labels)
            changeable &= ~torch.isin(labels, torch.as_tensor(self.special, device=labels.device))
            new_labels, replaced = unigram_noise(labels, changeable, prob, target_unigram, generators)
            batch = dict(inputs)
            if args.noising_sources:
                sources = self.source_positions(inputs, encoder_decoder)
                batch["input_ids"], source_replaced = unigram_noise(
                    batch["input_ids"], sources, prob, source_unigram, generators
                )
                self.record_metric("noising_source_rate", source_replaced.sum() / sources.sum().clamp(min=1))
            if not encoder_decoder:
                batch["input_ids"] = torch.where(replaced, new_labels, batch["input_ids"])
            batch = rebuild_decoder_inputs(unwrapped, batch, new_labels)
        self.record_metric("noising_rate", replaced.sum() / changeable.sum().clamp(min=1))
        loss, outputs = self.teacher_forced_loss(model, batch, num_items_in_batch)
        return loss, outputs
