"""A corpus of bad inputs against `hf-seqobj train` / `evaluate`, each run through the real entry point.

Every case must end with exactly one line `hf-seqobj COMMAND: error: ...` that names what is wrong (the file and
line, the data set and row, or the setting and what it accepts), exit status 2, no traceback, and an output folder
exactly as it was before. The inputs are made here (small files written into a temporary folder). The last tests
cover inputs that must work (a byte-order mark, CRLF line ends, tab-separated CoNLL, line breaks quoted in CSV,
Unicode line separators inside a line, malformed examples with `skip_invalid_examples`) and the ways on
(`--overwrite_output_dir`, `--resume_from_checkpoint latest` after a kill, `--debug`).
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from hf_seqobj.arguments import DataArguments
from hf_seqobj.cli import main
from hf_seqobj.guards import CHECKPOINT_MARKER
from hf_seqobj.tasks import get_task


ROOT = Path(__file__).resolve().parents[1]
BOM = codecs.BOM_UTF8
BASE = {
    "task": "ner",
    "dataset_name": "synthetic",
    "synthetic_train_size": 24,
    "synthetic_eval_size": 4,
    "architecture": "bart",
    "output_dir": "out",
    "max_steps": 1,
    "per_device_train_batch_size": 8,
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
    "save_strategy": "no",
}
CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n"
NER_FILES = {"dataset_name": None, "train_file": "train.txt"}
SUMMARIES = {"task": "summarization", "dataset_name": None, "source_column": "dialogue", "target_column": "summary"}


@dataclass
class Case:
    """One bad input: its files, its config (merged into BASE) and flags, and the message its error must match."""

    id: str
    kind: str
    message: str
    config: dict | None = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    files: dict[str, bytes | str] = field(default_factory=dict)
    command: str = "train"
    setup: Callable[[Path], None] | None = None
    raw_config: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)


def _earlier_run(root: Path) -> None:
    """An output folder that holds a finished run (model, state, results, a checkpoint)."""
    out = root / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(out / "model.safetensors"))
    (out / "config.json").write_text("{}")
    (out / "trainer_state.json").write_text('{"global_step": 2}')
    (out / "test_results.json").write_text('{"test_f1": 0.5}')
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')


def _checkpoints_only(root: Path) -> None:
    out = root / "out"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def _checkpoint(root: Path, damage: str) -> None:
    """out/checkpoint-2 as the Trainer writes it, with one file damaged."""
    folder = root / "out" / "checkpoint-2"
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64.0)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text('{"global_step": 2, "log_history": []}')
    (folder / CHECKPOINT_MARKER).write_text('{"global_step": 2, "run": {}}')
    if damage == "safetensors":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:-40])
    elif damage == "optimizer":
        data = (folder / "optimizer.pt").read_bytes()
        (folder / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damage == "state":
        (folder / "trainer_state.json").write_text('{"global_step": 2, "log_his')
    elif damage == "no_state":
        (folder / "trainer_state.json").unlink()


def _hub_style_without_tokens(root: Path) -> None:
    from datasets import Dataset

    Dataset.from_dict({"words": [["a"]], "ner_tags": [["O"]]}).save_to_disk(str(root / "hub"))


def _not_a_model(root: Path) -> None:
    (root / "empty_model").mkdir()


def _not_a_run(root: Path) -> None:
    (root / "some_model").mkdir()
    (root / "some_model" / "config.json").write_text("{}")


def _fifo(root: Path) -> None:
    """A FIFO (which blocks a reader until something writes to it) and a link to it."""
    os.mkfifo(root / "fifo.txt")
    (root / "link.txt").symlink_to("fifo.txt")


def _marked_checkpoint(root: Path, run: dict | None) -> None:
    """out/checkpoint-2 with its trainer state and (unless `run` is None) a marker that stores `run`."""
    folder = root / "out" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 2, "log_history": []}')
    if run is not None:
        (folder / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": 2, "run": run}))


def _user_file(root: Path, name: str) -> None:
    """An output folder that holds only a file of the user's, of a name that a run also writes."""
    (root / "out").mkdir()
    (root / "out" / name).write_text("the user's own file")


