"""SequenceMatch's backspace action (METHODS.md section 4): the `<bksp>` token, one-pass masks, noise and decoding.

Generation is read as an MDP whose state is the current effective prefix and whose actions are the tokens plus
`<bksp>`, which deletes the last token. This module holds everything that is about that action, independent of the
loss (`hf_seqobj.objectives.sequencematch`):

- :func:`add_backspace_token` adds `<bksp>` to a tokenizer and a model (`model.config.bksp_token_id` records it);
- :func:`build_backspace_inputs` lays one action sequence out for a single forward pass that computes the logits of
  every state it visits, and :func:`build_backspace_batch` does it for a padded batch;
- :func:`backspace_forward` runs that forward on GPT-2, BART and T5 (BART's learned decoder positions and T5's
  relative position bias are fed from the layout's position ids, so the logits equal those of running every state
  separately: tested to 1e-4);
- :func:`insert_backspace_noise` and :class:`BackspaceDataCollator` put random wrong tokens followed by `<bksp>`
  into training targets;
- :func:`generate_with_backspace` decodes with the action, batched and with a KV cache.

The one-pass layout. The actions are walked with a stack of indices. A token at index i is pushed; its input is the
token and its position id the stack depth - 1. A `<bksp>` at index i pops the stack; its input is a copy of the new
top token, with that token's position id, and the copy (index i) replaces the top on the stack. Row i attends to
exactly the indices on the stack after step i. The first `prefix_length` actions (a decoder-only prompt, or an
encoder-decoder's decoder start token) are never deleted: a `<bksp>` on an empty generated part leaves the state as
it is (it replaces the top by a copy of itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AddedToken,
    DynamicCache,
    EncoderDecoderCache,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


BKSP_TOKEN = "<bksp>"
"""The text of the backspace token."""
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------
# The token


def add_backspace_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, token: str = BKSP_TOKEN) -> int:
    """Adds the backspace action to a tokenizer and its model, and returns its id.

    The token is added as a special token (decoding with `skip_special_tokens=True` drops it). Where the model has no
    embedding row for it, the embeddings are resized and the new input row (and output row, if untied) is set to
    the mean of the existing rows, so that `<bksp>` starts with an average logit rather than a random one. The id is
    recorded as `model.config.bksp_token_id`, which `save_pretrained` / `from_pretrained` keep. Calling it again is a
    no-op that returns the same id.

    Args:
        model: A GPT-2, BART, T5 (or other) model whose embeddings follow the tokenizer.
        tokenizer: Gets the token.
        token: The token's text.

    Returns:
        The id of `<bksp>`.
    """
    recorded = getattr(model.config, "bksp_token_id", None)
    vocab = tokenizer.get_vocab()
    if token in vocab and recorded == vocab[token]:
        return recorded
    if token not in vocab:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    bksp_id = tokenizer.convert_tokens_to_ids(token)
    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    if bksp_id >= old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            new_rows = slice(old_rows, model.get_input_embeddings().weight.shape[0])
            model.get_input_embeddings().weight[new_rows] = embeddings.weight[:old_rows].mean(0)
            output = model.get_output_embeddings()
            if output is not None and output.weight is not model.get_input_embeddings().weight:
                output.weight[new_rows] = output.weight[:old_rows].mean(0)
                if getattr(output, "bias", None) is not None:
                    output.bias[new_rows] = output.bias[:old_rows].mean()
    model.config.bksp_token_id = bksp_id
    return bksp_id


def backspace_token_id(model_or_config) -> int | None:
    """The recorded `<bksp>` id of a model (or config), or None when it has none. Looks through wrappers (PEFT)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "bksp_token_id", None)


# --------------------------------------------------------------------------------------------------------------
# One-pass layout


