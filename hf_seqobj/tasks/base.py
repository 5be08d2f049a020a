"""What every task shares: the Task interface, tokenisation for both model families, and generation metrics.

A task turns its data into a `datasets.DatasetDict` with string columns `source` and `target` and splits among
`train`, `validation` and `test`; says how its texts become token ids and back; and scores predicted against
reference texts offline.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from hf_seqobj.constants import IGNORE_INDEX


if TYPE_CHECKING:
    from transformers import EvalPrediction, PreTrainedTokenizerBase

    from hf_seqobj.arguments import DataArguments

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


class Task(abc.ABC):
    """A sequence-to-sequence task: data loading, token ids in both directions, and its metric.

    Args:
        args: The data settings of the run.
    """

    name: ClassVar[str]
    default_tokenizer_type: ClassVar[str] = "bpe"

    def __init__(self, args: DataArguments):
        self.args = args

    def load(self) -> DatasetDict:
        """Loads every configured split as `source` / `target` strings, checked and cut to the sample limits."""
        if self.args.dataset_name is not None:
            splits = self.load_dataset_splits()
        else:
            splits = {}
            for split in SPLITS:
                path = getattr(self.args, f"{split}_file")
                if path is not None:
                    splits[split] = self.load_file(path)
        if "train" not in splits and "validation" not in splits and "test" not in splits:
            raise ValueError("No split was loaded: give train_file, validation_file or test_file, or a dataset.")
        limits = {"train": self.args.max_train_samples, "validation": self.args.max_eval_samples}
        limits["test"] = self.args.max_eval_samples
        for split, dataset in splits.items():
            if len(dataset) == 0:
                raise ValueError(f"The {split} split of task {self.name!r} is empty ({self.describe_source(split)}).")
            limit = limits[split]
            if limit is not None and limit < len(dataset):
                splits[split] = dataset.select(range(limit))
        return DatasetDict(splits)

    def describe_source(self, split: str) -> str:
        """Where a split comes from, for error messages."""
        if self.args.dataset_name is not None:
            return f"dataset {self.args.dataset_name!r}, split {split!r}"
        return f"file {getattr(self.args, f'{split}_file')!r}"

    def load_dataset_splits(self) -> dict[str, Dataset]:
        """Loads a Hub dataset or a local dataset directory and converts each split with :meth:`from_hub_split`."""
        name = self.args.dataset_name
        path = Path(name)
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            raw = load_from_disk(str(path))
        else:
            raw = load_dataset(name, self.args.dataset_config_name)
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
    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """The task's metrics of predicted against reference texts."""

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

        def fit(ids: list[int], limit: int, what: str, index: int) -> list[int]:
            # The limit counts the EOS that ends the source and the target.
            if len(ids) + 1 <= limit:
                return ids
            if not self.args.truncate_long_examples:
                raise ValueError(
                    f"Example {index} has a {what} of {len(ids) + 1} tokens (EOS included), over "
                    f"max_{what}_length={limit}; raise the limit or set truncate_long_examples=True."
                )
            truncated["count"] += 1
            return ids[: limit - 1]

        def encode(example: dict, index: int) -> dict:
            source = fit(self.encode_source(example["source"], tokenizer), max_source, "source", index)
            target = fit(self.encode_target(example["target"], tokenizer), max_target, "target", index)
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
            rows = [encode(example, index) for index, example in enumerate(dataset)]
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

        Args:
            tokenizer: Decodes the ids.
            decoder_start_token_id: For encoder-decoder generations, the first generated id, which is dropped.
        """

        def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
            predictions = eval_prediction.predictions
            if isinstance(predictions, tuple):
                predictions = predictions[0]
            predicted = [self.decode(ids, tokenizer) for ids in _trim(predictions, tokenizer, decoder_start_token_id)]
            references = [self.decode(ids, tokenizer) for ids in _trim(eval_prediction.label_ids, tokenizer, None)]
            return self.score(predicted, references)

        return compute_metrics


def _trim(batch: np.ndarray, tokenizer: PreTrainedTokenizerBase, start_token_id: int | None) -> list[list[int]]:
    """Rows of generated or label ids cut at the first EOS, without -100, padding and the decoder start token."""
    rows = []
    special = set(tokenizer.all_special_ids)
    for row in np.asarray(batch):
        ids = [int(i) for i in row if i != IGNORE_INDEX]
        if start_token_id is not None and ids and ids[0] == start_token_id:
            ids = ids[1:]
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        rows.append([i for i in ids if i not in special])
    return rows