CASES = [
    # ------------------------------------------------------------------ settings: types, ranges, names
    Case(
        "yaml_int_is_float", "setting", r"max_steps in config\.yaml must be an integer, got 5\.7", {"max_steps": 5.7}
    ),
    Case(
        "yaml_bool_is_word",
        "setting",
        r"use_cpu in config\.yaml must be true or false, got 'maybe'",
        {"use_cpu": "maybe"},
    ),
    Case(
        "yaml_list_is_string",
        "setting",
        r"interp_lambda in config\.yaml must be a list of numbers, got '0\.1 0\.8 0\.1'",
        {"interp_lambda": "0.1 0.8 0.1"},
    ),
    Case(
        "yaml_str_is_number",
        "setting",
        r"source_prefix in config\.yaml must be a string, got 12",
        {"source_prefix": 12},
    ),
    Case("flag_int_is_float", "setting", r"--max_steps.*invalid int value: '5\.7'", flags=["--max_steps", "5.7"]),
    Case("flag_bool_is_word", "setting", r"--use_cpu.*Truthy value expected: got maybe", flags=["--use_cpu", "maybe"]),
    Case(
        "eval_batch_zero",
        "setting",
        r"per_device_eval_batch_size must be >= 1, got 0",
        {"per_device_eval_batch_size": 0},
    ),
    Case(
        "train_batch_zero",
        "setting",
        r"per_device_train_batch_size must be >= 1, got 0",
        flags=["--per_device_train_batch_size", "0"],
    ),
    Case(
        "accumulation_zero",
        "setting",
        r"gradient_accumulation_steps must be >= 1, got 0",
        {"gradient_accumulation_steps": 0},
    ),
    Case("max_steps_zero", "setting", r"max_steps must be >= 1, or -1 .* got 0", {"max_steps": 0}),
    Case("epochs_zero", "setting", r"num_train_epochs must be > 0", {"max_steps": -1, "num_train_epochs": 0}),
    Case("negative_learning_rate", "setting", r"learning_rate must be >= 0, got -0\.1", {"learning_rate": -0.1}),
    Case(
        "label_smoothing_one",
        "setting",
        r"label_smoothing_factor must be in \[0, 1\), got 1\.5",
        {"label_smoothing_factor": 1.5},
    ),
    Case("logging_steps_zero", "setting", r"requires non-zero --logging_steps", {"logging_steps": 0}),
    Case("save_total_limit_zero", "setting", r"save_total_limit must be >= 1, got 0", {"save_total_limit": 0}),
    Case(
        "generation_length_zero", "setting", r"generation_max_length must be >= 1, got 0", {"generation_max_length": 0}
    ),
    Case(
        "unknown_yaml_key",
        "setting",
        r"Unknown key in config\.yaml: 'learning_rat' \(did you mean learning_rate",
        {"learning_rat": 1},
    ),
    Case("unknown_flag", "setting", r"Unknown key in the command line: 'no_such_flag'", flags=["--no_such_flag", "1"]),
    Case(
        "abbreviated_flag",
        "setting",
        r"Unknown key in the command line: 'learning_rat'",
        flags=["--learning_rat", "1"],
    ),
    Case("stray_value", "setting", r"Unexpected argument 'oops'", flags=["oops"]),
    Case(
        "bad_choice_yaml",
        "setting",
        r"objective in config\.yaml must be one of .*'dager' \(did you mean 'dagger'",
        {"objective": "dager"},
    ),
    Case("bad_choice_flag", "setting", r"--oracle: invalid choice: 'spanf1'", flags=["--oracle", "spanf1"]),
    Case(
        "bad_oracle_units",
        "setting",
        r"oracle_units in config\.yaml must be one of .*'words'",
        {"objective": "dagger", "oracle_units": "words"},
    ),
    Case(
        "agreement_share_without_floor",
        "setting",
        r"rollin_fraction_schedule='agreement' takes rollin_fraction as its floor, got 1\.0",
        {"objective": "dagger", "rollin_fraction_schedule": "agreement"},
    ),
    Case(
        "bad_objective_setting",
        "setting",
        r"dagger_beta must be in \[0, 1\], got 2\.0",
        {"objective": "dagger", "dagger_beta": 2},
    ),
    Case(
        "lora_setting_without_peft",
        "setting",
        r"lora_target_modules .* is a LoRA setting: set use_peft",
        {"lora_target_modules": ["q"]},
    ),
    Case("bad_lora_rank", "setting", r"lora_r must be >= 1, got 0", {"use_peft": True, "lora_r": 0}),
    Case(
        "model_and_architecture",
        "setting",
        r"Set only one of model_name_or_path",
        flags=["--model_name_or_path", "gpt2"],
    ),
    Case("no_model", "setting", r"Set model_name_or_path .* or architecture", {"architecture": None}),
    Case("no_data", "setting", r"Set dataset_name .* or train_file", {"dataset_name": None}),
    Case(
        "data_twice", "setting", r"Set either dataset_name \('synthetic'\) or the data files", {"train_file": "x.txt"}
    ),
    Case(
        "synthetic_translation",
        "setting",
        r"'synthetic' exists for the ner and arithmetic tasks only",
        {"task": "translation"},
    ),
    Case(
        "bad_task",
        "setting",
        r"task in config\.yaml must be one of .*got 'nerr' \(did you mean 'ner'",
        {"task": "nerr"},
    ),
    Case(
        "compare_not_mapping", "setting", r"compare in config\.yaml must map run names", {"compare": ["mle", "dagger"]}
    ),
    Case(
        "decoder_only_setting_on_bart",
        "setting",
        r"for a SeqObjSeq2SeqTrainingArguments model\): 'generation_max_new_tokens'",
        {"generation_max_new_tokens": 5},
    ),
    # settings without effect on this machine
    Case(
        "fp16_on_cpu",
        "setting",
        r"fp16: true has no effect on this machine, which trains on the CPU",
        flags=["--fp16", "true"],
    ),
    Case(
        "fp16_eval_on_cpu", "setting", r"fp16_full_eval: true has no effect on this machine", {"fp16_full_eval": True}
    ),
    # an oracle that does not fit the task
    Case(
        "span_f1_oracle_on_translation",
        "setting",
        r"oracle 'span_f1' scores BIO tag sequences, but task 'translation' outputs text.*bleu, rouge1",
        {"task": "translation", "dataset_name": None, "train_file": "t", "objective": "dagger", "oracle": "span_f1"},
        files={"t.en": "a dog .\n", "t.de": "ein Hund .\n"},
    ),
    Case(
        "bleu_oracle_on_ner",
        "setting",
        r"oracle 'bleu' scores text, but task 'ner' outputs BIO tag sequences.*span_f1, span_f1_partial",
        {"objective": "dagger", "oracle": "bleu"},
    ),
    # accelerate
    Case(
        "accelerate_flag_alone",
        "setting",
        r"--num_processes is an `accelerate launch` flag: give --accelerate_config",
        flags=["--num_processes", "2"],
    ),
    Case(
        "accelerate_config_unknown",
        "setting",
        r"accelerate config 'nope' is neither a file nor one of the packaged configs",
        flags=["--accelerate_config", "nope"],
    ),
    # ------------------------------------------------------------------ config files
    Case(
        "config_missing",
        "config",
        r"Config file 'missing\.yaml' does not exist",
        config=None,
        flags=["--config", "missing.yaml"],
    ),
    Case(
        "config_not_mapping",
        "config",
        r"config\.yaml must hold a mapping of settings .*not a list",
        raw_config=b"- a\n- b\n",
    ),
    Case(
        "config_not_yaml",
        "config",
        r"config\.yaml:3: not valid YAML \(expected ',' or '\]'",
        raw_config=b"task: ner\nmax_steps: [1, 2\n",
    ),
    Case("config_not_utf8", "config", r"Config file config\.yaml is not UTF-8 text", raw_config=b"task: n\xe9r\n"),
    Case(
        "config_twice",
        "config",
        r"Give one config file, not both 'config\.yaml' and --config 'other\.yaml'",
        flags=["--config", "other.yaml"],
    ),
    # ------------------------------------------------------------------ models
    Case(
        "model_path_missing",
        "model",
        r"model_name_or_path '\./no_such_model' is a local path that does not exist",
        {"architecture": None, "model_name_or_path": "./no_such_model"},
    ),
    Case(
        "model_hub_not_cached",
        "model",
        r"model_name_or_path 'no-such-org/no-such-model' is taken as a Hub model name, but no local directory of "
        r"that name exists, and it is not in the local Hugging Face cache",
        {"architecture": None, "model_name_or_path": "no-such-org/no-such-model"},
    ),
    Case(
        "model_dir_not_a_model",
        "model",
        r"model_name_or_path 'empty_model' is a local directory without config\.json",
        {"architecture": None, "model_name_or_path": "empty_model"},
        setup=_not_a_model,
    ),
    Case(
        "evaluate_not_a_run",
        "model",
        r"some_model/hf_seqobj_run\.yaml does not exist: 'some_model' was not written by `hf-seqobj train`",
        config=None,
        command="evaluate",
        flags=["some_model"],
        setup=_not_a_run,
    ),
    Case("evaluate_nothing", "model", r"evaluate needs a model directory", config=None, command="evaluate"),
    # ------------------------------------------------------------------ data
    Case(
        "conll_not_utf8",
        "data",
        r"train\.txt:4: byte 0xe9 \(column 3\) is not UTF-8 text",
        NER_FILES,
        files={"train.txt": b"EU B-ORG\nrejects O\n\nPe\xe9ter B-PER\n"},
    ),
    Case(
        "parallel_not_utf8",
        "data",
        r"t\.de:2: byte 0xff .*is not UTF-8",
        {"task": "translation", "dataset_name": None, "train_file": "t"},
        files={"t.en": "a\nb\n", "t.de": b"x\n\xff\n"},
    ),
    Case(
        "jsonl_bad_line",
        "data",
        r"d\.jsonl:2: not a JSON object",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": '{"dialogue": "a b", "summary": "a"}\n{"dialogue": "x", summary: 1}\n'},
    ),
    Case(
        "jsonl_not_object",
        "data",
        r"d\.jsonl:1: a JSON list, not an object",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": '["a", "b"]\n'},
    ),
    Case(
        "jsonl_empty",
        "data",
        r"d\.jsonl holds no records \(the file is empty\)",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": ""},
    ),
    Case(
        "json_bad",
        "data",
        r"d\.json:3: not JSON",
        {**SUMMARIES, "train_file": "d.json"},
        files={"d.json": '[\n{"dialogue": "a", "summary": "b"},\n{"dialogue" "a"}\n]'},
    ),
    Case(
        "csv_field_count",
        "data",
        r"d\.csv:3: 3 fields where the header has 2",
        {**SUMMARIES, "train_file": "d.csv"},
        files={"d.csv": "dialogue,summary\na b,a\nx,y,z\n"},
    ),
    Case(
        "csv_not_utf8",
        "data",
        r"d\.csv:2: byte 0xe9",
        {**SUMMARIES, "train_file": "d.csv"},
        files={"d.csv": b"dialogue,summary\ncaf\xe9,c\n"},
    ),
    Case(
        "missing_column",
        "data",
        r"file 'd\.jsonl' has no column 'dialogue'; its columns are \['document', 'summary'\]",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": '{"document": "a", "summary": "b"}\n'},
    ),
    Case(
        "empty_text",
        "data",
        r"d\.jsonl:2: column 'dialogue' holds '', not a non-empty text \(set skip_invalid_examples",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": '{"dialogue": "a b", "summary": "a"}\n{"dialogue": "", "summary": "b"}\n'},
    ),
    Case(
        "null_text",
        "data",
        r"d\.jsonl:1: column 'summary' holds None",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": '{"dialogue": "a b", "summary": null}\n'},
    ),
    Case(
        "summaries_wrong_suffix",
        "data",
        r"d\.txt: summarization files must end in \.jsonl, \.json or \.csv",
        {**SUMMARIES, "train_file": "d.txt"},
        files={"d.txt": "x\n"},
    ),
    Case(
        "conll_field_count",
        "data",
        r"train\.txt:2: 3 fields in 'rejects VBZ O'",
        NER_FILES,
        files={"train.txt": "EU B-ORG\nrejects VBZ O\n"},
    ),
    Case(
        "conll_mixed_columns",
        "data",
        r"train\.txt:2: 4 fields where earlier lines have 2",
        NER_FILES,
        files={"train.txt": "EU B-ORG\nrejects VBZ B-VP O\n"},
    ),
    Case("conll_bad_tag", "data", r"train\.txt:1: 'ORG' is not a BIO tag", NER_FILES, files={"train.txt": "EU ORG\n"}),
    Case(
        "conll_unicode_space_is_no_separator",
        "data",
        r"train\.txt:1: 1 fields in 'EU\\u2003B-ORG'",
        NER_FILES,
        files={"train.txt": "EU\u2003B-ORG\n"},
    ),
    Case(
        "ner_unseen_tag",
        "data",
        r"validation_file 'valid\.txt', sentence 0: tags \['B-LOC'\] are outside the training label set",
        {**NER_FILES, "validation_file": "valid.txt"},
        files={"train.txt": CONLL, "valid.txt": "Paris B-LOC\n"},
    ),
    Case(
        "ner_empty_split",
        "data",
        r"The validation split of task 'ner' is empty \(validation_file 'valid\.txt'\)",
        {**NER_FILES, "validation_file": "valid.txt"},
        files={"train.txt": CONLL, "valid.txt": "\n\n"},
    ),
    Case(
        "parallel_misaligned",
        "data",
        r"misaligned: t\.en has 2 lines, t\.de has 1",
        {"task": "translation", "dataset_name": None, "train_file": "t"},
        files={"t.en": "a\nb\n", "t.de": "x\n"},
    ),
    Case(
        "parallel_unicode_break_misaligns_nothing",
        "data",
        r"misaligned: t\.en has 1 lines, t\.de has 2",
        {"task": "translation", "dataset_name": None, "train_file": "t"},
        files={"t.en": "a\u2028b\n", "t.de": "x\ny\n"},
    ),
    Case(
        "parallel_empty_line",
        "data",
        r"t\.de:2: empty line in a parallel file \(set skip_invalid_examples",
        {"task": "translation", "dataset_name": None, "train_file": "t"},
        files={"t.en": "a\nb\n", "t.de": "x\n \n"},
    ),
    Case(
        "data_file_missing",
        "data",
        r"train_file 'missing\.txt': missing\.txt is not a readable file",
        {**NER_FILES, "train_file": "missing.txt"},
    ),
    Case(
        "parallel_side_missing",
        "data",
        r"train_file 't': t\.de is not a readable file",
        {"task": "translation", "dataset_name": None, "train_file": "t"},
        files={"t.en": "a\n"},
    ),
    Case(
        "dataset_path_missing",
        "data",
        r"dataset_name '\./no_data' is a local path that does not exist",
        {"dataset_name": "./no_data"},
    ),
    Case(
        "dataset_hub_not_cached",
        "data",
        r"dataset_name 'no-such-org/no-such-data' \(a Hub data set name\) could not be loaded",
        {"dataset_name": "no-such-org/no-such-data"},
    ),
    Case(
        "hub_style_missing_column",
        "data",
        r"has no column 'tokens'; its columns are \['words', 'ner_tags'\]",
        {"dataset_name": "hub"},
        setup=_hub_style_without_tokens,
    ),
    Case(
        "long_example",
        "data",
        r"train_file 'train\.txt', example 0: its source has 4 tokens \(EOS included\), over max_source_length=3",
        {**NER_FILES, "max_source_length": 3},
        files={"train.txt": CONLL},
    ),
    # ------------------------------------------------------------------ the output folder and checkpoints
    Case(
        "output_dir_holds_a_run",
        "run folder",
        r"output_dir 'out' already holds a run \(checkpoint-2, config\.json, .*nothing was changed.*"
        r"--resume_from_checkpoint latest.*--overwrite_output_dir true",
        setup=_earlier_run,
    ),
    Case(
        "output_dir_holds_checkpoints",
        "run folder",
        r"output_dir 'out' already holds a run \(checkpoint-2, checkpoint-4\)",
        {"save_total_limit": 1},
        setup=_checkpoints_only,
    ),
    Case(
        "resume_without_checkpoint",
        "checkpoint",
        r"resume_from_checkpoint 'latest': output_dir 'out' holds no complete checkpoint-\* folder",
        flags=["--resume_from_checkpoint", "latest"],
    ),
    Case(
        "resume_missing_folder",
        "checkpoint",
        r"resume_from_checkpoint 'nowhere' is not a checkpoint folder",
        flags=["--resume_from_checkpoint", "nowhere"],
    ),
    Case(
        "resume_truncated_safetensors",
        "checkpoint",
        r"Checkpoint file out/checkpoint-2/model\.safetensors is truncated or corrupt",
        flags=["--resume_from_checkpoint", "latest"],
        setup=lambda root: _checkpoint(root, "safetensors"),
    ),
    Case(
        "resume_truncated_optimizer",
        "checkpoint",
        r"Checkpoint file out/checkpoint-2/optimizer\.pt is truncated or corrupt",
        {"resume_from_checkpoint": True},
        setup=lambda root: _checkpoint(root, "optimizer"),
    ),
    Case(
        "resume_corrupt_state",
        "checkpoint",
        r"Checkpoint file out/checkpoint-2/trainer_state\.json is truncated or corrupt",
        flags=["--resume_from_checkpoint", "out/checkpoint-2"],
        setup=lambda root: _checkpoint(root, "state"),
    ),
    Case(
        "resume_not_a_checkpoint",
        "checkpoint",
        r"out/checkpoint-2 holds no trainer_state\.json: it is not a checkpoint",
        flags=["--resume_from_checkpoint", "out/checkpoint-2"],
        setup=lambda root: _checkpoint(root, "no_state"),
    ),
    # ------------------------------------------------------------------ lost data: files of the user's
    Case(
        "readme_in_output_dir",
        "lost data",
        r"output_dir 'out' holds README\.md, which the run would overwrite; nothing was changed.*"
        r"--overwrite_output_dir true",
        setup=lambda root: _user_file(root, "README.md"),
    ),
    Case(
        "plot_in_output_dir",
        "lost data",
        r"output_dir 'out' holds loss\.png, which the run would overwrite",
        setup=lambda root: _user_file(root, "loss.png"),
    ),
    Case(
        "comparison_table_in_output_dir",
        "lost data",
        r"out/comparison\.md exists, and the comparison would overwrite it; nothing was changed",
        {"compare": {"mle": {}}},
        setup=lambda root: _user_file(root, "comparison.md"),
    ),
    # ------------------------------------------------------------------ files: non-regular, strict CSV, repeated keys
    *[
        Case(
            f"data_file_{label}",
            "file",
            rf"train_file: {name}\.txt is a FIFO \(after following links\); a data file must be a regular file",
            {**NER_FILES, "train_file": f"{name}.txt"},
            setup=_fifo,
        )
        for label, name in (("fifo", "fifo"), ("link_to_fifo", "link"))
    ],
    Case(
        "config_file_fifo",
        "file",
        r"Config file 'fifo\.txt' is not a regular file",
        config=None,
        flags=["--config", "fifo.txt"],
        setup=_fifo,
    ),
    Case(
        "csv_unterminated_quote",
        "file",
        r"d\.csv:3: a quoted field is never closed",
        {**SUMMARIES, "train_file": "d.csv"},
        files={"d.csv": 'dialogue,summary\na b,a\nx,"a\nc,d\ne,f\n'},
    ),
    Case(
        "csv_field_over_limit",
        "file",
        r"d\.csv:2: a field is longer than the csv module's limit of 131072 characters",
        {**SUMMARIES, "train_file": "d.csv"},
        files={"d.csv": 'dialogue,summary\nx,"' + "a" * 140000 + '"\n'},
    ),
    Case(
        "jsonl_duplicate_key",
        "file",
        r"d\.jsonl:2: the key 'summary' appears twice in one object",
        {**SUMMARIES, "train_file": "d.jsonl"},
        files={"d.jsonl": '{"dialogue": "a", "summary": "b"}\n{"dialogue": "a", "summary": "b", "summary": "c"}\n'},
    ),
    Case(
        "json_duplicate_key",
        "file",
        r"d\.json:4: the key 'summary' appears twice in one object",
        {**SUMMARIES, "train_file": "d.json"},
        files={"d.json": '[\n{"dialogue": "a",\n "summary": "b",\n "summary": "c"}\n]\n'},
    ),
    Case(
        "yaml_duplicate_key",
        "file",
        r"config\.yaml:3: the key 'max_steps' is given twice \(first on line 2\)",
        raw_config=b"task: ner\nmax_steps: 1\nmax_steps: 2\n",
    ),
    Case(
        "yaml_alias_bomb",
        "file",
        r"Config file config\.yaml holds over 100000 YAML nodes once its aliases \(\*name\) are expanded",
        raw_config=b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n".encode() for a, b in zip("abcdefgh", "bcdefghi")),
    ),
    Case(
        "yaml_over_one_mib",
        "file",
        r"Config file config\.yaml holds 1048589 bytes, over the limit of 1048576 \(1 MiB\)",
        raw_config=b"task: ner\n# " + b"x" * (1 << 20) + b"\n",
    ),
    Case(
        "conll_long_line_is_clipped",
        "file",
        r"train\.txt:2: 50000 fields in 'x x x.*'\.\.\. \(99999 characters\)",
        NER_FILES,
        files={"train.txt": "EU B-ORG\n" + " ".join(["x"] * 50000) + "\n"},
    ),
    # ------------------------------------------------------------------ numbers that cannot train
    *[
        Case(
            f"{name}_{label}",
            "number",
            rf"{name} in config\.yaml must be a finite number, got {shown}",
            {**extra, name: value},
        )
        for name, label, value, shown, extra in (
            ("learning_rate", "inf", float("inf"), "inf", {}),
            ("weight_decay", "nan", float("nan"), "nan", {}),
            ("num_train_epochs", "inf", float("inf"), "inf", {"max_steps": -1}),
            ("logging_steps", "inf", float("inf"), "inf", {}),
            ("save_steps", "inf", float("inf"), "inf", {"save_strategy": "steps"}),
            ("rollin_length_ratio", "inf", float("inf"), "inf", {"objective": "dagger"}),
        )
    ],
    Case(
        "flag_learning_rate_inf",
        "number",
        r"--learning_rate/--learning-rate: must be a finite number, got 'inf'",
        flags=["--learning_rate", "inf"],
    ),
    Case("vocab_size_negative", "number", r"vocab_size must be >= 1, got -5", {"vocab_size": -5}),
    Case(
        "min_frequency_leaves_no_word",
        "number",
        r"The tokenizer trained on the training text has no token beyond the special ones \(vocab_size=8000, "
        r"min_frequency=1000\).*Lower min_frequency",
        {"min_frequency": 1000},
    ),
    Case(
        "learning_rate_diverges",
        "number",
        r"Step 2: the weights became NaN or infinite \(.*\): training diverged, most likely because "
        r"learning_rate=1e\+30 is too large",
        {"learning_rate": 1e30, "max_steps": 3},
    ),
    Case(
        "weight_decay_diverges",
        "number",
        r"Step 2: the weights became NaN or infinite .* because weight_decay=1e\+30 \(with learning_rate=5e-05\)",
        {"weight_decay": 1e30, "max_steps": 3},
    ),
    # ------------------------------------------------------------------ settings the trainer cannot serve
    Case(
        "metric_for_best_model_not_produced",
        "unservable setting",
        r"metric_for_best_model 'f1' is not a metric that evaluation produces: use one of loss, runtime.*"
        r"need predict_with_generate",
        {"metric_for_best_model": "f1"},
    ),
    Case(
        "metric_for_best_model_not_a_task_metric",
        "unservable setting",
        r"metric_for_best_model 'eval_bleu' is not a metric that evaluation produces: use one of .*\bf1\b",
        {"metric_for_best_model": "eval_bleu", "predict_with_generate": True},
    ),
    Case(
        "optimizer_package_missing",
        "unservable setting",
        r"optim 'adamw_bnb_8bit' cannot be used here \(You need to install `bitsandbytes`.*usable here: adamw_torch",
        {"optim": "adamw_bnb_8bit"},
    ),
    *[
        Case(
            f"{name}_beyond_positions",
            "unservable setting",
            rf"{name}=1000 is beyond the model's 512 positions \(max_position_embeddings\): use at most 512",
            {name: 1000},
        )
        for name in ("max_source_length", "max_target_length")
    ],
    Case(
        "gpt2_lengths_beyond_positions",
        "unservable setting",
        r"max_source_length \+ max_target_length = 600 is beyond the model's 512 positions \(n_positions\)",
        {"architecture": "gpt2", "max_source_length": 300, "max_target_length": 300},
    ),
    # ------------------------------------------------------------------ the environment (accelerate's variables)
    *[
        Case(f"env_{label}", "environment", rf"The environment variable {name}={shown} {message}", env={name: value})
        for label, name, value, shown, message in (
            ("fp16_on_cpu", "ACCELERATE_MIXED_PRECISION", "fp16", "fp16", "asks for fp16, which has no effect"),
            ("mixed_precision_invalid", "ACCELERATE_MIXED_PRECISION", "fp17", "'fp17'", "is not one of no, fp16"),
            ("flag_invalid", "ACCELERATE_USE_CPU", "maybe", "'maybe'", r"is not true or false \(accepted: true"),
            ("deepspeed_missing", "ACCELERATE_USE_DEEPSPEED", "true", "'true'", "asks for DeepSpeed, which is not in"),
        )
        if label != "deepspeed_missing" or importlib.util.find_spec("deepspeed") is None
    ],
    # ------------------------------------------------------------------ resume: a checkpoint of another kind of run
    *[
        Case(
            f"resume_other_{key}",
            "resume",
            rf"resume_from_checkpoint 'out/checkpoint-2' was written by another kind of run: {key} "
            rf"{re.escape(repr(stored))} there, "
            rf"{here} here\. Resume with the settings it was trained with",
            flags=["--resume_from_checkpoint", "latest"],
            setup=lambda root, key=key, stored=stored: _marked_checkpoint(root, {key: stored}),
        )
        for key, stored, here in (
            ("family", "gpt2", "'bart'"),
            ("objective", "dagger", "'mle'"),
            ("size", "small", "'tiny'"),
            ("labels", ["B-X", "O"], r"\['B-LOC', .*\]"),
            ("tokenizer", "sha256:0", "'sha256:.*'"),
        )
    ],
    Case(
        "resume_unmarked_checkpoint",
        "resume",
        r"resume_from_checkpoint 'out/checkpoint-2' holds no hf_seqobj_checkpoint\.json, which hf-seqobj train writes "
        r"last: the checkpoint is incomplete",
        flags=["--resume_from_checkpoint", "out/checkpoint-2"],
        setup=lambda root: _marked_checkpoint(root, None),
    ),
    # ------------------------------------------------------------------ faults: a failed start leaves what was there
    Case(
        "failed_start_keeps_the_users_files",
        "fault",
        r"max_source_length=1000 is beyond the model's 512 positions",
        {"max_source_length": 1000},
        setup=lambda root: _user_file(root, "notes.txt"),
    ),
    # ------------------------------------------------------------------ paths from the config
    *[
        Case(
            f"compare_run_name_{label}",
            "path",
            rf"compare in config\.yaml: run name {re.escape(repr(name))} is not a plain folder name",
            {"compare": {name: {}}},
        )
        for label, name in (("parent", "../escape"), ("separator", "a/b"), ("dots", ".."), ("empty", ""), ("int", 1))
    ],
    Case("output_dir_empty", "path", r"output_dir is empty: set it to the folder", {"output_dir": ""}),
    Case(
        "compare_output_dir_empty",
        "path",
        r"output_dir in config\.yaml is empty",
        {"output_dir": "", "compare": {"mle": {}}},
    ),
    Case(
        "output_dir_is_a_file",
        "path",
        r"output_dir 'notes\.txt' is a file, not a folder",
        {"output_dir": "notes.txt"},
        files={"notes.txt": "mine"},
    ),
    Case(
        "evaluate_bad_split",
        "setting",
        r"--split: invalid choice: 'dev'",
        config=None,
        command="evaluate",
        flags=["out", "--split", "dev"],
        setup=lambda root: _run_config(root),
    ),
]


