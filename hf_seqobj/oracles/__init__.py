"""Dynamic oracles: the best next token given the gold output and any prefix (METHODS.md, section 3).

This package imports nothing else from hf_seqobj except `hf_seqobj.rewards` (the shared token-id metrics, which
import nothing from hf_seqobj), so it can be used (and tested) on its own.
"""

from hf_seqobj.oracles.beam import BeamOracle, BeamSearchResult
from hf_seqobj.oracles.span_f1 import (
    BIOTagSet,
    SpanF1Oracle,
    corpus_partial_f1,
    span_f1_oracle,
    span_f1_oracle_batch,
    span_f1_score,
)


__all__ = [
    "BIOTagSet",
    "BeamOracle",
    "BeamSearchResult",
    "SpanF1Oracle",
    "corpus_partial_f1",
    "span_f1_oracle",
    "span_f1_oracle_batch",
    "span_f1_score",
]
