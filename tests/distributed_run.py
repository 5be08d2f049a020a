"""Trains a tiny BART for 3 steps and saves each rank's parameters: run by tests/test_distributed.py, on one process
or under `accelerate launch` with several.

    python tests/distributed_run.py CHECKPOINT OUTPUT_DIR OBJECTIVE PER_DEVICE_BATCH [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_seqobj.arguments import DataArguments  # noqa: E402
from hf_seqobj.modeling import load_model_and_tokenizer  # noqa: E402
from hf_seqobj.run import build_trainer  # noqa: E402
from hf_seqobj.tasks import get_task  # noqa: E402
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments  # noqa: E402


def main() -> None:
    checkpoint, output_dir, objective, batch = sys.argv[1:5]
    extra = dict(item.split("=", 1) for item in sys.argv[5:])
    extra = {key: json.loads(value) for key, value in extra.items()}
    torch.set_num_threads(1)
    task = get_task(DataArguments(task="ner", dataset_name="synthetic", synthetic_train_size=120))
    splits = task.load()
    no_dropout = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
    model, tokenizer = load_model_and_tokenizer(checkpoint, task.extra_tokens(splits), config_overrides=no_dropout)
    tokenized = task.tokenize(splits, tokenizer, decoder_only=False)
    args = SeqObjSeq2SeqTrainingArguments(
        output_dir=output_dir,
        objective=objective,
        max_steps=3,
        per_device_train_batch_size=int(batch),
        learning_rate=1e-3,
        seed=3,
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **extra,
    )
    trainer = build_trainer(model, tokenizer, task, tokenized, args)
    trainer.train()
    rank = trainer.args.process_index
    torch.save({name: p.detach() for name, p in model.named_parameters()}, f"{output_dir}/params_rank{rank}.pt")
    if trainer.is_world_process_zero():
        with open(f"{output_dir}/log_history.json", "w") as handle:
            json.dump(trainer.state.log_history, handle)


if __name__ == "__main__":
    main()
