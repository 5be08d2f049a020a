"""`hf-seqobj train / evaluate`: YAML plus flags, errors naming bad keys, and an end-to-end quickstart run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from hf_seqobj.cli import (
    ConfigError,
    continue_from,
    expand_compare,
    load_yaml_config,
    main,
    parse_run,
    parse_settings,
    relay_stderr,
    resolve_accelerate_config,
    split_accelerate_flags,
)
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments


QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
BASE = {"task": "ner", "dataset_name": "synthetic", "architecture": "bart", "output_dir": "out", "report_to": "none"}


def test_yaml_values_and_flag_overrides():
    model_args, data_args, training_args = parse_settings(
        {**BASE, "learning_rate": 0.01, "num_train_epochs": 2},
        ["--learning_rate", "0.5", "--synthetic_train_size=33", "--predict_with_generate", "true"],
        "test.yaml",
    )
    assert isinstance(training_args, SeqObjSeq2SeqTrainingArguments)
    assert training_args.learning_rate == 0.5 and training_args.num_train_epochs == 2
    assert training_args.predict_with_generate is True and training_args.objective == "mle"
    assert data_args.synthetic_train_size == 33 and model_args.architecture == "bart"


def test_decoder_only_models_get_the_decoder_only_arguments():
    _, _, training_args = parse_settings({**BASE, "architecture": "gpt2"}, ["--generation_max_new_tokens", "9"], "t")
    assert isinstance(training_args, SeqObjTrainingArguments) and training_args.generation_max_new_tokens == 9
    with pytest.raises(ConfigError, match=r"for a SeqObjTrainingArguments model\): 'generation_max_length'"):
        parse_settings({**BASE, "architecture": "gpt2", "generation_max_length": 5}, [], "t.yaml")


@pytest.mark.parametrize(
    "config, flags, message",
    [
        ({**BASE, "learning_rat": 0.1}, [], r"Unknown key in c\.yaml: 'learning_rat' \(did you mean learning_rate"),
        (BASE, ["--no_such_flag", "1"], r"Unknown key in the command line: 'no_such_flag'"),
        (
            {**BASE, "objective": "dager"},
            [],
            r"objective in c\.yaml must be one of .*, got 'dager' \(did you mean 'dagger'",
        ),
        ({**BASE, "architecture": "rnn"}, [], r"architecture in c\.yaml must be one of 'gpt2', 'bart', 't5' or null"),
    ],
)
def test_bad_settings_are_named(config, flags, message):
    with pytest.raises(ValueError, match=message):
        parse_settings(config, flags, "c.yaml")


def test_yaml_must_be_a_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml must hold a mapping"):
        load_yaml_config(tmp_path / "list.yaml")
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_quickstart_config_is_valid():
    """The main job: a teacher-forced warm start, then the control, scheduled sampling and DAgger from its model."""
    config = load_yaml_config(QUICKSTART)
    runs = expand_compare(config, str(QUICKSTART))
    assert list(runs) == ["warm_start", "teacher_forcing", "scheduled_sampling", "dagger"]
    assert config["compare_baseline"] == "teacher_forcing"
    objectives, steps = [], set()
    for name, run in runs.items():
        if name != "warm_start":
            assert run["start_from"] == "warm_start"
            run = continue_from(run, "outputs/quickstart/warm_start")
            assert "architecture" not in run and run["model_name_or_path"].endswith("warm_start")
            steps.add((run["max_steps"], run["learning_rate"], run["warmup_steps"]))
        model_args, data_args, training_args = parse_settings(
            {**run, "model_name_or_path": None, "architecture": "bart"} if name != "warm_start" else run,
            [],
            str(QUICKSTART),
        )
        assert data_args.dataset_name == "synthetic" and training_args.predict_with_generate
        assert training_args.use_cpu and training_args.output_dir.endswith(name)
        objectives.append(training_args.objective)
    assert objectives == ["mle", "mle", "scheduled_sampling", "dagger"]
    assert len(steps) == 1  # every continuation: the same steps and schedule as the control


def test_compare_runs_that_continue_an_earlier_run(tmp_path, capsys):
    """`start_from` continues the named run's trained model; `compare_baseline` adds the differences to the table."""
    config = {**BASE, "output_dir": str(tmp_path / "cmp"), "synthetic_train_size": 48, "synthetic_eval_size": 8}
    config.update({"use_cpu": True, "predict_with_generate": True, "disable_tqdm": True, "generation_max_length": 40})
    config["compare_baseline"] = "control"
    config["compare"] = {
        "warm": {"max_steps": 3},
        "control": {"start_from": "warm", "max_steps": 2},
        "dagger": {"start_from": "warm", "max_steps": 2, "objective": "dagger", "dagger_beta": 0.0},
    }
    config["compare"]["dagger"].update({"log_completions": True, "num_completions_to_print": 2, "logging_steps": 1})
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["train", str(path)]) == 0
    for name in ("control", "dagger"):
        saved = yaml.safe_load((tmp_path / "cmp" / name / "hf_seqobj_run.yaml").read_text())
        assert saved["model"]["model_name_or_path"] == str(tmp_path / "cmp" / "warm")
        assert saved["model"]["architecture"] is None
        assert json.loads((tmp_path / "cmp" / name / "trainer_state.json").read_text())["global_step"] == 2
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert (
        "test f1 - control" in table and "| dagger | dagger | warm |" in table and "| warm | mle | scratch |" in table
    )
    # what DAgger trained on, at each of its 2 logging steps, for 2 examples; the comparison's plots
    completions = [json.loads(line) for line in (tmp_path / "cmp" / "dagger" / "completions.jsonl").open()]
    assert [(row["step"], row["example"]) for row in completions] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert not (tmp_path / "cmp" / "control" / "completions.jsonl").exists()
    printed = capsys.readouterr().out
    for name in ("comparison_metric.png", "comparison_lengths.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"Plot: {tmp_path / 'cmp' / name}" in printed
    with pytest.raises(ConfigError, match=r"start_from of run 'a' in c\.yaml must name an earlier run .*got 'b'"):
        expand_compare({**BASE, "compare": {"a": {"start_from": "b"}, "b": {}}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"compare_baseline in c\.yaml must name a run of compare \(a\), got 'z'"):
        expand_compare({**BASE, "compare_baseline": "z", "compare": {"a": {}}}, "c.yaml")


def test_train_then_evaluate_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [
        "--output_dir",
        str(out),
        "--max_steps",
        "15",
        "--synthetic_train_size",
        "120",
        "--synthetic_eval_size",
        "16",
        "--logging_steps",
        "5",
        "--disable_tqdm",
        "true",
        "--dagger_warmup_steps",
        "10",
    ]
    assert main(["train", str(QUICKSTART), *flags]) == 0
    printed = capsys.readouterr().out
    header = "| run | objective | starts from | test f1 | test precision | test recall | test f1 - teacher_forcing | "
    assert header + "eval f1 | eval f1 - teacher_forcing | steps | s/step |" in printed
    assert "| warm_start | mle | scratch |" in printed
    for name, objective in (
        ("teacher_forcing", "mle"),
        ("scheduled_sampling", "scheduled_sampling"),
        ("dagger", "dagger"),
    ):
        assert f"| {name} | {objective} | warm_start |" in printed
    assert (out / "comparison.md").read_text().strip() in printed
    dagger_state = json.loads((out / "dagger" / "trainer_state.json").read_text())
    assert any("oracle_agreement" in entry for entry in dagger_state["log_history"])
    out = out / "teacher_forcing"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.json",
        "eval_results.json",
        "test_results.json",
        "train_results.json",
        "test_predictions.jsonl",
        "hf_seqobj_run.yaml",
    ):
        assert (out / name).exists(), f"{name} missing from the run's output_dir"
    assert not (out / "eval_predictions.jsonl").exists()  # only with save_eval_predictions
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= eval_results["eval_f1"] <= 1.0 and "eval_f1_PER" in eval_results
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 15 and any("loss" in entry for entry in state["log_history"])

    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "validation"]) == 0
    results = json.loads((out / "eval_validation" / "validation_results.json").read_text())
    assert results["validation_f1"] == pytest.approx(eval_results["eval_f1"])
    rows = [json.loads(line) for line in (out / "eval_validation" / "validation_predictions.jsonl").open()]
    assert len(rows) == 16 and all(len(row["reference"].split()) == len(row["source"].split()) for row in rows)
    # the main metric with its bootstrap interval over the 16 examples
    assert results["validation_f1_low"] <= results["validation_f1"] <= results["validation_f1_high"]
    assert (
        f"f1: {results['validation_f1']:.4f}, 95% bootstrap interval over examples "
        f"[{results['validation_f1_low']:.4f}, {results['validation_f1_high']:.4f}]" in capsys.readouterr().out
    )
    assert main(["evaluate", str(tmp_path / "nothing_here")]) == 2


