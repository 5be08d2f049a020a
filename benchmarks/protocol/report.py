"""The quality benchmark's reports: the results JSON gathered from the workdir (and carried over from an earlier
report), the markdown report with its plots, and the headline table of benchmarks/README.md."""

from __future__ import annotations

import functools
import json
import math
import statistics
from pathlib import Path

from benchmarks.protocol.protocol import Benchmark, _write_json, point_name
from benchmarks.protocol.settings import CONTROL, CURVE_EVAL_SIZE, ROOT, SPEED_ROWS, TASKS
from benchmarks.protocol.statistics import output_statistics, paired_bootstrap, run_statistics, verdict


METRIC_LABELS = {
    "rouge1": "ROUGE-1",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "chrf": "chrF",
    "precision": "span precision",
    "recall": "span recall",
    "partial_f1": "partial span F1",
    "length_mismatch_rate": "length mismatch rate",
}
"""How the reports name a task's extra metrics (others by their key; the main metric is the task's `metric_label`)."""


def collect(benchmark: Benchmark) -> dict:
    """Every finished warm start and run of the task in the workdir, the grid choices and the summary rows."""
    spec, metric = benchmark.spec, benchmark.spec["metric"]
    warm_rows = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted((benchmark.workdir / "warm").glob("*/result.json"))
    ]
    current = {benchmark.warm_dir(f).name for f in spec["families"] if f in benchmark.sizes}
    warm_rows = [w for w in warm_rows if w["key"] in current]
    for warm in warm_rows:
        _add_output_statistics(spec, warm, benchmark.workdir / "warm" / warm["key"])
    runs = []
    continuation = {**benchmark.continuation, "batch_size": benchmark.batch_size}
    for warm in warm_rows:
        for path in sorted((benchmark.workdir / "runs" / warm["key"]).glob("*/*/*/seed*/result.json")):
            row = json.loads(path.read_text(encoding="utf-8"))
            if row.get("continuation") == continuation:  # runs of other continuation settings stay out
                row["directory"] = str(path.parent)
                _add_output_statistics(spec, row, path.parent)
                runs.append(row)
    choices, summary = [], []
    task = None  # set up on the first bootstrap: the task's statistics of each run's saved test predictions
    for warm in warm_rows:
        family = warm["family"]
        family_runs = [r for r in runs if r["family"] == family]
        chosen = {}
        control_lr = None
        for method in [CONTROL] + [m for m in benchmark.methods if m != CONTROL]:
            if method != CONTROL and control_lr is None:
                continue
            grid = {
                (r["point"], r["learning_rate"]): r
                for r in family_runs
                if r["method"] == method and r["role"] == "grid"
            }
            grid_rows = [  # in the grid's order, which breaks ties as the run did
                grid.get((point_name(point), point.get("learning_rate", control_lr)))
                for point in benchmark.methods[method]["grid"]
            ]
            if None in grid_rows:
                continue
            best = max(grid_rows, key=lambda r: (r["validation"][metric], -grid_rows.index(r)))
            if method == CONTROL:
                control_lr = best["learning_rate"]
            seeds = [
                r
                for r in family_runs
                if (r["method"], r["point"], r["learning_rate"]) == (method, best["point"], best["learning_rate"])
                and "test" in r
            ]
            seeds.sort(key=lambda r: r["seed"])
            chosen[method] = seeds
            choices.append(
                {
                    "family": family,
                    "method": method,
                    "grid": [
                        {
                            "point": r["point"],
                            "learning_rate": r["learning_rate"],
                            f"validation_{metric}": r["validation"][metric],
                        }
                        for r in grid_rows
                    ],
                    "chosen": best["point"],
                    "learning_rate": best["learning_rate"],
                    "test_seeds": [r["seed"] for r in seeds],
                }
            )
        control = chosen.get(CONTROL, [])
        for method, seeds in chosen.items():
            if method == CONTROL or not seeds or not control:
                continue
            paired = sorted({r["seed"] for r in seeds} & {r["seed"] for r in control})
            if len(paired) < min(benchmark.seeds, 3) and len(paired) < benchmark.seeds:
                continue

            task = task or benchmark.scoring_task()
            method_stats, control_stats = (
                [
                    run_statistics(task, Path(r["directory"]) / "predictions_test.jsonl")
                    for r in rows
                    if r["seed"] in paired
                ]
                for rows in (seeds, control)
            )
            stats = paired_bootstrap(task, metric, method_stats, control_stats, benchmark.resamples)
            by_seed = {r["seed"]: r["test"][metric] for r in seeds}
            control_by_seed = {r["seed"]: r["test"][metric] for r in control}
            summary.append(
                {
                    "task": benchmark.task_name,
                    "family": family,
                    "method": method,
                    "metric": metric,
                    "split": "test",
                    "control": CONTROL,
                    "delta": stats["delta"],
                    "ci_low": stats["ci_low"],
                    "ci_high": stats["ci_high"],
                    "verdict": verdict(stats["ci_low"], stats["ci_high"]),
                    "seeds": len(paired),
                    "steps": seeds[0]["steps"],
                    "commit": ",".join(sorted({r["commit"] for r in seeds + control})),
                    "per_seed_delta": [by_seed[s] - control_by_seed[s] for s in paired],
                    "method_mean": statistics.mean(by_seed[s] for s in paired),
                    "control_mean": statistics.mean(control_by_seed[s] for s in paired),
                    "setting": seeds[0]["point"],
                    "model": warm["model"],
                    "step_time_ratio": speed_ratio(benchmark.task_name, method, seeds[0]["settings"]),
                }
            )
    return {"warm_starts": warm_rows, "runs": runs, "choices": choices, "summary": summary}


