"""`python scripts/benchmark.py quality --task ner|summarization|translation`: does each objective beat teacher forcing
when it fine-tunes a converged model?

The protocol (one command per report; every finished piece is kept in `--workdir`, so the same command resumes):

1. Warm start. Per model family, teacher forcing on the task's training split, evaluating on the first
   `CURVE_EVAL_SIZE` validation examples every `eval_steps` steps with the task metric through generation, and keeping
   the best checkpoint by that metric (the Trainer's `load_best_model_at_end` / `metric_for_best_model`,
   `save_total_limit=2`). With `--warm-start-patience N` it stops once the metric has not improved on its best for N
   evaluations (transformers' `EarlyStoppingCallback`). An interrupted warm start resumes from its last checkpoint.
   Warm starts are cached under the workdir by their settings (family, size, tokenizer, data files, steps, learning
   rate, batch, patience), so every method, seed and restart reuses them.
2. Continuation. Every method, teacher forcing (the control) included, starts from the best checkpoint and trains
   for the same number of optimizer steps with the same schedule (warm-up, then linear decay to 0) and the same data
   order per seed (the order is drawn from the seed before training, so objectives that sample do not change it).
3. Settings chosen on validation. Each method has a grid of at most 4 points, run with seed 0 and scored on the whole
   validation split; the control's grid (learning rates) runs first and its chosen learning rate is every other
   method's, unless a method's grid sets its own. The chosen point then runs with the other seeds (seed 0 is reused),
   and every seed of it is scored once on the test split.
4. Statistics. Mean and standard deviation over seeds, per-seed differences to the control, and a paired bootstrap
   95% confidence interval of the difference over test examples: resample examples (`RESAMPLES` times), compute the
   corpus metric of method and control on the same indices for each seed, average over seeds, subtract. The corpus
   metrics are the task's own (`Task.corpus_metrics` of its per-example `Task.example_statistics`: NER span counts
   as seqeval counts them, sacrebleu's per-sentence statistics, per-example ROUGE F, per-example exact match), the
   very sums that `Task.score` reports, so a task added to hf_seqobj/tasks/ gets its intervals without code here.
   Every run's predictions are saved in the workdir, and the statistics are computed from them.

Writes `benchmarks/results/quality_{task}.json` (warm starts, per-run rows, the grid choices and a `summary` list of
differences to the control), `benchmarks/quality_{task}.md` with PNG plots, and the headline table at the top of
`benchmarks/README.md` from every task's summary. Families of an earlier report that the workdir does not hold (run in
another workdir, at the same continuation settings) are kept in the report as its JSON recorded them.

This command is thin: the settings (tasks, methods, grids) are `benchmarks/protocol/settings.py`, the protocol (warm
start cache, grids, seeds) `benchmarks/protocol/protocol.py`, the statistics (paired bootstrap over the task's
statistics, verdicts) `benchmarks/protocol/statistics.py` and the reports (JSON, markdown, plots, headline table)
`benchmarks/protocol/report.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.protocol, where the protocol, statistics and reports live

from benchmarks.protocol.protocol import Benchmark, git_commit  # noqa: E402
from benchmarks.protocol.report import headline_table, read_results, write_report  # noqa: E402
from benchmarks.protocol.settings import CURVE_EVAL_SIZE, RESAMPLES, TASKS  # noqa: E402
from hf_seqobj.modeling import MODEL_SIZES  # noqa: E402


__all__ = ["QUICK", "QualityPlan", "git_commit", "plan_quality", "run_quality"]


QUICK = {
    "max_train_samples": 2000,
    "max_eval_samples": 200,
    "curve_eval_size": 100,
    "warm_start": {"steps": 300, "eval_steps": 100, "warmup_steps": 30},
    "continuation": {"steps": 60, "eval_steps": 20, "warmup_steps": 6},
    "resamples": 200,
}
"""`--quick`: a reduced run that checks the whole pipeline in minutes (its figures mean nothing)."""


@dataclass
class QualityPlan:
    """What `quality` will do, checked before anything runs (see `plan_quality`)."""

    benchmark: Benchmark
    families: list[str]
    methods: list[str] | None
    reports: Path


def plan_quality(options) -> QualityPlan:
    """`scripts/benchmark.py quality`, first half: `options` (benchmark.py's parsed arguments: task, families,
    methods, stage, seeds, data files, sizes, steps, workdir, resume, reports, report_only, quick, batch_size, device)
    checked and turned into a `Benchmark` before anything runs. A bad value raises a one-line ValueError (benchmark.py
    turns it into a usage error) instead of failing a long run half-way."""
    spec = TASKS[options.task]
    split = lambda text: [item.strip() for item in text.split(",") if item.strip()] if text else None  # noqa: E731
    families = split(options.families) or spec["families"]
    unknown = sorted(set(families) - set(spec["families"]))
    if unknown:
        raise ValueError(f"--families {unknown} not in task {options.task!r}'s families {spec['families']}.")
    sizes = {}
    for item in split(options.sizes) or []:
        family, _, size = item.partition("=")
        if family not in spec["families"] or size not in MODEL_SIZES:
            raise ValueError(
                f"--sizes item {item!r}: expected FAMILY=SIZE with FAMILY in {spec['families']} and SIZE in "
                f"{list(MODEL_SIZES)}."
            )
        sizes[family] = size
    quick = QUICK if options.quick else {}
    warm_start = dict(quick.get("warm_start", {}))
    if options.warm_start_steps:
        warm_start["steps"] = options.warm_start_steps
    warm_start_lr = {}
    for item in split(options.warm_start_lr) or []:
        family, _, rate = item.rpartition("=")
        try:
            rate = float(rate)
        except ValueError:
            message = f"--warm-start-lr item {item!r}: expected a rate or FAMILY=RATE, e.g. bart=3e-4."
            raise ValueError(message) from None
        if family:
            warm_start_lr[family] = rate
        else:
            warm_start["learning_rate"] = rate
    patience = getattr(options, "warm_start_patience", None)
    if patience is not None:
        if patience < 1:
            raise ValueError(f"--warm-start-patience must be >= 1 evaluations, got {patience}.")
        warm_start["patience"] = patience
    continuation = dict(quick.get("continuation", {}))
    if options.steps:
        continuation["steps"] = options.steps
    files = {f"{name}_file": getattr(options, f"{name}_file") for name in ("train", "validation", "test")}
    workdir = Path(options.workdir) if options.workdir else Path(tempfile.mkdtemp(prefix=f"quality_{options.task}_"))
    if (workdir / "warm").exists() and not (options.resume or options.report_only):
        raise ValueError(f"--workdir {str(workdir)!r} already holds runs: pass --resume to continue them.")
    benchmark = Benchmark(
        task_name=options.task,
        workdir=workdir,
        seeds=options.seeds,
        sizes=sizes,
        warm_start=warm_start,
        warm_start_lr=warm_start_lr,
        continuation=continuation,
        batch_size=options.batch_size,
        device=options.device,
        max_train_samples=quick.get("max_train_samples"),
        max_eval_samples=quick.get("max_eval_samples"),
        curve_eval_size=quick.get("curve_eval_size", CURVE_EVAL_SIZE),
        resamples=quick.get("resamples", RESAMPLES),
        **files,
    )
    methods = split(options.methods)
    benchmark.method_names(methods, given_as="--methods")
    reports = Path(options.reports) if not options.quick else workdir / "reports"
    read_results(reports / "results" / f"quality_{options.task}.json")  # a broken one stops here, before any run
    headline_table(reports)  # as does any task's JSON that the README table reads at the end
    return QualityPlan(benchmark, families, methods, reports)


def run_quality(options, plan: QualityPlan) -> Benchmark:
    """`scripts/benchmark.py quality`, second half: runs the protocol of `plan` for its families and methods, then
    writes the reports (with `--report-only`, only rewrites them from the workdir)."""
    plan.reports.mkdir(parents=True, exist_ok=True)
    if options.report_only:
        write_report(plan.benchmark, plan.reports)
        return plan.benchmark
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    report = lambda: write_report(plan.benchmark, plan.reports)  # noqa: E731
    plan.benchmark.run(plan.families, plan.methods, options.stage, report)
    return plan.benchmark
