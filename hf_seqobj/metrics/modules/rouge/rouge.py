"""ROUGE of texts as the hf_seqobj `summarization` task reports it: an `evaluate` module.

rouge-score's ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measure with stemming (Lsum splits sentences on newlines),
x100, averaged over the pairs (`hf_seqobj.tasks.summarization.rouge_scores`). Unlike evaluate's `rouge` (fractions,
no stemming by default), these are the task's numbers.
"""

import datasets
import evaluate

from hf_seqobj.metrics import CITATIONS
from hf_seqobj.tasks.summarization import rouge_example_scores, rouge_scores


_DESCRIPTION = (
    "rouge-score ROUGE-1/2/L/Lsum F-measure x100 with stemming, the mean over pairs: the numbers hf_seqobj's "
    "summarization task reports."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: Generated texts.
    references: One reference text per prediction.
    use_aggregator: True (default): the mean over pairs; False: a list with each pair's score.
Returns:
    rouge1, rouge2, rougeL, rougeLsum: F-measure x100.
Examples:
    >>> rouge = evaluate.load(hf_seqobj.metrics.path("rouge"))
    >>> rouge.compute(predictions=["the cats sat"], references=["the cat sat"])["rouge1"]
    100.0
"""


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["rouge"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_aggregator=True):
        if use_aggregator:
            return rouge_scores(list(predictions), list(references))
        scores = rouge_example_scores(list(predictions), list(references))
        return {name: [100.0 * value for value in values] for name, values in scores.items()}
