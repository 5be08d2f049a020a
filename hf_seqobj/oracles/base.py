"""What every oracle is, the registry of oracles, and how to get one by name.

A dynamic oracle answers: given the gold output and ANY prefix, which next token keeps the best reachable score of
the metric? The exact span-F1 oracles (:mod:`.span_f1`) answer it exactly for BIO tagging; the beam-search oracles
(:mod:`.beam`) search whole completions for BLEU and ROUGE-2; :mod:`.exact` answers exactly for ROUGE-L and
ROUGE-1; :mod:`.metric` searches whole completions for any sentence metric a user gives. The text oracles share an
alignment, a stop rule and a whole-word rule (:mod:`.align`). All have the interface of :class:`Oracle`.

Registry
--------
Every oracle is one registration (:func:`register_oracle`): its name (the value of `oracle=`), the kind of output
it scores ("bio_tags" or "text"), its factory, the settings it reads, its doc line and whether it is exact. The
command line's choices, the check that an oracle fits the task, the model card and docs/ read the registry
(:data:`ORACLES`). The built-in oracles are registered in :mod:`.builtin`; a user registers their own the same way
(or, for a sentence metric over token ids, with :func:`hf_seqobj.oracles.register_sentence_metric`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from hf_seqobj.oracles.align import check_stop
from hf_seqobj.oracles.units import check_units


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


__all__ = [
    "ORACLES",
    "ORACLE_NAMES",
    "OUTPUT_KINDS",
    "Oracle",
    "OracleSettings",
    "OracleSpec",
    "get_oracle",
    "make_oracle",
    "oracle_names",
    "register_oracle",
]


@runtime_checkable
class Oracle(Protocol):
    """The interface of a dynamic oracle over token ids.

    `oracle(prefix_ids, reference_ids)` labels every position of a batch of roll-ins at once: label[b, t] is the
    oracle's next token after `prefix_ids[b, :t]` (-100 once that prefix holds EOS). `oracle.next_token(prefix_ids,
    prefix_lengths, reference_ids)` gives the next token after each row's prefix only (what a roll-in that mixes in
    the oracle's tokens calls at every step). An oracle whose `next_token` also takes `rows=` (the indices of the
    rows to answer for) says so with a class attribute `supports_rows = True`.
    """

    def __call__(self, prefix_ids: torch.Tensor, reference_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] oracle labels for every position of `prefix_ids` [B, T], given `reference_ids` [B, M]."""
        ...

    def next_token(
        self, prefix_ids: torch.Tensor, prefix_lengths: torch.Tensor, reference_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B] the oracle's token after `prefix_ids[b, :prefix_lengths[b]]`."""
        ...


OUTPUT_KINDS = ("bio_tags", "text")
"""The kinds of output an oracle scores: BIO tag sequences (one tag per input word), or text."""


@dataclass(frozen=True)
class OracleSettings:
    """The settings an oracle's factory gets (DAgger's `oracle_*` settings); each oracle reads the ones it names.

    Args:
        beam_size: Beam size k of the searching text oracles (>= 1; used from lookahead 2 on).
        lookahead: Free tokens h the searching text oracles try before the aligned reference suffix (>= 0; 0: the
            best reference tail).
        stop: The text oracles' stop rule, "reference_length" or "metric" (:mod:`hf_seqobj.oracles.align`).
        whole_words: The text oracles start no word piece that the aligned reference does not continue.
        units: What the text oracles score, "metric" (the reported metric's units: rouge-score's words for the
            ROUGE oracles) or "ids" (:mod:`hf_seqobj.oracles.units`).
        metric: The `evaluate` module of the `evaluate` oracle (hf_seqobj.metrics): a packaged name, a local path
            or a loaded `EvaluationModule`; None for the other oracles.
        metric_key: Which number of the module's result is the sentence score (None: its only number).
    """

    beam_size: int = field(default=5, metadata={"help": "Beam size k (>= 1)."})
    lookahead: int = field(default=0, metadata={"help": "Free tokens h before the aligned reference suffix."})
    stop: str = field(default="reference_length", metadata={"help": "'reference_length' or 'metric'."})
    whole_words: bool = field(default=True, metadata={"help": "No word piece the reference does not continue."})
    units: str = field(default="metric", metadata={"help": "'metric' (the reported metric's units) or 'ids'."})
    metric: Any = field(
        default=None,
        metadata={"help": "An `evaluate` module (packaged name, local path or loaded module) the oracle scores with."},
    )
    metric_key: str | None = field(
        default=None, metadata={"help": "Which number of the module's result is the score (None: its only one)."}
    )

    def __post_init__(self) -> None:
        for name, low in (("beam_size", 1), ("lookahead", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} = {value!r}; accepted: an int >= {low}.")
        check_stop(self.stop)
        check_units(self.units)
        if not isinstance(self.whole_words, bool):
            raise ValueError(f"whole_words = {self.whole_words!r}; accepted: True or False.")
        if self.metric_key is not None and not isinstance(self.metric_key, str):
            raise ValueError(f"metric_key = {self.metric_key!r}; accepted: None or the name of a result key.")


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(OracleSettings))
"""The names of the fields of :class:`OracleSettings` (DAgger's setting `oracle_<name>` sets each)."""


@dataclass(frozen=True)
class OracleSpec:
    """One registered oracle (see :func:`register_oracle`).

    Attributes:
        name: The value of `oracle=` that selects it.
        output: The kind of output it scores, one of `OUTPUT_KINDS`.
        factory: `factory(tokenizer, settings: OracleSettings) -> Oracle`.
        doc: One line saying what it is (docs, `--help`, model cards).
        exact: Whether its labels are exact (else it searches).
        settings: The fields of :class:`OracleSettings` it reads.
    """

    name: str
    output: str
    factory: Callable[[PreTrainedTokenizerBase, OracleSettings], Oracle]
    doc: str
    exact: bool = False
    settings: tuple[str, ...] = ()


ORACLES: dict[str, OracleSpec] = {}
"""The registered oracles by name, in registration order (the built-in ones first). Read it; register with
:func:`register_oracle`."""


class _RegisteredNames(Collection):
    """A live, read-only view of the registered oracle names: `in`, iteration and `len` read :data:`ORACLES` now."""

    def __contains__(self, name: object) -> bool:
        return name in ORACLES

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(ORACLES))

    def __len__(self) -> int:
        return len(ORACLES)

    def __repr__(self) -> str:
        return repr(tuple(ORACLES))


ORACLE_NAMES: Collection[str] = _RegisteredNames()
"""The registered oracle names, read when used (e.g. as argparse `choices`: oracles registered later are accepted)."""


def register_oracle(
    name: str,
    *,
    output: str,
    factory: Callable[[PreTrainedTokenizerBase, OracleSettings], Oracle],
    doc: str,
    exact: bool = False,
    settings: tuple[str, ...] | list[str] = (),
    replace: bool = False,
) -> OracleSpec:
    """Registers an oracle: the one place that says what it is. `oracle=name` then selects it everywhere.

    The name becomes an accepted value of DAgger's `oracle` setting (validated against the registry when the
    training arguments are built, so an oracle registered after import is accepted); the run checks that `output`
    is the task's kind of output; docs/ and model cards show `doc`.

        from hf_seqobj.oracles import register_oracle

        register_oracle(
            "my_f1",
            output="bio_tags",
            factory=lambda tokenizer, settings: MyOracle(tokenizer.eos_token_id),
            doc="my exact oracle for my span F1",
            exact=True,
        )

    Args:
        name: The value of `oracle=` (an identifier-like string: letters, digits, `_`, `-`, `.`).
        output: The kind of output it scores: "bio_tags" or "text".
        factory: `factory(tokenizer, settings) -> Oracle`: gets the run's tokenizer (the EOS and pad ids, the
            vocabulary) and its :class:`OracleSettings`, returns an object with the :class:`Oracle` interface.
        doc: One line (no line break) saying what the oracle is.
        exact: Whether the labels are exact (True) or found by a search (False).
        settings: The fields of :class:`OracleSettings` the factory reads (for the docs), e.g. `("lookahead",)`.
        replace: Replace an oracle already registered under `name` (else that is an error).

    Returns:
        The :class:`OracleSpec` registered.

    Raises:
        ValueError: On a bad name, output kind, factory, doc line or setting name, or a name already registered
            (without `replace`).
    """
    if not isinstance(name, str) or not name or not name.replace("-", "_").replace(".", "_").isidentifier():
        raise ValueError(f"oracle name = {name!r}; accepted: a non-empty string of letters, digits, '_', '-', '.'.")
    if name in ORACLES and not replace:
        raise ValueError(f"oracle {name!r} is already registered; pass replace=True to replace it.")
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output = {output!r}; accepted: {', '.join(repr(k) for k in OUTPUT_KINDS)}.")
    if not callable(factory):
        raise ValueError(f"factory = {factory!r}; accepted: a callable factory(tokenizer, settings) -> Oracle.")
    if not isinstance(doc, str) or not doc.strip() or "\n" in doc.strip():
        raise ValueError(f"doc = {doc!r}; accepted: one non-empty line.")
    if not isinstance(exact, bool):
        raise ValueError(f"exact = {exact!r}; accepted: True or False.")
    unknown = [s for s in settings if s not in SETTING_NAMES]
    if isinstance(settings, str) or unknown:
        raise ValueError(f"settings = {settings!r}; accepted: names among {', '.join(SETTING_NAMES)}.")
    spec = OracleSpec(name, output, factory, doc.strip(), exact, tuple(settings))
    ORACLES[name] = spec
    return spec


def get_oracle(name: str) -> OracleSpec:
    """The registration of the oracle called `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the registered names (and a close match).
    """
    if name not in ORACLES:
        close = difflib.get_close_matches(str(name), ORACLES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"oracle must be one of the registered oracles ({', '.join(ORACLES)}), got {name!r}{hint}.")
    return ORACLES[name]


def oracle_names(output: str | None = None, exact: bool | None = None) -> tuple[str, ...]:
    """The registered oracle names, in registration order; only those scoring `output` / of exactness `exact`."""
    if output is not None and output not in OUTPUT_KINDS:
        raise ValueError(f"output = {output!r}; accepted: {', '.join(repr(k) for k in OUTPUT_KINDS)}.")
    return tuple(
        name
        for name, spec in ORACLES.items()
        if (output is None or spec.output == output) and (exact is None or spec.exact == exact)
    )


def make_oracle(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    beam_size: int = 5,
    lookahead: int = 0,
    stop: str = "reference_length",
    whole_words: bool = True,
    metric: Any = None,
    metric_key: str | None = None,
    units: str = "metric",
) -> Oracle:
    """The oracle registered as `name`, for outputs tokenized by `tokenizer`.

    Args:
        name: A registered oracle (:data:`ORACLES`). Built in: `span_f1` / `span_f1_partial`: the exact oracles for
            BIO tag outputs (the tags are the BIO tokens of the tokenizer's vocabulary); `bleu`, `rouge2`: the beam
            search over whole completions (:class:`BeamOracle`); `rouge1`, `rougeL`: the exact oracles
            (:class:`ExactRougeOracle`).
        tokenizer: Gives the EOS and pad ids (and, for span F1, the tag tokens; for text, the word-start marks).
        beam_size: Beam size k of the searching oracles.
        lookahead: Free tokens h the searching oracles try before the aligned reference suffix (0: the best
            reference tail).
        stop: The text oracles' stop rule, "reference_length" or "metric" (:mod:`hf_seqobj.oracles.align`).
        whole_words: The text oracles start no word piece that the aligned reference does not continue.
        metric: The `evaluate` module of the `evaluate` oracle (registered by :mod:`hf_seqobj.metrics`).
        metric_key: Which number of that module's result is the score.
        units: What the text oracles score: "metric" (the ROUGE oracles: rouge-score's lowercased words, no
            punctuation; BLEU: ids) or "ids" (:mod:`hf_seqobj.oracles.units`).

    Returns:
        An oracle: `oracle(prefix_ids [B, T], reference_ids [B, M]) -> labels [B, T]` and
        `oracle.next_token(prefix_ids, prefix_lengths, reference_ids) -> [B]`.

    Raises:
        ValueError: On a name that is not registered, a bad setting, or a tokenizer without an EOS token.
    """
    spec = get_oracle(name)
    settings = OracleSettings(
        beam_size=beam_size,
        lookahead=lookahead,
        stop=stop,
        whole_words=whole_words,
        metric=metric,
        metric_key=metric_key,
        units=units,
    )
    if tokenizer.eos_token_id is None:
        raise ValueError("The oracles need the tokenizer's EOS token; this tokenizer has none.")
    return spec.factory(tokenizer, settings)
