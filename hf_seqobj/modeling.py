"""Models and tokenizers: loading checkpoints (Hub names or local paths) and building small ones offline.

Everything goes through `from_pretrained`: a model built here from a config is first saved with `save_pretrained`,
with a tokenizer trained by the `tokenizers` library on the task's training text, and then loaded back exactly as a
Hub checkpoint would be.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)


logger = logging.getLogger(__name__)

ARCHITECTURES = ("gpt2", "bart", "t5")
TOKENIZER_TYPES = ("wordlevel", "bpe")
SEPARATOR_TOKEN = "<sep>"
"""Separates prompt and target in decoder-only examples (added to a tokenizer that has no `sep_token`)."""

# d_model, layers (per stack), attention heads, feed-forward width.
MODEL_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 4, 256),
    "mini": (128, 3, 4, 512),
    "small": (256, 4, 4, 1024),
    "base": (512, 6, 8, 2048),
}
_SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def describe_model(architecture: str, size: str) -> str:
    """A one-line description of a model that :func:`build_model` builds, for reports: "bart tiny (d_model 64, 2
    encoder + 2 decoder layers)"."""
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {tuple(MODEL_SIZES)}, got {size!r}.")
    d_model, layers = MODEL_SIZES[size][:2]
    stack = f"{layers} layers" if architecture == "gpt2" else f"{layers} encoder + {layers} decoder layers"
    return f"{architecture} {size} (d_model {d_model}, {stack})"


def train_tokenizer(
    texts: Iterable[str],
    tokenizer_type: str = "wordlevel",
    vocab_size: int = 8000,
    min_frequency: int = 1,
    extra_tokens: Sequence[str] = (),
    sep_token: bool = True,
) -> PreTrainedTokenizerFast:
    """Trains a tokenizer on `texts` with the `tokenizers` library.

    Args:
        texts: The training text (sources and targets).
        tokenizer_type: "wordlevel" (whitespace and punctuation split, one id per word) or "bpe" (byte-level BPE).
        vocab_size: The largest vocabulary, special and extra tokens included.
        min_frequency: The fewest occurrences for a word (or merge) to enter the vocabulary.
        extra_tokens: Tokens that must each be one id (for instance BIO tags); added as ordinary, not special,
            tokens so that decoding keeps them.
        sep_token: Add `<sep>` as the separator token (used by decoder-only examples).

    Returns:
        A `PreTrainedTokenizerFast` with `<pad>`, `<s>`, `</s>`, `<unk>` (and `<sep>`) set.
    """
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(f"tokenizer_type must be one of {TOKENIZER_TYPES}, got {tokenizer_type!r}.")
    special = list(_SPECIAL.values()) + ([SEPARATOR_TOKEN] if sep_token else [])
    if tokenizer_type == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token=_SPECIAL["unk_token"]))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special)
        tokenizer.decoder = None
    else:
        tokenizer = Tokenizer(models.BPE(unk_token=None))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, **_SPECIAL, **({"sep_token": SEPARATOR_TOKEN} if sep_token else {})
    )
    missing = [token for token in extra_tokens if token not in fast.get_vocab()]
    if missing:
        fast.add_tokens(missing)
    return fast


