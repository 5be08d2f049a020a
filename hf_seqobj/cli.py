"""The `hf-seqobj` command line: `train`, `evaluate` and `env`.

    hf-seqobj train [CONFIG.yaml | --config CONFIG.yaml] [--key value ...] [--accelerate_config NAME_OR_PATH ...]
    hf-seqobj evaluate MODEL_DIR [--split test] [--key value ...]
    hf-seqobj env

`train`: the settings are the fields of the argument classes: `ModelArguments`, `DataArguments`, `RunArguments` and
the training arguments (`SeqObjTrainingArguments` for decoder-only models, `SeqObjSeq2SeqTrainingArguments` for
encoder-decoder ones, known from `architecture` or the checkpoint), parsed by `transformers.HfArgumentParser`. As
with TRL's parser, the YAML file's values become the parser's defaults and flags override them; `hf-seqobj train
--help` lists every setting by group with its help, default (the config's value when one is given) and allowed
values. A YAML value of the wrong type, or an unknown key, is an error that names it (with close matches). A config
with a `compare` mapping (run name -> settings that override the rest of the file, e.g. `{dagger: {objective:
dagger}}`) trains one run per entry, each in `output_dir/NAME` from the same initial model, and prints one table of
their results; a run with `start_from: OTHER` continues OTHER's trained model instead, and `compare_baseline: NAME`
adds each run's difference to run NAME to the table. `--accelerate_config` runs the same command under `accelerate
launch` with that config (a packaged name: cpu_2proc, single_gpu, multi_gpu, fsdp, fsdp1, zero2, zero3; or a file
path); every other `accelerate launch` flag on the command line goes to it.

`evaluate`: scores a model written by `train` on one split with generation, reusing its saved data settings (flags
override them, e.g. `--test_file`).

`env`: the versions and devices to quote in a bug report.

Every error a user can cause (settings, data, paths, models, checkpoints) prints one line `hf-seqobj COMMAND: error:
...` and exits with status 2; `--debug` (or `HF_SEQOBJ_DEBUG=1`) prints the full traceback as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import os
import re
import sys
import traceback
import types
import typing
from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Union

import yaml
from transformers import HfArgumentParser

from hf_seqobj.arguments import DataArguments, EvaluateArguments, ModelArguments, RunArguments


USAGE = """usage: hf-seqobj train [CONFIG.yaml | --config CONFIG.yaml] [--key value ...] [--accelerate_config NAME ...]
       hf-seqobj evaluate MODEL_DIR [--split SPLIT] [--key value ...]
       hf-seqobj env

  train     train (and evaluate) a model; `hf-seqobj train --help` lists every setting
  evaluate  score a model written by `train` on one split
  env       print the versions and devices to quote in a bug report

