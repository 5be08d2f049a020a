"""The measuring parts of scripts/benchmark.py and the quality benchmark (scripts/quality.py over benchmarks/protocol/;
the benchmarks themselves are run by hand)."""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_seqobj.arguments import DataArguments
from hf_seqobj.tasks import Task, get_task, synthetic_ner_splits


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark  # noqa: E402
import quality  # noqa: E402, F401  (puts the checkout on sys.path for benchmarks.protocol)

from benchmarks.protocol import protocol, settings  # noqa: E402
from benchmarks.protocol import report as reporting  # noqa: E402
from benchmarks.protocol import statistics as protocol_statistics  # noqa: E402


MIB = 2**20


def test_peak_step_memory_counts_what_is_alive_at_once_on_cpu():
    def one_at_a_time():
        for _ in range(3):
            block = torch.ones(MIB, dtype=torch.uint8)  # 1 MiB, freed before the next
            del block

    def three_at_once():
        blocks = [torch.ones(MIB, dtype=torch.uint8) for _ in range(3)]
        del blocks

    one = benchmark.peak_step_memory(one_at_a_time, "cpu")
    three = benchmark.peak_step_memory(three_at_once, "cpu")
    assert MIB <= one < 1.5 * MIB
    assert 3 * MIB <= three < 3.5 * MIB


def test_the_oracle_throughput_section_runs_every_oracle_on_a_tiny_batch(capsys):
    rows = benchmark.oracles(quick=True, device="cpu", text_shape=(2, 4), tags_shape=(2, 4))
    names = [row["name"] for row in rows]
    assert "oracle/bleu h=0" in names and "oracle/span_f1 exact" in names
    assert "oracle/sentence metric (bleu) h=0" in names and "oracle/sentence metric (bleu) h=1" in names
    assert all(row["positions_per_second"] > 0 for row in rows)
    assert "oracle/sentence metric (bleu) h=1" in capsys.readouterr().out


def test_fractions_of_the_run_become_step_counts():
    settings = {
        "objective": "dagger",
        "dagger_warmup_steps": 0.5,
        "sm_bc_steps": 10**9,
        "ss_schedule": "linear",
        "ss_k": 1.0,
        "ss_c": 0.25,
        "ss_eps_min": 0.75,
    }
    resolved = protocol.resolve(settings, 800)
    assert resolved["dagger_warmup_steps"] == 400
    assert resolved["sm_bc_steps"] == 10**9  # a count stays a count
    # eps = k - c * step falls from 1 to eps_min = 0.75 over the first quarter (200 steps) of the run
    assert resolved["ss_k"] - resolved["ss_c"] * 200 == pytest.approx(0.75)
    assert settings["dagger_warmup_steps"] == 0.5  # the task's table is not modified


def test_output_statistics_measure_length_and_repeated_bigrams():
    predictions = ["at the meeting at the meeting", "she is home", "a a"]
    references = ["they meet at noon", "she is at home now"]
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        protocol_statistics.output_statistics(predictions, references)
    stats = protocol_statistics.output_statistics(predictions, references + ["x"])
    assert stats == {"words": 11 / 3, "reference_words": 10 / 3, "repeated_bigram": 1 / 3}  # 6 + 3 + 2, 4 + 5 + 1
    # a repeated word is not a repeated bigram; one bigram twice is ("a a a")
    assert protocol_statistics.output_statistics(["a b a", "a a a"], ["r", "r"])["repeated_bigram"] == 0.5


def _arithmetic_runs(correct: list[np.ndarray]) -> list[dict]:
    """The arithmetic task's statistics of runs whose answers are right where `correct` is 1."""
    task = get_task(DataArguments(task="arithmetic", dataset_name="synthetic"))
    return [task.example_statistics(["1" if c else "2" for c in run], ["1"] * len(run)) for run in correct]


