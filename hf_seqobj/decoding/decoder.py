"""The roll-in decoder: the incremental decoding of on-policy training steps, leaner than `generate`.

Every on-policy objective decodes a batch inside its training step (DAgger's roll-ins, SPG's and interpolation's
samples). `model.generate` is built for every decoding strategy and every model; per step it prepares the inputs
anew, runs a list of logits processors and stopping criteria, and grows its KV cache and its outputs by
concatenation. :func:`decode` does only what a roll-in needs:

- the KV cache and the output buffer are allocated once per batch, at their final size (:class:`PreallocatedLayer`
  writes into its buffer in place; `generate`'s `DynamicCache` copies the whole cache at every step);
- the token choice is one small function (:func:`choose_next_tokens`): the oracle's token with probability beta
  (DAgger's mixture, :class:`OracleMixing`), else argmax, or a sample at a temperature with optional top-k / top-p;
- decoding stops as soon as every row has finished (an EOS, or the row's own length limit), or, in the fixed-length
  mode (`fixed_length=True`), after exactly the given number of tokens per row, with no EOS checks at all;
- under ZeRO-3 / FSDP (`synced_gpus=True`) every rank keeps running forward passes until all ranks are done, as
  `generate` does, so that the collective parameter gathers of the forward pass stay matched.

What it computes is `generate`'s: for greedy decoding the same tokens on GPT-2 (left-padded prompts), BART and T5,
and for sampling the same tokens from the same random generator (`generate` draws with `torch.multinomial` from the
global generator; so does :func:`decode` with `generator=None`). The tests check both against `generate`.

On a GPU two options trade set-up time for step time: `static_cache=True` (transformers' `StaticCache`, fixed shapes)
and `compile=True` (the one-token decode step through `torch.compile`, with transformers' `CompileConfig`; it needs
the static cache). Both are off by default; on a CPU they work but do not pay.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache, EncoderDecoderCache, StaticCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.configuration_utils import CompileConfig
from transformers.masking_utils import create_bidirectional_mask

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.models import accepts_logits_to_keep, unwrap_model


__all__ = [
    "Decoded",
    "OracleMixing",
    "PreallocatedLayer",
    "all_finished",
    "choose_next_tokens",
    "decode",
    "global_max",
]


# --------------------------------------------------------------------------------------------------------------
# The KV cache


class PreallocatedLayer(DynamicLayer):
    """A KV cache layer that allocates its keys and values once, for `capacity` positions, and writes in place.

    `keys` and `values` are views of the buffers up to the positions written so far, so attention runs over exactly
    the positions a `DynamicLayer` would hold (same shapes, same values). A write past the capacity doubles it (one
    copy), so a wrong estimate costs time, never correctness.

    Args:
        capacity: Positions to allocate for at the first write (at least the length of that write).
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = int(capacity)
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        capacity = max(self.capacity, key_states.shape[-2])
        self._key_buffer = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        self._value_buffer = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        self.length = 0
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._key_buffer.shape[-2])
        for name in ("_key_buffer", "_value_buffer"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:-2], capacity, old.shape[-1]))
            new[..., : self.length, :] = old[..., : self.length, :]
            setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            self._grow(end)
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        self._key_buffer = self._key_buffer[indices]
        self._value_buffer = self._value_buffer[indices]
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}.")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]


def _self_attention_cache(config, capacity: int, static: bool) -> Cache:
    if static:
        return StaticCache(config=config, max_cache_len=capacity)
    return Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity))


# --------------------------------------------------------------------------------------------------------------
# Choosing tokens


