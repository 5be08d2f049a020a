"""Settings read from YAML and checked against the argument classes: the config file, unknown keys (named with close
matches) and the conversion of each value to its field's type (a wrong type is an error naming the key)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration: unknown key, bad value, unreadable file."""


# ------------------------------------------------------------------------------------------------ YAML configs
MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (1 MiB)."""

MAX_CONFIG_NODES = 100_000
"""The most YAML nodes a config may hold with its aliases expanded (a few nested aliases can stand for billions)."""


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that gives a key twice (YAML would keep the last value silently)."""


class ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping with a key given twice (merge keys `<<` may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor's own error names it
                    continue
                if first is not None:
                    raise _DuplicateKeyError(
                        problem=f"the key {key!r} is given twice (first on line {first + 1}); give each setting once",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """The number of nodes of `root` with every alias expanded, counted without building the expansion (each node's
    size is counted once and reused); stops counting past `limit`."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = limit + 1  # (a node met again while counting it: a recursive alias)
            children = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            total = 1
            for child in children:
                total += size(child)
                if total > limit:
                    break
            sizes[id(node)] = min(total, limit + 1)
        return sizes[id(node)]

    return size(root)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping of settings (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing, not a regular file, over `MAX_CONFIG_BYTES`, not UTF-8, not YAML (naming
            the line), a mapping that gives a key twice (naming the line), over `MAX_CONFIG_NODES` nodes with its
            aliases expanded, or not a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} is not a regular file (a folder, a FIFO, ...).")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"Config file {path} holds {path.stat().st_size} bytes, over the limit of {MAX_CONFIG_BYTES} (1 MiB) for "
            "a config; put data in data files."
        )
    try:
        with open(path, encoding="utf-8-sig") as handle:
            loader = ConfigLoader(handle)
            try:
                node = loader.get_single_node()
                if node is not None and _expanded_size(node, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
                    raise ConfigError(
                        f"Config file {path} holds over {MAX_CONFIG_NODES} YAML nodes once its aliases (*name) are "
                        "expanded: refused (nested aliases can expand without bound)."
                    )
                config = None if node is None else loader.construct_document(node)
            finally:
                loader.dispose()
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {error.start}).") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if isinstance(error, _DuplicateKeyError):
            raise ConfigError(f"{where}: {problem}.") from None
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
    if hint is float:  # (NaN and infinities are no settings: nothing trains with them)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch from None
            if math.isfinite(number):
                return number
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
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
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
