"""Benchmarks of hf_seqobj: speed of each objective against teacher forcing, and oracle throughput.

    python scripts/benchmark.py speed [--quick] [--out FILE.json] [--repeats N] [--device cpu|cuda]
    python scripts/benchmark.py oracles [--quick] [--out FILE.json] [--device cpu|cuda]
    python scripts/benchmark.py quality --task ner|summarization|translation --workdir DIR [--families ...]
        [--methods ...] [--stage warm|grid|all] [--seeds 3] [--train-file F --validation-file F --test-file F]

`speed` first teacher-forces a tiny BART for a few hundred steps (so that roll-ins have realistic lengths), then
measures optimizer steps (forward, backward, roll-in and relabelling where the objective has them, optimizer
update) of every objective side by side in one process: the same initial model and the same batch, objectives
interleaved in each repeat so that machine noise hits all alike; it reports the median seconds per step and the
ratio to teacher forcing (mle) of the same task, and the peak tensor memory of one step (`peak_step_memory`). The
`gkd` case times our DAgger step on a tiny GPT-2 tagger against TRL's GKDTrainer on-policy step (lmbda = 1, the same
model as student and teacher, the same batch and generation length; `pip install trl`). It also runs `oracles`
(positions labelled per second). Data: the real CoNLL-2003, Multi30k and SAMSum files in ../shared/data when present
(else the embedded synthetic NER data, and no translation or summarization rows). Writes a JSON list of {"name",
"seconds_per_step", "ratio_to_mle", "peak_step_bytes", ...} to --out.

These are benchmarks, not tests: run them on a quiet machine; the figures in benchmarks/ say where they were taken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from hf_seqobj.arguments import DataArguments  # noqa: E402
from hf_seqobj.modeling import MODEL_SIZES, create_offline_model, describe_model, load_model_and_tokenizer  # noqa: E402
from hf_seqobj.run import build_trainer  # noqa: E402
from hf_seqobj.tasks import get_task  # noqa: E402
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_SEQOBJ_DATA", ROOT.parent / "shared" / "data"))
"""The real data sets (conll2003/, multi30k/); HF_SEQOBJ_DATA points elsewhere."""


SPEED_TASKS = ("ner", "translation", "summarization", "arithmetic", "gkd")


def ner_data(quick: bool) -> tuple[DataArguments, str]:
    conll = SHARED / "conll2003"
    if (conll / "train.txt").exists():
        args = DataArguments(
            task="ner",
            train_file=str(conll / "train.txt"),
            validation_file=str(conll / "valid.txt"),
            max_train_samples=2000 if quick else 5000,
            max_eval_samples=64,
        )
        return args, "CoNLL-2003"
    return DataArguments(task="ner", dataset_name="synthetic", synthetic_train_size=2000), "synthetic NER"


def translation_data(quick: bool) -> tuple[DataArguments, str] | None:
    multi30k = SHARED / "multi30k"
    if not (multi30k / "train.en").exists():
        return None
    args = DataArguments(
        task="translation",
        train_file=str(multi30k / "train"),
        validation_file=str(multi30k / "val"),
        source_lang="en",
        target_lang="de",
        max_train_samples=2000 if quick else 5000,
        max_eval_samples=64,
    )
    return args, "Multi30k en-de"


def summarization_data(quick: bool) -> tuple[DataArguments, str] | None:
    samsum = SHARED / "samsum"
    if not (samsum / "train.jsonl").exists():
        return None
    args = DataArguments(
        task="summarization",
        train_file=str(samsum / "train.jsonl"),
        validation_file=str(samsum / "validation.jsonl"),
        source_column="dialogue",
        target_column="summary",
        max_source_length=384,
        max_target_length=64,
        truncate_long_examples=True,
        skip_invalid_examples=True,  # one train dialogue is empty, as in the original SAMSum
        max_train_samples=2000 if quick else 5000,
        max_eval_samples=64,
    )
    return args, "SAMSum"


def arithmetic_data(quick: bool) -> tuple[DataArguments, str]:
    args = DataArguments(
        task="arithmetic",
        dataset_name="synthetic",
        synthetic_train_size=2000 if quick else 5000,
        synthetic_eval_size=64,
    )
    return args, "arithmetic (generated: base 10, up to 3 digits, + and -)"


def build_case(
    data_args: DataArguments, workdir: Path, tokenizer_type: str, size: str = "tiny", seed: int = 0, arch: str = "bart"
):
    """Task data and a tiny model (BART by default) built offline."""
    task = get_task(data_args)
    splits = task.load()
    path = create_offline_model(
        arch,
        task.training_text(splits),
        workdir / f"model_{data_args.task}",
        size=size,
        tokenizer_type=tokenizer_type,
        vocab_size=8000,
        min_frequency=2 if tokenizer_type == "wordlevel" else 1,
        extra_tokens=task.extra_tokens(splits),
        seed=seed,
    )
    return task, splits, path


def pretrain(case, workdir: Path, device: str, batch_size: int, steps: int):
    """Teacher-forces the fresh model for `steps` steps, so that its roll-ins look like a half-trained model's
    (a random model stops or rambles at once, and its roll-in lengths would make DAgger look cheap or dear)."""
    task, splits, path = case
    trainer = make_trainer(task, splits, path, workdir, device, batch_size, objective="mle")
    trainer.args.learning_rate = 1e-3
    trainer.args.max_steps = steps
    trainer.train()
    target = workdir / f"pretrained_{task.args.task}"
    trainer.save_model(str(target))
    return task, splits, str(target)


def make_trainer(task, splits, path, workdir: Path, device: str, batch_size: int, **objective_args):
    model, tokenizer = load_model_and_tokenizer(path, extra_tokens=task.extra_tokens(splits))
    encoder_decoder = bool(model.config.is_encoder_decoder)
    tokenized = task.tokenize(splits, tokenizer, decoder_only=not encoder_decoder)
    args_class = SeqObjSeq2SeqTrainingArguments if encoder_decoder else SeqObjTrainingArguments
    args = args_class(
        output_dir=str(workdir / "trainer"),
        per_device_train_batch_size=batch_size,
        learning_rate=1e-4,
        report_to="none",
        use_cpu=device == "cpu",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        max_steps=1000,
        **objective_args,
    )
    trainer = build_trainer(model, tokenizer, task, tokenized, args)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    trainer.state.max_steps = args.max_steps
    return trainer


def one_step(trainer, batch) -> None:
    """One optimizer step as the Trainer makes it (no gradient accumulation)."""
    model = trainer.model
    model.train()
    num_items = (batch["labels"] != -100).sum()
    trainer.objective.begin_step()
    trainer.training_step(model, batch, num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.objective.micro_step = 0
    trainer.state.global_step += 1  # schedules and roll-in refreshes follow the step, as in training


def peak_step_memory(step, device: str) -> int:
    """Peak bytes allocated by one call of `step` above what was allocated before it.

    On CUDA this is the allocator's peak statistic; on CPU the allocations and frees that torch's profiler records
    (`profile_memory=True`) are replayed in order and their running total's maximum is taken. Both count tensor
    memory only (not the Python heap), and both include the step's gradients and temporaries.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text(encoding="utf-8"))["traceEvents"]
    running = peak = 0
    for event in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        if event["args"].get("Device Type", 0) != 0:  # CPU memory only
            continue
        running += int(event["args"]["Bytes"])
        peak = max(peak, running)
    return peak


