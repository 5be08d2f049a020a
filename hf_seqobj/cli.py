"""The `hf-seqobj` command line.

    hf-seqobj train CONFIG.yaml [--accelerate_config NAME_OR_PATH [--num_processes N]] [--key value ...]
    hf-seqobj evaluate MODEL_DIR [--split test] [--key value ...]

`train`: the YAML keys are the fields of the argument classes (`SeqObjTrainingArguments` for decoder-only models,
`SeqObjSeq2SeqTrainingArguments` for encoder-decoder ones) plus the model and data settings (`ModelArguments`,
`DataArguments`); flags override the file; an unknown key is an error that names it. A config with a `compare`
mapping (run name -> settings that override the rest of the file, e.g. `{dagger: {objective: dagger}}`) trains one
run per entry, each in `output_dir/NAME` from the same initial model, and prints one table of their results.
`--accelerate_config` runs the same command under `accelerate launch` with that config (a name of a config packaged
in `hf_seqobj/accelerate_configs/`: cpu_2proc, single_gpu, multi_gpu, fsdp, fsdp1, zero2, zero3; or a file path).
`evaluate`: scores a model written by `train` on one split with generation, reusing its saved data settings
(flags override them, e.g. `--test_file`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_seqobj.arguments import DataArguments, ModelArguments


USAGE = """usage: hf-seqobj train CONFIG.yaml [--accelerate_config NAME_OR_PATH [--num_processes N]] [--key value ...]
       hf-seqobj evaluate MODEL_DIR [--split SPLIT] [--key value ...]"""


class ConfigError(ValueError):
    """A bad configuration: unknown key, bad value, unreadable file."""


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping of settings (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value), not a {type(config).__name__}.")
    return config


def _field_names(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def check_keys(config: dict[str, Any], classes: tuple[type, ...], source: str) -> None:
    """Raises ConfigError naming every key of `config` that is no field of `classes` (with close matches)."""
    known = _field_names(*classes)
    unknown = [key for key in config if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=3)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(f"Unknown key{'s' if len(unknown) > 1 else ''} in {source}: {'; '.join(hints)}.")


def _flag_keys(flags: list[str]) -> list[str]:
    return [flag[2:].split("=", 1)[0] for flag in flags if flag.startswith("--")]


def parse_settings(config: dict[str, Any], flags: list[str], source: str):
    """Builds `(ModelArguments, DataArguments, training arguments)` from a config mapping and override flags.

    The training-arguments class depends on the model family, known from `architecture` or the checkpoint.
    """
    from hf_seqobj.run import training_arguments_class
    from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments

    check_keys(
        config, (ModelArguments, DataArguments, SeqObjTrainingArguments, SeqObjSeq2SeqTrainingArguments), source
    )
    check_keys(
        dict.fromkeys(_flag_keys(flags)),
        (ModelArguments, DataArguments, SeqObjTrainingArguments, SeqObjSeq2SeqTrainingArguments),
        "the command line",
    )
    model_parser = HfArgumentParser(ModelArguments)
    model_parser.set_defaults(**{k: v for k, v in config.items() if k in _field_names(ModelArguments)})
    (model_args, _) = model_parser.parse_args_into_dataclasses(args=flags, return_remaining_strings=True)
    args_class = training_arguments_class(model_args)
    check_keys(config, (ModelArguments, DataArguments, args_class), f"{source} (for a {args_class.__name__} model)")
    parser = HfArgumentParser((ModelArguments, DataArguments, args_class))
    parser.set_defaults(**config)
    try:
        return parser.parse_args_into_dataclasses(args=flags, return_remaining_strings=False)
    except SystemExit as error:  # argparse reports bad flag values by exiting
        raise ConfigError(f"Bad command-line flags {flags} (see the message above).") from error


ACCELERATE_CONFIGS = Path(__file__).resolve().parent / "accelerate_configs"
"""The packaged accelerate configs (`--accelerate_config NAME` reads `NAME.yaml` there). They are package data, so
they are found from a wheel as from a source checkout (where `configs/accelerate` links to them)."""


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A packaged accelerate config's name (see `ACCELERATE_CONFIGS`) or a file path, as an existing file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = ACCELERATE_CONFIGS / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"accelerate config {name_or_path!r} is neither a file nor one of the packaged configs {names}.")


def _pop_flag(flags: list[str], key: str) -> tuple[str | None, list[str]]:
    value = _flags_as_dict(flags).get(key)
    return value, _without_flag(flags, key)


def launch_with_accelerate(config_path: str, flags: list[str]) -> int:
    """Runs `hf-seqobj train CONFIG ...` under `accelerate launch` (`--accelerate_config`, `--num_processes`)."""
    import subprocess

    accelerate_config, flags = _pop_flag(flags, "accelerate_config")
    processes, flags = _pop_flag(flags, "num_processes")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--config_file", str(resolve_accelerate_config(accelerate_config))]
    if processes is not None:
        if not processes.isdigit() or int(processes) < 1:
            raise ConfigError(f"--num_processes must be a positive integer, got {processes!r}.")
        command += ["--num_processes", processes]
    command += ["-m", "hf_seqobj.cli", "train", config_path, *flags]
    logging.getLogger(__name__).info("Running %s", " ".join(command))
    return subprocess.run(command, check=False).returncode


def train_command(argv: list[str]) -> int:
    from hf_seqobj.run import format_metrics_table, train

    if not argv or argv[0].startswith("-"):
        raise ConfigError("train needs a YAML config file first: hf-seqobj train CONFIG.yaml [--key value ...]")
    config_path, flags = argv[0], argv[1:]
    if "accelerate_config" in _flags_as_dict(flags):
        return launch_with_accelerate(config_path, flags)
    if "num_processes" in _flags_as_dict(flags):
        raise ConfigError("--num_processes needs --accelerate_config (a packaged name such as cpu_2proc, or a file).")
    config = load_yaml_config(config_path)
    if "compare" in config:
        return compare_runs(config, flags, config_path)
    model_args, data_args, training_args = parse_settings(config, flags, config_path)
    given = dict(config)
    given.update(_flags_as_dict(flags))
    results = train(model_args, data_args, training_args, config=given)
    evaluated = {split: metrics for split, metrics in results.items() if split != "train"}
    if evaluated:
        print(f"\nResults ({training_args.objective}, {training_args.output_dir}):")
        print(format_metrics_table(evaluated))
    return 0


def expand_compare(config: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The runs of a config with a `compare` mapping: name -> the config's settings, the run's overrides on top,
    and `output_dir` = the config's output_dir / name. A config without `compare` is one run named "".
    """
    if "compare" not in config:
        return {"": dict(config)}
    base = {key: value for key, value in config.items() if key != "compare"}
    runs = config["compare"]
    if not isinstance(runs, dict) or not runs or not all(isinstance(v, dict | None) for v in runs.values()):
        raise ConfigError(f"compare in {source} must map run names to mappings of settings, got {runs!r}.")
    base_dir = Path(base.get("output_dir", "outputs"))
    return {
        name: {**base, **(overrides or {}), "output_dir": str(base_dir / name)} for name, overrides in runs.items()
    }


