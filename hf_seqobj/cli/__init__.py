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
...` and exits with status 2; `--debug` (or `HF_SEQOBJ_DEBUG=1`) prints the full traceback as well. Ctrl-C prints one
line that says what was kept and how to resume, and exits with status 130.

The package's modules: `config` (YAML configs, unknown keys, value types), `parsing` (the argument parser and the
settings of one run), `launch` (the hand-off to `accelerate launch`), `compare` (the `compare` mapping) and
`commands` (the commands and `main`). The names below are the public ones; the underscored names are the package's
own.
"""

from hf_seqobj.cli.commands import COMMANDS, DEBUG_ENV, USAGE, env_command, evaluate_command, main, train_command
from hf_seqobj.cli.compare import FROM_SCRATCH_KEYS, compare_runs, continue_from, expand_compare
from hf_seqobj.cli.config import ConfigError, check_keys, coerce_config, load_yaml_config
from hf_seqobj.cli.launch import (
    ACCELERATE_CONFIGS,
    launch_with_accelerate,
    relay_stderr,
    resolve_accelerate_config,
    split_accelerate_flags,
)
from hf_seqobj.cli.parsing import (
    SeqObjArgumentParser,
    Settings,
    parse_over_config,
    parse_run,
    parse_settings,
    train_parser,
)


__all__ = [
    "ACCELERATE_CONFIGS",
    "COMMANDS",
    "DEBUG_ENV",
    "FROM_SCRATCH_KEYS",
    "USAGE",
    "ConfigError",
    "SeqObjArgumentParser",
    "Settings",
    "check_keys",
    "coerce_config",
    "compare_runs",
    "continue_from",
    "env_command",
    "evaluate_command",
    "expand_compare",
    "launch_with_accelerate",
    "load_yaml_config",
    "main",
    "parse_over_config",
    "parse_run",
    "parse_settings",
    "relay_stderr",
    "resolve_accelerate_config",
    "split_accelerate_flags",
    "train_command",
    "train_parser",
]