def _run_config(root: Path) -> None:
    """An output folder with the run settings that `evaluate` reads (the model itself is never reached)."""
    (root / "out").mkdir()
    settings = {"model": {}, "data": {"task": "ner", "dataset_name": "synthetic"}, "given": {}}
    (root / "out" / "hf_seqobj_run.yaml").write_text(yaml.safe_dump(settings))
    (root / "out" / "config.json").write_text(json.dumps({"model_type": "bart", "is_encoder_decoder": True}))


def _snapshot(folder: Path) -> dict[str, str] | None:
    """Every file under `folder` with a hash of its bytes (None: the folder does not exist)."""
    if not folder.exists():
        return None
    return {
        str(path.relative_to(folder)): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _prepare(case: Case, root: Path) -> list[str]:
    for name, content in case.files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        (root / name).write_bytes(data)
    if case.setup is not None:
        case.setup(root)
    args = []
    if case.raw_config is not None:
        (root / "config.yaml").write_bytes(case.raw_config)
        args.append("config.yaml")
    elif case.config is not None:
        config = {**BASE, **case.config}
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        (root / "other.yaml").write_text(yaml.safe_dump(config))
        args.append("config.yaml")
    return [case.command, *args, *case.flags]


def _error_lines(text: str, command: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"hf-seqobj {command}: error: ")]


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.kind.replace(' ', '_')}-{case.id}")
def test_bad_input_is_one_line_and_changes_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    argv = _prepare(case, tmp_path)
    before = _snapshot(tmp_path / "out")
    status = main(argv)
    stderr = capsys.readouterr().err
    lines = _error_lines(stderr, case.command)
    assert status == 2, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert re.search(case.message, lines[0]), lines[0]
    assert len(lines[0]) <= 700, "an error line quotes at most a short excerpt"
    assert "Traceback" not in stderr
    assert _snapshot(tmp_path / "out") == before


