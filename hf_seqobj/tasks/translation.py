"""Translation: aligned parallel text files or Hub-style `translation` columns; sacrebleu BLEU and chrF."""

from __future__ import annotations

from pathlib import Path

import sacrebleu
from datasets import Dataset

from hf_seqobj.tasks.base import Task


def read_parallel(source_path: str | Path, target_path: str | Path) -> Dataset:
    """Reads two files aligned line by line (one sentence a line, untokenised).

    Raises:
        ValueError: the files have different line counts, or a line is empty on one side (naming file and line).
    """
    with open(source_path, encoding="utf-8") as handle:
        sources = handle.read().splitlines()
    with open(target_path, encoding="utf-8") as handle:
        targets = handle.read().splitlines()
    if len(sources) != len(targets):
        raise ValueError(
            f"Parallel files are misaligned: {source_path} has {len(sources)} lines, {target_path} has {len(targets)}."
        )
    for path, lines in ((source_path, sources), (target_path, targets)):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise ValueError(f"{path}:{number}: empty line in a parallel file.")
    return Dataset.from_dict({"source": sources, "target": targets})


class TranslationTask(Task):
    """Translation from `source_lang` to `target_lang`.

    Files: `train_file` (and the others) is a path prefix; the data are `PREFIX.SOURCE_LANG` and
    `PREFIX.TARGET_LANG`, as in Multi30k (`train.en` / `train.de`).
    """

    name = "translation"

    def load_file(self, path: str) -> Dataset:
        return read_parallel(f"{path}.{self.args.source_lang}", f"{path}.{self.args.target_lang}")

    def from_hub_split(self, dataset: Dataset, where: str) -> Dataset:
        if "translation" not in dataset.column_names:
            raise ValueError(f"{where} has no column 'translation'; its columns are {dataset.column_names}.")
        sources, targets = [], []
        for index, pair in enumerate(dataset["translation"]):
            for lang in (self.args.source_lang, self.args.target_lang):
                if lang not in pair:
                    raise ValueError(f"{where}, row {index}: 'translation' has no {lang!r} key (keys: {list(pair)}).")
            sources.append(pair[self.args.source_lang])
            targets.append(pair[self.args.target_lang])
        return Dataset.from_dict({"source": sources, "target": targets})

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Corpus BLEU and chrF of sacrebleu (default settings: 13a tokenisation, one reference)."""
        return {
            "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
            "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score),
        }
