"""The interpolation algorithm of the ERPO paper (Tan et al. 2018); docs/interpolation.md.

At every decoding step the next token is drawn from one of three sources, with weights lambda = (self, gold,
reward): a sample from the model, the gold token, or a reward-guided token. Training starts near teacher forcing
(Texar: lambda = [0.04, 0.96, 0.0]) and anneals weight from gold to reward, and then to self, whenever the
validation reward stops improving: :class:`InterpolationAnnealingCallback`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainerCallback

from hf_seqobj.decoding.rollin import RollinArguments
from hf_seqobj.objectives.base import ExportedStateCallback, Objective, register_objective
from hf_seqobj.objectives.erpo.common import (
    TAN2018,
    RewardGains,
    row_generators,
    row_uniform,
    sample_from_logits,
    sampled_rollin,
)
from hf_seqobj.rewards import METRICS, score


logger = logging.getLogger(__name__)

SOURCES = ("self", "gold", "reward")
"""The three sources of a token, in the order of `interp_lambda`."""


def check_lambdas(lambdas, name: str = "interp_lambda") -> list[float]:
    """`lambdas` as three floats >= 0 that sum to 1; ValueError naming the bad value otherwise."""
    try:
        values = [float(value) for value in lambdas]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers (self, gold, reward), got {lambdas!r}.") from None
    if len(values) != 3:
        raise ValueError(f"{name} must have three weights (self, gold, reward), got {len(values)}: {lambdas!r}.")
    if any(not math.isfinite(value) or value < 0 for value in values):
        raise ValueError(f"{name} weights must be finite and >= 0, got {lambdas!r}.")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{name} weights must sum to 1, got {lambdas!r} (sum {sum(values)}).")
    return values


@dataclass
class InterpolationArguments:
    """Settings of `objective="interpolation"`."""

    interp_lambda: list[float] = field(
        default_factory=lambda: [0.04, 0.96, 0.0],
        metadata={
            "help": "Initial weights (self, gold, reward) of the three sources of each next token: a model sample, "
            "the gold token, a reward-guided token. Three numbers >= 0 that sum to 1."
        },
    )
    interp_reward: Literal[METRICS] = field(
        default="bleu",
        metadata={"help": f"The reward R that guides the reward-guided token; one of {METRICS}."},
    )
    interp_step: float = field(
        default=0.06,
        metadata={"help": "Weight moved from gold to reward (or to self) per annealing move, in [0, 1]."},
    )
    interp_reward_moves: int = field(
        default=4,
        metadata={"help": "Annealing moves gold -> reward before each move gold -> self (>= 0; 0: always self)."},
    )
    interp_anneal_metric: str | None = field(
        default=None,
        metadata={
            "help": "The evaluation metric whose plateau triggers an annealing move (e.g. 'bleu' or 'eval_bleu'); "
            "None: metric_for_best_model; if both are None, lambda never changes."
        },
    )
    interp_anneal_greater_is_better: bool | None = field(
        default=None,
        metadata={"help": "Whether a higher value of the annealing metric is better; None: True unless it is a loss."},
    )
    interp_repeat_penalty: float = field(
        default=1.0,
        metadata={"help": "Subtracted from the reward gain of a reward-guided token equal to the previous token."},
    )
    interp_eos_penalty: float = field(
        default=1.0,
        metadata={"help": "Subtracted from the reward gain of EOS before the gold target's length (an early end)."},
    )
    interp_reward_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature of the softmax over reward gains of the reward-guided token (> 0)."},
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        check_lambdas(self.interp_lambda)
        if self.interp_reward not in METRICS:
            raise ValueError(f"interp_reward must be one of {METRICS}, got {self.interp_reward!r}.")
        if not 0.0 <= self.interp_step <= 1.0:
            raise ValueError(f"interp_step must be in [0, 1], got {self.interp_step}.")
        if isinstance(self.interp_reward_moves, bool) or not isinstance(self.interp_reward_moves, int):
            raise ValueError(f"interp_reward_moves must be an int >= 0, got {self.interp_reward_moves!r}.")
        if self.interp_reward_moves < 0:
            raise ValueError(f"interp_reward_moves must be >= 0, got {self.interp_reward_moves}.")
        for name in ("interp_repeat_penalty", "interp_eos_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not self.interp_reward_temperature > 0:
            raise ValueError(f"interp_reward_temperature must be > 0, got {self.interp_reward_temperature}.")

    @property
    def interp_anneal_metric_key(self) -> str | None:
        """The `eval_`-prefixed key of the annealing metric, or None when annealing is off."""
        name = self.interp_anneal_metric or getattr(self, "metric_for_best_model", None)
        if name is None:
            return None
        return name if name.startswith("eval_") else f"eval_{name}"


class InterpolationAnnealingCallback(ExportedStateCallback):
    """Anneals the interpolation weights lambda = (self, gold, reward) on evaluation plateaus (Texar's schedule).

    On every evaluation that reports `metric_key`: if the value is worse than the value of the previous evaluation
    at the current lambda, lambda moves (and the comparison starts afresh at the new lambda); otherwise the value
    is remembered. A move takes `step` of weight from gold and gives it to reward, except that after
    `reward_moves` consecutive such moves the next one gives it to self (then the count restarts). A move takes at
    most the gold weight left (clipped: no weight ever goes negative, and the weights keep summing to 1); when gold
    is 0 nothing moves.

    The state (lambda, the comparison value, the move count, the moves made) is exported with `state()` into
    `trainer_state.json` at every checkpoint (the `ExportableState` mechanism of transformers), and read back on
    resume in `on_train_begin` (whether or not `restore_callback_states_from_checkpoint` is set).

    Args:
        lambdas: The initial (self, gold, reward) weights.
        step: Weight moved per move.
        reward_moves: Moves gold -> reward before each move gold -> self.
        metric_key: The evaluation metric (with its `eval_` prefix); None: never moves.
        greater_is_better: Whether higher metric values are better; None: True unless the key ends with "loss".
    """

    def __init__(
        self,
        lambdas: list[float] | tuple[float, ...] = (0.04, 0.96, 0.0),
        step: float = 0.06,
        reward_moves: int = 4,
        metric_key: str | None = None,
        greater_is_better: bool | None = None,
    ):
        self.initial_lambdas = check_lambdas(lambdas, "lambdas")
        if not 0.0 <= step <= 1.0:
            raise ValueError(f"step must be in [0, 1], got {step}.")
        if reward_moves < 0:
            raise ValueError(f"reward_moves must be >= 0, got {reward_moves}.")
        self.step = float(step)
        self.reward_moves = int(reward_moves)
        self.metric_key = metric_key
        if greater_is_better is None:
            greater_is_better = not (metric_key or "").endswith("loss")
        self.greater_is_better = bool(greater_is_better)
        self.lambdas = list(self.initial_lambdas)
        self.last_value: float | None = None
        self.reward_moves_done = 0
        self.moves: list[str] = []

    def state(self) -> dict:
        return {
            "args": {
                "lambdas": self.initial_lambdas,
                "step": self.step,
                "reward_moves": self.reward_moves,
                "metric_key": self.metric_key,
                "greater_is_better": self.greater_is_better,
            },
            "attributes": {
                "lambdas": list(self.lambdas),
                "last_value": self.last_value,
                "reward_moves_done": self.reward_moves_done,
                "moves": list(self.moves),
            },
        }

    def move(self) -> str:
        """Makes one annealing move; returns its kind ("reward", "self" or "none" when gold has no weight left)."""
        amount = min(self.step, self.lambdas[1])
        if amount <= 0.0:
            self.moves.append("none")
            return "none"
        if self.reward_moves_done >= self.reward_moves:
            target, kind = 0, "self"
            self.reward_moves_done = 0
        else:
            target, kind = 2, "reward"
            self.reward_moves_done += 1
        self.lambdas[1] = max(0.0, self.lambdas[1] - amount)
        self.lambdas[target] += amount
        self.moves.append(kind)
        return kind

    def update(self, value: float) -> str | None:
        """Takes one evaluation value; returns the kind of move made, or None."""
        value = float(value)
        if self.last_value is not None:
            worse = value < self.last_value if self.greater_is_better else value > self.last_value
            if worse:
                self.last_value = None
                return self.move()
        self.last_value = value
        return None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.metric_key is None or metrics is None:
            return
        if self.metric_key not in metrics:
            logger.warning(
                "Interpolation annealing needs the metric %r, which this evaluation does not report (it has %s).",
                self.metric_key,
                ", ".join(sorted(metrics)),
            )
            return
        kind = self.update(metrics[self.metric_key])
        if kind is not None:
            logger.info(
                "Interpolation annealing: move to %s at step %d, lambda = %s", kind, state.global_step, self.lambdas
            )


@register_objective(
    "interpolation",
    settings=(InterpolationArguments, RollinArguments),
    papers=(TAN2018,),
    description="the interpolation algorithm of the ERPO family",
)
class InterpolationObjective(Objective):
    """`objective="interpolation"`: maximum likelihood on sequences whose tokens come from self, gold or reward.

    Roll-in (exact form). Each row's target is generated token by token (no gradient, the model in eval mode
    unless `rollin_dropout`), cut at the gold length (EOS included). At step t, with prefix y_<t, one source is
    drawn with probabilities lambda = (self, gold, reward), and the token is:

    - self: a sample from the model, softmax(l_t);
    - gold: the gold token y*_t (EOS once t reaches the gold length; the step index, as in Texar, not an
      alignment of the prefix);
    - reward: a sample from softmax over the reference tokens w and EOS of
      (R(y_<t + w) - R(y_<t) - a [w = y_{t-1}] - b [w = EOS and t < |y*| - 1]) / T, with R `interp_reward`
      (sentence BLEU / ROUGE on token ids against y*; R(y_<t + EOS) = R(y_<t)), a = `interp_repeat_penalty`,
      b = `interp_eos_penalty`, T = `interp_reward_temperature`.

    Each row and step takes two uniforms of the example's own random stream (the source, then the token by inverse
    CDF), so the same draws are made in any batch split, on every rank and on resume.

    Loss: the token cross-entropy of the roll-in's tokens given its prefixes (:meth:`Objective.teacher_forced_loss`),
    divided by the Trainer's `num_items_in_batch` (gold target tokens of the accumulated batch): gradient
    accumulation makes the same update as one big batch, and lambda = (0, 1, 0) is MLE. Evaluation loss is plain
    teacher forcing.

    lambda lives in the :class:`InterpolationAnnealingCallback` the objective adds to the trainer (annealing on
    `interp_anneal_metric`, saved in checkpoints and restored on resume).

    Logged (train): `interp_lambda_self`, `interp_lambda_gold`, `interp_lambda_reward`, the fractions of tokens
    drawn from each source (`interp_self_fraction`, `interp_gold_fraction`, `interp_reward_fraction`),
    `interp_reward` (mean R of the roll-ins), `rollin_length`, `rollin_time_share`.
    """

    def __init__(self, trainer):
        super().__init__(trainer)
        tokenizer = trainer.processing_class
        if tokenizer is None or tokenizer.eos_token_id is None:
            raise ValueError(
                "objective='interpolation' needs the trainer's processing_class (a tokenizer with an EOS token)."
            )
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id
        args = trainer.args
        self._annealer = InterpolationAnnealingCallback(
            lambdas=args.interp_lambda,
            step=args.interp_step,
            reward_moves=args.interp_reward_moves,
            metric_key=args.interp_anneal_metric_key,
            greater_is_better=args.interp_anneal_greater_is_better,
        )

    def callbacks(self) -> list[TrainerCallback]:
        return [*super().callbacks(), self._annealer]

    @property
    def annealer(self) -> InterpolationAnnealingCallback:
        """The trainer's annealing callback (the trainer may have replaced ours when it restored callback states)."""
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, InterpolationAnnealingCallback):
                return callback
        return self._annealer

    @property
    def lambdas(self) -> list[float]:
        """The current (self, gold, reward) weights."""
        return list(self.annealer.lambdas)

    @staticmethod
    def reward_logits(
        reference_gains: torch.Tensor,
        reference: torch.Tensor,
        valid: torch.Tensor,
        previous: torch.Tensor | None,
        early: torch.Tensor,
        vocab_size: int,
        eos_token_id: int,
        repeat_penalty: float = 1.0,
        eos_penalty: float = 1.0,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """The logits [B, V] of the reward-guided token: -inf except at the reference tokens and EOS.

        Args:
            reference_gains: [B, R] R(prefix + r_j) - R(prefix) for the reference tokens r_j.
            reference: [B, R] the reference tokens (entries where `valid` is False are ignored).
            valid: [B, R] bool.
            previous: [B] the last token of each prefix, or None at the first step (no repeat possible).
            early: [B] bool, EOS would end the row before its gold length.
            vocab_size: V.
            eos_token_id: The EOS id (its gain is 0 before the penalty).
            repeat_penalty: a, subtracted where the token equals `previous`.
            eos_penalty: b, subtracted from EOS where `early`.
            temperature: T, dividing the penalised gains.
        """
        rows = reference.shape[0]
        device = reference_gains.device
        gains = reference_gains.double()
        if previous is not None:
            gains = gains - repeat_penalty * (reference == previous.to(device)[:, None]).double()
        full = torch.full((rows, vocab_size + 1), float("-inf"), dtype=torch.float64, device=device)
        index = torch.where(valid, reference, vocab_size)
        full.scatter_(1, index, torch.where(valid, gains, float("-inf")))
        full[:, eos_token_id] = -eos_penalty * early.to(device).double()
        return full[:, :vocab_size] / temperature

    def token_chooser(self, generators: list[torch.Generator], lambdas: list[float], counts: torch.Tensor):
        """`make(references) -> choose(prefix, logits)`: the choice of each roll-in token (see the class docstring).

        Args:
            generators: The random streams of the batch's rows.
            lambdas: The (self, gold, reward) weights.
            counts: [3] int64, incremented by the number of draws of each source (every row and step).
        """
        args = self.trainer.args
        eos = self.eos_token_id
        thresholds = torch.tensor([lambdas[0], lambdas[0] + lambdas[1]], dtype=torch.float64)

        def make(references: torch.Tensor):
            gains = RewardGains(args.interp_reward, references, eos, self.pad_token_id)
            use_reward = lambdas[2] > 0

            def choose(prefix: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
                t = prefix.shape[1]
                if t > 0 and use_reward:
                    gains.append(prefix[:, -1])
                draws = row_uniform(generators, 2)  # [B, 2]: the source, then the token
                source = torch.bucketize(draws[:, 0].contiguous(), thresholds, right=True)  # 0 self, 1 gold, 2 reward
                counts.add_(torch.bincount(source, minlength=3))
                device = logits.device
                tokens = sample_from_logits(logits, draws[:, 1]).to(device)
                reference, length = gains.reference, gains.reference_length
                gold = reference[:, t] if t < reference.shape[1] else torch.full_like(length, -1)
                gold = torch.where(length > t, gold, eos).to(device)
                tokens = torch.where(source.to(device) == 1, gold, tokens)
                if use_reward and bool((source == 2).any()):
                    reference_gains, _ = gains.gains()
                    previous = prefix[:, -1] if t > 0 else None
                    early = length > t
                    reward = self.reward_logits(
                        reference_gains,
                        reference,
                        gains.scorer.ref_valid,
                        previous,
                        early,
                        logits.shape[-1],
                        eos,
                        args.interp_repeat_penalty,
                        args.interp_eos_penalty,
                        args.interp_reward_temperature,
                    )
                    reward_tokens = sample_from_logits(reward, draws[:, 1]).to(device)
                    tokens = torch.where(source.to(device) == 2, reward_tokens, tokens)
                return tokens

            return choose

        return make

    def training_loss(self, model, inputs, num_items_in_batch):
        trainer = self.trainer
        lambdas = self.lambdas
        generators = row_generators(self, inputs["labels"].shape[0])
        counts = torch.zeros(3, dtype=torch.long)
        with self.timed("rollin"):
            batch, rollin, references = sampled_rollin(
                self, model, inputs, self.token_chooser(generators, lambdas, counts)
            )
        rewards = score(
            trainer.args.interp_reward,
            rollin.tokens,
            references,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        for name, value in zip(SOURCES, lambdas):
            self.record_metric(f"interp_lambda_{name}", value)
        fractions = counts.double() / counts.sum().clamp(min=1)
        for name, value in zip(SOURCES, fractions.tolist()):
            self.record_metric(f"interp_{name}_fraction", value)
        self.record_metric("interp_reward", rewards.mean())
        self.record_metric("rollin_length", rollin.lengths.float().mean())
        loss, outputs = self.teacher_forced_loss(model, batch, num_items_in_batch)
        return loss, outputs