class _Stepper:
    """One timed variant: an optimizer step on the shared batch, and what the variant logged."""

    def __init__(self, trainer, batch, step=None, metrics=None):
        self.trainer, self.batch = trainer, batch
        self._step = step or (lambda: one_step(trainer, batch))
        self._metrics = metrics or (lambda: trainer.objective.pop_metrics("train"))

    def step(self):
        self._step()

    def metrics(self) -> dict:
        return self._metrics()


def time_objectives(case, variants: dict[str, dict], device: str, batch_size: int, repeats: int, steps: int):
    """Median seconds per optimizer step and peak step memory of each variant, measured interleaved on one batch.

    A variant is the objective settings of one of our trainers, or a callable `(case, batch, workdir, device,
    batch_size) -> _Stepper` for a reference implementation timed on the same batch (TRL's GKDTrainer).
    """
    task, splits, path = case
    workdir = Path(tempfile.mkdtemp(prefix="hf_seqobj_bench_"))
    ours = {name: kw for name, kw in variants.items() if isinstance(kw, dict)}
    trainers = {name: make_trainer(task, splits, path, workdir, device, batch_size, **kw) for name, kw in ours.items()}
    first = next(iter(trainers.values()))
    batch = next(iter(first.get_train_dataloader()))
    batch = {key: value.to(first.args.device) for key, value in batch.items()}
    sync = torch.cuda.synchronize if first.args.device.type == "cuda" else (lambda: None)
    steppers = {}
    for name, variant in variants.items():
        if isinstance(variant, dict):
            steppers[name] = _Stepper(trainers[name], batch)
        else:
            steppers[name] = variant(case, batch, workdir, device, batch_size)
    for stepper in steppers.values():  # warm-up (allocations, first-call overheads)
        stepper.step()
        stepper.metrics()
    times = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, stepper in steppers.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                stepper.step()
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    results = {}
    for name, stepper in steppers.items():
        metrics = stepper.metrics()
        results[name] = {
            "seconds_per_step": statistics.median(times[name]),
            "seconds_per_step_all": times[name],
            "rollin_length": metrics.get("rollin_length"),
        }
    for name, stepper in steppers.items():  # untimed: the profiler slows the step down
        results[name]["peak_step_bytes"] = peak_step_memory(stepper.step, first.args.device.type)
        stepper.metrics()
    mean_target = float((batch["labels"] != -100).sum(1).float().mean())
    return results, int(batch["labels"].shape[0]), int(batch["labels"].shape[1]), mean_target