Errors print one line and exit with status 2; add --debug (or set HF_SEQOBJ_DEBUG=1) for the full traceback."""

DEBUG_ENV = "HF_SEQOBJ_DEBUG"
_UNDER_ACCELERATE_ENV = "HF_SEQOBJ_UNDER_ACCELERATE"
"""Set in the processes that `--accelerate_config` starts, which must not start accelerate again."""


class ConfigError(ValueError):
    """A bad configuration: unknown key, bad value, unreadable file."""


# ------------------------------------------------------------------------------------------------ YAML configs
def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping of settings (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing, not UTF-8, not YAML (naming the line) or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            config = yaml.safe_load(handle)
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {error.start}).") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}).") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value), not a {type(config).__name__}.")
    return config


def _field_names(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def _unknown_key_message(unknown: list[str], known: set[str], source: str) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3)
        hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return f"Unknown key{'s' if len(unknown) > 1 else ''} in {source}: {'; '.join(hints)}."


def check_keys(config: dict[str, Any], classes: tuple[type, ...], source: str) -> None:
    """Raises ConfigError naming every key of `config` that is no field of `classes` (with close matches)."""
    known = _field_names(*classes)
    unknown = [key for key in config if key not in known]
    if unknown:
        raise ConfigError(_unknown_key_message(unknown, known, source))


# ------------------------------------------------------------------------------------------- value types
class _Mismatch(Exception):
    pass


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as a value of the type `hint`: numbers and booleans written as strings are converted, an integral
    float is an int, a single string is a one-item list of strings; anything else of the wrong type raises."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value in args:
            return value
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args else Any
        if isinstance(value, str) and item is str:
            return [value]
        if isinstance(value, list):
            return [_coerce(element, item) for element in value]
        raise _Mismatch
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint) or value in [member.value for member in hint]:
            return value
        raise _Mismatch
    return value


def _describe(hint: Any) -> str:
    """`hint` in words, for error messages: "an integer", "one of 'a', 'b'", "a list of numbers or null", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        words = [_describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (list, tuple):
        inner = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(args[0] if args else None)
        return f"a list of {inner}" if inner else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _type_hints(classes: tuple[type, ...]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for cls in classes:
        resolved = typing.get_type_hints(cls)
        hints.update({f.name: resolved[f.name] for f in dataclasses.fields(cls) if f.init})
    return hints


def coerce_config(config: dict[str, Any], classes: tuple[type, ...], source: str) -> dict[str, Any]:
    """The config's values converted to their fields' types (see `_coerce`).

    `resume_from_checkpoint: true` means the newest checkpoint ("latest").

    Raises:
        ConfigError: a value of the wrong type, naming the key, `source` and the expected type.
    """
    hints = _type_hints(classes)
    coerced = {}
    for key, value in config.items():
        if key == "resume_from_checkpoint" and isinstance(value, bool):
            value = "latest" if value else None
        try:
            coerced[key] = _coerce(value, hints[key]) if key in hints else value
        except _Mismatch:
            choices = [str(c) for arg in (hints[key], *typing.get_args(hints[key])) for c in _literal_values(arg)]
            close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key} in {source} must be {_describe(hints[key])}, got {value!r}{hint}.") from None
    return coerced


def _literal_values(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


# ------------------------------------------------------------------------------------------- the parser
class SeqObjArgumentParser(HfArgumentParser):
    """`transformers.HfArgumentParser` whose `--help` groups the settings (run, model, data, objective, each
    objective's own settings, generation, training), whose errors raise `ConfigError` instead of exiting, and that
    never abbreviates a flag."""

    def __init__(self, dataclass_types: list[type], prog: str, extra_help: tuple[type, ...] = (), **kwargs):
        self._groups: dict[str, Any] = {}
        super().__init__(dataclass_types, prog=prog, allow_abbrev=False, **kwargs)
        known = _field_names(*dataclass_types)
        for extra in extra_help:
            self._add_dataclass_arguments(extra, skip=known)

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message[:1].upper() + message[1:].rstrip(".") + ".")

    # which group each field of the argument classes is shown in
    def _group_title(self, dtype: type, name: str) -> str:
        from hf_seqobj.callbacks import SampleLoggingArguments
        from hf_seqobj.objectives.base import OBJECTIVES, registered_settings
        from hf_seqobj.trainers.seqobj_config import ObjectiveArguments

        titles = {RunArguments: "run", ModelArguments: "model", DataArguments: "data", EvaluateArguments: "evaluate"}
        if dtype in titles:
            return titles[dtype]
        owner = next(cls for cls in dtype.__mro__ if name in vars(cls).get("__annotations__", {}))
        if owner is ObjectiveArguments:
            return "objective"
        if owner in registered_settings():
            users = ", ".join(n for n, c in OBJECTIVES.items() if owner in c.settings)
            return f"objective settings: {owner.__name__} (used by {users})"
        if owner is SampleLoggingArguments:
            return "evaluation samples"
        if owner.__module__.startswith("hf_seqobj") or owner.__name__ == "Seq2SeqTrainingArguments":
            return f"generation at evaluation ({dtype.__name__})"
        return "training (transformers.TrainingArguments)"

    def _group(self, title: str):
        if title not in self._groups:
            self._groups[title] = self.add_argument_group(title)
        return self._groups[title]

    def _add_dataclass_arguments(self, dtype: type, skip: set[str] = frozenset()) -> None:
        hints = typing.get_type_hints(dtype)
        fields = [f for f in dataclasses.fields(dtype) if f.init and f.name not in skip]
        titles = {f.name: self._group_title(dtype, f.name) for f in fields}
        for title in sorted(dict.fromkeys(titles.values()), key=_group_rank):  # the order of the groups in --help
            self._group(title)
        for original in fields:
            field = _copy_field(original, hints[original.name])
            group = self._group(titles[original.name])
            self._parse_dataclass_field(group, field)
            action = group._group_actions[-1]
            # (only where None is the default: elsewhere "none" may be a value, as in `report_to none`)
            optional = type(None) in typing.get_args(hints[original.name]) and original.default is None
            if optional and action.type is not None and action.nargs not in ("?", 0):
                # `--key none` (or null) unsets an optional setting, e.g. the config's architecture
                action.type = _none_or(action.type)
                action.choices = None if action.choices is None else (*action.choices, None)


def _none_or(convert: typing.Callable[[str], Any]) -> typing.Callable[[str], Any]:
    def convert_or_none(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)

    convert_or_none.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid ... value"
    return convert_or_none


def _group_rank(title: str) -> int:
    fixed = {"run": 0, "evaluate": 0, "model": 1, "data": 2, "objective": 3, "evaluation samples": 6}
    if title in fixed:
        return fixed[title]
    return 4 if title.startswith("objective settings") else 5 if title.startswith("generation") else 7


def _copy_field(original: dataclasses.Field, hint: Any) -> dataclasses.Field:
    """A copy of a dataclass field with its resolved type and a help text safe for argparse's %-formatting."""
    import copy
    from types import MappingProxyType

    field = copy.copy(original)
    field.type = hint
    help_text = original.metadata.get("help")
    if help_text:
        field.metadata = MappingProxyType({**original.metadata, "help": help_text.replace("%", "%%")})
    return field


def _set_config_defaults(parser: ArgumentParser, config: dict[str, Any]) -> None:
    """The config's values as the parser's defaults (TRL's `set_defaults_with_config`)."""
    for action in parser._actions:
        if action.dest in config:
            action.default = config[action.dest]
            action.required = False


def _flag_dests(parser: ArgumentParser, flags: list[str]) -> list[str]:
    """The fields that `flags` set, in order (`--no_x` sets x)."""
    dests = []
    for flag in flags:
        if flag.startswith("--"):
            action = parser._option_string_actions.get(flag.split("=", 1)[0])
            if action is not None and action.dest not in dests:
                dests.append(action.dest)
    return dests


def _accelerate_options() -> dict[str, int | str | None]:
    """The long options of `accelerate launch` and their nargs."""
    from accelerate.commands.launch import launch_command_parser

    return {
        option: action.nargs
        for action in launch_command_parser()._actions
        for option in action.option_strings
        if option.startswith("--")
    }


def _check_remaining(remaining: list[str], known: set[str], source: str) -> None:
    """Raises ConfigError naming the flags that no setting takes (an `accelerate launch` flag gets its own hint)."""
    if not remaining:
        return
    names = [flag[2:].split("=", 1)[0] for flag in remaining if flag.startswith("--")]
    if not names:
        raise ConfigError(f"Unexpected argument {remaining[0]!r} in {source}: settings are given as --key value.")
    accelerate = _accelerate_options()
    for name in names:
        if f"--{name}" in accelerate:
            raise ConfigError(
                f"--{name} is an `accelerate launch` flag: give --accelerate_config too (a packaged name such as "
                "cpu_2proc or multi_gpu, or a file)."
            )
    raise ConfigError(_unknown_key_message([n.replace("-", "_") for n in names], known, source))


class Settings(NamedTuple):
    """The parsed settings of one run."""

    model: ModelArguments
    data: DataArguments
    training: Any
    run: RunArguments
    given: dict[str, Any]
    """The settings the config and the flags gave, with their parsed values (what `hf_seqobj_run.yaml` records)."""


def _training_classes(config: dict[str, Any], flags: list[str], source: str) -> tuple[type, ...]:
    """`(ModelArguments, DataArguments, RunArguments, training arguments class)` for the model of the run."""
    from hf_seqobj.run import training_arguments_class

    model_parser = SeqObjArgumentParser([ModelArguments], prog="hf-seqobj train")
    model_config = {k: v for k, v in config.items() if k in _field_names(ModelArguments)}
    _set_config_defaults(model_parser, coerce_config(model_config, (ModelArguments,), source))
    (model_args, _) = model_parser.parse_args_into_dataclasses(
        args=flags, return_remaining_strings=True, look_for_args_file=False
    )
    return ModelArguments, DataArguments, RunArguments, training_arguments_class(model_args)


def parse_run(config: dict[str, Any], flags: list[str], source: str) -> Settings:
    """Parses a config mapping and override flags into the settings of one run (see the module docstring).

    Raises:
        ConfigError: an unknown key or flag (with close matches), or a value of the wrong type; a dataclass's own
            validation raises ValueError naming the setting.
    """
    from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments

    every = (ModelArguments, DataArguments, RunArguments, SeqObjTrainingArguments, SeqObjSeq2SeqTrainingArguments)
    check_keys(config, every, source)
    classes = _training_classes(config, flags, source)
    args_class = classes[-1]
    check_keys(config, classes, f"{source} (for a {args_class.__name__} model)")
    config = coerce_config(config, classes, source)
    parser = SeqObjArgumentParser(list(classes), prog="hf-seqobj train")
    _set_config_defaults(parser, config)
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=flags, return_remaining_strings=True, look_for_args_file=False
    )
    _check_remaining(remaining, _field_names(*classes), "the command line")
    model_args, data_args, run_args, training_args = parsed[:4]
    given = {}
    for key in [*config, *_flag_dests(parser, flags)]:
        for parsed_args in (model_args, data_args, training_args):
            if key in _field_names(type(parsed_args)):
                given[key] = getattr(parsed_args, key)
    return Settings(model_args, data_args, training_args, run_args, given)


