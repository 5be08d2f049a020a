"""The registrations of the built-in oracles (:func:`hf_seqobj.oracles.register_oracle`), in the order docs list them.

`span_f1` / `span_f1_partial` score BIO tag outputs (:class:`SpanF1Oracle`); `bleu` / `rouge2` search whole
completions (:class:`BeamOracle`); `rouge1` / `rougeL` are exact (:class:`ExactRougeOracle`). The ROUGE oracles score
rouge-score's units by default (:class:`MetricUnitsOracle`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_seqobj.oracles.align import continuation_mask
from hf_seqobj.oracles.base import OracleSettings, register_oracle
from hf_seqobj.oracles.beam import BeamOracle
from hf_seqobj.oracles.exact import ExactRougeOracle
from hf_seqobj.oracles.span_f1 import BIOTagSet, SpanF1Oracle
from hf_seqobj.oracles.units import MetricUnitsOracle, rouge_units


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


TEXT_SETTINGS = ("stop", "whole_words")
"""The settings every built-in text oracle reads."""

ROUGE_SETTINGS = (*TEXT_SETTINGS, "units")
"""The ROUGE oracles also read `units` (rouge-score's words or raw ids)."""


def word_continuations(tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> torch.Tensor | None:
    """The tokenizer's word-continuing ids (:func:`continuation_mask`) under `settings.whole_words`, else None."""
    return continuation_mask(tokenizer.get_vocab(), len(tokenizer)) if settings.whole_words else None


def text_oracle_arguments(tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> dict[str, Any]:
    """The keyword arguments every text oracle takes, from the tokenizer and the settings: `eos_token_id`,
    `pad_token_id`, `stop` and `continuation_ids`."""
    return {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "stop": settings.stop,
        "continuation_ids": word_continuations(tokenizer, settings),
    }


def _span_f1(mode: str):
    def factory(tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> SpanF1Oracle:
        tag_set = BIOTagSet.infer_from_vocab(tokenizer.get_vocab())
        return SpanF1Oracle(tag_set, tokenizer.eos_token_id, mode=mode, pad_token_id=tokenizer.pad_token_id)

    return factory


def in_metric_units(oracle: Any, metric: str, tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> Any:
    """`oracle` as it scores the reported metric's units: for ROUGE under `units="metric"`, wrapped in
    :class:`MetricUnitsOracle` over rouge-score's words (:func:`rouge_units`); else `oracle` itself (BLEU: sacrebleu
    scores case and punctuation, so ids are its units)."""
    if settings.units == "metric" and metric.startswith("rouge"):
        return MetricUnitsOracle(oracle, rouge_units(tokenizer))
    return oracle


def _beam(metric: str):
    def factory(tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> BeamOracle | MetricUnitsOracle:
        oracle = BeamOracle(
            metric,
            beam_size=settings.beam_size,
            lookahead=settings.lookahead,
            **text_oracle_arguments(tokenizer, settings),
        )
        return in_metric_units(oracle, metric, tokenizer, settings)

    return factory


def _exact(metric: str):
    def factory(tokenizer: PreTrainedTokenizerBase, settings: OracleSettings) -> ExactRougeOracle | MetricUnitsOracle:
        oracle = ExactRougeOracle(metric, **text_oracle_arguments(tokenizer, settings))
        return in_metric_units(oracle, metric, tokenizer, settings)

    return factory


register_oracle(
    "span_f1",
    output="bio_tags",
    factory=_span_f1("exact"),
    doc="exact oracle for span F1 with exact span matches (seqeval's micro F1) on BIO tags",
    exact=True,
)
register_oracle(
    "span_f1_partial",
    output="bio_tags",
    factory=_span_f1("partial"),
    doc="exact oracle for span F1 with partial matches (a predicted span overlaps a gold span of its type)",
    exact=True,
)
register_oracle(
    "bleu",
    output="text",
    factory=_beam("bleu"),
    doc="beam search over whole completions for sentence BLEU-4 (sacrebleu's smoothing) on token ids",
    settings=("beam_size", "lookahead", *TEXT_SETTINGS),
)
register_oracle(
    "rouge1",
    output="text",
    factory=_exact("rouge1"),
    doc="exact oracle for the ROUGE-1 F-measure on rouge-score's words (lowercased, no punctuation) or token ids",
    exact=True,
    settings=ROUGE_SETTINGS,
)
register_oracle(
    "rouge2",
    output="text",
    factory=_beam("rouge2"),
    doc="beam search over whole completions for the ROUGE-2 F-measure on rouge-score's words or token ids",
    settings=("beam_size", "lookahead", *ROUGE_SETTINGS),
)
register_oracle(
    "rougeL",
    output="text",
    factory=_exact("rougeL"),
    doc="exact oracle for the ROUGE-L F-measure on rouge-score's words (lowercased, no punctuation) or token ids",
    exact=True,
    settings=ROUGE_SETTINGS,
)
