"""Roll-in generation: the current model continues each training example.

On-policy objectives (DAgger, later SequenceMatch and the ERPO family) generate inside a training step. This module
does it the way that survives distributed training and arbitrary checkpoints:

- the model is unwrapped (DDP / FSDP / DeepSpeed), and under DeepSpeed ZeRO-3 its parameters are gathered for the
  duration of generation; under FSDP and ZeRO-3 every rank generates in lockstep (`synced_gpus`);
- gradient checkpointing is switched off and the KV cache on during generation, and restored afterwards;
- the GenerationConfig is explicit (a checkpoint's own `generation_config`, with beams, forced tokens or
  `no_repeat_ngram_size`, never leaks into roll-ins);
- dropout is as configured: off (eval mode) by default, the model's training mode with `dropout=True`;
- the training forward of a decoder-only roll-in gets explicit position ids (GPT-2 derives them from the attention
  mask in `generate` but uses `arange` in a plain forward).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.generation import gather_targets, split_prompts


ROLLIN_MODES = ("greedy", "sample")


def check_rollin(mode: str, temperature: float) -> None:
    """Raises ValueError naming a bad roll-in mode (`ROLLIN_MODES`) or a temperature that is not > 0."""
    if mode not in ROLLIN_MODES:
        raise ValueError(f"rollin must be one of {ROLLIN_MODES}, got {mode!r}.")
    if not temperature > 0:
        raise ValueError(f"rollin_temperature must be > 0, got {temperature}.")


def rollin_generation_config(
    model: PreTrainedModel,
    max_new_tokens: int,
    mode: str = "greedy",
    temperature: float = 1.0,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> GenerationConfig:
    """The explicit generation settings of a roll-in: greedy or pure sampling at `temperature`, one beam, cache on.

    Sampling draws from the whole (temperature-scaled) distribution: top-k and top-p are off.
    """
    check_rollin(mode, temperature)
    config = model.config
    sample = mode == "sample"
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_k=0 if sample else None,
        top_p=1.0 if sample else None,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_token_id if pad_token_id is not None else config.pad_token_id,
        eos_token_id=eos_token_id if eos_token_id is not None else config.eos_token_id,
        bos_token_id=config.bos_token_id,
        decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
    )


@contextlib.contextmanager
def dropout_mode(model: torch.nn.Module, dropout: bool = False) -> Iterator[None]:
    """Eval mode (dropout off) unless `dropout`, for a forward that takes the model's own tokens; restored on exit."""
    was_training = model.training
    model.train(dropout and was_training)
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def generation_mode(
    model: torch.nn.Module, dropout: bool = False, checkpointing_kwargs: dict | None = None
) -> Iterator[None]:
    """Gradient checkpointing off, KV cache on, and eval mode unless `dropout`; everything restored on exit.

    `checkpointing_kwargs` are passed back to `gradient_checkpointing_enable` when checkpointing is restored (the
    trainer's `gradient_checkpointing_kwargs`).
    """
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else None
    checkpointing = bool(getattr(model, name or "is_gradient_checkpointing", False))
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    modern = hasattr(model, "activation_checkpointing_disable")  # transformers >= 5.x renamed the methods
    if checkpointing:
        (model.activation_checkpointing_disable if modern else model.gradient_checkpointing_disable)()
    if config is not None:
        config.use_cache = True
    try:
        with dropout_mode(model, dropout):
            yield
    finally:
        if config is not None:
            config.use_cache = use_cache
        if checkpointing:
            enable = model.activation_checkpointing_enable if modern else model.gradient_checkpointing_enable
            enable(checkpointing_kwargs)


@contextlib.contextmanager
def unwrap_for_generation(model: torch.nn.Module, accelerator) -> Iterator[tuple[PreTrainedModel, bool]]:
    """Yields `(model to call generate on, synced_gpus)` for a model that the accelerator may have wrapped.

    DDP: the unwrapped module. DeepSpeed ZeRO-3: the unwrapped module with its parameters gathered for the duration,
    and `synced_gpus=True`. FSDP: the unwrapped module (its sharded forward gathers parameters) with
    `synced_gpus=True`, so that a rank that finishes early keeps taking part in the other ranks' forwards.
    """
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    distributed = getattr(accelerator, "distributed_type", DistributedType.NO)
    multi = getattr(accelerator, "num_processes", 1) > 1
    if distributed == DistributedType.DEEPSPEED:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                yield unwrapped, multi
            return
    yield unwrapped, multi and distributed == DistributedType.FSDP


