"""Span F1 of BIO tag sequences as the hf_seqobj `ner` task counts it: an `evaluate` module.

Exact spans: seqeval's micro F1 / precision / recall (default conlleval mode) and F1 per entity type; partial
spans: hf_seqobj's partial-match span F1 (`hf_seqobj.oracles.corpus_partial_f1`). A prediction of the wrong length
is padded with `O` or cut (counted in `length_mismatch_rate`), and a predicted token that is not a BIO tag counts as
`O` (counted in `invalid_tag_rate`), exactly as the task scores generated tags (`hf_seqobj.tasks.tag_metrics`).
"""

import datasets
import evaluate

from hf_seqobj.metrics import CITATIONS
from hf_seqobj.oracles.span_f1 import BIO_TAG_PATTERN
from hf_seqobj.tasks.ner import INVALID_TAG, tag_metrics


_DESCRIPTION = (
    "Span F1 of BIO tag sequences: seqeval's exact-match micro F1, precision, recall and F1 per type, the partial-"
    "match span F1, and the shares of predictions of the wrong length and of predicted tokens that are not tags; the "
    "numbers hf_seqobj's ner task reports."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: Predicted tag sequences, each a list of tags or one string of space-separated tags.
    references: Gold tag sequences in the same form, one per prediction (BIO tags only).
Returns:
    f1, precision, recall: seqeval micro scores in [0, 1] (exact span matches).
    partial_f1, partial_precision, partial_recall: partial-match span scores in [0, 1].
    f1_TYPE: seqeval F1 of each entity type of the references and predictions.
    length_mismatch_rate, invalid_tag_rate: fractions in [0, 1].
Examples:
    >>> span_f1 = evaluate.load(hf_seqobj.metrics.path("span_f1"))
    >>> span_f1.compute(predictions=["B-PER I-PER O"], references=["B-PER I-PER O"])["f1"]
    1.0
"""

_TAGS = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("string")),
        "references": datasets.Sequence(datasets.Value("string")),
    }
)
_STRINGS = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class SpanF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["seqeval"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=[_TAGS, _STRINGS],
        )

    def _compute(self, predictions, references):
        predicted = [p.split() if isinstance(p, str) else list(p) for p in predictions]
        gold = [r.split() if isinstance(r, str) else list(r) for r in references]
        predicted = [[tag if BIO_TAG_PATTERN.match(tag) else INVALID_TAG for tag in row] for row in predicted]
        return tag_metrics(predicted, gold)