def parse_settings(config: dict[str, Any], flags: list[str], source: str):
    """`(ModelArguments, DataArguments, training arguments)` from a config mapping and override flags.

    The training-arguments class depends on the model family, known from `architecture` or the checkpoint.
    """
    settings = parse_run(config, flags, source)
    return settings.model, settings.data, settings.training


def train_parser(config: dict[str, Any], source: str) -> SeqObjArgumentParser:
    """The parser whose `--help` describes `train`: for the config's model family when the config names one, else
    for encoder-decoder models with the decoder-only generation settings shown as well."""
    from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments

    extra: tuple[type, ...] = ()
    if any(key in config for key in ("architecture", "model_name_or_path")):
        classes = _training_classes(config, [], source)
    else:
        classes = (ModelArguments, DataArguments, RunArguments, SeqObjSeq2SeqTrainingArguments)
        extra = (SeqObjTrainingArguments,)
    parser = SeqObjArgumentParser(
        list(classes),
        prog="hf-seqobj train",
        usage="hf-seqobj train [CONFIG.yaml | --config CONFIG.yaml] [--key value ...] [--debug]",
        description="Trains a model with a sequence-level objective, then evaluates it on the validation and test "
        "splits. Settings come from the YAML config (its values are the defaults shown below when one is given) "
        "and the flags, which override it. Boolean flags take true or false.",
        epilog="--debug (or HF_SEQOBJ_DEBUG=1) prints the full traceback of an error. With --accelerate_config, "
        "every `accelerate launch` flag (see `accelerate launch --help`) passes through to it.",
        extra_help=extra,
    )
    _set_config_defaults(parser, coerce_config(config, classes + extra, source))
    return parser