@contextlib.contextmanager
def blank_generation_defaults(model: torch.nn.Module) -> Iterator[None]:
    """Gives the model a blank `generation_config` for the duration (restored on exit).

    `generate` fills every setting that the explicit GenerationConfig of a roll-in leaves None from the model's own
    `generation_config`: a checkpoint's `forced_eos_token_id` (BART's default), `no_repeat_ngram_size`,
    `min_length` and the like would otherwise alter the logits the roll-in samples from.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class OracleMixingProcessor(LogitsProcessor):
    """Forces the oracle's token at a generation step with probability `beta` per row (DAgger's mixture policy).

    Args:
        oracle: Has `next_token(prefix_ids [B, t], prefix_lengths [B], reference_ids) -> [B]` (-100: no label).
        reference_ids: [B, M] gold outputs, passed to the oracle.
        prompt_width: How many leading columns of generate's `input_ids` are not roll-in tokens (the left-padded
            prompt of a decoder-only model, or 1 for an encoder-decoder's decoder start token).
        beta: Probability, per row and step, that the oracle's token replaces the model's.
        generator: The source of the mixing draws (seeded identically on every rank).
        row_offset: Index of this batch's first row in the global batch (process index x local batch size).
        global_rows: Rows of the global batch (all processes); None: this batch's rows. Each step draws one
            number per global row and uses this batch's slice, so that a row's draws do not depend on how the
            global batch is split over processes.
    """

    def __init__(
        self,
        oracle,
        reference_ids: torch.Tensor,
        prompt_width: int,
        beta: float,
        generator=None,
        row_offset: int = 0,
        global_rows: int | None = None,
    ):
        self.oracle = oracle
        self.reference_ids = reference_ids
        self.prompt_width = prompt_width
        self.beta = beta
        self.generator = generator
        self.row_offset = row_offset
        self.global_rows = global_rows
        self.forced = 0
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch = input_ids.shape[0]
        device = self.generator.device if self.generator is not None else scores.device
        rows = max(self.global_rows or batch, self.row_offset + batch)
        draws = torch.rand(rows, generator=self.generator, device=device)[self.row_offset : self.row_offset + batch]
        mix = draws.to(scores.device) < self.beta
        self.steps += batch
        if not bool(mix.any()):
            return scores
        prefix = input_ids[:, self.prompt_width :]
        lengths = torch.full((batch,), prefix.shape[1], dtype=torch.long, device=prefix.device)
        labels = self.oracle.next_token(prefix, lengths, self.reference_ids)
        force = mix & (labels != IGNORE_INDEX)
        if bool(force.any()):
            forced_scores = torch.full_like(scores, float("-inf"))
            forced_scores.scatter_(1, labels.clamp(min=0)[:, None], 0.0)
            scores = torch.where(force[:, None], forced_scores, scores)
            self.forced += int(force.sum())
        return scores


@dataclass
class RollIn:
    """A batch of roll-ins: the generated tokens and where they sit.

    Attributes:
        tokens: [B, T] generated tokens (the first T new tokens of each row; after a row's first EOS, padding).
        lengths: [B] tokens up to and including each row's first EOS (T where a row has none).
        prompt_ids: [B, W] left-padded prompts (decoder-only) or None (encoder-decoder).
        prompt_mask: [B, W] attention mask of the prompts, or None.
        forced: How many tokens the oracle forced (DAgger's mixture), out of `steps` generation steps x rows.
        steps: Generation steps x rows.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    prompt_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    forced: int = 0
    steps: int = 0
    pad_token_id: int = 0

    def cut(self, limits: torch.Tensor) -> RollIn:
        """The roll-in with row b cut to at most `limits[b]` tokens (the rest becomes padding)."""
        lengths = torch.minimum(self.lengths, limits.to(self.lengths.device))
        after = torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :] >= lengths[:, None]
        return dataclasses.replace(self, tokens=self.tokens.masked_fill(after, self.pad_token_id), lengths=lengths)


def first_eos_lengths(tokens: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """[B] number of tokens up to and including each row's first EOS (the row's width where there is none)."""
    eos = torch.as_tensor(eos_token_id, device=tokens.device).reshape(-1)
    is_eos = torch.isin(tokens, eos)
    width = tokens.shape[1]
    if width == 0:  # nothing generated (e.g. a backspace decoding that deleted everything)
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, width)


def reference_targets(inputs: dict[str, torch.Tensor], encoder_decoder: bool) -> torch.Tensor:
    """[B, M] gold output tokens of a batch, left-aligned, -100 after them (the labels without the prompt)."""
    labels = inputs["labels"]
    return labels if encoder_decoder else gather_targets(labels)


def generate_rollin(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    generation_config: GenerationConfig,
    accelerator=None,
    dropout: bool = False,
    logits_processor: LogitsProcessor | None = None,
    checkpointing_kwargs: dict | None = None,
) -> RollIn:
    """Rolls in with the current model on a padded training batch (prompts continue for decoder-only models).

    Args:
        model: The (possibly wrapped) model being trained.
        inputs: The batch as the collator made it: `input_ids`, `attention_mask`, `labels` (decoder-only examples
            are prompt + target with -100 on the prompt; encoder-decoder examples have the source in `input_ids`).
        generation_config: Explicit settings (see :func:`rollin_generation_config`).
        accelerator: The trainer's accelerator, to unwrap the model; None for a bare model.
        dropout: Generate in training mode (dropout on) instead of eval mode.
        logits_processor: For instance an :class:`OracleMixingProcessor`; its `prompt_width` is set here.
        checkpointing_kwargs: The trainer's `gradient_checkpointing_kwargs`, to restore checkpointing with.

    Returns:
        A :class:`RollIn` (no gradient flows through it).
    """
    with unwrap_for_generation(model, accelerator) as (unwrapped, synced_gpus):
        encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
        if encoder_decoder:
            prompt_ids, prompt_mask = None, None
            generate_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
            width = 1
        else:
            prompt_ids, prompt_mask = split_prompts(
                inputs["input_ids"], inputs["labels"], generation_config.pad_token_id
            )
            generate_inputs = {"input_ids": prompt_ids, "attention_mask": prompt_mask}
            width = prompt_ids.shape[1]
        processors = LogitsProcessorList()
        if logits_processor is not None:
            logits_processor.prompt_width = width
            processors.append(logits_processor)
        with (
            generation_mode(unwrapped, dropout, checkpointing_kwargs),
            blank_generation_defaults(unwrapped),
            torch.no_grad(),
        ):
            generated = unwrapped.generate(
                **generate_inputs,
                generation_config=generation_config,
                logits_processor=processors,
                synced_gpus=synced_gpus,
            )
    tokens = generated[:, width:]
    lengths = first_eos_lengths(tokens, generation_config.eos_token_id)
    rollin = RollIn(
        tokens=tokens,
        lengths=lengths,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        forced=getattr(logits_processor, "forced", 0),
        steps=getattr(logits_processor, "steps", 0),
        pad_token_id=generation_config.pad_token_id,
    )
    return rollin.cut(lengths)  # everything after a row's first EOS becomes padding


def rollin_training_batch(
    inputs: dict[str, torch.Tensor], rollin: RollIn, labels: torch.Tensor, decoder_start_token_id: int | None
) -> dict[str, torch.Tensor]:
    """The teacher-forced training batch on a roll-in: its tokens as inputs, `labels` ([B, T]) as targets.

    Label t is the target after the roll-in prefix `rollin.tokens[:, :t]`. Encoder-decoder: `decoder_input_ids` =
    [start, y_0 .. y_{T-2}] (explicit, so the model does not shift the new labels itself). Decoder-only: prompt +
    roll-in, left-padded as generation had it, with an attention mask that ends at each row's first EOS and explicit
    position ids (the same ones generation used).
    """
    tokens = rollin.tokens
    if labels.shape != tokens.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the roll-in's shape {tuple(tokens.shape)}.")
    if rollin.prompt_ids is None:
        if decoder_start_token_id is None:
            raise ValueError("An encoder-decoder roll-in needs the model's decoder_start_token_id.")
        start = torch.full_like(tokens[:, :1], decoder_start_token_id)
        batch = {key: inputs[key] for key in ("input_ids", "attention_mask") if key in inputs}
        batch["decoder_input_ids"] = torch.cat([start, tokens[:, :-1]], dim=1)
        batch["labels"] = labels
        return batch
    keep = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < rollin.lengths[:, None]
    attention_mask = torch.cat([rollin.prompt_mask, keep.long()], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_labels = torch.full_like(rollin.prompt_ids, IGNORE_INDEX)
    return {
        "input_ids": torch.cat([rollin.prompt_ids, tokens], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "labels": torch.cat([prompt_labels, labels], dim=1),
    }


def predicted_tokens(logits: torch.Tensor, encoder_decoder: bool) -> torch.Tensor:
    """Greedy token at each label position of a teacher-forced forward (decoder-only logits are shifted)."""
    argmax = logits.argmax(-1)
    if encoder_decoder:
        return argmax
    return torch.cat([torch.full_like(argmax[:, :1], IGNORE_INDEX), argmax[:, :-1]], dim=1)


@dataclass
class RollinArguments:
    """How on-policy objectives (dagger, scheduled_sampling) take the model's own tokens."""

    rollin: Literal[ROLLIN_MODES] = field(
        default="greedy",
        metadata={
            "help": "How the model's tokens are chosen in roll-ins (dagger) and in scheduled sampling's first pass: "
            "'greedy' (argmax) or 'sample' (at rollin_temperature)."
        },
    )
    rollin_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature when rollin='sample' (> 0)."}
    )
    rollin_dropout: bool = field(
        default=False,
        metadata={
            "help": "Keep dropout on while taking the model's tokens (training mode). Default off: roll-ins use the "
            "model as it is used at inference (eval mode)."
        },
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        check_rollin(self.rollin, self.rollin_temperature)