def test_the_corpus_covers_every_kind():
    kinds = {case.kind for case in CASES}
    assert kinds == {"setting", "config", "model", "data", "run folder", "checkpoint", "lost data", "path", "file"} | {
        "number",
        "unservable setting",
        "environment",
        "resume",
        "fault",
    }
    assert len({case.id for case in CASES}) == len(CASES)
    table = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    missing = [case.id for case in CASES if f"| {case.kind} | `{case.id}` |" not in table]
    assert not missing, f"docs/errors.md's table of the corpus lacks {missing}"


# ------------------------------------------------------------------ through a real process: exit status, --debug
def _cli(args: list[str], cwd: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_seqobj.cli", *args],
        cwd=cwd,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


@pytest.mark.parametrize("debug", ["none", "flag", "env"])
def test_exit_status_and_debug_traceback(debug, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**BASE, "per_device_eval_batch_size": 0}))
    args = ["train", "config.yaml"] + (["--debug"] if debug == "flag" else [])
    result = _cli(args, tmp_path, env={"HF_SEQOBJ_DEBUG": "1"} if debug == "env" else {"HF_SEQOBJ_DEBUG": ""})
    assert result.returncode == 2
    assert _error_lines(result.stderr, "train") == [
        "hf-seqobj train: error: per_device_eval_batch_size must be >= 1, got 0."
    ]
    assert ("Traceback (most recent call last)" in result.stderr) == (debug != "none")
    assert not (tmp_path / "out").exists()


