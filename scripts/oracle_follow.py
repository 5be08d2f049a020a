"""What a text oracle teaches, measured with the reported metric: follow its labels from roll-in prefixes to EOS and
score the finished outputs as the task does (rouge-score with stemming / sacrebleu, on decoded text).

    python scripts/oracle_follow.py --tokenizer DIR --data FILE.jsonl [--rollins predictions.jsonl] \\
        [--task summarization] [--oracles rouge2,rougeL] [--stops ...] [--units ...] [--noise 0.3] [--limit N] \
        [--out FILE.json]

For each reference a prefix is cut from a roll-in at a uniformly drawn word position: from `--rollins` (a model's
outputs, one JSON line with "prediction" per reference, e.g. a run's predictions_validation.jsonl) or, without it,
from the reference with a share `--noise` of its words replaced by words of other references (drawn with a fixed
seed). From that prefix each oracle setting (every stop rule x units) is followed greedily (`next_token`) to EOS or
twice the reference's length; the outputs are decoded and scored by the task. Also scored: the prefixes as they
are (stopping at once). The JSON has per setting the task's metrics, the output / reference length ratio (words),
the share of outputs that repeat a bigram and the share that reached EOS.

This is a measurement of the oracles, not a test (it runs in a minute or two on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hf_seqobj.arguments import DataArguments  # noqa: E402
from hf_seqobj.oracles import STOP_RULES, UNIT_CHOICES, make_oracle  # noqa: E402
from hf_seqobj.tasks import get_task  # noqa: E402
from hf_seqobj.tasks.base import output_statistics, output_summary  # noqa: E402


def _noisy(rng: random.Random, words: list[str], pool: list[str], noise: float) -> list[str]:
    return [rng.choice(pool) if rng.random() < noise else w for w in words]


def follow(oracle, tokenizer, prefixes: list[list[int]], references: list[list[int]], batch: int = 64):
    """Greedy oracle continuations of each prefix until EOS or twice the reference's length (ids, EOS excluded) and
    whether each reached EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    outputs, ended = [], []
    for start in range(0, len(prefixes), batch):
        rows = [list(p) for p in prefixes[start : start + batch]]
        refs = references[start : start + batch]
        width = max(map(len, refs)) + 1
        ref = torch.tensor([r + [eos] + [-100] * (width - len(r) - 1) for r in refs])
        limit = [max(2 * len(r), len(p)) for p, r in zip(rows, refs, strict=True)]
        done = [len(p) >= lim for p, lim in zip(rows, limit, strict=True)]
        stopped = [False] * len(rows)
        while not all(done):
            longest = max(map(len, rows)) + 1
            prefix = torch.tensor([r + [pad] * (longest - len(r)) for r in rows])
            labels = oracle.next_token(prefix, torch.tensor([len(r) for r in rows]), ref).tolist()
            for i, label in enumerate(labels):
                if done[i]:
                    continue
                if label == eos or label < 0:
                    done[i] = stopped[i] = True
                else:
                    rows[i].append(label)
                    done[i] = len(rows[i]) >= limit[i]
        outputs += rows
        ended += stopped
    return outputs, ended


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="A saved tokenizer (e.g. a warm start's initial_model).")
    parser.add_argument("--data", required=True, help="The references: a jsonl file of the task.")
    parser.add_argument("--task", default="summarization", choices=["summarization", "translation"])
    parser.add_argument("--target-column", default="summary")
    parser.add_argument("--rollins", help="A model's outputs (jsonl with 'prediction'), one per reference.")
    parser.add_argument("--noise", type=float, default=0.3, help="Without --rollins: share of words replaced.")
    parser.add_argument("--oracles", default="rouge2,rougeL")
    parser.add_argument("--stops", default=",".join(STOP_RULES), help="Stop rules to follow (comma-separated).")
    parser.add_argument("--units", default=",".join(UNIT_CHOICES), help="Units to follow (comma-separated).")
    parser.add_argument("--limit", type=int, default=None, help="The first N references only.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Write the JSON here.")
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    lines = Path(args.data).read_text(encoding="utf-8").splitlines()
    references = [json.loads(line)[args.target_column] for line in lines if line.strip()][: args.limit]
    rng = random.Random(args.seed)
    if args.rollins:
        rollins = [json.loads(line)["prediction"] for line in Path(args.rollins).read_text("utf-8").splitlines()]
        rollins = rollins[: len(references)]
        if len(rollins) != len(references):
            raise SystemExit(f"--rollins has {len(rollins)} outputs for {len(references)} references.")
    else:
        pool = [w for r in references for w in r.split()]
        rollins = [" ".join(_noisy(rng, r.split(), pool, args.noise)) for r in references]
    prefixes_text = []
    for rollin in rollins:
        words = rollin.split()
        prefixes_text.append(" ".join(words[: rng.randint(0, len(words))]))

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    prefixes, refs = [ids(p) for p in prefixes_text], [ids(r) for r in references]
    data = {"task": args.task, "train_file": "unused"}
    task = get_task(DataArguments(**data))

    def scored(outputs: list[list[int]], ended: list[bool] | None) -> dict:
        texts = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]
        metrics = task.score(texts, references)
        summary = output_summary(output_statistics(texts, references, ended))
        return {**metrics, **{k: float(v[0]) for k, v in summary.items()}}

    results = {
        "command": "python scripts/oracle_follow.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or None,
        "references": len(references),
        "rollins": args.rollins or f"references with {args.noise:.0%} of their words replaced",
        "settings": {},
    }
    results["settings"]["prefix alone (stop at once)"] = scored(prefixes, [True] * len(prefixes))
    for name in args.oracles.split(","):
        for stop in args.stops.split(","):
            for units in args.units.split(","):
                oracle = make_oracle(name, tokenizer, stop=stop, units=units)
                outputs, ended = follow(oracle, tokenizer, prefixes, refs)
                key = f"{name} stop={stop} units={units}"
                results["settings"][key] = scored(outputs, ended)
                print(key, json.dumps({k: round(v, 3) for k, v in results["settings"][key].items()}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
