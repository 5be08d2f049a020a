"""The commands `train`, `evaluate` and `env`, and `main`, which picks one and turns an error the user can fix into
one line and exit status 2."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from argparse import ArgumentParser
from pathlib import Path

import yaml

from hf_seqobj.arguments import DataArguments, EvaluateArguments, ModelArguments
from hf_seqobj.cli.compare import compare_runs
from hf_seqobj.cli.config import ConfigError, check_keys, load_yaml_config
from hf_seqobj.cli.launch import (
    _UNDER_ACCELERATE_ENV,
    _end_processes,
    _pop_accelerate_config,
    launch_with_accelerate,
    resolve_accelerate_config,
    split_accelerate_flags,
)
from hf_seqobj.cli.parsing import SeqObjArgumentParser, _training_classes, parse_over_config, parse_run, train_parser


USAGE = """usage: hf-seqobj train [CONFIG.yaml | --config CONFIG.yaml] [--key value ...] [--accelerate_config NAME ...]
       hf-seqobj evaluate MODEL_DIR [--split SPLIT] [--key value ...]
       hf-seqobj env

  train     train (and evaluate) a model; `hf-seqobj train --help` lists every setting
  evaluate  score a model written by `train` on one split
  env       print the versions and devices to quote in a bug report

Errors print one line and exit with status 2; add --debug (or set HF_SEQOBJ_DEBUG=1) for the full traceback."""

DEBUG_ENV = "HF_SEQOBJ_DEBUG"


def _config_argument(argv: list[str]) -> tuple[str | None, list[str]]:
    """The config file (positional first argument, or `--config FILE`) and the other arguments."""
    path, rest = None, list(argv)
    if rest and not rest[0].startswith("-"):
        path = rest.pop(0)
    for index, arg in enumerate(rest):
        if arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else (rest[index + 1] if index + 1 < len(rest) else None)
            if value is None or value.startswith("--"):
                raise ConfigError("--config needs a YAML file: hf-seqobj train --config CONFIG.yaml")
            if path is not None:
                raise ConfigError(f"Give one config file, not both {path!r} and --config {value!r}.")
            path = value
            del rest[index : index + (1 if "=" in arg else 2)]
            break
    return path, rest


def train_command(argv: list[str], debug: bool = False) -> int:
    """`hf-seqobj train`: one run, a config's `compare` mapping of runs, or one run under `accelerate launch`.

    Args:
        argv: the arguments after `train`: the config file (or `--config FILE`) and `--key value` flags.
        debug: whether launched processes print full tracebacks too.

    Returns:
        The exit status.
    """
    from hf_seqobj.run import format_metrics_table, prepare_output_dir, resolve_resume, train

    config_path, flags = _config_argument(argv)
    config = load_yaml_config(config_path) if config_path is not None else {}
    source = config_path or "the command line"
    if "-h" in flags or "--help" in flags:
        help_config = {key: value for key, value in config.items() if key not in ("compare", "compare_baseline")}
        train_parser(help_config, source).print_help()
        return 0
    if "compare" in config:
        return compare_runs(config, flags, config_path)
    if not config and not flags:
        raise ConfigError("train needs settings: hf-seqobj train CONFIG.yaml [--key value ...] (see --help).")
    launching = not os.environ.get(_UNDER_ACCELERATE_ENV)
    accelerate_config = (_pop_accelerate_config(flags) or config.get("accelerate_config")) if launching else None
    launch_flags: list[str] = []
    if accelerate_config is not None:
        classes = _training_classes(config, flags, source)
        options = set(SeqObjArgumentParser(list(classes), prog="hf-seqobj train")._option_string_actions)
        flags, launch_flags = split_accelerate_flags(flags, options)
    settings = parse_run(config, flags, source)
    if accelerate_config is not None:
        from hf_seqobj.run import check_settings

        resolve_accelerate_config(accelerate_config)
        check_settings(settings.model, settings.data, settings.training)
        resume = resolve_resume(settings.training) is not None
        prepare_output_dir(settings.training.output_dir, settings.run.overwrite_output_dir, resume)
        return launch_with_accelerate(config_path, flags, launch_flags, accelerate_config, debug)
    results = train(
        settings.model,
        settings.data,
        settings.training,
        config=settings.given,
        overwrite_output_dir=settings.run.overwrite_output_dir,
    )
    evaluated = {split: metrics for split, metrics in results.items() if split != "train"}
    if evaluated and settings.training.process_index == 0:
        print(f"\nResults ({settings.training.objective}, {settings.training.output_dir}):")
        print(format_metrics_table(evaluated))
    if os.environ.get(_UNDER_ACCELERATE_ENV):
        _end_processes()
    return 0


def evaluate_command(argv: list[str], debug: bool = False) -> int:
    """`hf-seqobj evaluate MODEL_DIR`: scores a model written by `train` on one split with the data settings it saved.

    Args:
        argv: the arguments after `evaluate`: the model directory, then `--split` and `--key value` flags.
        debug: unused (every command takes it).

    Returns:
        The exit status.
    """
    from hf_seqobj.run import evaluate, format_metrics_table, read_run_config

    if not argv or argv[0] in ("-h", "--help"):
        if argv:
            print("usage: hf-seqobj evaluate MODEL_DIR [--split {train,validation,test}] [--key value ...]")
            print(
                "\nScores a model written by `hf-seqobj train` on one split, with generation, with the data settings"
            )
            print("the run saved (flags override them, e.g. --test_file). See `hf-seqobj train --help` for the keys.")
            return 0
        raise ConfigError("evaluate needs a model directory: hf-seqobj evaluate MODEL_DIR [--split test]")
    model_dir, flags = argv[0], argv[1:]
    if model_dir.startswith("-"):
        raise ConfigError(f"evaluate needs a model directory first, not {model_dir!r}: hf-seqobj evaluate MODEL_DIR")
    split_parser = ArgumentParser(add_help=False, allow_abbrev=False)
    split_parser.add_argument("--split", default="test")
    split = split_parser.parse_known_args(flags)[0].split
    saved = read_run_config(model_dir)
    config = dict(saved["data"])
    keep = ("per_device_eval_batch_size", "generation_max_length", "generation_max_new_tokens", "generation_num_beams")
    config.update({k: v for k, v in saved.get("given", {}).items() if k in keep})
    config.update({"model_name_or_path": model_dir, "output_dir": str(Path(model_dir) / f"eval_{split}")})
    source = f"{model_dir}'s saved settings"
    classes = (ModelArguments, DataArguments, EvaluateArguments, _training_classes(config, [], source)[-1])
    check_keys(config, classes, source)
    _, parsed = parse_over_config(config, flags, classes, source, prog="hf-seqobj evaluate")
    model_args, data_args, evaluate_args, training_args = parsed
    split = evaluate_args.split
    metrics = evaluate(model_args.model_name_or_path, split, data_args, training_args)
    print(f"\nResults ({model_dir}, {split}):")
    print(format_metrics_table({split: metrics}))
    low = next((key for key in metrics if key.endswith("_low")), None)
    if low is not None:  # the main metric's bootstrap interval over examples
        name = low[len(split) + 1 : -len("_low")]
        resamples = metrics[f"{split}_bootstrap_resamples"]
        print(
            f"{name}: {metrics[f'{split}_{name}']:.4f}, 95% bootstrap interval over examples "
            f"[{metrics[low]:.4f}, {metrics[f'{split}_{name}_high']:.4f}] ({resamples} resamples)"
        )
    return 0


def env_command(argv: list[str], debug: bool = False) -> int:
    """Prints the versions and devices to quote in a bug report."""
    import platform
    from importlib import metadata

    if argv:
        raise ConfigError(f"env takes no arguments, got {argv}.")
    lines = [f"- platform: {platform.platform()}", f"- python: {sys.version.split()[0]}"]
    for package in ("hf_seqobj", "torch", "transformers", "accelerate", "peft", "datasets", "tokenizers"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        lines.append(f"- {package}: {version}")
    import torch

    lines.append(f"- CPU cores: {os.cpu_count()}; torch threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        lines.append(f"- CUDA: {torch.version.cuda}; cuDNN: {torch.backends.cudnn.version()}")
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"- GPU {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("- GPU: none (CUDA not available to torch)")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        lines.append("- MPS (Apple GPU): available")
    print("\n".join(lines))
    return 0


COMMANDS = {"train": train_command, "evaluate": evaluate_command, "env": env_command}


def _user_error(error: BaseException) -> bool:
    """Whether `error` is one a user causes (settings, data, paths, models, checkpoints), reported in one line."""
    import pickle

    if isinstance(error, ConfigError | ValueError | OSError | yaml.YAMLError | pickle.UnpicklingError):
        return True  # (an unpickling error: a checkpoint file that torch.load(weights_only=True) refuses)
    return type(error).__name__ in ("SafetensorError", "DatasetGenerationError", "DatasetNotFoundError")


MAX_MESSAGE_CHARS = 600
"""The longest error line: a longer message (one that quotes a long piece of a data file, say) keeps its start and
its end, where the advice is."""


def _one_line(error: BaseException) -> str:
    message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    if len(message) > MAX_MESSAGE_CHARS:
        message = (
            f"{message[: MAX_MESSAGE_CHARS - 200]} [... {len(message) - MAX_MESSAGE_CHARS} characters] "
            + (message[-200:])
        )
    return message or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """The `hf-seqobj` entry point: returns the exit status (2 for an error the user can fix)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    for index in reversed(range(len(argv))):
        arg = argv[index]
        value = argv[index + 1].lower() if index + 1 < len(argv) else None
        if arg == "--debug" and value in (None, "true", "1") or arg == "--debug" and value.startswith("--"):
            debug = True
            del argv[index : index + (2 if value in ("true", "1") else 1)]
        elif arg == "--debug" and value in ("false", "0"):
            del argv[index : index + 2]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        helped = bool(argv) and argv[0] in ("-h", "--help")
        print(USAGE, file=sys.stdout if helped else sys.stderr)
        if argv and not helped:
            print(
                f"hf-seqobj: error: unknown command {argv[0]!r}; the commands are train, evaluate, env.",
                file=sys.stderr,
            )
        return 0 if helped else 2
    try:
        return COMMANDS[argv[0]](argv[1:], debug=debug)
    except KeyboardInterrupt as error:  # Ctrl-C: one line (a run says what it kept and how to go on)
        if debug:
            traceback.print_exc()
        print(f"hf-seqobj {argv[0]}: {_one_line(error) if str(error) else 'interrupted.'}", file=sys.stderr)
        return 130
    except Exception as error:
        if not _user_error(error):
            raise
        if debug:
            traceback.print_exc()
        print(f"hf-seqobj {argv[0]}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
