"""Dynamic oracles: the best next token given the gold output and any prefix (docs/oracles.md).

Every oracle is one registration (:func:`register_oracle`, read from :data:`ORACLES`): :func:`make_oracle` builds
one by name, :class:`Oracle` is the interface they share, and :func:`register_sentence_metric` makes an oracle of a
user's sentence metric on token ids. This package imports nothing else from hf_seqobj except `hf_seqobj.rewards`
(the shared token-id metrics) and `hf_seqobj.constants`, so it can be used (and tested) on its own.
"""

from hf_seqobj.oracles.align import STOP_RULES, continuation_mask
from hf_seqobj.oracles.base import (
    ORACLE_NAMES,
    ORACLES,
    OUTPUT_KINDS,
    Oracle,
    OracleSettings,
    OracleSpec,
    get_oracle,
    make_oracle,
    oracle_names,
    register_oracle,
)
from hf_seqobj.oracles.beam import BeamOracle, BeamSearchResult
from hf_seqobj.oracles.builtin import text_oracle_arguments, word_continuations
from hf_seqobj.oracles.exact import ExactRougeOracle
from hf_seqobj.oracles.metric import SentenceMetricOracle, register_sentence_metric, sentence_metric_oracle
from hf_seqobj.oracles.span_f1 import (
    BIOTagSet,
    SpanF1Oracle,
    corpus_partial_f1,
    span_f1_oracle,
    span_f1_oracle_batch,
    span_f1_score,
)
from hf_seqobj.oracles.units import UNIT_CHOICES, MetricUnitsOracle, rouge_units


__all__ = [
    "ORACLES",
    "ORACLE_NAMES",
    "OUTPUT_KINDS",
    "STOP_RULES",
    "UNIT_CHOICES",
    "BIOTagSet",
    "BeamOracle",
    "BeamSearchResult",
    "ExactRougeOracle",
    "MetricUnitsOracle",
    "Oracle",
    "OracleSettings",
    "OracleSpec",
    "SentenceMetricOracle",
    "SpanF1Oracle",
    "continuation_mask",
    "corpus_partial_f1",
    "get_oracle",
    "make_oracle",
    "oracle_names",
    "register_oracle",
    "register_sentence_metric",
    "rouge_units",
    "sentence_metric_oracle",
    "span_f1_oracle",
    "span_f1_oracle_batch",
    "span_f1_score",
    "text_oracle_arguments",
    "word_continuations",
]
