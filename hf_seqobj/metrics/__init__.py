"""The package's metrics as `evaluate` modules, and the glue between `evaluate` modules and runs (docs/metrics.md).

The modules are scripts shipped inside the package (`hf_seqobj/metrics/modules/NAME/NAME.py`), loaded with
`evaluate.load` on their path, offline: nothing is fetched from the Hub.

- `span_f1`: seqeval span F1 / precision / recall (exact, micro), partial-match span F1, F1 per type, as the `ner`
  task reports them;
- `bleu_chrf`: sacrebleu corpus BLEU and chrF (13a tokenisation), as the `translation` task reports them;
- `rouge`: rouge-score ROUGE-1/2/L/Lsum F-measure x100 with stemming, as the `summarization` task reports them;
- `token_bleu`, `token_rouge`: the sentence metrics on token ids that the DAgger oracles, RAML and interpolation
  optimise (`hf_seqobj.rewards`): smoothed sentence BLEU, ROUGE-1/2/L F, in [0, 1].

- the oracle `evaluate` (`oracle: evaluate`, `oracle_metric: NAME_OR_PATH`) and :func:`register_evaluate_oracle`:
  an `evaluate` module as the sentence metric of a DAgger oracle, scored on decoded candidates.

`evaluate` is imported only when a function here needs it.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hf_seqobj.rewards import compact_ids, score


if TYPE_CHECKING:
    from evaluate import EvaluationModule
    from transformers import PreTrainedTokenizerBase


__all__ = [
    "CITATIONS",
    "EVALUATE_ORACLE",
    "METRIC_MODULES",
    "check_metric_source",
    "load_metric",
    "metric_source",
    "module_scores",
    "path",
    "register_evaluate_oracle",
    "text_metric_scorer",
    "token_id_features",
    "token_scores",
]

MODULES_DIR = Path(__file__).resolve().parent / "modules"
"""Where the packaged module scripts are: `MODULES_DIR / NAME / NAME.py`."""

METRIC_MODULES = {
    "span_f1": "seqeval span F1 / precision / recall (exact), partial-match span F1, F1 per type (ner)",
    "bleu_chrf": "sacrebleu corpus BLEU and chrF, 13a tokenisation (translation)",
    "rouge": "rouge-score ROUGE-1/2/L/Lsum F-measure x100, stemmed (summarization)",
    "token_bleu": "smoothed sentence BLEU on token ids, in [0, 1] (the BLEU oracle's metric)",
    "token_rouge": "ROUGE-1/2/L F-measure on token ids, in [0, 1] (the ROUGE oracles' metric)",
}
"""The packaged `evaluate` modules: name -> what it computes."""

CITATIONS = {
    "seqeval": """\
@misc{seqeval,
  title={{seqeval}: A Python framework for sequence labeling evaluation},
  author={Hiroki Nakayama},
  year={2018},
  url={https://github.com/chakki-works/seqeval}
}
""",
    "sacrebleu": """\
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation: Research Papers},
  year={2018},
  pages={186--191}
}
""",
    "rouge": """\
@inproceedings{lin-2004-rouge,
  title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  year={2004},
  pages={74--81}
}
""",
    "sentence_bleu": """\
@inproceedings{chen-cherry-2014-systematic,
  title={A Systematic Comparison of Smoothing Techniques for Sentence-Level {BLEU}},
  author={Chen, Boxing and Cherry, Colin},
  booktitle={Proceedings of the Ninth Workshop on Statistical Machine Translation},
  year={2014},
  pages={362--367}
}
""",
}
"""The BibTeX entries of the packaged modules' `citation`."""


def token_id_features():
    """The `datasets.Features` of the token id modules: `predictions` and `references`, lists of int64 ids."""
    import datasets

    ids = datasets.Sequence(datasets.Value("int64"))
    return datasets.Features({"predictions": ids, "references": ids})


def path(name: str) -> str:
    """The folder of the packaged `evaluate` module `name`, for `evaluate.load(path(name))`.

    Raises:
        ValueError: `name` is not one of `METRIC_MODULES`.
    """
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown packaged metric {name!r}; accepted: {', '.join(METRIC_MODULES)}.")
    return str(MODULES_DIR / name)


def _local_script(source: str) -> Path | None:
    """The script of a local `evaluate` module (a `.py` file, or a folder NAME holding NAME.py), or None."""
    candidate = Path(source).expanduser()
    if candidate.is_file() and candidate.suffix == ".py":
        return candidate
    if candidate.is_dir() and (candidate / f"{candidate.resolve().name}.py").is_file():
        return candidate / f"{candidate.resolve().name}.py"
    return None


