"""The backspace action: the token, the one-pass layout, noise and decoding (docs/sequencematch.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, NO_DROPOUT

from hf_seqobj.backspace import (
    BackspaceDataCollator,
    BackspaceDecoder,
    add_backspace_token,
    apply_backspaces,
    backspace_forward,
    build_backspace_batch,
    build_backspace_inputs,
    generate_with_backspace,
    insert_backspace_noise,
    noise_candidates,
)
from hf_seqobj.modeling import load_model_and_tokenizer


@pytest.fixture(scope="module")
def bksp_models(tiny_checkpoints):
    """Per architecture: (model in eval mode without dropout, tokenizer, bksp id)."""
    models = {}
    for arch in ARCHITECTURES:
        model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch], config_overrides=NO_DROPOUT[arch])
        bksp = add_backspace_token(model, tokenizer)
        models[arch] = (model.eval(), tokenizer, bksp)
    return models


def test_layout_example_from_the_specification():
    a, b, c, d, bk = 11, 12, 13, 14, 99
    layout = build_backspace_inputs([a, b, c, bk, d], bk, prefix_length=1)
    assert layout.input_ids.tolist() == [a, b, c, b, d]
    assert layout.position_ids.tolist() == [0, 1, 2, 1, 2]
    assert layout.attend[3].nonzero().flatten().tolist() == [0, 3]
    assert layout.attend[4].nonzero().flatten().tolist() == [0, 3, 4]
    assert layout.final_ids == [a, b, d]


def test_backspace_on_an_empty_output_leaves_the_state_and_the_prefix_is_protected():
    bk = 99
    layout = build_backspace_inputs([5, 6, bk, bk, 7], bk, prefix_length=2)
    assert layout.input_ids.tolist() == [5, 6, 6, 6, 7]
    assert layout.position_ids.tolist() == [0, 1, 1, 1, 2]
    assert layout.attend[3].nonzero().flatten().tolist() == [0, 3]
    assert layout.final_ids == [5, 6, 7]
    assert apply_backspaces([5, 6, bk, bk, 7], bk, prefix_length=2) == [5, 6, 7]
    with pytest.raises(ValueError, match="protected prefix"):
        build_backspace_inputs([bk, 5], bk, prefix_length=1)
    with pytest.raises(ValueError, match="prefix_length"):
        build_backspace_inputs([5], bk, prefix_length=2)


def test_add_backspace_token_survives_save_and_load(bksp_models, tiny_checkpoints, tmp_path):
    for arch in ARCHITECTURES:
        model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch])
        rows = model.get_input_embeddings().weight.shape[0]
        bksp = add_backspace_token(model, tokenizer)
        assert add_backspace_token(model, tokenizer) == bksp  # idempotent
        weight = model.get_input_embeddings().weight
        assert weight.shape[0] == rows + 1 == len(tokenizer)
        torch.testing.assert_close(weight[bksp], weight[:rows].mean(0))
        assert model.config.bksp_token_id == bksp
        model.save_pretrained(tmp_path / arch)
        tokenizer.save_pretrained(tmp_path / arch)
        loaded, loaded_tokenizer = load_model_and_tokenizer(tmp_path / arch)
        assert loaded.config.bksp_token_id == bksp
        assert loaded_tokenizer.convert_tokens_to_ids("<bksp>") == bksp
        assert loaded_tokenizer.decode([bksp], skip_special_tokens=True) == ""
        torch.testing.assert_close(loaded.get_input_embeddings().weight[bksp], weight[bksp])


def _random_actions(generator, candidates, bksp, length, first_bksp):
    actions = [bksp] if first_bksp else []
    while len(actions) < length:
        draw = float(torch.rand(1, generator=generator))
        if draw < 0.25:
            actions += [bksp] * int(torch.randint(1, 4, (1,), generator=generator))
        else:
            actions.append(int(candidates[torch.randint(0, candidates.numel(), (1,), generator=generator)]))
    return actions[:length]


def _separate_logits(model, encoder_decoder, source, sequence):
    """Last-position logits of running one effective sequence on its own."""
    ids = torch.tensor([sequence])
    with torch.no_grad():
        if encoder_decoder:
            return model(input_ids=torch.tensor([source]), decoder_input_ids=ids).logits[0, -1]
        return model(input_ids=ids).logits[0, -1]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_pass_logits_equal_every_state_run_separately(bksp_models, arch):
    model, tokenizer, bksp = bksp_models[arch]
    encoder_decoder = model.config.is_encoder_decoder
    generator = torch.Generator().manual_seed(0)
    candidates = noise_candidates(tokenizer, bksp)
    rows = 4
    lengths = [14, 9, 17, 3]
    actions = [_random_actions(generator, candidates, bksp, lengths[r], first_bksp=r % 2 == 0) for r in range(rows)]
    sources = [
        [int(x) for x in candidates[torch.randint(0, len(candidates), (4 + r,), generator=generator)]]
        for r in range(rows)
    ]
    if encoder_decoder:
        prefixes = [[getattr(model.config, "decoder_start_token_id", None)] for _ in range(rows)]
    else:
        prefixes = [source + [tokenizer.sep_token_id] for source in sources]
    batch = build_backspace_batch(prefixes, actions, bksp, tokenizer.pad_token_id)
    encoder_inputs = None
    if encoder_decoder:
        longest = max(len(s) for s in sources)
        encoder_inputs = {
            "input_ids": torch.tensor([s + [tokenizer.pad_token_id] * (longest - len(s)) for s in sources]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sources]),
        }
    with torch.no_grad():
        logits = backspace_forward(model, batch, encoder_inputs).logits
    width = int(batch["prefix_width"])
    checked = 0
    for r in range(rows):
        sequence = prefixes[r] + actions[r]
        for step in range(len(actions[r]) + 1):  # the state before action `step` (and after the last one)
            state = apply_backspaces(sequence[: len(prefixes[r]) + step], bksp, prefix_length=len(prefixes[r]))
            expected = _separate_logits(model, encoder_decoder, sources[r], state)
            torch.testing.assert_close(logits[r, width - 1 + step], expected, atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked == sum(lengths) + rows
    assert sum(a == bksp for row in actions for a in row) >= 8


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_incremental_decoder_equals_every_state_run_separately(bksp_models, arch):
    model, tokenizer, bksp = bksp_models[arch]
    encoder_decoder = model.config.is_encoder_decoder
    generator = torch.Generator().manual_seed(1)
    candidates = noise_candidates(tokenizer, bksp)
    rows, steps = 3, 12
    actions = [_random_actions(generator, candidates, bksp, steps, first_bksp=r == 0) for r in range(rows)]
    sources = [
        [int(x) for x in candidates[torch.randint(0, len(candidates), (3 + 2 * r,), generator=generator)]]
        for r in range(rows)
    ]
    pad = tokenizer.pad_token_id
    if encoder_decoder:
        longest = max(len(s) for s in sources)
        input_ids = torch.tensor([s + [pad] * (longest - len(s)) for s in sources])
        mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sources])
        prefixes = [[getattr(model.config, "decoder_start_token_id", None)]] * rows
    else:
        prompts = [s + [tokenizer.sep_token_id] for s in sources]
        longest = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        prefixes = prompts
    with torch.no_grad():
        decoder = BackspaceDecoder(
            model, input_ids, mask, bksp, pad, getattr(model.config, "decoder_start_token_id", None)
        )
        step_logits = [decoder.logits]
        for t in range(steps):
            step_logits.append(decoder.step(torch.tensor([row[t] for row in actions])))
    for r in range(rows):
        for t in range(steps + 1):
            state = apply_backspaces(prefixes[r] + actions[r][:t], bksp, prefix_length=len(prefixes[r]))
            expected = _separate_logits(model, encoder_decoder, sources[r], state)
            torch.testing.assert_close(step_logits[t][r], expected, atol=1e-4, rtol=1e-4)
        assert decoder.final_ids(r) == apply_backspaces(prefixes[r] + actions[r], bksp, len(prefixes[r]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generation_without_backspaces_equals_generate(bksp_models, arch):
    """With <bksp> never chosen, decoding equals transformers' greedy generate (same cache, masks, positions)."""
    model, tokenizer, bksp = bksp_models[arch]
    with torch.no_grad():  # make <bksp> the least likely token so greedy decoding never takes it
        output = model.get_output_embeddings()
        saved = output.weight[bksp].clone()
        output.weight[bksp] = -10.0
    try:
        pad = tokenizer.pad_token_id
        sources = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
        if model.config.is_encoder_decoder:
            longest = max(len(s) for s in sources)
            input_ids = torch.tensor([s + [pad] * (longest - len(s)) for s in sources])
            mask = (input_ids != pad).long()
        else:
            prompts = [s + [tokenizer.sep_token_id] for s in sources]
            longest = max(len(p) for p in prompts)
            input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=8,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
            bos_token_id=model.config.bos_token_id,
        )
        ours = generate_with_backspace(model, input_ids, mask, config, return_actions=True)
        with torch.no_grad():
            reference = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        assert int(ours.num_backspaces.sum()) == 0
        width = ours.sequences.shape[1]
        assert ours.sequences.tolist() == reference[:, :width].tolist()
        assert bool((reference[:, width:] == pad).all())
    finally:
        with torch.no_grad():
            output.weight[bksp] = saved


