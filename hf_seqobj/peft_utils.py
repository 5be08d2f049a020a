"""PEFT (LoRA) for the hf_seqobj trainers, the way TRL's trainers take it.

- The trainers accept `peft_config=` (a `peft.PeftConfig`) and wrap the model with `get_peft_model`
  (:func:`wrap_model_in_args`).
- :func:`lora_config_for` gives the right LoRA settings per architecture: GPT-2's `c_attn` / `c_proj` are `Conv1D`
  layers (`fan_in_fan_out=True`, task `CAUSAL_LM`); BART's `q_proj` / `v_proj` and T5's `q` / `v` are linear layers
  of a `SEQ_2_SEQ_LM` model. Tokens added to the tokenizer beyond its base vocabulary (BIO tags, `<sep>`, later
  `<bksp>`) would otherwise keep their freshly initialised, frozen embeddings: they are made trainable with LoRA's
  `trainable_token_indices` (the embedding rows of those tokens only; tied output embeddings follow).
- :func:`is_adapter_dir` and :func:`adapter_base_model` read an adapter directory written by a trainer
  (:func:`hf_seqobj.modeling.load_adapter_model_and_tokenizer` loads one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase


if TYPE_CHECKING:
    from peft import LoraConfig, PeftConfig


logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGET_MODULES: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "bart": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
}
"""LoRA's target modules per `model_type` (other architectures: "all-linear")."""

EMBEDDING_MODULE_NAMES = ("wte", "shared", "embed_tokens", "lm_head", "embed_in", "embed_out")
"""Module names that hold (input or output) embeddings; with one in `modules_to_save` every row trains."""

ADAPTER_CONFIG_NAME = "adapter_config.json"


def added_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the tokens added to `tokenizer` beyond its base vocabulary (e.g. BIO tags, `<sep>`, `<bksp>`), sorted.

    These are the added tokens whose id is at least `tokenizer.vocab_size` (the base vocabulary's size): a base
    model has never trained their embeddings. Special tokens that belong to the base vocabulary (GPT-2's
    `<|endoftext|>`) are not among them.
    """
    base = tokenizer.vocab_size
    return sorted(index for index in tokenizer.get_added_vocab().values() if index >= base)


def lora_config_for(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] | str | None = None,
    modules_to_save: Sequence[str] | None = None,
    **kwargs: Any,
) -> LoraConfig:
    """A `LoraConfig` with the right defaults for `model`'s architecture.

    Args:
        model: The model to adapt (GPT-2, BART, T5 or any other).
        tokenizer: When given, the tokens added beyond its base vocabulary (:func:`added_token_ids`) are made
            trainable with `trainable_token_indices`, unless `modules_to_save` already trains a whole embedding.
        r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by `lora_alpha / r`).
        lora_dropout: Dropout on LoRA's input.
        target_modules: Module names to adapt; None uses :data:`DEFAULT_LORA_TARGET_MODULES` for the model type, or
            "all-linear" for other types. `["all-linear"]` is the same as "all-linear".
        modules_to_save: Modules trained in full and saved with the adapter (e.g. `["lm_head"]`).
        **kwargs: Further `LoraConfig` arguments (`use_rslora`, `use_dora`, `bias`, ...).

    Returns:
        The config: task type `CAUSAL_LM` for decoder-only models and `SEQ_2_SEQ_LM` for encoder-decoder ones, and
        `fan_in_fan_out=True` where the targets are GPT-2's `Conv1D` layers.
    """
    from peft import LoraConfig, TaskType
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(model.config, "model_type", None)
    if target_modules is None:
        target_modules = DEFAULT_LORA_TARGET_MODULES.get(model_type, "all-linear")
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if target_modules == ["all-linear"]:
            target_modules = "all-linear"
    conv1d = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, Conv1D)}
    targets = set(conv1d) if target_modules == "all-linear" else set(target_modules)
    fan_in_fan_out = bool(conv1d & targets)
    if fan_in_fan_out and targets - conv1d and target_modules != "all-linear":
        raise ValueError(
            f"lora_target_modules {sorted(targets)} mix Conv1D layers ({sorted(conv1d & targets)}) with other layers "
            f"({sorted(targets - conv1d)}); LoRA's fan_in_fan_out can only be right for one kind."
        )
    trainable_tokens = None
    trains_embeddings = any(name in EMBEDDING_MODULE_NAMES for name in modules_to_save or ())
    if tokenizer is not None and not trains_embeddings:
        trainable_tokens = added_token_ids(tokenizer) or None
    task_type = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    return LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        fan_in_fan_out=fan_in_fan_out,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        trainable_token_indices=trainable_tokens,
        **kwargs,
    )


def wrap_model_in_args(
    args: tuple, kwargs: dict[str, Any], peft_config: PeftConfig, parameter_names: Sequence[str]
) -> tuple[tuple, dict[str, Any]]:
    """The trainer's constructor arguments with the model wrapped by `get_peft_model(model, peft_config)`.

    Args:
        args: The positional arguments given to the trainer.
        kwargs: The keyword arguments given to the trainer.
        peft_config: The adapter to add.
        parameter_names: The stock trainer's parameter names in order (to find `model` and `args` positionally).

    Raises:
        ValueError: There is no model, or the model already is a `PeftModel` (pass one or the other).
    """
    from peft import PeftModel, get_peft_model

    args, kwargs = list(args), dict(kwargs)
    model_index = parameter_names.index("model")
    in_args = len(args) > model_index
    model = args[model_index] if in_args else kwargs.get("model")
    if model is None:
        raise ValueError("peft_config needs a model (model_init is not supported with peft_config).")
    if isinstance(model, PeftModel):
        raise ValueError(
            "The model already is a PeftModel: pass it without peft_config, or pass the base model with peft_config."
        )
    args_index = parameter_names.index("args")
    training_args = args[args_index] if len(args) > args_index else kwargs.get("args")
    tokenizer = kwargs.get("processing_class")
    if tokenizer is not None and getattr(peft_config, "trainable_token_indices", None) is None:
        untrained = added_token_ids(tokenizer)
        saved = getattr(peft_config, "modules_to_save", None) or ()
        if untrained and not any(name in EMBEDDING_MODULE_NAMES for name in saved):
            logger.warning(
                "The tokenizer has %d tokens beyond its base vocabulary (ids %s) whose embeddings stay frozen under "
                "this peft_config; hf_seqobj.peft_utils.lora_config_for(model, tokenizer) makes them trainable.",
                len(untrained),
                untrained[:10],
            )
    if getattr(training_args, "activation_checkpointing", None) or getattr(
        training_args, "gradient_checkpointing", False
    ):
        # Frozen embeddings give checkpointed blocks inputs without gradients: let them require grad.
        model.enable_input_require_grads()
    wrapped = get_peft_model(model, peft_config)
    if in_args:
        args[model_index] = wrapped
    else:
        kwargs["model"] = wrapped
    return tuple(args), kwargs


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a local directory holding a PEFT adapter (adapter_config.json) rather than a full model."""
    path = Path(path)
    return (path / ADAPTER_CONFIG_NAME).is_file() and not (path / "config.json").is_file()


def adapter_base_model(path: str | Path) -> str:
    """The base model (Hub name or path) that the adapter in directory `path` was trained on."""
    with open(Path(path) / ADAPTER_CONFIG_NAME, encoding="utf-8") as handle:
        base = json.load(handle).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(path) / ADAPTER_CONFIG_NAME} names no base_model_name_or_path.")
    return base
