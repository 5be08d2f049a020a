"""The `<bksp>` token: adding it to a tokenizer and a model, and finding its id."""

from __future__ import annotations

import torch
from transformers import (
    AddedToken,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


BKSP_TOKEN = "<bksp>"
"""The text of the backspace token."""


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
