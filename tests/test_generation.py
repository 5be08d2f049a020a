"""Prompts of decoder-only examples and evaluation with generation for both model families."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from hf_seqobj.decoding.prompts import gather_targets, split_prompts
from hf_seqobj.modeling import load_model_and_tokenizer
from hf_seqobj.run import build_trainer
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments, SeqObjTrainingArguments


def test_split_prompts_left_pads_and_gather_targets_left_aligns():
    input_ids = torch.tensor([[5, 6, 9, 7, 2, 0], [5, 9, 7, 8, 2, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 2, -100], [-100, -100, 7, 8, 2, -100]])
    prompts, mask = split_prompts(input_ids, labels, pad_token_id=0)
    assert prompts.tolist() == [[5, 6, 9], [0, 5, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert gather_targets(labels).tolist() == [[7, 2, -100], [7, 8, 2]]
    with pytest.raises(ValueError, match=r"Rows \[1\] of the batch have no target label"):
        split_prompts(input_ids, torch.full_like(labels, -100).index_fill(0, torch.tensor([0]), 3), 0)


@pytest.mark.parametrize("arch", ["gpt2", "bart", "t5"])
def test_evaluation_with_generation(arch, tiny_checkpoints, ner_task, tmp_path):
    task, splits = ner_task
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(splits, tokenizer, decoder_only=arch == "gpt2")
    common = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        per_device_eval_batch_size=8,
        predict_with_generate=True,
        disable_tqdm=True,
    )
    if arch == "gpt2":
        args = SeqObjTrainingArguments(**common, generation_max_new_tokens=12)
    else:
        args = SeqObjSeq2SeqTrainingArguments(**common, generation_max_length=12)
    trainer = build_trainer(model, tokenizer, task, tokenized, args)
    assert isinstance(trainer.data_collator, DataCollatorForSeq2Seq)
    output = trainer.predict(tokenized["validation"])
    assert output.predictions.shape[0] == len(tokenized["validation"])
    for key in ("test_f1", "test_precision", "test_recall", "test_loss", "test_length_mismatch_rate"):
        assert key in output.metrics
    # Labels come back as the gold target tokens (tags then EOS), whatever the model family.
    first_target = task.encode_target(splits["validation"][0]["target"], tokenizer) + [tokenizer.eos_token_id]
    assert [t for t in output.label_ids[0].tolist() if t != -100][: len(first_target)] == first_target
    if arch == "gpt2":
        assert output.predictions.shape[1] <= 12
