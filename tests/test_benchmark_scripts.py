"""The measuring parts of scripts/benchmark.py and scripts/quality.py (the benchmarks themselves are run by hand)."""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
from transformers import TrainerCallback

from hf_seqobj.arguments import DataArguments
from hf_seqobj.tasks import get_task, synthetic_ner_splits, tag_metrics


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark  # noqa: E402
import quality  # noqa: E402


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
    resolved = quality.resolve(settings, 800)
    assert resolved["dagger_warmup_steps"] == 400
    assert resolved["sm_bc_steps"] == 10**9  # a count stays a count
    # eps = k - c * step falls from 1 to eps_min = 0.75 over the first quarter (200 steps) of the run
    assert resolved["ss_k"] - resolved["ss_c"] * 200 == pytest.approx(0.75)
    assert settings["dagger_warmup_steps"] == 0.5  # the task's table is not modified


def _random_tags(generator: random.Random, length: int) -> list[str]:
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "<invalid>"]
    return [generator.choice(tags) for _ in range(length)]


def test_ner_statistics_per_sentence_sum_to_seqeval_span_f1():
    generator = random.Random(0)
    references = [
        " ".join(_random_tags(generator, generator.randint(1, 9))).replace("<invalid>", "O") for _ in range(300)
    ]
    # predictions of the wrong length (padded with O or cut, as the task does), with non-tags (scored as O)
    predictions = [
        " ".join(_random_tags(generator, len(r.split()) + generator.choice([-2, 0, 0, 0, 1]))) for r in references
    ]
    statistics = quality.example_statistics("ner", predictions, references)
    assert statistics.shape == (300, 3)
    expected = tag_metrics([p.split() for p in predictions], [r.split() for r in references])["f1"]
    value = quality.corpus_metric("ner", "f1", statistics, np.ones((1, 300)))[0]
    assert value == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 1


def test_bleu_statistics_give_sacrebleu_corpus_bleu():
    generator = random.Random(1)
    words = "ein Mann mit einem Hund läuft auf der Straße im Park".split()
    references = [" ".join(generator.choices(words, k=generator.randint(3, 12))) for _ in range(100)]
    predictions = [" ".join(generator.choices(words, k=generator.randint(1, 12))) for _ in range(100)]
    statistics = quality.example_statistics("translation", predictions, references)
    value = quality.corpus_metric("translation", "bleu", statistics, np.ones((1, 100)))[0]
    assert value == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)


def test_rouge_statistics_are_the_task_scores_per_example(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"document": "a b", "summary": "a"}) + "\n")
    task = get_task(DataArguments(task="summarization", train_file=str(tmp_path / "train.jsonl")))
    predictions = ["the cat sat on the mat", "dogs are running", "a b c", "nothing in common"]
    references = ["a cat sat on a mat", "the dog runs", "a b c d", "something else"]
    statistics = quality.example_statistics("summarization", predictions, references)
    expected = task.score(predictions, references)
    for metric in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        value = quality.corpus_metric("summarization", metric, statistics, np.ones((1, 4)))[0]
        assert value == pytest.approx(expected[metric], abs=1e-9)


def test_output_statistics_measure_length_and_repeated_bigrams():
    predictions = ["at the meeting at the meeting", "she is home", "a a"]
    references = ["they meet at noon", "she is at home now"]
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        quality.output_statistics(predictions, references)
    stats = quality.output_statistics(predictions, references + ["x"])
    assert stats == {"words": 11 / 3, "reference_words": 10 / 3, "repeated_bigram": 1 / 3}  # 6 + 3 + 2, 4 + 5 + 1
    # a repeated word is not a repeated bigram; one bigram twice is ("a a a")
    assert quality.output_statistics(["a b a", "a a a"], ["r", "r"])["repeated_bigram"] == 0.5