def check_metric_source(source: Any, setting: str = "evaluate_metric") -> None:
    """Checks that `source` names a metric :func:`load_metric` can load offline, without loading it.

    Raises:
        ValueError: naming `setting`, the value and what is accepted.
    """
    if isinstance(source, str):
        if source in METRIC_MODULES or _local_script(source) is not None:
            return
        raise ValueError(
            f"{setting} {source!r} is neither a packaged metric ({', '.join(METRIC_MODULES)}) nor a local evaluate "
            "module (a .py script, or a folder NAME holding NAME.py); Hub names are not loaded."
        )
    if not (callable(getattr(source, "compute", None)) and isinstance(getattr(source, "name", None), str)):
        raise ValueError(
            f"{setting} {source!r} is not an evaluate module; accepted: a packaged metric name, a local module path "
            "or a loaded evaluate.EvaluationModule."
        )


def load_metric(metric: str | EvaluationModule, **kwargs: Any) -> EvaluationModule:
    """An `evaluate` module, loaded offline: a packaged one by name, a local one by path, or `metric` itself.

    Args:
        metric: A name of `METRIC_MODULES` (e.g. "span_f1"), the path of a local module (a `.py` script, or a folder
            NAME holding NAME.py), or an already loaded `evaluate.EvaluationModule` (returned as it is).
        kwargs: Passed to `evaluate.load` (`config_name`, `experiment_id`, ...); `keep_in_memory` defaults to True
            (no cache files are written).

    Raises:
        ValueError: `metric` names neither a packaged nor a local module (Hub names are refused: nothing is
            fetched), or its script cannot be loaded; the message names it.
    """
    check_metric_source(metric, "metric")
    if not isinstance(metric, str):
        return metric
    import evaluate

    location = path(metric) if metric in METRIC_MODULES else str(Path(metric).expanduser().resolve())
    kwargs.setdefault("keep_in_memory", True)
    try:
        return evaluate.load(location, **kwargs)
    except (ImportError, OSError, SyntaxError, TypeError, ValueError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"metric {metric!r} could not be loaded as an evaluate module: {message}") from error


def metric_source(metric: str | EvaluationModule) -> str:
    """Where a metric can be loaded from again: a name or path as it is, or the script of a loaded module (the copy
    `evaluate.load` imported it from)."""
    if isinstance(metric, str):
        return metric if metric in METRIC_MODULES else str(Path(metric).expanduser().resolve())
    return inspect.getfile(type(metric))


def _flatten(results: Mapping[str, Any], prefix: str) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}_{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        elif isinstance(value, numbers.Number) and not isinstance(value, bool | complex):
            flat[name] = float(value)
        elif isinstance(value, Sequence | torch.Tensor) and not isinstance(value, str):
            values = list(value.tolist() if isinstance(value, torch.Tensor) else value)
            if all(isinstance(v, numbers.Number) and not isinstance(v, bool | complex) for v in values):
                flat.update({f"{name}_{index}": float(v) for index, v in enumerate(values)})
    return flat


def module_scores(
    module: EvaluationModule, predictions: list[str] | list[list[str]], references: list[str] | list[list[str]]
) -> dict[str, float]:
    """The numbers of `module.compute(predictions=..., references=...)`, as flat float metrics named
    `{module.name}_{key}`.

    A nested dictionary adds its keys (`seqeval`'s `{"PER": {"f1": ...}}` gives `seqeval_PER_f1`), a list of numbers
    its indices (`sacrebleu`'s `precisions` gives `sacrebleu_precisions_0` to `_3`); strings and other values are
    left out. The Trainer then reports them as `eval_{module.name}_{key}` (`test_...` for the test split).
    """
    results = module.compute(predictions=predictions, references=references)
    return _flatten(results or {}, module.name)


def _padded(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, T] token ids from B lists of ids, -100 behind each (-100 is ignored by the metrics)."""
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return ids


def token_scores(
    metrics: Sequence[str],
    predictions: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    use_aggregator: bool = True,
) -> dict[str, float | list[float]]:
    """Sentence metrics of `hf_seqobj.rewards` ("bleu", "rouge1", "rouge2", "rougeL") of token id lists, in [0, 1]:
    the mean over pairs (0.0 for none) or, without `use_aggregator`, each pair's score (the `token_bleu` and
    `token_rouge` modules).

    Raises:
        ValueError: an unknown metric, counts that differ, or a negative id other than -100.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; they must be as many.")
    hyps, refs = _padded(predictions), _padded(references)
    results: dict[str, float | list[float]] = {}
    for metric in metrics:
        values = score(metric, hyps, refs, eos_token_id=eos_token_id, pad_token_id=pad_token_id).tolist()
        results[metric] = values if not use_aggregator else sum(values) / len(values) if values else 0.0
    return results