@dataclass
class BackspaceInputs:
    """One action sequence laid out for a single forward pass (see the module docstring).

    Attributes:
        input_ids: [L] the input at each index.
        position_ids: [L] the position id at each index.
        attend: [L, L] bool; row i is True at the indices on the stack after step i.
        final_ids: The effective sequence after the last action (prefix included).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attend: torch.Tensor
    final_ids: list[int]


def _walk(actions: Sequence[int], bksp_id: int, prefix_length: int) -> tuple[list[int], list[int], list[int]]:
    """Walks the actions with the stack; returns the inputs, each index's parent and the final stack.

    The parent of index i is the index below it on the stack when i is placed there (-1 for the bottom), so the
    stack after step i is i and its chain of parents.
    """
    length = len(actions)
    if length == 0:
        raise ValueError("actions is empty; it needs at least the first token (a prompt or a decoder start token).")
    if not 1 <= prefix_length <= length:
        raise ValueError(f"prefix_length must be in [1, {length}] (the length of actions), got {prefix_length}.")
    inputs: list[int] = []
    parents: list[int] = []
    stack: list[int] = []
    for index, action in enumerate(int(a) for a in actions):
        if action == bksp_id:
            if index < prefix_length:
                raise ValueError(f"<bksp> (id {bksp_id}) at index {index}, inside the protected prefix.")
            if len(stack) > prefix_length:
                stack.pop()
            top = stack[-1]
            inputs.append(inputs[top])
            parents.append(parents[top])
            stack[-1] = index
        else:
            inputs.append(action)
            parents.append(stack[-1] if stack else -1)
            stack.append(index)
    return inputs, parents, stack


def _ancestors(parents: torch.Tensor) -> torch.Tensor:
    """[B, L, L] bool: row i is True at i and at every index on its chain of parents ([B, L] ids, -1 for none)."""
    batch, length = parents.shape
    step = torch.zeros((batch, length, length + 1), dtype=torch.float32)
    step.scatter_(2, torch.where(parents < 0, length, parents)[..., None], 1.0)
    reach = step[..., :length] + torch.eye(length)  # itself and its parent
    for _ in range(max(1, (length - 1).bit_length())):  # path doubling: chains of up to 2^k parents
        reach = torch.clamp(reach @ reach, max=1.0)
    return reach > 0


def build_backspace_inputs(actions: Sequence[int], bksp_id: int, prefix_length: int = 1) -> BackspaceInputs:
    """Lays out one sequence of token / `<bksp>` actions for a forward pass that computes every visited state.

    Example: actions `A B C <bksp> D` give inputs `A B C B D`, positions `0 1 2 1 2`; row 3 attends to {0, 3} and
    row 4 to {0, 3, 4}.

    Args:
        actions: The token ids, with `bksp_id` where the action is a backspace. The first `prefix_length` are the
            protected prefix (a prompt, or the decoder start token), which a backspace never deletes.
        bksp_id: The id of `<bksp>`.
        prefix_length: How many leading actions are the protected prefix (>= 1).

    Returns:
        A :class:`BackspaceInputs`. The logits at row i are the policy at the state after action i.
    """
    inputs, parents, stack = _walk(actions, bksp_id, prefix_length)
    attend = _ancestors(torch.tensor([parents]))[0]
    return BackspaceInputs(
        input_ids=torch.tensor(inputs, dtype=torch.long),
        position_ids=attend.sum(-1) - 1,
        attend=attend,
        final_ids=[inputs[index] for index in stack],
    )


def apply_backspaces(actions: Sequence[int], bksp_id: int, prefix_length: int = 0) -> list[int]:
    """The effective sequence after `actions` (each `<bksp>` deletes the token before it; the prefix stays)."""
    result: list[int] = []
    for action in (int(a) for a in actions):
        if action == bksp_id:
            if len(result) > prefix_length:
                result.pop()
        else:
            result.append(action)
    return result


def build_backspace_batch(
    prefixes: Sequence[Sequence[int]],
    actions: Sequence[Sequence[int]],
    bksp_id: int,
    pad_token_id: int,
    labels: Sequence[Sequence[int]] | None = None,
    width: int | None = None,
) -> dict[str, torch.Tensor]:
    """Lays out a batch of `prefix + actions` rows for one forward pass, in "step layout".

    Prefixes are left-padded to a common width W and actions right-padded to a common length T, so the state before
    action t of every row is at column W - 1 + t, and the state after the last action of a row of n actions at
    column W - 1 + n. Padding positions attend only to themselves (so that no attention row is empty).

    Args:
        prefixes: Per row, the protected prefix: the prompt of a decoder-only example (prompt + separator), or
            `[decoder_start_token_id]` for an encoder-decoder.
        actions: Per row, the actions after the prefix (tokens and `bksp_id`).
        bksp_id: The id of `<bksp>`.
        pad_token_id: The input id of padding positions.
        labels: Per row, the target of each action (same lengths as `actions`; -100 where an action is not a
            target, e.g. the wrong token of backspace noise). Default: every action is its own target.
        width: Pad the actions to this length T instead of the longest row.

    Returns:
        `input_ids`, `position_ids` ([B, W + T]), `attend` ([B, W + T, W + T] bool), `step_labels` ([B, T], -100
        on padding), `num_actions` ([B]) and `prefix_width` (a 0-d tensor holding W).
    """
    if len(prefixes) != len(actions):
        raise ValueError(f"prefixes has {len(prefixes)} rows and actions {len(actions)}; they must match.")
    if labels is not None and [len(row) for row in labels] != [len(row) for row in actions]:
        raise ValueError("labels must have one entry per action in every row.")
    batch = len(actions)
    prefix_width = max(len(row) for row in prefixes)
    steps = max([len(row) for row in actions] + [0])
    if width is not None:
        if width < steps:
            raise ValueError(f"width={width} is shorter than the longest action sequence ({steps}).")
        steps = width
    length = prefix_width + steps
    input_ids = np.full((batch, length), pad_token_id, dtype=np.int64)
    parents = np.full((batch, length), -1, dtype=np.int64)
    step_labels = np.full((batch, steps), IGNORE_INDEX, dtype=np.int64)
    for row, (prefix, acts) in enumerate(zip(prefixes, actions, strict=True)):
        sequence = list(prefix) + list(acts)
        inputs, row_parents, _ = _walk(sequence, bksp_id, len(prefix))
        start = prefix_width - len(prefix)
        input_ids[row, start : start + len(sequence)] = inputs
        parents[row, start : start + len(sequence)] = [p + start if p >= 0 else -1 for p in row_parents]
        step_labels[row, : len(acts)] = acts if labels is None else labels[row]
    attend = _ancestors(torch.from_numpy(parents))  # padding has no parent: it attends to itself only
    position_ids = attend.sum(-1) - 1  # the stack depth - 1 (padding: 0)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": position_ids,
        "attend": attend,
        "step_labels": torch.from_numpy(step_labels),
        "num_actions": torch.tensor([len(row) for row in actions], dtype=torch.long),
        "prefix_width": torch.tensor(prefix_width),
    }


def attention_mask_4d(attend: torch.Tensor, model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B, 1, Q, K] attention mask in the form the model's attention implementation takes as a custom 4D mask.

    `sdpa` (and flex) take a boolean mask (True: attend); `eager` adds the mask to the scores, so it gets 0 where a
    row attends and the dtype's minimum elsewhere.
    """
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", "eager") or "eager"
    mask = attend[:, None]
    if implementation == "eager":
        dtype = dtype or next(model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    if implementation.startswith("flash"):
        raise ValueError(
            f"attn_implementation={implementation!r} takes no custom attention mask, which backspace layouts need; "
            "load the model with attn_implementation='sdpa' or 'eager'."
        )
    return mask


# --------------------------------------------------------------------------------------------------------------
# The forward pass


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / PEFT wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


@contextlib.contextmanager
def decoder_positions(
    model: torch.nn.Module, query_positions: torch.Tensor, key_positions: torch.Tensor | None = None
) -> Iterator[None]:
    """Makes an encoder-decoder's decoder take the given position ids in the forward passes inside the block.

    BART computes its decoder's learned positions from `arange` (it accepts no position ids): a forward hook on
    `embed_positions` replaces them with `query_positions`. T5 has no position embeddings but a relative position
    bias computed from the indices of query and key: a pre-hook on the first decoder self-attention layer passes a
    bias computed from `key_positions[k] - query_positions[q]` with T5's own bucketing and weights (the later layers
    reuse the first layer's bias, as in T5 itself). Decoder-only models take `position_ids` directly and need no
    hook.

    Args:
        model: A BART- or T5-style encoder-decoder (possibly wrapped).
        query_positions: [B, Q] position ids of the decoder inputs of the forward pass.
        key_positions: [B, K] position ids of every key the queries attend to (past cache entries and the new
            inputs); default `query_positions` (no cache).

    Raises:
        ValueError: the decoder is neither BART-like (learned `embed_positions`) nor T5-like: an unsupported model.
    """
    base = _base_model(model)
    decoder = base.get_decoder()
    keys = query_positions if key_positions is None else key_positions
    handles = []
    if hasattr(decoder, "embed_positions"):
        embed = decoder.embed_positions
        offset = int(getattr(embed, "offset", 0))

        def replace_positions(module, args, output):
            return F.embedding(query_positions.to(module.weight.device) + offset, module.weight).to(output.dtype)

        handles.append(embed.register_forward_hook(replace_positions))
    elif hasattr(decoder, "block") and hasattr(decoder.block[0].layer[0], "SelfAttention"):
        attention = decoder.block[0].layer[0].SelfAttention

        def inject_bias(module, args, kwargs):
            relative = keys[:, None, :] - query_positions[:, :, None]  # [B, Q, K]
            buckets = module._relative_position_bucket(
                relative.to(module.relative_attention_bias.weight.device),
                bidirectional=False,
                num_buckets=module.relative_attention_num_buckets,
                max_distance=module.relative_attention_max_distance,
            )
            bias = module.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # [B, H, Q, K]
            return args, {**kwargs, "position_bias": bias}

        handles.append(attention.register_forward_pre_hook(inject_bias, with_kwargs=True))
    else:
        raise ValueError(
            f"Backspace layouts need the decoder positions of {type(base).__name__}; supported encoder-decoders: "
            "BART-like (learned embed_positions) and T5-like (relative position bias)."
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def backspace_forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    encoder_inputs: dict[str, torch.Tensor] | None = None,
    **kwargs,
):
    """One forward pass over a backspace layout (:func:`build_backspace_batch`); returns the model's outputs.

    Args:
        model: The model to call (wrapped by DDP or PEFT or not; the call goes through the wrapper).
        batch: `input_ids`, `position_ids` and `attend` of the layout (on the model's device).
        encoder_inputs: For an encoder-decoder, the encoder's `input_ids` and `attention_mask` (or
            `encoder_outputs`); the layout is then the decoder's.
        **kwargs: Passed to the model (e.g. `use_cache=False`).
    """
    base = _base_model(model)
    mask = attention_mask_4d(batch["attend"], base)
    if not base.config.is_encoder_decoder:
        return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], **kwargs)
    if encoder_inputs is None:
        raise ValueError("An encoder-decoder backspace forward needs encoder_inputs (input_ids, attention_mask).")
    with decoder_positions(model, batch["position_ids"]):
        return model(**encoder_inputs, decoder_input_ids=batch["input_ids"], decoder_attention_mask=mask, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Noise


def insert_backspace_noise(
    targets: Sequence[int],
    prob: float,
    bksp_id: int,
    candidates: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[int]]:
    """Backspace noise: before each target position, with probability `prob`, a random wrong token and `<bksp>`.

    The wrong token is drawn uniformly from `candidates` other than the gold token at that position. It is not a
    training target (label -100); the action after it is `<bksp>`, whose target is `<bksp>`; then the gold token
    follows as usual.

    Args:
        targets: The gold actions (tokens, ending with EOS).
        prob: Probability per position of inserting a wrong token and `<bksp>`, in [0, 1].
        bksp_id: The id of `<bksp>`.
        candidates: 1-D tensor of token ids the wrong tokens are drawn from (at least two).
        generator: The source of the draws (CPU).

    Returns:
        `(actions, labels)`.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"The backspace noise probability must be in [0, 1], got {prob}.")
    if candidates.numel() < 2:
        raise ValueError(f"Backspace noise needs at least two candidate tokens, got {candidates.numel()}.")
    targets = [int(t) for t in targets]
    if prob == 0.0 or not targets:
        return list(targets), list(targets)
    draws = torch.rand(len(targets), generator=generator) < prob
    picks = torch.randint(0, candidates.numel() - 1, (len(targets),), generator=generator)
    actions: list[int] = []
    labels: list[int] = []
    for position, gold in enumerate(targets):
        if bool(draws[position]):
            pick = int(picks[position])
            wrong = int(candidates[pick])
            if wrong == gold:  # uniform over the candidates other than gold
                wrong = int(candidates[-1])
            actions += [wrong, bksp_id]
            labels += [IGNORE_INDEX, bksp_id]
        actions.append(gold)
        labels.append(gold)
    return actions, labels


def noise_candidates(tokenizer: PreTrainedTokenizerBase, bksp_id: int | None = None) -> torch.Tensor:
    """The ids backspace noise draws wrong tokens from: the vocabulary without special tokens and `<bksp>`."""
    special = set(tokenizer.all_special_ids) | ({bksp_id} if bksp_id is not None else set())
    ids = [index for index in range(len(tokenizer)) if index not in special]
    return torch.tensor(ids, dtype=torch.long)


class BackspaceDataCollator:
    """Collates tokenized examples into one-pass backspace batches, with optional backspace noise.

    Takes the examples the tasks make (`input_ids`, `labels`; decoder-only: prompt + target with -100 on the
    prompt) and returns a batch for :func:`backspace_forward`: the layout's `input_ids`, `position_ids`, `attend`,
    `step_labels` (the target of each action, step layout), and for encoder-decoders the encoder's `encoder_input_ids`
    and `encoder_attention_mask`. `labels` holds the targets in the model's own convention (decoder-only: aligned
    with `input_ids`, shifted by the model; encoder-decoder: aligned with the decoder inputs), so the token NLL of
    `backspace_forward(...).logits` against them is MLE with backspace noise.

    Args:
        tokenizer: Gives the pad id and the noise candidates.
        bksp_token_id: The id of `<bksp>`.
        encoder_decoder: Whether the model is an encoder-decoder.
        decoder_start_token_id: The decoder start token (encoder-decoder only).
        noise_prob: Backspace noise probability per target position (0: none).
        seed: Seed of the collator's own generator for the noise.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        bksp_token_id: int,
        encoder_decoder: bool,
        decoder_start_token_id: int | None = None,
        noise_prob: float = 0.0,
        seed: int = 0,
    ):
        if encoder_decoder and decoder_start_token_id is None:
            raise ValueError("An encoder-decoder BackspaceDataCollator needs decoder_start_token_id.")
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}.")
        self.tokenizer = tokenizer
        self.bksp_token_id = bksp_token_id
        self.encoder_decoder = encoder_decoder
        self.decoder_start_token_id = decoder_start_token_id
        self.noise_prob = noise_prob
        self.candidates = noise_candidates(tokenizer, bksp_token_id)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prefixes, targets = split_examples(features, self.encoder_decoder, self.decoder_start_token_id)
        noised = [
            insert_backspace_noise(row, self.noise_prob, self.bksp_token_id, self.candidates, self.generator)
            for row in targets
        ]
        pad = self.tokenizer.pad_token_id
        batch = build_backspace_batch(
            prefixes, [a for a, _ in noised], self.bksp_token_id, pad, labels=[lab for _, lab in noised]
        )
        batch["labels"] = model_labels(batch, self.encoder_decoder)
        if self.encoder_decoder:
            sources = [list(f["input_ids"]) for f in features]
            longest = max(len(s) for s in sources)
            batch["encoder_input_ids"] = torch.tensor([s + [pad] * (longest - len(s)) for s in sources])
            batch["encoder_attention_mask"] = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sources])
        return batch