# ------------------------------------------------------------------------------------------- accelerate
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


def split_accelerate_flags(flags: list[str], ours: set[str]) -> tuple[list[str], list[str]]:
    """`flags` split into hf-seqobj's and `accelerate launch`'s: a flag that no setting of ours takes and that
    `accelerate launch` knows goes to it, with its values."""
    accelerate = _accelerate_options()
    reserved = {"--config_file", "--config-file", "--module", "--no_python", "--no-python", "--help"}
    own: list[str] = []
    launch: list[str] = []
    index = 0
    while index < len(flags):
        flag = flags[index]
        name = flag.split("=", 1)[0]
        target = launch if name not in ours and name in accelerate else own
        if target is launch and name in reserved:
            raise ConfigError(f"{name} is not passed to accelerate launch: --accelerate_config sets its config.")
        target.append(flag)
        index += 1
        takes_values = not (target is launch and accelerate[name] == 0) and "=" not in flag
        while takes_values and index < len(flags) and not flags[index].startswith("--"):
            target.append(flags[index])
            index += 1
    return own, launch


def launch_with_accelerate(
    config_path: str | None, flags: list[str], launch_flags: list[str], accelerate_config: str, debug: bool
) -> int:
    """Runs `hf-seqobj train` under `accelerate launch --config_file ACCELERATE_CONFIG LAUNCH_FLAGS`.

    The settings were checked here first, so that a bad one is reported once, before any process starts. The
    processes' own one-line errors are passed on, and make the exit status 2.
    """
    import subprocess

    flags = _without_flag(flags, "accelerate_config")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--config_file", str(resolve_accelerate_config(accelerate_config)), *launch_flags]
    command += ["-m", "hf_seqobj.cli", "train", *([config_path] if config_path else []), *flags]
    command += ["--debug"] if debug else []
    logging.getLogger(__name__).info("Running %s", " ".join(command))
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env={**os.environ, _UNDER_ACCELERATE_ENV: "1"})
    error_line = relay_stderr(process.stderr, sys.stderr.buffer, debug)
    returncode = process.wait()
    return 2 if error_line is not None else returncode


