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

import torch
import torch.nn.functional as F

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.models import unwrap_model


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
    """[B, L, L] bool: row i is True at i and at every index on its chain of parents ([B, L] ids, -1 for none).

    Every parent comes before its child (`parents[b, i] < i`), so row i is its parent's row plus i itself: one
    batched copy per index, O(B L^2) in all (path doubling with dense matmuls would be O(B L^3 log L)).
    """
    batch, length = parents.shape
    index = torch.arange(length, device=parents.device)
    if bool((parents >= index).any()):
        raise ValueError("Every parent must come before its child (parents[b, i] < i), as in a stack walk.")
    reach = torch.zeros((batch, length, length), dtype=torch.bool, device=parents.device)
    has_parent = (parents >= 0)[..., None]
    safe = parents.clamp(min=0)
    rows = torch.arange(batch, device=parents.device)
    for i in range(length):
        reach[:, i] = reach[rows, safe[:, i]] & has_parent[:, i]
        reach[:, i, i] = True
    return reach


def walk_batch(
    sequences: torch.Tensor, valid: torch.Tensor, prefix_lengths: torch.Tensor, bksp_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stack walk of :func:`_walk` for a batch at once (a loop over columns, none over rows).

    Args:
        sequences: [B, L] ids: each row's protected prefix followed by its actions, with padding anywhere `valid` is
            False (left padding before the prefix, right padding after the actions).
        valid: [B, L] bool, the real entries.
        prefix_lengths: [B] how many of each row's valid entries form the protected prefix (>= 1).
        bksp_id: The id of `<bksp>`.
        pad_token_id: The input of padding entries.

    Returns:
        `(inputs [B, L], parents [B, L] (-1: none; padding has none), stack [B, L] (the final stack's indices, in
        order), depth [B] (its size))`.
    """
    batch, length = sequences.shape
    device = sequences.device
    if bool((prefix_lengths < 1).any()):
        raise ValueError("Every row needs a protected prefix of at least one token (a prompt or a start token).")
    position = valid.long().cumsum(1) - 1  # index among the row's valid entries
    in_prefix = valid & (position < prefix_lengths[:, None])
    if bool((in_prefix & (sequences == bksp_id)).any()):
        raise ValueError(f"<bksp> (id {bksp_id}) inside a protected prefix.")
    inputs = torch.full((batch, length), pad_token_id, dtype=torch.long, device=device)
    parents = torch.full((batch, length), -1, dtype=torch.long, device=device)
    stack = torch.zeros((batch, length + 1), dtype=torch.long, device=device)
    depth = torch.zeros(batch, dtype=torch.long, device=device)
    is_bksp = valid & ~in_prefix & (sequences == bksp_id)
    push = valid & ~is_bksp
    for column in range(length):
        pushing, deleting = push[:, column], is_bksp[:, column]
        below = stack.gather(1, (depth - 1).clamp(min=0)[:, None])[:, 0]  # the top before this action
        popped = deleting & (depth > prefix_lengths)
        depth = depth - popped.long()
        top = stack.gather(1, (depth - 1).clamp(min=0)[:, None])[:, 0]  # the top after a pop
        inputs[:, column] = torch.where(
            pushing, sequences[:, column], torch.where(deleting, inputs.gather(1, top[:, None])[:, 0], pad_token_id)
        )
        parents[:, column] = torch.where(
            pushing,
            torch.where(depth > 0, below, -1),
            torch.where(deleting, parents.gather(1, top[:, None])[:, 0], -1),
        )
        slot = torch.where(pushing, depth, (depth - 1).clamp(min=0))
        current = stack.gather(1, slot[:, None])[:, 0]
        stack.scatter_(1, slot[:, None], torch.where(pushing | deleting, column, current)[:, None])
        depth = depth + pushing.long()
    return inputs, parents, stack[:, :length], depth


def layout_batch(
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    actions: torch.Tensor,
    num_actions: torch.Tensor,
    bksp_id: int,
    pad_token_id: int,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`build_backspace_batch` on padded tensors, on their device, without a loop over rows.

    Args:
        prefix_ids: [B, W] the protected prefixes, left-padded.
        prefix_mask: [B, W] 1 on the prefix tokens.
        actions: [B, T] the actions after each prefix, right-padded (anything past `num_actions`).
        num_actions: [B] actions per row.
        bksp_id: The id of `<bksp>`.
        pad_token_id: The input id of padding positions.
        labels: [B, T] the target of each action (-100: none); default the actions themselves.

    Returns:
        What :func:`build_backspace_batch` returns (`prefix_width` is W).
    """
    batch, width = prefix_ids.shape
    steps = actions.shape[1]
    device = prefix_ids.device
    num_actions = num_actions.to(device)
    acting = torch.arange(steps, device=device)[None, :] < num_actions[:, None]
    sequences = torch.cat([prefix_ids.long(), actions.to(device).long()], dim=1)
    valid = torch.cat([prefix_mask.to(device).bool(), acting], dim=1)
    prefix_lengths = prefix_mask.to(device).long().sum(1)
    inputs, parents, _, _ = walk_batch(sequences, valid, prefix_lengths, bksp_id, pad_token_id)
    attend = _ancestors(parents)  # padding has no parent: it attends to itself only
    targets = actions if labels is None else labels
    step_labels = torch.where(acting, targets.to(device).long(), IGNORE_INDEX)
    return {
        "input_ids": inputs,
        "position_ids": attend.sum(-1) - 1,  # the stack depth - 1 (padding: 0)
        "attend": attend,
        "step_labels": step_labels,
        "num_actions": num_actions,
        "prefix_width": torch.tensor(width),
    }


def apply_backspaces_batch(actions: torch.Tensor, num_actions: torch.Tensor, bksp_id: int, pad_token_id: int):
    """The effective sequences after each row's actions (:func:`apply_backspaces` for a batch, no prefix).

    Returns:
        `(sequences [B, F] right-padded with `pad_token_id`, lengths [B])`.
    """
    batch, steps = actions.shape
    device = actions.device
    stack = torch.full((batch, steps + 1), pad_token_id, dtype=torch.long, device=device)
    depth = torch.zeros(batch, dtype=torch.long, device=device)
    acting = torch.arange(steps, device=device)[None, :] < num_actions.to(device)[:, None]
    for column in range(steps):
        action = actions[:, column]
        deleting = acting[:, column] & (action == bksp_id)
        pushing = acting[:, column] & ~deleting
        depth = depth - (deleting & (depth > 0)).long()
        current = stack.gather(1, depth[:, None])[:, 0]
        stack.scatter_(1, depth[:, None], torch.where(pushing, action, current)[:, None])
        depth = depth + pushing.long()
    width = int(depth.max()) if batch else 0
    column = torch.arange(width, device=device)[None, :]
    return stack[:, :width].masked_fill(column >= depth[:, None], pad_token_id), depth


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
    if any(len(row) == 0 for row in prefixes):
        raise ValueError("Every row needs a protected prefix of at least one token (a prompt or a start token).")
    steps = max([len(row) for row in actions] + [0])
    if width is not None:
        if width < steps:
            raise ValueError(f"width={width} is shorter than the longest action sequence ({steps}).")
        steps = width
    prefix_ids, prefix_mask = _left_pad([list(row) for row in prefixes], pad_token_id)
    padded_actions, _ = _right_pad([list(row) for row in actions], steps, pad_token_id)
    padded_labels = None if labels is None else _right_pad([list(row) for row in labels], steps, IGNORE_INDEX)[0]
    num_actions = torch.tensor([len(row) for row in actions], dtype=torch.long)
    return layout_batch(prefix_ids, prefix_mask, padded_actions, num_actions, bksp_id, pad_token_id, padded_labels)


def _left_pad(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(row) for row in rows] + [0])
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], width: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
    return ids, mask


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