def test_paired_bootstrap_interval():
    generator = np.random.default_rng(0)
    n = 400
    predicted, gold = generator.integers(0, 4, n), generator.integers(1, 4, n)
    correct = np.minimum(generator.integers(0, 3, n), np.minimum(predicted, gold))
    control = [np.stack([correct, predicted, gold], 1).astype(float)] * 3
    same = quality.paired_bootstrap("ner", "f1", control, control, resamples=200)
    assert same["delta"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    better = [c.copy() for c in control]
    for b in better:
        b[:, 0] = np.minimum(b[:, 0] + 1, np.minimum(b[:, 1], b[:, 2]))  # one more correct span where possible
    result = quality.paired_bootstrap("ner", "f1", better, control, resamples=200)
    assert result["ci_low"] > 0 and result["ci_low"] <= result["delta"] <= result["ci_high"]
    assert quality.verdict(result["ci_low"], result["ci_high"]) == "helps"
    worse = quality.paired_bootstrap("ner", "f1", control, better, resamples=200)
    assert worse["delta"] == pytest.approx(-result["delta"]) and worse["ci_high"] < 0
    assert quality.verdict(-0.1, 0.2) == "no difference"
    assert quality.paired_bootstrap("ner", "f1", better, control, resamples=200) == result  # seeded
    with pytest.raises(ValueError, match="Paired seeds"):
        quality.paired_bootstrap("ner", "f1", better[:2], control, resamples=10)


def test_training_order_depends_on_the_seed_alone():
    from datasets import Dataset

    train = Dataset.from_dict({"input_ids": [[1] * (1 + i % 17) for i in range(100)]})
    torch.manual_seed(123)
    first = quality.ordered_train(train, steps=10, batch_size=8, seed=1)
    torch.rand(1000)  # an objective that samples moves the global generator: the order does not change
    again = quality.ordered_train(train, steps=10, batch_size=8, seed=1)
    other = quality.ordered_train(train, steps=10, batch_size=8, seed=2)
    assert len(first) == 80 and first["input_ids"] == again["input_ids"]
    assert first["input_ids"] != other["input_ids"]


def test_a_grid_has_one_to_four_points_and_the_methods_include_the_control(tmp_path):
    methods = {quality.CONTROL: {"settings": {"objective": "mle"}, "grid": [{}]}}
    too_many = {**methods, "scheduled_sampling": {"settings": {}, "grid": [{}] * 5}}
    with pytest.raises(ValueError, match="grid of 5 points"):
        quality.Benchmark("ner", tmp_path, methods=too_many)
    with pytest.raises(ValueError, match="must include the control"):
        quality.Benchmark("ner", tmp_path, methods={"dagger_exact": {"settings": {}, "grid": [{}]}})


def test_warm_start_learning_rates_per_family_key_the_cached_warm_starts(tmp_path):
    files = _conll_files(tmp_path)
    default = quality.Benchmark("ner", tmp_path / "work", **files)
    assert default.warm_start_lr == {"gpt2": 1e-3, "bart": 3e-4, "t5": 3e-4}  # the task's rates for BART and T5
    assert default.warm_settings("bart")["learning_rate"] == 3e-4
    one_rate = quality.Benchmark("ner", tmp_path / "work", warm_start={"learning_rate": 5e-4}, **files)
    assert set(one_rate.warm_start_lr.values()) == {5e-4}  # one rate given: every family, BART included
    per_family = quality.Benchmark("ner", tmp_path / "work", warm_start_lr={"t5": 5e-4}, **files)
    assert per_family.warm_start_lr == {"gpt2": 1e-3, "bart": 3e-4, "t5": 5e-4}  # the task's T5 rate replaced
    # the same settings reached either way share a cache entry; another rate is another warm start
    assert per_family.warm_dir("t5") == one_rate.warm_dir("t5")
    assert per_family.warm_dir("gpt2") == default.warm_dir("gpt2") != one_rate.warm_dir("gpt2")
    with pytest.raises(ValueError, match="warm_start_lr gpt3=0.001: expected a family of"):
        quality.Benchmark("ner", tmp_path / "work", warm_start_lr={"gpt3": 1e-3}, **files)
    with pytest.raises(ValueError, match="warm_start_lr t5=0.0: expected .* a rate > 0"):
        quality.Benchmark("ner", tmp_path / "work", warm_start_lr={"t5": 0.0}, **files)


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
    def run(family, seed, method=quality.CONTROL, scored=True):
        return {"family": family, "seed": seed, "method": method, **({"test": {}} if scored else {})}

    runs = [run("gpt2", s) for s in range(3)] + [run(f, s) for f in ("bart", "t5") for s in range(5)]
    runs += [run("gpt2", 7, scored=False), run("gpt2", 8, method="dagger_exact")]  # a grid run, another method
    assert quality._seeds_text(runs, 5) == "3 (gpt2), 5 (bart, t5)"
    assert quality._control_seeds(runs) == {"gpt2": 3, "bart": 5, "t5": 5}
    assert quality._seeds_text(runs[3:], 3) == "5" and quality._seeds_text([], 3) == "3"


def test_the_protocol_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    methods = {
        quality.CONTROL: {
            "settings": {"objective": "mle"},
            "grid": [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}],
        },
        "dagger_exact": {
            "settings": {"objective": "dagger", "oracle": "span_f1"},
            "grid": [{"dagger_beta": 0.0, "dagger_beta_schedule": "constant"}],
        },
    }
    benchmark = quality.Benchmark(
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
    build_trainer = quality.build_trainer

    def interrupted_build_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(_InterruptOnce(6))
        return trainer

    monkeypatch.setattr(quality, "build_trainer", interrupted_build_trainer)
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
    model_args = quality.ModelArguments(model_name_or_path=str(benchmark.warm_dir("gpt2") / "best"))
    model, tokenizer = quality.prepare_model(model_args, task, splits, str(tmp_path / "reload"), 0)
    args = quality.training_arguments_class(model_args)(output_dir=str(tmp_path / "reload"), report_to="none")
    curve = benchmark._eval_sets(quality.load_from_disk(str(benchmark.warm_dir("gpt2") / "tokenized")))["curve"][0]
    trainer = build_trainer(model, tokenizer, task, quality.DatasetDict({"validation": curve}), args)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(warm["curve"][0]["loss"], rel=1e-5)
    monkeypatch.setattr(quality, "build_trainer", build_trainer)

    monkeypatch.setitem(benchmark.spec, "output_statistics", True)  # the text tasks' table, here on tag outputs
    reports = tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    (reports / "README.md").write_text(f"# Benchmarks\n\n{quality.README_START}\nold\n{quality.README_END}\n\nrest\n")
    benchmark.run(["gpt2"], None, "all", reports)
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
    control = [r for r in data["runs"] if r["method"] == quality.CONTROL]
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
        - np.mean([r["test"]["f1"] for r in seeds if r["method"] == quality.CONTROL])
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
        assert run["test_outputs"] == quality.output_statistics(predictions, references)
    assert "test_outputs" in data["warm_starts"][0]
    table = (reports / "quality_ner.md").read_text().split("## Test outputs")[1].split("## Grids")[0]
    assert [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| gpt2 ")] == [
        "warm start",
        quality.CONTROL,
        "dagger_exact",
    ]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(quality, "build_trainer", no_training)
    # a run that another process holds is waited for and then reused, not trained a second time into the same files
    run = next(r for r in data["runs"] if r["method"] == "dagger_exact" and r["seed"] == 1)
    directory = Path(run["directory"])
    finished = (directory / "result.json").read_text()
    (directory / "result.json").unlink()
    other = quality.FileLock(str(directory / ".lock"))
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
        report.read_text().replace("## Warm starts", f"{quality.NOTES_START}\nFound: x.\n{quality.NOTES_END}")
    )
    benchmark.run(["gpt2"], None, "all", reports)  # everything is kept in the workdir
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
    quality.write_report(benchmark, reports)
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
    quality.write_report(benchmark, reports)
    assert {w["family"] for w in json.loads(results.read_text())["warm_starts"]} == {"gpt2"}
    # a broken results JSON ends in one line that names it, not a traceback from deep inside the report
    for broken, message in (
        ("{", "is not valid JSON"),
        ("[]", "holds a list"),
        (json.dumps({**earlier, "runs": [{"family": "t5"}]}), r"'runs' is not a list of rows with keys"),
    ):
        results.write_text(broken)
        with pytest.raises(ValueError, match=message):
            quality.write_report(benchmark, reports)


