"""PEFT / LoRA: per-architecture defaults, trainable added tokens, roll-ins and evaluation on a PeftModel, adapters
that save, load back and merge, and `hf-seqobj train / evaluate` with `use_peft`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NO_DROPOUT, TRAINER_DEFAULTS
from peft import PeftModel, TaskType

from hf_seqobj.arguments import ModelArguments
from hf_seqobj.cli import main, parse_settings
from hf_seqobj.decoding.rollin import generate_rollin, rollin_generation_config
from hf_seqobj.modeling import is_encoder_decoder, load_model_and_tokenizer
from hf_seqobj.peft_utils import added_token_ids, is_adapter_dir, lora_config_for
from hf_seqobj.run import build_trainer
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments


NEW_TOKENS = ["<new_0>", "<new_1>"]
"""Tokens beyond the tiny checkpoints' vocabulary (whose tags are already in it): what adding tags or `<bksp>` to a
pretrained tokenizer gives."""


def _model_with_new_tokens(tiny_checkpoints, ner_task, arch):
    task, splits = ner_task
    return load_model_and_tokenizer(
        tiny_checkpoints[arch],
        extra_tokens=[*task.extra_tokens(splits), *NEW_TOKENS],
        config_overrides=NO_DROPOUT[arch],
    )


def _peft_trainer(tiny_checkpoints, ner_task, tmp_path, arch, name="run", **kwargs):
    task, splits = ner_task
    model, tokenizer = _model_with_new_tokens(tiny_checkpoints, ner_task, arch)
    tokenized = task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder)
    args_class = SeqObjSeq2SeqTrainingArguments if model.config.is_encoder_decoder else SeqObjTrainingArguments
    settings = {
        **TRAINER_DEFAULTS,
        "output_dir": str(tmp_path / name),
        "learning_rate": 5e-2,
        "max_steps": 3,
        "predict_with_generate": True,
    }
    if args_class is SeqObjSeq2SeqTrainingArguments:
        settings["generation_max_length"] = 24
    else:
        settings["generation_max_new_tokens"] = 24
    settings.update(kwargs)
    peft_config = lora_config_for(model, tokenizer, r=4, lora_alpha=8, lora_dropout=0.0)
    return build_trainer(model, tokenizer, task, tokenized, args_class(**settings), peft_config=peft_config)


def _effective_embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    """The input embeddings the model uses for `ids` (through PEFT's trainable-token layer where there is one)."""
    with torch.no_grad():
        return model.get_input_embeddings()(ids).detach().clone()


@pytest.mark.parametrize(
    ("arch", "targets", "fan_in_fan_out", "task_type"),
    [
        ("gpt2", {"c_attn", "c_proj"}, True, TaskType.CAUSAL_LM),
        ("bart", {"q_proj", "v_proj"}, False, TaskType.SEQ_2_SEQ_LM),
        ("t5", {"q", "v"}, False, TaskType.SEQ_2_SEQ_LM),
    ],
)
def test_lora_defaults_per_architecture(arch, targets, fan_in_fan_out, task_type, tiny_checkpoints, ner_task):
    model, tokenizer = _model_with_new_tokens(tiny_checkpoints, ner_task, arch)
    new_ids = added_token_ids(tokenizer)
    assert new_ids == sorted(tokenizer.convert_tokens_to_ids(NEW_TOKENS)) and min(new_ids) >= tokenizer.vocab_size
    config = lora_config_for(model, tokenizer)
    assert set(config.target_modules) == targets
    assert config.fan_in_fan_out is fan_in_fan_out and config.task_type == task_type
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)  # TRL's ModelConfig defaults
    assert config.trainable_token_indices == new_ids
    # Training whole embeddings instead: no separate token rows.
    assert lora_config_for(model, tokenizer, modules_to_save=["lm_head"]).trainable_token_indices is None
    assert lora_config_for(model, tokenizer, target_modules=["all-linear"]).target_modules == "all-linear"
    if arch == "gpt2":
        with pytest.raises(ValueError, match="mix Conv1D layers"):
            lora_config_for(model, tokenizer, target_modules=["c_attn", "lm_head"])


