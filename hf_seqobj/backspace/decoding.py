"""Decoding with the backspace action: batched, with a KV cache that `<bksp>` crops by one."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache, EncoderDecoderCache, GenerationConfig

from hf_seqobj.backspace.layout import apply_backspaces_batch, attention_mask_4d, decoder_positions
from hf_seqobj.backspace.token import backspace_token_id
from hf_seqobj.decoding.decoder import PreallocatedLayer, all_finished, choose_next_tokens, global_max
from hf_seqobj.decoding.models import unwrap_model


logger = logging.getLogger(__name__)


@dataclass
class BackspaceGeneration:
    """What :func:`generate_with_backspace` returns with `return_actions=True`.

    Attributes:
        sequences: [B, ...] the final sequences, as `generate` returns them (decoder-only: the left-padded prompt and
            the effective continuation; encoder-decoder: the decoder start token and the effective output), padded.
        actions: [B, S] the raw actions (tokens and `<bksp>`), padded with the pad id after a row's EOS.
        num_actions: [B] actions per row (up to and including EOS).
        num_backspaces: [B] backspaces per row.
        two_cycles: [B] bool, rows with a token / `<bksp>` 2-cycle: right after a `<bksp>` deleted a token, the next
            action re-emits it (back in the state the `<bksp>` left), or, with the cycle guard, the guard blocked
            that token while it was the top-scoring action.
    """

    sequences: torch.Tensor
    actions: torch.Tensor
    num_actions: torch.Tensor
    num_backspaces: torch.Tensor
    two_cycles: torch.Tensor


class BackspaceDecoder:
    """Incremental decoding of a batch with the backspace action, over one KV cache.

    Every action appends one entry to the cache of every row. A deleted token's entry is not removed (a batched
    cache cannot be cropped per row) but hidden: each new query attends to exactly the entries on its row's stack,
    through a 4D mask, with the position ids of the one-pass layout. So the logits equal those of running each
    state from scratch (tested), which is what `DynamicCache.crop` would give for a single row. The bookkeeping (the
    token and position of every entry, the stacks, the visible entries) is held in tensors on the model's device and
    updated for all rows at once; the KV cache is allocated once
    (:class:`hf_seqobj.decoding.decoder.PreallocatedLayer`).

    Args:
        model: The model (unwrapped or PEFT-wrapped; called with keyword arguments).
        input_ids: Decoder-only: [B, W] left-padded prompts. Encoder-decoder: [B, S] sources.
        attention_mask: [B, W] / [B, S] mask of `input_ids`.
        bksp_token_id: The id of `<bksp>`.
        pad_token_id: The id fed to rows that have finished.
        decoder_start_token_id: Encoder-decoder only.
        max_new_tokens: The actions to allocate for (more still work: the buffers grow).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        bksp_token_id: int,
        pad_token_id: int,
        decoder_start_token_id: int | None = None,
        max_new_tokens: int = 0,
    ):
        self.model = model
        self.base = unwrap_model(model)
        self.encoder_decoder = bool(self.base.config.is_encoder_decoder)
        self.bksp = int(bksp_token_id)
        self.pad = int(pad_token_id)
        self.device = device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = input_ids.shape[0]
        self.batch = batch
        if self.encoder_decoder:
            if decoder_start_token_id is None:
                raise ValueError("Encoder-decoder decoding needs decoder_start_token_id.")
            self.encoder_outputs = self.base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
            self.encoder_mask = attention_mask
            first = torch.full((batch, 1), int(decoder_start_token_id), dtype=torch.long, device=device)
            prefix_mask = torch.ones_like(first)
            self.prompt = first
        else:
            first = input_ids
            prefix_mask = attention_mask.to(device).long()
            self.prompt = input_ids
        width = first.shape[1]
        capacity = width + max(int(max_new_tokens), 1)
        cache = Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity))
        self.cache = EncoderDecoderCache(cache, DynamicCache()) if self.encoder_decoder else cache
        # Bookkeeping on the device: token and position of every cache entry, the stacks, the visible entries.
        self.length = width
        self.tokens = torch.full((batch, capacity), self.pad, dtype=torch.long, device=device)
        self.tokens[:, :width] = first
        self.positions = torch.zeros((batch, capacity), dtype=torch.long, device=device)
        self.positions[:, :width] = (prefix_mask.cumsum(1) - 1).clamp(min=0) * prefix_mask
        self.visible = torch.zeros((batch, capacity), dtype=torch.bool, device=device)
        self.visible[:, :width] = prefix_mask.bool()
        self.prefix_lengths = prefix_mask.sum(1)
        start = width - self.prefix_lengths
        self.stacks = torch.zeros((batch, capacity), dtype=torch.long, device=device)
        self.stacks[:, :width] = (torch.arange(width, device=device)[None, :] + start[:, None]).clamp(max=width - 1)
        self.depth = self.prefix_lengths.clone()
        real = prefix_mask.bool()
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=device))
        eye = torch.eye(width, dtype=torch.bool, device=device)
        attend = (causal & real[:, None, :] & real[:, :, None]) | (eye & ~real[:, :, None])  # padding: itself only
        self.logits = self._forward(first, self.positions[:, :width], attend)

    def _grow(self) -> None:
        for name in ("tokens", "positions", "visible", "stacks"):
            old = getattr(self, name)
            setattr(self, name, torch.cat([old, torch.zeros_like(old)], dim=1))

    def _forward(self, inputs: torch.Tensor, query_positions: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        mask = attention_mask_4d(attend, self.base)
        if not self.encoder_decoder:
            out = self.model(
                input_ids=inputs, attention_mask=mask, position_ids=query_positions, cache=self.cache, use_cache=True
            )
        else:
            with decoder_positions(self.model, query_positions, self.positions[:, : self.length]):
                out = self.model(
                    encoder_outputs=self.encoder_outputs,
                    attention_mask=self.encoder_mask,
                    decoder_input_ids=inputs,
                    decoder_attention_mask=mask,
                    cache=self.cache,
                    use_cache=True,
                )
        return out.logits[:, -1].float()

    def can_delete(self) -> torch.Tensor:
        """[B] bool: which rows have a generated token that a backspace would delete."""
        return self.depth > self.prefix_lengths

    def final_ids(self, row: int) -> list[int]:
        """The effective sequence of `row` (prefix included)."""
        stack = self.stacks[row, : int(self.depth[row])]
        return self.tokens[row, stack].tolist()

    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """Takes one action per row and returns the next logits [B, V] (float32)."""
        if self.length == self.tokens.shape[1]:
            self._grow()
        new = self.length
        actions = actions.to(self.device).long()
        deleting = actions == self.bksp
        popped = deleting & (self.depth > self.prefix_lengths)
        below = self.stacks.gather(1, (self.depth - 1)[:, None])  # the top before the action
        self.visible.scatter_(1, below, self.visible.gather(1, below) & ~popped[:, None])
        self.depth = self.depth - popped.long()
        top = self.stacks.gather(1, (self.depth - 1)[:, None])  # the top after a pop: the backspace copies it
        token = torch.where(deleting, self.tokens.gather(1, top)[:, 0], actions)
        position = torch.where(deleting, self.positions.gather(1, top)[:, 0], self.depth)
        self.visible.scatter_(1, top, self.visible.gather(1, top) & ~deleting[:, None])
        slot = torch.where(deleting, self.depth - 1, self.depth)
        self.stacks.scatter_(1, slot[:, None], torch.full_like(slot[:, None], new))
        self.depth = self.depth + (~deleting).long()
        self.tokens[:, new] = token
        self.positions[:, new] = position
        self.visible[:, new] = True
        self.length = new + 1
        attend = self.visible[:, None, : self.length]
        return self._forward(token[:, None], position[:, None], attend)


TWO_CYCLE_WARNING = 0.2
"""Share of sequences with a token / `<bksp>` 2-cycle above which :func:`warn_on_two_cycles` warns."""


def warn_on_two_cycles(owner: object, where: str, share: float) -> None:
    """Warns once per `owner` and `where` when the share of 2-cycle sequences passes :data:`TWO_CYCLE_WARNING`."""
    warned = owner.__dict__.setdefault("_two_cycle_warned", set())
    if share > TWO_CYCLE_WARNING and where not in warned:
        warned.add(where)
        logger.warning(
            "%.0f%% of the %s sequences re-emit a token right after a <bksp> deleted it (a token / <bksp> loop): "
            "the backspace policy is collapsing (see docs/sequencematch.md: sm_chi2_weight, sm_cycle_guard).",
            100 * share,
            where,
        )


class _CycleBookkeeping:
    """Per row of a backspace decoding: the generated part of its state, the token its last action deleted, whether
    it has had a 2-cycle, and (with the guard) the tokens deleted from each state of its current stack.

    A ban is a deleted token with the depth (generated tokens) of the state it was deleted from; it holds while the
    decoding is in that state or deeper, and is dropped when a token enters a state of that depth anew.
    """

    def __init__(self, batch: int, max_new: int, bksp: int, guard: bool, device: torch.device | str = "cpu"):
        self.bksp, self.guard, self.step = bksp, guard, 0
        self.rows = torch.arange(batch, device=device)
        self.kept = torch.zeros((batch, max_new + 1), dtype=torch.long, device=device)
        self.depth = torch.zeros(batch, dtype=torch.long, device=device)
        self.deleted = torch.full((batch,), -1, dtype=torch.long, device=device)  # deleted by the last action
        self.two_cycles = torch.zeros(batch, dtype=torch.bool, device=device)
        self.banned = torch.full((batch, max_new), -1, dtype=torch.long, device=device)
        self.banned_depth = torch.full((batch, max_new), -1, dtype=torch.long, device=device)

    def before(self, logits: torch.Tensor, done: torch.Tensor) -> None:
        """Before an action: notes a top-scoring re-emission of the deleted token and, with the guard, masks (in
        place) the tokens deleted from each row's current state."""
        if not self.guard:
            return
        after_delete = (self.deleted >= 0) & ~done
        self.two_cycles |= after_delete & (logits.argmax(-1) == self.deleted)
        active = (self.banned_depth == self.depth[:, None]) & (self.banned >= 0) & ~done[:, None]
        rows = self.rows[:, None].expand_as(self.banned)
        logits[rows[active], self.banned[active]] = float("-inf")

    def after(self, action: torch.Tensor, done: torch.Tensor) -> None:
        """After the action of each row (`done`: rows that had finished before it)."""
        rows = self.rows
        self.two_cycles |= (self.deleted >= 0) & ~done & (action == self.deleted)
        backspace = (action == self.bksp) & ~done & (self.depth > 0)
        self.deleted = torch.where(backspace, self.kept[rows, (self.depth - 1).clamp(min=0)], -1)
        token = (action != self.bksp) & ~done
        self.kept[rows[token], self.depth[token]] = action[token]
        self.depth = self.depth - backspace.long() + token.long()
        # a token enters a new state: nothing is banned there yet
        self.banned.masked_fill_(token[:, None] & (self.banned_depth == self.depth[:, None]), -1)
        if self.step < self.banned.shape[1]:
            self.banned[:, self.step] = torch.where(backspace, self.deleted, -1)
            self.banned_depth[:, self.step] = torch.where(backspace, self.depth, -1)
        self.step += 1


def generate_with_backspace(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    bksp_token_id: int | None = None,
    return_actions: bool = False,
    generator: torch.Generator | None = None,
    synced_gpus: bool = False,
    cycle_guard: bool = False,
    **kwargs,
) -> torch.Tensor | BackspaceGeneration:
    """Generates with the backspace action: a `<bksp>` deletes the last generated token.

    Batched greedy decoding or sampling (`do_sample`, `temperature`, `top_k`, `top_p` of the GenerationConfig) with
    a KV cache (:class:`BackspaceDecoder`). A row stops at its first EOS; decoding stops when every row has or after
    `max_new_tokens` actions (backspaces count). `<bksp>` is not an action while nothing has been generated (its logit
    is masked there): a backspace on an empty output would be a self-loop, which the chi^2 term of SequenceMatch
    (pushing l(a|s) towards gamma V(s') = gamma V(s)) would make near-certain.

    The state after a `<bksp>` is the state before the deleted token, so greedy decoding picks that token again and
    loops token / `<bksp>` until `max_new_tokens`. With `cycle_guard`, a token deleted from a state is not an action
    in that state any more (its logit is masked there until the decoding leaves the state by a deeper `<bksp>`), so
    the decoding tries the next-best token instead: no token / `<bksp>` cycle, of any length, can repeat.

    Args:
        model: A model whose vocabulary has `<bksp>` (see :func:`add_backspace_token`).
        input_ids: Decoder-only: left-padded prompts. Encoder-decoder: sources.
        attention_mask: Mask of `input_ids`.
        generation_config: Settings; default the model's `generation_config`. Beam search is not supported.
        bksp_token_id: Default `model.config.bksp_token_id`.
        return_actions: Return a :class:`BackspaceGeneration` (final sequences and raw actions) instead of the final
            sequences only.
        generator: Source of the sampling draws.
        synced_gpus: Keep stepping, with padding, until every process of the default process group has finished
            (as `generate` does under DeepSpeed ZeRO-3 and FSDP, whose forward passes gather parameters from every
            process): a process whose rows have all ended still takes part in the others' forward passes, up to
            the largest `max_new_tokens` of all processes (each process's rows take at most its own).
        cycle_guard: Mask, in each state, the tokens deleted from it (see above).
        **kwargs: Override fields of the generation config (e.g. `max_new_tokens=20`).

    Returns:
        The final sequences as `generate` returns them, or a :class:`BackspaceGeneration`.
    """
    base = unwrap_model(model)
    config = generation_config if generation_config is not None else base.generation_config
    config = GenerationConfig.from_dict({**config.to_dict(), **kwargs}) if kwargs else config
    bksp = bksp_token_id if bksp_token_id is not None else backspace_token_id(base)
    if bksp is None:
        raise ValueError("The model has no <bksp> token (config.bksp_token_id); add it with add_backspace_token.")
    if (config.num_beams or 1) > 1:
        raise ValueError(f"generate_with_backspace decodes one beam; got num_beams={config.num_beams}.")
    max_new = config.max_new_tokens
    if max_new is None:
        raise ValueError("Set max_new_tokens in the generation config for generate_with_backspace.")
    eos = config.eos_token_id if config.eos_token_id is not None else base.config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    pad = config.pad_token_id if config.pad_token_id is not None else base.config.pad_token_id
    pad = pad if pad is not None else next(iter(eos_ids))
    start = config.decoder_start_token_id
    if start is None:
        start = getattr(base.config, "decoder_start_token_id", None)
    sample = bool(config.do_sample)
    temperature = config.temperature if sample and config.temperature is not None else 1.0
    top_k = (config.top_k or 0) if sample else 0
    top_p = config.top_p if sample and config.top_p is not None else 1.0
    eos_tensor = torch.tensor(sorted(eos_ids), device=input_ids.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            decoder = BackspaceDecoder(model, input_ids, attention_mask, bksp, pad, start, max_new)
            batch = input_ids.shape[0]
            done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
            # with synced_gpus every process loops to the largest budget of all, its own rows done at its own
            steps = global_max(max_new, input_ids.device) if synced_gpus else max_new
            actions = torch.full((batch, steps), pad, dtype=torch.long, device=input_ids.device)
            taken = 0
            logits = decoder.logits
            cycles = _CycleBookkeeping(batch, steps, bksp, cycle_guard, input_ids.device)
            for _ in range(steps):
                # a backspace needs a generated token to delete: on an empty output it is not an action
                logits[~decoder.can_delete(), bksp] = float("-inf")
                cycles.before(logits, done)
                action = choose_next_tokens(logits, sample, temperature, top_k, top_p, generator)
                action = torch.where(done, pad, action)
                cycles.after(action, done)
                actions[:, taken] = action
                taken += 1
                done = done | torch.isin(action, eos_tensor)
                if taken >= max_new:  # this process's budget is spent (it may still step with the others)
                    done = torch.ones_like(done)
                if all_finished(bool(done.all()), synced_gpus, input_ids.device):
                    break
                logits = decoder.step(action)
    finally:
        model.train(was_training)
    actions = actions[:, : min(taken, max_new)]
    is_eos = torch.isin(actions, eos_tensor)
    num_actions = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, actions.shape[1])
    acting = torch.arange(actions.shape[1], device=actions.device)[None, :] < num_actions[:, None]
    num_backspaces = ((actions == bksp) & acting).sum(1)
    continuation, _ = apply_backspaces_batch(actions, num_actions, bksp, pad)
    prompt = decoder.prompt
    sequences = torch.cat([prompt, continuation.to(prompt.device)], dim=1)
    if not return_actions:
        return sequences
    return BackspaceGeneration(
        sequences=sequences,
        actions=actions.to(prompt.device),
        num_actions=num_actions.to(prompt.device),
        num_backspaces=num_backspaces.to(prompt.device),
        two_cycles=cycles.two_cycles.to(prompt.device),
    )
