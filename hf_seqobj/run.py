"""A whole run from parsed settings: data, model, trainer, training, evaluation and the files it writes.

This is what `hf-seqobj train` and `hf-seqobj evaluate` call; it is ordinary Transformers code that a user could
write by hand (see the README's drop-in example).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from datasets import DatasetDict
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from hf_seqobj.arguments import DataArguments, ModelArguments
from hf_seqobj.modeling import create_offline_model, is_encoder_decoder, load_model_and_tokenizer
from hf_seqobj.objectives import get_objective
from hf_seqobj.peft_utils import lora_config_for
from hf_seqobj.tasks import Task, get_task
from hf_seqobj.trainers import (
    SeqObjSeq2SeqTrainer,
    SeqObjSeq2SeqTrainingArguments,
    SeqObjTrainer,
    SeqObjTrainingArguments,
)


if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

RUN_CONFIG_NAME = "hf_seqobj_run.yaml"
"""Written into output_dir: the model and data settings of the run, read back by `hf-seqobj evaluate`."""


def decoder_only(model_args: ModelArguments) -> bool:
    """Whether the run's model is decoder-only (GPT-2 style) rather than encoder-decoder (BART, T5)."""
    if model_args.architecture is not None:
        return model_args.architecture == "gpt2"
    return not is_encoder_decoder(model_args.model_name_or_path)


def training_arguments_class(model_args: ModelArguments) -> type:
    """SeqObjTrainingArguments for decoder-only models, SeqObjSeq2SeqTrainingArguments for encoder-decoder ones."""
    return SeqObjTrainingArguments if decoder_only(model_args) else SeqObjSeq2SeqTrainingArguments


def prepare_model(
    model_args: ModelArguments, task: Task, splits: DatasetDict, output_dir: str, seed: int, build: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads the checkpoint, or builds one offline (tokenizer trained on the training text) and loads it back.

    With `build=False` an offline model is not built but loaded from `output_dir/initial_model`, where the main
    process of a multi-process run has built it.
    """
    extra_tokens = task.extra_tokens(splits)
    path = model_args.model_name_or_path
    if path is None and not build:
        path = str(Path(output_dir) / "initial_model")
    elif path is None:
        tokenizer_type = model_args.tokenizer_type or task.default_tokenizer_type
        path = create_offline_model(
            model_args.architecture,
            task.training_text(splits),
            Path(output_dir) / "initial_model",
            size=model_args.model_size,
            tokenizer_type=tokenizer_type,
            vocab_size=model_args.vocab_size,
            min_frequency=model_args.min_frequency,
            extra_tokens=extra_tokens,
            seed=seed,
        )
    return load_model_and_tokenizer(path, extra_tokens=extra_tokens)


def get_peft_config(
    model_args: ModelArguments, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None
) -> LoraConfig | None:
    """The LoRA config that `model_args` asks for (`use_peft` and the `lora_*` fields), or None without `use_peft`."""
    if not model_args.use_peft:
        return None
    return lora_config_for(
        model,
        tokenizer,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=model_args.lora_modules_to_save,
    )


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    tokenized: DatasetDict,
    training_args: SeqObjTrainingArguments | SeqObjSeq2SeqTrainingArguments,
    peft_config=None,
) -> SeqObjTrainer | SeqObjSeq2SeqTrainer:
    """The trainer for the model family, with the padding collator and the task's generation metrics.

    `peft_config` (a `peft.PeftConfig`, see :func:`get_peft_config`) trains an adapter. The
    trainer's `task_name` and `dataset_name` (shown in model cards) are the task's.
    """
    encoder_decoder = bool(model.config.is_encoder_decoder)
    trainer_class = SeqObjSeq2SeqTrainer if encoder_decoder else SeqObjTrainer
    expected_args = SeqObjSeq2SeqTrainingArguments if encoder_decoder else SeqObjTrainingArguments
    if not isinstance(training_args, expected_args):
        raise TypeError(
            f"A {type(model).__name__} trains with {expected_args.__name__}, not {type(training_args).__name__}."
        )
    if encoder_decoder and training_args.generation_max_length is None:
        training_args.generation_max_length = task.args.max_target_length
    start = model.config.decoder_start_token_id if encoder_decoder else None
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train"),
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None),
        compute_metrics=task.compute_metrics_fn(tokenizer, start) if training_args.predict_with_generate else None,
        peft_config=peft_config,
    )
    trainer.task_name = task.args.task
    trainer.dataset_name = task.args.dataset_name or task.args.train_file
    return trainer


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: SeqObjTrainingArguments | SeqObjSeq2SeqTrainingArguments,
    config: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Trains, saves (model or LoRA adapter, tokenizer, trainer state, run settings) and evaluates on validation and
    test; then writes the model card (README.md) with the final metrics, or with `push_to_hub` pushes it all.

    Args:
        model_args: Which model.
        data_args: Which task and data.
        training_args: The trainer's arguments (objective included).
        config: The settings as given (YAML plus command line), saved next to the model for `hf-seqobj evaluate`.

    Returns:
        The metrics per split: `{"train": ..., "eval": ..., "test": ...}` (the splits that exist).
    """
    set_seed(training_args.seed)
    task = get_task(data_args)
    splits = task.load()
    if "train" not in splits:
        raise ValueError("Training needs a train split: set train_file or a dataset with a 'train' split.")
    # In a multi-process run the local main process builds an offline model first; the others then load it.
    with training_args.main_process_first(local=True, desc="building or loading the model"):
        build = training_args.local_process_index == 0
        model, tokenizer = prepare_model(
            model_args, task, splits, training_args.output_dir, training_args.seed, build=build
        )
    tokenized = task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder)
    # the objective's changes to the model (SequenceMatch's <bksp>) come before the adapter is configured
    get_objective(training_args.objective).prepare_model(model, tokenizer)
    peft_config = get_peft_config(model_args, model, tokenizer)
    trainer = build_trainer(model, tokenizer, task, tokenized, training_args, peft_config=peft_config)
    results: dict[str, dict[str, float]] = {}
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    results["train"] = {**train_result.metrics, "global_step": train_result.global_step}
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    _write_run_config(training_args.output_dir, model_args, data_args, config)
    if "validation" in tokenized:
        results["eval"] = trainer.evaluate()
        trainer.log_metrics("eval", results["eval"])
        trainer.save_metrics("eval", results["eval"])
    if "test" in tokenized:
        results["test"] = trainer.predict(tokenized["test"], metric_key_prefix="test").metrics
        trainer.log_metrics("test", results["test"])
        trainer.save_metrics("test", results["test"])
    # The model card with the final metrics; with push_to_hub, the final upload (model, tokenizer, card).
    if training_args.push_to_hub:
        trainer.push_to_hub(metrics=results.get("test"))
    else:
        trainer.create_model_card(metrics=results.get("test"))
    return results


