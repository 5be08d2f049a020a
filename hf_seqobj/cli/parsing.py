"""The settings of a run from a config mapping and flags: `SeqObjArgumentParser` (the grouped `--help`, errors that
raise `ConfigError`), the config's values as the parser's defaults, and `parse_run`, which picks the training-arguments
class for the model family and returns every argument class of the run."""

from __future__ import annotations

import dataclasses
import math
import typing
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any, NamedTuple

from transformers import HfArgumentParser

from hf_seqobj.arguments import DataArguments, EvaluateArguments, ModelArguments, RunArguments
from hf_seqobj.cli.config import ConfigError, _field_names, _unknown_key_message, check_keys, coerce_config
from hf_seqobj.cli.launch import _accelerate_options


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
            if action.type is float:
                action.type = _finite_float
            # (only where None is the default: elsewhere "none" may be a value, as in `report_to none`)
            optional = type(None) in typing.get_args(hints[original.name]) and original.default is None
            if optional and action.type is not None and action.nargs not in ("?", 0):
                # `--key none` (or null) unsets an optional setting, e.g. the config's architecture
                action.type = _none_or(action.type)
                action.choices = None if action.choices is None else (*action.choices, None)


def _finite_float(text: str) -> float:
    """`float(text)`, refusing NaN and infinities (which no setting can train with)."""
    value = float(text)
    if not math.isfinite(value):
        raise ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


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


def parse_over_config(
    config: dict[str, Any], flags: list[str], classes: tuple[type, ...], source: str, prog: str
) -> tuple[SeqObjArgumentParser, list[Any]]:
    """Parses `flags` into one instance of each of `classes`, the config's values (converted to their fields' types)
    being the defaults that the flags override. `train` and `evaluate` both parse this way.

    Args:
        config: settings by field name, whose keys the caller has checked (`check_keys`).
        flags: the command line's `--key value` flags.
        classes: the argument classes, in the order of the instances returned.
        source: where `config` comes from, for error messages.
        prog: the command, for the parser's messages.

    Returns:
        The parser (which knows the fields each flag sets) and the instances of `classes`.

    Raises:
        ConfigError: a config value of the wrong type, or a flag that no field of `classes` takes.
    """
    parser = SeqObjArgumentParser(list(classes), prog=prog)
    _set_config_defaults(parser, coerce_config(config, classes, source))
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=flags, return_remaining_strings=True, look_for_args_file=False
    )
    _check_remaining(remaining, _field_names(*classes), "the command line")
    return parser, parsed


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
    """Parses a config mapping and override flags into the settings of one run (see `hf_seqobj.cli`).

    Raises:
        ConfigError: an unknown key or flag (with close matches), or a value of the wrong type; a dataclass's own
            validation raises ValueError naming the setting.
    """
    from hf_seqobj.guards import check_accelerate_environment
    from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments

    check_accelerate_environment()  # (the training arguments read these variables as they are made)
    every = (ModelArguments, DataArguments, RunArguments, SeqObjTrainingArguments, SeqObjSeq2SeqTrainingArguments)
    check_keys(config, every, source)
    classes = _training_classes(config, flags, source)
    args_class = classes[-1]
    check_keys(config, classes, f"{source} (for a {args_class.__name__} model)")
    parser, parsed = parse_over_config(config, flags, classes, source, prog="hf-seqobj train")
    model_args, data_args, run_args, training_args = parsed
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