def choose_next_tokens(
    logits: torch.Tensor,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    forced: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of every row: the forced one where there is one, else the model's choice.

    The model's choice is `argmax(logits)` (greedy), or (`sample=True`) a draw from softmax(scores), with scores the
    logits divided by `temperature`, then those below the k-th largest set to -inf (`top_k` > 0), then those outside
    the smallest set whose probability reaches `top_p` set to -inf (`top_p` < 1): exactly what `generate` does with
    its temperature, top-k and top-p warpers, drawing with `torch.multinomial` from `generator` (None: the global
    generator, as `generate`). A forced row's draw is taken all the same, so the random stream does not depend on
    which rows are forced.

    Args:
        logits: [B, V] next-token logits (float32).
        sample: Sample instead of taking the argmax.
        temperature: > 0.
        top_k: Keep the k most likely tokens (0: all).
        top_p: Keep the most likely tokens up to this total probability (1: all).
        generator: Source of the draws.
        forced: [B] a token to take instead of the model's, or -100 (no forcing) per row.

    Returns:
        [B] token ids (int64).
    """
    if not sample:
        tokens = logits.argmax(-1)
    else:
        scores = logits / temperature if temperature != 1.0 else logits
        if top_k > 0:
            kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if generator is not None and generator.device != probs.device:  # e.g. a CPU generator for CUDA logits
            probs = probs.to(generator.device)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
    if forced is not None:
        tokens = torch.where(forced != IGNORE_INDEX, forced.to(tokens.device), tokens)
    return tokens


@dataclass
class OracleMixing:
    """DAgger's mixture policy: at every step, with probability `beta` per row, the oracle's token is taken.

    Called once per decoding step with the tokens generated so far; returns the tokens to force ([B], -100 where the
    model's token stays). Each step draws one uniform number per row of the GLOBAL batch from `generator` (seeded
    identically on every rank) and uses this batch's slice, so a row's draws do not depend on how the global batch is
    split over processes or micro-batches, nor on how many steps other rows needed. The oracle is asked only about
    the rows that draw below beta (an oracle with `supports_rows` gets the whole batch and `rows=`, so that it can
    keep state from one step to the next).

    Args:
        oracle: Has `next_token(prefix_ids [B, t], prefix_lengths [B], reference_ids) -> [B]` (-100: no label).
        reference_ids: [B, M] gold outputs, passed to the oracle.
        beta: Probability, per row and step, that the oracle's token replaces the model's.
        generator: The source of the mixing draws.
        row_offset: Index of this batch's first row in the global batch.
        global_rows: Rows of the global batch; None: this batch's rows.
        rows: [B] where each decoded row sits in its batch (when only some rows of a batch are decoded): the global
            index of row i is `row_offset + rows[i]`; None: `0 .. B - 1`.

    Attributes:
        forced: Tokens the oracle replaced so far.
        steps: Decoding steps x rows so far.
    """

    oracle: object
    reference_ids: torch.Tensor
    beta: float
    generator: torch.Generator | None = None
    row_offset: int = 0
    global_rows: int | None = None
    rows: torch.Tensor | None = None
    forced: int = 0
    steps: int = 0

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor | None:
        batch = prefix.shape[0]
        device = self.generator.device if self.generator is not None else prefix.device
        index = torch.arange(batch) if self.rows is None else self.rows.cpu()
        index = index + self.row_offset
        total = max(self.global_rows or batch, int(index.max()) + 1 if batch else 0)
        draws = torch.rand(total, generator=self.generator, device=device)[index.to(device)]
        mix = draws.to(prefix.device) < self.beta
        self.steps += batch
        mixed = mix.nonzero().flatten()
        if mixed.numel() == 0:
            return None
        lengths = torch.full((batch,), prefix.shape[1], dtype=torch.long, device=prefix.device)
        if getattr(self.oracle, "supports_rows", False):  # the whole batch, so the oracle can reuse its state
            labels = self.oracle.next_token(prefix, lengths, self.reference_ids, rows=mixed)
        else:  # only the rows that take the oracle's token are asked
            labels = self.oracle.next_token(prefix[mixed], lengths[mixed], self.reference_ids[mixed])
        forced = torch.full((batch,), IGNORE_INDEX, dtype=torch.long, device=prefix.device)
        forced[mixed] = labels.to(prefix.device).long()
        self.forced += int((forced != IGNORE_INDEX).sum())
        return forced


# --------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Decoded:
    """What :func:`decode` returns.

    Attributes:
        tokens: [B, T] the generated tokens; after a row has finished (EOS, or its length limit), padding.
        steps: Loop iterations run (forward passes after the first; under `synced_gpus` as many as the slowest rank).
    """

    tokens: torch.Tensor
    steps: int


def all_finished(finished_here: bool, synced_gpus: bool, device: torch.device) -> bool:
    """Whether decoding stops: this process has finished, and with `synced_gpus` every process has (an all-reduce
    over the default process group, as `generate` does, so that all processes leave the loop at the same step)."""
    if not synced_gpus:
        return finished_here
    import torch.distributed as dist

    unfinished = torch.tensor(0.0 if finished_here else 1.0, device=device)
    dist.all_reduce(unfinished, op=dist.ReduceOp.SUM)
    return unfinished.item() == 0.0


def global_max(value: int, device: torch.device) -> int:
    """The largest `value` over the processes of the default process group (an all-reduce)."""
    import torch.distributed as dist

    largest = torch.tensor(int(value), dtype=torch.long, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return int(largest.item())


def _select_rows(cache: Cache, state: dict, keep: torch.Tensor, encoder_decoder: bool) -> None:
    """Keeps rows `keep` of the forward batch: in the KV cache and in the per-row model inputs of `state`."""
    if encoder_decoder:
        cache.self_attention_cache.batch_select_indices(keep)
        cache.cross_attention_cache.batch_select_indices(keep)
        outputs = state["encoder_outputs"]
        outputs.last_hidden_state = outputs.last_hidden_state[keep]
        if state["attention_mask"] is not None:
            state["attention_mask"] = state["attention_mask"][keep]
    else:
        cache.batch_select_indices(keep)
        for key, value in state.items():
            state[key] = value[keep]


def decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int | torch.Tensor,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    decoder_start_token_id: int | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    mixing: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    fixed_length: bool = False,
    synced_gpus: bool = False,
    static_cache: bool = False,
    compile: bool | CompileConfig = False,
) -> Decoded:
    """Decodes a batch incrementally with the KV cache: the roll-in of every row (see the module docstring).

    The caller sets the model's mode (eval, or training mode for roll-ins with dropout), switches gradient
    checkpointing off and unwraps DDP / ZeRO-3 (see :func:`hf_seqobj.decoding.rollin.generate_rollin`); this function
    runs under `torch.no_grad()`. Model kwargs are those `generate` passes: decoder-only models get the left-padded
    prompts with their attention mask (dropped when it has no padding, as `generate` drops it) and position ids counted
    from the first real token; encoder-decoders run the encoder once and start the decoder from
    `decoder_start_token_id`.

    Args:
        model: A transformers model with an LM head, or a compiled / DDP / PEFT wrapper of one
            (:func:`~hf_seqobj.decoding.models.unwrap_model`; a prompt-learning adapter is refused).
        input_ids: Decoder-only: [B, W] left-padded prompts. Encoder-decoder: [B, S] sources.
        attention_mask: [B, W] / [B, S] mask of `input_ids` (None: no padding).
        max_new_tokens: The most tokens per row: an int, or [B] per-row limits (a row finishes at its limit).
        eos_token_id: Ends a row (one id or several); None: rows end at their limit only.
        pad_token_id: Fills a row after it has finished.
        decoder_start_token_id: The first decoder input of an encoder-decoder.
        sample: Sample instead of greedy decoding (see :func:`choose_next_tokens`).
        temperature, top_k, top_p: Sampling settings.
        generator: Source of the sampling draws (None: the global generator, as `generate`).
        mixing: Called once per step with the tokens so far ([B, t]); returns tokens to force ([B], -100: none) or
            None. See :class:`OracleMixing`.
        choose: Instead of the model's choice and `mixing`: `choose(prefix [B, t], logits [B, V]) -> [B]` picks
            every row's next token itself (the ERPO samplers).
        fixed_length: Decode exactly `max_new_tokens` (per row) tokens, with no EOS checks and no early exit: for
            outputs whose length is known in advance. Tokens after a row's first EOS are then the model's, not
            padding (a caller that cuts each row at its first EOS gets the same roll-ins either way).
        synced_gpus: Keep running forward passes until every rank of the process group is done (ZeRO-3 / FSDP).
        static_cache: Use transformers' `StaticCache` (fixed shapes; for `compile` on a GPU).
        compile: Run the one-token decode step through `torch.compile` (True, or a transformers `CompileConfig`);
            needs `static_cache`.

    Returns:
        A :class:`Decoded`.
    """
    if compile and not static_cache:
        raise ValueError("compile=True needs static_cache=True (the compiled decode step needs fixed shapes).")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    base = unwrap_model(model, refuse_prompt_learning=True)
    config = base.config
    encoder_decoder = bool(config.is_encoder_decoder)
    device = input_ids.device
    batch = input_ids.shape[0]
    limits = torch.as_tensor(max_new_tokens, device=device).long()
    if limits.dim() == 0:
        limits = limits.expand(batch)
    if limits.shape != (batch,) or bool((limits < 0).any()):
        raise ValueError(f"max_new_tokens must be an int >= 0 or [B] = [{batch}] ints >= 0, got {max_new_tokens!r}.")
    steps_budget = local_budget = int(limits.max()) if batch else 0
    if synced_gpus:
        steps_budget = global_max(steps_budget, device)
    eos = None
    if eos_token_id is not None and not fixed_length:
        eos = torch.as_tensor(eos_token_id, device=device).reshape(-1)
    tokens = torch.full((batch, steps_budget), int(pad_token_id), dtype=torch.long, device=device)

    compact = not static_cache  # drop finished rows from the forward batch (fixed shapes need all of them)
    with torch.no_grad():
        if encoder_decoder:
            if decoder_start_token_id is None:
                raise ValueError("An encoder-decoder roll-in needs decoder_start_token_id.")
            encoder_outputs = base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            cross = StaticCache(config=config, max_cache_len=input_ids.shape[1]) if static_cache else DynamicCache()
            cache = EncoderDecoderCache(_self_attention_cache(config, 1 + steps_budget, static_cache), cross)
            # The cross-attention mask, made once with the model's own function (its forward would remake it per step)
            cross_mask = create_bidirectional_mask(
                config=config.get_text_config(decoder=True),
                inputs_embeds=encoder_outputs.last_hidden_state[:, :1],
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_outputs.last_hidden_state,
            )
            state = {"encoder_outputs": encoder_outputs, "attention_mask": cross_mask}
            first = {"decoder_input_ids": torch.full((batch, 1), int(decoder_start_token_id), device=device)}
            fixed = {"use_cache": True}
            width = 1
        else:
            width = input_ids.shape[1]
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            state = {"position_ids": positions[:, -1:]}
            first = {"input_ids": input_ids, "position_ids": positions}
            if static_cache or not bool((attention_mask == 1).all()):  # `generate` drops a mask without padding
                mask = torch.zeros((batch, width + steps_budget), dtype=attention_mask.dtype, device=device)
                mask[:, :width] = attention_mask
                state["attention_mask"] = mask
                first["attention_mask"] = mask if static_cache else mask[:, :width]
            cache = _self_attention_cache(config, width + steps_budget, static_cache)
            fixed = {"use_cache": True}
            if accepts_logits_to_keep(base):
                fixed["logits_to_keep"] = 1
        step_call = base
        if compile:
            step_call = base.get_compiled_call(compile if isinstance(compile, CompileConfig) else CompileConfig())
        logits = base(**first, **(state if encoder_decoder else {}), **fixed, cache=cache).logits[:, -1].float()
        active = torch.arange(batch, device=device)  # the rows in the forward batch, in order
        finished = limits <= 0
        done = bool(finished.all())
        column = 0
        iterations = 0
        last = torch.full((batch,), int(pad_token_id), dtype=torch.long, device=device)
        while True:
            if all_finished(done, synced_gpus, device):
                break
            if iterations > 0:  # the forward pass of the tokens chosen last (every rank runs it under synced_gpus)
                if compact and not done and active.numel() > 1:
                    still = ~finished[active]
                    if 0 < int(still.sum()) <= active.numel() * 3 // 4:  # a quarter or more have finished: drop them
                        keep = still.nonzero().flatten()
                        active = active[keep]
                        _select_rows(cache, state, keep, encoder_decoder)
                length = width + iterations
                step = {"decoder_input_ids" if encoder_decoder else "input_ids": last[active, None]}
                if encoder_decoder:
                    step.update(state)
                else:
                    state["position_ids"] = state["position_ids"] + 1
                    step["position_ids"] = state["position_ids"]
                    if "attention_mask" in state:
                        state["attention_mask"][:, length - 1] = 1
                        mask = state["attention_mask"]
                        step["attention_mask"] = mask if static_cache else mask[:, :length]
                step_logits = step_call(**step, **fixed, cache=cache).logits[:, -1].float()
                if active.numel() == batch:
                    logits = step_logits
                else:  # finished rows keep stale logits: their tokens become padding below
                    logits = logits.index_copy(0, active, step_logits)
            iterations += 1
            if done:  # synced_gpus: this rank has finished and only takes part in the others' forward passes
                continue
            prefix = tokens[:, :column]
            if choose is not None:
                chosen = choose(prefix, logits).to(device)
            else:
                forced = mixing(prefix) if mixing is not None else None
                chosen = choose_next_tokens(logits, sample, temperature, top_k, top_p, generator, forced)
            chosen = torch.where(finished, int(pad_token_id), chosen)
            tokens[:, column] = chosen
            last = chosen
            column += 1
            finished = finished | (limits <= column)
            if eos is not None:
                finished = finished | torch.isin(chosen, eos)
                done = bool(finished.all())
            else:
                done = column >= local_budget
    return Decoded(tokens=tokens, steps=iterations)
