"""Dynamic oracles: the best next token given the gold output and any prefix (docs/oracles.md).

:func:`make_oracle` builds one by name (:data:`ORACLES`); :class:`Oracle` is the interface they share. This package
imports nothing else from hf_seqobj except `hf_seqobj.rewards` (the shared token-id metrics) and
`hf_seqobj.constants`, so it can be used (and tested) on its own.
"""

from hf_seqobj.oracles.align import STOP_RULES, continuation_mask
from hf_seqobj.oracles.base import EXACT_ORACLES, ORACLES, Oracle, make_oracle
from hf_seqobj.oracles.beam import BeamOracle, BeamSearchResult
from hf_seqobj.oracles.exact import ExactRougeOracle
from hf_seqobj.oracles.span_f1 import (
    BIOTagSet,
    SpanF1Oracle,
    corpus_partial_f1,
    span_f1_oracle,
    span_f1_oracle_batch,
    span_f1_score,
)


__all__ = [
    "EXACT_ORACLES",
    "ORACLES",
    "STOP_RULES",
    "ExactRougeOracle",
    "continuation_mask",
    "BIOTagSet",
    "BeamOracle",
    "BeamSearchResult",
    "Oracle",
    "SpanF1Oracle",
    "corpus_partial_f1",
    "make_oracle",
    "span_f1_oracle",
    "span_f1_oracle_batch",
    "span_f1_score",
]
