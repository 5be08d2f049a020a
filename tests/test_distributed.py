"""Two CPU processes (accelerate launch, DDP over gloo) train as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_run.py"
ACCELERATE_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"


def _run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _train(checkpoint: str, out: Path, objective: str, processes: int, global_batch: int, extra: list[str]):
    out.mkdir(parents=True)
    args = [checkpoint, str(out), objective, str(global_batch // processes), *extra]
    if processes == 1:
        _run([sys.executable, str(SCRIPT), *args], out)
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG)]
        _run([*launch, "--num_processes", str(processes), str(SCRIPT), *args], out)
    params = [torch.load(out / f"params_rank{rank}.pt", weights_only=True) for rank in range(processes)]
    return params, json.loads((out / "log_history.json").read_text())


@pytest.mark.parametrize(
    "objective, extra",
    [
        ("mle", []),
        ("dagger", ["dagger_beta=0.5", 'dagger_beta_schedule="constant"']),
        ("dagger", ["dagger_beta=0.5", 'dagger_beta_schedule="constant"', "rollin_fraction=0.5"]),
        ("scheduled_sampling", ['ss_schedule="linear"', "ss_k=0.0"]),
        # backspace noise on (draws keyed by global row), SequenceMatch from step 1 with fresh greedy roll-ins
        ("sequencematch", ["sm_noise_prob=0.3", "sm_bc_steps=1", "sm_bc_anneal_steps=1", "sm_max_new_tokens=10"]),
    ],
)
def test_two_processes_train_as_one(objective, extra, tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["bart"]
    one, one_log = _train(checkpoint, tmp_path / "one", objective, 1, 8, extra)
    two, two_log = _train(checkpoint, tmp_path / "two", objective, 2, 8, extra)
    for name, value in two[0].items():
        assert torch.equal(two[1][name], value), f"ranks disagree on {name}"
    initial = load_file(Path(checkpoint) / "model.safetensors")
    # (sequencematch adds the <bksp> row to the embeddings: compare the rows the checkpoint has)
    moved = max(
        (one[0][name][: value.shape[0]] - value).abs().max().item()
        for name, value in initial.items()
        if name in one[0]
    )
    assert moved > 1e-4, "training did not move the parameters, so the comparison would prove nothing"
    for name, value in one[0].items():
        # 2 processes and 1 process see the same 8 examples per step; sums differ in order only
        torch.testing.assert_close(two[0][name], value, atol=2e-5, rtol=1e-4, msg=f"{objective}: {name}")
    losses_one = [entry["loss"] for entry in one_log if "loss" in entry]
    losses_two = [entry["loss"] for entry in two_log if "loss" in entry]
    assert losses_two == pytest.approx(losses_one, rel=1e-4, abs=1e-5)
    if objective == "dagger":
        forced_one = [entry["oracle_forced_fraction"] for entry in one_log if "oracle_forced_fraction" in entry]
        forced_two = [entry["oracle_forced_fraction"] for entry in two_log if "oracle_forced_fraction" in entry]
        # The oracle's tokens were mixed in on both runs, and the parameters above agree: the mixing draws are
        # keyed by global row. The logged fraction is a mean of the ranks' fractions (each over its own generation
        # steps), so it is close to, not equal to, the one-process figure.
        assert all(value > 0 for value in forced_one) and all(value > 0 for value in forced_two)
        assert forced_two == pytest.approx(forced_one, abs=0.1)
