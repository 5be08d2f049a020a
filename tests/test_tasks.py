"""Task loaders, malformed-input errors, tokenisation for both model families, and offline metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from rouge_score import rouge_scorer
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from transformers import EvalPrediction

from hf_seqobj.arguments import DataArguments
from hf_seqobj.modeling import train_tokenizer
from hf_seqobj.oracles import corpus_partial_f1, span_f1_score
from hf_seqobj.tasks import get_task, read_conll, read_parallel, synthetic_ner, tag_metrics


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


CONLL4 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


# ------------------------------------------------------------------------------------------------------------- ner
def test_read_conll_four_and_two_columns(tmp_path):
    four = read_conll(_write(tmp_path / "four.txt", CONLL4))
    assert four["source"] == ["EU rejects German call", "Peter Blackburn"]
    assert four["target"] == ["B-ORG O B-MISC O", "B-PER I-PER"]
    two = read_conll(_write(tmp_path / "two.txt", "EU B-ORG\nrejects O\n\n\nPeter B-PER\n"))
    assert two["source"] == ["EU rejects", "Peter"] and two["target"] == ["B-ORG O", "B-PER"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("EU NNP B-ORG\n", r"bad\.txt:1: 3 fields"),
        ("EU B-ORG\nrejects VBZ B-VP O\n", r"bad\.txt:2: 4 fields where earlier lines have 2"),
        ("EU NNP B-NP ORG\n", r"bad\.txt:1: 'ORG' is not a BIO tag"),
    ],
)
def test_conll_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_conll(_write(tmp_path / "bad.txt", text))


def test_ner_tag_outside_label_set_and_empty_split(tmp_path):
    train = _write(tmp_path / "train.txt", "EU B-ORG\nrejects O\n")
    valid = _write(tmp_path / "valid.txt", "Paris B-LOC\n")
    task = get_task(DataArguments(task="ner", train_file=train, validation_file=valid))
    with pytest.raises(ValueError, match=r"valid\.txt.*sentence 0.*\['B-LOC'\] are outside the training label set"):
        task.load()
    empty = _write(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(ValueError, match=r"validation split of task 'ner' is empty.*empty\.txt"):
        get_task(DataArguments(task="ner", train_file=train, validation_file=empty)).load()


def test_ner_hub_style_with_class_labels(tmp_path):
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    train = Dataset.from_dict(
        {"tokens": [["Peter", "Blackburn", "in", "Paris"]], "ner_tags": [[1, 2, 0, 3]]}, features
    )
    DatasetDict({"train": train, "validation": train}).save_to_disk(str(tmp_path / "hub_ner"))
    splits = get_task(DataArguments(task="ner", dataset_name=str(tmp_path / "hub_ner"))).load()
    assert splits["train"][0] == {"source": "Peter Blackburn in Paris", "target": "B-PER I-PER O B-LOC"}
    assert set(splits) == {"train", "validation"}


def test_ner_hub_style_missing_column(tmp_path):
    Dataset.from_dict({"words": [["a"]], "ner_tags": [["O"]]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"no column 'tokens'; its columns are \['words', 'ner_tags'\]"):
        get_task(DataArguments(task="ner", dataset_name=str(tmp_path / "bad"))).load()


def test_ner_metrics_equal_seqeval():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC"], ["O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-MISC"], ["O", "B-LOC", "O"]]
    metrics = tag_metrics(pred, gold)
    assert metrics["f1"] == pytest.approx(f1_score(gold, pred))
    assert metrics["precision"] == pytest.approx(precision_score(gold, pred))
    assert metrics["recall"] == pytest.approx(recall_score(gold, pred))
    report = classification_report(gold, pred, output_dict=True)
    for entity_type in ("PER", "LOC", "ORG", "MISC"):
        assert metrics[f"f1_{entity_type}"] == pytest.approx(report[entity_type]["f1-score"])
    assert metrics["length_mismatch_rate"] == 0 and metrics["invalid_tag_rate"] == 0


def test_ner_metrics_count_length_mismatch_and_invalid_tags():
    metrics = tag_metrics([["B-PER"], ["O", "<invalid>", "O", "O"]], [["B-PER", "I-PER"], ["O", "B-LOC", "O"]])
    assert metrics["length_mismatch_rate"] == 1.0
    assert metrics["invalid_tag_rate"] == pytest.approx(1 / 5)
    # Padded with O: "B-PER O" against "B-PER I-PER" is a wrong span; the invalid tag counts as O.
    assert metrics["f1"] == pytest.approx(
        f1_score([["B-PER", "I-PER"], ["O", "B-LOC", "O"]], [["B-PER", "O"], ["O"] * 3])
    )


def test_ner_partial_f1_sums_counts_over_sentences():
    # Sentence 1: pred PER(0-0) overlaps gold PER(0-1): a = 1, b = 1; pred ORG(3) misses gold LOC(3): P = 2, G = 2.
    # Sentence 2: pred ORG(0) hits gold ORG(0) (a = b = 1); pred MISC(2) hits gold MISC(2) (a = b = 1).
    # Sentence 3: no predicted span; gold LOC(1-2) uncovered: G = 1.
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC"], ["O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "O", "O", "B-ORG"], ["I-ORG", "O", "B-MISC"], ["O", "O", "O"]]
    metrics = tag_metrics(pred, gold)
    assert metrics["partial_precision"] == pytest.approx(3 / 4)  # a = 3 hits of P = 4 predicted spans
    assert metrics["partial_recall"] == pytest.approx(3 / 5)  # b = 3 covered of G = 5 gold spans
    assert metrics["partial_f1"] == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert metrics["partial_f1"] > metrics["f1"]  # the truncated PER span counts only here
    # One sentence: the corpus form equals the sentence-level definition the partial oracle optimises.
    assert corpus_partial_f1(pred[:1], gold[:1])["partial_f1"] == pytest.approx(
        span_f1_score(pred[0], gold[0], mode="partial")
    )
    assert corpus_partial_f1([["O"]], [["O"]]) == {"partial_precision": 0.0, "partial_recall": 0.0, "partial_f1": 0.0}
    with pytest.raises(ValueError, match=r"predictions\[0\] has 1 tags but references\[0\] has 2"):
        corpus_partial_f1([["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        corpus_partial_f1([["O"]], [["O"], ["O"]])


def test_ner_compute_metrics_decodes_generated_ids(ner_task):
    task, splits = ner_task
    tokenizer = train_tokenizer(task.training_text(splits), extra_tokens=task.extra_tokens(splits))
    targets = splits["validation"]["target"][:3]
    start, eos, pad = tokenizer.eos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[start] + task.encode_target(t, tokenizer) + [eos] for t in targets]
    width = max(map(len, rows)) + 2
    predictions = np.array([row + [pad] * (width - len(row)) for row in rows])
    labels = np.array([row[1:] + [-100] * (width - len(row) + 1) for row in rows])
    metrics = task.compute_metrics_fn(tokenizer, decoder_start_token_id=start)(EvalPrediction(predictions, labels))
    assert metrics["f1"] == 1.0 and metrics["length_mismatch_rate"] == 0.0


def test_synthetic_data_is_deterministic_and_well_formed():
    first, again, other = synthetic_ner(50, seed=3), synthetic_ner(50, seed=3), synthetic_ner(50, seed=4)
    assert first["source"] == again["source"] and first["target"] == again["target"]
    assert first["source"] != other["source"]
    types = set()
    for source, target in zip(first["source"], first["target"]):
        tags = target.split()
        assert len(tags) == len(source.split())
        types |= {tag[2:] for tag in tags if tag != "O"}
        for previous, tag in zip(["O"] + tags, tags):
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], f"ill-formed I- tag in {target!r}"
    assert types == {"PER", "ORG", "LOC", "MISC"}


# ---------------------------------------------------------------------------------------------------- translation
def test_read_parallel_and_errors(tmp_path):
    src, tgt = (
        _write(tmp_path / "t.en", "A dog .\nTwo cats .\n"),
        _write(tmp_path / "t.de", "Ein Hund .\nZwei Katzen .\n"),
    )
    data = read_parallel(src, tgt)
    assert data["source"] == ["A dog .", "Two cats ."] and data["target"] == ["Ein Hund .", "Zwei Katzen ."]
    short = _write(tmp_path / "s.de", "Ein Hund .\n")
    with pytest.raises(ValueError, match=r"misaligned: .*t\.en has 2 lines, .*s\.de has 1"):
        read_parallel(src, short)
    blank = _write(tmp_path / "b.de", "Ein Hund .\n \n")
    with pytest.raises(ValueError, match=r"b\.de:2: empty line"):
        read_parallel(src, blank)


def test_translation_files_by_prefix_and_hub_style(tmp_path):
    _write(tmp_path / "train.en", "A dog .\n")
    _write(tmp_path / "train.de", "Ein Hund .\n")
    splits = get_task(DataArguments(task="translation", train_file=str(tmp_path / "train"))).load()
    assert splits["train"][0] == {"source": "A dog .", "target": "Ein Hund ."}
    hub = Dataset.from_dict({"translation": [{"en": "A cat .", "de": "Eine Katze ."}]})
    DatasetDict({"train": hub}).save_to_disk(str(tmp_path / "hub"))
    task = get_task(DataArguments(task="translation", dataset_name=str(tmp_path / "hub")))
    assert task.load()["train"][0] == {"source": "A cat .", "target": "Eine Katze ."}
    wrong = get_task(DataArguments(task="translation", dataset_name=str(tmp_path / "hub"), target_lang="fr"))
    with pytest.raises(ValueError, match=r"row 0: 'translation' has no 'fr' key"):
        wrong.load()


def test_translation_metrics_equal_sacrebleu():
    predictions = ["Ein Hund läuft im Park .", "Zwei Katzen schlafen ."]
    references = ["Ein Hund rennt im Park .", "Zwei Katzen schlafen auf dem Sofa ."]
    task = get_task(DataArguments(task="translation", train_file="unused"))
    metrics = task.score(predictions, references)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert 0 < metrics["bleu"] < 100


# -------------------------------------------------------------------------------------------------- summarization
def test_summarization_jsonl_csv_and_missing_column(tmp_path):
    rows = [{"document": "The cat sat on the mat all day .", "summary": "Cat sat ."}]
    jsonl = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert get_task(DataArguments(task="summarization", train_file=jsonl)).load()["train"][0] == {
        "source": rows[0]["document"],
        "target": "Cat sat .",
    }
    csv = _write(tmp_path / "d.csv", 'article,highlights\n"A long text .","Short ."\n')
    task = get_task(
        DataArguments(task="summarization", train_file=csv, source_column="article", target_column="highlights")
    )
    assert task.load()["train"]["target"] == ["Short ."]
    with pytest.raises(
        ValueError, match=r"d\.csv' has no column 'document'; its columns are \['article', 'highlights'\]"
    ):
        get_task(DataArguments(task="summarization", train_file=csv)).load()
    with pytest.raises(ValueError, match=r"must end in \.jsonl, \.json or \.csv, not \.txt"):
        get_task(DataArguments(task="summarization", train_file=_write(tmp_path / "d.txt", "x"))).load()


def test_summarization_metrics_equal_rouge_score():
    predictions = ["the cats are sitting on the mat", "a quick brown fox"]
    references = ["the cat sat on the mat", "the quick brown fox jumps"]
    task = get_task(DataArguments(task="summarization", train_file="unused.jsonl"))
    metrics = task.score(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for rouge_type in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = np.mean([scorer.score(r, p)[rouge_type].fmeasure for p, r in zip(predictions, references)]) * 100
        assert metrics[rouge_type] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------- tokenisation
@pytest.mark.parametrize("decoder_only", [True, False])
def test_tokenize_layout(ner_task, decoder_only):
    task, splits = ner_task
    tokenizer = train_tokenizer(task.training_text(splits), extra_tokens=task.extra_tokens(splits))
    example = splits["train"][0]
    row = task.tokenize(DatasetDict({"train": splits["train"].select([0])}), tokenizer, decoder_only)["train"][0]
    source = tokenizer(example["source"], add_special_tokens=False)["input_ids"]
    target = [tokenizer.convert_tokens_to_ids(tag) for tag in example["target"].split()]
    eos, sep = tokenizer.eos_token_id, tokenizer.sep_token_id
    if decoder_only:
        assert row["input_ids"] == source + [sep] + target + [eos]
        assert row["labels"] == [-100] * (len(source) + 1) + target + [eos]
    else:
        assert row["input_ids"] == source + [eos]
        assert row["labels"] == target + [eos]
    assert len(target) == len(example["source"].split()), "each tag must be a single token"


def test_ner_target_tags_must_be_tokens(ner_task):
    task, splits = ner_task
    tokenizer = train_tokenizer(splits["train"]["source"], extra_tokens=["O", "B-PER"])
    assert task.encode_target("O B-PER O", tokenizer) == tokenizer.convert_tokens_to_ids(["O", "B-PER", "O"])
    with pytest.raises(ValueError, match="'I-PER' is not a token of the tokenizer"):
        task.encode_target("B-PER I-PER", tokenizer)


def test_long_examples_error_or_truncate_explicitly(ner_task, caplog):
    task, splits = ner_task
    tokenizer = train_tokenizer(task.training_text(splits), extra_tokens=task.extra_tokens(splits))
    short = get_task(DataArguments(task="ner", dataset_name="synthetic", max_source_length=4))
    with pytest.raises(
        ValueError,
        match=r"dataset 'synthetic', split 'train', example 0: its source has \d+ tokens \(EOS included\), over "
        r"max_source_length=4",
    ):
        short.tokenize(DatasetDict({"train": splits["train"].select(range(3))}), tokenizer, False)
    cut = get_task(
        DataArguments(task="ner", dataset_name="synthetic", max_source_length=4, truncate_long_examples=True)
    )
    rows = cut.tokenize(DatasetDict({"train": splits["train"].select(range(3))}), tokenizer, False)["train"]
    assert all(len(ids) == 4 for ids in rows["input_ids"])
    assert "Truncated 3 of 3 train examples" in caplog.text


def test_data_arguments_validation():
    with pytest.raises(ValueError, match="Unknown task 'parsing'"):
        DataArguments(task="parsing", train_file="x")
    with pytest.raises(ValueError, match="Set dataset_name"):
        DataArguments(task="ner")
    with pytest.raises(ValueError, match="'synthetic' exists for the ner and arithmetic tasks only"):
        DataArguments(task="translation", dataset_name="synthetic")
    with pytest.raises(ValueError, match="max_source_length must be >= 1, got 0"):
        DataArguments(task="ner", dataset_name="synthetic", max_source_length=0)


def test_sample_limits_apply_to_every_source():
    args = DataArguments(task="ner", dataset_name="synthetic", max_train_samples=7, max_eval_samples=3)
    sizes = {split: len(data) for split, data in get_task(args).load().items()}
    assert sizes == {"train": 7, "validation": 3, "test": 3}
