"""The ERPO family (Tan et al. 2018, "Connecting the Dots Between MLE and RL for Sequence Generation").

Four points of one objective, E_q[R] - alpha KL(q || p_theta) + beta H(q), each building a new training batch from
the gold batch with random draws and training on it with a token cross-entropy: :mod:`.raml`, :mod:`.data_noising`,
:mod:`.spg` and :mod:`.interpolation`; what they share is in :mod:`.common`. Importing this package registers them.
"""

from hf_seqobj.objectives.erpo.data_noising import DataNoisingArguments, DataNoisingObjective
from hf_seqobj.objectives.erpo.interpolation import (
    InterpolationAnnealingCallback,
    InterpolationArguments,
    InterpolationObjective,
)
from hf_seqobj.objectives.erpo.raml import RAMLArguments, RAMLObjective
from hf_seqobj.objectives.erpo.spg import SPGArguments, SPGObjective


__all__ = [
    "DataNoisingArguments",
    "DataNoisingObjective",
    "InterpolationAnnealingCallback",
    "InterpolationArguments",
    "InterpolationObjective",
    "RAMLArguments",
    "RAMLObjective",
    "SPGArguments",
    "SPGObjective",
]
