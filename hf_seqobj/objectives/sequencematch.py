"""SequenceMatch (Cundy & Ermon, arXiv 2306.05426, ICLR 2024): imitation with `<bksp>` (docs/sequencematch.md).

The loss. The logits are read as soft Q-values at a temperature tau (`sm_temperature`): Q(s, a) = tau l(a|s) and
V(s) = tau logsumexp_a l(a|s), so that the policy is the model's own softmax(l); the implied reward of a step is
r(s, a, s') = Q(s, a) - gamma V(s'). The loss is IQ-Learn's chi^2 form (Garg et al. 2021):

    L = - E_data[ r ] + E_mix[ V(s) - gamma V(s') ] + c E_chi[ r^2 ]

with c = `sm_chi2_weight`, mix the data and the model's roll-ins in equal parts, and E_chi the mix
(`sm_chi2_on="mixture"`: the chi^2-mixture divergence, Al-Hafez et al. 2023, LS-IQ) or the data only (`"data"`:
IQ-Learn's offline form). At tau = 1, r = log pi(a|s) + V(s) - gamma V(s').

The paper's parametrisation, as far as we could establish it (the full text was not available to us; public
reviews quote its equations): it builds on IQ-Learn with the chi^2-mixture divergence, writes the chi^2 conjugate
as phi(x) = x - x^2/4 (c = 1/4), reads V(s) = log sum_a exp l(a|s) (tau = 1), and lists alpha = 0.01 and
gamma = 0.998 among its hyper-parameters. What its alpha multiplies we could not establish. In IQ-Learn's code
(`iq_learn/iq.py`) `method.alpha` (default 0.5) divides the term, 1/(4 alpha) E[r^2], and a separate temperature
(`agent.init_temp`: 1e-2, 1e-3 in its Atari runs) scales the soft values; read that way, alpha = 0.01 is c = 25,
which makes the policy loop (below). Read as a soft-value temperature next to phi, it is tau = 0.01 with c = 1/4,
which is 0.01 times the loss at tau = 1 with c = 0.0025 (the identity below). So `sm_chi2_weight` is the weight
c itself, and `sm_temperature` the temperature; the default c is the value that does not collapse here.

Why a large c loops (the bounded-reward argument). On a complete trajectory the value terms telescope to V(s_0),
whichever policy made it, so E_mix[V(s) - gamma V(s')] = E_pi[V(s) - gamma V(s')] = E_pi[r] + tau H(pi), H the
discounted entropy of the model's own policy (V(s) - gamma V(s') = r - tau log pi(a|s)). For a fixed policy the loss
is then, per state-action pair, -rho_data r + rho_pi r + (c/2)(rho_data + rho_pi) r^2 (chi^2 on the mixture), whose
minimiser is r* = (rho_data - rho_pi) / (c (rho_data + rho_pi)): the rewards the loss can express are bounded by
+-1/c per step. The policy softmax(Q/tau) is the soft-optimal policy for those rewards at temperature tau, so it
imitates only when 1/(c tau) nats per step outweigh the entropy it can still collect (up to log |A| per step);
otherwise it seeks future entropy, and a `<bksp>` back to a shorter prefix (more steps, more entropy ahead) beats
continuing or ending. Around a token / `<bksp>` cycle the V terms telescope too: the sum of r is
tau sum log pi + (1 - gamma) sum V, so pushing r to 0 makes the cycle's probability about 1 at gamma = 0.998.
Measured on arithmetic (tiny GPT-2, tau = 1): c = 25 and 2.5 loop (exact match 0), c = 0.25 loops on part of the
answers, c <= 0.025 does not. With the chi^2 term on the data only, r* = (rho_data - rho_pi) / (2 c rho_data) is
unbounded below where the data never goes.

Our exact form:

- Each step t of a sequence (its t-th action, counting from 0) is weighted gamma^t, and the expectations are sums
  over steps divided by the normaliser N (`num_items_in_batch`: the target count of the whole accumulated batch,
  the noise's `<bksp>` targets included, so that gradient accumulation equals one big batch).
- data: the training sequences, with backspace noise when `sm_noise_prob` > 0; the wrong token of a noise pair is
  not a step of the data (label -100) in any term, so the data and value terms of the remaining steps still
  telescope. mix: the data sequences and the model's roll-ins in equal parts (weight 1/2 each; weight 1 on the data
  when there are no roll-ins). Every action of a roll-in up to its EOS is a step.
- The state after EOS is absorbing: from it the policy keeps taking EOS (our choice of the absorbing action), with
  s' = s. Its infinite tail is summed in closed form: for a sequence whose EOS is step T, with G = gamma^(T+1) /
  (1 - gamma) and r_abs = Q(s_abs, EOS) - gamma V(s_abs), the tail adds -G r_abs to the data term (data sequences),
  gamma^(T+1) V(s_abs) to the value term and c G r_abs^2 to the chi^2 term (each with its weight).
- A roll-in cut at the length limit before EOS gets the bootstrapped tail gamma^n V(s_n) in the value term: the
  value terms of any continuation after its n-th step sum to exactly that. So the value term of every sequence is
  V(s_0) (IQ-Learn's initial-state form, (1 - gamma) E[V(s_0)] in its normalised occupancy), and a cut roll-in no
  longer rewards raising V where it was cut, which was a reward for never ending (tested). It follows that the
  roll-ins enter the loss only through the chi^2 term on the mixture: with `sm_chi2_on="data"` or c = 0 none are
  generated.
- Check (tested): without roll-ins and without the chi^2 and absorbing terms, the data and value terms sum to tau
  times the gamma^t-weighted token NLL (with gamma = 1, exactly the NLL): per step, -(Q - gamma V') + (V - gamma V')
  = V - Q = -tau log pi. The loss at temperature tau and weight c is tau times the loss at tau = 1 and weight c tau.

Training: BC (token NLL on the data, the noise's backspace targets included) for `sm_bc_steps`, then
w BC + (1 - w) SM, with the BC weight w annealed linearly from 1 to `sm_bc_final_weight` over `sm_bc_anneal_steps`.
Roll-ins are generated with the backspace action (:func:`hf_seqobj.backspace.generate_with_backspace`) every
`sm_rollout_every` optimizer steps into a replay buffer of `sm_buffer_size` sequences, from which each micro-batch
draws as many roll-ins as it has examples (with `sm_rollout_every=1` a micro-batch uses its own fresh roll-ins).
All states of a batch, data and roll-ins, go through the model in one forward pass (:mod:`hf_seqobj.backspace`).

Greedy decoding with `<bksp>` returns, after a backspace, to a state it has already been in, and picks the deleted
token again: token / `<bksp>` forever (so every greedy backspace starts a 2-cycle). `sm_cycle_guard` (default on)
makes a token deleted from a state no action in that state any more, in roll-ins and in evaluation decoding, so that
the decoding tries the next-best token instead. Either way the share of sequences with a 2-cycle (the token a
`<bksp>` has just deleted re-emitted, or blocked by the guard while it was the top-scoring action) is logged
(`rollin_two_cycle_rate`, `eval_two_cycle_rate`), with a warning once it passes 20%.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import GenerationConfig

from hf_seqobj.backspace import (
    add_backspace_token,
    backspace_forward,
    backspace_token_id,
    generate_with_backspace,
    insert_backspace_noise_batch,
    layout_batch,
    noise_candidates,
    warn_on_two_cycles,
)
from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.models import accepts_logits_to_keep, unwrap_model
from hf_seqobj.decoding.prompts import left_align, split_prompts
from hf_seqobj.decoding.rollin import RollinArguments, generation_mode, unwrap_for_generation
from hf_seqobj.objectives.base import Objective, register_objective, row_generators


CUNDY2024 = """@inproceedings{cundy2024sequencematch,
  title         = {SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling with Backtracking},
  author        = {Cundy, Chris and Ermon, Stefano},
  booktitle     = {International Conference on Learning Representations},
  year          = {2024},
  eprint        = {2306.05426},
  archivePrefix = {arXiv}
}"""
"""BibTeX of the paper (cited in model cards)."""


logger = logging.getLogger(__name__)

BUFFER_FILE = "sequencematch_buffer_rank{rank}.pt"
"""Per process, the replay buffer saved in each checkpoint (so that a resumed run draws what the original drew)."""


CHI2_ON = ("mixture", "data")
"""Where the chi^2 term is taken: on the mixture of data and roll-ins, or on the data rows only."""


@dataclass
class SequenceMatchArguments:
    """Settings of `objective="sequencematch"`."""

    sm_chi2_weight: float = field(
        default=0.0025,
        metadata={
            "help": "Weight c of the chi^2 term c E[r^2] on the implied rewards r = Q(s,a) - gamma V(s') (0: off); "
            ">= 0. It bounds the rewards the loss can express by +-1/c per step (chi^2 on the mixture), so a large c "
            "leaves future entropy in charge of the policy (loops). The paper writes the term as "
            "phi(x) = x - x^2/4, c = 1/4; 0.0025 = 1/4 at its alpha = 0.01 read as a temperature (see sm_temperature)."
        },
    )
    sm_chi2_on: str = field(
        default="mixture",
        metadata={
            "help": "Where the chi^2 term is taken: 'mixture' (data and roll-ins in equal parts, the chi^2-mixture "
            "divergence) or 'data' (data rows only, IQ-Learn's offline form; roll-ins are then not generated)."
        },
    )
    sm_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Soft-value temperature tau > 0: Q = tau * logits, V = tau * logsumexp(logits); the policy stays "
            "softmax(logits). tau with chi^2 weight c is tau times the loss at tau = 1 with weight c * tau."
        },
    )
    sm_gamma: float = field(
        default=0.998,
        metadata={"help": "Discount gamma in (0, 1] (reported: 0.998); must be < 1 with the absorbing state."},
    )
    sm_absorbing: bool = field(
        default=True, metadata={"help": "Add the closed-form tail of the absorbing state after EOS."}
    )
    sm_cycle_guard: bool = field(
        default=True,
        metadata={
            "help": "In roll-ins and evaluation decoding, a token deleted from a state is no action in that state "
            "any more (without it, greedy decoding re-emits the token a <bksp> deleted and loops token / <bksp>)."
        },
    )
    sm_bc_steps: int = field(
        default=0, metadata={"help": "Optimizer steps of BC (MLE on the data) before the SequenceMatch loss starts."}
    )
    sm_bc_final_weight: float = field(
        default=0.2,
        metadata={"help": "The BC weight w in w BC + (1 - w) SM after annealing (reported: 0.2); in [0, 1]."},
    )
    sm_bc_anneal_steps: int = field(
        default=1000,
        metadata={"help": "Optimizer steps over which the BC weight goes linearly from 1 to sm_bc_final_weight."},
    )
    sm_noise_prob: float = field(
        default=0.0,
        metadata={"help": "Backspace noise: probability per target position of a wrong token followed by <bksp>."},
    )
    sm_buffer_size: int = field(
        default=256, metadata={"help": "Roll-ins (sequences) kept in the replay buffer per process."}
    )
    sm_rollout_every: int = field(
        default=1,
        metadata={"help": "Generate new roll-ins every this many optimizer steps (1: fresh roll-ins every step)."},
    )
    sm_rollin_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Roll-ins per micro-batch as a fraction of its examples (rounded up), in (0, 1]. The roll-ins' "
            "mix weight is scaled by examples / roll-ins, so data and roll-ins still count in equal parts; fewer "
            "roll-ins make a cheaper, noisier step."
        },
    )
    sm_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Actions per roll-in (backspaces count); None: twice the batch's longest target."},
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        if not self.sm_chi2_weight >= 0:
            raise ValueError(f"sm_chi2_weight must be >= 0, got {self.sm_chi2_weight}.")
        if self.sm_chi2_on not in CHI2_ON:
            raise ValueError(f"sm_chi2_on must be one of {', '.join(CHI2_ON)}, got {self.sm_chi2_on!r}.")
        if not self.sm_temperature > 0:
            raise ValueError(f"sm_temperature must be > 0, got {self.sm_temperature}.")
        if not 0 < self.sm_gamma <= 1:
            raise ValueError(f"sm_gamma must be in (0, 1], got {self.sm_gamma}.")
        if self.sm_absorbing and self.sm_gamma >= 1:
            raise ValueError(
                f"sm_gamma={self.sm_gamma}: the absorbing state's tail sums gamma^t to infinity, so it needs "
                "sm_gamma < 1 (or sm_absorbing=False)."
            )
        if not 0.0 <= self.sm_bc_final_weight <= 1.0:
            raise ValueError(f"sm_bc_final_weight must be in [0, 1], got {self.sm_bc_final_weight}.")
        if not 0.0 <= self.sm_noise_prob <= 1.0:
            raise ValueError(f"sm_noise_prob must be in [0, 1], got {self.sm_noise_prob}.")
        for name in ("sm_bc_steps", "sm_bc_anneal_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("sm_buffer_size", "sm_rollout_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 < self.sm_rollin_fraction <= 1.0:
            raise ValueError(f"sm_rollin_fraction must be in (0, 1], got {self.sm_rollin_fraction}.")
        if self.sm_max_new_tokens is not None and self.sm_max_new_tokens < 1:
            raise ValueError(f"sm_max_new_tokens must be None or >= 1, got {self.sm_max_new_tokens}.")


class SequenceMatchLoss(NamedTuple):
    """The loss and its three terms (each already divided by the normaliser; `loss` is their sum)."""

    loss: torch.Tensor
    data: torch.Tensor
    value: torch.Tensor
    chi2: torch.Tensor


def sequencematch_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    is_rollin: torch.Tensor | None = None,
    chi2_weight: float = 0.0025,
    gamma: float = 0.998,
    temperature: float = 1.0,
    chi2_on: str = "mixture",
    eos_token_id: int | None = None,
    truncated: torch.Tensor | None = None,
    normalizer: torch.Tensor | float | None = None,
    rollin_scale: float = 1.0,
) -> SequenceMatchLoss:
    """The SequenceMatch loss of a batch in step layout, as a pure function (see the module docstring).

    Args:
        logits: [B, T + 1, V]; row t is the state before action t, row T the state after the last column.
        actions: [B, T] the action taken at each step, -100 where there is no step (padding, noise tokens).
        is_rollin: [B] bool, rows that are the model's roll-ins (mix only); default none.
        chi2_weight: The weight c of the chi^2 term c E[r^2] (>= 0; 0 leaves it out).
        gamma: The discount (in (0, 1]).
        temperature: The soft-value temperature tau (> 0): Q = tau * logits, V = tau * logsumexp(logits).
        chi2_on: `"mixture"` (the chi^2 term on data and roll-ins in equal parts) or `"data"` (data rows only).
        eos_token_id: With it, a row whose last step is EOS gets the absorbing state's closed-form tail (needs
            gamma < 1); None: no tails.
        truncated: [B] bool, rows cut at a length limit before their end: their value term gets the bootstrapped
            tail gamma^n V(s_n). Default: the roll-in rows whose last step is not `eos_token_id` (none without it).
        normalizer: Divides every term; default the number of data steps.
        rollin_scale: Multiplies the roll-in rows' mix weight: data rows / roll-in rows when a batch has fewer
            roll-ins than examples, so that both parts of the mix keep equal weight.

    Returns:
        A :class:`SequenceMatchLoss`, computed in float32.
    """
    if logits.dim() != 3 or actions.dim() != 2 or logits.shape[:2] != (actions.shape[0], actions.shape[1] + 1):
        raise ValueError(
            f"logits {tuple(logits.shape)} must be [B, T + 1, V] for actions {tuple(actions.shape)} [B, T]."
        )
    if not chi2_weight >= 0:
        raise ValueError(f"chi2_weight must be >= 0, got {chi2_weight}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if chi2_on not in CHI2_ON:
        raise ValueError(f"chi2_on must be one of {CHI2_ON}, got {chi2_on!r}.")
    if not 0 < gamma <= 1 or (eos_token_id is not None and gamma >= 1):
        raise ValueError(f"gamma must be in (0, 1], and < 1 with the absorbing tail (eos_token_id); got {gamma}.")
    batch, steps = actions.shape
    device = logits.device
    if is_rollin is None:
        is_rollin = torch.zeros(batch, dtype=torch.bool, device=device)
    is_rollin = is_rollin.to(device)
    scores = logits.float()
    values = temperature * torch.logsumexp(scores, dim=-1)  # [B, T + 1]
    valid = actions != IGNORE_INDEX
    q = temperature * scores[:, :-1].gather(-1, actions.clamp(min=0)[..., None])[..., 0]
    reward = q - gamma * values[:, 1:]
    discount = gamma ** torch.arange(steps, device=device, dtype=torch.float32)
    weight = discount[None, :] * valid
    data_rows = (~is_rollin).float()[:, None]
    mix_rows = torch.where(is_rollin, 0.5 * rollin_scale, 0.5 if bool(is_rollin.any()) else 1.0).float()[:, None]
    chi2_rows = mix_rows if chi2_on == "mixture" else data_rows
    data = -(data_rows * weight * reward).sum()
    value = (mix_rows * weight * (values[:, :-1] - gamma * values[:, 1:])).sum()
    squares = (chi2_rows * weight * reward.pow(2)).sum()
    any_step = valid.any(1)
    last = torch.where(any_step, steps - 1 - valid.flip(1).int().argmax(1), 0)
    last_action = actions.gather(1, last[:, None])[:, 0]
    rows = torch.arange(batch, device=device)
    after = last + 1  # the state after a row's last step
    if truncated is None:
        truncated = is_rollin & (last_action != eos_token_id if eos_token_id is not None else False)
    truncated = truncated.to(device) & any_step
    # a cut row's unseen continuation adds sum_{t >= n} gamma^t (V(s_t) - gamma V(s_t+1)) = gamma^n V(s_n) exactly
    cut_tail = truncated.float() * mix_rows[:, 0] * gamma ** after.float() * values[rows, after]
    value = value + cut_tail.sum()
    if eos_token_id is not None:
        terminal = any_step & (last_action == eos_token_id)
        value_abs = values[rows, after]
        reward_abs = temperature * scores[rows, after, eos_token_id] - gamma * value_abs
        start = gamma ** after.float()
        tail = start / (1 - gamma)
        terminal = terminal.float()
        data = data - (terminal * data_rows[:, 0] * tail * reward_abs).sum()
        value = value + (terminal * mix_rows[:, 0] * start * value_abs).sum()
        squares = squares + (terminal * chi2_rows[:, 0] * tail * reward_abs.pow(2)).sum()
    if normalizer is None:
        normalizer = (valid & ~is_rollin[:, None]).sum().clamp(min=1)
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.to(device)
    data, value = data / normalizer, value / normalizer
    chi2_term = chi2_weight * squares / normalizer
    return SequenceMatchLoss(data + value + chi2_term, data, value, chi2_term)


def step_nll(logits: torch.Tensor, actions: torch.Tensor, normalizer: torch.Tensor | float | None = None):
    """Token NLL of step-layout logits [B, T + 1, V] for actions [B, T] (-100: no target): BC on a layout."""
    scores = logits[:, :-1].float()
    total = torch.nn.functional.cross_entropy(
        scores.reshape(-1, scores.shape[-1]), actions.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if normalizer is None:
        normalizer = (actions != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.to(total.device)
    return total / normalizer


@dataclass
class _Rollin:
    source: list[int]
    actions: list[int]
    step: int
    truncated: bool = False


@register_objective(
    "sequencematch",
    settings=(SequenceMatchArguments, RollinArguments),
    papers=(CUNDY2024,),
    description="SequenceMatch: imitation learning with backtracking (<bksp>)",
)
class SequenceMatchObjective(Objective):
    """`objective="sequencematch"`: BC, then the SequenceMatch loss on data and backspace roll-ins.

    The model gets `<bksp>` when it has none (:func:`hf_seqobj.backspace.add_backspace_token`, at trainer
    construction, before the optimizer exists). The trainer's collator is the ordinary one; the objective turns each
    batch into the backspace layout, adds the noise and the roll-ins, and runs one forward pass. Its random draws
    (noise, buffer sampling, sampled roll-ins) come from :meth:`Objective.step_generator`, so they are the same after
    a resume; the replay buffer is saved in each checkpoint. Evaluation loss is plain teacher forcing; evaluation
    generation uses the backspace decoding.

    Logged (train): `sm_bc_weight`, `bc_loss`, `sm_data_term`, `sm_value_term`, `sm_chi2_term`, `sm_noise_rate`,
    `rollin_backspace_rate`, `rollin_length`, `rollin_truncated_rate` (roll-ins cut at the length limit),
    `rollin_two_cycle_rate` (see :func:`hf_seqobj.backspace.generate_with_backspace`), `buffer_age` (optimizer steps
    since the sampled roll-ins were made), and the time shares of roll-ins and the forward pass. Evaluation adds
    `backspace_rate`, `two_cycle_rate` and `truncated_rate` of the evaluation decoding.
    """

    def __init__(self, trainer):
        super().__init__(trainer)
        self.buffer: list[_Rollin] = []
        tokenizer = trainer.processing_class
        self.prepare_model(trainer.model, tokenizer)
        self.bksp = backspace_token_id(trainer.model)
        self.candidates = noise_candidates(tokenizer, self.bksp)

    @classmethod
    def prepare_model(cls, model, tokenizer) -> None:
        """Adds `<bksp>` to the model and tokenizer when the model has none (before PEFT wraps it)."""
        if backspace_token_id(model) is not None:
            return
        if tokenizer is None or not hasattr(tokenizer, "add_tokens"):
            raise ValueError("objective='sequencematch' needs a tokenizer (processing_class) to add <bksp> to.")
        if hasattr(model, "get_base_model"):
            raise ValueError(
                "The model is a PeftModel without <bksp>: add it before wrapping (hf_seqobj.add_backspace_token), or "
                "pass the base model with peft_config, so that the new embedding row is trainable."
            )
        bksp = add_backspace_token(model, tokenizer)
        logger.info("Added <bksp> (id %d) to the model and tokenizer for SequenceMatch.", bksp)

    # ----------------------------------------------------------------------------------------------------------
    def bc_weight(self, step: int | None = None) -> float:
        """The BC weight w at an optimizer step: 1 during BC, then linear to `sm_bc_final_weight`."""
        args = self.trainer.args
        step = self.trainer.state.global_step if step is None else step
        if step < args.sm_bc_steps:
            return 1.0
        if args.sm_bc_anneal_steps == 0:
            return args.sm_bc_final_weight
        progress = min(1.0, (step - args.sm_bc_steps) / args.sm_bc_anneal_steps)
        return 1.0 + progress * (args.sm_bc_final_weight - 1.0)

    def save_state(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        rank = self.trainer.args.process_index
        torch.save([vars(item) for item in self.buffer], os.path.join(folder, BUFFER_FILE.format(rank=rank)))

    def load_state(self, folder: str) -> None:
        path = os.path.join(folder, BUFFER_FILE.format(rank=self.trainer.args.process_index))
        if os.path.exists(path):
            eos = self.trainer.processing_class.eos_token_id
            self.buffer = [  # a buffer saved before `truncated` was kept: a roll-in without EOS was cut
                _Rollin(**{"truncated": not item["actions"] or item["actions"][-1] != eos, **item})
                for item in torch.load(path, weights_only=True)
            ]
        else:
            logger.warning("No SequenceMatch replay buffer in %s: the resumed run starts with an empty one.", folder)

    # ----------------------------------------------------------------------------------------------------------
    def _rollins(self, model, inputs, encoder_decoder, max_new, generator) -> list[_Rollin]:
        with self.timed("rollin"):
            rollins, result = self._generate_rollins(model, inputs, encoder_decoder, max_new, generator)
        total = max(1, int(result.num_actions.sum()))
        self.record_metric("rollin_backspace_rate", float(result.num_backspaces.sum()) / total)
        self.record_metric("rollin_length", result.num_actions.float().mean())
        self.record_metric("rollin_truncated_rate", sum(item.truncated for item in rollins) / max(1, len(rollins)))
        self.check_cycles("rollin", float(result.two_cycles.float().mean()))
        return rollins

    def _generate_rollins(self, model, inputs, encoder_decoder, max_new, generator):
        """Backspace roll-ins of the examples of `inputs`: `(roll-ins, the decoding's BackspaceGeneration)`."""
        trainer, args = self.trainer, self.trainer.args
        tokenizer = trainer.processing_class
        unwrapped = trainer.accelerator.unwrap_model(model)
        pad = tokenizer.pad_token_id
        if encoder_decoder:
            prompt_ids, prompt_mask = inputs["input_ids"], inputs.get("attention_mask")
        else:
            prompt_ids, prompt_mask = split_prompts(inputs["input_ids"], inputs["labels"], pad)
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=args.rollin == "sample",
            temperature=args.rollin_temperature if args.rollin == "sample" else None,
            top_k=0 if args.rollin == "sample" else None,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=getattr(unwrapped.config, "decoder_start_token_id", None),
        )
        with unwrap_for_generation(model, trainer.accelerator) as (generating, synced):
            with generation_mode(generating, args.rollin_dropout, args.gradient_checkpointing_kwargs):
                result = generate_with_backspace(
                    generating,
                    prompt_ids,
                    prompt_mask,
                    config,
                    self.bksp,
                    return_actions=True,
                    generator=generator,
                    synced_gpus=synced,
                    cycle_guard=args.sm_cycle_guard,
                )
        step = self.trainer.state.global_step
        rollins = []
        eos = tokenizer.eos_token_id
        for row in range(prompt_ids.shape[0]):
            mask = prompt_mask[row].bool() if prompt_mask is not None else torch.ones_like(prompt_ids[row]).bool()
            source = prompt_ids[row][mask].tolist()
            actions = result.actions[row, : int(result.num_actions[row])].tolist()
            rollins.append(_Rollin(source, actions, step, truncated=not actions or actions[-1] != eos))
        return rollins, result

    def completions(self, model, inputs, generator):
        """A fresh backspace roll-in (`rollin`, its actions with `<bksp>`; `output`, what is left after the
        backspaces), the data row as trained (`data`, the target with the backspace noise; `labels`, its targets,
        `·` on the noise's wrong tokens, which are masked) and the sentence `score` of the output (the metric the
        `oracle` setting names). The roll-in is made whether or not the loss uses roll-ins at this step, its samples
        drawn from `generator`; the noise is drawn as training draws it (one generator per row, keyed by the seed,
        the step and the row); the replay buffer is left as it is."""
        from hf_seqobj.backspace import apply_backspaces
        from hf_seqobj.callbacks.completions import render_tokens, sentence_score, until_eos

        trainer, args = self.trainer, self.trainer.args
        tokenizer = trainer.processing_class
        unwrapped = trainer.accelerator.unwrap_model(model)
        encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
        start = getattr(unwrapped.config, "decoder_start_token_id", None)
        data = self._data_rows(inputs, encoder_decoder, start, tokenizer.pad_token_id, micro_step=0)
        max_new = args.sm_max_new_tokens or 2 * int(data["target_lengths"].max())
        rollins, _ = self._generate_rollins(model, inputs, encoder_decoder, max_new, generator)
        eos = tokenizer.eos_token_id
        rows = []
        for index, rollin in enumerate(rollins):
            count = int(data["num_actions"][index])
            output = apply_backspaces(rollin.actions, self.bksp)
            labels = inputs["labels"][index]
            reference = until_eos(labels[labels != IGNORE_INDEX], eos, keep_eos=False)
            hypothesis = until_eos(torch.tensor(output, dtype=torch.long), eos, keep_eos=False)
            rows.append(
                {
                    "rollin": render_tokens(tokenizer, rollin.actions),
                    "output": render_tokens(tokenizer, output),
                    "data": render_tokens(tokenizer, data["actions"][index, :count]),
                    "labels": render_tokens(tokenizer, data["labels"][index, :count]),
                    "score": sentence_score(args.oracle, tokenizer, hypothesis, reference),
                }
            )
        return rows

    def _draw_rollins(self, model, inputs, encoder_decoder, max_new, generator) -> list[_Rollin]:
        args, step = self.trainer.args, self.trainer.state.global_step
        batch = math.ceil(inputs["input_ids"].shape[0] * args.sm_rollin_fraction)
        if args.sm_rollout_every == 1:  # fresh roll-ins from the first examples of the micro-batch
            first = {key: value[:batch] for key, value in inputs.items() if isinstance(value, torch.Tensor)}
            return self._rollins(model, first, encoder_decoder, max_new, generator)
        if step % args.sm_rollout_every == 0 or not self.buffer:
            self.buffer.extend(self._rollins(model, inputs, encoder_decoder, max_new, generator))
            self.buffer = self.buffer[-args.sm_buffer_size :]
        order = torch.randperm(len(self.buffer), generator=generator)
        picks = [order[i % len(order)] for i in range(batch)]
        drawn = [self.buffer[int(i)] for i in picks]
        self.record_metric("buffer_age", sum(step - item.step for item in drawn) / len(drawn))
        return drawn

    def _data_rows(
        self, inputs, encoder_decoder: bool, start: int | None, pad: int, micro_step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The micro-batch's examples as layout rows: prefixes, noised actions and their labels (tensors).

        The noise of an example is drawn from its own generator, keyed by its place in the global batch of the
        optimizer step (:func:`row_generators`; `micro_step` default: the micro-batch being trained), so that
        counting it ahead (:meth:`count_items`) draws the same."""
        args = self.trainer.args
        ids, labels = inputs["input_ids"], inputs["labels"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        rows = ids.shape[0]
        if encoder_decoder:
            prefix_ids = torch.full((rows, 1), int(start), dtype=torch.long, device=ids.device)
            prefix_mask = torch.ones_like(prefix_ids)
            targets, lengths = left_align(labels, labels != IGNORE_INDEX)
        else:  # the prompt is everything before the first label; the target runs to the end of the mask
            prefix_ids, prefix_mask = split_prompts(ids, labels, pad)
            first = (labels != IGNORE_INDEX).int().argmax(1)
            column = torch.arange(ids.shape[1], device=ids.device)[None, :]
            targets, lengths = left_align(ids, (column >= first[:, None]) & mask.bool())
        actions, action_labels, num_actions = insert_backspace_noise_batch(
            targets,
            lengths,
            args.sm_noise_prob,
            self.bksp,
            self.candidates,
            row_generators(self, rows, micro_step=micro_step),
            pad,
        )
        data = {
            "prefix_ids": prefix_ids,
            "prefix_mask": prefix_mask,
            "actions": actions,
            "labels": action_labels,
            "num_actions": num_actions,
            "target_lengths": lengths,
        }
        if encoder_decoder:
            data["source_ids"], data["source_mask"] = ids, mask
        return data

    @staticmethod
    def _rollin_rows(rollins: list[_Rollin], encoder_decoder: bool, start, pad, device) -> dict[str, torch.Tensor]:
        """Roll-ins (from the buffer) as layout rows; every action is a target."""
        sources = [torch.as_tensor(item.source, dtype=torch.long) for item in rollins]
        actions = [torch.as_tensor(item.actions, dtype=torch.long) for item in rollins]
        padded = torch.nn.utils.rnn.pad_sequence(actions, batch_first=True, padding_value=pad).to(device)
        num_actions = torch.tensor([len(a) for a in actions], dtype=torch.long, device=device)
        column = torch.arange(padded.shape[1], device=device)[None, :]
        rows = {
            "actions": padded,
            "labels": padded.masked_fill(column >= num_actions[:, None], IGNORE_INDEX),
            "num_actions": num_actions,
        }
        source_ids = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=pad).to(device)
        lengths = torch.tensor([len(s) for s in sources], dtype=torch.long, device=device)
        source_mask = (torch.arange(source_ids.shape[1], device=device)[None, :] < lengths[:, None]).long()
        if encoder_decoder:
            rows["prefix_ids"] = torch.full((len(rollins), 1), int(start), dtype=torch.long, device=device)
            rows["prefix_mask"] = torch.ones_like(rows["prefix_ids"])
            rows["source_ids"], rows["source_mask"] = source_ids, source_mask
        else:  # the prompt is the prefix, left-padded
            rows["prefix_ids"], rows["prefix_mask"] = _right_to_left(source_ids, lengths, pad)
        return rows

    def uses_rollins(self) -> bool:
        """Whether roll-ins can change the loss: only through a chi^2 term on the mixture.

        With the absorbing tail after EOS and the bootstrapped tail of cut roll-ins, the value term of every sequence
        is V(s_0), the value of its prompt, which the data row of the same prompt already carries; so without a chi^2
        term on the mixture the roll-ins would not change the loss (up to which prompts the buffer holds), and they
        are not generated.
        """
        args = self.trainer.args
        return not (args.sm_absorbing and (args.sm_chi2_weight == 0 or args.sm_chi2_on == "data"))

    def count_items(self, batch_samples: list[dict], num_items_in_batch):
        """Adds the noise's `<bksp>` targets of the whole accumulated batch to the Trainer's gold-token count.

        BC trains those targets too, and every term of the loss is a sum over steps divided by `num_items_in_batch`:
        with the noise counted, numerator and normaliser count the same steps (otherwise BC is up-weighted by about
        1 + `sm_noise_prob`), and gradient accumulation still equals one big batch.
        """
        args = self.trainer.args
        if num_items_in_batch is None or args.sm_noise_prob == 0:
            return num_items_in_batch
        unwrapped = self.trainer.accelerator.unwrap_model(self.trainer.model)
        encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
        start = getattr(unwrapped.config, "decoder_start_token_id", None)
        pad = self.trainer.processing_class.pad_token_id
        extra = 0
        for micro_step, inputs in enumerate(batch_samples):
            data = self._data_rows(inputs, encoder_decoder, start, pad, micro_step=micro_step)
            extra += int((data["labels"] == self.bksp).sum())
        if not isinstance(num_items_in_batch, torch.Tensor):
            return num_items_in_batch + extra
        extra = torch.tensor(extra, dtype=num_items_in_batch.dtype, device=num_items_in_batch.device)
        if args.average_tokens_across_devices and args.world_size > 1:
            extra = self.trainer.accelerator.gather(extra).sum()
        return num_items_in_batch + extra

    def check_cycles(self, where: str, share: float) -> None:
        """Logs `{where}_two_cycle_rate` and warns once when it passes 20% (:func:`warn_on_two_cycles`)."""
        self.record_metric(f"{where}_two_cycle_rate", share)
        warn_on_two_cycles(self, where, share)

    def training_loss(self, model, inputs, num_items_in_batch):
        trainer, args = self.trainer, self.trainer.args
        unwrapped = trainer.accelerator.unwrap_model(model)
        encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
        tokenizer = trainer.processing_class
        pad = tokenizer.pad_token_id
        device = inputs["input_ids"].device
        generator = self.step_generator(torch.device("cpu"))
        start = getattr(unwrapped.config, "decoder_start_token_id", None)

        data = self._data_rows(inputs, encoder_decoder, start, pad)
        bc_weight = self.bc_weight()
        rollins: list[_Rollin] = []
        rows = [data]
        if bc_weight < 1.0 and self.uses_rollins():
            longest = int(data["target_lengths"].max())
            max_new = args.sm_max_new_tokens or 2 * longest
            rollins = self._draw_rollins(model, inputs, encoder_decoder, max_new, generator)
            rows.append(self._rollin_rows(rollins, encoder_decoder, start, pad, device))
        prefix_ids, prefix_mask = _concat_left_padded(
            [r["prefix_ids"] for r in rows], [r["prefix_mask"] for r in rows]
        )
        actions = _concat_right_padded([r["actions"] for r in rows], pad)
        labels = _concat_right_padded([r["labels"] for r in rows], IGNORE_INDEX)
        num_actions = torch.cat([r["num_actions"] for r in rows])
        layout = layout_batch(prefix_ids, prefix_mask, actions, num_actions, self.bksp, pad, labels)
        width = int(layout["prefix_width"])
        steps = layout["step_labels"].shape[1]
        batch = {key: layout[key] for key in ("input_ids", "position_ids", "attend")}
        encoder_inputs, forward_kwargs = None, {"use_cache": False}
        if encoder_decoder:
            sources = _concat_right_padded([r["source_ids"] for r in rows], pad)
            source_mask = _concat_right_padded([r["source_mask"] for r in rows], 0)
            encoder_inputs = {"input_ids": sources, "attention_mask": source_mask}
        elif accepts_logits_to_keep(unwrap_model(unwrapped)):  # the LM head on the step columns only
            forward_kwargs["logits_to_keep"] = steps + 1
        with self.timed("forward"):
            outputs = backspace_forward(model, batch, encoder_inputs, **forward_kwargs)
        # [N, T + 1, V]: the states before each action and after the last, cast to fp32 once for both losses
        logits = outputs.logits if "logits_to_keep" in forward_kwargs else outputs.logits[:, width - 1 :]
        logits = logits.float()
        step_labels = layout["step_labels"]
        data_rows = inputs["input_ids"].shape[0]
        noise_pairs = (data["labels"] == self.bksp).sum()
        if num_items_in_batch is None:  # this micro-batch's steps: its gold tokens and its noise's <bksp> targets
            num_items_in_batch = (inputs["labels"] != IGNORE_INDEX).sum() + noise_pairs.to(inputs["labels"].device)
        bc = step_nll(logits[:data_rows], step_labels[:data_rows], num_items_in_batch)
        loss = bc
        self.record_metric("sm_bc_weight", bc_weight)
        self.record_metric("bc_loss", bc)
        self.record_metric("sm_noise_rate", noise_pairs / data["target_lengths"].sum().clamp(min=1))
        if bc_weight < 1.0:
            is_rollin = torch.arange(logits.shape[0], device=device) >= data_rows
            truncated = torch.tensor([False] * data_rows + [item.truncated for item in rollins], device=device)
            terms = sequencematch_loss(
                logits,
                step_labels,
                is_rollin,
                chi2_weight=args.sm_chi2_weight,
                gamma=args.sm_gamma,
                temperature=args.sm_temperature,
                chi2_on=args.sm_chi2_on,
                eos_token_id=tokenizer.eos_token_id if args.sm_absorbing else None,
                truncated=truncated,
                normalizer=num_items_in_batch,
                rollin_scale=data_rows / max(1, len(rollins)),
            )
            loss = bc_weight * bc + (1 - bc_weight) * terms.loss
            self.record_metric("sm_data_term", terms.data)
            self.record_metric("sm_value_term", terms.value)
            self.record_metric("sm_chi2_term", terms.chi2)
        loss = self.scale_for_processes(loss, num_items_in_batch)
        return loss, outputs


def _right_to_left(ids: torch.Tensor, lengths: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows as left-padded rows, with their mask."""
    width = ids.shape[1]
    source = torch.arange(width, device=ids.device)[None, :] - (width - lengths)[:, None]
    return ids.gather(1, source.clamp(min=0)).masked_fill(source < 0, pad), (source >= 0).long()


def _concat_left_padded(ids: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks left-padded blocks of rows, padding each on the left to the widest."""
    width = max(block.shape[1] for block in ids)
    return (
        torch.cat([torch.nn.functional.pad(block, (width - block.shape[1], 0), value=0) for block in ids]),
        torch.cat([torch.nn.functional.pad(block, (width - block.shape[1], 0), value=0) for block in masks]),
    )


def _concat_right_padded(blocks: list[torch.Tensor], fill: int) -> torch.Tensor:
    """Stacks right-padded blocks of rows, padding each on the right to the widest."""
    width = max(block.shape[1] for block in blocks)
    return torch.cat([torch.nn.functional.pad(block, (0, width - block.shape[1]), value=fill) for block in blocks])
