"""The protocol of the quality benchmark: warm starts cached by their settings, continuations per method, grid
point and seed, the grid choice on validation and the seeds of the chosen point scored on test (see
scripts/quality.py). Every run's predictions are kept in the workdir."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from filelock import FileLock
from transformers import EarlyStoppingCallback, set_seed
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint

from benchmarks.protocol.settings import CONTROL, CURVE_EVAL_SIZE, RESAMPLES, ROOT, TASKS, shared_data
from hf_seqobj.arguments import DataArguments, ModelArguments
from hf_seqobj.run import build_trainer, prepare_model, training_arguments_class
from hf_seqobj.tasks import Task, get_task
from hf_seqobj.tasks.base import OUTPUT_DIAGNOSTICS


_STEP_SETTINGS = ("sm_bc_steps", "sm_bc_anneal_steps", "dagger_warmup_steps")


def resolve(settings: dict, steps: int) -> dict:
    """Step-valued settings given as fractions of the run become step counts; a linear scheduled-sampling `ss_c`
    given as a fraction of the run becomes the slope that takes eps from `ss_k` to `ss_eps_min` in that fraction."""
    resolved = dict(settings)
    for key in _STEP_SETTINGS:
        if key in resolved and isinstance(resolved[key], float) and resolved[key] < 1:
            resolved[key] = int(resolved[key] * steps)
    if resolved.get("ss_schedule") == "linear" and "ss_c" in resolved:
        resolved["ss_c"] = (resolved.get("ss_k", 1.0) - resolved.get("ss_eps_min", 0.0)) / (resolved["ss_c"] * steps)
    return resolved


def point_name(point: dict) -> str:
    """A grid point as a short, path-safe name: `dagger_beta=0.5,rollin=sample`; `default` for no overrides."""
    # the schedule is shown only where it is not implied (beta 0 is constant, beta > 0 decays linearly by default)
    implied = "linear" if point.get("dagger_beta", 0) > 0 else "constant"
    shown = {k: v for k, v in point.items() if k != "dagger_beta_schedule" or v != implied}
    return ",".join(f"{k}={v}" for k, v in shown.items()) or "default"


def git_commit(root: Path = ROOT) -> str:
    """The commit the script runs at, with `+dirty` when tracked files differ from it; `unknown` outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _file_digest(path: str) -> str:
    """The content hash of a data file, or of every file of a translation prefix (PREFIX.SRC and PREFIX.TGT)."""
    files = [Path(path)] if Path(path).is_file() else sorted(Path(path).parent.glob(Path(path).name + ".*"))
    digest = hashlib.sha1()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


TRAINING_DIAGNOSTICS = (
    "oracle_agreement",
    "oracle_score",
    "rollin_length",
    "dagger_beta",
    "rollin_fraction",
    "running_agreement",
)
"""The training logs a continuation's row keeps the mean of (where its objective logs them): DAgger's agreement of
the model's greedy tokens with the oracle's labels, the score of the best whole completion the oracle found from the
roll-ins (the best it could teach from there), the roll-ins' length, beta, the share of examples rolled in (where
`rollin_fraction` < 1) and the running agreement that an agreement schedule follows."""


def _curve_point(entry: dict, metric: str) -> dict:
    """One evaluation of a continuation's curve: its step, the headline metric and the output diagnostics."""
    point = {"step": entry["step"], "value": entry[metric]}
    point.update({key: entry[f"eval_{key}"] for key in OUTPUT_DIAGNOSTICS if f"eval_{key}" in entry})
    return point


def _training_diagnostics(log_history: list[dict]) -> dict[str, float]:
    """The mean over a run's training logs of each of :data:`TRAINING_DIAGNOSTICS` it logged."""
    means = {}
    for key in TRAINING_DIAGNOSTICS:
        values = [e[key] for e in log_history if key in e and "eval_loss" not in e]
        if values:
            means[key] = statistics.mean(values)
    return means