def test_paired_bootstrap_interval():
    task = get_task(DataArguments(task="arithmetic", dataset_name="synthetic"))
    generator = np.random.default_rng(0)
    correct = [generator.integers(0, 2, 400) for _ in range(3)]
    control = _arithmetic_runs(correct)
    same = protocol_statistics.paired_bootstrap(task, "accuracy", control, control, resamples=200)
    assert same["delta"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    better = _arithmetic_runs([np.maximum(c, generator.random(400) < 0.2) for c in correct])
    result = protocol_statistics.paired_bootstrap(task, "accuracy", better, control, resamples=200)
    assert result["ci_low"] > 0 and result["ci_low"] <= result["delta"] <= result["ci_high"]
    assert result["delta"] == pytest.approx(
        np.mean([b["exact"].mean() for b in better]) - np.mean([c["exact"].mean() for c in control])
    )
    assert protocol_statistics.verdict(result["ci_low"], result["ci_high"]) == "helps"
    worse = protocol_statistics.paired_bootstrap(task, "accuracy", control, better, resamples=200)
    assert worse["delta"] == pytest.approx(-result["delta"]) and worse["ci_high"] < 0
    assert protocol_statistics.verdict(-0.1, 0.2) == "no difference"
    assert protocol_statistics.paired_bootstrap(task, "accuracy", better, control, resamples=200) == result  # seeded
    with pytest.raises(ValueError, match="Paired seeds"):
        protocol_statistics.paired_bootstrap(task, "accuracy", better[:2], control, resamples=10)
    with pytest.raises(ValueError, match=r"the runs have \[399, 400\] examples"):
        shorter = [{name: column[:399] for name, column in run.items()} for run in better]
        protocol_statistics.paired_bootstrap(task, "accuracy", shorter, control, resamples=10)


class _WordRecall(Task):
    """A user's own task, unknown to the benchmark: the share of reference words that the prediction holds."""

    name = "word_recall"

    def load_file(self, path):
        raise NotImplementedError

    def from_hub_split(self, dataset, where):
        raise NotImplementedError

    def example_statistics(self, predictions, references):
        found = [sum(w in p.split() for w in r.split()) for p, r in zip(predictions, references, strict=True)]
        return {"found": np.array(found, float), "words": np.array([len(r.split()) for r in references], float)}

    def metrics_from_sums(self, sums, count):
        return {"word_recall": sums["found"] / sums["words"]}


@pytest.mark.parametrize("task_name", ["text2text", "word_recall"])
def test_any_task_gets_bootstrap_intervals_from_its_saved_predictions(tmp_path, task_name):
    """The generic prompt / completion task and a user's own task: their statistics, read from the predictions that
    the protocol saves, give their score and a paired bootstrap interval, with no code of the benchmark's for them."""
    arguments = DataArguments(task="text2text", train_file="unused.jsonl", text2text_metrics=["bleu", "exact_match"])
    task = get_task(arguments) if task_name == "text2text" else _WordRecall(arguments)
    metric = "bleu" if task_name == "text2text" else "word_recall"
    generator = random.Random(0)
    words = "a man with a dog walks in the park on a sunny day".split()
    references = [" ".join(generator.choices(words, k=generator.randint(4, 10))) for _ in range(120)]

    def saved_run(seed: int, keep: float) -> dict:
        rng = random.Random(seed)
        predictions = [" ".join(w if rng.random() < keep else "x" for w in r.split()) for r in references]
        path = tmp_path / f"{seed}_{keep}.jsonl"
        rows = [{"index": i, "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(predictions, references))]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        statistics = protocol_statistics.run_statistics(task, path)
        assert task.corpus_metrics(statistics)[metric][0] == task.score(predictions, references)[metric]
        return statistics

    control = [saved_run(seed, 0.6) for seed in range(3)]
    better = [saved_run(seed, 0.8) for seed in range(3)]
    result = protocol_statistics.paired_bootstrap(task, metric, better, control, resamples=100)
    assert 0 < result["ci_low"] <= result["delta"] <= result["ci_high"]
    assert protocol_statistics.verdict(result["ci_low"], result["ci_high"]) == "helps"


def test_training_order_depends_on_the_seed_alone():
    from datasets import Dataset

    train = Dataset.from_dict({"input_ids": [[1] * (1 + i % 17) for i in range(100)]})
    torch.manual_seed(123)
    first = protocol.ordered_train(train, steps=10, batch_size=8, seed=1)
    torch.rand(1000)  # an objective that samples moves the global generator: the order does not change
    again = protocol.ordered_train(train, steps=10, batch_size=8, seed=1)
    other = protocol.ordered_train(train, steps=10, batch_size=8, seed=2)
    assert len(first) == 80 and first["input_ids"] == again["input_ids"]
    assert first["input_ids"] != other["input_ids"]


def test_a_grid_has_one_to_four_points_and_the_methods_include_the_control(tmp_path):
    methods = {settings.CONTROL: {"settings": {"objective": "mle"}, "grid": [{}]}}
    too_many = {**methods, "scheduled_sampling": {"settings": {}, "grid": [{}] * 5}}
    with pytest.raises(ValueError, match="grid of 5 points"):
        protocol.Benchmark("ner", tmp_path, methods=too_many)
    with pytest.raises(ValueError, match="must include the control"):
        protocol.Benchmark("ner", tmp_path, methods={"dagger_exact": {"settings": {}, "grid": [{}]}})


def test_warm_start_learning_rates_per_family_key_the_cached_warm_starts(tmp_path):
    files = _conll_files(tmp_path)
    default = protocol.Benchmark("ner", tmp_path / "work", **files)
    assert default.warm_start_lr == {"gpt2": 1e-3, "bart": 3e-4, "t5": 3e-4}  # the task's rates for BART and T5
    assert default.warm_settings("bart")["learning_rate"] == 3e-4
    one_rate = protocol.Benchmark("ner", tmp_path / "work", warm_start={"learning_rate": 5e-4}, **files)
    assert set(one_rate.warm_start_lr.values()) == {5e-4}  # one rate given: every family, BART included
    per_family = protocol.Benchmark("ner", tmp_path / "work", warm_start_lr={"t5": 5e-4}, **files)
    assert per_family.warm_start_lr == {"gpt2": 1e-3, "bart": 3e-4, "t5": 5e-4}  # the task's T5 rate replaced
    # the same settings reached either way share a cache entry; another rate is another warm start
    assert per_family.warm_dir("t5") == one_rate.warm_dir("t5")
    assert per_family.warm_dir("gpt2") == default.warm_dir("gpt2") != one_rate.warm_dir("gpt2")
    with pytest.raises(ValueError, match="warm_start_lr gpt3=0.001: expected a family of"):
        protocol.Benchmark("ner", tmp_path / "work", warm_start_lr={"gpt3": 1e-3}, **files)
    with pytest.raises(ValueError, match="warm_start_lr t5=0.0: expected .* a rate > 0"):
        protocol.Benchmark("ner", tmp_path / "work", warm_start_lr={"t5": 0.0}, **files)


def _conll_files(folder: Path) -> dict:
    files = {}
    for split, dataset in synthetic_ner_splits(120, 16, 0).items():
        path = folder / f"{split}.txt"
        path.write_text(
            "\n".join(
                "\n".join(f"{w} {t}" for w, t in zip(ex["source"].split(), ex["target"].split())) + "\n"
                for ex in dataset
            )
        )
        files[f"{split}_file"] = str(path)
    return files


class _InterruptOnce(TrainerCallback):
    """Stops the first warm start with a KeyboardInterrupt after `step` (as a killed process would stop)."""

    fired = False

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and not _InterruptOnce.fired:
            _InterruptOnce.fired = True
            raise KeyboardInterrupt


def test_the_report_counts_seeds_per_family_from_the_scored_control_runs():
    def run(family, seed, method=settings.CONTROL, scored=True):
        return {"family": family, "seed": seed, "method": method, **({"test": {}} if scored else {})}

    runs = [run("gpt2", s) for s in range(3)] + [run(f, s) for f in ("bart", "t5") for s in range(5)]
    runs += [run("gpt2", 7, scored=False), run("gpt2", 8, method="dagger_exact")]  # a grid run, another method
    assert reporting._seeds_text(runs, 5) == "3 (gpt2), 5 (bart, t5)"
    assert reporting._control_seeds(runs) == {"gpt2": 3, "bart": 5, "t5": 5}
    assert reporting._seeds_text(runs[3:], 3) == "5" and reporting._seeds_text([], 3) == "3"


def test_the_protocol_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    methods = {
        settings.CONTROL: {
            "settings": {"objective": "mle"},
            "grid": [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}],
        },
        "dagger_exact": {
            "settings": {"objective": "dagger", "oracle": "span_f1"},
            "grid": [{"dagger_beta": 0.0, "dagger_beta_schedule": "constant"}],
        },
    }
    benchmark = protocol.Benchmark(
        "ner",
        tmp_path / "work",
        seeds=2,
        sizes={"gpt2": "tiny"},
        warm_start={"steps": 12, "eval_steps": 4, "warmup_steps": 2},
        continuation={"steps": 6, "eval_steps": 3, "warmup_steps": 1},
        batch_size=8,
        curve_eval_size=8,
        resamples=50,
        methods=methods,
        **_conll_files(tmp_path),
    )
    build_trainer = protocol.build_trainer

    def interrupted_build_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(_InterruptOnce(6))
        return trainer

    monkeypatch.setattr(protocol, "build_trainer", interrupted_build_trainer)
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_warm_start("gpt2")
    warm = benchmark.run_warm_start("gpt2")  # resumes from checkpoint-4 (saved with each evaluation)
    assert warm["resumed_from"] == "checkpoint-4"
    assert [p["step"] for p in warm["curve"]] == [4, 8, 12]
    assert warm["best_curve_value"] == max(p["value"] for p in warm["curve"])
    assert warm["best_step"] == next(p["step"] for p in warm["curve"] if p["value"] == warm["best_curve_value"])
    assert warm["examples"] == {"train": 120, "validation": 16, "test": 16}
    # the saved model is the best checkpoint's (tied output layer included): its loss on the curve examples is the
    # loss logged at the best step (F1 ties at 0 here, so the best is the first evaluation, not the last)
    assert warm["best_step"] == 4 and warm["curve"][0]["loss"] != warm["curve"][-1]["loss"]
    data_args, task, splits = benchmark._task()
    model_args = protocol.ModelArguments(model_name_or_path=str(benchmark.warm_dir("gpt2") / "best"))
    model, tokenizer = protocol.prepare_model(model_args, task, splits, str(tmp_path / "reload"), 0)
    args = protocol.training_arguments_class(model_args)(output_dir=str(tmp_path / "reload"), report_to="none")
    curve = benchmark._eval_sets(protocol.load_from_disk(str(benchmark.warm_dir("gpt2") / "tokenized")))["curve"][0]
    trainer = build_trainer(model, tokenizer, task, protocol.DatasetDict({"validation": curve}), args)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(warm["curve"][0]["loss"], rel=1e-5)
    monkeypatch.setattr(protocol, "build_trainer", build_trainer)

    monkeypatch.setitem(benchmark.spec, "output_statistics", True)  # the text tasks' table, here on tag outputs
    reports = tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    (reports / "README.md").write_text(
        f"# Benchmarks\n\n{reporting.README_START}\nold\n{reporting.README_END}\n\nrest\n"
    )
    benchmark.run(["gpt2"], None, "all", lambda: reporting.write_report(benchmark, reports))
    data = json.loads((reports / "results" / "quality_ner.json").read_text())
    (row,) = data["summary"]
    assert {k: row[k] for k in ("task", "family", "method", "metric", "split", "control", "seeds", "steps")} == {
        "task": "ner",
        "family": "gpt2",
        "method": "dagger_exact",
        "metric": "f1",
        "split": "test",
        "control": "teacher_forcing",
        "seeds": 2,
        "steps": 6,
    }
    assert row["ci_low"] <= row["delta"] <= row["ci_high"] and row["commit"]
    control = [r for r in data["runs"] if r["method"] == settings.CONTROL]
    assert len(control) == 3  # two grid points with seed 0, and seed 1 at the chosen learning rate
    grid = [next(r for r in control if r["learning_rate"] == lr and r["role"] == "grid") for lr in (1e-3, 3e-3)]
    chosen = max(grid, key=lambda r: (r["validation"]["f1"], -grid.index(r)))  # a tie goes to the first point
    assert data["choices"][0]["learning_rate"] == chosen["learning_rate"]
    seeds = [r for r in data["runs"] if "test" in r]
    assert {(r["method"], r["seed"]) for r in seeds} == {(m, s) for m in methods for s in (0, 1)}
    assert all(r["learning_rate"] == chosen["learning_rate"] for r in seeds)
    dagger = [r for r in seeds if r["method"] == "dagger_exact"]
    assert row["delta"] == pytest.approx(
        np.mean([r["test"]["f1"] for r in dagger])
        - np.mean([r["test"]["f1"] for r in seeds if r["method"] == settings.CONTROL])
    )
    for run in data["runs"]:
        lines = (
            (Path(run["directory"]) / "predictions_validation.jsonl").read_text().splitlines()
            if run["role"] == "grid"
            else []
        )
        assert len(lines) in (0, 16)
    readme = (reports / "README.md").read_text()
    assert "old" not in readme and "| CoNLL-2003 NER | gpt2 | dagger_exact |" in readme and readme.endswith("rest\n")
    assert "## Grids" in (reports / "quality_ner.md").read_text()
    for run in seeds:  # length and repetition of each scored run's test predictions, as its predictions file says
        lines = (Path(run["directory"]) / "predictions_test.jsonl").read_text().splitlines()
        predictions = [json.loads(line)["prediction"] for line in lines]
        references = [json.loads(line)["reference"] for line in lines]
        ended = [json.loads(line)["eos_reached"] for line in lines]
        assert all(isinstance(e, bool) for e in ended)
        assert run["test_outputs"] == protocol_statistics.output_statistics(predictions, references, ended)
        assert 0.0 <= run["test_outputs"]["eos_rate"] <= 1.0
        # each evaluation of the curve carries the output diagnostics; DAgger's rows keep its oracle's training logs
        assert all({"length_ratio", "eos_rate", "repeated_ngram_rate"} <= set(point) for point in run["curve"])
        if run["method"] == "dagger_exact":
            assert 0.0 <= run["training"]["oracle_agreement"] <= 1.0 and "rollin_length" in run["training"]
        else:
            assert "oracle_agreement" not in run["training"]
    assert "test_outputs" in data["warm_starts"][0]
    table = (reports / "quality_ner.md").read_text().split("## Test outputs")[1].split("## Grids")[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| gpt2 ")]
    assert [row[1] for row in rows] == ["warm start", settings.CONTROL, "dagger_exact"]
    assert rows[2][4].endswith("%") and rows[2][6] != "\u2013"  # DAgger: share reaching EOS and oracle agreement

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(protocol, "build_trainer", no_training)
    # a run that another process holds is waited for and then reused, not trained a second time into the same files
    run = next(r for r in data["runs"] if r["method"] == "dagger_exact" and r["seed"] == 1)
    directory = Path(run["directory"])
    finished = (directory / "result.json").read_text()
    (directory / "result.json").unlink()
    other = protocol.FileLock(str(directory / ".lock"))
    other.acquire()
    reused = []
    waiting = threading.Thread(
        target=lambda: reused.append(
            benchmark.run_continuation("gpt2", "dagger_exact", run["grid_point"], 1, run["learning_rate"], "seed")
        )
    )
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not reused  # blocked on the other process's lock
    (directory / "result.json").write_text(finished)  # the other process finishes the run
    other.release()
    waiting.join()
    assert reused == [json.loads(finished)]
    report = reports / "quality_ner.md"
    report.write_text(
        report.read_text().replace("## Warm starts", f"{reporting.NOTES_START}\nFound: x.\n{reporting.NOTES_END}")
    )
    benchmark.run(
        ["gpt2"], None, "all", lambda: reporting.write_report(benchmark, reports)
    )  # everything is kept in the workdir
    text = report.read_text()
    assert text.count("Found: x.") == 1 and "## Warm starts" in text  # hand-written notes survive a rewrite

    # a family reported from another (since deleted) workdir stays in the report; the workdir's own family is not
    # doubled, and an earlier report at other continuation settings is not mixed in
    results = reports / "results" / "quality_ner.json"
    earlier = json.loads(results.read_text())
    for key in ("warm_starts", "runs", "choices", "summary"):
        earlier[key] += [{**row, "family": "t5"} for row in earlier[key]]
    earlier["warm_starts"][-1]["settings"] = {**earlier["warm_starts"][-1]["settings"], "steps": 24}
    earlier["summary"][-1]["step_time_ratio"] = None  # read anew from speed_cpu.json, as for the workdir's rows
    for row in earlier["runs"] + earlier["warm_starts"]:  # a report from before the output statistics existed
        if row["family"] == "t5":
            row.pop("test_outputs", None)
    results.write_text(json.dumps(earlier))
    reporting.write_report(benchmark, reports)
    data = json.loads(results.read_text())
    assert data["summary"][1]["step_time_ratio"] == data["summary"][0]["step_time_ratio"] is not None
    assert [w["family"] for w in data["warm_starts"]] == ["gpt2", "t5"]
    assert data["protocol"]["seeds"] == 2 and data["protocol"]["seeds_by_family"] == {"gpt2": 2, "t5": 2}
    assert [(r["family"], r["method"]) for r in data["summary"]] == [("gpt2", "dagger_exact"), ("t5", "dagger_exact")]
    assert len(data["runs"]) == len(earlier["runs"])
    assert "| CoNLL-2003 NER | t5 | dagger_exact |" in (reports / "README.md").read_text()
    assert "| t5 | dagger_exact |" in report.read_text()
    assert "Not shown: t5 (reported from a workdir that is gone" in report.read_text()
    (warm_line,) = [line for line in report.read_text().splitlines() if line.startswith("- Warm start:")]
    assert warm_line.startswith("- Warm start: 12 steps, batch 8, learning rate ")  # each family its own schedule
    assert "(gpt2) (linear warm-up over 2 steps" in warm_line and "every 4 steps; 24 steps, batch 8" in warm_line
    assert warm_line.endswith("(t5) (linear warm-up over 2 steps, then linear decay to 0), evaluated every 4 steps.")
    earlier["protocol"]["continuation"]["steps"] = 7
    results.write_text(json.dumps(earlier))
    reporting.write_report(benchmark, reports)
    assert {w["family"] for w in json.loads(results.read_text())["warm_starts"]} == {"gpt2"}
    # a broken results JSON ends in one line that names it, not a traceback from deep inside the report
    for broken, message in (
        ("{", "is not valid JSON"),
        ("[]", "holds a list"),
        (json.dumps({**earlier, "runs": [{"family": "t5"}]}), r"'runs' is not a list of rows with keys"),
    ):
        results.write_text(broken)
        with pytest.raises(ValueError, match=message):
            reporting.write_report(benchmark, reports)


def test_generated_data_take_no_files(tmp_path):
    with pytest.raises(ValueError, match=r"generates its data; \['--train-file'\]"):
        protocol.Benchmark("arithmetic", tmp_path, train_file="x.txt").data_arguments()
    with pytest.raises(FileNotFoundError, match="--test-file"):
        protocol.Benchmark(
            "ner", tmp_path, **{**_conll_files(tmp_path), "test_file": str(tmp_path / "no.txt")}
        ).data_arguments()


def test_a_warm_start_with_patience_stops_early_and_is_recorded_as_finished(tmp_path):
    settings = dict(
        sizes={"gpt2": "tiny"},
        continuation={"steps": 6, "eval_steps": 3, "warmup_steps": 1},
        batch_size=8,
        curve_eval_size=8,
        **_conll_files(tmp_path),
    )
    warm_start = {"steps": 16, "eval_steps": 4, "warmup_steps": 2}
    plain = protocol.Benchmark("ner", tmp_path / "work", warm_start=warm_start, **settings)
    patient = protocol.Benchmark("ner", tmp_path / "work", warm_start={**warm_start, "patience": 1}, **settings)
    assert plain.warm_dir("gpt2") != patient.warm_dir("gpt2")  # the patience is part of the cache key
    warm = patient.run_warm_start("gpt2")
    # F1 stays 0 on this data, so the first evaluation is the best and the next one exhausts a patience of 1
    assert (warm["steps"], warm["trained_steps"], warm["best_step"]) == (16, 8, 4)
    assert [p["step"] for p in warm["curve"]] == [4, 8]
    assert (patient.warm_dir("gpt2") / "result.json").exists()
    with pytest.raises(RuntimeError, match="stopped at step 3 of 16"):
        trainer = type("T", (), {"state": type("S", (), {"global_step": 3})()})()
        protocol._check_finished(trainer, 16, tmp_path, None)


def test_patience_can_join_a_warm_start_saved_without_it(tmp_path, monkeypatch):
    """A warm start interrupted without patience, then continued with `--warm-start-patience` (its folder copied to
    the new key, as when a long warm start is found to have peaked): the Trainer resumes it and stops it early."""
    import shutil

    settings = dict(sizes={"gpt2": "tiny"}, batch_size=8, curve_eval_size=8, **_conll_files(tmp_path))
    warm_start = {"steps": 16, "eval_steps": 4, "warmup_steps": 2}
    plain = protocol.Benchmark("ner", tmp_path / "work", warm_start=warm_start, **settings)
    patient = protocol.Benchmark("ner", tmp_path / "work", warm_start={**warm_start, "patience": 1}, **settings)
    build_trainer = protocol.build_trainer

    def interrupted_build_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(_InterruptOnce(6))
        return trainer

    _InterruptOnce.fired = False
    monkeypatch.setattr(protocol, "build_trainer", interrupted_build_trainer)
    with pytest.raises(KeyboardInterrupt):
        plain.run_warm_start("gpt2")
    monkeypatch.setattr(protocol, "build_trainer", build_trainer)
    shutil.copytree(plain.warm_dir("gpt2"), patient.warm_dir("gpt2"))
    warm = patient.run_warm_start("gpt2")  # resumes from checkpoint-4, saved without the callback
    assert warm["resumed_from"] == "checkpoint-4"
    assert (warm["trained_steps"], warm["best_step"]) == (8, 4)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--families", "gpt3"], "--families ['gpt3']"),
        (["--sizes", "bart=huge"], "--sizes item 'bart=huge'"),
        (["--warm-start-lr", "bart=fast"], "--warm-start-lr item 'bart=fast'"),
        (["--warm-start-lr", "gpt3=1e-3"], "warm_start_lr gpt3=0.001"),
        (["--warm-start-patience", "0"], "--warm-start-patience must be >= 1"),
        (["--methods", "spg,nope"], "--methods ['nope']"),
        (["--seeds", "0"], "seeds must be >= 1, got 0"),
    ],
)
def test_bad_quality_options_are_one_usage_line_before_anything_runs(tmp_path, capsys, flags, named):
    workdir = tmp_path / "work"
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["quality", "--task", "translation", *flags, "--workdir", str(workdir)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and ": error: " in error and named in error
    assert not workdir.exists()


def test_a_broken_results_json_is_one_usage_line_before_anything_runs(tmp_path, capsys):
    workdir, reports = tmp_path / "work", tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    (reports / "results" / "quality_translation.json").write_text("{")
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["quality", "--task", "translation", "--workdir", str(workdir), "--reports", str(reports)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and "quality_translation.json is not valid JSON" in error
    assert not workdir.exists()


def test_a_task_json_the_readme_table_cannot_read_is_one_usage_line_before_anything_runs(tmp_path, capsys):
    workdir, reports = tmp_path / "work", tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    other = reports / "results" / "quality_ner.json"
    other.write_text(json.dumps({"summary": [{"family": "bart", "method": "spg"}]}))
    with pytest.raises(ValueError, match=r"quality_ner.json: 'summary' is not a list of rows with keys \['ci_high'"):
        reporting.headline_table(reports)
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["quality", "--task", "translation", "--workdir", str(workdir), "--reports", str(reports)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and "quality_ner.json: 'summary' is not a list" in error
    assert not workdir.exists()
    other.write_text("[]")  # a report of the earlier protocol: left out of the table
    assert len(reporting.headline_table(reports)) == 2


def test_a_report_keeps_the_methods_a_sitting_did_not_rerun_only_where_their_differences_hold(capsys):
    """A sitting that reran some methods only (`--methods`) keeps the earlier rows of the others when the warm start,
    the control and the continuation are the same; otherwise it names what it dropped."""
    continuation = {"steps": 400, "batch_size": 32}
    warm = {"family": "bart", "key": "bart_mini_1", "best_step": 5000}

    def summary(method, control_mean):
        return {"family": "bart", "method": method, "setting": "x", "control_mean": control_mean}

    def run(method):
        return {"family": "bart", "method": method, "point": "x", "settings": {}}

    earlier = {
        "protocol": {"continuation": continuation},
        "warm_starts": [warm],
        "runs": [run("teacher_forcing"), run("raml"), run("dagger_bleu")],
        "choices": [{"family": "bart", "method": m} for m in ("teacher_forcing", "raml", "dagger_bleu")],
        "summary": [summary("raml", 25.65), summary("dagger_bleu", 25.65)],
    }
    collected = {
        "warm_starts": [dict(warm)],
        "runs": [run("teacher_forcing"), run("dagger_bleu")],
        "summary": [summary("dagger_bleu", 25.65)],
    }
    carried = reporting._carried_methods(collected, earlier, {"bart"}, continuation)
    assert carried == {("bart", "raml")}
    for changed in (
        {"summary": [summary("dagger_bleu", 25.7)]},  # another control
        {"warm_starts": [{**warm, "best_step": 6000}]},  # another warm start
    ):
        assert reporting._carried_methods({**collected, **changed}, earlier, {"bart"}, continuation) == set()
    assert reporting._carried_methods(collected, earlier, {"bart"}, {**continuation, "steps": 200}) == set()
    assert "not carried into the report: bart raml" in capsys.readouterr().out


def test_grid_point_names_show_every_schedule_that_is_not_implied():
    from benchmarks.protocol.protocol import point_name

    assert point_name({}) == "default"
    assert point_name({"dagger_beta": 0.0, "dagger_beta_schedule": "constant"}) == "dagger_beta=0.0"
    assert point_name({"dagger_beta": 0.5, "dagger_beta_schedule": "linear"}) == "dagger_beta=0.5"
    names = {
        point_name({"dagger_beta": 0.5, "dagger_beta_schedule": schedule})
        for schedule in ("constant", "linear", "exponential", "agreement")
    }
    assert len(names) == 4, names
    assert point_name({"dagger_beta": 0.5, "dagger_beta_schedule": "agreement"}) == (
        "dagger_beta=0.5,dagger_beta_schedule=agreement"
    )


def test_no_step_time_ratio_is_cited_for_mixing_that_follows_the_agreement():
    from benchmarks.protocol.report import speed_ratio

    fixed = {"dagger_beta": 0.5, "dagger_beta_schedule": "constant"}
    assert speed_ratio("summarization", "dagger_rouge2", fixed) > 1.0
    for following in (
        {"rollin_fraction_schedule": "agreement", "rollin_fraction": 0.1},
        {"dagger_beta_schedule": "agreement"},
    ):
        assert speed_ratio("summarization", "dagger_rouge2", {**fixed, **following}) is None