def test_generation_applies_backspaces(bksp_models):
    model, tokenizer, bksp = bksp_models["gpt2"]
    input_ids = torch.tensor([[5, 6, tokenizer.sep_token_id]])
    result = generate_with_backspace(
        model,
        input_ids,
        None,
        max_new_tokens=12,
        do_sample=True,
        temperature=3.0,
        return_actions=True,
        generator=torch.Generator().manual_seed(0),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    actions = result.actions[0, : int(result.num_actions[0])].tolist()
    final = apply_backspaces(actions, bksp)
    assert result.sequences[0, 3 : 3 + len(final)].tolist() == final
    with pytest.raises(ValueError, match="num_beams"):
        generate_with_backspace(model, input_ids, None, max_new_tokens=3, num_beams=2)


def test_backspace_noise_statistics_and_labels():
    generator = torch.Generator().manual_seed(0)
    candidates = torch.arange(10, 40)
    bk = 99
    inserted = positions = 0
    for _ in range(400):
        targets = torch.randint(10, 40, (20,), generator=generator).tolist() + [2]
        actions, labels = insert_backspace_noise(targets, 0.3, bk, candidates, generator)
        assert apply_backspaces(actions, bk) == targets
        for i, action in enumerate(actions):
            if i + 1 < len(actions) and actions[i + 1] == bk:
                assert labels[i] == -100 and labels[i + 1] == bk
                assert action != actions[i + 2]  # the wrong token differs from the gold one after it
        inserted += actions.count(bk)
        positions += len(targets)
    assert abs(inserted / positions - 0.3) < 0.02
    assert insert_backspace_noise([5, 6, 2], 0.0, bk, candidates)[0] == [5, 6, 2]
    with pytest.raises(ValueError, match="probability"):
        insert_backspace_noise([5], 1.5, bk, candidates)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_collator_batches_give_mle_with_noise(bksp_models, ner_task, arch):
    model, tokenizer, bksp = bksp_models[arch]
    task, splits = ner_task
    encoder_decoder = model.config.is_encoder_decoder
    tokenized = task.tokenize(splits, tokenizer, decoder_only=not encoder_decoder)["train"]
    features = [tokenized[i] for i in range(4)]
    collator = BackspaceDataCollator(
        tokenizer, bksp, encoder_decoder, getattr(model.config, "decoder_start_token_id", None), noise_prob=0.0
    )
    batch = collator(features)
    encoder_inputs = None
    if encoder_decoder:
        encoder_inputs = {"input_ids": batch["encoder_input_ids"], "attention_mask": batch["encoder_attention_mask"]}
    with torch.no_grad():
        logits = backspace_forward(model, batch, encoder_inputs).logits
        # without noise the layout is the plain example, so the loss is the model's own teacher-forced loss
        from transformers import DataCollatorForSeq2Seq

        plain = DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None)(features)
        expected = model(**plain).loss
    from hf_seqobj.objectives.mle import MLEObjective

    loss = MLEObjective.token_nll(logits, batch["labels"], shift=not encoder_decoder)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    noisy = BackspaceDataCollator(
        tokenizer, bksp, encoder_decoder, getattr(model.config, "decoder_start_token_id", None), 0.5
    )(features)
    assert int((noisy["step_labels"] == bksp).sum()) > 0
    assert int((noisy["labels"] == -100).sum()) > int((batch["labels"] == -100).sum())