def _write_json(path: Path, value) -> None:
    """Writes JSON atomically (a reader, or another benchmark process, never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


# Runs


@dataclass
class Benchmark:
    """One task's benchmark: data, sizes and the settings of warm starts and continuations; runs are kept in
    `workdir`."""

    task_name: str
    workdir: Path
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    seeds: int = 3
    sizes: dict = field(default_factory=dict)
    warm_start: dict = field(default_factory=dict)
    warm_start_lr: dict = field(default_factory=dict)
    continuation: dict = field(default_factory=dict)
    batch_size: int = 32
    device: str = "cpu"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    curve_eval_size: int = CURVE_EVAL_SIZE
    resamples: int = RESAMPLES
    methods: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task_name not in TASKS:
            raise ValueError(f"Unknown task {self.task_name!r}; the quality benchmark has {sorted(TASKS)}.")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}.")
        self.spec = TASKS[self.task_name]
        self.sizes = {**self.spec["sizes"], **self.sizes}
        # the warm starts' learning rate per family: the task's (`warm_start_lr` beside `warm_start`), unless one
        # rate is given for all (`warm_start["learning_rate"]`); then the rates given per family
        rates = {} if "learning_rate" in self.warm_start else self.spec.get("warm_start_lr", {})
        self.warm_start = {**self.spec["warm_start"], **self.warm_start}
        self.warm_start_lr = {
            **{f: self.warm_start["learning_rate"] for f in self.spec["families"]},
            **rates,
            **self.warm_start_lr,
        }
        for family, rate in self.warm_start_lr.items():
            if family not in self.spec["families"] or not rate > 0:
                raise ValueError(
                    f"warm_start_lr {family}={rate}: expected a family of {self.spec['families']} and a rate > 0."
                )
        self.continuation = {**self.spec["continuation"], **self.continuation}
        self.methods = self.methods or self.spec["methods"]
        for name, method in self.methods.items():
            if not 1 <= len(method["grid"]) <= 4:
                raise ValueError(f"Method {name!r} has a grid of {len(method['grid'])} points; 1 to 4 are allowed.")
        if CONTROL not in self.methods:
            raise ValueError(f"The methods must include the control {CONTROL!r}; got {sorted(self.methods)}.")
        self.workdir = Path(self.workdir)
        self.commit = git_commit()

    # --- data -----------------------------------------------------------------------------------------------
    def data_arguments(self) -> DataArguments:
        """The task's data: the files given, else the task's files under the shared data folder (`HF_SEQOBJ_DATA`,
        default `../shared/data`); arithmetic is generated and takes no files."""
        given = {f"{split}_file": getattr(self, f"{split}_file") for split in ("train", "validation", "test")}
        if self.spec["files"] is None:
            named = [f"--{key.replace('_', '-')}" for key, path in given.items() if path]
            if named:
                raise ValueError(f"Task {self.task_name!r} generates its data; {named} cannot be used with it.")
            files = {}
        else:
            files = {
                key: path or str(shared_data() / name) for (key, path), name in zip(given.items(), self.spec["files"])
            }
        for key, path in files.items():
            if not (Path(path).is_file() or list(Path(path).parent.glob(Path(path).name + ".*"))):
                raise FileNotFoundError(f"--{key.replace('_', '-')} {path!r} does not exist (nor files {path}.*).")
        return DataArguments(
            **self.spec["data"],
            **files,
            max_train_samples=self.max_train_samples,
            max_eval_samples=self.max_eval_samples,
        )

    def _task(self):
        data_args = self.data_arguments()
        task = get_task(data_args)
        return data_args, task, task.load()

    def scoring_task(self) -> Task:
        """The task as the benchmark sets it up (its data not loaded): it scores the saved predictions."""
        return get_task(self.data_arguments())

    # --- warm start ---------------------------------------------------------------------------------------
    def warm_settings(self, family: str) -> dict:
        data_args = self.data_arguments()
        files = {
            k: getattr(data_args, k) for k in ("train_file", "validation_file", "test_file") if getattr(data_args, k)
        }
        return {
            "task": self.task_name,
            "family": family,
            "size": self.sizes[family],
            "tokenizer": self.spec["tokenizer"],
            "data": {**self.spec["data"], "max_train_samples": self.max_train_samples},
            "files": {k: {"path": str(v), "sha1": _file_digest(v)} for k, v in files.items()},
            "max_eval_samples": self.max_eval_samples,
            "curve_eval_size": self.curve_eval_size,
            "batch_size": self.batch_size,
            **({} if self.spec.get("group_by_length", True) else {"group_by_length": False}),
            **self.warm_start,
            "learning_rate": self.warm_start_lr[family],
        }

    def warm_dir(self, family: str) -> Path:
        """`workdir/warm/{family}_{size}_{digest}`: the digest covers every setting and the data files' contents
        (not their paths)."""
        settings = self.warm_settings(family)
        keyed = {**settings, "files": {k: v["sha1"] for k, v in settings["files"].items()}}
        return self.workdir / "warm" / f"{family}_{settings['size']}_{_digest(keyed)}"

    def _generation(self, family: str, data_args: DataArguments) -> dict:
        if family == "gpt2":
            return {"generation_max_new_tokens": data_args.max_target_length}
        return {"generation_max_length": data_args.max_target_length}

    def _eval_sets(self, tokenized: DatasetDict) -> dict[str, tuple[Dataset, list[int]]]:
        """The evaluation sets, each sorted by length (longest first) for batched generation, with the original index
        of each sorted row: `curve` (the first `curve_eval_size` validation examples), `validation`, `test`."""
        sets = {}
        sources = {
            "curve": tokenized["validation"].select(range(min(self.curve_eval_size, len(tokenized["validation"])))),
            "validation": tokenized["validation"],
            "test": tokenized["test"],
        }
        for name, dataset in sources.items():
            lengths = [len(ids) for ids in dataset["input_ids"]]
            order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
            sets[name] = (dataset.select(order), order)
        return sets

    def run_warm_start(self, family: str) -> dict:
        """Trains (or resumes, or reuses) the family's warm start; returns its row."""
        directory = self.warm_dir(family)
        with _exclusive(directory):
            return self._run_warm_start(family, directory)

    def _run_warm_start(self, family: str, directory: Path) -> dict:
        if (directory / "result.json").exists():
            return json.loads((directory / "result.json").read_text(encoding="utf-8"))
        settings = self.warm_settings(family)
        _write_json(directory / "settings.json", settings)
        set_seed(0)
        data_args, task, splits = self._task()
        if not (directory / "initial_model" / "config.json").exists():
            model_args = ModelArguments(architecture=family, model_size=settings["size"], **self.spec["tokenizer"])
            prepare_model(model_args, task, splits, str(directory), 0)
        model_args = ModelArguments(model_name_or_path=str(directory / "initial_model"))
        model, tokenizer = prepare_model(model_args, task, splits, str(directory), 0)
        if not (directory / "tokenized" / "dataset_dict.json").exists():
            task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder).save_to_disk(
                str(directory / "tokenized")
            )
        tokenized = load_from_disk(str(directory / "tokenized"))
        eval_sets = self._eval_sets(tokenized)
        steps, eval_steps = self.warm_start["steps"], self.warm_start["eval_steps"]
        args = training_arguments_class(model_args)(
            output_dir=str(directory / "run"),
            max_steps=steps,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.spec["eval_batch_size"],
            learning_rate=settings["learning_rate"],
            lr_scheduler_type="linear",
            warmup_steps=self.warm_start["warmup_steps"],
            seed=0,
            train_sampling_strategy="sequential",  # the order is drawn below, grouped by length
            eval_strategy="steps",
            eval_steps=eval_steps,
            save_strategy="steps",
            save_steps=eval_steps,
            save_total_limit=2,  # the best and the last
            load_best_model_at_end=True,
            metric_for_best_model=self.spec["metric"],
            greater_is_better=True,
            logging_steps=eval_steps,
            report_to="none",
            disable_tqdm=True,
            use_cpu=self.device == "cpu",
            predict_with_generate=True,
            objective="mle",
            **self._generation(family, data_args),
        )
        train = ordered_train(
            tokenized["train"], steps, self.batch_size, seed=0, by_length=self.spec.get("group_by_length", True)
        )
        trainer = build_trainer(
            model, tokenizer, task, DatasetDict({"train": train, "validation": eval_sets["curve"][0]}), args
        )
        patience = self.warm_start.get("patience")
        stopper = _EarlyStopping(early_stopping_patience=patience) if patience else None
        if stopper is not None:
            trainer.add_callback(stopper)
        checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        trainer.train(resume_from_checkpoint=checkpoint)
        _check_finished(trainer, steps, directory, stopper)
        trainer.save_model(str(directory / "best"))
        metric = f"eval_{self.spec['metric']}"
        curve = [
            {"step": e["step"], "value": e[metric], "loss": e.get("eval_loss")}
            for e in trainer.state.log_history
            if metric in e
        ]
        best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])
        row = {
            "task": self.task_name,
            "family": family,
            "role": "warm_start",
            "size": settings["size"],
            "model": describe(model, family, settings["size"]),
            "key": directory.name,
            "settings": settings,
            "steps": steps,
            "trained_steps": trainer.state.global_step,
            "best_step": best_step,
            "best_curve_value": trainer.state.best_metric,
            "curve": curve,
            "examples": {split: len(dataset) for split, dataset in tokenized.items()},
            "commit": self.commit,
        }
        if checkpoint is not None:
            row["resumed_from"] = Path(checkpoint).name
        for split in ("validation", "test"):
            row[split] = self._predict(trainer, task, eval_sets[split], directory, split)
        _write_json(directory / "result.json", row)
        return row

    # --- continuation -------------------------------------------------------------------------------------
    def run_dir(self, family: str, method: str, point: dict, seed: int, learning_rate: float) -> Path:
        continuation = {**self.continuation, "batch_size": self.batch_size, "learning_rate": learning_rate}
        return (
            self.workdir
            / "runs"
            / self.warm_dir(family).name
            / f"c{_digest(continuation)}"
            / method
            / point_name(point)
            / f"seed{seed}"
        )

    def run_continuation(
        self, family: str, method: str, point: dict, seed: int, learning_rate: float, role: str
    ) -> dict:
        """Continues the family's warm start with one method at one grid point and seed (or reuses the finished run);
        scores it on the whole validation split when `role` is `grid`. Returns its row."""
        directory = self.run_dir(family, method, point, seed, learning_rate)
        with _exclusive(directory):
            return self._run_continuation(family, method, point, seed, learning_rate, role, directory)

    def _run_continuation(
        self, family: str, method: str, point: dict, seed: int, learning_rate: float, role: str, directory: Path
    ) -> dict:
        if (directory / "result.json").exists():
            return json.loads((directory / "result.json").read_text(encoding="utf-8"))
        warm = self.warm_dir(family)
        steps = self.continuation["steps"]
        settings = resolve({**self.methods[method]["settings"], **point}, steps)
        settings.pop("learning_rate", None)
        set_seed(seed)
        data_args, task, splits = self._task()
        model_args = ModelArguments(model_name_or_path=str(warm / "best"))
        model, tokenizer = prepare_model(model_args, task, splits, str(directory), seed)
        tokenized = load_from_disk(str(warm / "tokenized"))
        eval_sets = self._eval_sets(tokenized)
        args = training_arguments_class(model_args)(
            output_dir=str(directory / "run"),
            max_steps=steps,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.spec["eval_batch_size"],
            learning_rate=learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=self.continuation["warmup_steps"],
            seed=seed,
            train_sampling_strategy="sequential",
            eval_strategy="steps",
            eval_steps=self.continuation["eval_steps"],
            save_strategy="no",
            logging_steps=self.continuation["eval_steps"],
            report_to="none",
            disable_tqdm=True,
            use_cpu=self.device == "cpu",
            predict_with_generate=True,
            **self._generation(family, data_args),
            **settings,
        )
        train = ordered_train(
            tokenized["train"], steps, self.batch_size, seed=1 + seed, by_length=self.spec.get("group_by_length", True)
        )
        trainer = build_trainer(
            model, tokenizer, task, DatasetDict({"train": train, "validation": eval_sets["curve"][0]}), args
        )
        trainer.train()
        _check_finished(trainer, steps, directory)
        trainer.save_model(str(directory / "model"))
        metric = f"eval_{self.spec['metric']}"
        row = {
            "task": self.task_name,
            "family": family,
            "method": method,
            "point": point_name(point),
            "grid_point": point,
            "settings": settings,
            "learning_rate": learning_rate,
            "seed": seed,
            "role": role,
            "steps": trainer.state.global_step,
            "warm_start": warm.name,
            "continuation": {**self.continuation, "batch_size": self.batch_size},
            "curve": [_curve_point(e, metric) for e in trainer.state.log_history if metric in e],
            "training": _training_diagnostics(trainer.state.log_history),
            "commit": self.commit,
        }
        if role == "grid":
            row["validation"] = self._predict(trainer, task, eval_sets["validation"], directory, "validation")
        _write_json(directory / "result.json", row)
        return row

    def score_test(self, family: str, row: dict) -> dict:
        """Scores a finished continuation's saved model on the whole test split (once: kept in its result.json)."""
        if "test" in row:
            return row
        directory = self.run_dir(family, row["method"], row["grid_point"], row["seed"], row["learning_rate"])
        with _exclusive(directory):
            stored = json.loads((directory / "result.json").read_text(encoding="utf-8"))
            return stored if "test" in stored else self._score_test(family, row, directory)

    def _score_test(self, family: str, row: dict, directory: Path) -> dict:
        data_args, task, splits = self._task()
        model_args = ModelArguments(model_name_or_path=str(directory / "model"))
        model, tokenizer = prepare_model(model_args, task, splits, str(directory), row["seed"])
        tokenized = load_from_disk(str(self.warm_dir(family) / "tokenized"))
        args = training_arguments_class(model_args)(
            output_dir=str(directory / "run"),
            per_device_eval_batch_size=self.spec["eval_batch_size"],
            train_sampling_strategy="sequential",
            report_to="none",
            disable_tqdm=True,
            use_cpu=self.device == "cpu",
            predict_with_generate=True,
            **self._generation(family, data_args),
        )
        test = self._eval_sets(tokenized)["test"]
        trainer = build_trainer(model, tokenizer, task, DatasetDict({"test": test[0]}), args)
        row = {**row, "test": self._predict(trainer, task, test, directory, "test")}
        _write_json(directory / "result.json", row)
        return row

    def _predict(
        self, trainer, task: Task, sorted_set: tuple[Dataset, list[int]], directory: Path, split: str
    ) -> dict:
        """Generates on a whole split; saves the predictions (in the split's order, with whether each output
        reached EOS) next to the run as `predictions_{split}.jsonl`, and returns the task's metrics. The texts are
        those the trainer's `compute_metrics` decoded and scored (`task.last_outputs`): the statistics of a run are
        computed from them (:func:`benchmarks.protocol.statistics.run_statistics`)."""
        dataset, order = sorted_set
        metrics = trainer.predict(dataset, metric_key_prefix=split).metrics
        outputs = task.last_outputs
        predictions, references, ended = [None] * len(order), [None] * len(order), [None] * len(order)
        for position, index in enumerate(order):
            predictions[index] = outputs.predictions[position]
            references[index] = outputs.references[position]
            ended[index] = outputs.eos_reached[position]
        with open(directory / f"predictions_{split}.jsonl", "w", encoding="utf-8") as stream:
            for index, (prediction, reference, eos) in enumerate(zip(predictions, references, ended, strict=True)):
                row = {"index": index, "prediction": prediction, "reference": reference, "eos_reached": eos}
                stream.write(json.dumps(row) + "\n")
        result = {key.removeprefix(f"{split}_"): value for key, value in metrics.items()}
        if self.spec.get("sampled_eval"):  # the same split sampled at temperature 1 (seeded)
            set_seed(0)
            trainer.args.generation_do_sample, trainer.args.generation_temperature = True, 1.0
            try:
                sampled = trainer.predict(dataset, metric_key_prefix=f"{split}_sampled").metrics
            finally:
                trainer.args.generation_do_sample = False
            result.update({key.removeprefix(f"{split}_"): value for key, value in sampled.items()})
        return result

    # --- the protocol -----------------------------------------------------------------------------------------
    def grid(self, family: str, method: str, learning_rate: float) -> tuple[list[dict], dict]:
        """Runs (or reuses) a method's grid with seed 0; returns the rows and the chosen one (best whole-validation
        metric; the first point on a tie)."""
        rows = []
        for point in self.methods[method]["grid"]:
            lr = point.get("learning_rate", learning_rate)
            rows.append(self.run_continuation(family, method, point, 0, lr, "grid"))
            print(
                f"{self.task_name} {family} {method} [{rows[-1]['point']}] lr {lr}: validation {self.spec['metric']} "
                f"{rows[-1]['validation'][self.spec['metric']]:.4f}",
                flush=True,
            )
        chosen = max(rows, key=lambda r: (r["validation"][self.spec["metric"]], -rows.index(r)))
        return rows, chosen

    def seeds_of(self, family: str, chosen: dict) -> list[dict]:
        """The chosen point with every seed, each scored on test (seed 0 is the grid's run)."""
        rows = [self.score_test(family, chosen)]
        for seed in range(1, self.seeds):
            row = self.run_continuation(
                family, chosen["method"], chosen["grid_point"], seed, chosen["learning_rate"], "seed"
            )
            rows.append(self.score_test(family, row))
        for row in rows:
            print(
                f"{self.task_name} {family} {row['method']} seed {row['seed']}: test {self.spec['metric']} "
                f"{row['test'][self.spec['metric']]:.4f}",
                flush=True,
            )
        return rows

    def method_names(self, methods: list[str] | None, given_as: str = "methods") -> list[str]:
        """The control, then `methods` (default: all of the task's); an unknown name raises ValueError naming it as
        `given_as` does."""
        names = [CONTROL] + [m for m in (methods or self.methods) if m != CONTROL]
        unknown = sorted(set(names) - set(self.methods))
        if unknown:
            raise ValueError(f"{given_as} {unknown} not in task {self.task_name!r}'s methods {sorted(self.methods)}.")
        return names

    def run(
        self, families: list[str], methods: list[str] | None, stage: str, report: Callable[[], object] | None = None
    ) -> None:
        """Warm starts; then (stage `grid` or `all`) the control's grid and every method's; then (stage `all`) the
        chosen points' seeds and test scores. After each warm start and method, and at the end, `report()` is called
        (the command rewrites the task's report there)."""
        names = self.method_names(methods)
        for family in families:
            row = self.run_warm_start(family)
            print(
                f"{self.task_name} {family} warm start: best step {row['best_step']}, validation "
                f"{self.spec['metric']} {row['validation'][self.spec['metric']]:.4f}, test "
                f"{row['test'][self.spec['metric']]:.4f}",
                flush=True,
            )
            if report is not None:
                report()
        if stage == "warm":
            return
        for family in families:
            _, control = self.grid(family, CONTROL, learning_rate=math.nan)
            if stage == "all":
                self.seeds_of(family, control)
            for method in names[1:]:
                _, chosen = self.grid(family, method, learning_rate=control["learning_rate"])
                if stage == "all":
                    self.seeds_of(family, chosen)
                if report is not None:
                    report()
        if report is not None:
            report()


