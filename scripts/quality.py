"""`python scripts/benchmark.py quality --task ner|translation|arithmetic`: does each objective beat teacher forcing?

Every applicable objective trains on the same data, from the same initial model (per seed) and for the same number
of optimizer steps (or the same wall-clock budget with `--budget-minutes`); each is evaluated on the validation
split during training (the curve of metric against training time) and on the validation and test splits at the
end. Writes `benchmarks/results/quality_{task}.json` and `benchmarks/quality_{task}.md` with PNG plots.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint

from hf_seqobj.arguments import DataArguments, ModelArguments
from hf_seqobj.modeling import describe_model
from hf_seqobj.run import build_trainer, prepare_model, training_arguments_class
from hf_seqobj.tasks import get_task


SEQUENCEMATCH = {
    "objective": "sequencematch",
    "sm_bc_anneal_steps": 0.25,  # fractions of the run's steps are resolved per run
    "sm_noise_prob": 0.1,
    "rollin": "sample",
    "sm_rollout_every": 4,
    "sm_buffer_size": 256,
}

TASKS = {
    "arithmetic": {
        "families": ["gpt2"],
        "metric": "accuracy",
        "tokenizer": "wordlevel",
        "steps": 3000,
        "quick_steps": 300,
        "methods": {
            "mle": {"objective": "mle"},
            "mle+backspace noise": {**SEQUENCEMATCH, "sm_bc_steps": 10**9},
            "sequencematch": {**SEQUENCEMATCH, "sm_bc_steps": 0.5},
            # ablation: the chi^2 weight of the paper's phi(x) = x - x^2/4 at temperature 1
            "sequencematch (c=0.25)": {**SEQUENCEMATCH, "sm_bc_steps": 0.5, "sm_chi2_weight": 0.25},
        },
        "sampled_eval": True,
    },
    "ner": {
        "families": ["bart", "gpt2"],
        "metric": "f1",
        "extra_metrics": ["partial_f1", "precision", "recall", "length_mismatch_rate"],
        "tokenizer": "wordlevel",
        # CoNLL sentences run from 1 to 124 words: batches of similar lengths halve the padding
        "train_sampling_strategy": "group_by_length",
        "steps": 2000,
        "quick_steps": 200,
        "methods": {
            "mle": {"objective": "mle"},
            "scheduled_sampling": {
                "objective": "scheduled_sampling",
                "ss_schedule": "linear",
                "ss_k": 1.0,
                "ss_c": 0.25,  # per cent of the run: eps falls from 1 to ss_eps_min over the first 25% of steps
                "ss_eps_min": 0.75,
            },
            "dagger span_f1": {
                "objective": "dagger",
                "oracle": "span_f1",
                "dagger_warmup_steps": 0.5,
                "dagger_beta": 0.0,
                "dagger_beta_schedule": "constant",
            },
            "dagger span_f1_partial": {
                "objective": "dagger",
                "oracle": "span_f1_partial",
                "dagger_warmup_steps": 0.5,
                "dagger_beta": 0.0,
                "dagger_beta_schedule": "constant",
            },
        },
    },
    "translation": {
        "families": ["bart"],
        "metric": "bleu",
        "extra_metrics": ["chrf"],
        "tokenizer": "bpe",
        "steps": 3000,
        "quick_steps": 200,
        "methods": {
            "mle": {"objective": "mle"},
            "scheduled_sampling": {
                "objective": "scheduled_sampling",
                "ss_schedule": "linear",
                "ss_k": 1.0,
                "ss_c": 0.25,
                "ss_eps_min": 0.75,
            },
            "raml": {"objective": "raml", "raml_reward": "bleu"},
            "data_noising": {"objective": "data_noising", "noising_prob": 0.1},
            "spg": {"objective": "spg", "spg_reward": "bleu"},
            # ablation: the reward increments of reference tokens are ~0.05 BLEU, so W = 10 barely moves the sampler
            "spg (W=300)": {"objective": "spg", "spg_reward": "bleu", "spg_reward_scale": 300.0},
            "interpolation": {"objective": "interpolation", "interp_reward": "bleu", "interp_anneal_metric": "bleu"},
            "dagger bleu": {
                "objective": "dagger",
                "oracle": "bleu",
                "dagger_warmup_steps": 0.5,
                "dagger_beta": 0.0,
                "dagger_beta_schedule": "constant",
            },
        },
    },
}
"""Per task: model families, the headline metric (and others reported on test), steps, and the settings of each
method. Step-valued settings given as a fraction (< 1 where the setting counts steps) are that fraction of the run's
steps; with a wall-clock budget, of the steps teacher forcing (`mle`, run first) took in that budget."""

CONTINUATION_LR = 3e-4
"""The peak learning rate of runs that start from a warm start (1e-3 from a fresh model)."""

CURVE_EVAL_SIZE = 500
"""Evaluations during training (the curves) use the first examples of the validation split; the final figures use
the whole validation and test splits."""

EVAL_BATCH_SIZE = 256
"""Sentences per generation batch in evaluation: greedy decoding of the tiny models costs about the same per step for
64 or 256 sentences on a CPU, and a batch decodes until its longest output stops."""

_STEP_SETTINGS = ("sm_bc_steps", "sm_bc_anneal_steps", "dagger_warmup_steps")


def data_arguments(task: str, shared: Path, quick: bool) -> tuple[DataArguments, str]:
    """The data of a task's benchmark, and a description of it. Raises FileNotFoundError without the real data."""
    eval_size = 200 if quick else None
    if task == "arithmetic":
        args = DataArguments(
            task="arithmetic",
            dataset_name="synthetic",
            synthetic_train_size=2000 if quick else 10000,
            synthetic_eval_size=200 if quick else 1000,
            max_target_length=16,
        )
        return args, "arithmetic, generated by the package (base 10, operands of 1 to 3 digits, + and -)"
    if task == "ner":
        folder = shared / "conll2003"
        if not (folder / "train.txt").exists():
            raise FileNotFoundError(f"CoNLL-2003 not found at {folder} (set HF_SEQOBJ_DATA)")
        args = DataArguments(
            task="ner",
            train_file=str(folder / "train.txt"),
            validation_file=str(folder / "valid.txt"),
            test_file=str(folder / "test.txt"),
            max_train_samples=2000 if quick else None,
            max_eval_samples=eval_size,
            max_source_length=128,
            max_target_length=128,
            truncate_long_examples=True,
        )
        return args, f"CoNLL-2003 ({folder}: train.txt, valid.txt, test.txt)"
    folder = shared / "multi30k"
    if not (folder / "train.en").exists():
        raise FileNotFoundError(f"Multi30k not found at {folder} (set HF_SEQOBJ_DATA)")
    args = DataArguments(
        task="translation",
        train_file=str(folder / "train"),
        validation_file=str(folder / "val"),
        test_file=str(folder / "test_2016_flickr"),
        source_lang="en",
        target_lang="de",
        max_train_samples=2000 if quick else None,
        max_eval_samples=eval_size,
        max_source_length=64,
        max_target_length=64,
        truncate_long_examples=True,
    )
    return args, f"Multi30k en-de ({folder}: train, val, test_2016_flickr)"