def gkd_stepper(case, batch, workdir: Path, device: str, batch_size: int) -> _Stepper:
    """TRL's GKDTrainer on-policy step (lmbda = 1) with the same tiny GPT-2 as student and teacher, on our batch.

    The prompts are our decoder-only batch's prompts (left-padded), and GKD generates as many new tokens as our
    roll-in does (the longest target of the batch), sampling at temperature 1 as our `rollin="sample"` variant does.
    trl is an optional benchmark dependency: `pip install trl`.
    """
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from hf_seqobj.decoding.prompts import split_prompts

    task, splits, path = case
    student, tokenizer = load_model_and_tokenizer(path, extra_tokens=task.extra_tokens(splits))
    teacher, _ = load_model_and_tokenizer(path, extra_tokens=task.extra_tokens(splits))
    prompts, prompt_mask = split_prompts(batch["input_ids"], batch["labels"], tokenizer.pad_token_id)
    max_new_tokens = int((batch["labels"] != -100).sum(1).max())
    lengths = []

    class _GKDTrainer(GKDTrainer):
        @staticmethod
        def generate_on_policy_outputs(model, inputs, generation_config):
            out = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            lengths.append(float((out[2] != -100).sum(1).float().mean()))
            return out

    args = GKDConfig(
        output_dir=str(workdir / "gkd"),
        per_device_train_batch_size=batch_size,
        learning_rate=1e-4,
        lmbda=1.0,
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        max_steps=1000,
    )
    trainer = _GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=lambda features: features,
        train_dataset=Dataset.from_dict({"prompt": ["unused"]}),
        processing_class=tokenizer,
    )
    trainer.generation_config.pad_token_id = tokenizer.pad_token_id
    trainer.generation_config.eos_token_id = tokenizer.eos_token_id
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "prompts": prompts.to(batch["input_ids"].device),
        "prompt_attention_mask": prompt_mask.to(batch["input_ids"].device),
    }

    def step():
        model = trainer.model
        model.train()
        trainer.training_step(model, dict(inputs), int((batch["labels"] != -100).sum()))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def metrics():
        mean = statistics.mean(lengths) if lengths else None
        lengths.clear()
        return {"rollin_length": mean}

    return _Stepper(trainer, batch, step, metrics)


