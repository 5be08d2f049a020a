"""A whole run from parsed settings: data, model, trainer, training, evaluation and the files it writes.

This is what `hf-seqobj train` and `hf-seqobj evaluate` call; it is ordinary Transformers code that a user could
write by hand (see the README's drop-in example).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fnmatch
import json
import logging
import shutil
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from datasets import DatasetDict
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from hf_seqobj.arguments import DataArguments, ModelArguments
from hf_seqobj.guards import (
    CHECKPOINT_MARKER,
    CheckpointMarkerCallback,
    FiniteWeightsCallback,
    check_accelerate_environment,
    check_finite_settings,
    check_lengths_fit_model,
    check_metric_for_best_model,
    check_optimizer,
    check_resume_matches,
    is_complete_checkpoint,
    run_identity,
    warn_unknown_tokens,
)
from hf_seqobj.modeling import (
    RUN_CONFIG_NAME,
    base_model_record,
    check_model_source,
    create_offline_model,
    is_encoder_decoder,
    load_model_and_tokenizer,
)
from hf_seqobj.objectives import get_objective
from hf_seqobj.peft_utils import lora_config_for
from hf_seqobj.reports import bootstrap_interval
from hf_seqobj.tasks import Task, get_task
from hf_seqobj.tasks.files import check_data_files
from hf_seqobj.trainers import (
    SeqObjSeq2SeqTrainer,
    SeqObjSeq2SeqTrainingArguments,
    SeqObjTrainer,
    SeqObjTrainingArguments,
)


if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

INITIAL_MODEL_DIR = "initial_model"
"""The folder of output_dir where a model built offline (`architecture`) is saved before training."""

RUN_ARTIFACTS = (
    RUN_CONFIG_NAME,
    "trainer_state.json",
    "training_args.bin",
    "*_results.json",
    "*_predictions.jsonl",
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "adapter_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "spiece.model",
    "chat_template.*",
    "README.md",
    "comparison.md",
    "completions.jsonl",
    "*.png",
    f"{PREFIX_CHECKPOINT_DIR}-*",
    INITIAL_MODEL_DIR,
    "eval_*",
    "runs",
)
"""Every name a run writes into its output_dir (file and folder patterns), in one place: a code that adds a file to
a run folder (predictions, completions, plots) adds its pattern here. A new run refuses an output_dir that holds any
of them (it would overwrite it) unless `overwrite_output_dir` is set, which deletes them first (see
:func:`prepare_output_dir`)."""

RUN_MARKERS = (
    RUN_CONFIG_NAME,
    "trainer_state.json",
    "config.json",
    "adapter_config.json",
    "*.safetensors",
    "pytorch_model*.bin",
    "*_results.json",
    f"{PREFIX_CHECKPOINT_DIR}-*",
    INITIAL_MODEL_DIR,
)
"""Names whose presence in an output_dir means that it holds a run (a model, its state, checkpoints, results)."""


def decoder_only(model_args: ModelArguments) -> bool:
    """Whether the run's model is decoder-only (GPT-2 style) rather than encoder-decoder (BART, T5)."""
    if model_args.architecture is not None:
        return model_args.architecture == "gpt2"
    check_model_source(model_args.model_name_or_path)
    try:
        return not is_encoder_decoder(model_args.model_name_or_path)
    except OSError as error:  # e.g. no connection to the Hub, or a config.json that is not one
        message = " ".join(str(error).split())
        raise ValueError(
            f"model_name_or_path {model_args.model_name_or_path!r} could not be loaded: {message}"
        ) from error


def training_arguments_class(model_args: ModelArguments) -> type:
    """SeqObjTrainingArguments for decoder-only models, SeqObjSeq2SeqTrainingArguments for encoder-decoder ones."""
    return SeqObjTrainingArguments if decoder_only(model_args) else SeqObjSeq2SeqTrainingArguments


# ------------------------------------------------------------------------------------------------- checks
def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def earlier_run(output_dir: str | Path) -> list[str]:
    """The names in `output_dir` that show it holds a run (see `RUN_MARKERS`), sorted; empty when it holds none."""
    path = Path(output_dir)
    if not path.is_dir():
        return []
    return sorted(entry.name for entry in path.iterdir() if _matches(entry.name, RUN_MARKERS))


