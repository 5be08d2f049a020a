"""The offline model factory and checkpoint loading (local paths go through from_pretrained like Hub names)."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hf_seqobj.arguments import ModelArguments
from hf_seqobj.modeling import (
    MODEL_SIZES,
    build_model,
    create_offline_model,
    describe_model,
    is_encoder_decoder,
    load_model_and_tokenizer,
    train_tokenizer,
)


TEXTS = ["EU rejects German call to boycott British lamb .", "Peter Blackburn went to Paris ."] * 3
TAGS = ["B-PER", "I-PER", "B-LOC", "O"]


@pytest.mark.parametrize("tokenizer_type", ["wordlevel", "bpe"])
def test_trained_tokenizer_keeps_tags_single_and_round_trips(tokenizer_type, tmp_path):
    tokenizer = train_tokenizer(TEXTS, tokenizer_type, vocab_size=400, extra_tokens=TAGS)
    vocab = tokenizer.get_vocab()
    for tag in TAGS:  # targets are encoded tag by tag through the vocabulary (NERTask.encode_target)
        assert tag in vocab and tokenizer.convert_ids_to_tokens(vocab[tag]) == tag
    assert tokenizer.sep_token == "<sep>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("Peter went to Paris .", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).strip() == "Peter went to Paris ."
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("Peter went to Paris .", add_special_tokens=False)["input_ids"] == ids
    assert reloaded.convert_tokens_to_ids("B-PER") == tokenizer.convert_tokens_to_ids("B-PER")


@pytest.mark.parametrize("arch, encoder_decoder", [("gpt2", False), ("bart", True), ("t5", True)])
def test_create_offline_model_loads_through_from_pretrained(arch, encoder_decoder, tmp_path):
    path = create_offline_model(arch, TEXTS, tmp_path / arch, extra_tokens=TAGS)
    assert is_encoder_decoder(path) is encoder_decoder
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    plain = auto.from_pretrained(path)
    model, tokenizer = load_model_and_tokenizer(path, extra_tokens=TAGS + ["B-NEW"])
    assert model.config.model_type == arch
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == plain.config.vocab_size + 1
    assert tokenizer.convert_tokens_to_ids("B-NEW") == len(tokenizer) - 1
    assert model.config.d_model if encoder_decoder else model.config.n_embd == MODEL_SIZES["tiny"][0]


def test_load_completes_a_tokenizer_without_pad_and_sep(tmp_path):
    tokenizer = train_tokenizer(TEXTS, sep_token=False)
    model = build_model("gpt2", tokenizer)
    tokenizer.pad_token = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    assert tokenizer.pad_token == tokenizer.eos_token, "GPT-2 convention: pad with EOS when there is no pad token"
    assert tokenizer.sep_token == "<sep>"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_describe_model_matches_the_built_model():
    tokenizer = train_tokenizer(TEXTS, "wordlevel", vocab_size=400, extra_tokens=TAGS)
    bart = build_model("bart", tokenizer, "tiny")
    assert describe_model("bart", "tiny") == (
        f"bart tiny (d_model {bart.config.d_model}, {bart.config.encoder_layers} encoder + "
        f"{bart.config.decoder_layers} decoder layers)"
    )
    gpt2 = build_model("gpt2", tokenizer, "small")
    expected = f"gpt2 small (d_model {gpt2.config.n_embd}, {gpt2.config.n_layer} layers)"
    assert describe_model("gpt2", "small") == expected
    with pytest.raises(ValueError, match="'huge'"):
        describe_model("gpt2", "huge")


def test_bad_architecture_size_and_model_arguments():
    tokenizer = train_tokenizer(TEXTS)
    with pytest.raises(ValueError, match=r"architecture must be one of \('gpt2', 'bart', 't5'\), got 'llama'"):
        build_model("llama", tokenizer)
    with pytest.raises(ValueError, match="size must be one of .* got 'huge'"):
        build_model("gpt2", tokenizer, size="huge")
    with pytest.raises(ValueError, match="tokenizer_type must be one of"):
        train_tokenizer(TEXTS, "sentencepiece")
    with pytest.raises(ValueError, match="Set model_name_or_path"):
        ModelArguments()
    with pytest.raises(ValueError, match="Set only one of model_name_or_path"):
        ModelArguments(model_name_or_path="gpt2", architecture="gpt2")


def test_missing_checkpoint_fails_offline(tmp_path):
    with pytest.raises(OSError):
        load_model_and_tokenizer(tmp_path / "no_such_model")