def relay_stderr(stream: BinaryIO, out: BinaryIO, debug: bool = False) -> str | None:
    """Copies the launched processes' `stream` to `out` as it comes (a piece at each line end or carriage return, so
    progress bars move) and returns the first `hf-seqobj train: error: ...` line in it (None without one).

    Without `debug`, that line is the last thing copied: what follows is the other processes' copies of the error
    and `accelerate launch`'s own traceback of the failed process. Two processes that fail at once may write their
    error lines into one line; the line returned and shown is the first of them.
    """
    prefix = b"hf-seqobj train: error:"
    error_line, buffer = None, b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        buffer += chunk
        end = max(buffer.rfind(b"\n"), buffer.rfind(b"\r")) + 1
        ready, buffer = buffer[:end], buffer[end:]
        for piece in re.split(rb"(?<=[\r\n])", ready):
            if error_line is None and piece.startswith(prefix):
                text = piece.rstrip(b"\r\n")
                second = text.find(prefix, len(prefix))
                text = text[:second] if second > 0 else text
                error_line = text.decode("utf-8", "replace")
                piece = piece if debug else text + b"\n"
            elif error_line is not None and not debug:
                continue
            out.write(piece)
        out.flush()
    if error_line is None or debug:
        out.write(buffer)
        out.flush()
    return error_line


def _without_flag(flags: list[str], key: str) -> list[str]:
    """`flags` without `--key value` / `--key=value`."""
    kept, index = [], 0
    names = {f"--{key}", f"--{key.replace('_', '-')}"}
    while index < len(flags):
        flag = flags[index]
        index += 1
        if flag.split("=", 1)[0] in names:
            while "=" not in flag and index < len(flags) and not flags[index].startswith("--"):
                index += 1
            continue
        kept.append(flag)
    return kept


# ------------------------------------------------------------------------------------------- commands
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


def _end_processes() -> None:
    """Ends a process of a multi-process run cleanly: waits for the others, then destroys the process group. A gloo
    group left to the interpreter's exit can abort a process that finishes first ("terminate called without an active
    exception", exit -6) and so fail a run that trained and saved correctly."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()  # a no-op in one process
    state.destroy_process_group()


def _pop_accelerate_config(flags: list[str]) -> str | None:
    """The value of `--accelerate_config` among `flags` (None when absent)."""
    for index, flag in enumerate(flags):
        if flag.startswith("--accelerate_config=") or flag.startswith("--accelerate-config="):
            return flag.split("=", 1)[1]
        if flag in ("--accelerate_config", "--accelerate-config"):
            if index + 1 >= len(flags) or flags[index + 1].startswith("--"):
                raise ConfigError("--accelerate_config needs a value: a packaged name (cpu_2proc, ...) or a file.")
            return flags[index + 1]
    return None


FROM_SCRATCH_KEYS = ("architecture", "model_size", "tokenizer_type", "vocab_size", "min_frequency")
"""The model settings that only build a model from scratch: a run that continues another's model drops them."""