def written_by_a_run(output_dir: str | Path) -> list[str]:
    """The names in `output_dir` that a run writes (see `RUN_ARTIFACTS`), sorted: a new run would overwrite them."""
    path = Path(output_dir)
    if not path.is_dir():
        return []
    return sorted(entry.name for entry in path.iterdir() if _matches(entry.name, RUN_ARTIFACTS))


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool, delete: bool = True) -> None:
    """Refuses to train into an output_dir that holds a run, unless resuming it or told to replace it.

    Args:
        output_dir: The run's folder.
        overwrite: Replace an earlier run: delete its files (every name of `RUN_ARTIFACTS`; other files stay, and a
            warning names them).
        resume: The run resumes from a checkpoint (so the folder holds the run it continues).
        delete: Do the deleting (False on all but the main process).

    With both `resume` and `overwrite` set, resuming wins: nothing is deleted (a warning says so).

    Raises:
        ValueError: the folder holds a run, or a file that the run writes (a README.md, which would become the model
            card, say), and neither `overwrite` nor `resume` is set; the message names the folder, the files and
            the ways on. Also an empty output_dir, or one that is a file.
    """
    if not str(output_dir).strip():
        raise ValueError("output_dir is empty: set it to the folder the run writes to (e.g. output_dir: outputs/ner).")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output_dir {output_dir!r} is a file, not a folder: choose another output_dir.")
    found = earlier_run(output_dir)
    if resume:
        if overwrite and delete:
            logger.warning(
                "resume_from_checkpoint and overwrite_output_dir are both set: resuming wins, and nothing in %s is "
                "deleted (unset resume_from_checkpoint to replace the run).",
                output_dir,
            )
        return
    clashing = [] if found else written_by_a_run(output_dir)
    if not overwrite and (found or clashing):
        shown = ", ".join((found or clashing)[:4]) + (", ..." if len(found or clashing) > 4 else "")
        if found:
            raise ValueError(
                f"output_dir {output_dir!r} already holds a run ({shown}); nothing was changed. Continue it with "
                "--resume_from_checkpoint latest, or delete it and train anew with --overwrite_output_dir true (or "
                "choose another output_dir)."
            )
        raise ValueError(
            f"output_dir {output_dir!r} holds {shown}, which the run would overwrite; nothing was changed. Move "
            "it, choose another output_dir, or let the run replace it with --overwrite_output_dir true."
        )
    if not (found or clashing) or not delete:
        return
    kept = []
    for entry in sorted(Path(output_dir).iterdir()):
        if not _matches(entry.name, RUN_ARTIFACTS):
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    logger.info("overwrite_output_dir: deleted the earlier run in %s.", output_dir)
    if kept:
        logger.warning(
            "overwrite_output_dir: %s also holds %s, which no run writes; they were kept.", output_dir, kept
        )


