"""Model cards for models trained with the hf_seqobj trainers (the README.md pushed to the Hub).

The trainers' `create_model_card` (called by `Trainer.push_to_hub`) and `save_model` (so every checkpoint directory
has one too) write a card built here with `huggingface_hub.ModelCard.from_template`: metadata (`ModelCardData`:
base model, data set, library, tags `hf_seqobj` / objective / task) and a text with the task and data, the objective
and its settings (the fields of that objective only), the final metrics, the framework versions and the papers to
cite.

An objective's settings, papers and description come from its registration
(:func:`hf_seqobj.objectives.register_objective`); an oracle's doc line from its registration
(:func:`hf_seqobj.oracles.register_oracle`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sys
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

from hf_seqobj.objectives.base import get_objective
from hf_seqobj.oracles import ORACLES


if TYPE_CHECKING:
    from transformers import Trainer


LIBRARIES = ("hf_seqobj", "transformers", "torch", "accelerate", "peft", "datasets", "tokenizers", "huggingface_hub")

TEMPLATE = """---
{{ card_data }}
---

# Model card for {{ model_name }}

{{ intro }}
It was trained with hf_seqobj's `{{ trainer_name }}` and the `{{ objective }}` objective{{ objective_description }}.
{% if adapter %}
It is a LoRA adapter ([PEFT](https://github.com/huggingface/peft)) for its base model.
{% endif %}
## Quick start

```python
{{ quick_start }}
```

## Training procedure

Objective: `{{ objective }}`{% if settings %}, with these settings:

| setting | value |
|---|---|
{% for key, value in settings.items() %}| `{{ key }}` | `{{ value }}` |
{% endfor %}{% else %} (no settings of its own).
{% endif %}{% if oracle %}
Oracle: `{{ oracle }}`, {{ oracle_doc }} (scores {{ oracle_output }}).
{% endif %}
Training: {{ training }}.

## Results

{% if metrics %}| metric | value |
|---|---|
{% for key, value in metrics.items() %}| {{ key }} | {{ value }} |
{% endfor %}{% else %}No evaluation has been run yet.
{% endif %}
## Framework versions

{% for name, version in versions.items() %}- {{ name }}: {{ version }}
{% endfor %}
## Citations
{% if papers %}
The `{{ objective }}` objective comes from:

```bibtex
{% for paper in papers %}{{ paper }}
{% if not loop.last %}
{% endif %}{% endfor %}```
{% else %}
Teacher forcing needs no citation beyond the libraries'.
{% endif %}"""


def objective_papers(objective: str) -> list[str]:
    """BibTeX entries of the papers behind `objective`, as registered."""
    return list(get_objective(objective).papers)


def objective_settings(args: Any) -> dict[str, Any]:
    """The values in `args` of the settings of `args.objective` only (e.g. dagger's oracle and beta, not ss_k)."""
    classes = get_objective(args.objective).settings
    return {f.name: getattr(args, f.name) for klass in classes for f in dataclasses.fields(klass)}


def oracle_line(settings: dict[str, Any]) -> dict[str, str]:
    """The card's oracle fields (name, doc line, output kind) when the settings name a registered oracle, else {}."""
    spec = ORACLES.get(settings.get("oracle")) if isinstance(settings.get("oracle"), str) else None
    if spec is None:
        return {}
    kinds = {"bio_tags": "BIO tag sequences", "text": "text"}
    return {"oracle": spec.name, "oracle_doc": spec.doc, "oracle_output": kinds.get(spec.output, spec.output)}


def final_metrics(log_history: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The last logged value of each evaluation metric and the training loss, plus `extra` (e.g. test metrics).

    Runtimes and throughputs are left out; floats are rounded to 4 decimals.
    """
    metrics: dict[str, Any] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") or key == "train_loss":
                metrics[key] = value
    metrics.update(extra or {})
    skipped = ("_runtime", "_per_second", "_steps_per_second", "_samples_per_second")
    return {
        key: round(value, 4) if isinstance(value, float) else value
        for key, value in metrics.items()
        if not key.endswith(skipped) and isinstance(value, int | float)
    }


def library_versions() -> dict[str, str]:
    """Installed versions of hf_seqobj and the libraries it trains with."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            versions[name] = getattr(module, "__version__", "not installed")
    return versions


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repository id rather than a local path or a built-in data set."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name == "synthetic" or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _base_model(model) -> str | None:
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        return next(iter(peft_config.values())).base_model_name_or_path
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


AUTO_CLASSES = (
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForSequenceClassification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "AutoModelForTokenClassification"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "AutoModelForQuestionAnswering"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
)
"""Transformers' auto classes the model card's quick start may load a model with (by the model's class)."""

PEFT_AUTO_CLASSES = {
    "AutoModelForCausalLM": "AutoPeftModelForCausalLM",
    "AutoModelForSeq2SeqLM": "AutoPeftModelForSeq2SeqLM",
    "AutoModelForSequenceClassification": "AutoPeftModelForSequenceClassification",
    "AutoModelForTokenClassification": "AutoPeftModelForTokenClassification",
    "AutoModelForQuestionAnswering": "AutoPeftModelForQuestionAnswering",
}
"""The PEFT auto class of an adapter for a model of each Transformers auto class (others: `AutoPeftModel`)."""


def auto_class_name(model: Any) -> str | None:
    """The Transformers auto class whose mapping holds `model`'s class (e.g. "AutoModelForSeq2SeqLM"), else None."""
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    for mapping_name, auto_class in AUTO_CLASSES:
        for value in getattr(modeling_auto, mapping_name, {}).values():
            if name in ([value] if isinstance(value, str) else value):
                return auto_class
    return None


def quick_start(model: Any, repo: str, processing_class: Any = None) -> str:
    """The Python code that loads a trained model (and its tokenizer or processor) from `repo`.

    An adapter loads with PEFT's auto class, a Transformers model with the auto class of its kind (else its own
    class's `from_pretrained`), and a plain `torch.nn.Module` by building it and loading the saved weights.
    """
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    imports: list[str] = []
    code: list[str] = []
    if isinstance(model, PeftModel):
        auto_class = PEFT_AUTO_CLASSES.get(auto_class_name(model.get_base_model()) or "", "AutoPeftModel")
        imports.append(f"from peft import {auto_class}")
        code.append(f'model = {auto_class}.from_pretrained("{repo}")  # or .merge_and_unload() for a plain model')
    elif (auto_class := auto_class_name(model)) is not None:
        imports.append(f"from transformers import {auto_class}")
        code.append(f'model = {auto_class}.from_pretrained("{repo}")')
    elif isinstance(model, PreTrainedModel):
        imports.append(f"from {type(model).__module__} import {type(model).__name__}")
        code.append(f'model = {type(model).__name__}.from_pretrained("{repo}")')
    else:
        imports += [
            "from safetensors.torch import load_model",
            f"from {type(model).__module__} import {type(model).__name__}",
        ]
        code += [f"model = {type(model).__name__}()  # with the arguments it was trained with"]
        code += [f'load_model(model, "{repo}/model.safetensors")']
    if processing_class is not None:
        tokenizer = isinstance(processing_class, PreTrainedTokenizerBase)
        auto, variable = ("AutoTokenizer", "tokenizer") if tokenizer else ("AutoProcessor", "processor")
        imports.append(f"from transformers import {auto}")
        code.append(f'{variable} = {auto}.from_pretrained("{repo}")')
    return "\n".join([*imports, "", *code])


def trainer_model_card(
    trainer: Trainer,
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    task: str | None = None,
    tags: str | list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    finetuned_from: str | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of `trainer`'s model.

    Args:
        trainer: A `SeqObjTrainer` / `SeqObjSeq2SeqTrainer` (or a trainer with their argument classes).
        model_name: Defaults to the Hub repository's name, else the output directory's name.
        dataset_name: A Hub data set name, a local file or directory, or "synthetic"; defaults to the trainer's
            `dataset_name` attribute.
        task: ner, translation or summarization; defaults to the trainer's `task_name` attribute.
        tags: Tags added to hf_seqobj, the objective and the task.
        metrics: Metrics shown besides the last logged evaluation metrics (e.g. test metrics), taking precedence.
        finetuned_from: The base model; defaults to the model's own `_name_or_path` (for an adapter, the base
            model the adapter was made for).
        language: The card's `language` metadata.
        license: The card's `license` metadata.
    """
    from peft import PeftModel

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    adapter = isinstance(model, PeftModel)
    hub_model_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    if model_name is None:
        model_name = (hub_model_id or os.path.abspath(args.output_dir)).replace(os.sep, "/").split("/")[-1]
    dataset_name = dataset_name if dataset_name is not None else getattr(trainer, "dataset_name", None)
    task = task if task is not None else getattr(trainer, "task_name", None)
    base_model = finetuned_from or _base_model(model)
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    hub_datasets = [name for name in datasets if _is_hub_id(name)]
    tag_list = ["hf_seqobj", args.objective, *([task] if task else []), *(["peft", "lora"] if adapter else [])]
    tag_list += [tags] if isinstance(tags, str) else list(tags or [])
    tag_list += list(getattr(model, "model_tags", None) or [])
    tag_list = list(dict.fromkeys(tag_list))
    card_data = ModelCardData(
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        language=language,
        license=license,
        library_name="peft" if adapter else "transformers",
        model_name=model_name,
        tags=tag_list,
    )
    if not datasets:
        data = None
    elif datasets == ["synthetic"]:
        data = "the synthetic NER data that hf_seqobj generates (`dataset_name: synthetic`)"
    else:
        data = ", ".join(
            f"[{name}](https://huggingface.co/datasets/{name})" if name in hub_datasets else f"`{name}`"
            for name in datasets
        )
    if base_model:
        base = f"[{base_model}](https://huggingface.co/{base_model})" if _is_hub_id(base_model) else f"`{base_model}`"
        intro = f"This model is a fine-tuned version of {base}"
    else:
        intro = "This model was trained"
    intro += (f" for the `{task}` task" if task else "") + (f" on {data}" if data else "") + "."
    state = trainer.state
    training = f"{state.global_step} optimizer steps"
    training += f" ({round(state.epoch, 2)} epochs)" if state.epoch else ""
    training += f", learning rate {args.learning_rate}, batch size {args.per_device_train_batch_size} per device"
    if args.gradient_accumulation_steps > 1:
        training += f" x {args.gradient_accumulation_steps} accumulation steps"
    training += f", seed {args.seed}"
    description = get_objective(args.objective).description or None
    settings = objective_settings(args)
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        intro=intro,
        trainer_name=type(trainer).__name__,
        objective=args.objective,
        objective_description=f" ({description})" if description else "",
        adapter=adapter,
        quick_start=quick_start(model, hub_model_id or args.output_dir, getattr(trainer, "processing_class", None)),
        settings=settings,
        **oracle_line(settings),
        training=training,
        metrics=final_metrics(trainer.state.log_history, metrics),
        versions=library_versions(),
        papers=objective_papers(args.objective),
    )
