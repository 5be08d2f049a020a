"""Training objectives, selected by `objective=` in the argument classes.

Importing this package registers the built-in objectives.
"""

from hf_seqobj.objectives.base import OBJECTIVES, Objective, get_objective, register_objective
from hf_seqobj.objectives.mle import MLEObjective


__all__ = ["OBJECTIVES", "MLEObjective", "Objective", "get_objective", "register_objective"]
