"""What every task shares: the Task interface, tokenisation for both model families, and generation metrics.

A task turns its data into a `datasets.DatasetDict` with string columns `source` and `target` and splits among
`train`, `validation` and `test`; says how its texts become token ids and back; and scores predicted against
reference texts offline.

Scoring goes through per-example sufficient statistics: :meth:`Task.example_statistics` gives, for examples
i = 1..n, named columns s_i (one number per example), and :meth:`Task.corpus_metrics` computes every corpus metric
from the weighted sums S = sum_i w_i s_i and the weight W = sum_i w_i alone. All weights 1 give the corpus score
(:meth:`Task.score`); the counts of a bootstrap resample (how often each example was drawn) give the metric of the
resampled corpus, so any task, a user's own included, gets paired bootstrap intervals without code of its own.
:func:`output_statistics` are the task-independent statistics of the outputs themselves (length, EOS, repetition).
"""

from __future__ import annotations

import abc
import codecs
import csv
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from hf_seqobj.constants import IGNORE_INDEX


if TYPE_CHECKING:
    from transformers import EvalPrediction, PreTrainedTokenizerBase

    from hf_seqobj.arguments import DataArguments

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}

Reject = Callable[[str, str], None]
"""`reject(where, problem)`: what a reader calls on a malformed example (raise, or drop it and count it)."""


Statistics = dict[str, np.ndarray]
"""Per-example sufficient statistics: a name -> a float64 array with one value per example (all of one length)."""


def weighted_sums(statistics: Statistics, weights: np.ndarray | None = None) -> tuple[Statistics, np.ndarray]:
    """The sums S_b = sum_i w_bi s_i of every statistic and the total weights W_b = sum_i w_bi, for each weighting b.

    Args:
        statistics: `{name: [n] values}`.
        weights: `[b, n]`: how often each example counts in each of b weightings (bootstrap resamples). None: one
            weighting of ones (the whole set), summed left to right as a plain loop over the examples sums.

    Returns:
        (`{name: [b] sums}`, `[b]` total weights).
    """
    sizes = {len(column) for column in statistics.values()}
    if len(sizes) > 1:
        raise ValueError(f"Statistics of different lengths {sorted(sizes)}; every column has one value per example.")
    size = sizes.pop() if sizes else 0
    if weights is None:
        sums = {
            name: np.cumsum(np.asarray(v, dtype=np.float64))[-1:] if size else np.zeros(1)
            for name, v in statistics.items()
        }
        return sums, np.array([float(size)])
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != size:
        raise ValueError(f"weights of shape {weights.shape} for {size} examples; expected [resamples, {size}].")
    return {name: weights @ np.asarray(v, dtype=np.float64) for name, v in statistics.items()}, weights.sum(axis=1)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def has_repeated_ngram(words: Sequence[str], n: int = 2) -> bool:
    """Whether some n-gram occurs at least twice in `words` ("at the meeting at the meeting" for n = 2)."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def output_statistics(
    predictions: Sequence[str], references: Sequence[str], eos_reached: Sequence[bool] | None = None, n: int = 2
) -> Statistics:
    """Per-example statistics of the outputs themselves, the symptoms of a model that runs on, stops short or loops.

    Words are whitespace-separated tokens. Columns: `output_length` |y_i| and `reference_length` |r_i| (words),
    `repeated_ngram` (1 when some n-gram occurs twice in y_i, else 0) and, where `eos_reached` is given (whether
    generation ended with EOS rather than at the length limit), `eos_reached` (1 or 0). See
    :func:`output_summary` for the corpus values.

    Raises:
        ValueError: the three sequences differ in length, naming the counts.
    """
    if len(predictions) != len(references) or (eos_reached is not None and len(eos_reached) != len(predictions)):
        given = "" if eos_reached is None else f" and {len(eos_reached)} EOS flags"
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references{given}; need as many.")
    words = [prediction.split() for prediction in predictions]
    columns = {
        "output_length": np.array([len(w) for w in words], dtype=np.float64),
        "reference_length": np.array([len(r.split()) for r in references], dtype=np.float64),
        "repeated_ngram": np.array([float(has_repeated_ngram(w, n)) for w in words], dtype=np.float64),
    }
    if eos_reached is not None:
        columns["eos_reached"] = np.array([float(bool(e)) for e in eos_reached], dtype=np.float64)
    return columns


def output_summary(statistics: Statistics, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Corpus values of :func:`output_statistics` for each weighting (see :func:`weighted_sums`).

    With S the weighted sums and W the total weight: `length_ratio` = S[output_length] / S[reference_length] (the
    output / reference length ratio of the corpus), `output_length` = S[output_length] / W and `reference_length` =
    S[reference_length] / W (mean words), `repeated_ngram_rate` = S[repeated_ngram] / W (the share of outputs with a
    repeated n-gram) and, where recorded, `eos_rate` = S[eos_reached] / W (the share of outputs that reached EOS).
    Each is 0 where its denominator is.
    """
    sums, count = weighted_sums(statistics, weights)
    summary = {
        "length_ratio": ratio(sums["output_length"], sums["reference_length"]),
        "output_length": ratio(sums["output_length"], count),
        "reference_length": ratio(sums["reference_length"], count),
        "repeated_ngram_rate": ratio(sums["repeated_ngram"], count),
    }
    if "eos_reached" in sums:
        summary["eos_rate"] = ratio(sums["eos_reached"], count)
    return summary


