"""The objective registry: how a trainer finds the loss that `objective=...` names.

An objective is an :class:`Objective` subclass registered with :func:`register_objective`, which names it and gives
its settings dataclasses and papers. The trainers build one instance per run and route `compute_loss` through it.
Adding an objective is adding a module to `hf_seqobj/objectives/` that defines and registers its class: the argument
classes, their validation, the command line and the model card read everything else from the registry.

:class:`Objective` is a template. Its :meth:`~Objective.compute_loss` (the trainers' `compute_loss`) does what every
objective shares: in evaluation it returns the stock `Trainer.compute_loss` (so `eval_loss` is comparable across
objectives), in training it counts the micro-batches of the optimizer step (:attr:`Objective.micro_step`), calls
the subclass's :meth:`~Objective.training_loss` and packs `(loss, outputs)` when `return_outputs` is asked for. A
subclass implements only :meth:`~Objective.training_loss`:

    @register_objective("half_mle")
    class HalfMLE(Objective):
        def training_loss(self, model, inputs, num_items_in_batch):
            loss, outputs = self.trainer.stock_compute_loss(model, inputs, True, num_items_in_batch)
            return loss / 2, outputs

Bookkeeping that needs the Trainer's step events is done by callbacks that only the objectives needing them get
(:meth:`Objective.callbacks`): :class:`StepClockCallback` times each optimizer step for the `{part}_time_share`
logs of objectives that time parts of their step (:attr:`Objective.records_time_shares`), and
:class:`ObjectiveStateCallback` saves :meth:`Objective.save_state` into each checkpoint for objectives that override
it. The default objective, `mle`, has neither, so its trainer's callback list is the stock one.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import difflib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_seqobj.decoding.models import unwrap_model
from hf_seqobj.objectives.losses import token_nll


if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


class Objective(abc.ABC):
    """Base class of a training objective.

    Args:
        trainer: The trainer that owns this objective; `trainer.args` holds the objective's settings.
    """

    name: ClassVar[str]
    """The value of `objective=` that selects this class (set by :func:`register_objective`)."""
    settings: ClassVar[tuple[type, ...]] = ()
    """The dataclasses whose fields are this objective's settings (set by :func:`register_objective`)."""
    papers: ClassVar[tuple[str, ...]] = ()
    """BibTeX entries of the papers behind the objective (set by :func:`register_objective`)."""
    description: ClassVar[str] = ""
    """A short phrase for model cards and docs (set by :func:`register_objective`)."""
    requires_language_model: ClassVar[bool] = True
    """Whether the objective needs a causal LM or a seq2seq LM (:func:`language_model_kind`); a trainer built with
    another kind of model raises a `ValueError` (:meth:`check_model`)."""
    uses_compute_loss_func: ClassVar[bool] = False
    """Whether the training loss goes through the Trainer's `compute_loss_func` (the stock loss does; a sequence
    objective computes its own). A trainer given a `compute_loss_func` with an objective that does not use it
    raises a `ValueError` rather than ignore the function."""
    records_time_shares: ClassVar[bool] = True
    """Whether the objective times parts of its step (:meth:`timed`): then the trainer gets a
    :class:`StepClockCallback` and logs `{part}_time_share` at each optimizer step."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._step_seconds: dict[str, float] = defaultdict(float)
        self.micro_step = 0
        """Index of the current micro-batch within the optimizer step (0 .. gradient_accumulation_steps - 1)."""
        self._micro_step_of: int | None = None  # the global step that `micro_step` counts the micro-batches of

    @classmethod
    def check_model(cls, model: torch.nn.Module) -> None:
        """Raises `ValueError` if the objective needs a language model (:attr:`requires_language_model`) and `model`
        (unwrapped from DDP / PEFT) is neither a causal LM nor a seq2seq LM."""
        if cls.requires_language_model and language_model_kind(model) is None:
            raise ValueError(
                f"The {cls.name!r} objective needs a causal LM or a seq2seq LM (a model that can generate), got "
                f"{type(unwrap_model(model)).__name__}; only objective='mle' trains any model."
            )

    def callbacks(self) -> list[TrainerCallback]:
        """Callbacks the trainer adds for this objective, only those it needs.

        Default: a :class:`StepClockCallback` if :attr:`records_time_shares`, and an :class:`ObjectiveStateCallback`
        if the class overrides :meth:`save_state`. Override (extending this list) for callbacks of your own.
        """
        callbacks: list[TrainerCallback] = []
        if self.records_time_shares:
            callbacks.append(StepClockCallback(self))
        if type(self).save_state is not Objective.save_state:
            callbacks.append(ObjectiveStateCallback(self))
        return callbacks

    def completions(
        self, model: torch.nn.Module, inputs: dict[str, Any], generator: torch.Generator
    ) -> list[dict[str, Any]]:
        """What the objective trains on for each example of `inputs`, as table cells (`log_completions`).

        The :class:`~hf_seqobj.callbacks.CompletionsCallback` calls this at each logging step on a few fixed training
        examples, without gradients, and shows each returned mapping (column -> text or number) between the
        example's source and its reference (columns `score` and `oracle score` after it); see
        :mod:`hf_seqobj.callbacks.completions` for the helpers that render token ids. It must not change the
        training: draw only from `generator` (the callback also restores every global random state afterwards),
        record no metric and leave the objective's state (buffers, caches that change results) as it was.

        Default (teacher forcing): `predicted`, the model's greedy token at each gold position, and `labels`, the
        gold targets, `[marked]` where the model predicts another token. Override it to show your objective's own
        inputs and targets.

        Args:
            model: The (possibly wrapped) model, in training mode.
            inputs: The collated examples, on the device.
            generator: A CPU generator for any random draw the display needs (seeded from the seed and the step).

        Returns:
            One mapping per row of `inputs`.
        """
        from hf_seqobj.callbacks.completions import render_targets, render_tokens
        from hf_seqobj.decoding.rollin import dropout_mode, predicted_tokens

        tokenizer = self.trainer.processing_class
        encoder_decoder = bool(self.trainer.accelerator.unwrap_model(model).config.is_encoder_decoder)
        with dropout_mode(model, False):
            _, outputs = self.teacher_forced_loss(model, inputs)
        predicted = predicted_tokens(outputs.logits, encoder_decoder)
        rows = []
        for index, labels in enumerate(inputs["labels"]):
            targets = labels != -100
            rows.append(
                {
                    "predicted": render_tokens(tokenizer, predicted[index][targets]),
                    "labels": render_targets(tokenizer, predicted[index][targets], labels[targets]),
                }
            )
        return rows

    def save_state(self, checkpoint_dir: str) -> None:
        """Saves objective state that a resumed run needs (e.g. a replay buffer) into a checkpoint. Default: none."""
        return None

    def load_state(self, checkpoint_dir: str) -> None:
        """Restores what :meth:`save_state` saved, when training resumes from `checkpoint_dir`. Default: nothing."""
        return None

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Adds the wall time of the block to `part`; each optimizer step logs `{part}_time_share` of its time."""
        device = getattr(self.trainer.args, "device", None)
        synchronize = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self._step_seconds[part] += time.perf_counter() - start

    def begin_step(self) -> None:
        """Called by the step clock before the first micro-batch of an optimizer step: resets the step's timings
        (and :attr:`micro_step`, which :meth:`compute_loss` also resets when the global step changes)."""
        self.micro_step = 0
        self._step_seconds.clear()

    def end_step(self, seconds: float) -> None:
        """Called by the step clock after an optimizer step that took `seconds`: records the time shares."""
        for part, spent in self._step_seconds.items():
            self._metrics["train"][f"{part}_time_share"].append(spent / max(seconds, 1e-12))
        self._step_seconds.clear()

    def step_generator(self, device: torch.device, per_micro_step: bool = True) -> torch.Generator:
        """A generator for this micro-batch's random draws, the same on every rank (seed, global step, micro-batch).

        Every process draws the same numbers, so a branch that depends on them is taken by all ranks alike, and a
        resumed run draws what the uninterrupted run drew.

        Args:
            device: Where the generator lives.
            per_micro_step: Seed with the micro-batch's index too (each micro-batch draws its own numbers). False:
                every micro-batch of the optimizer step draws the same stream, of which it uses its own slice
                (:meth:`global_rows`), so that the draws do not depend on how the step is split.
        """
        args, state = self.trainer.args, self.trainer.state
        micro_step = self.micro_step if per_micro_step else 0
        seed = (int(args.seed) * 1_000_003 + int(state.global_step)) * 1009 + micro_step
        return torch.Generator(device=device).manual_seed(seed % (2**63))

    def global_rows(self, rows: int, micro_step: int | None = None) -> tuple[int, int]:
        """`(offset, total)`: where the local micro-batch of `rows` rows starts in the one big batch that the
        accumulated micro-batches of all processes make up, and that batch's rows.

        The offset is `(micro_step * processes + process_index) * block`, with `block` the per-process batch size
        (`args.train_batch_size`; accelerate gives process p the p-th slice of each global micro-batch).

        Args:
            rows: Rows of the local micro-batch.
            micro_step: The micro-batch's index within the optimizer step; default :attr:`micro_step` (the one
                being trained).
        """
        trainer = self.trainer
        accelerator = getattr(trainer, "accelerator", None)
        processes = getattr(accelerator, "num_processes", 1)
        process_index = getattr(accelerator, "process_index", 0)
        block = max(int(trainer.args.train_batch_size), rows)
        micro_step = self.micro_step if micro_step is None else micro_step
        accumulation = max(int(trainer.args.gradient_accumulation_steps), micro_step + 1)
        return (micro_step * processes + process_index) * block, accumulation * processes * block

    @classmethod
    def prepare_model(cls, model: torch.nn.Module, tokenizer: Any) -> None:
        """Changes the model before training, before any PEFT wrapping (e.g. adds a token). Default: nothing."""
        return None

    @classmethod
    def validate_args(cls, args: TrainingArguments) -> None:
        """Checks the objective's settings in `args`; raises `ValueError` naming a bad value.

        Default: the `validate()` of each of the objective's settings dataclasses. Override (calling this) for checks
        that involve other training arguments.
        """
        for setting in cls.settings:
            setting.validate(args)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The loss of one (micro-)batch, with the contract of `transformers.Trainer.compute_loss`: the template
        method that subclasses do not override.

        In evaluation (`model.training` false) it is the stock `Trainer.compute_loss`. In training it sets
        :attr:`micro_step` (0 for the first micro-batch of each optimizer step, i.e. when the global step has changed
        since the last call), returns :meth:`training_loss` (with the outputs if `return_outputs`) and counts the
        micro-batch.
        """
        trainer = self.trainer
        if not model.training:
            return trainer.stock_compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        step = int(trainer.state.global_step)
        if step != self._micro_step_of:
            self.micro_step, self._micro_step_of = 0, step
        loss, outputs = self.training_loss(model, inputs, num_items_in_batch)
        self.micro_step += 1
        return (loss, outputs) if return_outputs else loss

    @abc.abstractmethod
    def training_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, Any]:
        """The training loss of one micro-batch and the model outputs it came from: what a subclass implements.

        Args:
            model: The (possibly wrapped) model, in training mode.
            inputs: The collated micro-batch, on the device.
            num_items_in_batch: The Trainer's count of target tokens over the whole accumulated (and, with
                `average_tokens_across_devices`, gathered) batch, or None when the Trainer does not count them.
                A loss divided by it is already scaled for gradient accumulation (the Trainer then does not divide
                it again); without it, return this micro-batch's mean (the Trainer divides by the accumulation
                steps).

        Returns:
            `(loss, outputs)`: the scalar loss to back-propagate and the model outputs (any object; the Trainer only
            passes them on when `return_outputs` is asked for).
        """

    def teacher_forced_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Token cross-entropy of `batch["labels"]` given the batch's inputs, normalised as one big batch.

        The loss is computed here from the logits (not by the model, whose own loss may ignore `num_items_in_batch`:
        T5's does), as the sum over labelled positions divided by `num_items_in_batch`, the Trainer's count of gold
        target tokens over the whole accumulated (and, with `average_tokens_across_devices`, gathered) batch. So a
        step with gradient accumulation, or over several processes, makes the same update as one big batch, as
        with stock MLE. The Trainer's label smoothing applies. Without `num_items_in_batch` the mean over this
        batch's labels is returned (and the Trainer divides it by the accumulation steps).

        An encoder-decoder batch without `decoder_input_ids` gets them from its labels
        (`prepare_decoder_input_ids_from_labels`), as the model builds them when it is given labels.

        Returns:
            `(loss, model outputs)`.
        """
        trainer = self.trainer
        labels = batch["labels"]
        unwrapped = unwrap_model(trainer.accelerator.unwrap_model(model))
        shift = not bool(unwrapped.config.is_encoder_decoder)
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        if not shift and "decoder_input_ids" not in inputs and "decoder_inputs_embeds" not in inputs:
            inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        outputs = model(**inputs)
        if trainer.label_smoother is not None:
            loss = trainer.label_smoother(outputs, labels, shift_labels=shift, num_items_in_batch=num_items_in_batch)
        else:
            loss = token_nll(outputs.logits, labels, shift=shift, num_items_in_batch=num_items_in_batch)
        return self.scale_for_processes(loss, num_items_in_batch), outputs

    def scale_for_processes(self, loss: torch.Tensor, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
        """Multiplies a loss normalised by the gathered `num_items_in_batch` by the number of processes.

        With `average_tokens_across_devices`, `num_items_in_batch` counts the targets of every process, while DDP
        averages the gradients over processes: the product makes the update that of one big batch.
        """
        args = self.trainer.args
        if num_items_in_batch is not None and args.average_tokens_across_devices:
            loss = loss * (self.trainer.accelerator.num_processes if args.n_gpu <= 1 else args.n_gpu)
        return loss

    def record_metric(self, key: str, value: float | torch.Tensor) -> None:
        """Adds one value of a metric; the trainer logs the mean of the values recorded since its last log."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        mode = "train" if self.trainer.model.training else "eval"
        self._metrics[mode][key].append(float(value))

    def pop_metrics(self, mode: str) -> dict[str, float]:
        """Returns the mean of each metric recorded in `mode` ("train" or "eval") since the last call, and resets."""
        means = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        self._metrics[mode].clear()
        return means


class StepClockCallback(TrainerCallback):
    """Times each optimizer step for the objective's `{part}_time_share` metrics (objectives that time parts of
    their step get one, :attr:`Objective.records_time_shares`)."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.objective.begin_step()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.objective.end_step(time.perf_counter() - self.start)


