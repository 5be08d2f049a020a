"""Model, data and run settings of `hf-seqobj train` (the non-training part of a YAML config / command line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hf_seqobj.modeling import ARCHITECTURES, MODEL_SIZES, TOKENIZER_TYPES
from hf_seqobj.tasks import TASKS


MODEL_SIZE_NAMES = tuple(MODEL_SIZES)
TASK_NAMES = tuple(TASKS)


@dataclass
class ModelArguments:
    """Which model to train: a checkpoint (Hub name or local path) or a small model built offline from a config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A Hub model name (gpt2, facebook/bart-base, t5-small) or a local checkpoint directory. Leave "
            "unset to build a model from scratch with `architecture` and `model_size`."
        },
    )
    architecture: Literal[ARCHITECTURES] | None = field(
        default=None,
        metadata={"help": "Architecture of a model built from scratch (exclusive with model_name_or_path)."},
    )
    model_size: Literal[MODEL_SIZE_NAMES] = field(
        default="tiny",
        metadata={
            "help": "Size of a model built from scratch: "
            + "; ".join(f"{name}: d_model {d}, {n} layers" for name, (d, n, _, _) in MODEL_SIZES.items())
            + "."
        },
    )
    tokenizer_type: Literal[TOKENIZER_TYPES] | None = field(
        default=None,
        metadata={
            "help": "Tokenizer trained for a model built from scratch; None uses the task's default (wordlevel for "
            "ner and arithmetic, bpe otherwise)."
        },
    )
    vocab_size: int = field(default=8000, metadata={"help": "Largest vocabulary of a tokenizer trained from scratch."})
    min_frequency: int = field(
        default=1, metadata={"help": "Fewest occurrences for a word or merge to enter a trained vocabulary."}
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter (PEFT) instead of every weight. The tokens added to the tokenizer beyond "
            "its base vocabulary (tags, <sep>) train too (LoRA's trainable_token_indices); the output directory "
            "holds the adapter (adapter_config.json, adapter_model.safetensors)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (use_peft)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha: the update is scaled by lora_alpha / lora_r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on LoRA's input, in [0, 1)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names that LoRA adapts; None: c_attn c_proj (GPT-2, Conv1D layers, fan_in_fan_out), "
            "q_proj v_proj (BART), q v (T5), all-linear for other architectures. 'all-linear' adapts every linear "
            "layer but the output layer."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter, e.g. lm_head. Naming an embedding module "
            "(wte, shared, embed_tokens, lm_head) trains all its rows instead of only the added tokens' rows."
        },
    )

    def __post_init__(self):
        if self.model_name_or_path is None and self.architecture is None:
            raise ValueError("Set model_name_or_path (a Hub name or local path) or architecture (to build one).")
        if self.model_name_or_path is not None and self.architecture is not None:
            raise ValueError(
                f"Set only one of model_name_or_path ({self.model_name_or_path!r}) and architecture "
                f"({self.architecture!r}): a checkpoint already has its architecture."
            )
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}.")
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"model_size must be one of {tuple(MODEL_SIZES)}, got {self.model_size!r}.")
        if self.tokenizer_type is not None and self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"tokenizer_type must be one of {TOKENIZER_TYPES}, got {self.tokenizer_type!r}.")
        self._validate_peft()

    def _validate_peft(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}.")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        for name in ("lora_target_modules", "lora_modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str):  # a YAML string such as `all-linear`
                value = [value]
                setattr(self, name, value)
            if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
                raise ValueError(f"{name} must be None or a non-empty list of module names, got {value!r}.")
            if value is not None and not self.use_peft:
                raise ValueError(f"{name} ({value!r}) is a LoRA setting: set use_peft to train an adapter.")