OUTPUT_DIAGNOSTICS = ("length_ratio", "eos_rate", "repeated_ngram_rate")
"""The keys of :func:`output_summary` that every generating evaluation adds to the task's metrics: the output /
reference length ratio (words), the share of outputs that reached EOS and the share that repeat a bigram."""


@dataclass
class DecodedOutputs:
    """What the last `compute_metrics` decoded: one prediction, reference and EOS flag per example, in order."""

    predictions: list[str]
    references: list[str]
    eos_reached: list[bool]


def raise_invalid(where: str, problem: str) -> None:
    """The default `Reject`: a malformed example is an error that names it."""
    raise ValueError(f"{where}: {problem}.")


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, without a byte-order mark at its start.

    Raises:
        ValueError: a byte sequence that is not UTF-8, naming the file, line and column of the first one.
    """
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: byte 0x{data[error.start]:02x} (column {column}) is not UTF-8 text; save the file as "
            "UTF-8."
        ) from None


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (see :func:`read_text`), split on `\\n` only, a `\\r` before it dropped.

    Unlike `str.splitlines`, other line boundaries (U+2028, U+0085, form feed, a lone `\\r`) stay inside their line:
    they never split an example, and so never misalign parallel files. A final line break adds no empty line.
    """
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_records(path: str | Path, kind: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The records of a `.jsonl`, `.json` or `.csv` file, each with where it is (`FILE:LINE`, or `FILE, record N`).

    The format is `kind` ("jsonl", "json" or "csv") or else the file's suffix. `.jsonl`: one JSON object a line
    (blank lines skipped). `.json`: a JSON list of objects, an object of equal-length
    column lists, or JSON lines. `.csv`: a header row, then one record a row (quoted fields may hold line breaks).

    Raises:
        ValueError: naming the file and line of a line that is not JSON or a row whose field count differs from the
            header's, or naming a file that holds no records.
    """
    path = str(path)
    suffix = kind or (path.rsplit(".", 1)[-1].lower() if "." in Path(path).name else "")
    if suffix not in ("jsonl", "json", "csv"):
        raise ValueError(f"{path}: a records file ends in .jsonl, .json or .csv, not {('.' + suffix) or 'nothing'}.")
    text = read_text(path)
    if suffix == "csv":
        records = _csv_records(path, text)
    elif suffix == "jsonl":
        records = _jsonl_records(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":
                raise ValueError(f"{path}:{error.lineno}: not JSON ({error.msg}, column {error.colno}).") from None
            records = _jsonl_records(path, text)  # JSON lines in a .json file, as `datasets` reads them
        else:
            records = _json_records(path, data)
    if not records:
        raise ValueError(f"{path} holds no records (the file is empty).")
    return records


def _jsonl_records(path: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{number}: not a JSON object ({error.msg}, column {error.colno}); a .jsonl file holds one "
                "JSON object a line."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a JSON {type(record).__name__}, not an object of fields.")
        records.append((f"{path}:{number}", record))
    return records


def _json_records(path: str, data: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(data, dict) and data and all(isinstance(column, list) for column in data.values()):
        lengths = {name: len(column) for name, column in data.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{path}: the column lists have different lengths {lengths}.")
        data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json file holds a list of objects or an object of column lists.")
    records = []
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise ValueError(f"{path}, record {index}: a JSON {type(record).__name__}, not an object of fields.")
        records.append((f"{path}, record {index}", record))
    return records


def _csv_records(path: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return []
    records, line = [], reader.line_num
    for row in reader:
        start, line = line + 1, reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{start}: {len(row)} fields where the header has {len(header)} ({header}).")
        records.append((f"{path}:{start}", dict(zip(header, row))))
    return records


def text_pairs(
    rows: Sequence[tuple[str, dict[str, Any]]], source_column: str, target_column: str, where: str, reject: Reject
) -> Dataset:
    """`source` / `target` from two text fields of records (`(where, record)` pairs, see :func:`read_records`).

    A column that no record has is an error naming `where` and the columns there are; a record whose field is
    missing, not a string or blank is malformed (`reject`).
    """
    columns = list(dict.fromkeys(key for _, record in rows for key in record))
    for column in (source_column, target_column):
        if column not in columns:
            raise ValueError(f"{where} has no column {column!r}; its columns are {columns}.")
    sources, targets = [], []
    for location, record in rows:
        values = [record.get(source_column), record.get(target_column)]
        bad = next((c for c, v in zip((source_column, target_column), values) if not isinstance(v, str)), None)
        bad = bad or next((c for c, v in zip((source_column, target_column), values) if not v.strip()), None)
        if bad is not None:
            reject(location, f"column {bad!r} holds {record.get(bad)!r}, not a non-empty text")
            continue
        sources.append(values[0])
        targets.append(values[1])
    return Dataset.from_dict({"source": sources, "target": targets})


class Task(abc.ABC):
    """A sequence-to-sequence task: data loading, token ids in both directions, and its metric.

    Args:
        args: The data settings of the run.
    """

    name: ClassVar[str]
    default_tokenizer_type: ClassVar[str] = "bpe"
    output_kind: ClassVar[str] = "text"
    """What the model outputs: "text", or "bio_tags" (one BIO tag per input word); oracles must fit it."""

    def __init__(self, args: DataArguments):
        self.args = args
        self.dropped: list[str] = []
        """The malformed examples dropped by the last :meth:`load` (with `skip_invalid_examples`), where and why."""
        self.last_outputs: DecodedOutputs | None = None
        """What the last `compute_metrics` (:meth:`compute_metrics_fn`) decoded; None before the first."""

    def reject(self, where: str, problem: str) -> None:
        """Called by the readers on a malformed example: an error naming it, or (`skip_invalid_examples`) a drop."""
        if not getattr(self.args, "skip_invalid_examples", False):
            raise ValueError(f"{where}: {problem} (set skip_invalid_examples: true to drop malformed examples).")
        self.dropped.append(f"{where} ({problem})")

    def load(self) -> DatasetDict:
        """Loads every configured split as `source` / `target` strings, checked and cut to the sample limits.

        The checks (:meth:`check_splits`) see the whole of every split: the sample limits apply after them.
        """
        self.dropped = []
        if self.args.dataset_name is not None:
            splits = self.load_dataset_splits()
        else:
            splits = {}
            for split in SPLITS:
                path = getattr(self.args, f"{split}_file")
                if path is not None:
                    try:
                        splits[split] = self.load_file(path)
                    except (FileNotFoundError, IsADirectoryError) as error:
                        raise ValueError(
                            f"{split}_file {path!r}: {error.filename} is not a readable file ({error.strerror})."
                        ) from None
        if self.dropped:
            shown = "; ".join(self.dropped[:50]) + (
                f"; and {len(self.dropped) - 50} more" if len(self.dropped) > 50 else ""
            )
            count = len(self.dropped)
            plural = "s" if count > 1 else ""
            logger.warning("Dropped %d malformed example%s (skip_invalid_examples): %s", count, plural, shown)
        if "train" not in splits and "validation" not in splits and "test" not in splits:
            raise ValueError("No split was loaded: give train_file, validation_file or test_file, or a dataset.")
        for split, dataset in splits.items():
            if len(dataset) == 0:
                raise ValueError(f"The {split} split of task {self.name!r} is empty ({self.describe_source(split)}).")
        self.check_splits(DatasetDict(splits))
        limits = {"train": self.args.max_train_samples, "validation": self.args.max_eval_samples}
        limits["test"] = self.args.max_eval_samples
        for split, dataset in splits.items():
            limit = limits[split]
            if limit is not None and limit < len(dataset):
                splits[split] = dataset.select(range(limit))
        return DatasetDict(splits)

    def check_splits(self, splits: DatasetDict) -> None:
        """Checks across splits (e.g. every evaluation label is a training label), on the whole data. Default: none."""
        return None

    def describe_source(self, split: str) -> str:
        """Where a split comes from, for error messages."""
        if self.args.dataset_name is not None:
            return f"dataset {self.args.dataset_name!r}, split {split!r}"
        return f"{split}_file {getattr(self.args, f'{split}_file')!r}"

    def load_dataset_splits(self) -> dict[str, Dataset]:
        """Loads a Hub dataset or a local dataset directory and converts each split with :meth:`from_hub_split`."""
        from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

        name = self.args.dataset_name
        path = Path(name).expanduser()
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            raw = load_from_disk(str(path))
        elif not path.exists() and name.startswith(("/", ".", "~")):
            raise ValueError(f"dataset_name {name!r} is a local path that does not exist.")
        else:
            try:
                raw = load_dataset(name, self.args.dataset_config_name)
            except (OSError, ValueError, DatasetNotFoundError, DatasetGenerationError) as error:
                where = "a local directory" if path.is_dir() else "a Hub data set name"
                message = " ".join(str(error).split()) or type(error).__name__
                raise ValueError(f"dataset_name {name!r} ({where}) could not be loaded: {message}") from error
        if isinstance(raw, Dataset):
            raw = DatasetDict({"train": raw})
        splits = {}
        for split, aliases in _SPLIT_ALIASES.items():
            found = next((alias for alias in aliases if alias in raw), None)
            if found is not None:
                splits[split] = self.from_hub_split(raw[found], f"dataset {name!r}, split {found!r}")
        if not splits:
            raise ValueError(f"Dataset {name!r} has splits {list(raw)}; expected some of {list(SPLITS)}.")
        return splits

    @abc.abstractmethod
    def load_file(self, path: str) -> Dataset:
        """Reads one split from a file in the task's file format."""

    @abc.abstractmethod
    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        """Converts one split of a Hub-style dataset to `source` / `target` strings; `where` names it in errors."""

    def extra_tokens(self, splits: DatasetDict) -> list[str]:
        """Tokens that must each be a single id in the model's vocabulary (for instance the tags of `ner`)."""
        return []

    def training_text(self, splits: DatasetDict) -> Iterator[str]:
        """The text a tokenizer is trained on: the training sources and targets."""
        train = splits["train"] if "train" in splits else next(iter(splits.values()))
        for example in train:
            yield self.args.source_prefix + example["source"]
            yield example["target"]

    def encode_source(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return tokenizer(self.args.source_prefix + text, add_special_tokens=False)["input_ids"]

    def encode_target(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> str:
        """Turns generated (or reference) target ids, special tokens already removed, into text."""
        return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()

    @abc.abstractmethod
    def example_statistics(self, predictions: list[str], references: list[str]) -> Statistics:
        """Per-example sufficient statistics of the task's metrics: `{name: [n] values}` (see the module docstring).

        Raises:
            ValueError: the predictions and references differ in number.
        """

    @abc.abstractmethod
    def metrics_from_sums(self, sums: Statistics, count: np.ndarray) -> dict[str, np.ndarray]:
        """The corpus metrics from summed statistics: `sums` `{name: [b] weighted sums}` and `count` `[b]` total
        weights (see :func:`weighted_sums`); returns `{metric: [b] values}`. A statistic that no example of the sums
        had (a per-type count of a type absent there) may be missing from `sums`."""

    def corpus_metrics(self, statistics: Statistics, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every corpus metric for each weighting of the examples: `metrics_from_sums(*weighted_sums(...))`.

        Args:
            statistics: :meth:`example_statistics` of n examples.
            weights: `[b, n]` how often each example counts in each of b weightings (bootstrap resamples); None: the
                whole set once.

        Returns:
            `{metric: [b] values}`, on the scales of :meth:`score`.
        """
        return self.metrics_from_sums(*weighted_sums(statistics, weights))

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """The task's metrics of predicted against reference texts: the corpus metrics of the summed statistics."""
        metrics = self.corpus_metrics(self.example_statistics(predictions, references))
        return {name: float(values[0]) for name, values in metrics.items()}

    def save_predictions(self, path: str | Path, sources: Sequence[str]) -> None:
        """Writes what the last `compute_metrics` decoded as JSON lines `{"source", "prediction", "reference",
        "eos_reached"}` (`eos_reached`: whether generation ended with EOS rather than at the length limit).

        Args:
            path: The file (`{split}_predictions.jsonl` beside `{split}_results.json`).
            sources: The source texts of the scored examples, in the order they were scored.

        Raises:
            ValueError: nothing was decoded yet, or `sources` is not one text per decoded example.
        """
        outputs = self.last_outputs
        if outputs is None:
            raise ValueError("No predictions to save: compute_metrics has not run (set predict_with_generate).")
        if len(sources) != len(outputs.predictions):
            raise ValueError(f"{len(sources)} sources for {len(outputs.predictions)} decoded predictions.")
        with open(path, "w", encoding="utf-8") as stream:
            rows = zip(sources, outputs.predictions, outputs.references, outputs.eos_reached, strict=True)
            for source, prediction, reference, eos_reached in rows:
                row = {"source": source, "prediction": prediction, "reference": reference, "eos_reached": eos_reached}
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")

    # ----------------------------------------------------------------------------------------------------------
    def tokenize(self, splits: DatasetDict, tokenizer: PreTrainedTokenizerBase, decoder_only: bool) -> DatasetDict:
        """Turns `source` / `target` into model inputs.

        Encoder-decoder: `input_ids = source + EOS`, `labels = target + EOS`. Decoder-only: `input_ids = source +
        SEP + target + EOS` with `labels` equal to the input ids on the target and EOS, -100 on the source and SEP
        (the loss is on the target only, and EOS stays a target).
        """
        eos = tokenizer.eos_token_id
        sep = tokenizer.sep_token_id
        if eos is None:
            raise ValueError("The tokenizer has no EOS token, which every target ends with.")
        if decoder_only and sep is None:
            raise ValueError(
                "Decoder-only examples need a separator token (tokenizer.sep_token) between prompt and target."
            )
        max_source, max_target = self.args.max_source_length, self.args.max_target_length
        truncated = {"count": 0}

        def fit(ids: list[int], limit: int, what: str, index: int, split: str) -> list[int]:
            # The limit counts the EOS that ends the source and the target.
            if len(ids) + 1 <= limit:
                return ids
            if not self.args.truncate_long_examples:
                raise ValueError(
                    f"{self.describe_source(split)}, example {index}: its {what} has "
                    f"{len(ids) + 1} tokens (EOS included), over max_{what}_length={limit}; raise the limit or set "
                    "truncate_long_examples: true."
                )
            truncated["count"] += 1
            return ids[: limit - 1]

        def encode(example: dict, index: int, split: str) -> dict:
            source = fit(self.encode_source(example["source"], tokenizer), max_source, "source", index, split)
            target = fit(self.encode_target(example["target"], tokenizer), max_target, "target", index, split)
            if decoder_only:
                input_ids = source + [sep] + target + [eos]
                labels = [IGNORE_INDEX] * (len(source) + 1) + target + [eos]
            else:
                input_ids = source + [eos]
                labels = target + [eos]
            return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

        tokenized = {}
        for split, dataset in splits.items():
            truncated["count"] = 0
            rows = [encode(example, index, split) for index, example in enumerate(dataset)]
            if truncated["count"]:
                logger.warning(
                    "Truncated %d of %d %s examples to the length limits.", truncated["count"], len(rows), split
                )
            tokenized[split] = Dataset.from_list(rows)
        return DatasetDict(tokenized)

    def compute_metrics_fn(
        self, tokenizer: PreTrainedTokenizerBase, decoder_start_token_id: int | None = None
    ) -> Callable[[EvalPrediction], dict[str, float]]:
        """A `compute_metrics` for the Trainers with generation: decodes predictions and labels, then scores.

        The decoded texts are kept in :attr:`last_outputs` (see :meth:`save_predictions`), so that whoever called
        `evaluate` or `predict` can read or save them without decoding again. Beside the task's metrics it returns
        the output diagnostics :data:`OUTPUT_DIAGNOSTICS` (`length_ratio`, `eos_rate`, `repeated_ngram_rate` of
        :func:`output_summary`): a model that runs on, never stops or loops shows there first.

        With `evaluate_metric` set, the evaluate module also scores the decoded texts (lists of tags for a task
        whose outputs are BIO tags) and its numbers are added as `{module.name}_{key}`
        (:func:`hf_seqobj.metrics.module_scores`).

        Args:
            tokenizer: Decodes the ids.
            decoder_start_token_id: For encoder-decoder generations, the first generated id, which is dropped.
        """
        module = None
        if getattr(self.args, "evaluate_metric", None) is not None:
            from hf_seqobj.metrics import load_metric, module_scores

            module = load_metric(self.args.evaluate_metric)

        def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
            predictions = eval_prediction.predictions
            if isinstance(predictions, tuple):
                predictions = predictions[0]
            eos_reached: list[bool] = []
            rows = _trim(predictions, tokenizer, decoder_start_token_id, eos_reached)
            predicted = [self.decode(ids, tokenizer) for ids in rows]
            references = [self.decode(ids, tokenizer) for ids in _trim(eval_prediction.label_ids, tokenizer, None)]
            self.last_outputs = DecodedOutputs(predicted, references, eos_reached)
            scores = self.score(predicted, references)
            summary = output_summary(output_statistics(predicted, references, eos_reached))
            scores.update({name: float(summary[name][0]) for name in OUTPUT_DIAGNOSTICS})
            if module is not None:
                as_tags = self.output_kind == "bio_tags"
                inputs = [[text.split() for text in texts] if as_tags else texts for texts in (predicted, references)]
                scores.update(module_scores(module, *inputs))
            return scores

        return compute_metrics


def _trim(
    batch: np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
    start_token_id: int | None,
    eos_reached: list[bool] | None = None,
) -> list[list[int]]:
    """Rows of generated or label ids cut at the first EOS, without -100, padding and the decoder start token.

    `eos_reached`, where given, is extended with whether each row holds an EOS (else generation stopped at its
    length limit)."""
    rows = []
    special = set(tokenizer.all_special_ids)
    for row in np.asarray(batch):
        ids = [int(i) for i in row if i != IGNORE_INDEX]
        if start_token_id is not None and ids and ids[0] == start_token_id:
            ids = ids[1:]
        ended = tokenizer.eos_token_id in ids
        if ended:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        if eos_reached is not None:
            eos_reached.append(ended)
        rows.append([i for i in ids if i not in special])
    return rows
