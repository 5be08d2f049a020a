"""DAgger's relabelling as batch-level components, usable on their own in a custom training loop.

:class:`DAggerRelabeler` turns a padded gold batch into a DAgger training batch: it rolls in with the model
(optionally mixing in the oracle's tokens with probability beta) and relabels every position of the roll-in with the
oracle (docs/dagger.md). :class:`DAggerDataCollator` wraps any collator with it, so that a hand-written loop
gets roll-in batches straight from its DataLoader:

    >>> collator = DAggerDataCollator(DataCollatorForSeq2Seq(tokenizer, model=model), model,  # doctest: +SKIP
    ...                               DAggerRelabeler(make_oracle("span_f1", tokenizer)))
    >>> for batch in DataLoader(train_dataset, batch_size=32, collate_fn=collator):  # doctest: +SKIP
    ...     model(**batch).loss.backward()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.decoder import OracleMixing
from hf_seqobj.decoding.prompts import split_prompts
from hf_seqobj.decoding.rollin import (
    RollIn,
    check_rollin,
    generate_rollin,
    reference_targets,
    rollin_generation_config,
    rollin_training_batch,
)
from hf_seqobj.oracles import Oracle


@dataclass
class RelabelStats:
    """What one relabelling did (the objective logs these)."""

    rollin_length: float = 0.0
    """Mean roll-in length (tokens up to and including the first EOS)."""
    forced_fraction: float = 0.0
    """Fraction of generation steps at which the oracle's token was forced (beta mixing)."""
    labelled: int = 0
    """Positions with a label."""
    oracle_score: float | None = None
    """Mean over labelled positions of the sentence score of the best whole completion the oracle found from the
    roll-in's prefix (the best this oracle could teach from there); None for oracles without `search`."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of `rollin` (generation, oracle calls inside it excluded) and `oracle`."""


