"""The measuring parts of scripts/benchmark.py and scripts/quality.py (the benchmarks themselves are run by hand)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark  # noqa: E402
import quality  # noqa: E402


MIB = 2**20


def test_peak_step_memory_counts_what_is_alive_at_once_on_cpu():
    def one_at_a_time():
        for _ in range(3):
            block = torch.ones(MIB, dtype=torch.uint8)  # 1 MiB, freed before the next
            del block

    def three_at_once():
        blocks = [torch.ones(MIB, dtype=torch.uint8) for _ in range(3)]
        del blocks

    one = benchmark.peak_step_memory(one_at_a_time, "cpu")
    three = benchmark.peak_step_memory(three_at_once, "cpu")
    assert MIB <= one < 1.5 * MIB
    assert 3 * MIB <= three < 3.5 * MIB


def test_fractions_of_the_run_become_step_counts():
    settings = {
        "objective": "dagger",
        "dagger_warmup_steps": 0.5,
        "sm_bc_steps": 10**9,
        "ss_schedule": "linear",
        "ss_k": 1.0,
        "ss_c": 0.25,
        "ss_eps_min": 0.75,
    }
    resolved = quality.resolve(settings, 800)
    assert resolved["dagger_warmup_steps"] == 400
    assert resolved["sm_bc_steps"] == 10**9  # a count stays a count
    # eps = k - c * step falls from 1 to eps_min = 0.75 over the first quarter (200 steps) of the run
    assert resolved["ss_k"] - resolved["ss_c"] * 200 == pytest.approx(0.75)
    assert settings["dagger_warmup_steps"] == 0.5  # the task's table is not modified


def test_the_budget_clock_evaluates_evenly_in_time_and_stops_at_the_budget(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(quality.time, "perf_counter", lambda: now[0])
    clock = quality._Clock("bleu", budget_seconds=10.0, eval_points=5)
    evaluations, stopped_at = [], None
    for step in range(1, 100):
        control = SimpleNamespace(should_evaluate=False, should_training_stop=False)
        clock.on_step_begin(None, None, control)
        now[0] += 0.75  # 0.75 s of training per step
        clock.on_step_end(None, None, control)
        if control.should_evaluate:
            evaluations.append(round(clock.seconds, 2))
        if control.should_training_stop:
            stopped_at = step
            break
    assert evaluations == [2.25, 4.5, 6.0, 8.25, 10.5]  # the first step past each fifth of the budget
    assert stopped_at == 14
    clock.on_evaluate(None, SimpleNamespace(global_step=14), None, metrics={"eval_bleu": 3.0})
    assert clock.curve == [{"step": 14, "seconds": 10.5, "value": 3.0}]


def test_a_budget_needs_teacher_forcing_to_scale_the_schedules(tmp_path):
    (tmp_path / "multi30k").mkdir()
    (tmp_path / "multi30k" / "train.en").write_text("a\n")  # found; the check comes before any loading
    with pytest.raises(ValueError, match=r"--budget-minutes needs the method 'mle'.*\['spg'\]"):
        quality.quality("translation", 1, 1.0, True, tmp_path, tmp_path, 32, "tiny", None, ["spg"], {})


def test_a_method_is_compared_with_teacher_forcing_at_its_own_step_count():
    mle = {
        "family": "bart",
        "seed": 0,
        "method": "mle",
        "curve": [{"step": 100, "value": 2.0}, {"step": 300, "value": 6.0}],
    }
    slow = {"family": "bart", "seed": 0, "method": "spg", "curve": [{"step": 200, "value": 3.0}]}
    early = {"family": "bart", "seed": 0, "method": "raml", "curve": [{"step": 50, "value": 1.5}]}
    past = {"family": "bart", "seed": 0, "method": "data_noising", "curve": [{"step": 400, "value": 7.0}]}
    other_seed = {"family": "bart", "seed": 1, "method": "spg", "curve": [{"step": 200, "value": 3.0}]}
    rows = [mle, slow, early, past, other_seed]
    assert quality._at_equal_steps(slow, rows) == pytest.approx(3.0 - 4.0)  # mle's curve at step 200 is 4.0
    assert quality._at_equal_steps(early, rows) == pytest.approx(1.5 - 1.0)  # from (0, 0) to (100, 2)
    assert quality._at_equal_steps(past, rows) is None  # teacher forcing never got that far
    assert quality._at_equal_steps(other_seed, rows) is None  # no teacher forcing run of that seed


def _fake_row(family, method, seed, steps, schedule_steps=None):
    return {
        "task": "translation",
        "family": family,
        "method": method,
        "seed": seed,
        "settings": {"objective": method},
        "steps": steps,
        "train_seconds": 60.0,
        "wall_seconds": 70.0,
        "seconds_per_step": 60.0 / steps,
        "curve": [{"step": steps, "seconds": 60.0, "value": 1.0}],
        "validation": {"eval_bleu": 1.0},
        "test": {"test_bleu": 1.0, "test_chrf": 10.0},
        "examples": {"train": 2000},
        "train_sampling_strategy": "random",
        "schedule_steps": schedule_steps,
    }


def test_resume_keeps_the_finished_runs_and_takes_the_schedule_from_the_kept_teacher_forcing_run(
    tmp_path, monkeypatch
):
    (tmp_path / "multi30k").mkdir()
    (tmp_path / "multi30k" / "train.en").write_text("a\n")
    results = tmp_path / "results" / "quality_translation_quick.json"
    results.parent.mkdir()
    kept = {**_fake_row("bart", "mle", 0, 77), "data": "d", "model": "m", "environment": {}}
    results.write_text(json.dumps([kept]))
    calls = []

    def fake_run_one(*, family, method, seed, schedule_steps, **kwargs):
        calls.append((family, method, seed, schedule_steps))
        return _fake_row(family, method, seed, 50, schedule_steps)

    monkeypatch.setattr(quality, "run_one", fake_run_one)
    rows = quality.quality(
        "translation", 1, 1.0, True, tmp_path, tmp_path, 32, "tiny", ["bart"], ["mle", "spg"], {}, resume=True
    )
    assert calls == [("bart", "spg", 0, 77)]  # mle seed 0 was kept; spg's schedule refers to its 77 steps
    assert [(r["method"], r["steps"]) for r in rows] == [("mle", 77), ("spg", 50)]
    assert [r["method"] for r in json.loads(results.read_text())] == ["mle", "spg"]
    assert (tmp_path / "quality_translation_quick.md").exists()


def test_an_interrupted_warm_start_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    data_args, _ = quality.data_arguments("arithmetic", tmp_path, quick=True)
    data_args = dataclasses.replace(data_args, synthetic_train_size=64, synthetic_eval_size=8)
    ticks = iter(range(10**6))  # every reading of the clock is one second later: a step lasts one second
    monkeypatch.setattr(quality, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    interrupted = []
    on_step_end = quality._Clock.on_step_end

    def interrupt_at_step_7(self, args, state, control, **kwargs):
        if state.global_step == 7 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return on_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(quality._Clock, "on_step_end", interrupt_at_step_7)
    run = dict(
        family="gpt2",
        method="warm start (mle)",
        settings={"objective": "mle"},
        seed=0,
        steps=10,
        budget=None,
        schedule_steps=10,
        task_name="arithmetic",
        data_args=data_args,
        spec={**quality.TASKS["arithmetic"], "sampled_eval": False},
        workdir=tmp_path,
        batch_size=4,
        size="tiny",
        save_to=tmp_path / "warm_start",
    )
    with pytest.raises(KeyboardInterrupt):
        quality.run_one(**run)
    assert not (tmp_path / "warm_start").exists()
    row = quality.run_one(**run)
    assert row["resumed_from"] == "checkpoint-6" and row["steps"] == 10
    assert row["train_seconds"] == 10.0  # 6 steps restored with the checkpoint, 4 after it
    assert [point["step"] for point in row["curve"]] == [2, 4, 6, 8, 10]
    assert (tmp_path / "warm_start" / "config.json").exists()
