"""`log_completions`: what each objective trains on, shown at each logging step, without changing the training."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from conftest import parameters
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_seqobj.callbacks import COMPLETIONS_FILE, COMPLETIONS_TAG, CompletionsCallback, log_wandb_table
from hf_seqobj.callbacks.completions import format_completions_table, print_completions, render_targets, sentence_score
from hf_seqobj.rewards import score
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments


def _callback(trainer) -> CompletionsCallback:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CompletionsCallback))


def _pieces(text: str) -> list[str]:
    return text.split()


def test_dagger_table_in_the_console_jsonl_and_tensorboard(make_trainer, ner_task, tmp_path, capsys):
    task, splits = ner_task
    settings = dict(objective="dagger", max_steps=2, report_to="tensorboard", log_completions=True)
    trainer = make_trainer("bart", "dagger", num_completions_to_print=3, **settings)
    trainer.train()
    history = _callback(trainer).history
    assert [step for step, _ in history] == [1, 2]  # each logging step, none for the closing summary
    for step, rows in history:
        assert [row["example"] for row in rows] == [0, 1, 2]
        assert [row["source"] for row in rows] == splits["train"]["source"][:3]
        assert [row["reference"] for row in rows] == splits["train"]["target"][:3]
        for row in rows:
            assert list(row)[:4] == ["step", "example", "source", "rollin"] and row["step"] == step
            # a label at every roll-in position, marked where the oracle differs from the model's token
            rollin, labels = _pieces(row["rollin"]), _pieces(row["labels"])
            assert len(labels) == len(rollin)
            for token, label in zip(rollin, labels):
                assert (label == token) != (label.startswith("[") and label.endswith("]"))
            assert 0.0 <= row["score"] <= 1.0
    output = capsys.readouterr().out
    assert "What dagger trains on at step 1" in output and "What dagger trains on at step 2" in output

    lines = [json.loads(line) for line in (tmp_path / "dagger" / COMPLETIONS_FILE).read_text().splitlines()]
    assert [(line["step"], line["example"]) for line in lines] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert all(line["objective"] == "dagger" for line in lines)
    assert lines[3:] == [{"objective": "dagger", **row} for row in history[1][1]]

    files = sorted((tmp_path / "dagger").rglob("events.out.tfevents.*"))
    events = EventAccumulator(str(files[0].parent), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors(f"{COMPLETIONS_TAG}/text_summary")
    assert [event.step for event in texts] == [1, 2]
    assert texts[1].tensor_proto.string_val[0].decode() == format_completions_table(history[1][1])


def test_text_oracle_shows_its_completion_and_the_scores(make_trainer):
    trainer = make_trainer("t5", "bleu", objective="dagger", oracle="bleu", max_steps=1, log_completions=True)
    trainer.train()
    (_, rows), *_ = _callback(trainer).history
    tokenizer = trainer.processing_class
    for row in rows:
        assert list(row)[-4:] == ["oracle completion", "reference", "score", "oracle score"]
        prefix, completion = row["oracle completion"].split("‖")
        assert _pieces(completion)[-1] == tokenizer.eos_token
        # the prefix is the roll-in up to the first position where the oracle's label differs (or nothing)
        labels = _pieces(row["labels"])
        first = next((t for t, label in enumerate(labels) if label.startswith("[")), 0)
        assert _pieces(prefix) == _pieces(row["rollin"])[:first]
        # the score is the roll-in's sentence BLEU on token ids
        rollin = tokenizer.convert_tokens_to_ids([p for p in _pieces(row["rollin"]) if p != tokenizer.eos_token])
        reference = tokenizer.convert_tokens_to_ids(_pieces(row["reference"]))
        expected = score("bleu", torch.tensor([rollin or [-100]]), torch.tensor([reference]))
        assert row["score"] == pytest.approx(float(expected[0]))
        assert 0.0 <= row["oracle score"] <= 1.0 and row["oracle score"] >= row["score"] - 1e-9


def test_sequencematch_shows_backspaces_and_masked_targets(make_trainer):
    trainer = make_trainer(
        "bart", "sm", objective="sequencematch", sm_noise_prob=0.5, max_steps=1, log_completions=True
    )
    buffer_before = list(trainer.objective.buffer)
    trainer.train()
    (_, rows), *_ = _callback(trainer).history
    noisy = 0
    for row in rows:
        assert {"rollin", "output", "data", "labels", "score"} <= set(row)
        data, labels = _pieces(row["data"]), _pieces(row["labels"])
        assert len(data) == len(labels)
        for index, (action, label) in enumerate(zip(data, labels)):
            if label == "·":  # the noise's wrong token is masked, and the next action deletes it
                assert data[index + 1] == "<bksp>" and labels[index + 1] == "<bksp>"
                noisy += 1
            else:
                assert label == action
        # the data without its noise pairs is the reference (and EOS)
        kept = [a for i, a in enumerate(data) if labels[i] != "·" and not (i > 0 and labels[i - 1] == "·")]
        assert kept[:-1] == _pieces(row["reference"])
    assert noisy > 0
    assert trainer.objective.buffer == buffer_before  # the display adds nothing to the replay buffer


def test_scheduled_sampling_marks_the_sampled_tokens(make_trainer):
    # eps = 0.5 at every step: about half of the gold inputs are the model's predictions
    settings = dict(objective="scheduled_sampling", ss_schedule="linear", ss_k=0.5, ss_c=0.0, ss_eps_min=0.0)
    for arch in ("t5", "gpt2"):
        trainer = make_trainer(arch, f"ss_{arch}", max_steps=1, log_completions=True, **settings)
        trainer.train()
        (_, rows), *_ = _callback(trainer).history
        total = 0
        for row in rows:
            inputs, labels = _pieces(row["inputs"]), _pieces(row["labels"])
            marked = [piece.startswith("[") and piece.endswith("]") for piece in inputs]
            assert row["sampled"] == sum(marked) and len(inputs) <= len(labels)
            # an unmarked input is the gold token it stands for
            assert all(piece == label for piece, label, mark in zip(inputs, labels, marked) if not mark)
            total += row["sampled"]
        assert total > 0, arch


@pytest.mark.parametrize(
    ("arch", "settings"),
    [("gpt2", {}), ("bart", dict(objective="dagger", dagger_warmup_steps=5))],
    ids=["mle", "dagger_warmup"],
)
def test_teacher_forcing_shows_the_models_predictions_along_the_gold_output(make_trainer, arch, settings):
    trainer = make_trainer(arch, "tf", max_steps=1, log_completions=True, num_completions_to_print=2, **settings)
    trainer.train()
    (_, rows), *_ = _callback(trainer).history
    assert len(rows) == 2
    for row in rows:
        assert list(row) == ["step", "example", "source", "predicted", "labels", "reference"]
        predicted, labels = _pieces(row["predicted"]), _pieces(row["labels"])
        assert len(predicted) == len(labels)
        assert [label.strip("[]") for label in labels][:-1] == _pieces(row["reference"])
        for guess, label in zip(predicted, labels):
            assert (label == guess) != (label == f"[{label.strip('[]')}]")


@pytest.mark.parametrize(
    ("arch", "settings"),
    [
        ("bart", dict(objective="dagger", rollin="sample", dagger_beta=0.5)),
        ("gpt2", dict(objective="sequencematch", sm_noise_prob=0.3, sm_rollout_every=2)),
        ("t5", dict(objective="scheduled_sampling", ss_schedule="linear", ss_k=0.5, ss_c=0.0, rollin="sample")),
    ],
    ids=["dagger", "sequencematch", "scheduled_sampling"],
)
def test_logging_completions_leaves_the_training_unchanged(make_trainer, arch, settings):
    # dropout on and sampled roll-ins: any draw from the training streams would change the weights
    runs = {}
    for logged in (False, True):
        trainer = make_trainer(arch, f"run_{logged}", max_steps=3, log_completions=logged, **settings)
        trainer.train()
        runs[logged] = trainer
    assert _callback(runs[True]).history and not any(
        isinstance(cb, CompletionsCallback) for cb in runs[False].callback_handler.callbacks
    )
    off, on = parameters(runs[False].model), parameters(runs[True].model)
    assert off.keys() == on.keys()
    for name in off:
        assert torch.equal(off[name], on[name]), name
    losses = [[entry.get("loss") for entry in run.state.log_history] for run in runs.values()]
    assert losses[0] == losses[1]


def test_plain_text_without_rich_and_the_wandb_table(monkeypatch, capsys):
    rows = [{"step": 3, "example": 0, "source": "a | b", "rollin": "O O", "reference": "O", "score": 0.5}]
    monkeypatch.setitem(sys.modules, "rich", None)  # as if rich were not installed
    monkeypatch.setitem(sys.modules, "rich.console", None)
    print_completions(rows, "title")
    assert capsys.readouterr().out == f"title\n{format_completions_table(rows)}\n"
    assert format_completions_table(rows).splitlines()[2] == "| 3 | 0 | a \\| b | O O | O | 0.5000 |"

    logged = []
    fake = types.SimpleNamespace(run=object(), log=logged.append, Table=lambda columns, data: (columns, data))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log_wandb_table(rows)
    assert logged == [{"completions": (list(rows[0]), [list(rows[0].values())])}]
    fake.run = None  # no active run: nothing is logged
    log_wandb_table(rows)
    assert len(logged) == 1


def test_helpers_and_settings(tmp_path):
    class Words:
        """A tokenizer whose ids are the indices of a word list."""

        eos_token_id, pad_token_id = 0, 1
        words = ["</s>", "<pad>", "O", "B-PER", "I-PER", "hello"]

        def decode(self, ids, skip_special_tokens=False):
            return " ".join(self.words[i] for i in ids)

        def convert_ids_to_tokens(self, ids):
            return [self.words[i] for i in ids] if isinstance(ids, list) else self.words[ids]

    words = Words()
    assert render_targets(words, [2, 2, 0], [2, 3, -100]) == "O [B-PER] ·"
    assert sentence_score("span_f1", words, [3, 4, 2], [3, 4, 2, 0]) == 1.0
    assert sentence_score("span_f1", words, [2, 2, 5], [3, 4, 2]) == 0.0  # not a tag: O
    assert sentence_score("span_f1", words, [2], [5, 5]) is None  # a reference that is not tags
    assert sentence_score("rouge1", words, [5, 2], [5, 3]) == pytest.approx(0.5)
    args = SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path))
    assert args.log_completions is False and args.num_completions_to_print == 4
    with pytest.raises(ValueError, match="num_completions_to_print must be >= 1, got 0"):
        SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), num_completions_to_print=0)
