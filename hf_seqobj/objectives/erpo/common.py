"""What the ERPO family objectives share: random streams, target positions, reward gains.

The four objectives of the family (`raml`, `data_noising`, `spg`, `interpolation`; Tan et al. 2018, "Connecting the
Dots Between MLE and RL for Sequence Generation") each build a new training batch from the gold batch with random
draws, and train on it with a token cross-entropy. This module holds the pieces they have in common:

- :func:`~hf_seqobj.objectives.base.row_generators` (defined in base, used by every sampling objective): one random
  stream per example, keyed by (seed, global step, index of the example in the
  global batch). A row draws the same numbers whether it sits in one big batch or in a micro-batch of gradient
  accumulation, on any process, and in a resumed run; and its draws do not depend on the padding of its batch.
  So a step with gradient accumulation makes the same update as one big batch even though the objectives sample.
- :func:`target_positions` and :func:`gold_targets`: where the gold target tokens of a padded batch are, for
  decoder-only (prompt + target, -100 on the prompt) and encoder-decoder batches alike.
- :class:`RewardGains`: the reward gain R(prefix + w) - R(prefix) of every candidate next token w of a batch of
  growing prefixes, from the incremental n-gram statistics of :mod:`hf_seqobj.rewards`.
- :func:`sampled_rollin`: a roll-in whose every next token a `choose(prefix, logits)` function of the objective picks
  (with the row streams), and its teacher-forced training batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.rollin import (
    RollIn,
    generate_rollin,
    reference_targets,
    rollin_generation_config,
    rollin_training_batch,
)
from hf_seqobj.objectives.base import row_generators, row_seed  # noqa: F401 (the ERPO modules import them here)
from hf_seqobj.rewards import SentenceMetric


TAN2018 = """@article{tan2018connecting,
  title         = {Connecting the Dots Between MLE and RL for Sequence Generation},
  author        = {Tan, Bowen and Hu, Zhiting and Yang, Zichao and Salakhutdinov, Ruslan and Xing, Eric P.},
  journal       = {arXiv preprint arXiv:1811.09740},
  year          = {2018},
  eprint        = {1811.09740},
  archivePrefix = {arXiv}
}"""
"""BibTeX of the paper (cited in model cards)."""


if TYPE_CHECKING:
    from hf_seqobj.objectives.base import Objective


def row_uniform(generators: Sequence[torch.Generator], *shape: int) -> torch.Tensor:
    """[rows, *shape] float64 uniform draws in [0, 1), row i from `generators[i]`."""
    if not generators:
        return torch.zeros(0, *shape, dtype=torch.float64)
    return torch.stack([torch.rand(shape, generator=g, dtype=torch.float64) for g in generators])


def sample_from_logits(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Samples one index per row of `logits` [B, V] from softmax(logits) by inverse CDF, given uniforms [B] in [0, 1).

    Rows whose logits are all -inf are an error of the caller; tokens with logit -inf are never chosen.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = probs.cumsum(-1)
    target = uniform.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True)
    return index.clamp_(max=logits.shape[-1] - 1).squeeze(-1)


def special_token_ids(tokenizer) -> list[int]:
    """The ids of the tokenizer's special tokens (pad, eos, bos, sep, unk, ...), which random draws exclude."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("pad_token_id", "eos_token_id", "bos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    return sorted(ids)


def model_vocab_size(model: torch.nn.Module) -> int:
    """The number of logits the (unwrapped) model produces."""
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def allowed_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """The sorted ids a random replacement may take: those of the tokenizer and the model, special tokens excluded."""
    size = min(len(tokenizer), vocab_size)
    keep = torch.ones(size, dtype=torch.bool)
    special = [i for i in special_token_ids(tokenizer) if i < size]
    keep[special] = False
    allowed = keep.nonzero().flatten()
    if allowed.numel() < 2:
        raise ValueError(f"The vocabulary has {allowed.numel()} non-special tokens; random replacements need >= 2.")
    return allowed


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled positions of a batch, and which of them may be changed (all but each row's final one, EOS).

    Args:
        labels: [B, L] labels, -100 where there is no target (prompt, padding).

    Returns:
        `(labelled, changeable)`: [B, L] bool masks; `changeable` is `labelled` without each row's last labelled
        position.
    """
    labelled = labels != IGNORE_INDEX
    width = labels.shape[1]
    index = torch.arange(width, device=labels.device).expand_as(labels)
    last = torch.where(labelled, index, -1).amax(1)
    return labelled, labelled & (index != last[:, None])


def gold_targets(labels: torch.Tensor) -> list[torch.Tensor]:
    """Each row's target tokens (its labelled positions, in order, EOS included)."""
    return [row[row != IGNORE_INDEX] for row in labels]


def pad_rows(rows: Sequence[torch.Tensor], fill: int = IGNORE_INDEX) -> torch.Tensor:
    """Stacks 1-D tensors of different lengths into [N, max length], padded with `fill` (width >= 1)."""
    width = max([1, *(int(row.numel()) for row in rows)])
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : row.numel()] = row.cpu()
    return out


def rebuild_decoder_inputs(model: torch.nn.Module, batch: dict, labels: torch.Tensor) -> dict:
    """The batch with new `labels`, and (encoder-decoder) `decoder_input_ids` shifted from them by the model."""
    batch = dict(batch)
    batch["labels"] = labels
    if bool(model.config.is_encoder_decoder):
        batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    return batch


