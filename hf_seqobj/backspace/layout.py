"""The one-pass layout of an action sequence with backspaces, and the forward pass that runs it.

The actions are walked with a stack of indices. A token at index i is pushed; its input is the token and its
position id the stack depth - 1. A `<bksp>` at index i pops the stack; its input is a copy of the new top token, with
that token's position id, and the copy (index i) replaces the top on the stack. Row i attends to exactly the indices
on the stack after step i. The first `prefix_length` actions (a decoder-only prompt, or an encoder-decoder's decoder
start token) are never deleted: a `<bksp>` on an empty generated part leaves the state as it is (it replaces the top
by a copy of itself).

:func:`backspace_forward` runs the layout on GPT-2, BART and T5: BART's learned decoder positions and T5's relative
position bias are fed from the layout's position ids, so the logits equal those of running every state separately
(tested to 1e-4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hf_seqobj.constants import IGNORE_INDEX


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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
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
    base = unwrap_model(model)
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
    base = unwrap_model(model)
    mask = attention_mask_4d(batch["attend"], base)
    if not base.config.is_encoder_decoder:
        return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], **kwargs)
    if encoder_inputs is None:
        raise ValueError("An encoder-decoder backspace forward needs encoder_inputs (input_ids, attention_mask).")
    with decoder_positions(model, batch["position_ids"]):
        return model(**encoder_inputs, decoder_input_ids=batch["input_ids"], decoder_attention_mask=mask, **kwargs)