def test_no_backspace_on_an_empty_output(bksp_models):
    """<bksp> is masked while nothing is generated, even for a model that prefers it everywhere."""
    model, tokenizer, bksp = bksp_models["bart"]
    output = model.get_output_embeddings()
    with torch.no_grad():
        saved = output.weight[bksp].clone()
        output.weight[bksp] = output.weight.mean(0) * 0 + 1.0
        model.final_logits_bias[0, bksp] += 1e4  # <bksp> wins whenever it is allowed
    try:
        input_ids = torch.tensor([[5, 6, 7], [8, 9, 1]])
        result = generate_with_backspace(
            model,
            input_ids,
            (input_ids != 1).long(),
            max_new_tokens=9,
            return_actions=True,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=len(tokenizer) + 5,  # no EOS: 9 actions
            decoder_start_token_id=model.config.decoder_start_token_id,
        )
    finally:
        with torch.no_grad():
            output.weight[bksp] = saved
            model.final_logits_bias[0, bksp] -= 1e4
    for row in result.actions.tolist():
        depth = 0
        for action in row:
            assert action != bksp or depth > 0, row
            depth = depth - 1 if action == bksp else depth + 1
        assert row[1::2] == [bksp] * len(row[1::2])  # token, <bksp>, token, <bksp>, ...
    assert bool((result.num_backspaces == 4).all())


