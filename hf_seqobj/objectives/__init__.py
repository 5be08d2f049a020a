"""Training objectives, selected by `objective=` in the argument classes.

Importing this package registers the built-in objectives.
"""

from hf_seqobj.objectives.base import OBJECTIVES, Objective, get_objective, register_objective
from hf_seqobj.objectives.dagger import DAggerArguments, DAggerObjective
from hf_seqobj.objectives.erpo import (
    DataNoisingArguments,
    DataNoisingObjective,
    InterpolationAnnealingCallback,
    InterpolationArguments,
    InterpolationObjective,
    RAMLArguments,
    RAMLObjective,
    SPGArguments,
    SPGObjective,
)
from hf_seqobj.objectives.mle import MLEObjective
from hf_seqobj.objectives.scheduled_sampling import ScheduledSamplingArguments, ScheduledSamplingObjective
from hf_seqobj.objectives.sequencematch import (
    SequenceMatchArguments,
    SequenceMatchLoss,
    SequenceMatchObjective,
    sequencematch_loss,
)


__all__ = [
    "OBJECTIVES",
    "DAggerArguments",
    "DAggerObjective",
    "DataNoisingArguments",
    "DataNoisingObjective",
    "InterpolationAnnealingCallback",
    "InterpolationArguments",
    "InterpolationObjective",
    "MLEObjective",
    "Objective",
    "RAMLArguments",
    "RAMLObjective",
    "SPGArguments",
    "SPGObjective",
    "ScheduledSamplingArguments",
    "ScheduledSamplingObjective",
    "SequenceMatchArguments",
    "SequenceMatchLoss",
    "SequenceMatchObjective",
    "get_objective",
    "register_objective",
    "sequencematch_loss",
]