class RewardGains:
    """Reward gains of candidate next tokens for a batch of growing prefixes, against gold references.

    Holds a :class:`~hf_seqobj.rewards.SentenceMetric` of the references and the incremental state of the prefixes
    ([B], initially empty). :meth:`gains` gives, for the current prefixes, R(prefix + w) - R(prefix) for every
    reference token w (all at once, with `SentenceMetric.candidate_scores`) and for a token that occurs nowhere in
    the reference (the same for every such token). The EOS token ends a hypothesis, so R(prefix + EOS) = R(prefix):
    its gain is 0.

    Args:
        metric: One of `hf_seqobj.rewards.METRICS`.
        references: [B, M] gold target ids (-100 padding; read up to the first EOS).
        eos_token_id: The EOS id.
        pad_token_id: Ignored in the references.
    """

    def __init__(self, metric: str, references: torch.Tensor, eos_token_id: int, pad_token_id: int | None = None):
        self.scorer = SentenceMetric(metric, references, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        self.eos_token_id = eos_token_id
        self.state = self.scorer.initial_state()
        nowhere = torch.full_like(self.scorer.ref[:, :1], -1)
        self.candidates = torch.cat([self.scorer.ref, nowhere], dim=1)  # [B, R + 1]

    @property
    def reference(self) -> torch.Tensor:
        """[B, R] the compacted reference tokens (before EOS; -1 behind each row's length)."""
        return self.scorer.ref

    @property
    def reference_length(self) -> torch.Tensor:
        """[B] tokens of each reference before its EOS."""
        return self.scorer.ref_len

    def append(self, tokens: torch.Tensor) -> None:
        """Appends one token [B] to every prefix."""
        self.state = self.scorer.append(self.state, tokens.to(self.scorer.device).long())

    def score(self) -> torch.Tensor:
        """[B] float64 R(prefix)."""
        return self.scorer.score(self.state)

    def gains(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(reference gains [B, R], other gain [B])`, float64; reference gains behind a row's length are -inf."""
        base = self.scorer.score(self.state)
        scores = self.scorer.candidate_scores(self.state, self.candidates) - base[:, None]
        reference = scores[:, :-1].masked_fill(~self.scorer.ref_valid, float("-inf"))
        return reference, scores[:, -1]

    def vocabulary_gains(self, vocab_size: int, other: bool = True) -> torch.Tensor:
        """[B, V] float64 gain of every token: reference tokens their own, EOS 0, the rest the common "other" gain
        (or -inf with `other=False`, restricting the candidates to the reference tokens and EOS)."""
        reference, other_gain = self.gains()
        rows = reference.shape[0]
        fill = other_gain[:, None] if other else torch.full_like(other_gain[:, None], float("-inf"))
        full = fill.expand(rows, vocab_size + 1).clone()
        index = torch.where(self.scorer.ref_valid, self.scorer.ref, vocab_size)
        full.scatter_(1, index, torch.where(self.scorer.ref_valid, reference, 0.0))
        full = full[:, :vocab_size]
        if self.eos_token_id < vocab_size:
            full[:, self.eos_token_id] = 0.0
        return full


def sampled_rollin(
    objective: Objective,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    make_choose: Callable[[torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    end_at_gold_length: bool = False,
) -> tuple[dict[str, torch.Tensor], RollIn, torch.Tensor]:
    """Rolls in with tokens chosen by `make_choose(references)` and builds the teacher-forced batch on the roll-in.

    Each row's roll-in is cut at the length of its own gold target (EOS included), as DAgger's is, so a row's
    roll-in does not depend on the other rows of its batch. Decoding is
    :func:`hf_seqobj.decoding.rollin.generate_rollin`: `choose` gets the model's raw next-token logits (a
    checkpoint's own generation settings never enter). The labels are the roll-in's own tokens up to and including
    its first EOS (-100 after it).

    Args:
        end_at_gold_length: A row that reaches its gold length without EOS ends there as its reference does: its
            last token (at the gold EOS position) becomes EOS. Without it such rows carry no EOS label, and a model
            trained on them learns not to stop. `RollIn.forced` then counts the rows so ended.

    Returns:
        `(training batch, roll-in, references [B, M])`.
    """
    trainer = objective.trainer
    args = trainer.args
    tokenizer = trainer.processing_class
    unwrapped = trainer.accelerator.unwrap_model(model)
    config = unwrapped.config
    encoder_decoder = bool(config.is_encoder_decoder)
    references = reference_targets(inputs, encoder_decoder)
    limits = (references != IGNORE_INDEX).sum(1).clamp(min=1)
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    generation_config = rollin_generation_config(unwrapped, int(limits.max()), "greedy", 1.0, pad, eos)
    rollin = generate_rollin(
        model,
        inputs,
        generation_config,
        trainer.accelerator,
        dropout=args.rollin_dropout,
        checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        limits=limits,
        choose=make_choose(references),
        static_cache=args.rollin_static_cache,
        compile=args.rollin_compile,
    )
    if end_at_gold_length and eos is not None:
        limits = limits.to(rollin.tokens.device)
        last = (rollin.lengths - 1).clamp(min=0)
        rows = torch.arange(rollin.tokens.shape[0], device=rollin.tokens.device)
        open_rows = (rollin.lengths >= limits) & (rollin.tokens[rows, last] != eos)
        tokens = rollin.tokens.clone()
        tokens[rows[open_rows], last[open_rows]] = eos
        rollin = dataclasses.replace(rollin, tokens=tokens, forced=int(open_rows.sum()))
    position = torch.arange(rollin.tokens.shape[1], device=rollin.tokens.device)[None, :]
    labels = rollin.tokens.masked_fill(position >= rollin.lengths[:, None], IGNORE_INDEX)
    batch = rollin_training_batch(inputs, rollin, labels, getattr(config, "decoder_start_token_id", None))
    return batch, rollin, references