def resolve_resume(training_args) -> str | None:
    """The checkpoint folder that `resume_from_checkpoint` names, checked (:func:`check_checkpoint`), or None.

    `latest` or `true`: the newest `checkpoint-*` folder of output_dir; `false` or unset: no resuming.

    Raises:
        ValueError: no checkpoint to resume from, or a checkpoint with a missing, truncated or corrupt file.
    """
    value = training_args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("false", "none", ""):
        return None
    if value is True or str(value).lower() in ("latest", "true", "last"):
        checkpoint = latest_checkpoint(training_args.output_dir)
        if checkpoint is None:
            raise ValueError(
                f"resume_from_checkpoint {value!r}: output_dir {training_args.output_dir!r} holds no complete "
                f"{PREFIX_CHECKPOINT_DIR}-* folder to resume from."
            )
    else:
        checkpoint = str(value)
        if not Path(checkpoint).is_dir():
            raise ValueError(f"resume_from_checkpoint {checkpoint!r} is not a checkpoint folder (it does not exist).")
    check_checkpoint(checkpoint)
    if not is_complete_checkpoint(checkpoint):
        raise ValueError(
            f"resume_from_checkpoint {checkpoint!r} holds no {CHECKPOINT_MARKER}, which hf-seqobj train writes last: "
            "the checkpoint is incomplete (or not written by hf-seqobj train); resume from another one."
        )
    return checkpoint


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-*` folder of output_dir (one with `CHECKPOINT_MARKER`, which is written after
    every other part of it), or None. A newer, incomplete one (a run stopped while writing it) is named in a warning
    and passed over."""
    folder = Path(output_dir)
    if not folder.is_dir() or get_last_checkpoint(str(folder)) is None:
        return None
    steps = {}
    for entry in folder.iterdir():
        suffix = entry.name[len(PREFIX_CHECKPOINT_DIR) + 1 :]
        if entry.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and suffix.isdigit() and entry.is_dir():
            steps[int(suffix)] = entry
    for step in sorted(steps, reverse=True):
        if (steps[step] / "trainer_state.json").is_file() and is_complete_checkpoint(steps[step]):
            return str(steps[step])
        logger.warning(
            "%s is incomplete (no %s, which is written last): passed over for an older checkpoint.",
            steps[step],
            CHECKPOINT_MARKER,
        )
    return None


def check_checkpoint(folder: str | Path) -> None:
    """Checks that every file of a Trainer checkpoint is whole before resuming from it.

    JSON files must parse; `.safetensors` files must have a valid header and the size it implies; torch files
    (`.pt`, `.pth`, `.bin`) must be complete zip archives whose members match their CRC-32.

    Raises:
        ValueError: naming the first file that is missing (trainer_state.json), truncated or corrupt.
    """
    folder = Path(folder)
    if not (folder / "trainer_state.json").is_file():
        raise ValueError(f"{folder} holds no trainer_state.json: it is not a checkpoint written by the Trainer.")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        problem = None
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                problem = f"not valid JSON ({error})"
        elif path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            try:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                problem = None if bad is None else f"its member {bad} fails its CRC check"
            except (zipfile.BadZipFile, EOFError, OSError) as error:
                problem = f"not a complete torch archive ({error})"
        if problem is not None:
            raise ValueError(f"Checkpoint file {path} is truncated or corrupt: {problem}; resume from another one.")


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"its header claims {length} bytes of {size - 8}"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not JSON"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    return None if size == expected else f"{size} bytes where its header implies {expected}"


def check_settings(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: SeqObjTrainingArguments | SeqObjSeq2SeqTrainingArguments,
) -> None:
    """Checks what the argument classes cannot check alone, before any data is read or anything is written.

    Stock settings that transformers would only trip over later (a batch size of 0, `max_steps: 0`, ...), settings
    that have no effect on this machine (`fp16` without a GPU), an oracle that does not fit the task's outputs, a
    model that cannot be loaded here, and data files that cannot be read safely (:func:`check_data_files`).

    Raises:
        ValueError: naming the setting, its value and what would be accepted.
    """
    args = training_args
    check_finite_settings(model_args, data_args, args)
    if not model_args.vocab_size >= 1 or not model_args.min_frequency >= 0:
        name = "vocab_size" if not model_args.vocab_size >= 1 else "min_frequency"
        bound = ">= 1" if name == "vocab_size" else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {getattr(model_args, name)}.")
    at_least_one = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"]
    at_least_one += ["generation_max_new_tokens", "generation_max_length", "generation_num_beams"]
    at_least_one += ["eval_accumulation_steps", "save_total_limit", "torch_empty_cache_steps"]
    for name in at_least_one:
        value = getattr(args, name, None)
        if value is not None and not value >= 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if not (args.max_steps == -1 or args.max_steps >= 1):
        raise ValueError(f"max_steps must be >= 1, or -1 to train num_train_epochs epochs; got {args.max_steps}.")
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"num_train_epochs must be > 0 (or set max_steps), got {args.num_train_epochs}.")
    for name in ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "dataloader_num_workers"):
        value = getattr(args, name, None)
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    if not 0.0 <= args.label_smoothing_factor < 1.0:
        raise ValueError(f"label_smoothing_factor must be in [0, 1), got {args.label_smoothing_factor}.")
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 (a step count, or a fraction of the training steps), got {value}.")
    if args.device.type == "cpu":
        for name in ("fp16", "fp16_full_eval"):
            if getattr(args, name, False):
                why = "use_cpu is set" if args.use_cpu else "no GPU was found"
                raise ValueError(
                    f"{name}: true has no effect on this machine, which trains on the CPU ({why}): fp16 needs a CUDA "
                    f"GPU. Use bf16 on the CPU, or set {name}: false."
                )
    check_accelerate_environment(args)
    check_oracle_fits_task(args, data_args)
    check_optimizer(args)
    check_metric_for_best_model(args, get_task(data_args))
    if model_args.model_name_or_path is not None:
        check_model_source(model_args.model_name_or_path)
    check_data_files(data_args)


def check_oracle_fits_task(training_args, data_args: DataArguments) -> None:
    """An objective's oracle must score the kind of output the task produces (its registration's `output`)."""
    from hf_seqobj.oracles import get_oracle, oracle_names
    from hf_seqobj.tasks import TASKS

    settings = {f.name for s in get_objective(training_args.objective).settings for f in dataclasses.fields(s)}
    if "oracle" not in settings:
        return
    oracle = training_args.oracle
    outputs = getattr(TASKS[data_args.task], "output_kind", "text")
    needs = get_oracle(oracle).output
    if needs != outputs:
        fitting = ", ".join(oracle_names(output=outputs))
        what = {"bio_tags": "BIO tag sequences", "text": "text"}
        raise ValueError(
            f"oracle {oracle!r} scores {what[needs]}, but task {data_args.task!r} outputs {what[outputs]}: the "
            f"oracle would relabel roll-ins with the wrong outputs. Use an oracle for {what[outputs]}: {fitting}."
        )


# ------------------------------------------------------------------------------------------------- the run
def prepare_model(
    model_args: ModelArguments, task: Task, splits: DatasetDict, output_dir: str, seed: int, build: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads the checkpoint, or builds one offline (tokenizer trained on the training text) and loads it back.

    With `build=False` an offline model is not built but loaded from `output_dir/initial_model`, where the main
    process of a multi-process run has built it (or an earlier part of a resumed run). The path is absolute, so that
    an adapter's record of its base model holds wherever it is read from.
    """
    extra_tokens = task.extra_tokens(splits)
    path = model_args.model_name_or_path
    if path is None and not build:
        path = str((Path(output_dir) / INITIAL_MODEL_DIR).resolve())
    elif path is None:
        tokenizer_type = model_args.tokenizer_type or task.default_tokenizer_type
        path = create_offline_model(
            model_args.architecture,
            task.training_text(splits),
            (Path(output_dir) / INITIAL_MODEL_DIR).resolve(),
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
    overwrite_output_dir: bool = False,
) -> dict[str, dict[str, float]]:
    """Trains, saves (model or LoRA adapter, tokenizer, trainer state, run settings) and evaluates on validation and
    test; then writes the model card (README.md) with the final metrics, or with `push_to_hub` pushes it all.

    Before anything is read or written, the settings are checked (:func:`check_settings`), the checkpoint to resume
    from is resolved and checked (:func:`resolve_resume`), and an output_dir that holds an earlier run is refused
    (:func:`prepare_output_dir`). Once the model is loaded, its positions, the vocabulary and the checkpoint's run
    (:func:`hf_seqobj.guards.check_resume_matches`) are checked; while training, the weights must stay finite, and
    each checkpoint gets its completion marker last. A run that stops without a new complete checkpoint removes what
    it created (:func:`_failed_run`).

    Args:
        model_args: Which model.
        data_args: Which task and data.
        training_args: The trainer's arguments (objective included). `resume_from_checkpoint` may be a checkpoint
            folder, or `latest` / `true` for the newest one in output_dir.
        config: The settings as given (YAML plus command line, as parsed), saved next to the model.
        overwrite_output_dir: Delete an earlier run in output_dir first (see :func:`prepare_output_dir`).

    Returns:
        The metrics per split: `{"train": ..., "eval": ..., "test": ...}` (the splits that exist).
    """
    check_settings(model_args, data_args, training_args)
    checkpoint = resolve_resume(training_args)
    output_dir = training_args.output_dir
    prepare_output_dir(output_dir, overwrite_output_dir, checkpoint is not None, delete=False)
    set_seed(training_args.seed)
    task = get_task(data_args)
    splits = task.load()
    if "train" not in splits:
        raise ValueError("Training needs a train split: set train_file or a dataset with a 'train' split.")
    with training_args.main_process_first(local=False, desc="preparing output_dir"):
        if training_args.process_index == 0:
            prepare_output_dir(output_dir, overwrite_output_dir, checkpoint is not None)
    # In a multi-process run the local main process builds an offline model first; the others then load it. A
    # resumed run loads the model it built before.
    before = sorted(p.name for p in Path(output_dir).iterdir()) if Path(output_dir).is_dir() else None
    built = checkpoint is not None and (Path(output_dir) / INITIAL_MODEL_DIR).is_dir()
    build = training_args.local_process_index == 0 and not built and model_args.model_name_or_path is None
    trainer = None
    try:
        with training_args.main_process_first(local=True, desc="building or loading the model"):
            model, tokenizer = prepare_model(model_args, task, splits, output_dir, training_args.seed, build=build)
        check_lengths_fit_model(model, data_args, training_args)
        tokenized = task.tokenize(splits, tokenizer, decoder_only=not model.config.is_encoder_decoder)
        vocabulary = f"the tokenizer of model_name_or_path {model_args.model_name_or_path!r}"
        if model_args.model_name_or_path is None:
            vocabulary = f"vocab_size={model_args.vocab_size}, min_frequency={model_args.min_frequency}"
        warn_unknown_tokens(tokenized, tokenizer, vocabulary)
        # the objective's changes to the model (SequenceMatch's <bksp>) come before the adapter is configured
        get_objective(training_args.objective).prepare_model(model, tokenizer)
        size = model_args.model_size if model_args.model_name_or_path is None else None
        identity = run_identity(model, tokenizer, training_args.objective, task.extra_tokens(splits), size)
        if checkpoint is not None:
            check_resume_matches(checkpoint, identity)
        peft_config = get_peft_config(model_args, model, tokenizer)
        trainer = build_trainer(model, tokenizer, task, tokenized, training_args, peft_config=peft_config)
        trainer.add_callback(FiniteWeightsCallback())
        trainer.add_callback(CheckpointMarkerCallback(identity))  # last: after every other part of a checkpoint
        base_model = model_args.model_name_or_path or str(Path(output_dir) / INITIAL_MODEL_DIR)
        results: dict[str, dict[str, float]] = {}
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException as error:
        step = trainer.state.global_step if trainer is not None else 0
        reported = _failed_run(error, output_dir, before, training_args.process_index == 0, step)
        if reported is error:
            raise
        raise reported from error
    trainer.save_model()
    trainer.save_state()
    results["train"] = {**train_result.metrics, "global_step": train_result.global_step}
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    if trainer.is_world_process_zero():
        base = base_model_record(base_model, output_dir) if model_args.use_peft else None
        write_run_config(output_dir, model_args, data_args, config, base_model=base)
    if "validation" in tokenized:
        results["eval"] = trainer.evaluate()
        trainer.log_metrics("eval", results["eval"])
        trainer.save_metrics("eval", results["eval"])
        if data_args.save_eval_predictions:
            save_predictions(trainer, task, "eval", splits["validation"]["source"])
    if "test" in tokenized:
        output = trainer.predict(tokenized["test"], metric_key_prefix="test")
        results["test"] = output.metrics
        trainer.log_metrics("test", results["test"])
        trainer.save_metrics("test", results["test"])
        save_predictions(trainer, task, "test", splits["test"]["source"])
    # The model card with the final metrics; with push_to_hub, the final upload (model, tokenizer, card).
    if training_args.push_to_hub:
        trainer.push_to_hub(metrics=results.get("test"))
    else:
        trainer.create_model_card(metrics=results.get("test"))
    return results


class RunInterrupted(KeyboardInterrupt):
    """A run stopped with Ctrl-C; the message says what was kept and how to go on."""


def _failed_run(error: BaseException, output_dir: str, before: list[str] | None, main: bool, step: int):
    """What a run that stopped with `error` leaves, and the error to report.

    A run that wrote no complete checkpoint removes everything it created in output_dir (never what was there
    before, and the folder itself only if the run created it), so that the same command can start again. A run that
    wrote a complete checkpoint keeps it (and the rest) to resume from. Ctrl-C becomes :class:`RunInterrupted` and a
    full disk an `OSError`, each with one line that says what was kept; other errors are returned as they are.
    """
    folder = Path(output_dir)
    created = [] if not folder.is_dir() else [p for p in folder.iterdir() if before is None or p.name not in before]
    new_checkpoint = any(p.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and is_complete_checkpoint(p) for p in created)
    if main and not new_checkpoint:
        for entry in created:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if before is None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    last = latest_checkpoint(folder) if folder.is_dir() else None
    kept = (
        f"the last complete checkpoint is {last}: continue with --resume_from_checkpoint latest"
        if last is not None
        else f"no checkpoint was complete, so the files the run created in {output_dir} were removed"
    )
    if isinstance(error, KeyboardInterrupt):
        return RunInterrupted(f"interrupted at step {step}; {kept}.")
    text = " ".join(str(error).split())
    full = getattr(error, "errno", None) == errno.ENOSPC or any(
        sign in text for sign in ("No space left", "file write failed", "StorageFull")
    )
    if full:
        return OSError(errno.ENOSPC, f"writing to {output_dir} failed, the disk is full ({text[:160]}); {kept}")
    return error


def evaluate(
    model_dir: str,
    split: str,
    data_args: DataArguments,
    training_args: SeqObjTrainingArguments | SeqObjSeq2SeqTrainingArguments,
) -> dict[str, float]:
    """Scores a saved model on one split with generation; writes `{split}_results.json` and the decoded texts,
    `{split}_predictions.jsonl`, to output_dir. The metrics include the task's main metric's 95% bootstrap interval
    over examples (:func:`hf_seqobj.reports.bootstrap_interval`): `{split}_{metric}_low` / `_high`, and
    `{split}_bootstrap_resamples`."""
    check_settings(ModelArguments(model_name_or_path=model_dir), data_args, training_args)
    task = get_task(data_args)
    splits = task.load()
    if split not in splits:
        raise ValueError(f"Split {split!r} is not in the data (it has {list(splits)}); set its file or dataset.")
    model, tokenizer = load_model_and_tokenizer(model_dir, extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(DatasetDict({split: splits[split]}), tokenizer, not model.config.is_encoder_decoder)
    training_args.predict_with_generate = True
    trainer = build_trainer(model, tokenizer, task, tokenized, training_args)
    output = trainer.predict(tokenized[split], metric_key_prefix=split)
    metrics = output.metrics
    decoded = task.last_outputs  # what the task's compute_metrics decoded and scored
    interval = bootstrap_interval(task.score, decoded.predictions, decoded.references, seed=training_args.seed)
    metrics[f"{split}_{interval.metric}_low"] = interval.low
    metrics[f"{split}_{interval.metric}_high"] = interval.high
    metrics[f"{split}_bootstrap_resamples"] = interval.resamples
    trainer.save_metrics(split, metrics)
    save_predictions(trainer, task, split, splits[split]["source"])
    return metrics


def save_predictions(trainer, task: Task, split: str, sources: list[str]) -> None:
    """Writes `{split}_predictions.jsonl` beside `{split}_results.json` (main process only): the texts that the last
    generation-scored evaluation or prediction decoded (:meth:`Task.save_predictions`), with their sources.

    Where the decoded texts are not one per example (a launched multi-process evaluation gathers every process's
    batches), the file is not written and a warning says so: the rows could not be matched to their sources."""
    outputs = task.last_outputs
    if not trainer.is_world_process_zero() or outputs is None:
        return
    if len(outputs.predictions) != len(sources):
        logger.warning(
            "%s_predictions.jsonl not written: %d decoded predictions for %d examples (gathered from %d processes).",
            split,
            len(outputs.predictions),
            len(sources),
            trainer.args.world_size,
        )
        return
    task.save_predictions(Path(trainer.args.output_dir) / f"{split}_predictions.jsonl", sources)


def _plain(value: Any) -> Any:
    """`value` as YAML-safe plain data (enums as their values, tuples as lists, other objects as strings)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_run_config(
    output_dir: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    config: dict[str, Any] | None,
    base_model: dict[str, Any] | None = None,
) -> None:
    """Writes `RUN_CONFIG_NAME` into output_dir: the model and data settings (data paths made absolute, so that
    `hf-seqobj evaluate` finds them from any directory), the settings as given, and an adapter's base model."""
    if data_args.evaluate_metric is not None:  # a loaded module is saved as its script; a local path made absolute
        from hf_seqobj.metrics import metric_source

        data_args = dataclasses.replace(data_args, evaluate_metric=metric_source(data_args.evaluate_metric))
    data = dataclasses.asdict(data_args)
    for name in ("train_file", "validation_file", "test_file"):
        if data[name] is not None:
            data[name] = str(Path(data[name]).expanduser().resolve())
    if data["dataset_name"] is not None and Path(data["dataset_name"]).is_dir():
        data["dataset_name"] = str(Path(data["dataset_name"]).resolve())
    saved = {"model": dataclasses.asdict(model_args), "data": data, "given": config or {}}
    if base_model is not None:
        saved["base_model"] = base_model
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(output_dir) / RUN_CONFIG_NAME, "w", encoding="utf-8") as handle:
        yaml.safe_dump(_plain(saved), handle, sort_keys=False, allow_unicode=True)


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


def format_comparison_table(
    results: dict[str, tuple[str, dict[str, dict[str, float]]]],
    baseline: str | None = None,
    starts: dict[str, str] | None = None,
) -> str:
    """A markdown table with one row per run: its objective, the main metrics of each split and seconds per step.

    Args:
        results: run name -> (objective, `train`'s results). The metrics shown are F1 / precision / recall when the
            runs report them (ner), else every metric of the test (or validation) split except runtimes.
        baseline: A run name: each other run's difference to it in the first metric shown (and in eval F1) is added.
        starts: run name -> the run whose trained model it continued (runs not in it started from scratch).
    """

    def split_metrics(metrics: dict[str, dict[str, float]], split: str) -> dict[str, float]:
        prefix = f"{split}_"
        return {k[len(prefix) :]: v for k, v in metrics.get(split, {}).items() if k.startswith(prefix)}

    starts = starts or {}
    first = next(iter(results.values()))[1]
    shown_split = "test" if "test" in first else "eval"
    available = split_metrics(first, shown_split)
    if {"f1", "precision", "recall"} <= set(available):
        names = ["f1", "precision", "recall"]
    else:
        names = [k for k in available if k != "loss" and not k.endswith(("runtime", "per_second"))]
    with_eval_f1 = shown_split == "test" and "eval" in first and "f1" in names
    header = ["run", "objective", "starts from", *(f"{shown_split} {name}" for name in names)]
    if baseline is not None and names:
        header.append(f"{shown_split} {names[0]} - {baseline}")
    if with_eval_f1:
        header.append("eval f1")
        if baseline is not None:
            header.append(f"eval f1 - {baseline}")
    header += ["steps", "s/step"]
    base = results.get(baseline, (None, {}))[1] if baseline is not None else {}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, (objective, metrics) in results.items():
        shown = split_metrics(metrics, shown_split)
        cells = [name, objective, starts.get(name, "scratch")]
        cells += [f"{shown.get(metric, float('nan')):.4f}" for metric in names]
        if baseline is not None and names:
            reference = split_metrics(base, shown_split).get(names[0], float("nan"))
            cells.append("" if name == baseline else f"{shown.get(names[0], float('nan')) - reference:+.4f}")
        if with_eval_f1:
            eval_f1 = split_metrics(metrics, "eval").get("f1", float("nan"))
            cells.append(f"{eval_f1:.4f}")
            if baseline is not None:
                reference = split_metrics(base, "eval").get("f1", float("nan"))
                cells.append("" if name == baseline else f"{eval_f1 - reference:+.4f}")
        train_metrics = metrics.get("train", {})
        steps = int(train_metrics.get("global_step", 0)) or None
        runtime = train_metrics.get("train_runtime")
        cells.append(str(steps or ""))
        cells.append(f"{runtime / steps:.3f}" if runtime and steps else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