def test_help_lists_every_setting_by_group(tmp_path):
    result = _cli(["train", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    for group in ("model:", "data:", "run:", "objective:", "training (transformers.TrainingArguments):"):
        assert f"\n{group}\n" in text
    assert "objective settings: DAggerArguments (used by dagger):" in text
    assert "--oracle {span_f1,span_f1_partial,bleu,rouge1,rouge2,rougeL,evaluate}" in text
    assert "--rollin {greedy,sample}" in text and "--ss_schedule {linear,exponential,inverse_sigmoid}" in text
    assert "--generation_max_new_tokens" in text and "--generation_max_length" in text  # both model families
    # with a config: its values are the defaults shown
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**BASE, "learning_rate": 0.123}))
    shown = _cli(["train", "--config", "c.yaml", "--help"], tmp_path).stdout
    assert re.search(r"--learning_rate LEARNING_RATE.*?\(default:\s+0\.123\)", shown, re.S)
    assert "--generation_max_new_tokens" not in shown  # a BART config: the encoder-decoder settings only


def test_env_prints_versions(tmp_path):
    result = _cli(["env"], tmp_path)
    assert result.returncode == 0
    for name in ("python", "torch", "transformers", "accelerate", "peft", "datasets", "GPU"):
        assert f"- {name}" in result.stdout