def test_accuracy_statistics_and_generated_data_take_no_files(tmp_path):
    statistics = quality.example_statistics("arithmetic", ["1 2", "- 3", "4"], ["1 2", "3", " 4 "])
    assert quality.corpus_metric("arithmetic", "accuracy", statistics, np.ones((1, 3)))[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"generates its data; \['--train-file'\]"):
        quality.Benchmark("arithmetic", tmp_path, train_file="x.txt").data_arguments()
    with pytest.raises(FileNotFoundError, match="--test-file"):
        quality.Benchmark(
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
    plain = quality.Benchmark("ner", tmp_path / "work", warm_start=warm_start, **settings)
    patient = quality.Benchmark("ner", tmp_path / "work", warm_start={**warm_start, "patience": 1}, **settings)
    assert plain.warm_dir("gpt2") != patient.warm_dir("gpt2")  # the patience is part of the cache key
    warm = patient.run_warm_start("gpt2")
    # F1 stays 0 on this data, so the first evaluation is the best and the next one exhausts a patience of 1
    assert (warm["steps"], warm["trained_steps"], warm["best_step"]) == (16, 8, 4)
    assert [p["step"] for p in warm["curve"]] == [4, 8]
    assert (patient.warm_dir("gpt2") / "result.json").exists()
    with pytest.raises(RuntimeError, match="stopped at step 3 of 16"):
        trainer = type("T", (), {"state": type("S", (), {"global_step": 3})()})()
        quality._check_finished(trainer, 16, tmp_path, None)


def test_patience_can_join_a_warm_start_saved_without_it(tmp_path, monkeypatch):
    """A warm start interrupted without patience, then continued with `--warm-start-patience` (its folder copied to
    the new key, as when a long warm start is found to have peaked): the Trainer resumes it and stops it early."""
    import shutil

    settings = dict(sizes={"gpt2": "tiny"}, batch_size=8, curve_eval_size=8, **_conll_files(tmp_path))
    warm_start = {"steps": 16, "eval_steps": 4, "warmup_steps": 2}
    plain = quality.Benchmark("ner", tmp_path / "work", warm_start=warm_start, **settings)
    patient = quality.Benchmark("ner", tmp_path / "work", warm_start={**warm_start, "patience": 1}, **settings)
    build_trainer = quality.build_trainer

    def interrupted_build_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(_InterruptOnce(6))
        return trainer

    _InterruptOnce.fired = False
    monkeypatch.setattr(quality, "build_trainer", interrupted_build_trainer)
    with pytest.raises(KeyboardInterrupt):
        plain.run_warm_start("gpt2")
    monkeypatch.setattr(quality, "build_trainer", build_trainer)
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
        quality.headline_table(reports)
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["quality", "--task", "translation", "--workdir", str(workdir), "--reports", str(reports)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and "quality_ner.json: 'summary' is not a list" in error
    assert not workdir.exists()
    other.write_text("[]")  # a report of the earlier protocol: left out of the table
    assert len(quality.headline_table(reports)) == 2