def test_first_eos_lengths_of_an_empty_generation():
    from hf_seqobj.decoding.rollin import first_eos_lengths

    assert first_eos_lengths(torch.zeros((3, 0), dtype=torch.long), 2).tolist() == [0, 0, 0]


def _path_doubling_ancestors(parents: torch.Tensor) -> torch.Tensor:
    """The ancestor closure by dense path doubling (the earlier implementation), as a reference."""
    batch, length = parents.shape
    step = torch.zeros((batch, length, length + 1))
    step.scatter_(2, torch.where(parents < 0, length, parents)[..., None], 1.0)
    reach = step[..., :length] + torch.eye(length)
    for _ in range(max(1, (length - 1).bit_length())):
        reach = torch.clamp(reach @ reach, max=1.0)
    return reach > 0


def test_batched_layout_equals_the_walk_of_every_row():
    """layout_batch walks all rows at once over columns; each row must be its own stack walk."""
    import random

    from hf_seqobj.backspace.layout import _walk

    rng = random.Random(0)
    bk = 99
    for _ in range(60):
        rows = rng.randint(1, 5)
        prefixes = [[rng.randint(10, 20) for _ in range(rng.randint(1, 4))] for _ in range(rows)]
        actions = [[rng.choice([bk, bk, rng.randint(10, 20)]) for _ in range(rng.randint(0, 9))] for _ in range(rows)]
        layout = build_backspace_batch(prefixes, actions, bk, 0)
        width, steps = int(layout["prefix_width"]), layout["step_labels"].shape[1]
        parents = torch.full((rows, width + steps), -1)
        inputs = torch.zeros((rows, width + steps), dtype=torch.long)
        for row in range(rows):
            sequence = prefixes[row] + actions[row]
            row_inputs, row_parents, _ = _walk(sequence, bk, len(prefixes[row]))
            start = width - len(prefixes[row])
            inputs[row, start : start + len(sequence)] = torch.tensor(row_inputs)
            parents[row, start : start + len(sequence)] = torch.tensor(
                [p + start if p >= 0 else -1 for p in row_parents]
            )
        assert torch.equal(layout["input_ids"], inputs)
        assert torch.equal(layout["attend"], _path_doubling_ancestors(parents))
        assert torch.equal(layout["position_ids"], layout["attend"].sum(-1) - 1)


