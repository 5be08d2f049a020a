"""Named-entity recognition as generation: the output is one BIO tag per input word.

Data: CoNLL files (4 columns `TOKEN POS CHUNK NER` as in CoNLL-2003, or 2 columns `TOKEN TAG`), Hub-style datasets
with `tokens` / `ner_tags` columns (ClassLabel ids or strings), or the package's synthetic data set. Each tag is a
single token of the model's vocabulary: targets are encoded tag by tag, never through the tokenizer's text split.

Metric: seqeval span F1 / precision / recall (micro, default conlleval mode) and per-type F1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datasets import ClassLabel, Dataset, DatasetDict
from datasets import Sequence as SequenceFeature
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from hf_seqobj.oracles.span_f1 import BIO_TAG_PATTERN, corpus_partial_f1
from hf_seqobj.tasks.base import Reject, Task, raise_invalid, read_lines
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

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """seqeval scores of predicted tag strings against reference tag strings.

        A prediction is made to have as many tags as its reference before scoring: missing tags count as `O` and
        extra tags are cut, and non-tag tokens count as `O`. Neither is hidden: `length_mismatch_rate` is the share
        of predictions of the wrong length and `invalid_tag_rate` the share of predicted tokens that are not tags.
        """
        return tag_metrics([p.split() for p in predictions], [r.split() for r in references])


def tag_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval metrics of tag sequences (see :meth:`NERTask.score` for how lengths and invalid tags are handled)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    aligned, mismatched, invalid, total = [], 0, 0, 0
    for predicted, reference in zip(predictions, references):
        predicted = list(predicted)
        total += len(predicted)
        invalid += sum(tag == INVALID_TAG for tag in predicted)
        predicted = ["O" if tag == INVALID_TAG else tag for tag in predicted]
        if len(predicted) != len(reference):
            mismatched += 1
            predicted = (predicted + ["O"] * len(reference))[: len(reference)]
        aligned.append(predicted)
    references = [list(reference) for reference in references]
    metrics = {
        "f1": f1_score(references, aligned, zero_division=0),
        "precision": precision_score(references, aligned, zero_division=0),
        "recall": recall_score(references, aligned, zero_division=0),
        "length_mismatch_rate": mismatched / max(len(references), 1),
        "invalid_tag_rate": invalid / max(total, 1),
    }
    metrics.update(corpus_partial_f1(aligned, references))
    report = classification_report(references, aligned, output_dict=True, zero_division=0)
    for entity_type, values in report.items():
        if entity_type not in ("micro avg", "macro avg", "weighted avg"):
            metrics[f"f1_{entity_type}"] = values["f1-score"]
    return {key: float(value) for key, value in metrics.items()}