# ------------------------------------------------------------------ inputs that must work
def test_tricky_text_files_are_read_as_written(tmp_path):
    def write(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)

    # CoNLL: a byte-order mark, CRLF line ends, tabs, a no-break space inside a token, -DOCSTART-
    conll = BOM + "-DOCSTART-\tO\r\n\r\nEU\tB-ORG\r\nre\u00a0jects O\r\n\r\nPeter  B-PER\r\n".encode()
    ner = get_task(DataArguments(task="ner", train_file=write("t.conll", conll))).load()["train"]
    assert ner["source"] == ["EU re\u00a0jects", "Peter"] and ner["target"] == ["B-ORG O", "B-PER"]
    # parallel text: a byte-order mark on one side, CRLF, and Unicode line breaks inside lines
    write("p.en", BOM + "a dog\u2028runs .\r\ntwo\u0085cats .\r\n".encode())
    write("p.de", "ein Hund\x0crennt .\nzwei\u2029Katzen .\n".encode())
    pairs = get_task(DataArguments(task="translation", train_file=str(tmp_path / "p"))).load()["train"]
    assert pairs["source"] == ["a dog\u2028runs .", "two\u0085cats ."]
    assert pairs["target"] == ["ein Hund\x0crennt .", "zwei\u2029Katzen ."]
    # CSV: a byte-order mark, CRLF, a line break and a comma quoted inside a field
    csv = BOM + b'dialogue,summary\r\n"A: hi\r\nB: hello, you",greeting\r\nC: bye,farewell\r\n'
    args = DataArguments(task="summarization", train_file=write("d.csv", csv), source_column="dialogue")
    rows = get_task(args).load()["train"]
    assert rows["source"] == ["A: hi\r\nB: hello, you", "C: bye"] and rows["target"] == ["greeting", "farewell"]
    # JSON lines with a byte-order mark and CRLF; a .json list
    jsonl = BOM + b'{"document": "a b", "summary": "a"}\r\n\r\n{"document": "c\\u2028d", "summary": "c"}\r\n'
    rows = get_task(DataArguments(task="summarization", train_file=write("d.jsonl", jsonl))).load()["train"]
    assert rows["source"] == ["a b", "c\u2028d"]
    listed = json.dumps([{"document": "x y", "summary": "x"}]).encode()
    assert get_task(DataArguments(task="summarization", train_file=write("d.json", listed))).load()["train"][
        "target"
    ] == ["x"]
    # language modelling: one document a line, \n only
    write("lm.txt", BOM + "one two three four five six seven eight nine\u2028ten\r\n".encode())
    lm = get_task(DataArguments(task="lm", train_file=str(tmp_path / "lm.txt"), lm_prompt_words=2)).load()["train"]
    assert lm["source"] == ["one two"] and lm["target"][0].endswith("nine ten")