@pytest.mark.parametrize("path", sorted((QUICKSTART.parent).glob("*.yaml")), ids=lambda p: p.name)
def test_every_packaged_config_parses(path):
    for config in expand_compare(load_yaml_config(path), str(path)).values():
        config = {key: value for key, value in config.items() if key != "start_from"}  # checked as built from scratch
        model_args, data_args, training_args = parse_settings(config, [], str(path))
        assert training_args.predict_with_generate
        expected = SeqObjTrainingArguments if model_args.architecture == "gpt2" else SeqObjSeq2SeqTrainingArguments
        assert type(training_args) is expected


def test_compare_must_map_names_to_settings():
    with pytest.raises(ConfigError, match="compare in c.yaml must map run names"):
        expand_compare({**BASE, "compare": ["mle", "dagger"]}, "c.yaml")
    assert expand_compare(BASE, "c.yaml") == {"": BASE}


def test_train_under_accelerate_launch_with_two_processes(tmp_path, capsys):
    config = {**BASE, "output_dir": str(tmp_path / "run"), "max_steps": 4, "synthetic_train_size": 64}
    config.update({"synthetic_eval_size": 8, "use_cpu": True, "predict_with_generate": True, "disable_tqdm": True})
    config.update({"objective": "dagger", "dagger_beta": 0.5, "logging_steps": 2, "generation_max_length": 40})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    launch = ["--accelerate_config", "cpu_2proc", "--num_processes", "2", "--main_process_port", "29541"]
    assert main(["train", str(path), *launch, "--rdzv_backend", "static"]) == 0
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and any("oracle_agreement" in entry for entry in state["log_history"])
    assert (tmp_path / "run" / "test_results.json").exists()


