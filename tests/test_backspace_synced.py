"""`generate_with_backspace(..., synced_gpus=True)` keeps two processes stepping together when they finish apart.

Under DeepSpeed ZeRO-3 and FSDP every forward pass gathers parameters from all processes, so a process whose rows
have ended must keep running forward passes until every process has ended, as `generate` does. Here two gloo
processes decode with end tokens chosen so that rank 0 finishes after one action and rank 1 runs to
`max_new_tokens`: with `synced_gpus` both make the same number of forward passes and return what each would
alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from hf_seqobj.backspace import generate_with_backspace
from hf_seqobj.decoding.decoder import all_finished


BKSP, PAD, VOCAB, MAX_NEW = 18, 19, 20, 6


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    ids = {"pad_token_id": PAD, "bos_token_id": 0, "eos_token_id": 1}
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32, **ids)
    return GPT2LMHeadModel(config).eval()


def _decode(model, eos: int, synced: bool, max_new: int = MAX_NEW) -> tuple[list[list[int]], int]:
    """Decodes two fixed prompts; returns the sequences and the number of forward passes."""
    calls = {"n": 0}
    hook = model.register_forward_pre_hook(lambda module, args: calls.__setitem__("n", calls["n"] + 1))
    prompts = torch.tensor([[3, 4, 5], [6, 7, 8]])
    config = GenerationConfig(max_new_tokens=max_new, eos_token_id=eos, pad_token_id=PAD, do_sample=False)
    try:
        sequences = generate_with_backspace(model, prompts, None, config, bksp_token_id=BKSP, synced_gpus=synced)
    finally:
        hook.remove()
    return sequences.tolist(), calls["n"]


def _worker(rank: int, init_file: str, out: str, eos_per_rank: list[int], max_new_per_rank: list[int]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = _model()
        alone, alone_calls = _decode(model, eos_per_rank[rank], synced=False, max_new=max_new_per_rank[rank])
        synced, synced_calls = _decode(model, eos_per_rank[rank], synced=True, max_new=max_new_per_rank[rank])
        # the synced loop on its own: rank r finishes after r + 1 steps; both leave after step 2
        steps = next(step for step in range(1, 10) if all_finished(step >= rank + 1, True, torch.device("cpu")))
        result = {"alone": alone, "synced": synced, "alone_calls": alone_calls, "synced_calls": synced_calls}
        Path(out, f"rank{rank}.json").write_text(json.dumps({**result, "steps": steps}))
    finally:
        dist.destroy_process_group()


def test_all_finished_without_sync_is_local():
    assert all_finished(True, False, torch.device("cpu")) and not all_finished(False, False, torch.device("cpu"))


def _spawn(tmp_path, eos_per_rank, max_new_per_rank) -> list[dict]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = (str(tmp_path / "init"), str(tmp_path), eos_per_rank, max_new_per_rank)
    context = mp.spawn(_worker, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a rank left the loop early and the other waits in all_reduce
            for process in context.processes:
                process.terminate()
            pytest.fail("the two processes did not finish decoding together (deadlock)")
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


def _assert_synced_outputs_are_the_alone_ones(ranks: list[dict]) -> None:
    for rank in ranks:
        width = len(rank["alone"][0])
        assert [row[:width] for row in rank["synced"]] == rank["alone"]  # the same outputs (padding aside)
        assert all(token == PAD for row in rank["synced"] for token in row[width:])


def test_ranks_with_different_budgets_step_together(tmp_path):
    """Rank 0 may take 2 actions, rank 1 six (as roll-ins sized by each rank's own longest target are); neither
    ends early: rank 0 keeps stepping (its rows done) until rank 1 has spent its budget."""
    ranks = _spawn(tmp_path, [VOCAB + 5, VOCAB + 5], [2, MAX_NEW])
    assert ranks[0]["alone_calls"] == 2 and ranks[1]["alone_calls"] == MAX_NEW  # alone they stop apart
    assert ranks[0]["synced_calls"] == ranks[1]["synced_calls"] == MAX_NEW
    _assert_synced_outputs_are_the_alone_ones(ranks)
    assert all(len(row) == 3 + 2 for row in ranks[0]["alone"])  # rank 0 took its own 2 actions only


def test_ranks_that_finish_apart_step_together(tmp_path):
    model = _model()
    prompts = torch.tensor([[3, 4, 5], [6, 7, 8]])
    config = GenerationConfig(max_new_tokens=1, pad_token_id=PAD, eos_token_id=1)
    first = generate_with_backspace(model, prompts, None, config, bksp_token_id=BKSP)
    # rank 0: its end tokens are the first greedy actions of both rows (it is done after one action); rank 1: an
    # end token outside the vocabulary (it runs to max_new_tokens)
    eos_per_rank = [sorted(set(first[:, -1].tolist())), VOCAB + 5]
    ranks = _spawn(tmp_path, eos_per_rank, [MAX_NEW, MAX_NEW])
    # alone: one forward pass for the prompt, then one per action but the last (rank 0 stops after its first)
    assert ranks[0]["alone_calls"] == 1 and ranks[1]["alone_calls"] == MAX_NEW  # they do finish apart
    assert ranks[0]["synced_calls"] == ranks[1]["synced_calls"] == MAX_NEW  # ... and step together when synced
    for rank in ranks:
        assert rank["steps"] == 2
    _assert_synced_outputs_are_the_alone_ones(ranks)
