"""Scheduled sampling (Bengio et al. 2015), two-pass form for transformers (docs/scheduled_sampling.md).

Pass 1 is teacher-forced and without gradient: it gives the model's prediction at every position (argmax, or a
sample at `rollin_temperature`). Each gold input token is then replaced by the prediction for its position with
probability 1 - eps, and pass 2 runs on the mixed inputs and is trained on the gold targets. eps, the probability of
keeping the gold token, follows a schedule of the global step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from hf_seqobj.constants import IGNORE_INDEX
from hf_seqobj.decoding.rollin import RollinArguments, dropout_mode
from hf_seqobj.objectives.base import Objective, register_objective, row_generators
from hf_seqobj.objectives.schedules import (
    SS_DEFAULT_K,
    SS_SCHEDULES,
    check_scheduled_sampling,
    scheduled_sampling_eps,
)


BENGIO2015 = """@inproceedings{bengio2015scheduled,
  title     = {Scheduled Sampling for Sequence Prediction with Recurrent Neural Networks},
  author    = {Bengio, Samy and Vinyals, Oriol and Jaitly, Navdeep and Shazeer, Noam},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2015},
  eprint    = {1506.03099}
}"""
"""BibTeX of the paper (cited in model cards)."""


@dataclass
class ScheduledSamplingArguments:
    """Settings of `objective="scheduled_sampling"`."""

    ss_schedule: Literal[SS_SCHEDULES] = field(
        default="inverse_sigmoid",
        metadata={
            "help": f"Schedule of eps, the probability of feeding the gold token, over the global step i; one of "
            f"{SS_SCHEDULES}: linear max(ss_eps_min, k - c i), exponential k^i, inverse_sigmoid k / (k + exp(i / k))."
        },
    )
    ss_k: float | None = field(
        default=None,
        metadata={"help": f"The schedule's k; None: {SS_DEFAULT_K} for the chosen schedule."},
    )
    ss_c: float = field(default=1e-4, metadata={"help": "The slope c of the linear schedule."})
    ss_eps_min: float = field(default=0.0, metadata={"help": "The floor of eps, for every schedule."})

    @property
    def ss_k_value(self) -> float:
        """`ss_k`, or the default k of `ss_schedule`."""
        return self.ss_k if self.ss_k is not None else SS_DEFAULT_K.get(self.ss_schedule, 0.0)

    def validate(self) -> None:
        """Raises `ValueError` naming the first setting whose value is not accepted."""
        check_scheduled_sampling(self.ss_schedule, self.ss_k_value, self.ss_c, self.ss_eps_min)


def mix_tokens(
    gold_inputs: torch.Tensor,
    predictions: torch.Tensor,
    replaceable: torch.Tensor,
    eps: float,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces each replaceable gold input token by the model's prediction with probability 1 - eps.

    Args:
        gold_inputs: [B, L] gold input tokens of pass 2.
        predictions: [B, L] the model's prediction for each input position (from pass 1).
        replaceable: [B, L] bool, positions whose input is a gold target token.
        eps: Probability of keeping the gold token.
        generator: Source of the draws: one generator for a [B, L] draw, or one per row (row b draws one uniform
            per replaceable position of its own, in order, so its draws do not depend on the batch's padding or on
            the other rows).

    Returns:
        `(mixed inputs, replaced mask)`.
    """
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else None
        draws = torch.rand(gold_inputs.shape, generator=generator, device=device).to(gold_inputs.device)
    else:
        if len(generator) != gold_inputs.shape[0]:
            raise ValueError(f"{len(generator)} generators for {gold_inputs.shape[0]} rows; accepted: one per row.")
        draws = torch.ones(gold_inputs.shape, device=gold_inputs.device)  # (positions not replaceable stay gold)
        for row, row_generator in enumerate(generator):
            positions = replaceable[row].nonzero().flatten()
            draws[row, positions] = torch.rand(positions.numel(), generator=row_generator).to(draws.device)
    replaced = replaceable & (draws >= eps)
    return torch.where(replaced, predictions, gold_inputs), replaced


