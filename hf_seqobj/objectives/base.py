"""The objective registry: how a trainer finds the loss that `objective=...` names.

An objective is a class with a `name`, registered with :func:`register_objective`. The trainers build one instance
per run and route `compute_loss` through it. Adding an objective is adding a module to `hf_seqobj/objectives/` that
defines and registers its class (and, if it has knobs, a dataclass of fields that the argument classes inherit:
see `hf_seqobj/trainers/seqobj_config.py`).
"""

from __future__ import annotations

import abc
from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import torch


if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


class Objective(abc.ABC):
    """Base class of a training objective.

    Args:
        trainer: The trainer that owns this objective; `trainer.args` holds the objective's settings.
    """

    name: ClassVar[str]
    """The value of `objective=` that selects this class."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    @classmethod
    def validate_args(cls, args: TrainingArguments) -> None:
        """Checks the objective's settings in `args`; raises `ValueError` naming a bad value. Default: no checks."""
        return None

    @abc.abstractmethod
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The loss of one (micro-)batch, with the contract of `transformers.Trainer.compute_loss`."""

    def record_metric(self, key: str, value: float | torch.Tensor) -> None:
        """Adds one value of a metric; the trainer logs the mean of the values recorded since its last log."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        mode = "train" if self.trainer.model.training else "eval"
        self._metrics[mode][key].append(float(value))

    def pop_metrics(self, mode: str) -> dict[str, float]:
        """Returns the mean of each metric recorded in `mode` ("train" or "eval") since the last call, and resets."""
        means = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        self._metrics[mode].clear()
        return means


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator that makes an objective selectable by `objective=cls.name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"An objective class needs a non-empty string `name`; {cls.__qualname__} has {name!r}.")
    if name in OBJECTIVES and OBJECTIVES[name] is not cls:
        raise ValueError(f"Objective {name!r} is already registered by {OBJECTIVES[name].__qualname__}.")
    OBJECTIVES[name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    """Returns the registered objective class called `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the registered names.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; registered objectives: {', '.join(sorted(OBJECTIVES))}.")
    return OBJECTIVES[name]
