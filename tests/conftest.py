"""Shared fixtures: offline tiny checkpoints for GPT-2, BART and T5 built on the synthetic NER data."""

from __future__ import annotations

import os
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402

from hf_seqobj.arguments import DataArguments  # noqa: E402
from hf_seqobj.modeling import create_offline_model  # noqa: E402
from hf_seqobj.tasks import get_task  # noqa: E402


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The real data sets beside the checkout (absent on some machines: tests that need them skip)."""

ARCHITECTURES = ("gpt2", "bart", "t5")


def requires_shared_data(*parts: str):
    """Skips a test when ../shared/data (or the named file below it) is absent."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"real data not found at {path}")


@pytest.fixture(scope="session")
def ner_task():
    """The ner task on a small synthetic data set (120 train, 24 validation / test sentences)."""
    args = DataArguments(task="ner", dataset_name="synthetic", synthetic_train_size=120, synthetic_eval_size=24)
    task = get_task(args)
    return task, task.load()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, ner_task):
    """One saved tiny checkpoint directory per architecture, with a word-level tokenizer and the tags."""
    task, splits = ner_task
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        arch: str(
            create_offline_model(
                arch, task.training_text(splits), root / arch, extra_tokens=task.extra_tokens(splits), seed=0
            )
        )
        for arch in ARCHITECTURES
    }