class ObjectiveStateCallback(TrainerCallback):
    """Calls the objective's `save_state` with the folder of each checkpoint the trainer writes (objectives that
    override :meth:`Objective.save_state` get one)."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def on_save(self, args, state, control, **kwargs):
        import os

        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        self.objective.save_state(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))


class ExportedStateCallback(TrainerCallback, ExportableState):
    """A callback whose state goes into `trainer_state.json` at every checkpoint (transformers' `ExportableState`:
    subclasses implement `state()`, with the attributes to keep under `"attributes"`) and is read back on resume in
    `on_train_begin` (whether or not `restore_callback_states_from_checkpoint` is set): each saved attribute is set
    again (lists as lists)."""

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        if saved:
            for name, value in saved.get("attributes", {}).items():
                setattr(self, name, list(value) if isinstance(value, list) else value)


def language_model_kind(model: torch.nn.Module) -> str | None:
    """The kind of language model `model` is: "causal", "seq2seq", or None for any other model.

    A model is a causal / seq2seq LM when its class (unwrapped from DDP and PEFT) is one of Transformers' causal LM /
    seq2seq LM classes (the `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` mappings), or, for a class of your own,
    when it is a `PreTrainedModel` with a config that can generate (`can_generate()`), told apart by
    `config.is_encoder_decoder`.
    """
    from transformers import PreTrainedModel
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    def names(mapping: dict[str, Any]) -> set[str]:
        found: set[str] = set()
        for value in mapping.values():
            found.update([value] if isinstance(value, str) else value)
        return found

    base = unwrap_model(model)
    name = type(base).__name__
    if name in names(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES):
        return "seq2seq"
    if name in names(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return "causal"
    config = getattr(base, "config", None)
    if isinstance(base, PreTrainedModel) and config is not None and base.can_generate():
        return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    return None


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """One round of SplitMix64: spreads nearby integers over 64 bits (torch's CPU generator keeps 32 of them)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def row_seed(seed: int, global_step: int, row: int) -> int:
    """The seed of one example's random stream: a hash of (seed, global step, index in the global batch)."""
    mixed = _splitmix64(_splitmix64(_splitmix64(int(seed)) ^ int(global_step)) ^ int(row))
    return (mixed ^ (mixed >> 32)) & 0xFFFFFFFF


def row_generators(objective: Objective, rows: int, micro_step: int | None = None) -> list[torch.Generator]:
    """One CPU generator per row of the current micro-batch, keyed by where the row sits in the global batch.

    Row r of the local micro-batch has the index `offset + r` that it has in the one big batch that the accumulated
    micro-batches of all processes make up (:meth:`Objective.global_rows`). The generators live on the CPU, so that
    every device draws the same numbers.

    Args:
        objective: The objective (its trainer gives the seed, the global step and the process layout; its
            `micro_step` the index of the micro-batch within the optimizer step).
        rows: Rows of the local micro-batch.
        micro_step: The micro-batch's index within the optimizer step; default `objective.micro_step` (the one
            being trained).
    """
    args, state = objective.trainer.args, objective.trainer.state
    first, _ = objective.global_rows(rows, micro_step)
    return [torch.Generator().manual_seed(row_seed(args.seed, state.global_step, first + row)) for row in range(rows)]


OBJECTIVES: dict[str, type[Objective]] = {}
"""The registered objectives by name (what `objective=` accepts)."""


def register_objective(
    name: str,
    *,
    settings: Sequence[type] = (),
    papers: Sequence[str] = (),
    description: str = "",
) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator that registers an objective: the one place that says what an objective is.

    The training-argument classes inherit the fields of every registered settings dataclass (so the command line,
    `--help` and YAML configs know them), validation calls each dataclass's `validate()`, and the model card shows
    the objective's settings and cites its papers: all read from here.

        @register_objective("dagger", settings=(DAggerArguments, RollinArguments), papers=(YANG2024,))
        class DAggerObjective(Objective): ...

    An objective registered after `hf_seqobj.trainers` was imported is selectable, but its settings are not fields
    of the built-in argument classes: mix its settings dataclass into a subclass of them.

    Args:
        name: The value of `objective=` that selects the class (set as its `name`).
        settings: Dataclasses whose fields are the objective's settings; each has a `validate(self)` method that
            raises `ValueError` on a value it does not accept. A dataclass may be shared by several objectives.
        papers: BibTeX entries of the papers to cite.
        description: A short phrase for model cards and docs.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"An objective's name must be a non-empty identifier string, got {name!r}.")
    for setting in settings:
        if not (dataclasses.is_dataclass(setting) and callable(getattr(setting, "validate", None))):
            raise ValueError(f"settings of {name!r} must be dataclasses with a validate() method, got {setting!r}.")

    def decorator(cls: type[Objective]) -> type[Objective]:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise ValueError(f"register_objective({name!r}) decorates Objective subclasses, not {cls!r}.")
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"Objective {name!r} is already registered by {OBJECTIVES[name].__qualname__}.")
        cls.name = name
        cls.settings = tuple(settings)
        cls.papers = tuple(papers)
        cls.description = description
        OBJECTIVES[name] = cls
        return cls

    return decorator


def registered_settings() -> tuple[type, ...]:
    """The settings dataclasses of every registered objective, each once, in registration order."""
    return tuple(dict.fromkeys(setting for cls in OBJECTIVES.values() for setting in cls.settings))


def get_objective(name: str) -> type[Objective]:
    """Returns the registered objective class called `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the registered names (and close matches).
    """
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(str(name), OBJECTIVES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"Unknown objective {name!r}{hint}; registered objectives: {', '.join(sorted(OBJECTIVES))}.")
    return OBJECTIVES[name]
