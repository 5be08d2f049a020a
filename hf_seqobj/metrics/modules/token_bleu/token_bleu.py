"""Smoothed sentence BLEU on token ids, the metric the BLEU oracle optimises: an `evaluate` module.

`hf_seqobj.rewards.score("bleu", ...)`: sacrebleu's `sentence_bleu` ("exp" smoothing, effective order) with token
id i read as the word "w{i}", divided by 100. A sequence ends before its first `eos_token_id`; -100 and
`pad_token_id` are ignored.
"""

import evaluate

from hf_seqobj.metrics import CITATIONS, token_id_features, token_scores


_DESCRIPTION = (
    "Sentence BLEU-4 with exp smoothing and effective order on token ids, in [0, 1], averaged over pairs: the "
    "reward hf_seqobj's BLEU oracle, RAML and interpolation use."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: Token id sequences (lists of ints).
    references: One reference token id sequence per prediction.
    eos_token_id: A sequence ends before its first occurrence of this id (default: no EOS).
    pad_token_id: An id ignored wherever it occurs, like -100 (default: only -100).
    use_aggregator: True (default): the mean over pairs; False: a list with each pair's score.
Returns:
    bleu: sentence BLEU in [0, 1].
Examples:
    >>> token_bleu = evaluate.load(hf_seqobj.metrics.path("token_bleu"))
    >>> token_bleu.compute(predictions=[[5, 6, 7, 8]], references=[[5, 6, 7, 8]])
    {'bleu': 1.0}
"""


class TokenBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["sentence_bleu"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=token_id_features(),
        )

    def _compute(self, predictions, references, eos_token_id=None, pad_token_id=None, use_aggregator=True):
        return token_scores(("bleu",), predictions, references, eos_token_id, pad_token_id, use_aggregator)