def rollin_stepper(kind: str):
    """A variant that times one greedy roll-in of the batch alone (no oracle, no training): `kind` "decoder" is the
    roll-in decoder of the training steps (:func:`hf_seqobj.decoding.decoder.decode`, each row stopping at its gold
    length), "generate" is `model.generate` as the roll-ins called it before (the batch's longest gold length for
    every row)."""

    def make(case, batch, workdir: Path, device: str, batch_size: int) -> _Stepper:
        from transformers import GenerationConfig

        from hf_seqobj.decoding.decoder import decode
        from hf_seqobj.decoding.prompts import split_prompts
        from hf_seqobj.decoding.rollin import reference_targets

        task, splits, path = case
        model, tokenizer = load_model_and_tokenizer(path, extra_tokens=task.extra_tokens(splits))
        model = model.to(batch["input_ids"].device).eval()
        model.generation_config = GenerationConfig()
        encoder_decoder = bool(model.config.is_encoder_decoder)
        references = reference_targets(batch, encoder_decoder)
        limits = (references != -100).sum(1).clamp(min=1)
        if encoder_decoder:
            ids, mask = batch["input_ids"], batch["attention_mask"]
        else:
            ids, mask = split_prompts(batch["input_ids"], batch["labels"], tokenizer.pad_token_id)
        start = getattr(model.config, "decoder_start_token_id", None)
        settings = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        config = GenerationConfig(
            max_new_tokens=int(limits.max()), do_sample=False, num_beams=1, decoder_start_token_id=start, **settings
        )
        lengths = []

        def step():
            with torch.no_grad():
                if kind == "decoder":
                    tokens = decode(model, ids, mask, max_new_tokens=limits, decoder_start_token_id=start, **settings)
                    tokens = tokens.tokens
                else:
                    tokens = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                    tokens = tokens[:, ids.shape[1] :] if not encoder_decoder else tokens[:, 1:]
            lengths.append(float((tokens != tokenizer.pad_token_id).sum(1).float().mean()))

        def metrics():
            mean = statistics.mean(lengths) if lengths else None
            lengths.clear()
            return {"rollin_length": mean}

        return _Stepper(None, batch, step, metrics)

    return make


def gpu_rollin_variants(device: str) -> dict:
    """On a GPU, DAgger with the roll-in decoder's static cache, and with its compiled decode step (off on CPU)."""
    if device != "cuda":
        return {}
    base = {"objective": "dagger", "oracle": "span_f1", "dagger_beta": 0.0, "rollin_static_cache": True}
    return {
        "dagger+span_f1 (beta=0, static cache)": base,
        "dagger+span_f1 (beta=0, static cache + compile)": {**base, "rollin_compile": True},
    }


