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


NO_DROPOUT = {
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "bart": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
    "t5": {"dropout_rate": 0.0},
}
"""Config overrides that switch dropout off, for tests that compare two runs parameter by parameter."""

TRAINER_DEFAULTS = dict(
    per_device_train_batch_size=8,
    per_device_eval_batch_size=24,
    learning_rate=1e-3,
    seed=3,
    report_to="none",
    use_cpu=True,
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
)
"""The training arguments of the tests' small trainers (plus an `output_dir`)."""


@pytest.fixture
def make_trainer(tiny_checkpoints, ner_task, tmp_path):
    """Builds a SeqObj trainer for `arch` on the small synthetic NER data: `make_trainer(arch, name, **args)`.

    `dropout=False` loads the model without dropout. Returns the trainer (its model is a fresh copy of the tiny
    checkpoint).
    """
    from hf_seqobj.modeling import load_model_and_tokenizer
    from hf_seqobj.run import build_trainer
    from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments

    task, splits = ner_task

    def make(arch: str, name: str = "run", dropout: bool = True, **kwargs):
        overrides = None if dropout else NO_DROPOUT[arch]
        model, tokenizer = load_model_and_tokenizer(
            tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits), config_overrides=overrides
        )
        tokenized = task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder)
        args_class = SeqObjSeq2SeqTrainingArguments if model.config.is_encoder_decoder else SeqObjTrainingArguments
        settings = {**TRAINER_DEFAULTS, "output_dir": str(tmp_path / name), **kwargs}
        return build_trainer(model, tokenizer, task, tokenized, args_class(**settings))

    return make


def parameters(model) -> dict:
    """A detached copy of every named parameter."""
    return {name: value.detach().clone() for name, value in model.named_parameters()}