class _Clock(TrainerCallback, ExportableState):
    """Training time (evaluation excluded), the curve of the validation metric, and the wall-clock budget.

    Its state goes into the Trainer's checkpoints (`ExportableState`), so that a resumed run keeps its time and curve.
    """

    def __init__(self, metric: str, budget_seconds: float | None, eval_points: int = 5):
        self.metric_name = metric
        self.metric = f"eval_{metric}"
        self.budget = budget_seconds
        self.eval_points = eval_points
        self.eval_every = None if budget_seconds is None else budget_seconds / eval_points
        self.next_eval = self.eval_every
        self.seconds = 0.0
        self.start = None
        self.curve: list[dict] = []

    def state(self) -> dict:
        return {
            "args": {"metric": self.metric_name, "budget_seconds": self.budget, "eval_points": self.eval_points},
            "attributes": {"seconds": self.seconds, "next_eval": self.next_eval, "curve": self.curve},
        }

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self.start
        if self.budget is None:
            return
        if self.seconds >= self.next_eval:  # with a budget, the curve's points are evenly spaced in time
            control.should_evaluate = True
            self.next_eval += self.eval_every
        if self.seconds >= self.budget:
            control.should_training_stop = True
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and self.metric in metrics:
            self.curve.append({"step": state.global_step, "seconds": self.seconds, "value": metrics[self.metric]})


