"""Models and tokenizers: loading checkpoints (Hub names or local paths) and building small ones offline.

Everything goes through `from_pretrained`: a model built here from a config is first saved with `save_pretrained`,
with a tokenizer trained by the `tokenizers` library on the task's training text, and then loaded back exactly as a
Hub checkpoint would be.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
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

from hf_seqobj.peft_utils import ADAPTER_CONFIG_NAME, adapter_base_model, is_adapter_dir


logger = logging.getLogger(__name__)

RUN_CONFIG_NAME = "hf_seqobj_run.yaml"
"""Written into a run's output_dir by `hf-seqobj train`: the run's settings (read back by `hf-seqobj evaluate`) and,
for an adapter, the base model it was trained on (:func:`base_model_record`)."""

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

    from hf_seqobj.guards import check_vocabulary

    tokenizer = train_tokenizer(texts, tokenizer_type, vocab_size, min_frequency, extra_tokens)
    check_vocabulary(tokenizer, extra_tokens, vocab_size, min_frequency)
    torch.manual_seed(seed)
    model = build_model(architecture, tokenizer, size)
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    logger.info("Built a %s %s model (%d parameters) in %s", size, architecture, model.num_parameters(), save_dir)
    return save_dir


_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def check_model_source(name_or_path: str, setting: str = "model_name_or_path") -> None:
    """Checks that `name_or_path` is a checkpoint that can be loaded here, before any work is done.

    A local directory must hold `config.json` (a model) or `adapter_config.json` (an adapter). A name that is no
    local path is a Hub model name: with `HF_HUB_OFFLINE=1` it must be in the local cache.

    Raises:
        ValueError: naming `setting` and saying whether the value was taken as a local path or a Hub name.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{setting} {name_or_path!r} is a file; a local checkpoint is a directory.")
        if not ((path / "config.json").is_file() or (path / ADAPTER_CONFIG_NAME).is_file()):
            raise ValueError(
                f"{setting} {name_or_path!r} is a local directory without config.json (or {ADAPTER_CONFIG_NAME}): "
                "not a model checkpoint."
            )
        return
    local = name_or_path.startswith(("/", ".", "~")) or os.sep in name_or_path.replace("/", "", 1)
    if local or not _REPO_ID.match(name_or_path) or ".." in name_or_path or "--" in name_or_path:
        raise ValueError(f"{setting} {name_or_path!r} is a local path that does not exist.")
    offline = constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "0").upper() in ("1", "ON", "YES")
    cached = any(
        isinstance(try_to_load_from_cache(name_or_path, name), str) for name in ("config.json", ADAPTER_CONFIG_NAME)
    )
    if offline and not cached:
        local = "no local directory of that name exists, and " if "/" in name_or_path else ""
        raise ValueError(
            f"{setting} {name_or_path!r} is taken as a Hub model name, but {local}it is not in the local Hugging Face "
            "cache and HF_HUB_OFFLINE=1 forbids downloading it: download it first, or give a local checkpoint path."
        )