@dataclass
class DataArguments:
    """Which task and data to train and evaluate on."""

    task: Literal[TASK_NAMES] = field(default="ner", metadata={"help": "The task (its data format and metrics)."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset name or a local dataset directory (load_dataset / save_to_disk layout), or "
            "'synthetic' for the data set the package generates (ner only). Exclusive with the *_file fields."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data file. ner: CoNLL format (4 columns TOKEN POS CHUNK NER, or 2 columns TOKEN TAG). "
            "translation: the path prefix of aligned files PREFIX.SRC_LANG / PREFIX.TGT_LANG. summarization and "
            "text2text: .jsonl, .json or .csv."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, as train_file."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, as train_file."})
    source_lang: str = field(default="en", metadata={"help": "translation: the source language code."})
    target_lang: str = field(default="de", metadata={"help": "translation: the target language code."})
    source_column: str | None = field(
        default=None,
        metadata={
            "help": "summarization and text2text: the source text column; None: 'document' (summarization), "
            "'prompt' (text2text, as TRL's prompt-completion data sets name it)."
        },
    )
    target_column: str | None = field(
        default=None,
        metadata={
            "help": "summarization and text2text: the target text column; None: 'summary' (summarization), "
            "'completion' (text2text)."
        },
    )
    text2text_metrics: list[str] = field(
        default_factory=lambda: ["bleu", "chrf", "rouge", "exact_match"],
        metadata={
            "help": "text2text: the metrics of the generated texts, some of bleu and chrf (sacrebleu, corpus "
            "level), rouge (rouge-score ROUGE-1/2/L/Lsum F, stemmed), exact_match (whitespace-normalised)."
        },
    )
    evaluate_metric: str | None = field(
        default=None,
        metadata={
            "help": "An evaluate module scored beside the task's own metrics at every evaluation with generation: "
            "a packaged one (span_f1, bleu_chrf, rouge, token_bleu, token_rouge), the path of a local module (a .py "
            "script, or a folder NAME holding NAME.py), or in Python a loaded evaluate.EvaluationModule; never "
            "fetched from the Hub. It gets the decoded predictions and references (tag lists for ner) and its "
            "numbers are reported as eval_NAME_KEY / test_NAME_KEY (NAME: the module's name; see docs/metrics.md)."
        },
    )
    tokens_column: str = field(default="tokens", metadata={"help": "ner (Hub-style data): the words column."})
    tags_column: str = field(default="ner_tags", metadata={"help": "ner (Hub-style data): the tags column."})
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every source, e.g. 'translate English to German: ' for T5."}
    )
    max_source_length: int = field(default=256, metadata={"help": "Most tokens in a source."})
    max_target_length: int = field(default=256, metadata={"help": "Most tokens in a target (EOS included)."})
    truncate_long_examples: bool = field(
        default=False,
        metadata={
            "help": "Truncate sources and targets longer than the limits (the count is logged). When False, a "
            "longer example is an error that names it."
        },
    )
    skip_invalid_examples: bool = field(
        default=False,
        metadata={
            "help": "Drop examples that are malformed (an empty or missing text, a tag that is not BIO, tokens and "
            "tags of different lengths) and log how many and which; when False, the first one is an error that "
            "names its file and line (or data set, split and row)."
        },
    )
    save_eval_predictions: bool = field(
        default=False,
        metadata={
            "help": "Write the final validation evaluation's decoded texts to eval_predictions.jsonl beside "
            "eval_results.json (one JSON object a line: source, prediction, reference, eos_reached), as "
            "test_predictions.jsonl always holds the test split's."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation and test examples."}
    )
    synthetic_train_size: int = field(default=2000, metadata={"help": "synthetic data: training sentences."})
    synthetic_eval_size: int = field(default=300, metadata={"help": "synthetic data: validation and test sentences."})
    synthetic_seed: int = field(default=0, metadata={"help": "synthetic data: the seed that generates it."})
    arithmetic_base: int = field(default=10, metadata={"help": "arithmetic: the number base, 2 to 36."})
    arithmetic_max_digits: int = field(default=3, metadata={"help": "arithmetic: the most digits of an operand."})
    arithmetic_operations: str = field(
        default="+-", metadata={"help": "arithmetic: the operations that occur, a string of '+' and '-'."}
    )
    lm_prompt_words: int = field(
        default=8, metadata={"help": "lm: the words of each document that form the prompt (the rest is the target)."}
    )

    def __post_init__(self):
        from hf_seqobj.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r}; available tasks: {', '.join(sorted(TASKS))}.")
        files = [name for name in ("train_file", "validation_file", "test_file") if getattr(self, name)]
        if self.dataset_name is None and not files:
            raise ValueError("Set dataset_name (a Hub name, a local dataset or 'synthetic') or train_file.")
        if self.dataset_name is not None and files:
            raise ValueError(f"Set either dataset_name ({self.dataset_name!r}) or the data files ({files}), not both.")
        if self.dataset_name == "synthetic" and self.task not in ("ner", "arithmetic"):
            raise ValueError(
                f"dataset_name 'synthetic' exists for the ner and arithmetic tasks only, not for {self.task!r}."
            )
        if self.evaluate_metric is not None:
            from hf_seqobj.metrics import check_metric_source

            check_metric_source(self.evaluate_metric)
        if not 2 <= self.arithmetic_base <= 36:
            raise ValueError(f"arithmetic_base must be in [2, 36], got {self.arithmetic_base}.")
        if not self.arithmetic_operations or set(self.arithmetic_operations) - {"+", "-"}:
            raise ValueError(f"arithmetic_operations must be made of '+' and '-', got {self.arithmetic_operations!r}.")
        for name in (
            "max_source_length",
            "max_target_length",
            "synthetic_train_size",
            "synthetic_eval_size",
            "arithmetic_max_digits",
            "lm_prompt_words",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}.")


@dataclass
class RunArguments:
    """How `hf-seqobj train` treats its output folder and where it runs."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an output_dir that already holds a run: first delete that run's files (model, "
            "checkpoints, results, run settings). Without it such an output_dir is an error; continue a run "
            "instead with resume_from_checkpoint."
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "Run under `accelerate launch` with this config: a file, or a packaged one (cpu_2proc, "
            "single_gpu, multi_gpu, fsdp, fsdp1, zero2, zero3). Every other `accelerate launch` flag given on the "
            "command line (--num_processes, --main_process_port, --gpu_ids, --mixed_precision, ...) goes to "
            "accelerate launch."
        },
    )


@dataclass
class EvaluateArguments:
    """What `hf-seqobj evaluate` scores."""

    split: Literal["train", "validation", "test"] = field(
        default="test", metadata={"help": "The split to score the model on."}
    )