def test_batched_noise_draws_and_places_what_the_per_row_noise_does():
    import random

    from hf_seqobj.backspace import insert_backspace_noise_batch

    rng = random.Random(1)
    candidates = torch.arange(10, 40)
    for trial in range(40):
        rows = [[rng.randint(10, 40) for _ in range(rng.randint(0, 8))] for _ in range(rng.randint(1, 6))]
        targets = torch.full((len(rows), max([len(r) for r in rows] + [1])), -100)
        for index, row in enumerate(rows):
            targets[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths = torch.tensor([len(row) for row in rows])
        seeds = [trial * 100 + index for index in range(len(rows))]
        actions, labels, counts = insert_backspace_noise_batch(
            targets, lengths, 0.4, 99, candidates, [torch.Generator().manual_seed(seed) for seed in seeds]
        )
        for index, row in enumerate(rows):
            expected = insert_backspace_noise(row, 0.4, 99, candidates, torch.Generator().manual_seed(seeds[index]))
            n = int(counts[index])
            assert (actions[index, :n].tolist(), labels[index, :n].tolist()) == expected
            assert (labels[index, n:] == -100).all()


def test_ancestors_reject_a_parent_after_its_child():
    from hf_seqobj.backspace.layout import _ancestors

    with pytest.raises(ValueError, match="parent"):
        _ancestors(torch.tensor([[-1, 2, 0]]))


def test_batched_apply_backspaces():
    import random

    from hf_seqobj.backspace.layout import apply_backspaces_batch

    rng = random.Random(2)
    rows = [[rng.choice([99, 5, 6, 7]) for _ in range(rng.randint(0, 8))] for _ in range(30)]
    actions = torch.zeros((30, 8), dtype=torch.long)
    for index, row in enumerate(rows):
        actions[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    final, lengths = apply_backspaces_batch(actions, torch.tensor([len(r) for r in rows]), 99, pad_token_id=0)
    for index, row in enumerate(rows):
        assert final[index, : lengths[index]].tolist() == apply_backspaces(row, 99)


def test_backspace_noise_draws_every_candidate_but_gold():
    """The wrong token is uniform over the candidates other than gold; with a gold token that is no candidate (EOS),
    over all of them, the last one included."""
    candidates = torch.tensor([10, 11, 12, 13])
    generator = torch.Generator().manual_seed(0)
    counts: dict[int, dict[int, int]] = {12: {}, 13: {}, 2: {}}
    for _ in range(300):
        for gold in counts:
            actions, _ = insert_backspace_noise([gold], 1.0, 99, candidates, generator)
            counts[gold][actions[0]] = counts[gold].get(actions[0], 0) + 1
    assert sorted(counts[12]) == [10, 11, 13] and sorted(counts[13]) == [10, 11, 12]
    assert sorted(counts[2]) == [10, 11, 12, 13]  # EOS: the last candidate is drawn too
    for drawn in counts.values():  # about uniform: 300 draws over 3 or 4 tokens
        assert min(drawn.values()) > 300 / len(drawn) * 0.6
    with pytest.raises(ValueError, match="sorted"):
        insert_backspace_noise([5], 0.5, 99, torch.tensor([12, 10, 11]))


def _loop_prone(model, bksp):
    """Makes the BART model prefer <bksp> whenever it may delete a token; returns the undo function."""
    output = model.get_output_embeddings()
    with torch.no_grad():
        saved = output.weight[bksp].clone()
        output.weight[bksp] = output.weight.mean(0) * 0 + 1.0
        model.final_logits_bias[0, bksp] += 1e4

    def undo():
        with torch.no_grad():
            output.weight[bksp] = saved
            model.final_logits_bias[0, bksp] -= 1e4

    return undo


@pytest.mark.parametrize("guard", [False, True])
def test_cycle_guard_and_two_cycle_detection(bksp_models, guard):
    """Greedy decoding returns to the state before a deleted token and picks it again: a token / <bksp> 2-cycle.
    The guard masks, in a state, every token deleted from it; both ways the rows are flagged as 2-cycles."""
    model, tokenizer, bksp = bksp_models["bart"]
    input_ids = torch.tensor([[5, 6, 7], [8, 9, 1]])
    settings = dict(
        max_new_tokens=9,
        return_actions=True,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=len(tokenizer) + 5,  # no EOS: 9 actions
        decoder_start_token_id=model.config.decoder_start_token_id,
    )
    plain = generate_with_backspace(model, input_ids, (input_ids != 1).long(), cycle_guard=guard, **settings)
    assert not bool(plain.two_cycles.any())  # the model does not backspace
    undo = _loop_prone(model, bksp)
    try:
        result = generate_with_backspace(model, input_ids, (input_ids != 1).long(), cycle_guard=guard, **settings)
    finally:
        undo()
    assert bool(result.two_cycles.all())
    for row in result.actions.tolist():
        tokens = row[0::2]
        assert row[1::2] == [bksp] * len(row[1::2])
        if guard:  # never a token deleted from this state before
            assert len(set(tokens)) == len(tokens), row
        else:  # the same token again and again
            assert len(set(tokens)) == 1, row


def test_cycle_bookkeeping_bans_per_state():
    """The guard's bans belong to a state: a token deleted from it is masked there (also after going deeper and
    coming back) and the bans of a state are dropped when a token enters a state of that depth anew."""
    from hf_seqobj.backspace.decoding import _CycleBookkeeping

    bk, vocab = 9, 10
    cycles = _CycleBookkeeping(1, 12, bk, guard=True)
    done = torch.zeros(1, dtype=torch.bool)

    def masked(top: int = 0) -> set[int]:
        logits = torch.zeros(1, vocab)
        logits[0, top] = 1.0
        cycles.before(logits, done)
        return set(torch.isinf(logits[0]).nonzero().flatten().tolist())

    script = [  # (action, tokens masked before it)
        (5, set()),
        (bk, set()),  # deletes 5 from the empty state
        (6, {5}),
        (7, set()),  # a new state at depth 1: nothing banned there
        (bk, set()),  # deletes 7 from state [6]
        (bk, {7}),  # deletes 6 from the empty state: 5 and 6 banned there
        (8, {5, 6}),
        (7, set()),  # [8] is a new state at depth 1: 7 is no longer banned
    ]
    for action, expected in script:
        assert masked() == expected, (action, expected)
        cycles.after(torch.tensor([action]), done)
    assert not bool(cycles.two_cycles[0])
    cycles.after(torch.tensor([bk]), done)  # deletes 7 from [8]
    assert masked(top=7) == {7} and bool(cycles.two_cycles[0])  # the deleted token was the top-scoring action
    unguarded = _CycleBookkeeping(1, 4, bk, guard=False)
    for action in (5, bk, 5):
        unguarded.after(torch.tensor([action]), done)
    assert bool(unguarded.two_cycles[0])  # re-emitted right after its deletion
