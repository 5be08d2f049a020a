"""DAgger with dynamic oracles (`objective="dagger"`, docs/dagger.md): the objective and its relabelling.

- :mod:`~hf_seqobj.objectives.dagger.objective`: :class:`DAggerObjective` and its settings, :class:`DAggerArguments`;
  importing this package registers it;
- :mod:`~hf_seqobj.objectives.dagger.relabeling`: :class:`DAggerRelabeler` (roll in, then oracle labels at every
  position) and :class:`DAggerDataCollator`, the same relabelling as a collator for a hand-written training loop.
"""

from hf_seqobj.objectives.dagger.objective import DAggerArguments, DAggerObjective
from hf_seqobj.objectives.dagger.relabeling import DAggerDataCollator, DAggerRelabeler, RelabelStats


__all__ = ["DAggerArguments", "DAggerDataCollator", "DAggerObjective", "DAggerRelabeler", "RelabelStats"]
