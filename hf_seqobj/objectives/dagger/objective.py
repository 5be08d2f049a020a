"""DAgger with dynamic oracles (Yang et al. 2024, arXiv 2406.09393); docs/dagger.md.

One training step: roll in with the current model (the oracle's token replaces the model's with probability beta),
relabel every position of the roll-in with the oracle, and run one teacher-forced forward/backward on the roll-in
with those labels. Cost: one generation and one ordinary training pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainerCallback

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.rollin import RollinArguments, predicted_tokens
from hf_seqobj.objectives.base import ExportedStateCallback, Objective, register_objective, row_generators
from hf_seqobj.objectives.dagger.relabeling import DAggerRelabeler
from hf_seqobj.objectives.schedules import BETA_SCHEDULES, ROLLIN_FRACTION_SCHEDULES, dagger_beta, rollin_fraction
from hf_seqobj.oracles import ORACLE_NAMES, STOP_RULES, get_oracle, make_oracle
from hf_seqobj.oracles.units import UNIT_CHOICES


YANG2024 = """@article{yang2024dynamic,
  title         = {Improving Autoregressive Training with Dynamic Oracles},
  author        = {Yang, Jianing and Visvanathan, Harshine and Wang, Yilin and Hu, Xinyi and Gormley, Matthew R.},
  journal       = {arXiv preprint arXiv:2406.09393},
  year          = {2024},
  eprint        = {2406.09393},
  archivePrefix = {arXiv}
}"""
"""BibTeX of the paper (cited in model cards)."""

ROSS2011 = """@inproceedings{ross2011reduction,
  title     = {A Reduction of Imitation Learning and Structured Prediction to No-Regret Online Learning},
  author    = {Ross, St{\\'e}phane and Gordon, Geoffrey J. and Bagnell, J. Andrew},
  booktitle = {Proceedings of the Fourteenth International Conference on Artificial Intelligence and Statistics},
  year      = {2011}
}"""
"""BibTeX of the paper (cited in model cards)."""


@dataclass
class DAggerArguments:
    """Settings of `objective="dagger"`."""

    oracle: str = field(
        default="span_f1",
        metadata={
            "help": "The dynamic oracle that relabels roll-ins: a registered oracle (hf_seqobj.oracles.ORACLES; "
            "register_oracle / register_sentence_metric add your own). Built in: exact span-F1 oracles (exact or "
            "partial match) for BIO tagging; for text, a beam search over whole completions for BLEU and ROUGE-2 "
            "and exact oracles for ROUGE-1 and ROUGE-L (docs/oracles.md).",
            "choices": ORACLE_NAMES,  # read when parsing: the command line accepts oracles registered later too
        },
    )
    oracle_beam_size: int = field(
        default=5,
        metadata={
            "help": "Beam size k of the searching oracles (BLEU, ROUGE-2, sentence metrics; used when "
            "oracle_lookahead >= 2)."
        },
    )
    oracle_lookahead: int = field(
        default=0,
        metadata={
            "help": "Free tokens h the searching oracles (BLEU, ROUGE-2, sentence metrics) try before the aligned "
            "reference suffix finishes each completion; 0: the best reference tail (every completion is prefix + a "
            "reference suffix)."
        },
    )
    oracle_stop: Literal[STOP_RULES] = field(
        default="reference_length",
        metadata={
            "help": f"When the BLEU / ROUGE oracles say EOS, one of {STOP_RULES}: reference_length: once the "
            "output has as many tokens as the reference, and no completion is longer (SEARNN's cap; corpus BLEU "
            "punishes outputs that run on); metric: whenever the sentence metric says so (uncapped)."
        },
    )
    oracle_whole_words: bool = field(
        default=True,
        metadata={
            "help": "The BLEU / ROUGE oracles never label a word piece that continues a word unless the aligned "
            "reference continues with it there (byte-level BPE 'Ġ' / SentencePiece '▁' word starts)."
        },
    )
    oracle_units: Literal[UNIT_CHOICES] = field(
        default="metric",
        metadata={
            "help": f"What the text oracles score, one of {UNIT_CHOICES}: metric: the units of the metric the task "
            "reports (ROUGE oracles: rouge-score's lowercased words, ids that decode to punctuation only left out; "
            "BLEU: token ids, as sacrebleu scores case and punctuation); ids: every token id as it is."
        },
    )
    oracle_metric: str | None = field(
        default=None,
        metadata={
            "help": "With oracle=evaluate: the evaluate module whose sentence score the oracle maximises, a packaged "
            "name (span_f1, bleu_chrf, rouge, token_bleu, token_rouge) or the path of a local module script; it "
            "scores decoded candidates (docs/metrics.md)."
        },
    )
    oracle_metric_key: str | None = field(
        default=None,
        metadata={
            "help": "With oracle=evaluate: which number of the module's result is the score (default: its only one)."
        },
    )
    dagger_beta: float = field(
        default=0.5,
        metadata={
            "help": "Probability per roll-in token that the oracle's token is taken instead of the model's, when "
            "the warm-up ends (then decayed by dagger_beta_schedule). 1: teacher forcing on oracle paths."
        },
    )
    dagger_beta_schedule: Literal[BETA_SCHEDULES] = field(
        default="constant",
        metadata={
            "help": f"How beta decays after the warm-up, one of {BETA_SCHEDULES}: constant keeps dagger_beta (the "
            "default: the expert's tokens stay in every roll-in, as DAgger aggregates the expert's states with the "
            "learner's; on Multi30k it beat decaying to 0 and rolling in half of each batch on validation, "
            "docs/dagger.md); linear reaches 0 at the last step; exponential multiplies by dagger_beta_decay each "
            "step; agreement follows the model: max(dagger_beta, 1 - a), a the running oracle agreement "
            "(agreement_smoothing), so roll-ins far from what the oracle teaches keep more of the expert's tokens."
        },
    )
    dagger_beta_decay: float = field(
        default=0.999, metadata={"help": "Factor per step of the exponential beta schedule, in (0, 1]."}
    )
    dagger_warmup_steps: int = field(
        default=0, metadata={"help": "Steps of plain teacher forcing before the first roll-in."}
    )
    rollin_length_ratio: float = field(
        default=1.0,
        metadata={
            "help": "Each roll-in's length limit as a multiple of its gold output's length (EOS included, rounded "
            "up; >= 1). Above 1 a roll-in that runs past its reference is relabelled there too (under "
            "oracle_stop=reference_length the BLEU / ROUGE oracles say EOS there)."
        },
    )
    rollin_fraction: float = field(
        default=1.0,
        metadata={
            "help": "The expected fraction of examples that roll in, in (0, 1]; the others train by teacher forcing "
            "(gold inputs and labels) in the same forward pass. Each example rolls in with this probability, drawn "
            "from its own random stream (seed, global step, index in the global batch), so gradient accumulation, "
            "several processes and resumed runs choose the same examples. Fewer roll-ins make a cheaper step. "
            "Under rollin_fraction_schedule=agreement: the floor of the share."
        },
    )
    rollin_fraction_schedule: Literal[ROLLIN_FRACTION_SCHEDULES] = field(
        default="constant",
        metadata={
            "help": f"How the share of rolled-in examples is set, one of {ROLLIN_FRACTION_SCHEDULES}: constant keeps "
            "rollin_fraction; agreement follows the model: max(rollin_fraction, a), a the running oracle agreement "
            "(agreement_smoothing), so examples roll in as often as the model's roll-ins agree with the oracle and "
            "are teacher-forced otherwise. Needs rollin_fraction < 1 (the floor)."
        },
    )
    agreement_smoothing: float = field(
        default=0.9,
        metadata={
            "help": "With an agreement schedule: the running oracle agreement a is an exponential moving average "
            "over optimizer steps, a <- s * a + (1 - s) * (the step's agreement), with s this value in [0, 1) "
            "(0: the last step's agreement). The step's agreement is counted over the whole accumulated batch of "
            "every process, and a is saved in checkpoints."
        },
    )

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        get_oracle(self.oracle)  # registered now (oracles registered after import are accepted)
        if self.oracle_beam_size < 1:
            raise ValueError(f"oracle_beam_size must be >= 1, got {self.oracle_beam_size}.")
        if self.oracle_lookahead < 0:
            raise ValueError(f"oracle_lookahead must be >= 0, got {self.oracle_lookahead}.")
        if self.oracle_stop not in STOP_RULES:
            raise ValueError(f"oracle_stop must be one of {STOP_RULES}, got {self.oracle_stop!r}.")
        if self.oracle_units not in UNIT_CHOICES:
            raise ValueError(f"oracle_units must be one of {UNIT_CHOICES}, got {self.oracle_units!r}.")
        if self.oracle == "evaluate" and self.oracle_metric is None:
            raise ValueError(
                "oracle 'evaluate' needs oracle_metric: a packaged evaluate module name or a local module path."
            )
        if self.oracle != "evaluate" and (self.oracle_metric is not None or self.oracle_metric_key is not None):
            raise ValueError(
                f"oracle_metric / oracle_metric_key are read by oracle 'evaluate' only, not {self.oracle!r}; set "
                "oracle: evaluate or remove them."
            )
        if not 0.0 <= self.dagger_beta <= 1.0:
            raise ValueError(f"dagger_beta must be in [0, 1], got {self.dagger_beta}.")
        if self.dagger_beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"dagger_beta_schedule must be one of {BETA_SCHEDULES}, got {self.dagger_beta_schedule!r}."
            )
        if not 0.0 < self.dagger_beta_decay <= 1.0:
            raise ValueError(f"dagger_beta_decay must be in (0, 1], got {self.dagger_beta_decay}.")
        if self.dagger_warmup_steps < 0:
            raise ValueError(f"dagger_warmup_steps must be >= 0, got {self.dagger_warmup_steps}.")
        if not self.rollin_length_ratio >= 1.0:
            raise ValueError(f"rollin_length_ratio must be >= 1, got {self.rollin_length_ratio}.")
        if not 0.0 < self.rollin_fraction <= 1.0:
            raise ValueError(f"rollin_fraction must be in (0, 1], got {self.rollin_fraction}.")
        if self.rollin_fraction_schedule not in ROLLIN_FRACTION_SCHEDULES:
            raise ValueError(
                f"rollin_fraction_schedule must be one of {ROLLIN_FRACTION_SCHEDULES}, got "
                f"{self.rollin_fraction_schedule!r}."
            )
        if self.rollin_fraction_schedule == "agreement" and self.rollin_fraction == 1.0:
            raise ValueError(
                "rollin_fraction_schedule='agreement' takes rollin_fraction as its floor, got 1.0 (every example "
                "would always roll in); set rollin_fraction below 1, e.g. 0.1."
            )
        if not 0.0 <= self.agreement_smoothing < 1.0:
            raise ValueError(f"agreement_smoothing must be in [0, 1), got {self.agreement_smoothing}.")

    @property
    def follows_agreement(self) -> bool:
        """Whether beta or the roll-in share follows the running oracle agreement."""
        return self.dagger_beta_schedule == "agreement" or self.rollin_fraction_schedule == "agreement"


class OracleAgreementCallback(ExportedStateCallback):
    """The running oracle agreement that DAgger's agreement schedules follow.

    Each micro-batch adds its counts (:meth:`add`: labelled roll-in positions, and those where the model's greedy
    token is the oracle's label); at the end of each optimizer step the counts of the whole accumulated batch,
    summed over processes, give the step's agreement x, and the running value becomes a = x at the first step,
    then a <- s * a + (1 - s) * x. So the value a step uses depends on the steps before it only, and not on how its
    batch is split into micro-batches or processes. The value is exported into `trainer_state.json` at every
    checkpoint (transformers' `ExportableState`) and read back on resume in `on_train_begin`.

    Args:
        smoothing: s in [0, 1).
    """

    def __init__(self, smoothing: float = 0.9):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
        self.smoothing = float(smoothing)
        self.value: float | None = None
        self.accelerator = None
        self._counts: torch.Tensor | None = None

    def add(self, hits: torch.Tensor, labelled: torch.Tensor) -> None:
        """Adds one micro-batch's counts (scalar tensors) to the current step's."""
        counts = torch.stack([hits.detach().double(), labelled.detach().double()])
        self._counts = counts if self._counts is None else self._counts + counts.to(self._counts.device)

    def on_step_end(self, args, state, control, **kwargs):
        counts = self._counts
        self._counts = None
        if counts is None:  # a warm-up step (every process is in warm-up alike)
            return
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        hits, labelled = (float(value) for value in counts.tolist())
        if labelled <= 0:
            return
        step = hits / labelled
        self.value = step if self.value is None else self.smoothing * self.value + (1.0 - self.smoothing) * step

    def state(self) -> dict:
        return {"args": {"smoothing": self.smoothing}, "attributes": {"value": self.value}}


@register_objective(
    "dagger",
    settings=(DAggerArguments, RollinArguments),
    papers=(YANG2024, ROSS2011),
    description="DAgger with dynamic oracles: roll-ins by the model, relabelled by the metric's oracle",
)
class DAggerObjective(Objective):
    """`objective="dagger"`: roll in, relabel with the oracle, teacher-force on the roll-in.

    The loss is the token cross-entropy on the roll-in batch (:meth:`Objective.teacher_forced_loss`). Its
    normaliser is the Trainer's `num_items_in_batch`: the number of GOLD target tokens of the whole accumulated batch
    (counted before any roll-in, and known before it), so a step with gradient accumulation makes the same update as
    one big batch. A roll-in that stops early has fewer labels than its gold
    output; it is not up-weighted for that. Evaluation loss is plain teacher forcing.

    Each row rolls in at most ceil(`rollin_length_ratio` x its gold length) tokens (EOS included; the ratio is 1
    by default: the gold length).

    With `dagger_beta_schedule="agreement"` or `rollin_fraction_schedule="agreement"` beta / the roll-in share
    follow the running oracle agreement (:class:`OracleAgreementCallback`, logged as `running_agreement`).

    Logged (train): `dagger_beta`, `rollin_length` (mean tokens up to the first EOS), `oracle_forced_fraction`,
    `oracle_agreement` (fraction of labelled positions where the model's greedy token equals the oracle's),
    `oracle_score` (BLEU / ROUGE oracles: the mean sentence score of the best whole completion the oracle found
    from the roll-in's prefixes, the best it could teach from there), and the shares of step time spent in
    generation (`rollin_time_share`) and in the oracle (`oracle_time_share`); with an agreement schedule,
    `running_agreement` (what beta / the roll-in share followed at that step) and, with `rollin_fraction` < 1, the
    share of examples that rolled in (`rollin_fraction`).
    """

    def __init__(self, trainer):
        super().__init__(trainer)
        args = trainer.args
        tokenizer = trainer.processing_class
        if tokenizer is None:
            raise ValueError("objective='dagger' needs the trainer's processing_class (the tokenizer) for its oracle.")
        self.oracle = make_oracle(
            args.oracle,
            tokenizer,
            args.oracle_beam_size,
            args.oracle_lookahead,
            stop=args.oracle_stop,
            whole_words=args.oracle_whole_words,
            metric=args.oracle_metric,
            metric_key=args.oracle_metric_key,
            units=args.oracle_units,
        )
        self.relabeler = DAggerRelabeler(
            self.oracle,
            rollin=args.rollin,
            temperature=args.rollin_temperature,
            dropout=args.rollin_dropout,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            fixed_length=args.rollin_fixed_length,
            static_cache=args.rollin_static_cache,
            compile=args.rollin_compile,
            length_ratio=args.rollin_length_ratio,
        )
        self.agreement = OracleAgreementCallback(args.agreement_smoothing) if args.follows_agreement else None
        if self.agreement is not None:
            self.agreement.accelerator = trainer.accelerator

    def callbacks(self) -> list[TrainerCallback]:
        """The base callbacks, and the running agreement's when a schedule follows it."""
        return super().callbacks() + ([self.agreement] if self.agreement is not None else [])

    def running_agreement(self) -> float | None:
        """The running oracle agreement of the steps so far (None before the first, or without an agreement
        schedule)."""
        return None if self.agreement is None else self.agreement.value

    def beta(self) -> float:
        """Beta at the current global step (1 during the warm-up)."""
        args, state = self.trainer.args, self.trainer.state
        return dagger_beta(
            state.global_step,
            args.dagger_beta,
            args.dagger_beta_schedule,
            args.dagger_warmup_steps,
            state.max_steps,
            args.dagger_beta_decay,
            agreement=self.running_agreement(),
        )

    def rollin_fraction(self) -> float:
        """The expected share of examples that roll in at this step."""
        args = self.trainer.args
        return rollin_fraction(args.rollin_fraction, args.rollin_fraction_schedule, self.running_agreement())

    def training_loss(self, model, inputs, num_items_in_batch):
        trainer = self.trainer
        if trainer.state.global_step < trainer.args.dagger_warmup_steps:
            self.record_metric("dagger_beta", 1.0)
            loss, outputs = self.teacher_forced_loss(model, inputs, num_items_in_batch)
            return loss, outputs
        beta = self.beta()
        device = inputs["input_ids"].device
        local_rows = inputs["input_ids"].shape[0]
        rollin_rows = None
        fraction = self.rollin_fraction()
        if fraction < 1.0:  # each example's own draw, the same in any batch split
            draws = torch.cat(
                [torch.rand(1, generator=g, dtype=torch.float64) for g in row_generators(self, local_rows)]
            )
            rollin_rows = (draws < fraction).to(device)
            self.record_metric("rollin_fraction", rollin_rows.float().mean())
        row_offset, global_rows = self.global_rows(local_rows)
        batch, stats = self.relabeler(
            model,
            inputs,
            beta=beta,
            generator=self.step_generator(device, per_micro_step=False),  # one stream per optimizer step, so
            accelerator=trainer.accelerator,  # a row's mixing draws do not depend on the batch split
            checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            row_offset=row_offset,
            global_rows=global_rows,
            rollin_rows=rollin_rows,
        )
        self._step_seconds["rollin"] += stats.seconds["rollin"]
        self._step_seconds["oracle"] += stats.seconds["oracle"]
        loss, outputs = self.teacher_forced_loss(model, batch, num_items_in_batch)
        labels = batch["labels"]
        encoder_decoder = "decoder_input_ids" in batch
        predicted = predicted_tokens(outputs.logits.detach(), encoder_decoder)
        labelled = labels != IGNORE_INDEX
        if rollin_rows is not None:  # the agreement of the roll-in rows only
            labelled &= rollin_rows[:, None]
        agreement = (predicted == labels)[labelled].float().mean() if labelled.any() else 1.0
        if self.agreement is not None:
            self.agreement.add(((predicted == labels) & labelled).sum(), labelled.sum())
            if self.agreement.value is not None:
                self.record_metric("running_agreement", self.agreement.value)
        self.record_metric("dagger_beta", beta)
        self.record_metric("rollin_length", stats.rollin_length)
        self.record_metric("oracle_forced_fraction", stats.forced_fraction)
        self.record_metric("oracle_agreement", agreement)
        if stats.oracle_score is not None:
            self.record_metric("oracle_score", stats.oracle_score)
        return loss, outputs

    def completions(self, model, inputs, generator):
        """The roll-in at the current beta (mixing draws from `generator`), the oracle's label at each position
        (`[marked]` where the model chose another token), for the BLEU / ROUGE oracles the best whole output the
        oracle found from the first such position (the roll-in's prefix up to it, `‖`, the oracle's completion) with
        its `oracle score`, and the sentence `score` of the roll-in (the oracle's metric). During the warm-up
        (`dagger_warmup_steps`), what teacher forcing trains on."""
        if self.trainer.state.global_step < self.trainer.args.dagger_warmup_steps:
            return super().completions(model, inputs, generator)
        from hf_seqobj.callbacks.completions import render_targets, render_tokens, sentence_score, until_eos

        tokenizer = self.trainer.processing_class
        rollin, labels, references = self.relabeler.rollin_with_labels(
            model, inputs, beta=self.beta(), generator=generator, accelerator=self.trainer.accelerator
        )
        search = getattr(self.oracle, "search", None)
        found = search(rollin.tokens, references, return_completions=True) if search is not None else None
        eos = tokenizer.eos_token_id
        rows = []
        for index in range(rollin.tokens.shape[0]):
            length = int(rollin.lengths[index])
            tokens, row_labels = rollin.tokens[index, :length], labels[index, :length]
            reference = until_eos(references[index], eos, keep_eos=False)
            row = {
                "rollin": render_tokens(tokenizer, tokens),
                "labels": render_targets(tokenizer, tokens, row_labels),
            }
            if found is not None and found.completions is not None:
                differs = ((row_labels != tokens) & (row_labels != IGNORE_INDEX)).nonzero().flatten().tolist()
                at = differs[0] if differs else 0
                completion = until_eos(found.completions[index, at], eos)
                prefix = render_tokens(tokenizer, tokens[:at])
                row["oracle completion"] = f"{prefix} ‖ {render_tokens(tokenizer, completion)}".strip()
                row["oracle score"] = float(found.scores[index, at])
            hypothesis = until_eos(tokens, eos, keep_eos=False)
            row["score"] = sentence_score(self.trainer.args.oracle, tokenizer, hypothesis, reference)
            rows.append(row)
        return rows