def resolve(settings: dict, steps: int) -> dict:
    """Step-valued settings given as fractions of the run become step counts."""
    resolved = dict(settings)
    for key in _STEP_SETTINGS:
        if key in resolved and isinstance(resolved[key], float) and resolved[key] < 1:
            resolved[key] = int(resolved[key] * steps)
    if resolved.get("ss_schedule") == "linear" and "ss_c" in resolved:  # eps falls over a fraction of the run
        resolved["ss_c"] = (resolved.get("ss_k", 1.0) - resolved.get("ss_eps_min", 0.0)) / (resolved["ss_c"] * steps)
    return resolved


def run_one(
    *,
    family: str,
    method: str,
    settings: dict,
    seed: int,
    steps: int,
    budget: float | None,
    schedule_steps: int,
    task_name: str,
    data_args: DataArguments,
    spec: dict,
    workdir: Path,
    batch_size: int,
    size: str,
    device: str = "cpu",
    start_from: Path | None = None,
    save_to: Path | None = None,
):
    """Trains one method from the seed's initial model; returns its row (metrics, times, curve).

    `task_name` to `device` are the same for every run of a benchmark. `schedule_steps` is the run length that
    step-valued settings given as fractions refer to: `steps`, or with a budget the number of steps teacher forcing
    took in it. `start_from`: a warm-start checkpoint to train from instead of the seed's fresh model; `save_to`:
    where to save the trained model (a warm start). A warm start saves a checkpoint every tenth of its steps under
    `workdir/runs` and, run again, resumes from the last one (its `train_seconds` and curve included).
    """
    set_seed(seed)
    task = get_task(data_args)
    splits = task.load()
    model_args = ModelArguments(architecture=family, model_size=size, tokenizer_type=spec["tokenizer"])
    initial = workdir / f"{family}_seed{seed}"
    if not (initial / "initial_model").exists():
        prepare_model(model_args, task, splits, str(initial), seed)
    model_args = ModelArguments(model_name_or_path=str(start_from or initial / "initial_model"))
    model, tokenizer = prepare_model(model_args, task, splits, str(initial), seed)
    tokenized = task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder)
    args_class = training_arguments_class(model_args)
    generation = (
        {"generation_max_new_tokens": data_args.max_target_length}
        if family == "gpt2"
        else {"generation_max_length": data_args.max_target_length}
    )
    args = args_class(
        output_dir=str(workdir / "runs" / f"{family}_{method.replace(' ', '_')}_seed{seed}"),
        max_steps=steps if budget is None else 10**7,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=CONTINUATION_LR if start_from is not None else 1e-3,
        warmup_steps=min(100, steps // 10),
        lr_scheduler_type="linear" if budget is None else "constant_with_warmup",
        seed=seed,
        train_sampling_strategy=spec.get("train_sampling_strategy", "random"),
        eval_strategy="steps",
        eval_steps=max(1, steps // 5) if budget is None else 10**7,  # with a budget, `_Clock` evaluates
        logging_steps=max(1, schedule_steps // 20),
        # a warm start (long) saves checkpoints in the workdir and resumes from the last one
        save_strategy="no" if save_to is None else "steps",
        save_steps=max(1, steps // 10),
        save_total_limit=1,
        restore_callback_states_from_checkpoint=True,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        predict_with_generate=True,
        **generation,
        **resolve(settings, schedule_steps),
    )
    clock = _Clock(spec["metric"], budget)
    trainer = build_trainer(model, tokenizer, task, tokenized, args)
    trainer.eval_dataset = tokenized["validation"].select(range(min(CURVE_EVAL_SIZE, len(tokenized["validation"]))))
    trainer.add_callback(clock)
    checkpoint = None
    if save_to is not None and Path(args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(args.output_dir)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    clock = next(c for c in trainer.callback_handler.callbacks if isinstance(c, _Clock))  # restored: a new one
    wall = time.perf_counter() - started
    row = {
        "task": task_name,
        "family": family,
        "method": method,
        "seed": seed,
        "settings": resolve(settings, schedule_steps),
        "train_sampling_strategy": args.train_sampling_strategy,
        "steps": result.global_step,
        "train_seconds": clock.seconds,
        "wall_seconds": wall,
        "seconds_per_step": clock.seconds / max(1, result.global_step),
        "curve": clock.curve,
    }
    if checkpoint is not None:  # wall_seconds covers this session's part; train_seconds the whole run
        row["resumed_from"] = Path(checkpoint).name
    trainer.remove_callback(clock)  # the curve holds the evaluations during training only
    if save_to is not None:
        trainer.save_model(str(save_to))
    row["validation"] = trainer.evaluate(tokenized["validation"])
    row["test"] = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    if spec.get("sampled_eval") and family == "gpt2":
        trainer.args.generation_do_sample = True
        row["test_sampled"] = trainer.evaluate(tokenized["test"], metric_key_prefix="test_sampled")
        trainer.args.generation_do_sample = False
    extras = [e for e in trainer.state.log_history if "eval_backspace_rate" in e or "test_backspace_rate" in e]
    row["logged_eval"] = extras[-3:]
    row["examples"] = {split: len(dataset) for split, dataset in splits.items()}
    return row


def quality(
    task_name: str,
    seeds: int,
    budget_minutes: float | None,
    quick: bool,
    shared: Path,
    out_dir: Path,
    batch_size: int,
    size: str,
    families: list[str] | None,
    methods: list[str] | None,
    environment: dict,
    warm_start_steps: int = 0,
    device: str = "cpu",
    resume: bool = False,
    workdir: Path | None = None,
) -> list[dict]:
    """Runs the benchmark of a task and writes its JSON and report (see the module docstring).

    With `resume`, the runs already in the task's JSON (same family, method and seed) are kept and not run again,
    so a long benchmark can be spread over several sessions; `workdir` keeps the initial models and warm starts
    between them (they are otherwise rebuilt, identically, from the seeds), and an interrupted warm start resumes
    there from its last checkpoint.

    With `warm_start_steps`, each family is first trained by teacher forcing for that many steps (linear decay)
    from seed 0's fresh model; every method and seed then starts from that checkpoint, and DAgger's warm-up is 0
    (the warm start is its warm-up). The seeds then vary the continuation (data order, sampling), not the start.
    """
    spec = TASKS[task_name]
    data_args, data_name = data_arguments(task_name, shared, quick)
    steps = spec["quick_steps"] if quick else spec["steps"]
    budget = budget_minutes * 60 if budget_minutes else None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"hf_seqobj_quality_{task_name}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "results" / f"quality_{task_name}{'_quick' if quick else ''}.json"
    done = json.loads(partial.read_text(encoding="utf-8")) if resume and partial.exists() else []
    chosen = {name: s for name, s in spec["methods"].items() if methods is None or name in methods}
    if budget is not None and "mle" not in chosen:
        raise ValueError(
            f"--budget-minutes needs the method 'mle' (its step count in the budget scales the other methods' "
            f"schedules); --methods gave {sorted(chosen)}."
        )
    rows = list(done)
    bench = dict(
        task_name=task_name,
        data_args=data_args,
        spec=spec,
        workdir=workdir,
        batch_size=batch_size,
        size=size,
        device=device,
    )
    for family in families or spec["families"]:
        described = describe_model(family, size)
        start_from = None
        if warm_start_steps:
            start_from = workdir / f"{family}_warm_start"
        if warm_start_steps and not (start_from / "config.json").exists():
            row = run_one(
                family=family,
                method="warm start (mle)",
                settings={"objective": "mle"},
                seed=0,
                steps=warm_start_steps,
                budget=None,
                schedule_steps=warm_start_steps,
                save_to=start_from,
                **bench,
            )
            row.update(role="warm_start", data=data_name, model=described, environment=environment)
            rows = [r for r in rows if (r.get("role"), r["family"]) != ("warm_start", family)] + [row]
            print(f"{task_name} {family} warm start: val {row['validation']}", flush=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        for seed in range(seeds):
            schedule_steps = steps
            for method, settings in sorted(chosen.items(), key=lambda item: item[0] != "mle"):
                previous = [
                    r
                    for r in done
                    if (r["family"], r["method"], r["seed"], r.get("role")) == (family, method, seed, None)
                ]
                if previous:
                    print(f"{task_name} {family} {method} seed {seed}: kept from {partial}", flush=True)
                    if budget is not None and method == "mle":
                        schedule_steps = previous[0]["steps"]
                    continue
                if warm_start_steps and "dagger_warmup_steps" in settings:
                    settings = {**settings, "dagger_warmup_steps": 0}
                row = run_one(
                    family=family,
                    method=method,
                    settings=settings,
                    seed=seed,
                    steps=steps,
                    budget=budget,
                    schedule_steps=schedule_steps,
                    start_from=start_from,
                    **bench,
                )
                if budget is not None and method == "mle":
                    schedule_steps = row["steps"]
                row["data"] = data_name
                row["model"] = described
                row["budget_minutes"] = budget_minutes
                row["warm_start_steps"] = warm_start_steps
                row["environment"] = environment
                rows.append(row)
                metric = spec["metric"]
                print(
                    f"{task_name} {family} {method:<24} seed {seed}: val {metric} "
                    f"{row['validation'].get('eval_' + metric, float('nan')):.4f}  test "
                    f"{row['test'].get('test_' + metric, float('nan')):.4f}  {row['seconds_per_step'] * 1000:.0f} "
                    "ms/step",
                    flush=True,
                )
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    write_report(task_name, rows, spec, out_dir, quick, budget_minutes, steps, batch_size)
    return rows


def _at_equal_steps(row: dict, rows: list[dict]) -> float | None:
    """The row's last curve value minus teacher forcing's (same family and seed) at the same step count.

    Teacher forcing's curve is interpolated linearly between its points; None where it did not reach the step.
    """
    base = next(
        (r for r in rows if (r["family"], r["seed"], r["method"]) == (row["family"], row["seed"], "mle")), None
    )
    if base is None or not row["curve"] or not base["curve"]:
        return None
    step, value = row["curve"][-1]["step"], row["curve"][-1]["value"]
    points = [(0, 0.0)] + [(p["step"], p["value"]) for p in base["curve"]]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return value - (v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0))
    return None


def _mean_std(values: list[float], signed: bool = False) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    sign = "+" if signed else ""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:{sign}.4f}"
    return f"{statistics.mean(values):{sign}.4f} ± {statistics.stdev(values):.4f}"


def write_report(task_name, rows, spec, out_dir: Path, quick, budget_minutes, steps, batch_size) -> Path:
    """The markdown report with its tables and PNG plots (matplotlib, when installed)."""
    metric = spec["metric"]
    suffix = "_quick" if quick else ""
    lines = [f"# Quality: {task_name}{' (quick)' if quick else ''}", ""]
    warm = [row for row in rows if row.get("role") == "warm_start"]
    rows = [row for row in rows if row.get("role") != "warm_start"]
    first = rows[0]
    env = first["environment"]
    seeds = sorted({row["seed"] for row in rows})
    peak = CONTINUATION_LR if warm else 1e-3
    lines += [
        f"- Data: {first['data']}; examples: {first['examples']}.",
        f"- Models: {', '.join(sorted({row['model'] for row in rows}))}, trained from scratch; "
        + (
            f"each family first by teacher forcing for {warm[0]['steps']} steps (linear decay) from seed 0's fresh "
            "model: this warm start is shared by every method and seed, and the seeds vary the continuation (data "
            f"order, sampling); they train at a peak learning rate of {CONTINUATION_LR}. DAgger's warm-up is 0 "
            "after it. Warm start: "
            + "; ".join(
                f"{w['family']} val {metric} {w['validation'].get('eval_' + metric, float('nan')):.4f}, test "
                f"{metric} {w['test'].get('test_' + metric, float('nan')):.4f} ({w['train_seconds'] / 60:.1f} min)"
                for w in warm
            )
            + "."
            if warm
            else "one initial model per seed, shared by every method."
        ),
        f"- Seeds: {seeds}. Budget: "
        + (
            f"{budget_minutes} minutes of training per run (evaluation excluded), batch {batch_size}, learning rate "
            f"{peak} (constant after warm-up); step-valued settings given as fractions are fractions of the steps "
            "teacher forcing took in the budget (same family and seed)"
            if budget_minutes
            else f"{steps} optimizer steps per run, batch {batch_size}, learning rate {peak} (linear decay, warm-up)"
        )
        + ".",
        f"- Training batches: {first.get('train_sampling_strategy', 'random')} sampling.",
        f"- Curves: validation {metric} on the first {CURVE_EVAL_SIZE} validation examples, "
        + ("5 times in each run's budget" if budget_minutes else "every fifth of the run")
        + "; the tables use the whole validation and test splits. Greedy decoding.",
        "- Settings per method: "
        + "; ".join(
            f"{method}: "
            + ", ".join(f"{k}={v}" for k, v in next(r for r in rows if r["method"] == method)["settings"].items())
            for method in dict.fromkeys(row["method"] for row in rows)
        )
        + " (as resolved for the first run).",
        f"- Machine: {env.get('processor') or env.get('machine')}, {env.get('cpu_count')} cores"
        + (f", GPU {env['gpu']}" if env.get("gpu") else ", CPU only")
        + f"; python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}.",
        f"- Reproduce: `python scripts/benchmark.py quality --task {task_name} --seeds {len(seeds)}"
        + (" --quick" if quick else "")
        + (f" --budget-minutes {budget_minutes}" if budget_minutes else "")
        + (f" --warm-start-steps {warm[0]['steps']}" if warm else "")
        + (
            f" --families {','.join(sorted({row['family'] for row in rows}))}"
            if sorted({row["family"] for row in rows}) != sorted(spec["families"])
            else ""
        )
        + "`.",
        "",
    ]
    sampled = any("test_sampled" in row for row in rows)
    extra = spec.get("extra_metrics", [])
    header = ["family", "method", f"val {metric}", f"test {metric}", *[f"test {name}" for name in extra]]
    if sampled:
        header.append(f"test {metric} (sampled, T=1)")
    backspace = any("test_backspace_rate" in row["test"] for row in rows)
    if backspace:
        header.append("backspace rate (test, greedy" + (" / sampled)" if sampled else ")"))
    header += ["steps", "s/step", f"vs mle (test {metric}, mean)"]
    if budget_minutes:
        header.append(f"vs mle at equal steps (val {metric}, first {CURVE_EVAL_SIZE})")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family in sorted({row["family"] for row in rows}):
        base = [r["test"].get(f"test_{metric}") for r in rows if r["family"] == family and r["method"] == "mle"]
        base_mean = statistics.mean(base) if base else None
        for method in dict.fromkeys(row["method"] for row in rows if row["family"] == family):
            group = [r for r in rows if r["family"] == family and r["method"] == method]
            val = [r["validation"].get(f"eval_{metric}") for r in group]
            test = [r["test"].get(f"test_{metric}") for r in group]
            cells = [family, method, _mean_std(val), _mean_std(test)]
            cells += [_mean_std([r["test"].get(f"test_{name}") for r in group]) for name in extra]
            if sampled:
                cells.append(_mean_std([r.get("test_sampled", {}).get(f"test_sampled_{metric}") for r in group]))
            if backspace:
                rates = [_mean_std([r["test"].get("test_backspace_rate") for r in group])]
                if sampled:
                    rates.append(
                        _mean_std([r.get("test_sampled", {}).get("test_sampled_backspace_rate") for r in group])
                    )
                cells.append(" / ".join(rates))
            cells.append(f"{statistics.mean(r['steps'] for r in group):.0f}")
            cells.append(f"{statistics.mean(r['seconds_per_step'] for r in group):.3f}")
            delta = statistics.mean(test) - base_mean if base_mean is not None and test else None
            cells.append("" if delta is None or method == "mle" else f"{delta:+.4f}")
            if budget_minutes:
                equal = [_at_equal_steps(r, rows) for r in group]
                cells.append("" if method == "mle" else _mean_std(equal, signed=True))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per seed (test):", "", "| family | method | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|---|---|" + "---|" * len(seeds))
    for family in sorted({row["family"] for row in rows}):
        for method in dict.fromkeys(row["method"] for row in rows if row["family"] == family):
            group = [r for r in rows if (r["family"], r["method"]) == (family, method)]
            by_seed = {r["seed"]: r["test"].get(f"test_{metric}") for r in group}
            lines.append(
                f"| {family} | {method} | "
                + " | ".join("" if by_seed.get(s) is None else f"{by_seed[s]:.4f}" for s in seeds)
                + " |"
            )
    plots = _plots(task_name, rows, metric, out_dir, suffix)
    if plots:
        lines += ["", *[f"![{name}]({name})" for name in plots]]
    report = out_dir / f"quality_{task_name}{suffix}.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _plots(task_name, rows, metric, out_dir: Path, suffix: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    families = sorted({row["family"] for row in rows})
    figure, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4), squeeze=False)
    for axis, family in zip(axes[0], families, strict=True):
        for method in dict.fromkeys(row["method"] for row in rows if row["family"] == family):
            for index, row in enumerate(r for r in rows if (r["family"], r["method"]) == (family, method)):
                points = row["curve"]
                axis.plot(
                    [p["seconds"] for p in points],
                    [p["value"] for p in points],
                    color=f"C{list(dict.fromkeys(r['method'] for r in rows)).index(method)}",
                    alpha=0.8,
                    label=method if index == 0 else None,
                )
        axis.set_title(f"{task_name}, {family}: validation {metric} against training time")
        axis.set_xlabel("training seconds (evaluation excluded)")
        axis.set_ylabel(metric)
        axis.legend(fontsize="small")
    name = f"quality_{task_name}{suffix}_curves.png"
    figure.tight_layout()
    figure.savefig(out_dir / name, dpi=100)
    plt.close(figure)
    names.append(name)
    figure, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4), squeeze=False)
    for axis, family in zip(axes[0], families, strict=True):
        methods = list(dict.fromkeys(row["method"] for row in rows if row["family"] == family))
        for position, method in enumerate(methods):
            values = [r["test"].get(f"test_{metric}") for r in rows if (r["family"], r["method"]) == (family, method)]
            axis.scatter([position] * len(values), values, color=f"C{position}")
        axis.set_xticks(range(len(methods)), methods, rotation=20, fontsize="small")
        axis.set_title(f"{task_name}, {family}: test {metric} per seed")
    name = f"quality_{task_name}{suffix}_seeds.png"
    figure.tight_layout()
    figure.savefig(out_dir / name, dpi=100)
    plt.close(figure)
    names.append(name)
    return names