def _add_output_statistics(spec: dict, row: dict, directory: Path) -> None:
    """Sets `row["test_outputs"]` from the test predictions in `directory` where the task reports them."""
    predictions = directory / "predictions_test.jsonl"
    if spec.get("output_statistics") and "test" in row and predictions.exists():
        rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
        ended = [r["eos_reached"] for r in rows] if all("eos_reached" in r for r in rows) else None
        row["test_outputs"] = output_statistics([r["prediction"] for r in rows], [r["reference"] for r in rows], ended)


_CARRIED_KEYS = {
    "warm_starts": {"family"},
    "runs": {"family", "method", "point", "settings"},
    "choices": {"family"},
    "summary": {"family", "method", "setting"},
}
"""The lists of a results JSON that `carry_over` takes rows of, and the keys it reads of each row."""


def read_results(results: Path) -> dict | None:
    """A task's results JSON as `carry_over` reads it (None where absent); a file that is not what the benchmark
    writes (not JSON, not an object, a list without the keys `carry_over` reads) raises a one-line ValueError."""
    if not results.exists():
        return None
    try:
        earlier = json.loads(results.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{results} is not valid JSON ({error}); restore it from git or delete it.") from None
    if not isinstance(earlier, dict):
        raise ValueError(f"{results} holds a {type(earlier).__name__}, not the object that the benchmark writes.")
    for key, needed in _CARRIED_KEYS.items():
        _rows(earlier, key, needed, results)
    return earlier


def _rows(data: dict, key: str, needed: set[str], path: Path) -> list[dict]:
    """`data[key]` (a list of rows, empty where absent); anything else, or a row without the `needed` keys, raises a
    one-line ValueError naming `path`."""
    rows = data.get(key, [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) and needed <= row.keys() for row in rows):
        raise ValueError(
            f"{path}: {key!r} is not a list of rows with keys {sorted(needed)} as the quality benchmark writes them; "
            "restore the file from git or delete it."
        )
    return rows


def carry_over(collected: dict, results: Path, benchmark: Benchmark) -> dict:
    """Adds to `collected` the families of the task's existing results JSON that the workdir holds no warm start of,
    and the methods of the families it holds that it ran none of (:func:`_carried_methods`).

    A report is written from the workdir, and a workdir need not outlive the sitting that filled it: families run in
    earlier sittings (from other workdirs) stay in the report with their warm starts, runs, grid choices and summary
    rows as the JSON recorded them. They are kept only when the JSON's continuation settings (steps, schedule, batch)
    are the current ones, so that every row of a report is at the same number of steps; a family the workdir holds
    replaces its earlier rows whole.

    Args:
        collected: `collect(benchmark)`, changed in place and returned.
        results: The report's JSON (`reports/results/quality_{task}.json`); absent on a task's first report.
        benchmark: The benchmark being reported.

    Returns:
        `collected` with the carried rows, every list in the task's family order.
    """
    earlier = read_results(results)
    if earlier is not None:
        continuation = {**benchmark.continuation, "batch_size": benchmark.batch_size}
        present = {w["family"] for w in collected["warm_starts"]}
        carried = {w["family"] for w in earlier.get("warm_starts", [])} - present
        if carried and earlier.get("protocol", {}).get("continuation") != continuation:
            print(
                f"not carried into the report: {', '.join(sorted(carried))} of {results} (continuation "
                f"{earlier.get('protocol', {}).get('continuation')} differs from this run's {continuation})"
            )
            carried = set()
        for key in _CARRIED_KEYS:
            collected[key] += [row for row in earlier.get(key, []) if row["family"] in carried]
        carried_methods = _carried_methods(collected, earlier, present, continuation)
        for key in ("runs", "choices", "summary"):
            rows = earlier.get(key, [])
            collected[key] += [row for row in rows if (row["family"], row["method"]) in carried_methods]
        for row in collected["summary"]:  # the step-time ratio is speed.md's, read anew as for the workdir's rows
            if row["family"] in carried or (row["family"], row["method"]) in carried_methods:
                key = (row["family"], row["method"], row["setting"])
                run = next((r for r in collected["runs"] if (r["family"], r["method"], r["point"]) == key), None)
                if run is not None:
                    row["step_time_ratio"] = speed_ratio(benchmark.task_name, row["method"], run["settings"])
    order = {family: index for index, family in enumerate(benchmark.spec["families"])}
    for key in _CARRIED_KEYS:
        collected[key].sort(key=lambda row: order.get(row["family"], len(order)))  # stable: runs keep their order
    return collected


def _carried_methods(collected: dict, earlier: dict, present: set[str], continuation: dict) -> set[tuple[str, str]]:
    """(family, method) pairs of the earlier JSON to keep for families the workdir holds but whose method it ran
    none of (a sitting that reran some methods only, `--methods`).

    Kept only where their paired differences still hold: the same continuation settings, the same warm-start
    checkpoint (key and best step) and the same control (its seed-mean test score equal to the workdir's, to 1e-9:
    runs are deterministic given seed and step). Whatever is not kept is named in one printed line.
    """
    kept: set[tuple[str, str]] = set()
    same_protocol = earlier.get("protocol", {}).get("continuation") == continuation
    for family in sorted(present):
        ran = {row["method"] for row in collected["runs"] if row["family"] == family}
        missing = sorted({row["method"] for row in earlier.get("runs", []) if row["family"] == family} - ran)
        if not missing:
            continue
        old_warm = next((w for w in earlier.get("warm_starts", []) if w["family"] == family), {})
        new_warm = next((w for w in collected["warm_starts"] if w["family"] == family), {})
        controls = [
            {round(row["control_mean"], 9) for row in rows if row["family"] == family and "control_mean" in row}
            for rows in (earlier.get("summary", []), collected["summary"])
        ]
        start = ("key", "best_step")
        same_start = [old_warm.get(k) for k in start] == [new_warm.get(k) for k in start]
        if same_protocol and same_start and controls[0] and controls[0] == controls[1]:
            kept |= {(family, method) for method in missing}
        else:
            print(
                f"not carried into the report: {family} {', '.join(missing)} (its warm start, control or "
                "continuation differs from this workdir's)"
            )
    return kept


def speed_ratio(task_name: str, method: str, settings: dict) -> float | None:
    """The step-time ratio to teacher forcing from speed_cpu.json (tiny models, 2 cores) where speed.md measured it.

    None for DAgger under an agreement schedule: its share of roll-ins or beta changes with the model, and no
    speed.md row measured that."""
    if "agreement" in (settings.get("dagger_beta_schedule"), settings.get("rollin_fraction_schedule")):
        return None
    beta = settings.get("dagger_beta")
    name = (
        SPEED_ROWS.get((task_name, method, beta, settings.get("rollin_fraction")))
        or SPEED_ROWS.get((task_name, method, beta))
        or SPEED_ROWS.get((task_name, method))
    )
    if name is None:
        return None
    return _speed_rows(ROOT / "benchmarks" / "results" / "speed_cpu.json").get(name, {}).get("ratio_to_mle")


@functools.lru_cache
def _speed_rows(path: Path) -> dict[str, dict]:
    """speed_cpu.json's rows by name (empty where the file is absent), read once per process."""
    if not path.exists():
        return {}
    return {row.get("name"): row for row in json.loads(path.read_text(encoding="utf-8"))}


TASK_LABELS = {
    "arithmetic": "Arithmetic (generated)",
    "arithmetic_long": "Arithmetic, long answers (generated)",
    "ner": "CoNLL-2003 NER",
    "summarization": "SAMSum summarization",
    "translation": "Multi30k en-de translation",
}

README_START = "<!-- quality-summary:start -->"
README_END = "<!-- quality-summary:end -->"


def _mean_std(values: list[float], digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _digits(metric: str) -> int:
    return 4 if metric in ("f1", "accuracy") else 2


def write_report(benchmark: Benchmark, reports: Path) -> Path:
    """Writes `results/quality_{task}.json`, `quality_{task}.md` with its plots, and the README's headline table."""
    spec, metric, task_name = benchmark.spec, benchmark.spec["metric"], benchmark.task_name
    digits = _digits(metric)
    results = reports / "results" / f"quality_{task_name}.json"
    collected = carry_over(collect(benchmark), results, benchmark)
    _write_json(
        results,
        {
            "task": task_name,
            "protocol": {
                "control": CONTROL,
                "seeds": benchmark.seeds,  # this command's --seeds; seeds_by_family: what each family's rows used
                "seeds_by_family": _control_seeds(collected["runs"]),
                "curve_eval_size": benchmark.curve_eval_size,
                "warm_start": benchmark.warm_start,
                "warm_start_lr": benchmark.warm_start_lr,
                "continuation": {**benchmark.continuation, "batch_size": benchmark.batch_size},
                "resamples": benchmark.resamples,
            },
            **collected,
        },
    )
    warm_rows, runs, choices, summary = (collected[k] for k in ("warm_starts", "runs", "choices", "summary"))
    label = spec["metric_label"]
    extra_headers = " | ".join(f"test {METRIC_LABELS.get(m, m)}" for m in spec["extra_metrics"])
    lines = [f"# Quality: {TASK_LABELS.get(task_name, task_name)}", ""]
    lines += [
        "Protocol (issue 15): each family is first trained by teacher forcing from scratch (the warm start), keeping "
        f"the checkpoint with the best validation {label} (first {benchmark.curve_eval_size} validation examples, "
        "greedy decoding). Every method, teacher forcing included (the control), then continues from that checkpoint "
        "for the same optimizer steps, schedule and per-seed data order. Each method's grid runs with seed 0 and is "
        "scored on the whole validation split; the chosen point runs with every seed and is scored once on test. "
        f"Δ is the seed-averaged test {label} minus the control's, with a paired bootstrap 95% interval over test "
        f"examples ({benchmark.resamples} resamples); verdict: helps / hurts when the interval is above / below 0.",
        "",
    ]
    if warm_rows:
        first = warm_rows[0]
        files = first["settings"]["files"]
        generated = {k: v for k, v in first["settings"].get("data", {}).items() if v is not None and k != "task"}
        lines += [
            "- Data: "
            + (
                ", ".join(f"{k.removesuffix('_file')} `{v['path']}`" for k, v in files.items())
                if files
                else "generated by the package (" + ", ".join(f"{k} {v}" for k, v in generated.items()) + ")"
            )
            + f"; examples: {first['examples']}.",
            f"- Tokenizer: {first['settings']['tokenizer']} (trained on the training split).",
            _warm_start_line(warm_rows),
            f"- Continuation: {benchmark.continuation['steps']} steps per run, batch {benchmark.batch_size}, linear "
            f"warm-up over {benchmark.continuation['warmup_steps']} steps then linear decay to 0, validation curve "
            f"every {benchmark.continuation['eval_steps']} steps; seeds: {_seeds_text(runs, benchmark.seeds)}. "
            "Cost is compared at equal optimizer steps; the step-time ratios are speed.md's (tiny BART, 2 CPU cores), "
            "not measured here.",
            "- Commits: " + ", ".join(sorted({r["commit"] for r in warm_rows + runs})) + ".",
            "",
            "## Warm starts",
            "",
            f"| family | model | best step | validation {label} (first {benchmark.curve_eval_size}) | validation "
            f"{label} | test {label} | {extra_headers} |",
            "|---|---|---|---|---|---|" + "---|" * len(spec["extra_metrics"]),
        ]
        for warm in warm_rows:
            trained = warm.get("trained_steps") or warm["steps"]
            stopped = "" if trained >= warm["steps"] else f" (stopped early at {trained})"
            lines.append(
                f"| {warm['family']} | {warm['model']} | {warm['best_step']} of {warm['steps']}{stopped} | "
                f"{warm['best_curve_value']:.{digits}f} | {warm['validation'][metric]:.{digits}f} | "
                f"{warm['test'][metric]:.{digits}f} | "
                + " | ".join(f"{warm['test'].get(m, math.nan):.{_digits(m)}f}" for m in spec["extra_metrics"])
                + " |"
            )
        lines.append("")
    if summary or choices:
        lines += [
            f"## Test {label}, chosen settings",
            "",
            f"| family | method | setting | seeds | test {label} | "
            + extra_headers
            + f" | Δ vs {CONTROL} [95% CI] | verdict | Δ per seed | step-time ratio |",
            "|---|---|---|---|---|" + "---|" * len(spec["extra_metrics"]) + "---|---|---|---|",
        ]
        for choice in choices:
            seeds = _chosen_runs(choice, runs)
            if not seeds:
                continue
            row = next(
                (s for s in summary if (s["family"], s["method"]) == (choice["family"], choice["method"])), None
            )
            setting = choice["chosen"] + (
                "" if "learning_rate" in choice["chosen"] else f", lr {choice['learning_rate']}"
            )
            cells = [choice["family"], choice["method"], setting, str(len(seeds))]
            cells.append(_mean_std([r["test"][metric] for r in seeds], digits))
            cells += [_mean_std([r["test"].get(m) for r in seeds], _digits(m)) for m in spec["extra_metrics"]]
            if row is None:
                cells += ["(control)" if choice["method"] == CONTROL else "", "", "", ""]
            else:
                cells += [
                    f"{row['delta']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]",
                    row["verdict"],
                    " / ".join(f"{d:+.{digits}f}" for d in row["per_seed_delta"]),
                    "" if row["step_time_ratio"] is None else f"{row['step_time_ratio']:.2f}x",
                ]
            lines.append("| " + " | ".join(cells) + " |")
        if spec.get("output_statistics"):
            lines += _outputs_table(warm_rows, choices, runs)
        lines += [
            "",
            f"## Grids (seed 0, whole validation split, {label})",
            "",
            "| family | method | point | learning rate | validation | chosen |",
            "|---|---|---|---|---|---|",
        ]
        for choice in choices:
            for point in choice["grid"]:
                chosen = (point["point"], point["learning_rate"]) == (choice["chosen"], choice["learning_rate"])
                lines.append(
                    f"| {choice['family']} | {choice['method']} | {point['point']} | {point['learning_rate']} | "
                    f"{point[f'validation_{metric}']:.{digits}f} | {'yes' if chosen else ''} |"
                )
        lines.append("")
    plots = _plots(task_name, label, warm_rows, runs, choices, reports)
    lines += [f"![{name}]({name})" for name in plots]
    report = reports / f"quality_{task_name}.md"
    notes = _kept_notes(report)
    if notes:  # written by hand between the markers, kept across rewrites, shown after the protocol paragraph
        lines[4:4] = [notes, ""]
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    update_readme(reports)
    return report


def _chosen_runs(choice: dict, runs: list[dict]) -> list[dict]:
    """The scored (test) runs of a grid choice's chosen point, one per seed."""
    key = (choice["family"], choice["method"], choice["chosen"], choice["learning_rate"])
    return [r for r in runs if (r["family"], r["method"], r["point"], r["learning_rate"]) == key and "test" in r]


def _outputs_table(warm_rows: list[dict], choices: list[dict], runs: list[dict]) -> list[str]:
    """The report's table of test output length and repetition: each family's warm start, then each method at its
    chosen setting (`output_statistics`, the mean over seeds).

    Rows carried from the JSON of an earlier report written before these statistics existed have none; their
    families are named below the table instead of shown as blank rows.
    """
    lines = [
        "",
        "## Test outputs: length, stopping and repetition (chosen settings, mean over seeds)",
        "",
        "Length ratio: words per output / words per reference; reached EOS: the share of outputs whose generation "
        "ended with EOS (not at the length limit); oracle agreement / score: DAgger's training logs (the model's "
        "greedy token equals the oracle's label; the sentence score of the best whole completion the oracle found "
        "from the roll-ins), mean over the run. \u2013: not recorded (rows from before these statistics).",
        "",
        "| family | method | words per output | length ratio | reached EOS | outputs repeating a bigram | "
        "oracle agreement | oracle score | words per reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    warm_starts = {w["family"]: w.get("test_outputs") for w in warm_rows}
    for choice in choices:
        if choice["method"] == CONTROL and warm_starts.get(choice["family"]) is not None:
            lines.append(_outputs_row(choice["family"], "warm start", [warm_starts[choice["family"]]]))
        seeds = [r.get("test_outputs") for r in _chosen_runs(choice, runs)]
        if not seeds:
            continue
        if any(s is None for s in seeds):
            missing.append(choice["family"])
            continue
        training = [r.get("training", {}) for r in _chosen_runs(choice, runs)]
        lines.append(_outputs_row(choice["family"], choice["method"], seeds, training))
    if missing:
        lines += [
            "",
            f"Not shown: {', '.join(dict.fromkeys(missing))} (reported from a workdir that is gone, before these "
            "statistics were recorded).",
        ]
    return lines


def _outputs_row(family: str, method: str, outputs: list[dict], training: list[dict] | None = None) -> str:
    """One row of `_outputs_table`: the mean of `output_statistics` over `outputs` (one per seed) and of the runs'
    `training` diagnostics; a value some seed lacks is shown as a dash."""

    def mean(rows: list[dict], key: str, form: str) -> str:
        if not rows or any(key not in row for row in rows):
            return "\u2013"
        return form.format(statistics.mean(row[key] for row in rows))

    words, reference = (
        statistics.mean(o["words"] for o in outputs),
        statistics.mean(o["reference_words"] for o in outputs),
    )
    ratio = f"{words / reference:.2f}" if reference else "\u2013"
    cells = [
        family,
        method,
        f"{words:.1f}",
        ratio,
        mean(outputs, "eos_rate", "{:.0%}"),
        mean(outputs, "repeated_bigram", "{:.0%}"),
        mean(training or [], "oracle_agreement", "{:.2f}"),
        mean(training or [], "oracle_score", "{:.3f}"),
        f"{reference:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _control_seeds(runs: list[dict]) -> dict[str, int]:
    """How many seeds the control was scored on test with, per family (families carried from another workdir may
    differ from this run's `--seeds`)."""
    seeds: dict[str, set] = {}
    for run in runs:
        if run["method"] == CONTROL and "test" in run:
            seeds.setdefault(run["family"], set()).add(run["seed"])
    return {family: len(family_seeds) for family, family_seeds in seeds.items()}


def _seeds_text(runs: list[dict], default: int) -> str:
    """`_control_seeds` as the report's header says it; `default` when no run is scored yet."""
    by_count: dict[int, list[str]] = {}
    for family, count in _control_seeds(runs).items():
        by_count.setdefault(count, []).append(family)
    if len(by_count) <= 1:
        return str(next(iter(by_count), default))
    return ", ".join(f"{count} ({', '.join(families)})" for count, families in by_count.items())


def _warm_start_line(warm_rows: list[dict]) -> str:
    """The report's warm-start line, from each warm start's own recorded schedule: families trained alike share one
    clause, and a family carried from another workdir at other steps gets its own instead of this run's settings."""
    groups: dict[tuple, list[dict]] = {}
    for warm in warm_rows:
        s = warm["settings"]
        groups.setdefault((s["steps"], s["batch_size"], s["warmup_steps"], s["eval_steps"]), []).append(warm)
    return (
        "- Warm start: "
        + "; ".join(
            f"{steps} steps, batch {batch}, learning rate "
            + ", ".join(f"{w['settings']['learning_rate']} ({w['family']})" for w in rows)
            + f" (linear warm-up over {warmup} steps, then linear decay to 0), evaluated every {eval_steps} steps"
            for (steps, batch, warmup, eval_steps), rows in groups.items()
        )
        + "."
    )


NOTES_START = "<!-- notes:start -->"
NOTES_END = "<!-- notes:end -->"


def _kept_notes(report: Path) -> str:
    """The hand-written findings of an existing report, markers included ('' when there are none)."""
    if not report.exists():
        return ""
    text = report.read_text(encoding="utf-8")
    if NOTES_START not in text or NOTES_END not in text:
        return ""
    return NOTES_START + text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0] + NOTES_END


def _plots(task_name, label, warm_rows, runs, choices, reports: Path) -> list[str]:
    """Validation curves of the warm starts, and of each method's chosen point from the warm start on."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    if warm_rows:
        figure, axis = plt.subplots(figsize=(6, 4))
        for warm in warm_rows:
            axis.plot(
                [p["step"] for p in warm["curve"]],
                [p["value"] for p in warm["curve"]],
                marker=".",
                label=warm["family"],
            )
            axis.axvline(warm["best_step"], color=axis.lines[-1].get_color(), linestyle=":", alpha=0.6)
        axis.set_title(f"{task_name}: warm starts (teacher forcing), best step dotted")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(f"validation {label} (first {CURVE_EVAL_SIZE})")
        axis.legend(fontsize="small")
        names.append(f"quality_{task_name}_warm_start.png")
        figure.tight_layout()
        figure.savefig(reports / names[-1], dpi=100)
        plt.close(figure)
    families = [w["family"] for w in warm_rows if any(c["family"] == w["family"] for c in choices)]
    if families:
        figure, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4), squeeze=False)
        for axis, family in zip(axes[0], families, strict=True):
            warm = next(w for w in warm_rows if w["family"] == family)
            methods = [c for c in choices if c["family"] == family]
            for position, choice in enumerate(methods):
                group = [
                    r
                    for r in runs
                    if (r["family"], r["method"], r["point"], r["learning_rate"])
                    == (family, choice["method"], choice["chosen"], choice["learning_rate"])
                ]
                for index, row in enumerate(sorted(group, key=lambda r: r["seed"])):
                    axis.plot(
                        [0] + [p["step"] for p in row["curve"]],
                        [warm["best_curve_value"]] + [p["value"] for p in row["curve"]],
                        color=f"C{position}",
                        alpha=0.7,
                        label=choice["method"] if index == 0 else None,
                    )
            axis.set_title(f"{task_name}, {family}: continuation from the warm start")
            axis.set_xlabel("continuation step")
            axis.set_ylabel(f"validation {label} (first {CURVE_EVAL_SIZE})")
            axis.legend(fontsize="small")
        names.append(f"quality_{task_name}_curves.png")
        figure.tight_layout()
        figure.savefig(reports / names[-1], dpi=100)
        plt.close(figure)
    return names


_HEADLINE_KEYS = {"family", "method", "metric", "delta", "ci_low", "ci_high", "verdict", "seeds", "steps"}
"""The keys of a summary row that `headline_table` reads."""


def headline_table(reports: Path) -> list[str]:
    """The table of every task's summary rows: task x architecture x method, Δ with its interval, and the verdict.

    A task JSON that is not JSON, or whose summary rows lack the keys the table reads, raises a one-line ValueError
    (a JSON that is not an object is a report of an earlier protocol, and is left out)."""
    lines = [
        "| task | architecture | method | metric | Δ vs teacher forcing [95% CI] | verdict | seeds | steps | "
        "step-time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task_name in TASKS:
        path = reports / "results" / f"quality_{task_name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); restore it from git or delete it.") from None
        if not isinstance(data, dict):  # a report of the earlier protocol
            continue
        for row in _rows(data, "summary", _HEADLINE_KEYS, path):
            digits = _digits(row["metric"])
            ratio = row.get("step_time_ratio")
            lines.append(
                f"| {TASK_LABELS.get(task_name, task_name)} | {row['family']} | {row['method']} | test "
                f"{TASKS[task_name]['metric_label']} | {row['delta']:+.{digits}f} [{row['ci_low']:+.{digits}f}, "
                f"{row['ci_high']:+.{digits}f}] | {row['verdict']} | {row['seeds']} | {row['steps']} | "
                + ("" if ratio is None else f"{ratio:.2f}x")
                + " |"
            )
    return lines


def update_readme(reports: Path) -> None:
    """Rewrites the table between the README's quality-summary markers (left alone when they are absent)."""
    readme = reports / "README.md"
    if not readme.exists():
        return
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(
        head + README_START + "\n" + "\n".join(headline_table(reports)) + "\n" + README_END + tail, encoding="utf-8"
    )