def expand_compare(config: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The runs of a config with a `compare` mapping: name -> the config's settings, the run's overrides on top,
    and `output_dir` = the config's output_dir / name. A config without `compare` is one run named "".

    A run may name `start_from: OTHER`, an earlier run of the mapping: it then continues OTHER's trained model (see
    :func:`continue_from`); the key stays in the run's settings for :func:`compare_runs`. The config's
    `compare_baseline: NAME` (a run of the mapping) is the run the table compares the others with; it is not a run
    setting and is left out.
    """
    if "compare" not in config:
        return {"": dict(config)}
    base = {key: value for key, value in config.items() if key not in ("compare", "compare_baseline")}
    runs = config["compare"]
    if not isinstance(runs, dict) or not runs or not all(isinstance(v, dict | None) for v in runs.values()):
        raise ConfigError(f"compare in {source} must map run names to mappings of settings, got {runs!r}.")
    baseline = config.get("compare_baseline")
    if baseline is not None and baseline not in runs:
        raise ConfigError(
            f"compare_baseline in {source} must name a run of compare ({', '.join(runs)}), got {baseline!r}."
        )
    base_dir = Path(base.get("output_dir", "outputs"))
    expanded: dict[str, dict[str, Any]] = {}
    for name, overrides in runs.items():
        run = {**base, **(overrides or {}), "output_dir": str(base_dir / name)}
        start = run.get("start_from")
        if start is not None and start not in expanded:
            earlier = ", ".join(expanded) or "none comes before it"
            raise ConfigError(
                f"start_from of run {name!r} in {source} must name an earlier run of compare ({earlier}), "
                f"got {start!r}."
            )
        expanded[name] = run
    return expanded


def continue_from(run_config: dict[str, Any], start_dir: str | Path) -> dict[str, Any]:
    """The settings of a run that continues the model trained in `start_dir`: `model_name_or_path` is that folder,
    and the settings that only build a model from scratch (:data:`FROM_SCRATCH_KEYS`) and `start_from` are dropped."""
    kept = {key: value for key, value in run_config.items() if key not in (*FROM_SCRATCH_KEYS, "start_from")}
    return {**kept, "model_name_or_path": str(start_dir)}


def compare_runs(config: dict[str, Any], flags: list[str], source: str) -> int:
    """Trains every run of `config["compare"]` and prints one table (see the module docstring).

    Every run's settings and output folder are checked before the first run starts (a run that continues another
    run's model is checked as the model it continues from is built).
    """
    from hf_seqobj.run import check_settings, format_comparison_table, prepare_output_dir, resolve_resume, train

    runs = expand_compare(config, source)
    if _pop_accelerate_config(flags) is not None or config.get("accelerate_config"):
        raise ConfigError("--accelerate_config runs one config, not a compare mapping: launch each run on its own.")
    output_parser = ArgumentParser(add_help=False, allow_abbrev=False)
    output_parser.add_argument("--output_dir", "--output-dir")
    flag_dir = output_parser.parse_known_args(flags, Namespace(output_dir=None))[0].output_dir
    base_dir = Path(flag_dir or config.get("output_dir", "outputs"))
    settings = {}
    run_flags = {}
    for name, run_config in runs.items():
        run_flags[name] = _without_flag(flags, "output_dir") + ["--output_dir", str(base_dir / name)]
        checked = {key: value for key, value in run_config.items() if key != "start_from"}
        settings[name] = parse_run(checked, run_flags[name], f"{source} (run {name!r})")
    for run in settings.values():
        check_settings(run.model, run.data, run.training)
        resume = resolve_resume(run.training) is not None
        prepare_output_dir(run.training.output_dir, run.run.overwrite_output_dir, resume, delete=False)
    results = {}
    starts = {}
    for name, run in settings.items():
        start = runs[name].get("start_from")
        if start is not None:
            continued = continue_from(runs[name], base_dir / start)
            run = parse_run(continued, run_flags[name], f"{source} (run {name!r}, from {start!r})")
            starts[name] = start
        overwrite = run.run.overwrite_output_dir
        metrics = train(run.model, run.data, run.training, config=run.given, overwrite_output_dir=overwrite)
        results[name] = (run.training.objective, metrics)
    table = format_comparison_table(results, baseline=config.get("compare_baseline"), starts=starts)
    print(f"\nComparison ({source}; outputs in {base_dir}):")
    print(table)
    base_dir.mkdir(parents=True, exist_ok=True)
    (base_dir / "comparison.md").write_text(table + "\n", encoding="utf-8")
    return 0


def evaluate_command(argv: list[str], debug: bool = False) -> int:
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
    config = coerce_config(config, classes, source)
    parser = SeqObjArgumentParser(list(classes), prog="hf-seqobj evaluate")
    _set_config_defaults(parser, config)
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=flags, return_remaining_strings=True, look_for_args_file=False
    )
    _check_remaining(remaining, _field_names(*classes), "the command line")
    model_args, data_args, evaluate_args, training_args = parsed[:4]
    split = evaluate_args.split
    metrics = evaluate(model_args.model_name_or_path, split, data_args, training_args)
    print(f"\nResults ({model_dir}, {split}):")
    print(format_metrics_table({split: metrics}))
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


def _one_line(error: BaseException) -> str:
    message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
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
    except Exception as error:
        if not _user_error(error):
            raise
        if debug:
            traceback.print_exc()
        print(f"hf-seqobj {argv[0]}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