def text_metric_scorer(
    module: str | EvaluationModule,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    key: str | None = None,
    decode: Callable[[list[int]], str] | None = None,
    compute_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[Any, Any], torch.Tensor]:
    """A function that scores candidate outputs against references with an `evaluate` module, one score per pair.

    The returned `score(candidates, references)` takes two batches of the same size B, each either token ids (a
    [B, T] tensor or B lists of ids, as `labels` hold them: no decoder start token; a row ends before the
    tokenizer's EOS, and -100 and padding are ignored) or already decoded texts, and returns a [B] float64 tensor:
    the module's `key` for each candidate against its reference, as the module reports it (x100 for the packaged
    `rouge` and `bleu_chrf`, in [0, 1] for `token_bleu` / `token_rouge`).

    Batched: a module whose `_compute` takes `use_aggregator` (evaluate's `rouge`, the packaged `rouge`,
    `token_bleu` and `token_rouge`) is called once for the whole batch with `use_aggregator=False` and must return
    one value per pair; any other module is called once per pair (a corpus metric of one sentence).

    Args:
        module: An `evaluate` module, or what :func:`load_metric` loads (a packaged name or a local path).
        tokenizer: Decodes token ids (`skip_special_tokens=True`, no clean-up, stripped); None when the inputs are
            always texts.
        key: Which number of the module's result is the score; None: the only number it returns.
        decode: Turns one row of ids (EOS, -100 and padding already removed) into text instead of the tokenizer
            (e.g. the `ner` task's tag decoding).
        compute_kwargs: More keyword arguments of every `compute` call.

    Raises:
        ValueError: (when called) batches of different sizes, ids without a tokenizer, a result without `key`, or
            several numbers and no `key`; the message names the keys the module returned.
    """
    module = load_metric(module)
    extra = dict(compute_kwargs or {})
    batched = "use_aggregator" in inspect.signature(module._compute).parameters
    if batched:
        extra["use_aggregator"] = False

    def to_texts(batch: Any, name: str) -> list[str]:
        if isinstance(batch, Sequence) and all(isinstance(item, str) for item in batch):
            return list(batch)
        if tokenizer is None and decode is None:
            raise ValueError(f"{name} holds token ids but no tokenizer was given to decode them; pass texts instead.")
        ids = batch.long() if isinstance(batch, torch.Tensor) else _padded(batch)
        eos = getattr(tokenizer, "eos_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        tokens, lengths = compact_ids(ids, eos, pad)
        rows = [tokens[index, :length].tolist() for index, length in enumerate(lengths.tolist())]
        if decode is not None:
            return [decode(row) for row in rows]
        return [
            tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip() for row in rows
        ]

    def pick(result: Mapping[str, Any]) -> Any:
        numbers_found = [name for name, value in result.items() if not isinstance(value, str | Mapping)]
        if key is None and len(numbers_found) != 1:
            raise ValueError(
                f"module {module.name!r} returns {numbers_found}, not one number: choose the score with key=."
            )
        chosen = key if key is not None else numbers_found[0]
        if chosen not in result:
            raise ValueError(f"module {module.name!r} returns no {chosen!r}; it returns {list(result)}.")
        return result[chosen]

    def score(candidates: Any, references: Any) -> torch.Tensor:
        predicted, reference = to_texts(candidates, "candidates"), to_texts(references, "references")
        if len(predicted) != len(reference):
            raise ValueError(f"{len(predicted)} candidates for {len(reference)} references; they must be as many.")
        if not predicted:
            return torch.zeros(0, dtype=torch.float64)
        if batched:
            values = pick(module.compute(predictions=predicted, references=reference, **extra))
            values = values.tolist() if hasattr(values, "tolist") else values
            if isinstance(values, numbers.Number):
                values = [values]
            if len(values) != len(predicted):
                raise ValueError(
                    f"module {module.name!r} returned {len(values)} values with use_aggregator=False for "
                    f"{len(predicted)} pairs; it must return one per pair."
                )
        else:
            values = [
                pick(module.compute(predictions=[p], references=[r], **extra)) for p, r in zip(predicted, reference)
            ]
        result = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if not torch.isfinite(result).all():
            bad = next(i for i, v in enumerate(result.tolist()) if not math.isfinite(v))
            raise ValueError(f"module {module.name!r} scored pair {bad} as {values[bad]!r}, not a finite number.")
        return result

    return score


# ----------------------------------------------------------------------------------------------------------------
# An `evaluate` module as a DAgger oracle's sentence metric
# ----------------------------------------------------------------------------------------------------------------

EVALUATE_ORACLE = "evaluate"
"""The registered oracle that scores candidates with an `evaluate` module (`oracle: evaluate` with
`oracle_metric: NAME_OR_PATH`)."""

_ORACLE_SETTINGS = ("beam_size", "lookahead", "stop", "whole_words", "metric", "metric_key")


def evaluate_oracle_factory(module: str | EvaluationModule | None = None, key: str | None = None):
    """The factory (for :func:`hf_seqobj.oracles.register_oracle`) of a sentence-metric oracle that decodes each
    whole candidate output and scores it against its decoded reference with an `evaluate` module
    (:func:`text_metric_scorer`; the search is :class:`hf_seqobj.oracles.SentenceMetricOracle`'s).

    Args:
        module: The module (packaged name, local path or loaded module); None: the one the settings name
            (`OracleSettings.metric`, DAgger's `oracle_metric`).
        key: Which number of the module's result is the score; None: the settings' `metric_key`, else its only
            number.
    """
    from hf_seqobj.oracles import SentenceMetricOracle
    from hf_seqobj.oracles.builtin import text_oracle_arguments

    def factory(tokenizer: PreTrainedTokenizerBase, settings) -> SentenceMetricOracle:
        source = module if module is not None else settings.metric
        if source is None:
            raise ValueError(
                f"oracle {EVALUATE_ORACLE!r} needs oracle_metric: a packaged module ({', '.join(METRIC_MODULES)}) "
                "or the path of a local evaluate module."
            )
        scorer = text_metric_scorer(source, tokenizer, key=key if key is not None else settings.metric_key)

        def score_fn(candidates: list[list[int]], references: list[list[int]]) -> list[float]:
            return scorer(candidates, references).tolist()

        return SentenceMetricOracle(
            score_fn,
            batched=True,
            beam_size=settings.beam_size,
            lookahead=settings.lookahead,
            name=f"evaluate:{metric_source(source) if not isinstance(source, str) else source}",
            **text_oracle_arguments(tokenizer, settings),
        )

    return factory


def register_evaluate_oracle(
    name: str, module: str | EvaluationModule, *, key: str | None = None, doc: str | None = None, replace: bool = False
):
    """Registers an oracle named `name` whose sentence metric is the `evaluate` module `module` on decoded text.

        from hf_seqobj.metrics import register_evaluate_oracle

        register_evaluate_oracle("my_f1", "path/to/my_f1.py", key="f1")  # then oracle="my_f1"

    From a config, without Python: `oracle: evaluate` and `oracle_metric: path/to/my_f1.py` (`oracle_metric_key`).

    Args:
        name: The value of `oracle=` that selects it.
        module: A packaged name, a local path or a loaded `EvaluationModule` (loaded now, offline).
        key: Which number of the module's result is the score (None: its only number).
        doc: One line for docs and model cards (default: names the module).
        replace: Replace an oracle already registered under `name`.
    """
    from hf_seqobj.oracles import register_oracle

    loaded = load_metric(module)
    return register_oracle(
        name,
        output="text",
        factory=evaluate_oracle_factory(loaded, key),
        doc=doc or f"the sentence metric of the evaluate module {loaded.name!r} on decoded candidates (searched)",
        exact=False,
        settings=_ORACLE_SETTINGS[:4],
        replace=replace,
    )


def _register_builtin_evaluate_oracle() -> None:
    from hf_seqobj.oracles import ORACLES, register_oracle

    if EVALUATE_ORACLE not in ORACLES:
        register_oracle(
            EVALUATE_ORACLE,
            output="text",
            factory=evaluate_oracle_factory(),
            doc="the sentence metric of an evaluate module (oracle_metric: a packaged name or local path) on "
            "decoded candidates, searched as the BLEU oracle is",
            exact=False,
            settings=_ORACLE_SETTINGS,
        )


_register_builtin_evaluate_oracle()
