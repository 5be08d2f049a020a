"""Training objectives, selected by `objective=` in the argument classes.

Importing this package registers the built-in objectives.
"""

from hf_seqobj.objectives.base import OBJECTIVES, Objective, get_objective, register_objective
from hf_seqobj.objectives.dagger import DAggerArguments, DAggerObjective
from hf_seqobj.objectives.mle import MLEObjective
from hf_seqobj.objectives.scheduled_sampling import ScheduledSamplingArguments, ScheduledSamplingObjective


__all__ = [
    "OBJECTIVES",
    "DAggerArguments",
    "DAggerObjective",
    "MLEObjective",
    "Objective",
    "ScheduledSamplingArguments",
    "ScheduledSamplingObjective",
    "get_objective",
    "register_objective",
]
