"""Softmax policy gradient (SPG; Ding and Soricut 2017), a point of the ERPO family (docs/spg.md).

In the ERPO framework SPG is the point alpha = 1, beta = 0: the targets are sampled from the model distribution
reweighted by the exponentiated reward, q(y) proportional to p_theta(y | x) exp(W R(y, y*)), and the model is
trained by maximum likelihood on those samples. As in the paper, q is approximated token by token with the reward
increment of each candidate next token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from hf_seqobj.decoding.rollin import RollinArguments
from hf_seqobj.objectives.base import Objective, register_objective
from hf_seqobj.objectives.erpo.common import (
    TAN2018,
    RewardGains,
    row_generators,
    row_uniform,
    sample_from_logits,
    sampled_rollin,
)
from hf_seqobj.rewards import METRICS, score


@dataclass
class SPGArguments:
    """Settings of `objective="spg"`."""

    spg_reward: Literal[METRICS] = field(
        default="bleu",
        metadata={"help": f"The reward R whose increments reweight the model's samples; one of {METRICS}."},
    )
    spg_reward_scale: float = field(
        default=300.0,
        metadata={
            "help": "W, the weight of the reward increment in the sampling logits log p + W dR (>= 0; 0 samples "
            "from the model; large values follow the reward). With BLEU / ROUGE in [0, 1] a token's gain is a few "
            "hundredths: W = 10 left the samples the model's own and collapsed Multi30k models, W = 300 did not."
        },
    )
    spg_model_step_prob: float = field(
        default=0.0,
        metadata={
            "help": "Bang-bang SPG: probability per token that the step is model-driven (W = 0) instead of "
            "reward-driven (W = spg_reward_scale). 0: every step uses spg_reward_scale."
        },
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        if self.spg_reward not in METRICS:
            raise ValueError(f"spg_reward must be one of {METRICS}, got {self.spg_reward!r}.")
        if not self.spg_reward_scale >= 0:
            raise ValueError(f"spg_reward_scale must be >= 0, got {self.spg_reward_scale}.")
        if not 0.0 <= self.spg_model_step_prob <= 1.0:
            raise ValueError(f"spg_model_step_prob must be in [0, 1], got {self.spg_model_step_prob}.")


@register_objective(
    "spg",
    settings=(SPGArguments, RollinArguments),
    papers=(TAN2018,),
    description="softmax policy gradient (ERPO family)",
)
class SPGObjective(Objective):
    """`objective="spg"`: maximum likelihood on samples from the reward-reweighted model distribution.

    Sampling (exact form). Each row's target is generated token by token (no gradient, the model in eval mode
    unless `rollin_dropout`); at step t, with prefix y_<t and model logits l_t:

        q_t(w) = softmax_w( log_softmax(l_t)(w) + W_t * dR_t(w) ),   dR_t(w) = R(y_<t + w, y*) - R(y_<t, y*)

    where R is `spg_reward` (sentence BLEU / ROUGE on token ids, against the gold target y*, incremental n-gram
    statistics of :mod:`hf_seqobj.rewards`). dR_t(w) is computed exactly for the tokens of the reference; every
    other token gets the gain of a token that occurs nowhere in the reference (one shared value), and EOS gets 0
    (it ends the hypothesis: R(y_<t + EOS) = R(y_<t)). W_t = `spg_reward_scale`, or 0 with probability
    `spg_model_step_prob` per row and step (bang-bang SPG). The draws (two uniforms per row and step, inverse-CDF
    sampling) come from each example's own random stream, and the roll-in of a row is cut at its gold length (EOS
    included). A row still open there ends as its reference does: its last token becomes EOS (logged as
    `spg_forced_eos_fraction`). Without this, EOS (gain 0) is rarely drawn before the cut, most rows carry no EOS
    label, and the model learns not to stop (on Multi30k a BART mini went from 25 to 2 test BLEU in 400 steps,
    repeating phrases to the length limit).

    Loss. The token cross-entropy of the samples, teacher-forced on the sampled prefixes
    (:meth:`Objective.teacher_forced_loss`): sum over sampled tokens of -log p_theta(y_t | y_<t, x), divided by
    the Trainer's `num_items_in_batch` (the gold target tokens of the accumulated batch), so gradient accumulation
    makes the same update as one big batch. Its gradient is the SPG gradient E_q[grad log p_theta(y)] with one
    sample per target. Evaluation loss is plain teacher forcing.

    Logged (train): `spg_reward` (mean R of the samples), `rollin_length`, `spg_forced_eos_fraction` (the rows
    ended with EOS at their gold length), `rollin_time_share`.
    """

    def __init__(self, trainer):
        super().__init__(trainer)
        tokenizer = trainer.processing_class
        if tokenizer is None or tokenizer.eos_token_id is None:
            raise ValueError("objective='spg' needs the trainer's processing_class (a tokenizer with an EOS token).")
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id

    @staticmethod
    def proposal_logits(logits: torch.Tensor, gains: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """The logits of SPG's sampling distribution: log_softmax(logits) + scale * gains (float64).

        Args:
            logits: [B, V] the model's next-token logits.
            gains: [B, V] reward increment of each token.
            scale: W, a float or [B] per row.
        """
        scale = torch.as_tensor(scale, dtype=torch.float64, device=logits.device)
        if scale.dim() == 1:
            scale = scale[:, None]
        return torch.log_softmax(logits.double(), dim=-1) + scale * gains.to(logits.device, torch.float64)

    def token_chooser(self, generators: list[torch.Generator]):
        """`make(references) -> choose(prefix, logits)`: SPG's choice of each roll-in token (see the class docstring).

        Args:
            generators: The random streams of the batch's rows.
        """
        args = self.trainer.args

        def make(references: torch.Tensor):
            gains = RewardGains(args.spg_reward, references, self.eos_token_id, self.pad_token_id)

            def choose(prefix: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
                if prefix.shape[1] > 0:
                    gains.append(prefix[:, -1])
                draws = row_uniform(generators, 2)  # [B, 2]: the step's kind, then the token
                scale = torch.where(draws[:, 0] < args.spg_model_step_prob, 0.0, args.spg_reward_scale)
                proposal = self.proposal_logits(logits, gains.vocabulary_gains(logits.shape[-1]), scale)
                return sample_from_logits(proposal, draws[:, 1])

            return choose

        return make

    def training_loss(self, model, inputs, num_items_in_batch):
        trainer = self.trainer
        generators = row_generators(self, inputs["labels"].shape[0])
        with self.timed("rollin"):
            batch, rollin, references = sampled_rollin(
                self, model, inputs, self.token_chooser(generators), end_at_gold_length=True
            )
        rewards = score(
            trainer.args.spg_reward,
            rollin.tokens,
            references,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        self.record_metric("spg_reward", rewards.mean())
        self.record_metric("rollin_length", rollin.lengths.float().mean())
        self.record_metric("spg_forced_eos_fraction", rollin.forced / rollin.tokens.shape[0])
        loss, outputs = self.teacher_forced_loss(model, batch, num_items_in_batch)
        return loss, outputs
