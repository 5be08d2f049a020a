"""The roll-in decoder (hf_seqobj.decoding.decoder): the tokens of `generate`, the same draws, the bookkeeping."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES
from transformers import GenerationConfig, LogitsProcessorList

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.decoder import OracleMixing, PreallocatedLayer, choose_next_tokens, decode
from hf_seqobj.modeling import load_model_and_tokenizer


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    """The tiny checkpoints in eval mode, with blank generation defaults (roll-ins never use a checkpoint's)."""
    loaded = {}
    for arch in ARCHITECTURES:
        model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch])
        model.eval()
        model.generation_config = GenerationConfig()
        loaded[arch] = (model, tokenizer)
    return loaded


def _inputs(arch: str, tokenizer, batch: int = 6, seed: int = 0):
    """Random prompts (decoder-only: left-padded) or sources (right-padded) of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (batch,), generator=generator)
    width = int(lengths.max())
    ids = torch.randint(5, 150, (batch, width), generator=generator)
    mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    if arch != "gpt2":
        mask = mask.flip(1)
    return ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask


def _generate(model, ids, mask, processors=None, **settings):
    config = GenerationConfig(
        num_beams=1,
        pad_token_id=settings.pop("pad_token_id"),
        eos_token_id=settings.pop("eos_token_id"),
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
        **settings,
    )
    out = model.generate(
        input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=processors or []
    )
    return out[:, ids.shape[1] :] if not model.config.is_encoder_decoder else out[:, 1:]


def _decode(model, ids, mask, **settings):
    start = getattr(model.config, "decoder_start_token_id", None)
    return decode(model, ids, mask, decoder_start_token_id=start, **settings).tokens


def _mid_eos(model, tokenizer, ids, mask) -> int:
    """A token the model produces a few steps in (so that some rows end early and others do not)."""
    free = _decode(model, ids, mask, max_new_tokens=6, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    return int(free[0, 3])


def _same_up_to(reference: torch.Tensor, ours: torch.Tensor) -> None:
    """`generate` stops when every row has; the decoder's buffer may be wider: the extra columns are padding."""
    assert ours.shape[1] >= reference.shape[1]
    assert torch.equal(ours[:, : reference.shape[1]], reference)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_tokens_equal_generate(models, arch):
    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    for seed in range(3):
        ids, mask = _inputs(arch, tokenizer, seed=seed)
        for eos in (tokenizer.eos_token_id, _mid_eos(model, tokenizer, ids, mask)):
            reference = _generate(
                model, ids, mask, max_new_tokens=12, do_sample=False, pad_token_id=pad, eos_token_id=eos
            )
            ours = _decode(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad)
            _same_up_to(reference, ours)
    # without padding (decoder-only: generate then drops the attention mask)
    ids, mask = _inputs(arch, tokenizer)
    ids, mask = ids[:, -2:], torch.ones_like(mask[:, -2:])
    reference = _generate(model, ids, mask, max_new_tokens=8, do_sample=False, pad_token_id=pad, eos_token_id=None)
    assert torch.equal(_decode(model, ids, mask, max_new_tokens=8, eos_token_id=None, pad_token_id=pad), reference)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_per_row_limits_give_generates_tokens_cut_at_each_limit(models, arch):
    """A row that reaches its limit leaves the forward batch; the others' tokens do not change."""
    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer, batch=8, seed=4)
    eos = _mid_eos(model, tokenizer, ids, mask)
    limits = torch.tensor([1, 12, 3, 7, 12, 2, 5, 9])
    reference = _generate(model, ids, mask, max_new_tokens=12, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    ours = _decode(model, ids, mask, max_new_tokens=limits, eos_token_id=eos, pad_token_id=pad)
    column = torch.arange(ours.shape[1])[None, :]
    expected = torch.nn.functional.pad(reference, (0, ours.shape[1] - reference.shape[1]), value=pad)
    expected = expected.masked_fill(column >= limits[:, None], pad)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("settings", [{"temperature": 1.0}, {"temperature": 0.7, "top_k": 20}, {"top_p": 0.8}])
def test_sampled_tokens_equal_generate_for_the_same_generator(models, arch, settings):
    """`generate` samples from the global generator; so does the decoder without an explicit one."""
    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer, seed=1)
    eos = _mid_eos(model, tokenizer, ids, mask)
    torch.manual_seed(11)
    reference = _generate(
        model,
        ids,
        mask,
        max_new_tokens=10,
        do_sample=True,
        pad_token_id=pad,
        eos_token_id=eos,
        **{"top_k": 0, **settings},
    )
    torch.manual_seed(11)
    ours = _decode(model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=pad, sample=True, **settings)
    _same_up_to(reference, ours)
    generator = torch.Generator().manual_seed(3)
    again = _decode(
        model,
        ids,
        mask,
        max_new_tokens=10,
        eos_token_id=eos,
        pad_token_id=pad,
        sample=True,
        generator=generator,
        **settings,
    )
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(
        again,
        _decode(
            model,
            ids,
            mask,
            max_new_tokens=10,
            eos_token_id=eos,
            pad_token_id=pad,
            sample=True,
            generator=generator,
            **settings,
        ),
    )


