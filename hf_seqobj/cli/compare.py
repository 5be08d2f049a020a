"""A config's `compare` mapping: one run per entry, each in `output_dir/NAME`, started from the same initial model or
(`start_from: OTHER`) from an earlier run's trained model, and one table of their results (with each run's difference
to the run `compare_baseline` names), printed and written to `output_dir/comparison.md`, with plots beside it of each
run's evaluation metric over the steps and of its output lengths against the reference lengths (matplotlib)."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

from hf_seqobj.cli.config import ConfigError
from hf_seqobj.cli.launch import _pop_accelerate_config, _without_flag
from hf_seqobj.cli.parsing import parse_run


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
    if not str(base.get("output_dir", "outputs")).strip():
        raise ConfigError(f"output_dir in {source} is empty: set the folder that holds the runs of compare.")
    base_dir = Path(base.get("output_dir", "outputs"))
    expanded: dict[str, dict[str, Any]] = {}
    for name, overrides in runs.items():
        check_run_name(name, source)
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


def check_run_name(name: Any, source: str) -> None:
    """A run name of `compare` is a folder of output_dir: a plain folder name (letters, digits, `.`, `-`, `_`, ...),
    never a path (a separator, `.` or `..`) that would write outside output_dir.

    Raises:
        ConfigError: naming the run and what a run name may be.
    """
    text = str(name)
    plain = isinstance(name, str) and text not in ("", ".", "..") and text.strip() == text
    plain = plain and not any(character in text for character in ("/", "\\", "\0", ":"))
    if not plain:
        raise ConfigError(
            f"compare in {source}: run name {name!r} is not a plain folder name (a run writes to output_dir/NAME): "
            "use a name without /, \\, :, leading or trailing spaces, and other than . or .. (e.g. dagger_beta_05)."
        )


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
    from hf_seqobj.reports import write_comparison_plots
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
    table_file = base_dir / "comparison.md"
    if table_file.exists() and not all(run.run.overwrite_output_dir for run in settings.values()):
        raise ConfigError(
            f"{table_file} exists, and the comparison would overwrite it; nothing was changed. Move it, choose "
            "another output_dir, or set overwrite_output_dir: true."
        )
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
    table_file.write_text(table + "\n", encoding="utf-8")
    outputs = {name: (run.training.output_dir, results[name][1]) for name, run in settings.items()}
    for path in write_comparison_plots(base_dir, outputs):
        print(f"Plot: {path}")
    return 0
