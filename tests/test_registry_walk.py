"""Every registered objective, walked end to end from its one registration: its settings reachable from the command
line and listed by `--help`, its validation called, its model-card section rendered, its resume state saved and
restored. A new objective registered with `register_objective` is covered here without a test of its own."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import parameters

from hf_seqobj.cli import parse_settings, train_parser
from hf_seqobj.model_card import trainer_model_card
from hf_seqobj.objectives import OBJECTIVES


BASE = {
    "task": "ner",
    "dataset_name": "synthetic",
    "architecture": "gpt2",
    "output_dir": "unused",
    "report_to": "none",
}


def _settings_fields(name: str) -> list[dataclasses.Field]:
    return [f for setting in OBJECTIVES[name].settings for f in dataclasses.fields(setting)]


def test_the_walk_covers_every_objective():
    assert {
        "mle",
        "scheduled_sampling",
        "dagger",
        "sequencematch",
        "raml",
        "data_noising",
        "spg",
        "interpolation",
    } <= set(OBJECTIVES)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_settings_are_in_help_and_reachable_from_the_command_line(name):
    help_text = train_parser(BASE, "test").format_help()
    assert name in help_text  # the objective's choices list it
    for setting in OBJECTIVES[name].settings:
        assert f"objective settings: {setting.__name__}" in help_text
    for field in _settings_fields(name):
        assert f"--{field.name}" in help_text, field.name
    # every setting given as a flag reaches the parsed training arguments, with its default's value
    flags = ["--objective", name]
    for field in _settings_fields(name):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if default is None:
            continue
        values = [str(v) for v in default] if isinstance(default, list | tuple) else [str(default)]
        flags += [f"--{field.name}", *values]
    _, _, training_args = parse_settings(BASE, flags, "test")
    assert training_args.objective == name
    for field in _settings_fields(name):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert getattr(training_args, field.name) == default, field.name


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_validation_runs_every_settings_dataclass_of_the_objective(name, monkeypatch):
    called = []
    for setting in OBJECTIVES[name].settings:
        original = setting.validate
        monkeypatch.setattr(setting, "validate", lambda self, s=setting, o=original: called.append(s) or o(self))
    parse_settings(BASE, ["--objective", name], "test")
    assert set(called) == set(OBJECTIVES[name].settings)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_the_model_card_shows_the_settings_and_cites_the_papers(name, make_trainer):
    trainer = make_trainer("gpt2", objective=name, max_steps=1)
    card = str(trainer_model_card(trainer))
    assert f"`{name}` objective" in card
    for field in _settings_fields(name):
        assert f"| `{field.name}` |" in card, field.name
    for paper in OBJECTIVES[name].papers:
        assert paper.splitlines()[0] in card
    if OBJECTIVES[name].description:
        assert OBJECTIVES[name].description in card


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_a_resumed_run_ends_as_the_uninterrupted_one(name, make_trainer, tmp_path):
    """What the objective needs on resume (state saved into checkpoints, schedules of the global step, keyed random
    draws) makes a run stopped after one step and resumed end with the parameters of the run never stopped."""
    common = dict(dropout=False, objective=name, max_steps=2, per_device_train_batch_size=4)
    full = make_trainer("gpt2", "full", **common)
    full.train()
    first = make_trainer("gpt2", "parts", save_strategy="steps", save_steps=1, **common)
    first.train()
    resumed = make_trainer("gpt2", "parts", save_strategy="steps", save_steps=1, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-1"))
    moved = max(
        (value - parameters(first.model)[key]).abs().max().item()
        for key, value in parameters(make_trainer("gpt2", "fresh", **common).model).items()
    )
    assert moved > 0  # the runs trained
    for key, value in parameters(full.model).items():
        torch.testing.assert_close(parameters(resumed.model)[key], value, atol=1e-6, rtol=0, msg=key)