class _ReferenceMixing:
    """The mixing of the roll-ins before the decoder (a logits processor that forces the oracle's token)."""

    def __init__(self, oracle, references, width, beta, generator):
        self.oracle, self.references, self.width, self.beta, self.generator = (
            oracle,
            references,
            width,
            beta,
            generator,
        )

    def __call__(self, input_ids, scores):
        batch = input_ids.shape[0]
        mix = torch.rand(batch, generator=self.generator) < self.beta
        if not bool(mix.any()):
            return scores
        prefix = input_ids[:, self.width :]
        labels = self.oracle.next_token(prefix, torch.full((batch,), prefix.shape[1]), self.references)
        force = mix & (labels != IGNORE_INDEX)
        forced = torch.full_like(scores, float("-inf")).scatter_(1, labels.clamp(min=0)[:, None], 0.0)
        return torch.where(force[:, None], forced, scores)


class _CopyOracle:
    """Labels the next position with the reference token there (-100 past the reference or after `stop`)."""

    def __init__(self, stop):
        self.stop = stop

    def next_token(self, prefix, lengths, references):
        ended = (prefix == self.stop).any(1)
        at = lengths.clamp(max=references.shape[1] - 1)
        labels = references.gather(1, at[:, None])[:, 0]
        return torch.where(ended | (lengths >= references.shape[1]), IGNORE_INDEX, labels)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("sample", [False, True])