def build_model(
    architecture: str, tokenizer: PreTrainedTokenizerBase, size: str = "tiny", max_positions: int = 512
) -> PreTrainedModel:
    """Builds a randomly initialised GPT-2, BART or T5 model sized for `tokenizer`.

    Args:
        architecture: "gpt2", "bart" or "t5".
        tokenizer: Its vocabulary size and special-token ids go into the model config.
        size: One of `MODEL_SIZES` ("tiny", "small", "base").
        max_positions: Learned position embeddings (GPT-2, BART).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {tuple(MODEL_SIZES)}, got {size!r}.")
    d_model, layers, heads, ffn = MODEL_SIZES[size]
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if architecture == "gpt2":
        config = GPT2Config(
            n_embd=d_model, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=max_positions, **ids
        )
        return GPT2LMHeadModel(config)
    if architecture == "bart":
        config = BartConfig(
            d_model=d_model,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=ffn,
            decoder_ffn_dim=ffn,
            max_position_embeddings=max_positions,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            **ids,
        )
        return BartForConditionalGeneration(config)
    config = T5Config(
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=ffn,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        decoder_start_token_id=tokenizer.pad_token_id,
        **ids,
    )
    return T5ForConditionalGeneration(config)


def create_offline_model(
    architecture: str,
    texts: Iterable[str],
    save_dir: str | Path,
    size: str = "tiny",
    tokenizer_type: str = "wordlevel",
    vocab_size: int = 8000,
    min_frequency: int = 1,
    extra_tokens: Sequence[str] = (),
    seed: int = 0,
) -> Path:
    """Trains a tokenizer on `texts`, builds a model from its config and saves both to `save_dir`.

    The result is an ordinary checkpoint directory: load it with :func:`load_model_and_tokenizer` (or any
    `from_pretrained`).

    Returns:
        `save_dir` as a `Path`.
    """
    import torch

    tokenizer = train_tokenizer(texts, tokenizer_type, vocab_size, min_frequency, extra_tokens)
    torch.manual_seed(seed)
    model = build_model(architecture, tokenizer, size)
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    logger.info("Built a %s %s model (%d parameters) in %s", size, architecture, model.num_parameters(), save_dir)
    return save_dir


def is_encoder_decoder(name_or_path: str | Path) -> bool:
    """Whether the checkpoint (Hub name or local path; for a PEFT adapter, its base model) is an encoder-decoder."""
    from hf_seqobj.peft_utils import adapter_base_model, is_adapter_dir

    if is_adapter_dir(name_or_path):
        name_or_path = adapter_base_model(name_or_path)
    return bool(getattr(AutoConfig.from_pretrained(str(name_or_path)), "is_encoder_decoder", False))


def load_model_and_tokenizer(
    name_or_path: str | Path, extra_tokens: Sequence[str] = (), config_overrides: dict | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a checkpoint (a Hub name such as `gpt2`, `facebook/bart-base`, `t5-small`, or a local path).

    The tokenizer is completed for hf_seqobj's examples: a pad token (the EOS token where the tokenizer has none, as
    for GPT-2), a separator token for decoder-only models, and `extra_tokens` (for instance BIO tags) as single
    tokens. Where tokens are added, the model's embeddings are resized. A local directory that holds a PEFT adapter
    (adapter_config.json, as a trainer with `peft_config` writes) loads as its base model with the adapter on top
    (:func:`hf_seqobj.peft_utils.load_adapter_model_and_tokenizer`).

    Args:
        name_or_path: Hub name or local directory.
        extra_tokens: Tokens that must each be one id (added where the tokenizer lacks them).
        config_overrides: Config attributes to change before the model is built (for instance
            `{"dropout": 0.0}`); each must be an attribute the config has.

    Returns:
        `(model, tokenizer)`.
    """
    from hf_seqobj.peft_utils import is_adapter_dir, load_adapter_model_and_tokenizer

    if is_adapter_dir(name_or_path):
        return load_adapter_model_and_tokenizer(name_or_path, extra_tokens, config_overrides)
    name_or_path = str(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path)
    unknown = sorted(key for key in (config_overrides or {}) if not hasattr(config, key))
    if unknown:
        raise ValueError(f"config_overrides {unknown} are not attributes of {type(config).__name__}.")
    config.update(config_overrides or {})
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    auto_class = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto_class.from_pretrained(name_or_path, config=config)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"The tokenizer of {name_or_path!r} has neither a pad nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
    added = 0
    if not model.config.is_encoder_decoder and tokenizer.sep_token is None:
        added += tokenizer.add_special_tokens({"sep_token": SEPARATOR_TOKEN})
    vocab = tokenizer.get_vocab()
    missing = [token for token in extra_tokens if token not in vocab]
    if missing:
        added += tokenizer.add_tokens(missing)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("Added %d tokens to %s and resized its embeddings to %d", added, name_or_path, len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