def test_a_process_of_a_launched_run_ends_its_process_group(tmp_path):
    import torch.distributed as dist
    from accelerate import PartialState

    from hf_seqobj.cli.launch import _end_processes

    PartialState._reset_state()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        _end_processes()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        PartialState._reset_state()


def test_accelerate_config_errors_are_named(tmp_path):
    with pytest.raises(ConfigError, match="'no_such'.*cpu_2proc"):
        resolve_accelerate_config("no_such")
    assert main(["train", str(QUICKSTART), "--num_processes", "2"]) == 2


def test_accelerate_launch_flags_are_split_from_ours():
    ours = {"--max_steps", "--gradient_accumulation_steps", "--use_cpu", "--lora_target_modules"}
    flags = ["--max_steps", "3", "--num_processes", "2", "--multi_gpu", "--gradient_accumulation_steps", "2"]
    flags += ["--main_process_port=29555", "--lora_target_modules", "q", "v", "--gpu_ids", "0,1", "--use_cpu"]
    own, launch = split_accelerate_flags(flags, ours)
    assert own == ["--max_steps", "3", "--gradient_accumulation_steps", "2", "--lora_target_modules", "q", "v"] + [
        "--use_cpu"
    ]
    assert launch == ["--num_processes", "2", "--multi_gpu", "--main_process_port=29555", "--gpu_ids", "0,1"]
    with pytest.raises(ConfigError, match="--config_file is not passed to accelerate launch"):
        split_accelerate_flags(["--config_file", "x.yaml"], ours)


def test_config_flag_list_flags_and_given_values_are_parsed(tiny_checkpoints):
    settings = parse_run(
        {**BASE, "objective": "interpolation", "learning_rate": "1e-4", "max_steps": 4.0},
        ["--interp_lambda", "0.1", "0.8", "0.1", "--use_peft", "--lora_target_modules", "q_proj", "v_proj"],
        "c.yaml",
    )
    assert settings.training.interp_lambda == [0.1, 0.8, 0.1] and settings.training.learning_rate == 1e-4
    assert settings.model.lora_target_modules == ["q_proj", "v_proj"] and settings.training.max_steps == 4
    assert settings.given["interp_lambda"] == [0.1, 0.8, 0.1] and settings.given["use_peft"] is True
    assert (
        settings.given["lora_target_modules"] == ["q_proj", "v_proj"] and "overwrite_output_dir" not in settings.given
    )
    flags = ["--architecture", "none", "--model_name_or_path", tiny_checkpoints["gpt2"]]
    unset = parse_run(BASE, flags, "c.yaml")  # `--key none` unsets an optional setting of the config
    assert unset.model.architecture is None and isinstance(unset.training, SeqObjTrainingArguments)


class _Chunks(io.RawIOBase):
    """A pipe that returns the given byte chunks one `read1` at a time."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def read1(self, size=-1):
        return self.chunks.pop(0) if self.chunks else b""


@pytest.mark.parametrize("cut", [1, 5, 17, 40, 1000])
@pytest.mark.parametrize("debug", [False, True])
def test_launched_processes_output_is_relayed_up_to_the_first_error_line(cut, debug):
    progress = b"step 1/4\r step 2/4\r"
    error = b"hf-seqobj train: error: --train_file 'x.txt' line 3: not UTF-8.\n"
    rest = error + b"Traceback (most recent call last):\n  accelerate ...\nCalledProcessError: returned 2\n"
    text = progress + b"log line\n" + error + rest
    out = io.BytesIO()
    found = relay_stderr(_Chunks(text[i : i + cut] for i in range(0, len(text), cut)), out, debug=debug)
    assert found == error.decode().rstrip("\n")
    assert out.getvalue() == (text if debug else progress + b"log line\n" + error)
    both = io.BytesIO()  # two processes that fail at once can interleave their lines
    relay_stderr(_Chunks([b"x\n", error.rstrip(b"\n") + error + b"tail"]), both)
    assert both.getvalue() == b"x\n" + error
    clean = io.BytesIO()
    assert relay_stderr(_Chunks([progress, b"done\n"]), clean) is None and clean.getvalue() == progress + b"done\n"