def compare_runs(config: dict[str, Any], flags: list[str], source: str) -> int:
    """Trains every run of `config["compare"]` and prints one table (see the module docstring)."""
    from hf_seqobj.run import format_comparison_table, train

    runs = expand_compare(config, source)
    overrides = _flags_as_dict(flags)
    base_dir = Path(overrides.get("output_dir", config.get("output_dir", "outputs")))
    settings = {}
    for name, run_config in runs.items():
        run_flags = _without_flag(flags, "output_dir") + ["--output_dir", str(base_dir / name)]
        settings[name] = (run_config, parse_settings(run_config, run_flags, f"{source} (run {name!r})"))
    results = {}
    for name, (run_config, (model_args, data_args, training_args)) in settings.items():
        given = {**run_config, **overrides, "output_dir": training_args.output_dir}
        results[name] = (training_args.objective, train(model_args, data_args, training_args, config=given))
    table = format_comparison_table(results)
    print(f"\nComparison ({source}; outputs in {base_dir}):")
    print(table)
    base_dir.mkdir(parents=True, exist_ok=True)
    (base_dir / "comparison.md").write_text(table + "\n", encoding="utf-8")
    return 0


def evaluate_command(argv: list[str]) -> int:
    from hf_seqobj.run import evaluate, format_metrics_table, read_run_config

    if not argv or argv[0].startswith("-"):
        raise ConfigError("evaluate needs a model directory: hf-seqobj evaluate MODEL_DIR [--split test]")
    model_dir, flags = argv[0], argv[1:]
    split = "test"
    if "--split" in flags:
        index = flags.index("--split")
        if index + 1 >= len(flags):
            raise ConfigError("--split needs a value: train, validation or test.")
        split = flags[index + 1]
        flags = flags[:index] + flags[index + 2 :]
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"--split must be train, validation or test, got {split!r}.")
    saved = read_run_config(model_dir)
    config = {k: v for k, v in saved["data"].items()}
    keep = ("per_device_eval_batch_size", "generation_max_length", "generation_max_new_tokens", "generation_num_beams")
    config.update({k: v for k, v in saved.get("given", {}).items() if k in keep})
    config.update({"model_name_or_path": model_dir, "output_dir": str(Path(model_dir) / f"eval_{split}")})
    model_args, data_args, training_args = parse_settings(config, flags, f"{model_dir}'s saved settings")
    metrics = evaluate(model_args.model_name_or_path, split, data_args, training_args)
    print(f"\nResults ({model_dir}, {split}):")
    print(format_metrics_table({split: metrics}))
    return 0


def _without_flag(flags: list[str], key: str) -> list[str]:
    """`flags` without `--key value` / `--key=value`."""
    kept, index = [], 0
    while index < len(flags):
        flag = flags[index]
        if flag == f"--{key}":
            index += 2
            continue
        if not flag.startswith(f"--{key}="):
            kept.append(flag)
        index += 1
    return kept


def _flags_as_dict(flags: list[str]) -> dict[str, str]:
    values, index = {}, 0
    while index < len(flags):
        flag = flags[index]
        if flag.startswith("--") and "=" in flag:
            key, value = flag[2:].split("=", 1)
            values[key] = value
        elif flag.startswith("--"):
            has_value = index + 1 < len(flags) and not flags[index + 1].startswith("--")
            values[flag[2:]] = flags[index + 1] if has_value else "true"
            index += has_value
        index += 1
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    commands = {"train": train_command, "evaluate": evaluate_command}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return commands[argv[0]](argv[1:])
    except (ConfigError, FileNotFoundError) as error:
        print(f"hf-seqobj {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