class _TimedOracle:
    """Counts the time spent inside an oracle's `next_token` (called from generation)."""

    def __init__(self, oracle):
        self.oracle = oracle
        self.seconds = 0.0

    def next_token(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.oracle.next_token(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    @property
    def supports_rows(self) -> bool:
        return bool(getattr(self.oracle, "supports_rows", False))


class DAggerRelabeler:
    """Roll-in with the current model, then oracle labels at every position (docs/dagger.md, steps 1-2).

    Args:
        oracle: An :class:`~hf_seqobj.oracles.Oracle`, e.g. from :func:`~hf_seqobj.oracles.make_oracle`.
        rollin: "greedy" or "sample".
        temperature: Sampling temperature of the roll-in.
        dropout: Roll in with dropout on (the model's training mode) instead of eval mode.
        max_new_tokens: The longest roll-in. None: each row's roll-in is cut at `length_ratio` times the length of
            its own gold output (EOS included, rounded up), so a row's roll-in and labels do not depend on the other
            rows of its batch (and gradient accumulation makes the same update as one big batch).
        pad_token_id: Padding of generated rows; None: the model config's.
        eos_token_id: None: the model config's.
        fixed_length: Decode exactly each row's limit of tokens with no EOS checks (see
            :func:`hf_seqobj.decoding.decoder.decode`); the roll-ins are the same.
        static_cache: Decode with a static KV cache (GPU).
        compile: Compile the decode step (GPU; needs `static_cache`).
        length_ratio: With `max_new_tokens` None, each row's limit as a multiple of its gold length (>= 1). Above 1
            a roll-in that runs past its reference is relabelled there too (under the stop rule
            "reference_length" the BLEU / ROUGE oracles say EOS there).
    """

    def __init__(
        self,
        oracle: Oracle,
        rollin: str = "greedy",
        temperature: float = 1.0,
        dropout: bool = False,
        max_new_tokens: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        fixed_length: bool = False,
        static_cache: bool = False,
        compile: bool = False,
        length_ratio: float = 1.0,
    ):
        check_rollin(rollin, temperature)
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be None or >= 1, got {max_new_tokens}.")
        if not length_ratio >= 1.0:
            raise ValueError(f"length_ratio must be >= 1, got {length_ratio}.")
        if compile and not static_cache:
            raise ValueError("compile=True needs static_cache=True (the compiled decode step needs fixed shapes).")
        self.oracle = oracle
        self.rollin = rollin
        self.temperature = temperature
        self.dropout = dropout
        self.max_new_tokens = max_new_tokens
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.fixed_length = fixed_length
        self.static_cache = static_cache
        self.compile = compile
        self.length_ratio = length_ratio

    def __call__(
        self,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        beta: float = 0.0,
        generator: torch.Generator | None = None,
        accelerator=None,
        checkpointing_kwargs: dict | None = None,
        row_offset: int = 0,
        global_rows: int | None = None,
        rollin_rows: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], RelabelStats]:
        """Returns `(training batch on the roll-in, stats)`.

        Args:
            model: The model (wrapped or not) to roll in with.
            batch: A padded gold batch with `input_ids`, `attention_mask` and `labels`.
            beta: Probability per generated token that the oracle's token is taken instead of the model's.
            generator: Source of the beta draws.
            accelerator: The trainer's accelerator (unwrapping for generation).
            checkpointing_kwargs: Passed back when gradient checkpointing is restored after generation.
            row_offset, global_rows: Where this batch sits in the global batch (see
                :class:`~hf_seqobj.decoding.decoder.OracleMixing`).
            rollin_rows: [B] bool, the rows that roll in; the others keep their gold output and labels (teacher
                forcing) in the same training batch. None: every row.
        """
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}.")
        unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
        config = unwrapped.config
        encoder_decoder = bool(config.is_encoder_decoder)
        start_token = getattr(config, "decoder_start_token_id", None)
        references = reference_targets(batch, encoder_decoder)
        gold_lengths = (references != IGNORE_INDEX).sum(1)
        limits = self._limits(references)
        rows = None
        if rollin_rows is not None:
            rollin_rows = rollin_rows.to(references.device).bool()
            if rollin_rows.shape != limits.shape:
                raise ValueError(f"rollin_rows has shape {tuple(rollin_rows.shape)}; accepted: [B] = [{len(limits)}].")
            if bool(rollin_rows.all()):
                rollin_rows = None
            else:
                rows = rollin_rows.nonzero().flatten()
        sub = batch if rows is None else {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        sub_references = references if rows is None else references[rows]
        sub_limits = limits if rows is None else limits[rows]
        timed = _TimedOracle(self.oracle)
        rollin, labels, generated, oracle_score = None, None, 0.0, None
        if rows is None or rows.numel() > 0:
            where, kwargs = (row_offset, global_rows, rows), checkpointing_kwargs
            rollin, labels, generated, oracle_score = self._rollin_and_labels(
                model, sub, sub_references, sub_limits, beta, generator, accelerator, kwargs, timed, where
            )
        stats = RelabelStats(
            rollin_length=float(rollin.lengths.float().mean()) if rollin is not None else 0.0,
            forced_fraction=rollin.forced / max(rollin.steps, 1) if rollin is not None else 0.0,
            labelled=int((labels != IGNORE_INDEX).sum()) if labels is not None else 0,
            oracle_score=oracle_score,
            seconds={"rollin": generated, "oracle": timed.seconds},
        )
        if rows is not None:  # the other rows keep their gold outputs and labels
            rollin, labels = self._with_gold_rows(batch, references, gold_lengths, rows, rollin, labels, config)
        train_batch = rollin_training_batch(batch, rollin, labels, start_token)
        return train_batch, stats

    def _limits(self, references: torch.Tensor) -> torch.Tensor:
        """[B] each row's longest roll-in: `length_ratio` x its gold length (EOS included), or `max_new_tokens`."""
        if self.max_new_tokens is None:
            gold_lengths = (references != IGNORE_INDEX).sum(1)
            return torch.ceil(gold_lengths.double() * self.length_ratio).long().clamp(min=1)
        return torch.full_like(references[:, 0], self.max_new_tokens)

    def _rollin_and_labels(
        self, model, batch, references, limits, beta, generator, accelerator, checkpointing_kwargs, timed, where
    ) -> tuple[RollIn, torch.Tensor, float, float | None]:
        """Rolls in on `batch` and labels every position with the oracle: `(roll-in, labels, seconds generating,
        oracle score)`, the last the mean score of the best whole completion found from the labelled prefixes (for
        oracles with `search`; else None).

        The seconds generating leave out the oracle's calls inside generation; those and the labelling are added to
        `timed.seconds`. `where`: `(row_offset, global_rows, rows)` of the beta mixing.
        """
        unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
        generation_config = rollin_generation_config(
            unwrapped, max(int(limits.max()), 1), self.rollin, self.temperature, self.pad_token_id, self.eos_token_id
        )
        mixing = None
        if beta > 0:
            mixing = OracleMixing(timed, references, beta, generator, *where)
        start = time.perf_counter()
        rollin = generate_rollin(
            model,
            batch,
            generation_config,
            accelerator,
            self.dropout,
            checkpointing_kwargs,
            limits=limits,
            mixing=mixing,
            fixed_length=self.fixed_length,
            static_cache=self.static_cache,
            compile=self.compile,
        )
        generated = time.perf_counter() - start - timed.seconds
        start = time.perf_counter()
        search = getattr(self.oracle, "search", None)
        found = search(rollin.tokens, references) if callable(search) else None
        labels = found.labels if found is not None else self.oracle(rollin.tokens, references)
        position = torch.arange(labels.shape[1], device=labels.device)[None, :]
        labels = labels.masked_fill(position >= rollin.lengths[:, None], IGNORE_INDEX)
        oracle_score = None
        if found is not None and bool((labels != IGNORE_INDEX).any()):
            oracle_score = float(found.scores[labels != IGNORE_INDEX].mean())
        timed.seconds += time.perf_counter() - start
        return rollin, labels, generated, oracle_score

    def rollin_with_labels(
        self,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        beta: float = 0.0,
        generator: torch.Generator | None = None,
        accelerator=None,
    ) -> tuple[RollIn, torch.Tensor, torch.Tensor]:
        """The roll-in of every row of `batch` and the oracle's labels along it, as :meth:`__call__` makes them
        (for a display: no statistics, no training batch).

        Returns:
            `(roll-in, labels [B, T] (-100 from each row's end on), reference targets [B, M])`.
        """
        unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
        references = reference_targets(batch, bool(unwrapped.config.is_encoder_decoder))
        limits = self._limits(references)
        timed = _TimedOracle(self.oracle)
        rollin, labels, _, _ = self._rollin_and_labels(
            model, batch, references, limits, beta, generator, accelerator, None, timed, (0, None, None)
        )
        return rollin, labels, references

    def _with_gold_rows(self, batch, references, gold_lengths, rows, rollin, labels, config):
        """The roll-in of every row of `batch`: rows `rows` from `rollin`, the others their gold outputs."""
        pad = self.pad_token_id if self.pad_token_id is not None else config.pad_token_id
        width = max(references.shape[1], rollin.tokens.shape[1] if rollin is not None else 0)
        gold = torch.nn.functional.pad(references, (0, width - references.shape[1]), value=IGNORE_INDEX)
        tokens = gold.masked_fill(gold == IGNORE_INDEX, pad)
        full_labels = gold.clone()
        lengths = gold_lengths.clone()
        if rollin is not None:
            tokens[rows] = pad
            tokens[rows, : rollin.tokens.shape[1]] = rollin.tokens
            full_labels[rows] = IGNORE_INDEX
            full_labels[rows, : labels.shape[1]] = labels
            lengths[rows] = rollin.lengths
        prompt_ids = prompt_mask = None
        if not bool(config.is_encoder_decoder):
            prompt_ids, prompt_mask = split_prompts(batch["input_ids"], batch["labels"], pad)
        combined = RollIn(
            tokens=tokens,
            lengths=lengths,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            forced=rollin.forced if rollin is not None else 0,
            steps=rollin.steps if rollin is not None else 0,
            pad_token_id=pad,
        )
        return combined, full_labels


class DAggerDataCollator:
    """A collator that pads with `base_collator` and then rolls in and relabels with `relabeler`.

    For custom training loops (the trainers call :class:`DAggerRelabeler` inside `compute_loss` instead, so that
    roll-ins use the parameters of the current step). The batch is moved to the model's device first.

    Args:
        base_collator: Pads features into a gold batch (e.g. `DataCollatorForSeq2Seq`).
        model: The model being trained.
        relabeler: The roll-in and oracle.
        beta: The oracle mixing probability (change the attribute as training goes on).
    """

    def __init__(
        self, base_collator: Callable[[list[dict[str, Any]]], dict], model: PreTrainedModel, relabeler, beta=0.0
    ):
        self.base_collator = base_collator
        self.model = model
        self.relabeler = relabeler
        self.beta = beta

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base_collator(features)
        device = next(self.model.parameters()).device
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        relabelled, _ = self.relabeler(self.model, batch, beta=self.beta)
        return relabelled