def evaluate(
    model_dir: str,
    split: str,
    data_args: DataArguments,
    training_args: SeqObjTrainingArguments | SeqObjSeq2SeqTrainingArguments,
) -> dict[str, float]:
    """Scores a saved model on one split with generation; writes `{split}_results.json` to output_dir."""
    task = get_task(data_args)
    splits = task.load()
    if split not in splits:
        raise ValueError(f"Split {split!r} is not in the data (it has {list(splits)}); set its file or dataset.")
    model, tokenizer = load_model_and_tokenizer(model_dir, extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(DatasetDict({split: splits[split]}), tokenizer, not model.config.is_encoder_decoder)
    training_args.predict_with_generate = True
    trainer = build_trainer(model, tokenizer, task, tokenized, training_args)
    metrics = trainer.predict(tokenized[split], metric_key_prefix=split).metrics
    trainer.save_metrics(split, metrics)
    return metrics


def _write_run_config(output_dir: str, model_args: ModelArguments, data_args: DataArguments, config) -> None:
    saved = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), "given": config or {}}
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(output_dir) / RUN_CONFIG_NAME, "w", encoding="utf-8") as handle:
        yaml.safe_dump(json.loads(json.dumps(saved, default=str)), handle, sort_keys=False)


def read_run_config(model_dir: str) -> dict[str, Any]:
    """The settings `train` saved in `model_dir` (raises FileNotFoundError naming the file if absent)."""
    path = Path(model_dir) / RUN_CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {model_dir!r} was not written by `hf-seqobj train`.")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def format_metrics_table(results: dict[str, dict[str, float]], keys: list[str] | None = None) -> str:
    """A markdown table: one row per metric, one column per split (metric prefixes such as `eval_` removed)."""
    columns = {}
    for split, metrics in results.items():
        prefix = f"{split}_"
        columns[split] = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in metrics.items()}
    names = keys or sorted({name for metrics in columns.values() for name in metrics})
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = []
        for metrics in columns.values():
            value = metrics.get(name)
            cells.append("" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparison_table(results: dict[str, tuple[str, dict[str, dict[str, float]]]]) -> str:
    """A markdown table with one row per run: its objective, the main metrics of each split and seconds per step.

    Args:
        results: run name -> (objective, `train`'s results). The metrics shown are F1 / precision / recall when the
            runs report them (ner), else every metric of the test (or validation) split except runtimes.
    """

    def split_metrics(metrics: dict[str, dict[str, float]], split: str) -> dict[str, float]:
        prefix = f"{split}_"
        return {k[len(prefix) :]: v for k, v in metrics.get(split, {}).items() if k.startswith(prefix)}

    first = next(iter(results.values()))[1]
    shown_split = "test" if "test" in first else "eval"
    available = split_metrics(first, shown_split)
    if {"f1", "precision", "recall"} <= set(available):
        names = ["f1", "precision", "recall"]
    else:
        names = [k for k in available if k != "loss" and not k.endswith(("runtime", "per_second"))]
    header = ["run", "objective", *(f"{shown_split} {name}" for name in names)]
    if shown_split == "test" and "eval" in first and "f1" in names:
        header.append("eval f1")
    header += ["steps", "s/step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, (objective, metrics) in results.items():
        shown = split_metrics(metrics, shown_split)
        cells = [name, objective, *(f"{shown.get(metric, float('nan')):.4f}" for metric in names)]
        if shown_split == "test" and "eval" in first and "f1" in names:
            cells.append(f"{split_metrics(metrics, 'eval').get('f1', float('nan')):.4f}")
        train_metrics = metrics.get("train", {})
        steps = int(train_metrics.get("global_step", 0)) or None
        runtime = train_metrics.get("train_runtime")
        cells.append(str(steps or ""))
        cells.append(f"{runtime / steps:.3f}" if runtime and steps else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