def test_oracle_mixing_equals_the_logits_processor_it_replaces(models, arch, sample):
    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer, seed=2)
    eos = _mid_eos(model, tokenizer, ids, mask)
    references = torch.randint(5, 150, (ids.shape[0], 9), generator=torch.Generator().manual_seed(5))
    oracle = _CopyOracle(eos)
    width = ids.shape[1] if arch == "gpt2" else 1
    processor = _ReferenceMixing(oracle, references, width, 0.5, torch.Generator().manual_seed(8))
    torch.manual_seed(2)
    reference = _generate(
        model,
        ids,
        mask,
        LogitsProcessorList([processor]),
        max_new_tokens=10,
        do_sample=sample,
        top_k=0 if sample else None,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    mixing = OracleMixing(oracle, references, 0.5, torch.Generator().manual_seed(8))
    torch.manual_seed(2)
    ours = _decode(
        model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=pad, sample=sample, mixing=mixing
    )
    _same_up_to(reference, ours)
    assert 0 < mixing.forced < mixing.steps


def test_mixing_draws_do_not_depend_on_how_the_global_batch_is_split():
    class Echo:
        def next_token(self, prefix, lengths, references):
            return references[:, 0]

    references = torch.arange(8)[:, None] + 10
    whole = OracleMixing(Echo(), references, 0.5, torch.Generator().manual_seed(0))
    halves = [
        OracleMixing(Echo(), references[i : i + 4], 0.5, torch.Generator().manual_seed(0), row_offset=i, global_rows=8)
        for i in (0, 4)
    ]
    for step in range(5):
        prefix = torch.zeros((8, step), dtype=torch.long)
        parts = [halves[0](prefix[:4]), halves[1](prefix[4:])]
        parts = [torch.full((4,), IGNORE_INDEX) if part is None else part for part in parts]
        full = whole(prefix)
        assert torch.equal(torch.cat(parts), torch.full((8,), IGNORE_INDEX) if full is None else full), step
    assert whole.forced == halves[0].forced + halves[1].forced > 0


def test_choose_next_tokens_forces_rows_and_keeps_the_random_stream():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    forced = torch.tensor([IGNORE_INDEX, 7, IGNORE_INDEX, 3])
    greedy = choose_next_tokens(logits, forced=forced)
    assert greedy.tolist() == [int(logits[0].argmax()), 7, int(logits[2].argmax()), 3]
    plain = choose_next_tokens(logits, sample=True, generator=torch.Generator().manual_seed(1))
    mixed = choose_next_tokens(logits, sample=True, generator=torch.Generator().manual_seed(1), forced=forced)
    assert torch.equal(mixed[[0, 2]], plain[[0, 2]]) and mixed[[1, 3]].tolist() == [7, 3]
    for _ in range(20):  # top-k keeps the k largest logits only
        token = choose_next_tokens(logits[:1], sample=True, top_k=2)
        assert int(token) in logits[0].topk(2).indices.tolist()


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_custom_choice_gets_the_prefix_and_the_raw_logits(models, arch):
    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer)
    seen = []

    def choose(prefix, logits):
        seen.append(prefix.clone())
        return logits.argsort(-1)[:, -2]  # the second most likely token

    ours = _decode(model, ids, mask, max_new_tokens=5, eos_token_id=None, pad_token_id=pad, choose=choose)
    assert [p.shape[1] for p in seen] == [0, 1, 2, 3, 4]
    assert torch.equal(seen[-1], ours[:, :4])
    second = _decode(model, ids[:1], mask[:1], max_new_tokens=1, eos_token_id=None, pad_token_id=pad, choose=choose)
    assert int(second[0, 0]) == int(ours[0, 0])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fixed_length_mode_gives_the_same_rollins_up_to_each_first_eos(models, arch):
    from hf_seqobj.decoding.rollin import first_eos_lengths

    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer, seed=3)
    eos = _mid_eos(model, tokenizer, ids, mask)
    limits = torch.tensor([4, 9, 9, 2, 6, 9])
    checked = _decode(model, ids, mask, max_new_tokens=limits, eos_token_id=eos, pad_token_id=pad)
    fixed = _decode(model, ids, mask, max_new_tokens=limits, eos_token_id=eos, pad_token_id=pad, fixed_length=True)
    assert fixed.shape == (6, 9)
    column = torch.arange(9)[None, :]
    assert (fixed[column >= limits[:, None]] == pad).all()
    lengths = torch.minimum(first_eos_lengths(fixed, eos), limits)
    cut = fixed.masked_fill(column >= lengths[:, None], pad)
    assert torch.equal(cut, checked)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_synced_gpus_keeps_stepping_until_every_rank_is_done(models, arch, monkeypatch):
    """A fake all-reduce stands for a second rank that needs 9 more loop iterations than this one."""
    import torch.distributed as dist

    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer)
    alone = decode(
        model,
        ids,
        mask,
        max_new_tokens=3,
        eos_token_id=None,
        pad_token_id=pad,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    )
    calls = {"flags": 0}

    def all_reduce(tensor, op=None):
        if tensor.dtype == torch.long:  # the step budget: the other rank allows 12 tokens
            tensor.fill_(max(int(tensor), 12))
        else:
            calls["flags"] += 1
            other_running = calls["flags"] <= 12
            tensor.add_(1.0 if other_running else 0.0)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        synced = decode(
            model,
            ids,
            mask,
            max_new_tokens=3,
            eos_token_id=None,
            pad_token_id=pad,
            synced_gpus=True,
            decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
        )
    finally:
        hook.remove()
    assert torch.equal(synced.tokens[:, :3], alone.tokens) and (synced.tokens[:, 3:] == pad).all()
    assert synced.steps == 12 and alone.steps == 3
    assert len(forwards) == 12  # the prefill and one forward pass per later iteration, as the other rank runs them
    assert calls["flags"] == 13


