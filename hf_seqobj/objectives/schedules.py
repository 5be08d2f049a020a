"""Schedules of the on-policy objectives, as pure functions of the global step (so they survive resume).

Scheduled sampling's probability of keeping the gold token (docs/scheduled_sampling.md) and DAgger's oracle mixing
probability beta (docs/dagger.md).
"""

from __future__ import annotations

import math


SS_SCHEDULES = ("linear", "exponential", "inverse_sigmoid")
"""Scheduled-sampling schedules of eps, the probability of feeding the gold token."""

SS_DEFAULT_K = {"linear": 1.0, "exponential": 0.9999, "inverse_sigmoid": 500.0}
"""The default k of each scheduled-sampling schedule (Texar's inverse sigmoid uses k = 500)."""

BETA_SCHEDULES = ("constant", "linear", "exponential", "agreement")
"""DAgger's beta schedules after the teacher-forcing warm-up."""

ROLLIN_FRACTION_SCHEDULES = ("constant", "agreement")
"""How DAgger's share of rolled-in examples is set: fixed, or following the running oracle agreement."""


def scheduled_sampling_eps(step: int, schedule: str, k: float, c: float = 0.0, eps_min: float = 0.0) -> float:
    """The probability of feeding the gold token at global step `step` (Bengio et al. 2015).

    - linear: `max(eps_min, k - c * step)`
    - exponential: `max(eps_min, k ** step)` (0 < k < 1)
    - inverse_sigmoid: `max(eps_min, k / (k + exp(step / k)))` (k >= 1)

    Args:
        step: The global (optimizer) step, >= 0.
        schedule: One of `SS_SCHEDULES`.
        k: The schedule's k.
        c: The slope of the linear schedule.
        eps_min: The floor of every schedule.

    Returns:
        eps in [0, 1].
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    if schedule == "linear":
        value = k - c * step
    elif schedule == "exponential":
        value = k**step
    elif schedule == "inverse_sigmoid":
        exponent = step / k
        value = 0.0 if exponent > 700 else k / (k + math.exp(exponent))
    else:
        raise ValueError(f"schedule must be one of {SS_SCHEDULES}, got {schedule!r}.")
    return min(1.0, max(eps_min, value))


def check_scheduled_sampling(schedule: str, k: float, c: float, eps_min: float) -> None:
    """Raises ValueError naming a bad scheduled-sampling setting."""
    if schedule not in SS_SCHEDULES:
        raise ValueError(f"ss_schedule must be one of {SS_SCHEDULES}, got {schedule!r}.")
    if schedule == "linear" and not (0.0 <= k <= 1.0 and c >= 0.0):
        raise ValueError(f"The linear schedule needs 0 <= ss_k <= 1 and ss_c >= 0, got ss_k={k}, ss_c={c}.")
    if schedule == "exponential" and not 0.0 < k <= 1.0:
        raise ValueError(f"The exponential schedule needs 0 < ss_k <= 1, got ss_k={k}.")
    if schedule == "inverse_sigmoid" and k < 1.0:
        raise ValueError(f"The inverse_sigmoid schedule needs ss_k >= 1, got ss_k={k}.")
    if not 0.0 <= eps_min <= 1.0:
        raise ValueError(f"ss_eps_min must be in [0, 1], got {eps_min}.")


def dagger_beta(
    step: int,
    beta: float,
    schedule: str,
    warmup_steps: int = 0,
    max_steps: int = 0,
    decay: float = 1.0,
    agreement: float | None = None,
) -> float:
    """DAgger's probability of taking the oracle's token in the roll-in, at global step `step`.

    During the first `warmup_steps` steps DAgger trains with teacher forcing, which is beta = 1. After them:

    - constant: `beta`
    - linear: `beta` decaying linearly to 0 at `max_steps`
    - exponential: `beta * decay ** (step - warmup_steps)`
    - agreement: `max(beta, 1 - a)`, where a is the running oracle agreement of the steps before (the share of
      labelled roll-in positions where the model's greedy token is the oracle's label); `beta` until a is known.
      The further the model's roll-ins are from what the oracle teaches, the more of the expert's tokens they
      keep; `beta` is the floor.

    Args:
        step: The global step.
        beta: The mixing probability when the warm-up ends.
        schedule: One of `BETA_SCHEDULES`.
        warmup_steps: Steps of teacher forcing first.
        max_steps: The run's last step (the linear schedule reaches 0 there).
        decay: The factor per step of the exponential schedule.
        agreement: The running oracle agreement in [0, 1] (agreement schedule), None before it is measured.
    """
    if step < warmup_steps:
        return 1.0
    done = step - warmup_steps
    if schedule == "constant":
        return beta
    if schedule == "linear":
        span = max(max_steps - warmup_steps, 1)
        return beta * max(0.0, 1.0 - done / span)
    if schedule == "exponential":
        return beta * decay**done
    if schedule == "agreement":
        return beta if agreement is None else max(beta, 1.0 - agreement)
    raise ValueError(f"dagger_beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}.")


def rollin_fraction(fraction: float, schedule: str, agreement: float | None = None) -> float:
    """DAgger's expected share of examples that roll in (the others are teacher-forced).

    - constant: `fraction`
    - agreement: `max(fraction, a)`, a the running oracle agreement of the steps before; `fraction` until a is
      known. Rows roll in as often as the model's roll-ins already agree with the oracle, never less than
      `fraction` (the floor, so that the agreement keeps being measured).

    Args:
        fraction: The fixed share, or the floor of the agreement schedule, in (0, 1].
        schedule: One of `ROLLIN_FRACTION_SCHEDULES`.
        agreement: The running oracle agreement in [0, 1], None before it is measured.
    """
    if schedule == "constant":
        return fraction
    if schedule == "agreement":
        return fraction if agreement is None else max(fraction, agreement)
    raise ValueError(f"rollin_fraction_schedule must be one of {ROLLIN_FRACTION_SCHEDULES}, got {schedule!r}.")