def split_examples(
    features: Sequence[dict], encoder_decoder: bool, decoder_start_token_id: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """Per example, the protected prefix and the target actions (task examples, unpadded or padded with -100)."""
    prefixes, targets = [], []
    for feature in features:
        labels = [int(x) for x in feature["labels"]]
        if encoder_decoder:
            prefixes.append([int(decoder_start_token_id)])
            targets.append([x for x in labels if x != IGNORE_INDEX])
            continue
        ids = [int(x) for x in feature["input_ids"]]
        first = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), None)
        if first is None:
            raise ValueError("A decoder-only example has no target label, so its prompt cannot be found.")
        mask = feature.get("attention_mask")
        end = len(ids) if mask is None else first + sum(int(m) for m in list(mask)[first:])
        prefixes.append(ids[:first])
        targets.append(ids[first:end])
    return prefixes, targets


def model_labels(batch: dict[str, torch.Tensor], encoder_decoder: bool) -> torch.Tensor:
    """The layout's step labels in the model's convention (see :class:`BackspaceDataCollator`)."""
    step_labels = batch["step_labels"]
    width = int(batch["prefix_width"])
    full = torch.full(batch["input_ids"].shape, IGNORE_INDEX, dtype=torch.long)
    if encoder_decoder:  # decoder input t is followed by action t
        full[:, : step_labels.shape[1]] = step_labels
    else:  # the model shifts: the label at column W + t is predicted from column W - 1 + t
        full[:, width:] = step_labels
    return full


# --------------------------------------------------------------------------------------------------------------
# Decoding


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
        self.base = _base_model(model)
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


def generate_with_backspace(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    bksp_token_id: int | None = None,
    return_actions: bool = False,
    generator: torch.Generator | None = None,
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
        **kwargs: Override fields of the generation config (e.g. `max_new_tokens=20`).

    Returns:
        The final sequences as `generate` returns them, or a :class:`BackspaceGeneration`.
    """
    base = _base_model(model)
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
                if bool(done.all()):
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