def model_fingerprint(path: str | Path) -> str:
    """A SHA-256 of a local checkpoint's config and weights (config.json, *.safetensors, *.bin), by name and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    names = sorted(
        p.name
        for p in path.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    )
    for name in names:
        if name == "training_args.bin":
            continue
        digest.update(name.encode() + b"\0")
        with open(path / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def hub_commit(name: str) -> str | None:
    """The Hub commit that the local cache holds for the model `name` at its main revision (the one a run that
    loaded `name` used), or None when `name` is not in the cache."""
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils.hub import extract_commit_hash

    try:
        path = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return extract_commit_hash(path, None) if isinstance(path, str) else None


def base_model_record(base: str | Path, run_dir: str | Path) -> dict[str, Any]:
    """What a run that trains an adapter records about its base model, so that the adapter finds exactly it again.

    Returns:
        `name_or_path`: the Hub name, or the absolute path of a local base; `in_run`: for a local base inside
        `run_dir` (a model built offline, `initial_model`), its path relative to `run_dir`, so that a moved or
        copied run folder uses its own copy; `fingerprint`: :func:`model_fingerprint` of a local base;
        `revision`: for a Hub base, the commit it was loaded at (:func:`hub_commit`), which the adapter loads again.
    """
    path = Path(base).expanduser()
    if not path.is_dir():
        return {"name_or_path": str(base), "in_run": None, "fingerprint": None, "revision": hub_commit(str(base))}
    path = path.resolve()
    run_dir = Path(run_dir).resolve()
    in_run = str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else None
    return {"name_or_path": str(path), "in_run": in_run, "fingerprint": model_fingerprint(path)}


def resolve_adapter_base(adapter_dir: str | Path) -> str:
    """The base model of the adapter in `adapter_dir` (see :func:`resolve_adapter_base_revision`), without the Hub
    revision."""
    return resolve_adapter_base_revision(adapter_dir)[0]


def resolve_adapter_base_revision(adapter_dir: str | Path) -> tuple[str, str | None]:
    """The base model of the adapter in `adapter_dir`: exactly the one it was trained on, as `(name_or_path,
    revision)`.

    With the record that `hf-seqobj train` writes (:func:`base_model_record`, in `RUN_CONFIG_NAME`): the base inside
    the run folder (wherever the folder now is), else the recorded Hub name at the recorded commit, or the recorded
    absolute path, which must have the recorded fingerprint. Without a record: the `base_model_name_or_path` of
    `adapter_config.json` (PEFT's), with no revision.

    Raises:
        ValueError: the recorded base is gone, or a local base is not the one the adapter was trained on.
    """
    adapter_dir = Path(adapter_dir)
    record = None
    if (adapter_dir / RUN_CONFIG_NAME).is_file():
        with open(adapter_dir / RUN_CONFIG_NAME, encoding="utf-8") as handle:
            record = (yaml.safe_load(handle) or {}).get("base_model")
    if not record:
        return adapter_base_model(adapter_dir), None
    if record.get("in_run") and (adapter_dir / record["in_run"]).is_dir():
        base = adapter_dir / record["in_run"]
    elif record.get("fingerprint") is None:
        return record["name_or_path"], record.get("revision")
    else:
        base = Path(record["name_or_path"])
        if not base.is_dir():
            inside = f" (nor is {adapter_dir / record['in_run']} there)" if record.get("in_run") else ""
            raise ValueError(
                f"The adapter in {adapter_dir} was trained on the base model {base}, which no longer exists{inside}."
            )
    if model_fingerprint(base) != record["fingerprint"]:
        raise ValueError(
            f"The base model at {base} is not the one the adapter in {adapter_dir} was trained on: its config or "
            f"weights changed since ({RUN_CONFIG_NAME} records fingerprint {record['fingerprint'][:19]}...)."
        )
    return str(base), None


def is_encoder_decoder(name_or_path: str | Path) -> bool:
    """Whether the checkpoint (Hub name or local path; for a PEFT adapter, its base model) is an encoder-decoder."""
    if is_adapter_dir(name_or_path):
        name_or_path = resolve_adapter_base(name_or_path)
    return bool(getattr(AutoConfig.from_pretrained(str(name_or_path)), "is_encoder_decoder", False))


def load_model_and_tokenizer(
    name_or_path: str | Path,
    extra_tokens: Sequence[str] = (),
    config_overrides: dict | None = None,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a checkpoint (a Hub name such as `gpt2`, `facebook/bart-base`, `t5-small`, or a local path).

    The tokenizer is completed for hf_seqobj's examples: a pad token (the EOS token where the tokenizer has none, as
    for GPT-2), a separator token for decoder-only models, and `extra_tokens` (for instance BIO tags) as single
    tokens. Where tokens are added, the model's embeddings are resized. A local directory that holds a PEFT adapter
    (adapter_config.json, as a trainer with `peft_config` writes) loads as its base model with the adapter on top
    (:func:`load_adapter_model_and_tokenizer`).

    Args:
        name_or_path: Hub name or local directory.
        extra_tokens: Tokens that must each be one id (added where the tokenizer lacks them).
        config_overrides: Config attributes to change before the model is built (for instance
            `{"dropout": 0.0}`); each must be an attribute the config has.
        revision: For a Hub name, the branch, tag or commit to load (`from_pretrained(revision=...)`; default: the
            newest).

    Returns:
        `(model, tokenizer)`.
    """
    if is_adapter_dir(name_or_path):
        return load_adapter_model_and_tokenizer(name_or_path, extra_tokens, config_overrides)
    name_or_path = str(name_or_path)
    hub = {"revision": revision} if revision is not None else {}
    config = AutoConfig.from_pretrained(name_or_path, **hub)
    unknown = sorted(key for key in (config_overrides or {}) if not hasattr(config, key))
    if unknown:
        raise ValueError(f"config_overrides {unknown} are not attributes of {type(config).__name__}.")
    config.update(config_overrides or {})
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
    auto_class = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto_class.from_pretrained(name_or_path, config=config, **hub)
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


def load_adapter_model_and_tokenizer(
    path: str | Path,
    extra_tokens: Sequence[str] = (),
    config_overrides: dict | None = None,
    merge: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads an adapter directory written by a trainer: its base model, the saved tokenizer, and the adapter.

    The base model (:func:`resolve_adapter_base`) is loaded as :func:`load_model_and_tokenizer` loads any
    checkpoint, its embeddings are resized to the saved tokenizer (which holds the tokens added for training), and the
    adapter is loaded on top with `PeftModel.from_pretrained`.

    Args:
        path: The adapter directory (adapter_config.json, adapter_model.safetensors, the tokenizer files).
        extra_tokens: Tokens that must be single tokens (added to the tokenizer where missing).
        config_overrides: Base config attributes to change (see `load_model_and_tokenizer`).
        merge: Merge the adapter into the base weights (`merge_and_unload`) and return a plain model.

    Returns:
        `(model, tokenizer)`: a `PeftModel` in eval mode, or the merged model.
    """
    from peft import PeftModel

    path = Path(path)
    base_name, revision = resolve_adapter_base_revision(path)
    base, _ = load_model_and_tokenizer(base_name, config_overrides=config_overrides, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    missing = [token for token in extra_tokens if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    if len(tokenizer) != base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(base, str(path))
    model.eval()
    if merge:
        model = model.merge_and_unload()
    return model, tokenizer
