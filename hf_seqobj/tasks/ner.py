"""Named-entity recognition as generation: the output is one BIO tag per input word.

Data: CoNLL files (4 columns `TOKEN POS CHUNK NER` as in CoNLL-2003, or 2 columns `TOKEN TAG`), Hub-style datasets
with `tokens` / `ner_tags` columns (ClassLabel ids or strings), or the package's synthetic data set. Each tag is a
single token of the model's vocabulary: targets are encoded tag by tag, never through the tokenizer's text split.

Metric: seqeval span F1 / precision / recall (micro, default conlleval mode) and per-type F1, from per-sentence span
counts (:func:`tag_statistics`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from datasets import Sequence as SequenceFeature
from seqeval.metrics.sequence_labeling import get_entities

from hf_seqobj.oracles.span_f1 import BIO_TAG_PATTERN, _parse, _partial_counts, _read_spans
from hf_seqobj.tasks.base import Reject, Statistics, Task, raise_invalid, ratio, read_lines, weighted_sums
from hf_seqobj.tasks.files import clip


INVALID_TAG = "<invalid>"


_FIELD_SEPARATOR = re.compile(r"[ \t\f\v\r]+")
"""CoNLL columns are separated by ASCII spaces or tabs; other (Unicode) whitespace belongs to a token."""


def read_conll(path: str, reject: Reject = raise_invalid) -> Dataset:
    """Reads a CoNLL file: one `TOKEN ... TAG` line per word (4 or 2 columns), a blank line between sentences.

    The file is UTF-8 (a byte-order mark is dropped), split into lines on `\\n` (`\\r\\n` too) and into columns on
    spaces and tabs. `-DOCSTART-` lines are skipped. Every line of a file must have the same number of columns.

    Args:
        path: The file.
        reject: Called with `(FILE:LINE, problem)` on a malformed line (a column count that is not 2 or 4, or not the
            file's, or a tag that is not BIO); when it returns, the line's sentence is left out. Default: an error.

    Returns:
        A dataset with `source` (words joined by spaces) and `target` (tags joined by spaces).
    """
    sources, targets = [], []
    words: list[str] = []
    tags: list[str] = []
    bad = False
    columns = None
    for number, line in enumerate([*read_lines(path), ""], start=1):
        text = line.strip(" \t\f\v\r")
        fields = _FIELD_SEPARATOR.split(text) if text else []
        if not fields:
            if words and not bad:
                sources.append(" ".join(words))
                targets.append(" ".join(tags))
            words, tags, bad = [], [], False
            continue
        if fields[0] == "-DOCSTART-" or bad:
            continue
        problem = None
        if len(fields) not in (2, 4):
            problem = (
                f"{len(fields)} fields in {clip(text)}; a CoNLL line has 4 (TOKEN POS CHUNK NER) or 2 (TOKEN TAG), "
                "separated by spaces or tabs"
            )
        elif columns is not None and len(fields) != columns:
            problem = f"{len(fields)} fields where earlier lines have {columns}"
        elif not BIO_TAG_PATTERN.match(fields[-1]):
            problem = f"{clip(fields[-1])} is not a BIO tag (expected 'O', 'B-TYPE' or 'I-TYPE')"
        if problem is not None:
            reject(f"{path}:{number}", problem)
            bad = True
            continue
        columns = columns or len(fields)
        words.append(fields[0])
        tags.append(fields[-1])
    return Dataset.from_dict({"source": sources, "target": targets})


class NERTask(Task):
    """BIO tagging as generation (see the module docstring)."""

    name = "ner"
    default_tokenizer_type = "wordlevel"
    output_kind = "bio_tags"

    def load_dataset_splits(self) -> dict[str, Dataset]:
        if self.args.dataset_name != "synthetic":
            return super().load_dataset_splits()
        from hf_seqobj.tasks.synthetic import synthetic_ner_splits

        args = self.args
        return dict(synthetic_ner_splits(args.synthetic_train_size, args.synthetic_eval_size, args.synthetic_seed))

    def check_splits(self, splits: DatasetDict) -> None:
        """Every tag of the validation and test splits must occur in the training split (all of it, before
        `max_train_samples` cuts it)."""
        if "train" not in splits:
            return
        known = {tag for target in splits["train"]["target"] for tag in target.split()}
        for split in ("validation", "test"):
            if split not in splits:
                continue
            for index, target in enumerate(splits[split]["target"]):
                unknown = sorted(set(target.split()) - known)
                if unknown:
                    raise ValueError(
                        f"{self.describe_source(split)}, sentence {index}: tags {unknown} are outside the training "
                        f"label set {sorted(known)}."
                    )

    def load_file(self, path: str) -> Dataset:
        return read_conll(path, self.reject)

    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        for column in (self.args.tokens_column, self.args.tags_column):
            if column not in dataset.column_names:
                raise ValueError(f"{where} has no column {column!r}; its columns are {dataset.column_names}.")
        feature = dataset.features[self.args.tags_column]
        names = None
        if isinstance(feature, SequenceFeature) and isinstance(feature.feature, ClassLabel):
            names = feature.feature.names
        elif isinstance(feature, list) and feature and isinstance(feature[0], ClassLabel):
            names = feature[0].names
        sources, targets = [], []
        for index, (tokens, tags) in enumerate(zip(dataset[self.args.tokens_column], dataset[self.args.tags_column])):
            if not tokens or len(tokens) != len(tags):
                self.reject(f"{where}, row {index}", f"{len(tokens)} tokens but {len(tags)} tags")
                continue
            if names is not None:
                tags = [names[tag] for tag in tags]
            tags = [str(tag) for tag in tags]
            invalid = next((tag for tag in tags if not BIO_TAG_PATTERN.match(tag)), None)
            if invalid is not None:
                self.reject(
                    f"{where}, row {index}", f"{invalid!r} is not a BIO tag (expected 'O', 'B-TYPE' or 'I-TYPE')"
                )
                continue
            sources.append(" ".join(tokens))
            targets.append(" ".join(tags))
        return Dataset.from_dict({"source": sources, "target": targets})

    def extra_tokens(self, splits: DatasetDict) -> list[str]:
        """Every tag of the data, completed to a full BIO set (`O`, and `B-X` and `I-X` for each type X seen).

        The completion matters to the span-F1 oracle, which may emit `I-X` (or `B-X`) for a type whose other tag
        never occurs in the data.
        """
        tags = {tag for dataset in splits.values() for target in dataset["target"] for tag in target.split()}
        types = {tag[2:] for tag in tags if tag != "O"}
        return sorted(tags | {"O"} | {f"{kind}-{typ}" for typ in types for kind in "BI"})

    def encode_target(self, text, tokenizer):
        # token by token: `get_vocab()` builds the whole vocabulary per call, which costs more than the model's
        # tokenization of the source (seconds per thousand sentences at 8000 words)
        tags = text.split()
        ids = tokenizer.convert_tokens_to_ids(tags)
        for tag, token_id in zip(tags, ids):
            if token_id is None or (token_id == tokenizer.unk_token_id and tag != tokenizer.unk_token):
                raise ValueError(
                    f"Tag {tag!r} is not a token of the tokenizer; add the task's tags with extra_tokens."
                )
        return ids

    def decode(self, ids, tokenizer):
        tokens = tokenizer.convert_ids_to_tokens(list(ids))
        return " ".join(token if BIO_TAG_PATTERN.match(token) else INVALID_TAG for token in tokens)

    def example_statistics(self, predictions: list[str], references: list[str]) -> Statistics:
        """Span counts of predicted against reference tag strings: :func:`tag_statistics` of the split strings."""
        return tag_statistics([p.split() for p in predictions], [r.split() for r in references])

    def metrics_from_sums(self, sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
        """seqeval span F1 / precision / recall and per-type F1, partial-match F1, and the length-mismatch and
        invalid-tag rates: :func:`tag_metrics_from_sums`."""
        return tag_metrics_from_sums(sums, count)


def tag_statistics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> Statistics:
    """Per-sentence sufficient statistics of the NER metrics (see :func:`tag_metrics_from_sums`).

    A prediction is first made to have as many tags as its reference: non-tag tokens (`<invalid>`) count as `O`,
    missing tags are `O` and extra tags are cut. Spans are read as seqeval reads them (`get_entities`, default mode).
    Per sentence:

    - `tp`, `predicted`, `gold`: spans predicted exactly (same type, start and end), predicted spans, gold spans;
    - `tp_X`, `predicted_X`, `gold_X`: the same for the spans of type X, for each type X of the predictions and
      references;
    - `partial_hits` (a: predicted spans that overlap a gold position of their type) and `partial_covered` (b: gold
      spans overlapped by a predicted span of their type), the partial-match counts of
      :func:`hf_seqobj.oracles.span_f1.corpus_partial_f1`;
    - `length_mismatch` (1 when the prediction's length differs from the reference's), `invalid_tags` (non-tag
      tokens predicted) and `predicted_tags` (tokens predicted, before the alignment).

    Raises:
        ValueError: the predictions and references differ in number.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    rows = []
    for predicted, reference in zip(predictions, references):
        predicted, reference = list(predicted), list(reference)
        row = {"invalid_tags": sum(tag == INVALID_TAG for tag in predicted), "predicted_tags": len(predicted)}
        row["length_mismatch"] = int(len(predicted) != len(reference))
        aligned = (["O" if tag == INVALID_TAG else tag for tag in predicted] + ["O"] * len(reference))[
            : len(reference)
        ]
        predicted_spans, gold_spans = set(get_entities(aligned)), set(get_entities(reference))
        row.update(tp=len(predicted_spans & gold_spans), predicted=len(predicted_spans), gold=len(gold_spans))
        for typ in {span[0] for span in predicted_spans | gold_spans}:
            row[f"tp_{typ}"] = sum(span[0] == typ for span in predicted_spans & gold_spans)
            row[f"predicted_{typ}"] = sum(span[0] == typ for span in predicted_spans)
            row[f"gold_{typ}"] = sum(span[0] == typ for span in gold_spans)
        gold_parsed = [_parse(tag, "reference") for tag in reference]
        row["partial_hits"], row["partial_covered"] = _partial_counts(
            _read_spans([_parse(tag, "prediction") for tag in aligned]),
            _read_spans(gold_parsed),
            [typ for _, typ in gold_parsed],
        )
        rows.append(row)
    names = ["tp", "predicted", "gold", "partial_hits", "partial_covered"]
    names += ["length_mismatch", "invalid_tags", "predicted_tags"]
    types = sorted({name[3:] for row in rows for name in row if name.startswith("tp_")})
    names += [f"{kind}_{typ}" for typ in types for kind in ("tp", "predicted", "gold")]
    return {name: np.array([row.get(name, 0) for row in rows], dtype=np.float64) for name in names}


def _f1(tp: np.ndarray, predicted: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) as seqeval computes them: P = tp / predicted, R = tp / gold, F1 = 2 P R / (P + R),
    each 0 where its denominator is 0."""
    precision, recall = ratio(tp, predicted), ratio(tp, gold)
    return precision, recall, ratio(2 * precision * recall, precision + recall)


def tag_metrics_from_sums(sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
    """The NER metrics from summed :func:`tag_statistics` (`count`, the number of sentences, is the weight).

    With sums T = tp, P = predicted, G = gold (micro-averaged, as seqeval averages), precision = T / P, recall =
    T / G and `f1` = 2 precision recall / (precision + recall); `f1_X` likewise from the counts of type X;
    `partial_precision` = a / P, `partial_recall` = b / G and `partial_f1` their harmonic mean;
    `length_mismatch_rate` = sum(length_mismatch) / count and `invalid_tag_rate` = sum(invalid_tags) /
    max(sum(predicted_tags), 1). Every ratio is 0 where its denominator is 0.
    """
    precision, recall, f1 = _f1(sums["tp"], sums["predicted"], sums["gold"])
    metrics = {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "length_mismatch_rate": ratio(sums["length_mismatch"], count),
        "invalid_tag_rate": ratio(sums["invalid_tags"], np.maximum(sums["predicted_tags"], 1)),
    }
    partial_precision = ratio(sums["partial_hits"], sums["predicted"])
    partial_recall = ratio(sums["partial_covered"], sums["gold"])
    metrics["partial_precision"], metrics["partial_recall"] = partial_precision, partial_recall
    metrics["partial_f1"] = ratio(2 * partial_precision * partial_recall, partial_precision + partial_recall)
    for typ in sorted(name[3:] for name in sums if name.startswith("tp_")):
        metrics[f"f1_{typ}"] = _f1(sums[f"tp_{typ}"], sums[f"predicted_{typ}"], sums[f"gold_{typ}"])[2]
    return metrics


def tag_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval metrics of tag sequences (see :func:`tag_statistics` for how lengths and invalid tags are handled):
    :func:`tag_metrics_from_sums` of the summed :func:`tag_statistics`."""
    metrics = tag_metrics_from_sums(*weighted_sums(tag_statistics(predictions, references)))
    return {name: float(values[0]) for name, values in metrics.items()}
