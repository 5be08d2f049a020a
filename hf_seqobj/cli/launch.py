"""The hand-off to `accelerate launch` (`hf-seqobj train --accelerate_config NAME_OR_PATH`): the packaged configs,
the split of the command line between hf-seqobj's flags and accelerate's, the launched processes' errors relayed as
one line, and the clean end of each launched process."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO

from hf_seqobj.cli.config import ConfigError


_UNDER_ACCELERATE_ENV = "HF_SEQOBJ_UNDER_ACCELERATE"
"""Set in the processes that `--accelerate_config` starts, which must not start accelerate again."""


ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"
"""The packaged accelerate configs, `hf_seqobj/accelerate_configs/` (`--accelerate_config NAME` reads `NAME.yaml`
there). They are package data, so they are found from a wheel as from a source checkout (where `configs/accelerate`
links to them)."""


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


def _accelerate_options() -> dict[str, int | str | None]:
    """The long options of `accelerate launch` and their nargs."""
    from accelerate.commands.launch import launch_command_parser

    return {
        option: action.nargs
        for action in launch_command_parser()._actions
        for option in action.option_strings
        if option.startswith("--")
    }


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


def _end_processes() -> None:
    """Ends a process of a multi-process run cleanly: waits for the others, then destroys the process group. A gloo
    group left to the interpreter's exit can abort a process that finishes first ("terminate called without an active
    exception", exit -6) and so fail a run that trained and saved correctly."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()  # a no-op in one process
    state.destroy_process_group()


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
