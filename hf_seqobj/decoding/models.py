"""The model under its wrappers, and what its forward accepts: the one place the package looks through wrappers.

The trainers hand objectives and decoders a model that may be wrapped several times over: compiled
(`torch.compile`'s `OptimizedModule`), distributed (DDP, DeepSpeed's engine, FSDP: each keeps the model in `.module`)
and a PEFT `PeftModel`. :func:`unwrap_model` finds the transformers model inside all of them (LoRA-style adapters live
inside it, so calling it still runs them); :func:`accepts_logits_to_keep` says whether its forward can compute the LM
head on the last positions only.
"""

from __future__ import annotations

import inspect

import torch


__all__ = ["accepts_logits_to_keep", "unwrap_model"]


def unwrap_model(model: torch.nn.Module, refuse_prompt_learning: bool = False) -> torch.nn.Module:
    """The transformers model with its LM head inside compiled, DDP / DeepSpeed / FSDP and PEFT wrappers.

    Args:
        model: A model, wrapped any number of times (in any order) or not at all.
        refuse_prompt_learning: Raise on a PEFT prompt-learning adapter (prompt / prefix / p-tuning): its virtual
            tokens are added by the `PeftModel`'s own forward, so a caller that runs the model inside (the roll-in
            decoder) would silently leave them out. LoRA-style adapters live inside the model and need no refusal.

    Raises:
        ValueError: `refuse_prompt_learning` and the active adapter is a prompt-learning one.
    """
    while True:
        compiled = getattr(model, "_modules", {}).get("_orig_mod")  # torch.compile's OptimizedModule (not delegated)
        if isinstance(compiled, torch.nn.Module):
            model = compiled
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            config = getattr(model, "active_peft_config", None)
            if refuse_prompt_learning and getattr(config, "is_prompt_learning", False):
                raise ValueError(
                    f"The roll-in decoder runs the base model with its adapters inside; a prompt-learning adapter "
                    f"({type(config).__name__}) is not supported. Use LoRA-style adapters."
                )
            model = model.get_base_model()
        else:
            return model


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (the LM head on the last positions only); pass the
    unwrapped model (:func:`unwrap_model`). Cached per model class."""
    kind = type(model)
    if kind not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[kind] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[kind]
