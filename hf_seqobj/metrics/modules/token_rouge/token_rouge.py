"""ROUGE-1, ROUGE-2 and ROUGE-L F-measure on token ids, the metrics the ROUGE oracles optimise: an `evaluate` module.

`hf_seqobj.rewards.score("rouge1" | "rouge2" | "rougeL", ...)`: rouge-score's F-measure (no stemming) with token id
i read as the word "w{i}". A sequence ends before its first `eos_token_id`; -100 and `pad_token_id` are ignored.
"""

import evaluate

from hf_seqobj.metrics import CITATIONS, token_id_features, token_scores


_DESCRIPTION = (
    "ROUGE-1/2/L F-measure on token ids, in [0, 1], averaged over pairs: the rewards hf_seqobj's ROUGE oracles, "
    "RAML and interpolation use."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: Token id sequences (lists of ints).
    references: One reference token id sequence per prediction.
    rouge_types: Which of "rouge1", "rouge2", "rougeL" to compute (default all three).
    eos_token_id: A sequence ends before its first occurrence of this id (default: no EOS).
    pad_token_id: An id ignored wherever it occurs, like -100 (default: only -100).
    use_aggregator: True (default): the mean over pairs; False: a list with each pair's score.
Returns:
    rouge1, rouge2, rougeL: F-measure in [0, 1].
Examples:
    >>> token_rouge = evaluate.load(hf_seqobj.metrics.path("token_rouge"))
    >>> token_rouge.compute(predictions=[[5, 6, 7]], references=[[5, 6, 9]], rouge_types=["rouge1"])
    {'rouge1': 0.6666666666666666}
"""


class TokenRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["rouge"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=token_id_features(),
        )

    def _compute(
        self,
        predictions,
        references,
        rouge_types=("rouge1", "rouge2", "rougeL"),
        eos_token_id=None,
        pad_token_id=None,
        use_aggregator=True,
    ):
        rouge_types = [rouge_types] if isinstance(rouge_types, str) else list(rouge_types)
        unknown = [name for name in rouge_types if name not in ("rouge1", "rouge2", "rougeL")]
        if unknown or not rouge_types:
            raise ValueError(f"rouge_types must be some of 'rouge1', 'rouge2', 'rougeL', got {rouge_types!r}.")
        return token_scores(tuple(rouge_types), predictions, references, eos_token_id, pad_token_id, use_aggregator)