def test_peft_wrapped_models_decode_as_their_generate(models):
    """Today's roll-ins call `generate` on the PeftModel; the decoder runs the base model with the adapters inside."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = models["bart"]
    base = type(model).from_pretrained(model.name_or_path).eval()
    base.generation_config = GenerationConfig()
    wrapped = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
    ids, mask = _inputs("bart", tokenizer)
    pad = tokenizer.pad_token_id
    eos = _mid_eos(wrapped, tokenizer, ids, mask)
    reference = _generate(wrapped, ids, mask, max_new_tokens=8, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    ours = _decode(wrapped, ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad)
    _same_up_to(reference, ours)
    with wrapped.disable_adapter():
        without = _decode(wrapped, ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(without, _decode(model, ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad))


def test_unwrap_model_looks_through_every_wrapper_and_refuses_prompt_learning_for_rollins(models):
    """The package's one unwrap: compiled, distributed (`.module`) and PEFT wrappers in any order; a prompt-learning
    adapter (whose virtual tokens only the PeftModel's own forward adds) is refused where the decoder asks."""
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    from hf_seqobj.decoding.models import accepts_logits_to_keep, unwrap_model
    from hf_seqobj.objectives.base import language_model_kind

    class Distributed(torch.nn.Module):  # what DDP, DeepSpeed's engine and FSDP have in common
        def __init__(self, module):
            super().__init__()
            self.module = module

    model, tokenizer = models["gpt2"]
    base = type(model).from_pretrained(model.name_or_path).eval()
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], task_type=TaskType.CAUSAL_LM))
    wrapped = torch.compile(Distributed(lora), backend="eager")
    assert unwrap_model(wrapped) is base and unwrap_model(wrapped, refuse_prompt_learning=True) is base
    assert unwrap_model(torch.compile(model, backend="eager")) is model
    assert language_model_kind(torch.compile(model, backend="eager")) == "causal"
    assert accepts_logits_to_keep(unwrap_model(wrapped)) == accepts_logits_to_keep(model)

    plain = type(model).from_pretrained(model.name_or_path).eval()
    prompt = get_peft_model(plain, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2))
    assert unwrap_model(prompt) is plain
    with pytest.raises(ValueError, match="prompt-learning adapter"):
        unwrap_model(Distributed(prompt), refuse_prompt_learning=True)
    ids, mask = _inputs("gpt2", tokenizer)
    with pytest.raises(ValueError, match="prompt-learning adapter"):
        _decode(prompt, ids, mask, max_new_tokens=2, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_static_cache_gives_the_same_tokens(models, arch):
    model, tokenizer = models[arch]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs(arch, tokenizer, seed=5)
    eos = _mid_eos(model, tokenizer, ids, mask)
    dynamic = _decode(model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=pad)
    static = _decode(model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=pad, static_cache=True)
    assert torch.equal(static, dynamic)


def test_compiled_decode_step_runs_on_cpu(models):
    from transformers.generation.configuration_utils import CompileConfig

    model, tokenizer = models["gpt2"]
    pad = tokenizer.pad_token_id
    ids, mask = _inputs("gpt2", tokenizer)
    plain = _decode(model, ids, mask, max_new_tokens=4, eos_token_id=None, pad_token_id=pad)
    compiled = _decode(
        model,
        ids,
        mask,
        max_new_tokens=4,
        eos_token_id=None,
        pad_token_id=pad,
        static_cache=True,
        compile=CompileConfig(backend="eager", fullgraph=False),
    )
    assert torch.equal(compiled, plain)
    with pytest.raises(ValueError, match="static_cache"):
        _decode(model, ids, mask, max_new_tokens=4, eos_token_id=None, pad_token_id=pad, compile=True)


def test_preallocated_layer_writes_in_place_and_grows():
    layer = PreallocatedLayer(capacity=3)
    keys = torch.randn(2, 1, 2, 4)
    layer.update(keys, keys + 1)
    buffer = layer._key_buffer
    more = torch.randn(2, 1, 1, 4)
    out_keys, out_values = layer.update(more, more + 1)
    assert layer._key_buffer is buffer and layer.get_seq_length() == 3
    assert torch.equal(out_keys, torch.cat([keys, more], 2)) and torch.equal(
        out_values, torch.cat([keys, more], 2) + 1
    )
    out_keys, _ = layer.update(more * 2, more)  # past the capacity: grows
    assert layer.get_seq_length() == 4 and torch.equal(out_keys, torch.cat([keys, more, more * 2], 2))
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, torch.cat([keys, more, more * 2], 2)[1:])


def test_bad_arguments_are_named(models):
    model, tokenizer = models["bart"]
    ids, mask = _inputs("bart", tokenizer)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(
            model,
            ids,
            mask,
            max_new_tokens=torch.tensor([1, 2]),
            eos_token_id=None,
            pad_token_id=0,
            decoder_start_token_id=2,
        )
    with pytest.raises(ValueError, match="temperature"):
        decode(
            model,
            ids,
            mask,
            max_new_tokens=2,
            eos_token_id=None,
            pad_token_id=0,
            decoder_start_token_id=2,
            temperature=0.0,
        )
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        decode(model, ids, mask, max_new_tokens=2, eos_token_id=None, pad_token_id=0)
