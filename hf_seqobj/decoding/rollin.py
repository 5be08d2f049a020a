"""Roll-in generation: the current model continues each training example.

On-policy objectives (DAgger, later SequenceMatch and the ERPO family) generate inside a training step. This module
does it the way that survives distributed training and arbitrary checkpoints:

- the model is unwrapped (DDP / FSDP / DeepSpeed), and under DeepSpeed ZeRO-3 its parameters are gathered for the
  duration of generation; under FSDP and ZeRO-3 every rank generates in lockstep (`synced_gpus`);
- gradient checkpointing is switched off and the KV cache on during generation, and restored afterwards;
- decoding is :func:`hf_seqobj.decoding.decoder.decode` (the tokens `generate` would give, at a lower cost per
  step), from explicit settings (a checkpoint's own `generation_config`, with beams, forced tokens or
  `no_repeat_ngram_size`, never enters a roll-in);
- dropout is as configured: off (eval mode) by default, the model's training mode with `dropout=True`;
- the training forward of a decoder-only roll-in gets explicit position ids (GPT-2 derives them from the attention
  mask in `generate` but uses `arange` in a plain forward).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import GenerationConfig, PreTrainedModel

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.decoder import OracleMixing, decode
from hf_seqobj.decoding.prompts import gather_targets, split_prompts


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
    checkpointing_kwargs: dict | None = None,
    *,
    limits: torch.Tensor | None = None,
    mixing: OracleMixing | None = None,
    choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    fixed_length: bool = False,
    static_cache: bool = False,
    compile: bool = False,
) -> RollIn:
    """Rolls in with the current model on a padded training batch (prompts continue for decoder-only models).

    Decoding is :func:`hf_seqobj.decoding.decoder.decode` (the tokens `generate` would give, at a lower cost per
    step), with the model unwrapped, its parameters gathered under ZeRO-3, every rank stepping in lockstep under
    ZeRO-3 / FSDP, gradient checkpointing off and dropout as asked. Only the explicit settings are used: a
    checkpoint's own `generation_config` never enters a roll-in.

    Args:
        model: The (possibly wrapped) model being trained.
        inputs: The batch as the collator made it: `input_ids`, `attention_mask`, `labels` (decoder-only examples
            are prompt + target with -100 on the prompt; encoder-decoder examples have the source in `input_ids`).
        generation_config: Explicit settings (see :func:`rollin_generation_config`): `max_new_tokens`, `do_sample`,
            `temperature`, `top_k`, `top_p`, the pad, EOS and decoder start tokens.
        accelerator: The trainer's accelerator, to unwrap the model; None for a bare model.
        dropout: Generate in training mode (dropout on) instead of eval mode.
        checkpointing_kwargs: The trainer's `gradient_checkpointing_kwargs`, to restore checkpointing with.
        limits: [B] the most tokens of each row (a row that reaches its limit stops there); default
            `max_new_tokens` for every row.
        mixing: DAgger's oracle mixing (:class:`hf_seqobj.decoding.decoder.OracleMixing`).
        choose: A token choice of the caller's, `choose(prefix [B, t], logits [B, V]) -> [B]` (the ERPO samplers).
        fixed_length: Decode exactly `limits` tokens per row, with no EOS checks (the roll-in is still cut at each
            row's first EOS, so it is the same).
        static_cache: A static KV cache (GPU).
        compile: Compile the decode step (GPU; needs `static_cache`).

    Returns:
        A :class:`RollIn` (no gradient flows through it), each row cut after its first EOS and at its limit.
    """
    config = generation_config
    eos = config.eos_token_id
    with unwrap_for_generation(model, accelerator) as (unwrapped, synced_gpus):
        model_config = unwrapped.config
        encoder_decoder = bool(model_config.is_encoder_decoder)
        if encoder_decoder:
            prompt_ids, prompt_mask = None, None
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        else:
            prompt_ids, prompt_mask = split_prompts(inputs["input_ids"], inputs["labels"], config.pad_token_id)
            ids, mask = prompt_ids, prompt_mask
        if limits is None:
            limits = torch.full((ids.shape[0],), int(config.max_new_tokens), dtype=torch.long, device=ids.device)
        start = config.decoder_start_token_id
        if start is None:
            start = getattr(model_config, "decoder_start_token_id", None)
        with generation_mode(unwrapped, dropout, checkpointing_kwargs):
            decoded = decode(
                unwrapped,
                ids,
                mask,
                max_new_tokens=limits,
                eos_token_id=eos,
                pad_token_id=config.pad_token_id,
                decoder_start_token_id=start,
                sample=bool(config.do_sample),
                temperature=config.temperature if config.do_sample and config.temperature is not None else 1.0,
                top_k=(config.top_k or 0) if config.do_sample else 0,
                top_p=config.top_p if config.do_sample and config.top_p is not None else 1.0,
                mixing=mixing,
                choose=choose,
                fixed_length=fixed_length,
                synced_gpus=synced_gpus,
                static_cache=static_cache,
                compile=compile,
            )
    tokens = decoded.tokens
    lengths = torch.minimum(first_eos_lengths(tokens, eos), limits.to(tokens.device))
    rollin = RollIn(
        tokens=tokens,
        lengths=lengths,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        forced=getattr(mixing, "forced", 0),
        steps=getattr(mixing, "steps", 0),
        pad_token_id=config.pad_token_id,
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

    rollin_fixed_length: bool = field(
        default=False,
        metadata={
            "help": "dagger, spg, interpolation: roll in exactly as many tokens as each example's gold output has, "
            "with no EOS checks while decoding: for tasks whose output length is known (NER: one tag per word, then "
            "EOS). The roll-ins are the same (each is still cut at its first EOS); it saves a host synchronisation "
            "per step on a GPU."
        },
    )
    rollin_static_cache: bool = field(
        default=False,
        metadata={
            "help": "dagger, spg, interpolation: decode roll-ins with a static (fixed-shape) KV cache; for "
            "rollin_compile on a GPU."
        },
    )
    rollin_compile: bool = field(
        default=False,
        metadata={
            "help": "dagger, spg, interpolation: compile the one-token decode step of roll-ins with torch.compile "
            "(needs rollin_static_cache; pays on a GPU, after a compilation of a minute or more)."
        },
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        check_rollin(self.rollin, self.rollin_temperature)
        if self.rollin_compile and not self.rollin_static_cache:
            raise ValueError(
                "rollin_compile=True needs rollin_static_cache=True (the compiled step needs fixed shapes)."
            )
