"""Corpus BLEU and chrF of sacrebleu on texts as the hf_seqobj `translation` task reports them: an `evaluate` module.

sacrebleu's defaults: BLEU-4 with 13a tokenisation and "exp" smoothing, chrF (character 6-grams, beta 2), both
x100 (`hf_seqobj.tasks.translation.sacrebleu_scores`).
"""

import datasets
import evaluate

from hf_seqobj.metrics import CITATIONS
from hf_seqobj.tasks.translation import sacrebleu_scores


_DESCRIPTION = (
    "sacrebleu corpus BLEU (13a tokenisation) and chrF, x100, of detokenised texts: the numbers hf_seqobj's "
    "translation task reports."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: Generated texts.
    references: One reference text per prediction, or one list of reference texts per prediction (every list as
        long).
    metrics: Which of "bleu" and "chrf" to compute (default both).
Returns:
    bleu, chrf: sacrebleu corpus scores in [0, 100].
Examples:
    >>> bleu_chrf = evaluate.load(hf_seqobj.metrics.path("bleu_chrf"))
    >>> bleu_chrf.compute(predictions=["a cat sat on the mat"], references=["a cat sat on the mat"])
    {'bleu': 100.00000000000004, 'chrf': 100.0}
"""


class BleuChrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["sacrebleu"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, metrics=("bleu", "chrf")):
        return sacrebleu_scores(list(predictions), list(references), tuple(metrics))