@register_objective(
    "scheduled_sampling",
    settings=(ScheduledSamplingArguments, RollinArguments),
    papers=(BENGIO2015,),
    description="scheduled sampling (two-pass form for transformers)",
)
class ScheduledSamplingObjective(Objective):
    """`objective="scheduled_sampling"`: two passes, the second on gold inputs mixed with the model's predictions.

    Decoder-only (GPT-2): the input at position j + 1 of a target token is replaced by the prediction of the logits
    at position j; prompt tokens are never replaced. Encoder-decoder (BART, T5): the decoder input at t + 1 (gold
    label t) is replaced by the prediction for label t. The loss is the token cross-entropy of pass 2 on the gold
    targets, normalised as one big batch (:meth:`Objective.teacher_forced_loss`), so gradient accumulation makes the
    same update as one big batch: each example draws its mixing from its own random stream (seed, global step, index
    in the one big batch; :func:`~hf_seqobj.objectives.base.row_generators`), so its draws are the same in any batch
    split, on every rank and after a resume (sampled predictions, `rollin="sample"`, are drawn per micro-batch).
    Evaluation loss is plain teacher forcing.

    Logged (train): `ss_eps` and `ss_replaced_fraction` (of replaceable inputs).
    """

    def eps(self) -> float:
        """The probability of keeping the gold token at the current global step."""
        args = self.trainer.args
        return scheduled_sampling_eps(
            self.trainer.state.global_step, args.ss_schedule, args.ss_k_value, args.ss_c, args.ss_eps_min
        )

    def _predict(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        args = self.trainer.args
        if args.rollin == "greedy":
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / args.rollin_temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        draws = torch.multinomial(flat.to(generator.device), 1, generator=generator)
        return draws.reshape(probs.shape[:-1]).to(logits.device)

    def _mixed_inputs(
        self,
        model,
        inputs,
        eps: float,
        generator: torch.Generator,
        mixing: torch.Generator | Sequence[torch.Generator] | None = None,
    ):
        """Pass 1 and the mixing: `(inputs of pass 2, replaced [B, L], replaceable [B, L])`, where the positions are
        those of the decoder inputs (encoder-decoder) or of `input_ids` (decoder-only). `generator` draws the
        sampled predictions (`rollin="sample"`), `mixing` (default `generator`) the mixing (:func:`mix_tokens`)."""
        mixing = generator if mixing is None else mixing
        trainer = self.trainer
        labels = inputs["labels"]
        unwrapped = trainer.accelerator.unwrap_model(model)
        encoder_decoder = bool(unwrapped.config.is_encoder_decoder)
        inputs = dict(inputs)
        if encoder_decoder and "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        first_pass = {key: value for key, value in inputs.items() if key != "labels"}
        first_pass["use_cache"] = False
        with self.timed("first_pass"), dropout_mode(model, trainer.args.rollin_dropout), torch.no_grad():
            logits = model(**first_pass).logits
            predicted = self._predict(logits, generator)
        if encoder_decoder:
            gold = inputs["decoder_input_ids"]
            # decoder input t + 1 is gold label t; its replacement is the prediction for label t
            shifted = torch.cat([gold[:, :1], predicted[:, :-1]], dim=1)
            target = torch.cat([torch.zeros_like(labels[:, :1], dtype=torch.bool), labels[:, :-1] != IGNORE_INDEX], 1)
            inputs["decoder_input_ids"], replaced = mix_tokens(gold, shifted, target, eps, mixing)
        else:
            gold = inputs["input_ids"]
            shifted = torch.cat([gold[:, :1], predicted[:, :-1]], dim=1)
            target = labels != IGNORE_INDEX
            inputs["input_ids"], replaced = mix_tokens(gold, shifted, target, eps, mixing)
        return inputs, replaced, target

    def training_loss(self, model, inputs, num_items_in_batch):
        eps = self.eps()
        generator = self.step_generator(inputs["labels"].device)
        mixing = row_generators(self, inputs["labels"].shape[0])  # each example's own draws, in any batch split
        inputs, replaced, target = self._mixed_inputs(model, inputs, eps, generator, mixing)
        self.record_metric("ss_eps", eps)
        self.record_metric("ss_replaced_fraction", replaced.sum() / target.sum().clamp(min=1))
        loss, outputs = self.teacher_forced_loss(model, inputs, num_items_in_batch)
        return loss, outputs

    def completions(self, model, inputs, generator):
        """The inputs of pass 2 at the current eps (`inputs`: the gold output as the model reads it, `[marked]` where
        the token is the model's own prediction, drawn from `generator`), the gold `labels`, the number of `sampled`
        tokens and the sentence `score` of the model's teacher-forced greedy output (the metric `oracle` names)."""
        from hf_seqobj.callbacks.completions import render_tokens, sentence_score, until_eos
        from hf_seqobj.decoding.rollin import predicted_tokens

        tokenizer = self.trainer.processing_class
        encoder_decoder = bool(self.trainer.accelerator.unwrap_model(model).config.is_encoder_decoder)
        mixed, replaced, _ = self._mixed_inputs(model, inputs, self.eps(), generator)
        self._step_seconds.pop("first_pass", None)  # a display is no part of the step's time
        key = "decoder_input_ids" if encoder_decoder else "input_ids"
        with dropout_mode(model, False):
            _, outputs = self.teacher_forced_loss(model, inputs)
        predicted = predicted_tokens(outputs.logits, encoder_decoder)
        eos = tokenizer.eos_token_id
        rows = []
        for index, labels in enumerate(inputs["labels"]):
            # gold token t is read at decoder input t + 1 (encoder-decoder), at its own position (decoder-only)
            gold = labels[labels != IGNORE_INDEX]
            if encoder_decoder:
                read, marks = mixed[key][index][1 : 1 + len(gold)], replaced[index][1 : 1 + len(gold)]
            else:
                read, marks = mixed[key][index][labels != IGNORE_INDEX], replaced[index][labels != IGNORE_INDEX]
            hypothesis = until_eos(predicted[index][labels != IGNORE_INDEX], eos, keep_eos=False)
            rows.append(
                {
                    "inputs": render_tokens(tokenizer, read, marks.tolist()),
                    "labels": render_tokens(tokenizer, gold),
                    "sampled": int(marks.sum()),
                    "score": sentence_score(
                        self.trainer.args.oracle, tokenizer, hypothesis, until_eos(gold, eos, keep_eos=False)
                    ),
                }
            )
        return rows
