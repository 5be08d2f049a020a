"""Decoding with the backspace action: batched, with a KV cache that `<bksp>` crops by one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    DynamicCache,
    EncoderDecoderCache,
    GenerationConfig,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hf_seqobj.backspace.layout import apply_backspaces, attention_mask_4d, decoder_positions, unwrap_model
from hf_seqobj.backspace.token import backspace_token_id


@dataclass
class BackspaceGeneration:
    """What :func:`generate_with_backspace` returns with `return_actions=True`.

    Attributes:
        sequences: [B, ...] the final sequences, as `generate` returns them (decoder-only: the left-padded prompt and
            the effective continuation; encoder-decoder: the decoder start token and the effective output), padded.
        actions: [B, S] the raw actions (tokens and `<bksp>`), padded with the pad id after a row's EOS.
        num_actions: [B] actions per row (up to and including EOS).
        num_backspaces: [B] backspaces per row.
    """

    sequences: torch.Tensor
    actions: torch.Tensor
    num_actions: torch.Tensor
    num_backspaces: torch.Tensor


class BackspaceDecoder:
    """Incremental decoding of a batch with the backspace action, over one KV cache.

    Every action appends one entry to the cache of every row. A deleted token's entry is not removed (a batched
    cache cannot be cropped per row) but hidden: each new query attends to exactly the entries on its row's stack,
    through a 4D mask, with the position ids of the one-pass layout. So the logits equal those of running each
    state from scratch (tested), which is what `DynamicCache.crop` would give for a single row.

    Args:
        model: The model (unwrapped or PEFT-wrapped; called with keyword arguments).
        input_ids: Decoder-only: [B, W] left-padded prompts. Encoder-decoder: [B, S] sources.
        attention_mask: [B, W] / [B, S] mask of `input_ids`.
        bksp_token_id: The id of `<bksp>`.
        pad_token_id: The id fed to rows that have finished.
        decoder_start_token_id: Encoder-decoder only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        bksp_token_id: int,
        pad_token_id: int,
        decoder_start_token_id: int | None = None,
    ):
        self.model = model
        self.base = unwrap_model(model)
        self.encoder_decoder = bool(self.base.config.is_encoder_decoder)
        self.bksp = int(bksp_token_id)
        self.pad = int(pad_token_id)
        self.device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = input_ids.shape[0]
        self.batch = batch
        if self.encoder_decoder:
            if decoder_start_token_id is None:
                raise ValueError("Encoder-decoder decoding needs decoder_start_token_id.")
            self.encoder_outputs = self.base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
            self.encoder_mask = attention_mask
            self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            first = torch.full((batch, 1), int(decoder_start_token_id), dtype=torch.long, device=self.device)
            self.prefix_lengths = [1] * batch
            prefix_rows = [[int(decoder_start_token_id)] for _ in range(batch)]
            self.prompt = first
        else:
            self.cache = DynamicCache()
            first = input_ids
            prefix_rows = [input_ids[b][attention_mask[b].bool()].tolist() for b in range(batch)]
            self.prefix_lengths = [len(row) for row in prefix_rows]
            self.prompt = input_ids
        width = first.shape[1]
        # Bookkeeping on the CPU: the token and position of every cache entry, the stacks, the visible entries.
        self.tokens: list[list[int]] = [first[b].tolist() for b in range(batch)]
        self.positions = torch.zeros((batch, width), dtype=torch.long)
        self.stacks: list[list[int]] = []
        self.visible = np.zeros((batch, width), dtype=bool)
        attend = torch.zeros((batch, width, width), dtype=torch.bool)
        for b in range(batch):
            start = width - len(prefix_rows[b])
            stack = list(range(start, width))
            self.stacks.append(stack)
            self.positions[b, start:] = torch.arange(len(stack))
            self.visible[b, start:] = True
            causal = torch.tril(torch.ones(len(stack), len(stack), dtype=torch.bool))
            attend[b, start:, start:] = causal
            attend[b, torch.arange(start), torch.arange(start)] = True
        self.logits = self._forward(first, self.positions.clone(), attend)

    def _forward(self, inputs: torch.Tensor, query_positions: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        device = self.device
        mask = attention_mask_4d(attend.to(device), self.base)
        query_positions = query_positions.to(device)
        if not self.encoder_decoder:
            out = self.model(
                input_ids=inputs,
                attention_mask=mask,
                position_ids=query_positions,
                past_key_values=self.cache,
                use_cache=True,
            )
        else:
            with decoder_positions(self.model, query_positions, self.positions.to(device)):
                out = self.model(
                    encoder_outputs=self.encoder_outputs,
                    attention_mask=self.encoder_mask,
                    decoder_input_ids=inputs,
                    decoder_attention_mask=mask,
                    past_key_values=self.cache,
                    use_cache=True,
                )
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def can_delete(self) -> torch.Tensor:
        """[B] bool: which rows have a generated token that a backspace would delete."""
        return torch.tensor([len(stack) > self.prefix_lengths[b] for b, stack in enumerate(self.stacks)])

    def final_ids(self, row: int) -> list[int]:
        """The effective sequence of `row` (prefix included)."""
        return [self.tokens[row][index] for index in self.stacks[row]]

    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """Takes one action per row and returns the next logits [B, V] (float32)."""
        new = len(self.tokens[0])
        inputs, positions = [], []
        for b, action in enumerate(actions.tolist()):
            stack = self.stacks[b]
            if action == self.bksp:
                if len(stack) > self.prefix_lengths[b]:
                    self.visible[b, stack.pop()] = False
                top = stack[-1]
                token, position = self.tokens[b][top], int(self.positions[b, top])
                self.visible[b, top] = False
                stack[-1] = new
            else:
                token, position = int(action), len(stack)
                stack.append(new)
            self.tokens[b].append(token)
            inputs.append(token)
            positions.append(position)
        self.visible = np.concatenate([self.visible, np.zeros((self.batch, 1), dtype=bool)], axis=1)
        for b in range(self.batch):
            self.visible[b, new] = True
        query_positions = torch.tensor(positions, dtype=torch.long)[:, None]
        self.positions = torch.cat([self.positions, query_positions], dim=1)
        attend = torch.from_numpy(self.visible.copy())[:, None, :]
        return self._forward(torch.tensor(inputs, device=self.device)[:, None], query_positions, attend)


def all_finished(finished_here: bool, synced_gpus: bool, device: torch.device) -> bool:
    """Whether decoding stops: this process has finished, and with `synced_gpus` every process has (an all-reduce
    over the default process group, as `generate` does, so that all processes leave the loop at the same step)."""
    if not synced_gpus:
        return finished_here
    import torch.distributed as dist

    unfinished = torch.tensor(0.0 if finished_here else 1.0, device=device)
    dist.all_reduce(unfinished, op=dist.ReduceOp.SUM)
    return unfinished.item() == 0.0


def generate_with_backspace(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    bksp_token_id: int | None = None,
    return_actions: bool = False,
    generator: torch.Generator | None = None,
    synced_gpus: bool = False,
    **kwargs,
) -> torch.Tensor | BackspaceGeneration:
    """Generates with the backspace action: a `<bksp>` deletes the last generated token.

    Batched greedy decoding or sampling (`do_sample`, `temperature`, `top_k`, `top_p` of the GenerationConfig) with
    a KV cache (:class:`BackspaceDecoder`). A row stops at its first EOS; decoding stops when every row has or after
    `max_new_tokens` actions (backspaces count). `<bksp>` is not an action while nothing has been generated (its logit
    is masked there): a backspace on an empty output would be a self-loop, which the chi^2 term of SequenceMatch
    (pushing l(a|s) towards gamma V(s') = gamma V(s)) would make near-certain.

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
            process): a process whose rows have all ended still takes part in the others' forward passes.
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
    processors = LogitsProcessorList()
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            decoder = BackspaceDecoder(model, input_ids, attention_mask, bksp, pad, start)
            batch = input_ids.shape[0]
            done = torch.zeros(batch, dtype=torch.bool)
            taken: list[torch.Tensor] = []
            logits = decoder.logits
            for _ in range(max_new):
                # a backspace needs a generated token to delete: on an empty output it is not an action
                logits[~decoder.can_delete().to(logits.device), bksp] = float("-inf")
                scores = processors(None, logits)
                if config.do_sample:
                    probs = torch.softmax(scores, dim=-1)
                    draws = torch.multinomial(
                        probs.to(generator.device if generator else probs.device), 1, generator=generator
                    )
                    action = draws[:, 0].to("cpu")
                else:
                    action = scores.argmax(-1).to("cpu")
                action = torch.where(done, torch.full_like(action, pad), action)
                taken.append(action)
                done = done | torch.isin(action, torch.tensor(sorted(eos_ids)))
                if all_finished(bool(done.all()), synced_gpus, input_ids.device):
                    break
                logits = decoder.step(action)
    finally:
        model.train(was_training)
    actions = torch.stack(taken, dim=1) if taken else torch.zeros((input_ids.shape[0], 0), dtype=torch.long)
    is_eos = torch.isin(actions, torch.tensor(sorted(eos_ids)))
    num_actions = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, actions.shape[1])
    num_backspaces = torch.tensor([int((actions[b, : num_actions[b]] == bksp).sum()) for b in range(actions.shape[0])])
    prompt = decoder.prompt
    outputs = []
    for b in range(actions.shape[0]):
        final = apply_backspaces(actions[b, : num_actions[b]].tolist(), bksp)
        outputs.append(final)
    longest = max([len(row) for row in outputs] + [0])
    continuation = torch.full((actions.shape[0], longest), pad, dtype=torch.long)
    for b, row in enumerate(outputs):
        continuation[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    sequences = torch.cat([prompt, continuation.to(prompt.device)], dim=1)
    if not return_actions:
        return sequences
    return BackspaceGeneration(
        sequences=sequences,
        actions=actions.to(prompt.device),
        num_actions=num_actions.to(prompt.device),
        num_backspaces=num_backspaces.to(prompt.device),
    )