def speed(quick: bool, device: str, repeats: int, batch_size: int, size: str, tasks: list[str]) -> list[dict]:
    steps = 3 if quick else 10
    repeats = repeats or (3 if quick else 7)
    warm = 300 if quick else 1000
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="hf_seqobj_bench_"))
    ner_args, ner_name = ner_data(quick)
    cases = [
        (
            "ner",
            ner_name,
            ner_args,
            "wordlevel",
            {
                "mle": {"objective": "mle"},
                "scheduled_sampling": {"objective": "scheduled_sampling", "ss_schedule": "linear", "ss_k": 0.5},
                "dagger+span_f1 (beta=0)": {"objective": "dagger", "oracle": "span_f1", "dagger_beta": 0.0},
                "dagger+span_f1 (beta=0, rollin_fraction=0.5)": {
                    "objective": "dagger",
                    "oracle": "span_f1",
                    "dagger_beta": 0.0,
                    "rollin_fraction": 0.5,
                },
                "dagger+span_f1 (beta=0, rollin_fraction=0.25)": {
                    "objective": "dagger",
                    "oracle": "span_f1",
                    "dagger_beta": 0.0,
                    "rollin_fraction": 0.25,
                },
                "dagger+span_f1 (beta=0, fixed-length roll-ins)": {
                    "objective": "dagger",
                    "oracle": "span_f1",
                    "dagger_beta": 0.0,
                    "rollin_fixed_length": True,
                },
                "dagger+span_f1 (beta=0.5)": {
                    "objective": "dagger",
                    "oracle": "span_f1",
                    "dagger_beta": 0.5,
                    "dagger_beta_schedule": "constant",
                },
                "dagger+span_f1_partial (beta=0)": {
                    "objective": "dagger",
                    "oracle": "span_f1_partial",
                    "dagger_beta": 0.0,
                },
                "dagger+span_f1_partial (beta=0.5)": {
                    "objective": "dagger",
                    "oracle": "span_f1_partial",
                    "dagger_beta": 0.5,
                    "dagger_beta_schedule": "constant",
                },
                "roll-in alone: decoder": rollin_stepper("decoder"),
                "roll-in alone: generate()": rollin_stepper("generate"),
                **gpu_rollin_variants(device),
            },
        )
    ]
    if "ner" not in tasks:
        cases = []
    if "gkd" in tasks:  # decoder-only: our DAgger step against TRL's GKDTrainer on-policy step, same GPT-2 and batch
        sampled = {"objective": "dagger", "oracle": "span_f1", "dagger_beta": 0.0, "rollin": "sample"}
        cases.append(
            (
                "ner-gpt2",
                ner_name,
                ner_args,
                "wordlevel",
                {
                    "mle": {"objective": "mle"},
                    "dagger+span_f1 (beta=0, sampled roll-in)": sampled,
                    "trl GKDTrainer (lmbda=1)": gkd_stepper,
                },
                "gpt2",
            )
        )
    translation = translation_data(quick) if "translation" in tasks else None
    if translation is not None:
        variants = {
            "mle": {"objective": "mle"},
            "scheduled_sampling": {"objective": "scheduled_sampling", "ss_schedule": "linear", "ss_k": 0.5},
        }
        bleu = {"objective": "dagger", "oracle": "bleu", "dagger_beta": 0.0}
        # the oracle rewritten in issue 33 (whole outputs, reference-length stop): lookahead 0 (the default, the
        # best reference tail) and the beam of 5 over 2 free tokens; beta 0.5 constant (the default now) and
        # half of each batch rolled in (the settings the Multi30k report chose for BART and T5)
        variants["dagger+bleu h=0"] = bleu
        variants["dagger+bleu k=5 h=2"] = {**bleu, "oracle_beam_size": 5, "oracle_lookahead": 2}
        variants["dagger+bleu h=0 (beta=0.5)"] = {**bleu, "dagger_beta": 0.5, "dagger_beta_schedule": "constant"}
        variants["dagger+bleu h=0 (beta=0.5, rollin_fraction=0.5)"] = {
            **bleu,
            "dagger_beta": 0.5,
            "dagger_beta_schedule": "constant",
            "rollin_fraction": 0.5,
        }
        variants["roll-in alone: decoder"] = rollin_stepper("decoder")
        variants["roll-in alone: generate()"] = rollin_stepper("generate")
        variants.update(
            {
                "raml": {"objective": "raml", "raml_reward": "bleu"},
                "data_noising": {"objective": "data_noising", "noising_prob": 0.1},
                "spg": {"objective": "spg", "spg_reward": "bleu"},
                "interpolation": {"objective": "interpolation", "interp_reward": "bleu"},
            }
        )
        cases.append(("translation", translation[1], translation[0], "bpe", variants))
    summarization = summarization_data(quick) if "summarization" in tasks else None
    if summarization is not None:  # the settings of the SAMSum quality benchmark (beam-5 ROUGE oracles)
        dagger = {"objective": "dagger", "dagger_beta": 0.5, "dagger_beta_schedule": "constant"}
        variants = {
            "mle": {"objective": "mle"},
            "scheduled_sampling": {"objective": "scheduled_sampling", "ss_schedule": "linear", "ss_k": 0.5},
            "dagger+rouge2 (beta=0.5)": {**dagger, "oracle": "rouge2"},
            "dagger+rouge2 (beta=0.5, rollin_fraction=0.5)": {**dagger, "oracle": "rouge2", "rollin_fraction": 0.5},
            "dagger+rougeL (beta=0.5)": {**dagger, "oracle": "rougeL"},
            # what the mixings that follow the oracle agreement realised on SAMSum BART (agreement about 0.23): a
            # quarter of the examples rolled in, or beta about 0.75 (a fixed batch has no running agreement to follow)
            "dagger+rouge2 (beta=0.5, rollin_fraction=0.25)": {**dagger, "oracle": "rouge2", "rollin_fraction": 0.25},
            "dagger+rougeL (beta=0.5, rollin_fraction=0.25)": {**dagger, "oracle": "rougeL", "rollin_fraction": 0.25},
            "dagger+rouge2 (beta=0.75)": {**dagger, "oracle": "rouge2", "dagger_beta": 0.75},
            "raml": {"objective": "raml", "raml_reward": "rouge2", "raml_num_samples": 5},
            "interpolation": {"objective": "interpolation", "interp_reward": "rouge2"},
        }
        cases.append(("summarization", summarization[1], summarization[0], "bpe", variants))
    if "arithmetic" in tasks:
        sequencematch = {
            "objective": "sequencematch",
            "sm_bc_steps": 0,
            "sm_bc_anneal_steps": 1,
            "sm_noise_prob": 0.1,
            "rollin": "sample",
        }
        cases.append(
            (
                "arithmetic",
                arithmetic_data(quick)[1],
                arithmetic_data(quick)[0],
                "wordlevel",
                {
                    "mle": {"objective": "mle"},
                    "mle+backspace noise": {**sequencematch, "sm_bc_steps": 10**9},
                    "sequencematch (no refresh)": {**sequencematch, "sm_rollout_every": 10**9},
                    "sequencematch (no refresh, 1/2 roll-ins)": {
                        **sequencematch,
                        "sm_rollout_every": 10**9,
                        "sm_rollin_fraction": 0.5,
                    },
                    "sequencematch (no refresh, 1/4 roll-ins)": {
                        **sequencematch,
                        "sm_rollout_every": 10**9,
                        "sm_rollin_fraction": 0.25,
                    },
                    "sequencematch (refresh every 4)": {**sequencematch, "sm_rollout_every": 4},
                    "sequencematch (fresh every step)": {**sequencematch, "sm_rollout_every": 1},
                },
                "gpt2",
            )
        )
    for task_name, data_name, data_args, tokenizer_type, variants, *arch in cases:
        arch = arch[0] if arch else "bart"
        built = build_case(data_args, workdir, tokenizer_type, size, arch=arch)
        case = pretrain(built, workdir, device, batch_size, warm)
        timed, batch, width, mean_target = time_objectives(case, variants, device, batch_size, repeats, steps)
        base = timed["mle"]["seconds_per_step"]
        for name, values in timed.items():
            rows.append(
                {
                    "name": f"{task_name}/{name}",
                    "seconds_per_step": values["seconds_per_step"],
                    "ratio_to_mle": values["seconds_per_step"] / base,
                    "data": data_name,
                    "model": describe_model(arch, size),
                    "batch_size": batch,
                    "target_width": width,
                    "mean_rollin_length": values["rollin_length"],
                    "mean_target_length": mean_target,
                    "pretrain_steps": warm,
                    "repeats": repeats,
                    "steps_per_repeat": steps,
                    "seconds_per_step_all": values["seconds_per_step_all"],
                    "peak_step_bytes": values["peak_step_bytes"],
                    "peak_step_memory_ratio_to_mle": values["peak_step_bytes"] / timed["mle"]["peak_step_bytes"],
                }
            )
            print(
                f"{rows[-1]['name']:<40} {values['seconds_per_step'] * 1000:8.1f} ms/step  "
                f"x{rows[-1]['ratio_to_mle']:.2f}  roll-in {values['rollin_length'] or 0:.1f} / target "
                f"{mean_target:.1f} tokens  peak {values['peak_step_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
    return rows


def oracles(
    quick: bool, device: str, text_shape: tuple[int, int] = (32, 20), tags_shape: tuple[int, int] = (256, 30)
) -> list[dict]:
    """Positions labelled per second by each oracle: the built-in ones, and the generic oracle of a user's sentence
    metric (`register_sentence_metric`) with the library's BLEU as that metric (the same labels as the `bleu` rows:
    the difference is the cost of calling a metric on whole candidate outputs). The shapes are (batch, length)."""
    from hf_seqobj.oracles import BIOTagSet, SpanF1Oracle

    rows = []
    generator = torch.Generator().manual_seed(0)
    repeats = 3 if quick else 10
    tags = ["O"] + [f"{k}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for k in "BI"]
    tag_set = BIOTagSet(tags, list(range(10, 10 + len(tags))))
    rows_n, tag_length = tags_shape
    gold = torch.randint(10, 10 + len(tags), (rows_n, tag_length + 1), generator=generator)
    gold[:, tag_length] = 2
    prefix = torch.randint(10, 10 + len(tags), (rows_n, tag_length + 1), generator=generator)
    for mode in ("exact", "partial"):
        oracle = SpanF1Oracle(tag_set, eos_token_id=2, mode=mode)
        rows.append(
            _throughput(
                f"oracle/span_f1 {mode}",
                lambda o=oracle: o(prefix.to(device), gold.to(device)),
                rows_n * (tag_length + 1),
                repeats,
                device,
                f"{rows_n} sequences of {tag_length} tags",
            )
        )
    try:
        from hf_seqobj.oracles import BeamOracle, ExactRougeOracle, SentenceMetricOracle
        from hf_seqobj.rewards import score
    except ImportError:
        return rows
    batch, length = text_shape
    vocab = 1000
    refs = torch.randint(4, vocab, (batch, length + 1), generator=generator)
    refs[:, length] = 2
    hyps = torch.randint(4, vocab, (batch, length), generator=generator)
    hyps[:, ::2] = refs[:, :length:2]  # half the tokens right, as a half-trained model's roll-in
    oracles = {}
    for metric in ("bleu", "rouge2"):
        oracles[f"oracle/{metric} h=0"] = BeamOracle(metric=metric, lookahead=0, eos_token_id=2)
        for k in (5, 20):
            oracles[f"oracle/{metric} k={k} h=2"] = BeamOracle(metric=metric, beam_size=k, lookahead=2, eos_token_id=2)
    for metric in ("rougeL", "rouge1"):
        oracles[f"oracle/{metric} exact"] = ExactRougeOracle(metric, eos_token_id=2)

    def library_bleu(candidates: list[list[int]], references: list[list[int]]) -> torch.Tensor:
        """A user's batched sentence metric: the library's BLEU on padded tensors."""
        width = max(1, *(len(ids) for ids in candidates), *(len(ids) for ids in references))
        return score("bleu", _padded(candidates, width), _padded(references, width))

    for h in (0, 1):
        oracles[f"oracle/sentence metric (bleu) h={h}"] = SentenceMetricOracle(
            library_bleu, lookahead=h, eos_token_id=2
        )
    for name, oracle in oracles.items():
        rows.append(
            _throughput(
                name,
                lambda o=oracle: o(hyps.to(device), refs.to(device)),
                batch * length,
                repeats,
                device,
                f"{batch} sequences of {length} tokens",
            )
        )
    return rows


def _padded(rows: list[list[int]], width: int) -> torch.Tensor:
    """Token-id lists as one [N, width] tensor padded with -100."""
    return torch.tensor([ids + [-100] * (width - len(ids)) for ids in rows], dtype=torch.long)


def _throughput(name, call, positions, repeats, device, shape) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(
        f"{name:<40} {positions / seconds:12.0f} positions/s  ({seconds * 1000:.1f} ms per call, {shape})", flush=True
    )
    return {"name": name, "positions_per_second": positions / seconds, "seconds_per_call": seconds, "shape": shape}


def environment() -> dict:
    import transformers
    from quality import git_commit

    info = {
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["speed", "oracles", "quality"])
    parser.add_argument(
        "--task",
        choices=["ner", "summarization", "translation", "arithmetic", "arithmetic_long"],
        help="quality: the task.",
    )
    parser.add_argument("--seeds", type=int, default=3, help="quality: seeds of each method's chosen setting.")
    parser.add_argument("--families", help="quality: comma-separated model families (default: the task's).")
    parser.add_argument("--methods", help="quality: comma-separated method names (default: all of the task's).")
    parser.add_argument(
        "--stage",
        default="all",
        choices=["warm", "grid", "all"],
        help="quality: stop after the warm starts, after the grids (seed 0, validation), or run everything.",
    )
    parser.add_argument("--train-file", help="quality: the training data (default: the task's file under the data).")
    parser.add_argument("--validation-file", help="quality: the validation data (same format).")
    parser.add_argument("--test-file", help="quality: the test data (same format).")
    parser.add_argument("--sizes", help="quality: model size per family, e.g. gpt2=mini,bart=small (default: task's).")
    parser.add_argument("--warm-start-steps", type=int, help="quality: steps of each warm start (default: task's).")
    parser.add_argument(
        "--warm-start-lr",
        help="quality: peak learning rate of the warm starts, one for all families or per family, e.g. bart=3e-4 "
        "(default: the task's).",
    )
    parser.add_argument(
        "--warm-start-patience",
        type=int,
        help="quality: stop a warm start when the validation metric has not improved on its best for this many "
        "evaluations (transformers' EarlyStoppingCallback; default: train every step).",
    )
    parser.add_argument("--steps", type=int, help="quality: steps of every continuation run (default: task's).")
    parser.add_argument("--reports", default=str(ROOT / "benchmarks"), help="quality: where reports and JSON go.")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="quality: continue in a workdir that already holds runs of the task (finished runs are kept, an "
        "interrupted warm start resumes from its last checkpoint).",
    )
    parser.add_argument("--workdir", help="quality: where warm starts, runs and predictions are kept (default: temp).")
    parser.add_argument("--report-only", action="store_true", help="quality: rewrite the reports from the workdir.")
    parser.add_argument("--quick", action="store_true", help="A reduced run (under 3 minutes on 2 CPU cores).")
    parser.add_argument("--out", help="Write the rows as a JSON list to this file.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=0, help="Interleaved repeats (default 3 quick, 7 full).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-size", default="tiny", choices=sorted(MODEL_SIZES), help="Size of the BART model.")
    parser.add_argument(
        "--tasks",
        default="ner,translation,summarization,arithmetic,gkd",
        help="speed: comma-separated ner, translation, summarization, arithmetic, gkd (our DAgger step against TRL's "
        "GKDTrainer; needs `pip install trl`).",
    )
    options = parser.parse_args(argv)
    torch.manual_seed(0)
    started = time.time()
    if options.command == "quality":
        if options.task is None:
            parser.error("quality needs --task ner|summarization|translation")
        from quality import plan_quality, run_quality

        try:
            plan = plan_quality(options)
        except ValueError as error:  # a bad option value: one line and exit 2, before anything runs
            parser.error(str(error))
        run_quality(options, plan)
        print(f"done in {time.time() - started:.0f} s", file=sys.stderr)
        return 0
    rows = oracles(options.quick, options.device)
    if options.command == "speed":
        tasks = [name.strip() for name in options.tasks.split(",") if name.strip()]
        unknown = sorted(set(tasks) - set(SPEED_TASKS))
        if unknown:
            parser.error(f"--tasks {unknown} unknown; accepted: {', '.join(SPEED_TASKS)}")
        rows = (
            speed(options.quick, options.device, options.repeats, options.batch_size, options.model_size, tasks) + rows
        )
    env = environment()
    for row in rows:
        row["environment"] = env
    print(f"done in {time.time() - started:.0f} s", file=sys.stderr)
    if options.out:
        Path(options.out).parent.mkdir(parents=True, exist_ok=True)
        Path(options.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