def test_model_arguments_for_lora():
    args = ModelArguments(architecture="bart", use_peft=True, lora_target_modules="all-linear")
    assert args.lora_target_modules == ["all-linear"]
    for kwargs, message in [
        ({"lora_r": 0}, "lora_r must be >= 1, got 0"),
        ({"lora_alpha": 0}, "lora_alpha must be > 0, got 0"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\), got 1.0"),
        ({"lora_target_modules": []}, "lora_target_modules must be None or a non-empty list"),
    ]:
        with pytest.raises(ValueError, match=message):
            ModelArguments(architecture="bart", use_peft=True, **kwargs)
    with pytest.raises(ValueError, match="lora_modules_to_save .*set use_peft"):
        ModelArguments(architecture="bart", lora_modules_to_save=["lm_head"])
    config = {"task": "ner", "dataset_name": "synthetic", "architecture": "t5", "output_dir": "out"}
    flags = ["--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "q", "k", "v"]
    model_args, _, _ = parse_settings({**config, "lora_modules_to_save": ["lm_head"]}, flags, "test.yaml")
    assert model_args.use_peft and model_args.lora_r == 8
    assert model_args.lora_target_modules == ["q", "k", "v"] and model_args.lora_modules_to_save == ["lm_head"]


@pytest.mark.parametrize("objective", ["dagger", "mle"])
@pytest.mark.parametrize("arch", ["gpt2", "bart", "t5"])
def test_lora_training_end_to_end(arch, objective, tiny_checkpoints, ner_task, tmp_path):
    """Only LoRA weights and the added tokens' embedding rows train; roll-ins and evaluation generation run on the
    PeftModel; the adapter saves, loads back with the same logits, and merges to the same logits."""
    trainer = _peft_trainer(tiny_checkpoints, ner_task, tmp_path, arch, objective=objective)
    model = trainer.model
    assert isinstance(model, PeftModel)
    tokenizer = trainer.processing_class
    new_ids = torch.tensor(added_token_ids(tokenizer))
    old_ids = torch.arange(tokenizer.vocab_size)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    new_before, old_before = _effective_embeddings(model, new_ids), _effective_embeddings(model, old_ids)
    assert lora_before and all(".base_layer." in n or "lora_" not in n for n in base_before)

    trainer.train()
    if objective == "dagger":
        assert any("oracle_agreement" in entry for entry in trainer.state.log_history)
    for name, value in base_before.items():  # frozen base weights do not move
        torch.testing.assert_close(dict(model.named_parameters())[name], value, rtol=0, atol=0, msg=name)
    moved = max((dict(model.named_parameters())[n] - v).abs().max().item() for n, v in lora_before.items())
    assert moved > 1e-4, "LoRA weights did not train"
    assert (_effective_embeddings(model, new_ids) - new_before).abs().amax(-1).min() > 1e-4, "added rows did not train"
    torch.testing.assert_close(_effective_embeddings(model, old_ids), old_before, rtol=0, atol=0)

    metrics = trainer.evaluate()  # generation through PeftModel.generate (keyword arguments)
    assert 0.0 <= metrics["eval_f1"] <= 1.0 and "eval_length_mismatch_rate" in metrics

    # A roll-in on the PeftModel equals the merged model's: the adapter is active during generation.
    batch = trainer.data_collator([{k: trainer.eval_dataset[i][k] for k in ("input_ids", "labels")} for i in range(4)])
    config = rollin_generation_config(
        model, 12, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    rollin = generate_rollin(model, batch, config, trainer.accelerator)

    trainer.save_model()
    out = Path(trainer.args.output_dir)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and is_adapter_dir(out)
    assert json.loads((out / "adapter_config.json").read_text())["trainable_token_indices"] == new_ids.tolist()
    assert is_encoder_decoder(out) == (arch != "gpt2")

    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if arch == "gpt2":
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    else:
        inputs["decoder_input_ids"] = torch.cat(
            [torch.full_like(rollin.tokens[:, :1], model.config.decoder_start_token_id), rollin.tokens], 1
        )
    with torch.no_grad():
        logits = model(**inputs).logits
    loaded, loaded_tokenizer = load_model_and_tokenizer(out)
    assert isinstance(loaded, PeftModel) and len(loaded_tokenizer) == len(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, logits, rtol=0, atol=1e-5)
    base, _ = load_model_and_tokenizer(tiny_checkpoints[arch], config_overrides=NO_DROPOUT[arch])
    base.resize_token_embeddings(len(tokenizer))
    reloaded = PeftModel.from_pretrained(base, str(out))  # the plain PEFT way
    merged = reloaded.merge_and_unload()
    assert not isinstance(merged, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, logits, rtol=0, atol=1e-4)  # merging reorders float sums
    merged_rollin = generate_rollin(merged, batch, config)
    torch.testing.assert_close(merged_rollin.tokens, rollin.tokens, rtol=0, atol=0)


def test_roll_ins_on_a_peft_model_restore_gradient_checkpointing(tiny_checkpoints, ner_task, tmp_path):
    trainer = _peft_trainer(
        tiny_checkpoints, ner_task, tmp_path, "bart", objective="dagger", max_steps=2, gradient_checkpointing=True
    )
    trainer.train()
    assert any("oracle_agreement" in entry for entry in trainer.state.log_history)
    assert trainer.model.get_base_model().is_activation_checkpointing


def test_peft_config_with_a_peft_model_is_an_error(tiny_checkpoints, ner_task, tmp_path):
    trainer = _peft_trainer(tiny_checkpoints, ner_task, tmp_path, "t5", max_steps=1)
    with pytest.raises(ValueError, match="already is a PeftModel"):
        type(trainer)(model=trainer.model, args=trainer.args, peft_config=lora_config_for(trainer.model))


def test_cli_trains_and_evaluates_an_adapter(tmp_path, capsys):
    out = tmp_path / "run"
    config = {
        "task": "ner",
        "dataset_name": "synthetic",
        "synthetic_train_size": 64,
        "synthetic_eval_size": 8,
        "architecture": "bart",
        "output_dir": str(out),
        "max_steps": 3,
        "learning_rate": 0.01,
        "per_device_train_batch_size": 16,
        "predict_with_generate": True,
        "generation_max_length": 32,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "objective": "dagger",
        "use_peft": True,
        "lora_r": 4,
        "lora_target_modules": "all-linear",
    }
    path = tmp_path / "peft.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    assert is_adapter_dir(out) and (out / "README.md").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["task_type"] == "SEQ_2_SEQ_LM"
    assert "library_name: peft" in (out / "README.md").read_text()
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert main(["evaluate", str(out), "--split", "validation"]) == 0
    results = json.loads((out / "eval_validation" / "validation_results.json").read_text())
    assert results["validation_f1"] == pytest.approx(eval_results["eval_f1"])
    assert results["validation_length_mismatch_rate"] == pytest.approx(eval_results["eval_length_mismatch_rate"])


HUB_BASE_SCRIPT = """
import sys, yaml
from pathlib import Path
from hf_seqobj.modeling import RUN_CONFIG_NAME, base_model_record, hub_commit, load_model_and_tokenizer
from hf_seqobj.modeling import resolve_adapter_base_revision
first, second, adapter = sys.argv[1], sys.argv[2], Path(sys.argv[3])
assert hub_commit("me/tiny") == second, hub_commit("me/tiny")  # refs/main points at the second commit
record = base_model_record("me/tiny", adapter)
assert record == {"name_or_path": "me/tiny", "in_run": None, "fingerprint": None, "revision": second}, record
record["revision"] = first  # an adapter trained when main was the first commit
(adapter / RUN_CONFIG_NAME).write_text(yaml.safe_dump({"base_model": record}))
assert resolve_adapter_base_revision(adapter) == ("me/tiny", first)
model, _ = load_model_and_tokenizer("me/tiny", revision=first)
print(float(model.get_input_embeddings().weight.sum()))
"""


def test_an_adapter_on_a_hub_base_records_and_loads_the_commit_it_was_trained_on(tiny_checkpoints, tmp_path):
    """A Hub base is pinned by its commit: when the Hub's main moves on, the adapter still loads the weights it was
    trained on (a local Hub cache with two commits of `me/tiny`, offline)."""
    import os
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "hub" / "models--me--tiny"
    commits = ["1" * 40, "2" * 40]
    sums = []
    for index, commit in enumerate(commits):
        model, tokenizer = load_model_and_tokenizer(tiny_checkpoints["gpt2"])
        with torch.no_grad():
            model.get_input_embeddings().weight.add_(index)  # the second commit's weights differ
        model.save_pretrained(repo / "snapshots" / commit)
        tokenizer.save_pretrained(repo / "snapshots" / commit)
        sums.append(float(model.get_input_embeddings().weight.detach().sum()))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commits[1])
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", HUB_BASE_SCRIPT, *commits, str(adapter)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) == pytest.approx(sums[0], rel=1e-6) != pytest.approx(sums[1], rel=1e-6)
    shutil.rmtree(repo)