def test_label_set_is_checked_on_the_whole_training_file(tmp_path):
    (tmp_path / "train.txt").write_text(CONLL)
    (tmp_path / "valid.txt").write_text("Anna B-PER\n")
    args = DataArguments(
        task="ner", train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "valid.txt")
    )
    args.max_train_samples = 1  # the first sentence has no PER tag; the whole file has
    splits = get_task(args).load()
    assert len(splits["train"]) == 1 and splits["validation"]["target"] == ["B-PER"]


def test_skip_invalid_examples_drops_and_names_them(tmp_path, caplog):
    (tmp_path / "d.jsonl").write_text(
        '{"dialogue": "a b", "summary": "a"}\n{"dialogue": "", "summary": "b"}\n{"dialogue": "c", "summary": 3}\n'
    )
    args = DataArguments(**{**SUMMARIES, "train_file": str(tmp_path / "d.jsonl"), "skip_invalid_examples": True})
    with caplog.at_level("WARNING"):
        rows = get_task(args).load()["train"]
    assert rows["source"] == ["a b"]
    assert "Dropped 2 malformed examples" in caplog.text
    assert (
        "d.jsonl:2 (column 'dialogue' holds ''" in caplog.text and "d.jsonl:3 (column 'summary' holds 3" in caplog.text
    )
    (tmp_path / "t.conll").write_text("EU B-ORG\nrejects VBZ O\n\nPeter B-PER\n\nAnna PER\n")
    task = get_task(DataArguments(task="ner", train_file=str(tmp_path / "t.conll"), skip_invalid_examples=True))
    assert task.load()["train"]["source"] == ["Peter"] and len(task.dropped) == 2


def test_unknown_target_tokens_warn_with_share_and_setting(caplog):
    from datasets import Dataset, DatasetDict

    from hf_seqobj.guards import warn_unknown_tokens
    from hf_seqobj.modeling import train_tokenizer

    tokenizer = train_tokenizer(["a b c"], "wordlevel")
    known, unknown = tokenizer.convert_tokens_to_ids("a"), tokenizer.unk_token_id
    rows = {"input_ids": [[known, known]], "labels": [[known, unknown, -100]]}
    with caplog.at_level("WARNING"):
        shares = warn_unknown_tokens(DatasetDict({"train": Dataset.from_dict(rows)}), tokenizer, "min_frequency=9")
    assert shares == {"target": 0.5, "source": 0.0}
    assert "50% of the training target tokens are unknown to the tokenizer (min_frequency=9)" in caplog.text
    assert "source tokens" not in caplog.text


