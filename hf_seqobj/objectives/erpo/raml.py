"""Reward-augmented maximum likelihood (RAML; Norouzi et al. 2016), in the ERPO form (docs/raml.md).

In the ERPO framework (Tan et al. 2018) RAML is the point with the task reward, alpha -> 0 and beta = tau. As in the
Texar example, each gold target y* gets K candidates (y* itself and K - 1 perturbed copies), weighted by
softmax(R(y_k, y*) / tau) within the target, and the loss is the weighted cross-entropy sum_k w_k CE(y_k) / sum_k w_k.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.models import unwrap_model
from hf_seqobj.objectives.base import Objective, register_objective
from hf_seqobj.objectives.erpo.common import (
    TAN2018,
    allowed_tokens,
    gold_targets,
    model_vocab_size,
    pad_rows,
    rebuild_decoder_inputs,
    row_generators,
    target_positions,
)
from hf_seqobj.rewards import METRICS, score


RAML_SAMPLINGS = ("ngram", "hamming")
"""How RAML perturbs a target: replace one random n-gram, or substitute tokens at a sampled Hamming distance."""


@dataclass
class RAMLArguments:
    """Settings of `objective="raml"`."""

    raml_num_samples: int = field(
        default=10,
        metadata={"help": "K: candidates per target, the gold target included (K - 1 perturbed copies)."},
    )
    raml_tau: float = field(
        default=0.4, metadata={"help": "Temperature of the candidate weights softmax(R / tau) (> 0)."}
    )
    raml_reward: Literal[METRICS] = field(
        default="bleu",
        metadata={"help": f"The reward R of a candidate against the gold target, on token ids; one of {METRICS}."},
    )
    raml_sampling: Literal[RAML_SAMPLINGS] = field(
        default="ngram",
        metadata={
            "help": f"How candidates are made, one of {RAML_SAMPLINGS}: 'ngram' replaces one random n-gram "
            "(n <= raml_max_ngram) with random tokens; 'hamming' substitutes random tokens at e positions, e drawn "
            "from the rescaled Hamming payoff distribution at raml_hamming_tau. The final token (EOS) never changes."
        },
    )
    raml_max_ngram: int = field(default=4, metadata={"help": "The longest n-gram replaced by 'ngram' sampling."})
    raml_hamming_tau: float = field(
        default=1.0,
        metadata={
            "help": "Temperature of 'hamming' sampling: q(e) ~ C(m, e) exp(-e / tau) (A - 1)^(e - e / tau) over m "
            "changeable tokens and A allowed tokens (1: about 27% of the tokens change; lower: fewer)."
        },
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        if isinstance(self.raml_num_samples, bool) or not isinstance(self.raml_num_samples, int):
            raise ValueError(f"raml_num_samples must be an int >= 1, got {self.raml_num_samples!r}.")
        if self.raml_num_samples < 1:
            raise ValueError(f"raml_num_samples must be >= 1, got {self.raml_num_samples}.")
        if not self.raml_tau > 0:
            raise ValueError(f"raml_tau must be > 0, got {self.raml_tau}.")
        if self.raml_reward not in METRICS:
            raise ValueError(f"raml_reward must be one of {METRICS}, got {self.raml_reward!r}.")
        if self.raml_sampling not in RAML_SAMPLINGS:
            raise ValueError(f"raml_sampling must be one of {RAML_SAMPLINGS}, got {self.raml_sampling!r}.")
        if self.raml_max_ngram < 1:
            raise ValueError(f"raml_max_ngram must be >= 1, got {self.raml_max_ngram}.")
        if not self.raml_hamming_tau > 0:
            raise ValueError(f"raml_hamming_tau must be > 0, got {self.raml_hamming_tau}.")


def hamming_distance_probs(length: int, allowed: int, tau: float) -> torch.Tensor:
    """q(e), e = 0..length: the rescaled Hamming payoff distribution of Texar's RAML sample generation.

    q(e) is proportional to C(length, e) exp(-e / tau) (allowed - 1)^(e - e / tau): the exponentiated payoff
    exp(-d / tau') over the C(length, e) (allowed - 1)^e sequences at substitution distance d = e, with the distance
    measured in units of 1 + log(allowed - 1) (tau' = tau / (1 + log(allowed - 1))).

    Returns:
        [length + 1] float64 probabilities.
    """
    e = torch.arange(length + 1, dtype=torch.float64)
    log_comb = math.lgamma(length + 1) - torch.lgamma(e + 1) - torch.lgamma(length - e + 1)
    log_q = log_comb - e / tau + (e - e / tau) * math.log(max(allowed - 1, 1))
    return torch.softmax(log_q, dim=0)


def perturb_target(
    target: torch.Tensor,
    num_samples: int,
    allowed: torch.Tensor,
    generator: torch.Generator,
    sampling: str = "ngram",
    max_ngram: int = 4,
    hamming_tau: float = 1.0,
) -> torch.Tensor:
    """The RAML candidates of one gold target: itself, then `num_samples - 1` perturbed copies.

    The final token (EOS) is never changed; the first `m = len(target) - 1` tokens may be.

    - "ngram" (Texar): n uniform in 1..min(max_ngram, m), a start uniform in 0..m - n, and the n tokens there
      replaced by tokens drawn uniformly from `allowed` (which may coincide with the replaced ones).
    - "hamming" (Norouzi et al. 2016): e drawn from :func:`hamming_distance_probs`, e distinct positions uniformly,
      each replaced by a uniform draw from `allowed` other than the token there.

    Every copy takes the same fixed number of draws from `generator` (it depends only on the target's length).

    Args:
        target: [m + 1] token ids, EOS last.
        num_samples: K, the number of candidates (K >= 1).
        allowed: Sorted ids a replacement may take (special tokens excluded).
        generator: The target's own random stream.
        sampling: "ngram" or "hamming".
        max_ngram: The longest n-gram replaced ("ngram").
        hamming_tau: Temperature of the distance distribution ("hamming").

    Returns:
        [K, m + 1] candidates; row 0 is the gold target.
    """
    target = target.cpu().long()
    samples = target.repeat(num_samples, 1)
    changeable = target.numel() - 1
    copies = num_samples - 1
    if copies == 0 or changeable < 1:
        return samples
    size = allowed.numel()
    if sampling == "ngram":
        longest = min(max_ngram, changeable)
        uniform = torch.rand(copies, 2, generator=generator, dtype=torch.float64)
        tokens = allowed[torch.randint(size, (copies, longest), generator=generator)]
        n = (uniform[:, 0] * longest).long().clamp(max=longest - 1) + 1
        start = (uniform[:, 1] * (changeable - n + 1)).long().clamp(min=0)
        start = torch.minimum(start, changeable - n)
        offset = torch.arange(changeable)[None, :] - start[:, None]
        replace = (offset >= 0) & (offset < n[:, None])
        new = tokens.gather(1, offset.clamp(0, longest - 1))
    elif sampling == "hamming":
        q = hamming_distance_probs(changeable, size, hamming_tau)
        uniform = torch.rand(copies, generator=generator, dtype=torch.float64)
        order = torch.rand(copies, changeable, generator=generator).argsort(dim=1)
        draws = torch.randint(size - 1, (copies, changeable), generator=generator)
        e = torch.searchsorted(q.cumsum(0), uniform[:, None] * q.sum(), right=True).clamp(max=changeable)
        rank = order.argsort(dim=1)  # rank of each position in the random order
        replace = rank < e
        # a uniform draw from `allowed` without the token in place: skip its index
        present = torch.searchsorted(allowed, target[:changeable])
        present = torch.where(allowed[present.clamp(max=size - 1)] == target[:changeable], present, size - 1)
        new = allowed[draws + (draws >= present[None, :]).long()]
    else:
        raise ValueError(f"raml_sampling must be one of {RAML_SAMPLINGS}, got {sampling!r}.")
    samples[1:, :changeable] = torch.where(replace, new, samples[1:, :changeable])
    return samples


@register_objective(
    "raml",
    settings=(RAMLArguments,),
    papers=(TAN2018,),
    description="reward-augmented maximum likelihood (ERPO family)",
)
class RAMLObjective(Objective):
    """`objective="raml"`: the weighted cross-entropy of K perturbed copies of each gold target.

    Per target y* (EOS included), K candidates y_1 = y*, y_2..y_K are made on the fly (:func:`perturb_target`:
    one random n-gram replaced, or a Hamming-distance substitution; the final token EOS is never touched; random
    tokens exclude the tokenizer's special tokens), from a random stream of the example's own
    (:func:`~hf_seqobj.objectives.erpo.row_generators`: the same draws in any batch split, on every rank, on
    resume). R_k is `raml_reward` (sentence BLEU / ROUGE on token ids, :mod:`hf_seqobj.rewards`) of y_k against y*,
    and w_k = softmax_k(R_k / tau). Every candidate becomes a row of the training batch (K times the batch): for
    decoder-only models only target positions change (the prompt, the attention mask and the positions stay those
    of the gold row, since every candidate has the gold length); for encoder-decoder models the labels change and
    the decoder inputs are shifted from them again.

    The loss of a micro-batch is :meth:`weighted_nll`:

        L = sum_i sum_k w_ik sum_t CE(y_ik,t) / N

    with N the Trainer's `num_items_in_batch`, the gold target tokens of the whole accumulated batch. Since every
    candidate has its target's length and sum_k w_ik = 1, N = sum_i sum_k w_ik |y_ik|: this is
    sum w CE / sum w with token-level CE and weights, and gradient accumulation makes the same update as one big
    batch. tau -> 0 puts all weight on the gold target: MLE. Label smoothing is not applied. Evaluation loss is
    plain teacher forcing.

    Logged (train): `raml_reward` (mean reward of the perturbed candidates), `raml_gold_weight` (mean weight of the
    gold target), `raml_weight_entropy` (mean entropy of a target's weights, in nats).
    """

    def __init__(self, trainer):
        super().__init__(trainer)
        tokenizer = trainer.processing_class
        if tokenizer is None or tokenizer.eos_token_id is None:
            raise ValueError("objective='raml' needs the trainer's processing_class (a tokenizer with an EOS token).")
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.allowed = allowed_tokens(tokenizer, model_vocab_size(trainer.accelerator.unwrap_model(trainer.model)))

    @staticmethod
    def candidate_weights(rewards: torch.Tensor, tau: float) -> torch.Tensor:
        """w = softmax(rewards / tau) over the last dimension (the K candidates of a target), in float64."""
        return torch.softmax(rewards.double() / tau, dim=-1)

    @staticmethod
    def weighted_nll(
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        shift: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> torch.Tensor:
        """sum_r w_r sum_t CE(logits_rt, labels_rt) / N, the RAML loss of candidate rows.

        Args:
            logits: [R, L, V] scores (R: candidate rows).
            labels: [R, L] target ids, `ignore_index` where there is no target.
            weights: [R] weight of each candidate row.
            shift: True for decoder-only models (the logits at t predict the label at t + 1).
            num_items_in_batch: N; None: sum_r w_r (number of labels of row r), the weighted token count of these
                rows (the gold token count of this batch when each target's weights sum to 1).
            ignore_index: The label of positions without a target.

        Returns:
            The scalar loss (float32).
        """
        if logits.shape[:-1] != labels.shape or weights.shape != labels.shape[:1]:
            raise ValueError(
                f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and weights {tuple(weights.shape)} "
                "disagree; accepted: [R, L, V], [R, L] and [R]."
            )
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        keep = labels != ignore_index  # the cross-entropy of labelled positions only, on [N, V] rows
        token_ce = F.cross_entropy(logits[keep].float(), labels[keep], reduction="none")  # [N]
        weights = weights.to(token_ce.device, torch.float32)
        total = (token_ce * weights[:, None].expand_as(labels)[keep]).sum()
        if num_items_in_batch is None:
            num_items_in_batch = ((labels != ignore_index).sum(1).float() * weights).sum()
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    @staticmethod
    def weighted_nll_at(
        logits: torch.Tensor,
        positions: SharedPositions,
        labels: torch.Tensor,
        weights: torch.Tensor,
        shift: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """:meth:`weighted_nll` from the logits of the positions :func:`shared_prefix_positions` keeps.

        Args:
            logits: [U, V] the logits at `positions.rows`, `positions.columns`.
            positions: Where every labelled position of `labels` reads its logits.
            labels, weights, shift, num_items_in_batch: As in :meth:`weighted_nll`.
        """
        if shift:
            labels = labels[:, 1:]
        keep = labels != IGNORE_INDEX
        scores = logits.float()
        index = positions.index[keep]
        token_ce = torch.logsumexp(scores, dim=-1)[index] - scores[index, labels[keep]]  # [N]
        weights = weights.to(token_ce.device, torch.float32)
        total = (token_ce * weights[:, None].expand_as(labels)[keep]).sum()
        if num_items_in_batch is None:
            num_items_in_batch = (keep.sum(1).float() * weights).sum()
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    def candidates(self, labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The K candidates of every target of `labels` [B, L] and their rewards [B, K] (float64)."""
        args = self.trainer.args
        targets = gold_targets(labels)
        generators = row_generators(self, len(targets))
        candidates = [
            perturb_target(
                target,
                args.raml_num_samples,
                self.allowed,
                generator,
                args.raml_sampling,
                args.raml_max_ngram,
                args.raml_hamming_tau,
            )
            for target, generator in zip(targets, generators)
        ]
        k = args.raml_num_samples
        hyps = pad_rows([row for sample in candidates for row in sample])
        refs = pad_rows(targets).repeat_interleave(k, dim=0)
        rewards = score(args.raml_reward, hyps, refs, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
        return candidates, rewards.view(len(targets), k)

    def training_loss(self, model, inputs, num_items_in_batch):
        trainer = self.trainer
        args = trainer.args
        k = args.raml_num_samples
        labels = inputs["labels"]
        with self.timed("sampling"):
            candidates, rewards = self.candidates(labels)
            weights = self.candidate_weights(rewards, args.raml_tau)  # [B, K]
            labelled, _ = target_positions(labels)
            new_labels = labels.repeat_interleave(k, dim=0)
            rows = labelled.repeat_interleave(k, dim=0)
            new_labels[rows] = torch.cat([sample.reshape(-1) for sample in candidates]).to(labels.device)
            unwrapped = trainer.accelerator.unwrap_model(model)
            encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
            encoder_keys = ("input_ids", "attention_mask") if encoder_decoder else ()
            batch = {  # an encoder-decoder encodes each source once (its K candidates share the encoder states)
                key: value.repeat_interleave(k, dim=0)
                if isinstance(value, torch.Tensor) and key not in encoder_keys
                else value
                for key, value in inputs.items()
                if key != "labels"
            }
            if not encoder_decoder:
                batch["input_ids"] = torch.where(rows, new_labels, batch["input_ids"])
            batch = rebuild_decoder_inputs(unwrapped, batch, new_labels)
        labels = batch.pop("labels")
        positions = shared_prefix_positions(labels, k, shift=not encoder_decoder)
        with (
            repeated_encoder_states(unwrapped, k) if encoder_decoder else contextlib.nullcontext(),
            lm_head_on(unwrapped, positions.rows, positions.columns),
        ):
            outputs = model(**batch)
        loss = self.weighted_nll_at(
            outputs.logits,
            positions,
            labels,
            weights.reshape(-1),
            shift=not encoder_decoder,
            num_items_in_batch=num_items_in_batch,
        )
        loss = self.scale_for_processes(loss, num_items_in_batch)
        entropy = -(weights * weights.clamp(min=1e-300).log()).sum(1)
        if k > 1:
            self.record_metric("raml_reward", rewards[:, 1:].mean())
        self.record_metric("raml_gold_weight", weights[:, 0].mean())
        self.record_metric("raml_weight_entropy", entropy.mean())
        return loss, outputs


@contextlib.contextmanager
def repeated_encoder_states(model: torch.nn.Module, repeats: int) -> Iterator[None]:
    """Inside the block, an encoder-decoder's decoder sees every encoder row `repeats` times (consecutive copies).

    The model is then called with B sources and B x `repeats` decoder rows: the encoder runs once per source, and a
    pre-hook on the decoder repeats the encoder states and their mask for the candidates of each source. The
    gradient of the shared states is the sum over the copies, as if each copy had been encoded on its own.
    """
    decoder = unwrap_model(model).get_decoder()

    def repeat(module, args, kwargs):
        kwargs = dict(kwargs)
        for key in ("encoder_hidden_states", "encoder_attention_mask"):
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor):
                kwargs[key] = value.repeat_interleave(repeats, dim=0)
        return args, kwargs

    handle = decoder.register_forward_pre_hook(repeat, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class SharedPositions(NamedTuple):
    """Where the labelled positions of RAML's candidate rows read their logits (see :func:`shared_prefix_positions`).

    Attributes:
        rows, columns: [U] the (row, logit column) positions whose logits are computed, row-major.
        index: [R, C] for every labelled position, the index into those U logits it reads (-1 elsewhere).
    """

    rows: torch.Tensor
    columns: torch.Tensor
    index: torch.Tensor


def shared_prefix_positions(labels: torch.Tensor, repeats: int, shift: bool = False) -> SharedPositions:
    """The logits RAML needs: each candidate row shares its target's logits up to its first changed token.

    Rows come in groups of `repeats`, the gold target first. A candidate's decoder inputs equal the gold ones up to
    its first changed label, so its hidden states, and its logits, equal the gold row's up to there (the logits of
    the first changed position included: they predict it from an unchanged prefix). Only the positions after it need
    their own logits; the others read the gold row's. This is exact: the same loss and gradient as computing every
    row's logits.

    Args:
        labels: [R, L] candidate labels, -100 where there is no target.
        repeats: K, rows per target.
        shift: Decoder-only (the logits at column p predict the label at p + 1).
    """
    if shift:
        labels = labels[:, 1:]
    rows, columns = labels.shape
    device = labels.device
    labelled = labels != IGNORE_INDEX
    gold_row = torch.arange(rows, device=device) // repeats * repeats
    differs = labelled & (labels != labels[gold_row])
    first = torch.where(differs.any(1), differs.int().argmax(1), columns)
    column = torch.arange(columns, device=device)[None, :]
    own = labelled & ((column > first[:, None]) | (gold_row == torch.arange(rows, device=device))[:, None])
    source = torch.where(own, torch.arange(rows, device=device)[:, None], gold_row[:, None])
    rank = own.flatten().long().cumsum(0).view(rows, columns) - 1
    index = torch.where(labelled, rank[source, column.expand(rows, -1)], -1)
    kept_rows, kept_columns = own.nonzero(as_tuple=True)
    return SharedPositions(kept_rows, kept_columns, index)


@contextlib.contextmanager
def lm_head_on(model: torch.nn.Module, rows: torch.Tensor, columns: torch.Tensor) -> Iterator[None]:
    """Inside the block, the model's LM head runs on the hidden states at (`rows`, `columns`) only: its logits are
    [U, V] instead of [R, L, V] (a pre-hook on the output embeddings, which GPT-2, BART and T5 call on the final
    hidden states)."""
    head = unwrap_model(model).get_output_embeddings()

    def select(module, args):
        return (args[0][rows, columns], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()
