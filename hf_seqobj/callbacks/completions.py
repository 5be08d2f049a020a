"""What an objective trains on, as rows of text: the pieces of `log_completions` (docs/watching.md).

Each objective's :meth:`~hf_seqobj.objectives.base.Objective.completions` hook returns, for a few training examples,
an ordered mapping of column name to cell (text or number): the model's roll-in, the targets along it, the oracle's
completion, the sentence score. The helpers here render token ids as such cells, token by token so that a roll-in
and its labels line up, and format the rows as a markdown table (TensorBoard, the Python log) or a rich table (the
console). :class:`hf_seqobj.callbacks.CompletionsCallback` collects the rows and sends them out.

Marks in the cells: `[x]` a target that differs from the roll-in token at its position (DAgger's oracle label where
the model chose another token) or a token that scheduled sampling took from the model; `·` a position without a
target (-100); `<bksp>` SequenceMatch's backspace action.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hf_seqobj.constants import IGNORE_INDEX


MASKED = "·"
"""How a position without a target (-100) is shown."""

SCORE_COLUMNS = ("score", "oracle score")
"""The columns shown after the reference."""


def piece(tokenizer: Any, token_id: int) -> str:
    """One token as text: its decoded form without the surrounding spaces, or its vocabulary entry."""
    if token_id == IGNORE_INDEX:
        return MASKED
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False).strip()
    return text or str(tokenizer.convert_ids_to_tokens(int(token_id)))


def render_tokens(tokenizer: Any, ids: Sequence[int] | torch.Tensor, marked: Sequence[bool] | None = None) -> str:
    """Token ids as pieces joined by spaces; a piece whose `marked` entry is true is shown as `[piece]`."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    marked = [False] * len(ids) if marked is None else list(marked)
    pieces = [piece(tokenizer, i) for i in ids]
    return " ".join(f"[{p}]" if mark else p for p, mark in zip(pieces, marked))


def render_targets(tokenizer: Any, tokens: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> str:
    """The targets along a roll-in: label t is shown as it is where it equals roll-in token t, as `[label]` where it
    differs, and `·` where there is none."""
    tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    marked = [label != IGNORE_INDEX and (t >= len(tokens) or label != tokens[t]) for t, label in enumerate(labels)]
    return render_tokens(tokenizer, labels, marked)


def until_eos(ids: torch.Tensor, eos_token_id: int | None, keep_eos: bool = True) -> list[int]:
    """A row of ids up to its first EOS (included with `keep_eos`), without -100."""
    row = [int(i) for i in ids.tolist() if int(i) != IGNORE_INDEX]
    if eos_token_id is not None and eos_token_id in row:
        row = row[: row.index(eos_token_id) + (1 if keep_eos else 0)]
    return row


def sentence_score(metric: str, tokenizer: Any, hypothesis: Sequence[int], reference: Sequence[int]) -> float | None:
    """The sentence metric an oracle optimises, of one output against its reference (token ids, before EOS).

    Args:
        metric: An oracle name: `bleu`, `rouge1`, `rouge2`, `rougeL` (on token ids, :mod:`hf_seqobj.rewards`), or
            `span_f1` / `span_f1_partial` (on BIO tags; a non-tag token counts as `O`, and the output is cut or
            padded with `O` to the reference's length, as the NER task scores).
        tokenizer: Gives the EOS and pad ids and the tag names.
        hypothesis: The output's ids.
        reference: The reference's ids.

    Returns:
        The score in [0, 1], or None where the metric does not apply (span F1 of a reference that is not tags).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if metric.startswith("span_f1"):
        from hf_seqobj.oracles.span_f1 import BIO_TAG_PATTERN, span_f1_score

        gold = [str(name) for name in tokenizer.convert_ids_to_tokens([i for i in reference if i != eos])]
        if not gold or not all(BIO_TAG_PATTERN.match(name) for name in gold):
            return None
        names = [str(name) for name in tokenizer.convert_ids_to_tokens([i for i in hypothesis if i != eos])]
        predicted = [name if BIO_TAG_PATTERN.match(name) else "O" for name in names]
        predicted = (predicted + ["O"] * len(gold))[: len(gold)]
        return span_f1_score(predicted, gold, "partial" if metric == "span_f1_partial" else "exact")
    from hf_seqobj.rewards import score

    hyp = torch.tensor([list(hypothesis) or [IGNORE_INDEX]])
    ref = torch.tensor([list(reference) or [IGNORE_INDEX]])
    return float(score(metric, hyp, ref, eos_token_id=eos, pad_token_id=pad)[0])


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns of a table of rows: every key, in order of first appearance, the score columns last."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return [key for key in keys if key not in SCORE_COLUMNS] + [key for key in SCORE_COLUMNS if key in keys]


def cell(value: Any) -> str:
    """A table cell: numbers with 4 decimals, None empty, text on one line with `|` escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def format_completions_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table with one row per completion and a column per key (see :func:`columns_of`)."""
    columns = columns_of(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def print_completions(rows: Sequence[dict[str, Any]], title: str) -> None:
    """Prints the rows as a table to the console: a rich table where rich is installed, else the markdown table."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"{title}\n{format_completions_table(rows)}", flush=True)
        return
    table = Table(title=title, show_lines=True, expand=True)
    columns = columns_of(rows)
    for column in columns:
        numeric = column in SCORE_COLUMNS or column in ("step", "example")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(column)).replace("\\|", "|") for column in columns))
    Console().print(table)