# ------------------------------------------------------------------ whole runs: the ways on
def test_lora_run_moves_refuses_reuse_and_overwrites(tmp_path, capsys, monkeypatch):
    """A LoRA run on a CoNLL file that needs care (BOM, CRLF, tabs, one malformed sentence skipped), with list flags;
    then `evaluate` of a moved copy from another directory, a refused second run into the folder, an overwrite that
    clears the earlier results, and an evaluation that refuses a base model that changed."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    conll = (
        BOM
        + b"EU\tB-ORG\r\nrejects\tO\r\n\r\nPeter\tB-PER\r\nBlackburn\tI-PER\r\n\r\nbad\tPER\r\n\r\nParis\tB-LOC\r\n"
    )
    (work / "train.txt").write_bytes(conll)
    config = {**BASE, **NER_FILES, "validation_file": "train.txt", "skip_invalid_examples": True, "max_steps": 2}
    config.update({"use_peft": True, "lora_r": 2, "per_device_eval_batch_size": 4})
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    flags = ["--lora_target_modules", "q_proj", "v_proj", "--objective", "interpolation"]
    flags += [
        "--interp_lambda",
        "0.1",
        "0.8",
        "0.1",
        "--predict_with_generate",
        "true",
        "--generation_max_length",
        "8",
    ]
    assert main(["train", "config.yaml", *flags]) == 0
    out = work / "out"
    saved = yaml.safe_load((out / "hf_seqobj_run.yaml").read_text())
    assert saved["given"]["lora_target_modules"] == ["q_proj", "v_proj"]
    assert saved["given"]["interp_lambda"] == [0.1, 0.8, 0.1] and saved["model"]["lora_target_modules"] == [
        "q_proj",
        "v_proj",
    ]
    assert saved["base_model"]["in_run"] == "initial_model" and saved["base_model"]["fingerprint"].startswith(
        "sha256:"
    )
    assert saved["data"]["train_file"] == str(work / "train.txt")  # absolute: found from any directory
    eval_f1 = json.loads((out / "eval_results.json").read_text())["eval_f1"]

    # a moved copy, evaluated from another directory
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    (out).rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["evaluate", "copy", "--split", "validation"]) == 0
    assert json.loads((moved / "eval_validation" / "validation_results.json").read_text())[
        "validation_f1"
    ] == pytest.approx(eval_f1)
    moved.rename(out)
    monkeypatch.chdir(work)
    capsys.readouterr()

    # a second run into the folder is refused, and changes nothing
    before = _snapshot(out)
    assert main(["train", "config.yaml", *flags]) == 2
    assert "output_dir 'out' already holds a run" in capsys.readouterr().err
    assert _snapshot(out) == before

    # the original base changes: an evaluation refuses to score the adapter on it
    weights = out / "initial_model" / "model.safetensors"
    original = weights.read_bytes()
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    first = next(iter(tensors))
    save_file({**tensors, first: tensors[first] + 1}, str(weights), metadata={"format": "pt"})
    assert main(["evaluate", "out", "--split", "validation"]) == 2
    assert re.search(
        r"The base model at .*initial_model is not the one the adapter in out was trained on", capsys.readouterr().err
    )
    weights.write_bytes(original)

    # --overwrite_output_dir: a new run, the earlier results gone, a file of the user's kept
    (out / "notes.txt").write_text("mine")
    assert main(["train", "config.yaml", "--overwrite_output_dir", "true", "--max_steps", "1"]) == 0
    assert not (out / "eval_validation").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


def _long_run_until(tmp_path: Path, written: str, stderr: int) -> subprocess.Popen:
    """Starts a long run in `tmp_path` (a checkpoint every 2 steps) and returns once `tmp_path / written` exists."""
    config = {**BASE, "max_steps": 100000, "save_strategy": "steps", "save_steps": 2, "synthetic_train_size": 64}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_seqobj.cli", "train", "config.yaml"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        # as from a terminal: a test run started in the background (`cmd &` in a script) ignores SIGINT, and a
        # child that inherits that disposition never sees Ctrl-C (Python installs its handler only where SIGINT is
        # not ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / written).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no checkpoint before the deadline")
        time.sleep(0.2)
    return process


def test_resume_after_a_kill(tmp_path):
    """A run killed (SIGKILL) after its first checkpoint resumes with `--resume_from_checkpoint latest`."""
    process = _long_run_until(tmp_path, "out/checkpoint-4/trainer_state.json", subprocess.DEVNULL)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = max(int(p.name.split("-")[1]) for p in (tmp_path / "out").glob("checkpoint-*"))
    refused = _cli(["train", "config.yaml"], tmp_path)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    resumed = _cli(
        ["train", "config.yaml", "--resume_from_checkpoint", "latest", "--max_steps", str(done + 2)], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == done + 2


# ------------------------------------------------------------------ faults during training
def test_full_disk_is_one_line_and_removes_the_runs_files(tmp_path, monkeypatch, capsys):
    """A checkpoint write that fails for want of space (torch's own error) ends in one line; a run without a
    complete checkpoint leaves no files behind."""
    monkeypatch.chdir(tmp_path)
    config = {**BASE, "save_strategy": "steps", "save_steps": 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def full(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    assert main(["train", "config.yaml"]) == 2
    stderr = capsys.readouterr().err
    assert _error_lines(stderr, "train") == [
        "hf-seqobj train: error: [Errno 28] writing to out failed, the disk is full ([enforce fail at "
        "inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: file write failed); no checkpoint "
        "was complete, so the files the run created in out were removed"
    ]
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_ctrl_c_keeps_the_last_complete_checkpoint_and_says_how_to_resume(tmp_path):
    process = _long_run_until(tmp_path, f"out/checkpoint-2/{CHECKPOINT_MARKER}", subprocess.PIPE)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("hf-seqobj train: interrupted")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert re.fullmatch(
        r"hf-seqobj train: interrupted at step \d+; the last complete checkpoint is out/checkpoint-\d+: continue "
        r"with --resume_from_checkpoint latest\.",
        lines[0],
    )
    last = lines[0].split("checkpoint is ")[1].split(":")[0]
    assert (tmp_path / last / CHECKPOINT_MARKER).is_file()


def test_resume_wins_over_overwrite_and_says_so(tmp_path, caplog):
    from hf_seqobj.run import prepare_output_dir

    _earlier_run(tmp_path)
    before = _snapshot(tmp_path / "out")
    with caplog.at_level("WARNING"):
        prepare_output_dir(str(tmp_path / "out"), overwrite=True, resume=True)
    assert "resume_from_checkpoint and overwrite_output_dir are both set: resuming wins" in caplog.text
    assert _snapshot(tmp_path / "out") == before


def test_diverged_weights_stop_the_run_but_a_step_the_loss_scaler_skips_does_not():
    from types import SimpleNamespace

    from hf_seqobj.guards import FiniteWeightsCallback

    model = torch.nn.Linear(2, 1)
    args = SimpleNamespace(learning_rate=1e-3, weight_decay=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate)
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.ones(1, 2)).sum() * float("inf")  # an overflowed loss, as fp16's can be
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # skipped: the gradients are not finite
    scaler.update()
    FiniteWeightsCallback().on_step_end(args, SimpleNamespace(global_step=1), None, model=model)
    optimizer.step()  # the same step without the scaler: the weights become NaN
    with pytest.raises(
        ValueError, match=r"Step 2: the weights became NaN or infinite \(weight\).*learning_rate=0.001"
    ):
        FiniteWeightsCallback().on_step_end(args, SimpleNamespace(global_step=2), None, model=model)