def _exclusive(directory: Path) -> FileLock:
    """A lock on a warm start's or run's directory, held while it is trained or scored: processes that share a workdir
    (each with its own `--methods` or `--families`) all run the control, and the second to reach a run waits for the
    first and then reuses its result instead of training the same run into the same files."""
    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / ".lock"))


class _EarlyStopping(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback, also when it joins a run resumed from a checkpoint saved without it: the
    Trainer's `_save_checkpoint` then looks its name up in `state.stateful_callbacks` and raises KeyError
    (transformers 5.24), so the entry is made at the start of training."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        return super().on_train_begin(args, state, control, **kwargs)


def _check_finished(trainer, steps: int, directory: Path, stopper: EarlyStoppingCallback | None = None) -> None:
    """Raises when training returned before its last step (a stop signal handled by the Trainer) other than by
    `stopper` (early stopping: the validation metric did not improve on its best for `patience` evaluations): the run
    is then not recorded as finished, and running the command again resumes or repeats it."""
    stopped_early = stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
    if trainer.state.global_step != steps and not stopped_early:
        raise RuntimeError(f"{directory}: training stopped at step {trainer.state.global_step} of {steps}; run again.")


def ordered_train(train: Dataset, steps: int, batch_size: int, seed: int, by_length: bool = True) -> Dataset:
    """The training examples of `steps` batches in the order they are used: per epoch a permutation grouped by length
    (the Trainer's `group_by_length` order; with `by_length=False` a plain random permutation), drawn from (seed,
    epoch) alone; the run reads it sequentially."""
    lengths = [len(ids) for ids in train["input_ids"]]
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch_size:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        if by_length:
            order += get_length_grouped_indices(lengths, batch_size, generator=generator)
        else:
            order += torch.randperm(len(lengths), generator=generator).tolist()
        epoch += 1
    return train.select(order[: steps * batch_size])


def describe(model, family: str, size: str) -> str:
    """`bart mini (d_model 128, 3 encoder + 3 decoder layers, 5.1M parameters)`."""
    config = model.config
    d_model = getattr(config, "d_model", None) or getattr(config, "n_embd", None)
    layers = getattr(config, "num_layers", None) or getattr(config, "encoder_layers", None) or config.n_layer
    stack = f"{layers} layers" if family == "gpt2" else f"{layers} encoder + {layers} decoder layers"
    return f"{family} {size} (d_model {d_model}, {stack}, {model.num_parameters() / 1e6:.1f}M parameters)"


# ----------------------------------------------------------------------------------------------------------------
# Reports
