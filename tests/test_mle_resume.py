"""Teacher forcing resumes exactly: a run interrupted after a checkpoint and resumed from it ends with the
parameters of the uninterrupted run (dagger and scheduled sampling have the same test in their own files)."""

from __future__ import annotations

import pytest
import torch
from conftest import parameters
from transformers import TrainerCallback


class _StopAt(TrainerCallback):
    """Stops training after optimizer step `step`, as an interruption would (the checkpoint of that step saved)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("arch", ["gpt2", "bart", "t5"])
def test_resume_from_checkpoint_ends_with_the_same_parameters(arch, make_trainer, tmp_path):
    common = dict(dropout=False, objective="mle", max_steps=4, gradient_accumulation_steps=2, warmup_steps=1)
    full = make_trainer(arch, "full", **common)
    initial = parameters(full.model)
    full.train()
    interrupted = make_trainer(arch, "parts", save_strategy="steps", save_steps=2, **common)
    interrupted.add_callback(_StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2 and (tmp_path / "parts" / "checkpoint-2").is_dir()
    resumed = make_trainer(arch, "parts", save_strategy="steps", save_steps=2, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    final = parameters(full.model)
    assert max((final[name] - value).abs().max().item() for name, value in initial.items()) > 1e-4
    for name, value in final.items():
        torch.testing.assert_close(parameters(resumed.model)[name], value, atol=1e-6, rtol=0, msg=name)
