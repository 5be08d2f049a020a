"""Logging: the objectives' metrics in TensorBoard, and the table of sample generations at evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_seqobj.callbacks import SAMPLES_TAG, SampleGenerationsCallback, format_samples_table
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments


def _events(output_dir: Path) -> EventAccumulator:
    """The TensorBoard events the run wrote (all scalars and text kept)."""
    files = sorted(output_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {output_dir}"
    accumulator = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _sample_callback(trainer) -> SampleGenerationsCallback:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SampleGenerationsCallback))


def test_tensorboard_has_the_objective_metrics_and_the_sample_table(make_trainer, ner_task, tmp_path):
    task, splits = ner_task
    trainer = make_trainer(
        "bart",
        "tb",
        objective="dagger",
        dagger_beta_schedule="linear",
        max_steps=2,
        report_to="tensorboard",
        predict_with_generate=True,
        generation_max_length=24,
        eval_strategy="steps",
        eval_steps=2,
        eval_samples_to_log=3,
    )
    trainer.train()
    events = _events(tmp_path / "tb")
    scalars = set(events.Tags()["scalars"])
    for name in ("dagger_beta", "oracle_agreement", "rollin_length", "oracle_forced_fraction", "rollin_time_share"):
        assert f"train/{name}" in scalars, name
    assert "eval/f1" in scalars and "eval/loss" in scalars
    logged = [entry["dagger_beta"] for entry in trainer.state.log_history if "dagger_beta" in entry]
    assert [event.value for event in events.Scalars("train/dagger_beta")] == pytest.approx(logged)
    assert logged == pytest.approx([0.5, 0.25])  # the linear beta schedule over 2 steps

    # One evaluation at step 2: a table of 3 rows (source words, generated tags, gold tags).
    callback = _sample_callback(trainer)
    assert [step for step, _ in callback.history] == [2]
    rows = callback.history[0][1]
    assert [row["input"] for row in rows] == splits["validation"]["source"][:3]
    assert [row["reference"] for row in rows] == splits["validation"]["target"][:3]
    text_tag = f"{SAMPLES_TAG}/text_summary"
    assert text_tag in events.Tags()["tensors"]
    (event,) = events.Tensors(text_tag)
    assert event.step == 2
    assert event.tensor_proto.string_val[0].decode() == format_samples_table(rows)


def test_sample_table_of_a_decoder_only_model_and_the_python_log(make_trainer, ner_task, caplog):
    task, splits = ner_task
    trainer = make_trainer(
        "gpt2", "samples", predict_with_generate=True, generation_max_new_tokens=20, eval_samples_to_log=2
    )
    with caplog.at_level("INFO", logger="hf_seqobj.callbacks"):
        trainer.evaluate()
    (step, rows), *_ = _sample_callback(trainer).history
    assert step == 0 and len(rows) == 2
    # The input is the prompt only (the words), the reference the target tags; the output is the continuation.
    assert [row["input"] for row in rows] == splits["validation"]["source"][:2]
    assert [row["reference"] for row in rows] == splits["validation"]["target"][:2]
    assert all(row["input"] not in row["output"] for row in rows)
    assert "Sample generations at step 0" in caplog.text and format_samples_table(rows) in caplog.text


def test_sample_logging_is_off_by_default_and_validated(make_trainer, tmp_path):
    trainer = make_trainer("t5", "off")
    assert trainer.args.eval_samples_to_log == 0
    assert not any(isinstance(cb, SampleGenerationsCallback) for cb in trainer.callback_handler.callbacks)
    with pytest.raises(ValueError, match="eval_samples_to_log must be >= 0 .*got -1"):
        SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), eval_samples_to_log=-1)


def test_table_cells_are_escaped():
    table = format_samples_table([{"input": "a | b", "output": "line\nbreak", "reference": "x"}])
    assert table.splitlines()[2] == "| a \\| b | line break | x |"
