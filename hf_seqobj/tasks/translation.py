"""Translation: aligned parallel text files or Hub-style `translation` columns; sacrebleu BLEU and chrF."""

from __future__ import annotations

from pathlib import Path

import sacrebleu
from datasets import Dataset

from hf_seqobj.tasks.base import Reject, Task, raise_invalid, read_lines


def read_parallel(source_path: str | Path, target_path: str | Path, reject: Reject = raise_invalid) -> Dataset:
    """Reads two UTF-8 files aligned line by line (one sentence a line, untokenised; see :func:`read_lines`).

    Args:
        source_path: The source side.
        target_path: The target side.
        reject: Called with `(FILE:LINE, problem)` for a pair with an empty line on a side (the pair is left out
            when it returns); default: an error.

    Raises:
        ValueError: the files have different line counts, or (default `reject`) a line is empty on one side.
    """
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise ValueError(
            f"Parallel files are misaligned: {source_path} has {len(sources)} lines, {target_path} has {len(targets)}."
        )
    kept_sources, kept_targets = [], []
    for number, (source, target) in enumerate(zip(sources, targets), start=1):
        empty = source_path if not source.strip() else target_path if not target.strip() else None
        if empty is not None:
            reject(f"{empty}:{number}", "empty line in a parallel file")
            continue
        kept_sources.append(source)
        kept_targets.append(target)
    return Dataset.from_dict({"source": kept_sources, "target": kept_targets})


def sacrebleu_scores(
    predictions: list[str], references: list[str] | list[list[str]], metrics: tuple[str, ...] = ("bleu", "chrf")
) -> dict[str, float]:
    """Corpus BLEU and / or chrF of sacrebleu (default settings: 13a tokenisation).

    Args:
        predictions: Generated texts.
        references: One reference text per prediction, or one list of reference texts per prediction (all as long).
        metrics: Which of "bleu" and "chrf" to compute.
    """
    corpus = {"bleu": sacrebleu.corpus_bleu, "chrf": sacrebleu.corpus_chrf}
    unknown = [name for name in metrics if name not in corpus]
    if unknown:
        raise ValueError(f"sacrebleu_scores computes {tuple(corpus)}, not {unknown}.")
    if all(isinstance(reference, str) for reference in references):
        streams = [list(references)]
    else:
        counts = sorted({len(reference) for reference in references})
        if len(counts) != 1 or counts[0] == 0:
            raise ValueError(f"every prediction needs as many references (at least one); the counts are {counts}.")
        streams = [list(stream) for stream in zip(*references)]
    return {name: float(corpus[name](predictions, streams).score) for name in metrics}


class TranslationTask(Task):
    """Translation from `source_lang` to `target_lang`.

    Files: `train_file` (and the others) is a path prefix; the data are `PREFIX.SOURCE_LANG` and
    `PREFIX.TARGET_LANG`, as in Multi30k (`train.en` / `train.de`).
    """

    name = "translation"

    def load_file(self, path: str) -> Dataset:
        return read_parallel(f"{path}.{self.args.source_lang}", f"{path}.{self.args.target_lang}", self.reject)

    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        if "translation" not in dataset.column_names:
            raise ValueError(f"{where} has no column 'translation'; its columns are {dataset.column_names}.")
        sources, targets = [], []
        for index, pair in enumerate(dataset["translation"]):
            langs = (self.args.source_lang, self.args.target_lang)
            missing = next((lang for lang in langs if lang not in pair), None)
            if missing is not None:
                raise ValueError(f"{where}, row {index}: 'translation' has no {missing!r} key (keys: {list(pair)}).")
            empty = next((lang for lang in langs if not isinstance(pair[lang], str) or not pair[lang].strip()), None)
            if empty is not None:
                self.reject(f"{where}, row {index}", f"the {empty!r} text is {pair[empty]!r}")
                continue
            sources.append(pair[self.args.source_lang])
            targets.append(pair[self.args.target_lang])
        return Dataset.from_dict({"source": sources, "target": targets})

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Corpus BLEU and chrF of sacrebleu (default settings: 13a tokenisation, one reference)."""
        return sacrebleu_scores(predictions, references)
