"""SequenceMatch's backspace action: the `<bksp>` token, one-pass masks, noise and decoding.

Generation is read as an MDP whose state is the current effective prefix and whose actions are the tokens plus
`<bksp>`, which deletes the last token. This package holds everything that is about that action, independent of the
loss (:mod:`hf_seqobj.objectives.sequencematch`):

- :mod:`~hf_seqobj.backspace.token`: :func:`add_backspace_token` adds `<bksp>` to a tokenizer and a model
  (`model.config.bksp_token_id` records it);
- :mod:`~hf_seqobj.backspace.layout`: :func:`build_backspace_inputs` lays one action sequence out for a single forward
  pass that computes the logits of every state it visits, :func:`build_backspace_batch` does it for a padded batch,
  and :func:`backspace_forward` runs that forward on GPT-2, BART and T5;
- :mod:`~hf_seqobj.backspace.noise`: :func:`insert_backspace_noise` and :class:`BackspaceDataCollator` put random
  wrong tokens followed by `<bksp>` into training targets;
- :mod:`~hf_seqobj.backspace.decoding`: :func:`generate_with_backspace` decodes with the action, batched and with a
  KV cache.
"""

from hf_seqobj.backspace.decoding import (
    TWO_CYCLE_WARNING,
    BackspaceDecoder,
    BackspaceGeneration,
    generate_with_backspace,
    warn_on_two_cycles,
)
from hf_seqobj.backspace.layout import (
    BackspaceInputs,
    apply_backspaces,
    attention_mask_4d,
    backspace_forward,
    build_backspace_batch,
    build_backspace_inputs,
    decoder_positions,
    layout_batch,
)
from hf_seqobj.backspace.noise import (
    BackspaceDataCollator,
    insert_backspace_noise,
    insert_backspace_noise_batch,
    model_labels,
    noise_candidates,
    split_examples,
)
from hf_seqobj.backspace.token import BKSP_TOKEN, add_backspace_token, backspace_token_id


__all__ = [
    "BKSP_TOKEN",
    "TWO_CYCLE_WARNING",
    "BackspaceDataCollator",
    "BackspaceDecoder",
    "BackspaceGeneration",
    "BackspaceInputs",
    "add_backspace_token",
    "apply_backspaces",
    "attention_mask_4d",
    "backspace_forward",
    "backspace_token_id",
    "build_backspace_batch",
    "build_backspace_inputs",
    "decoder_positions",
    "generate_with_backspace",
    "layout_batch",
    "insert_backspace_noise",
    "insert_backspace_noise_batch",
    "model_labels",
    "noise_candidates",
    "split_examples",
    "warn_on_two_cycles",
]
