"""Drop-in: with the default objective every model the stock Trainer trains trains the same with ours.

In the spirit of transformers' `tests/trainer`: each test runs the stock class and ours side by side on the same
model, data and seed, and compares the logged losses, the final parameters, the keys of the logs and metrics and the
files of each checkpoint (our model card, README.md, excepted). The one deliberate difference, BART / T5 under
gradient accumulation (their loss ignores `num_items_in_batch`, so the stock Trainer mis-scales it), is tested here
too: stock is shown to differ from one big batch, ours not.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from conftest import TRAINER_DEFAULTS
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorForSeq2Seq,
    PretrainedConfig,
    PreTrainedModel,
    PrinterCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from hf_seqobj import (
    OBJECTIVES,
    SeqObjSeq2SeqTrainer,
    SeqObjSeq2SeqTrainingArguments,
    SeqObjTrainer,
    SeqObjTrainingArguments,
)
from hf_seqobj.modeling import load_model_and_tokenizer


STOCK = (Trainer, TrainingArguments)
OURS = (SeqObjTrainer, SeqObjTrainingArguments)
STOCK_SEQ2SEQ = (Seq2SeqTrainer, Seq2SeqTrainingArguments)
OURS_SEQ2SEQ = (SeqObjSeq2SeqTrainer, SeqObjSeq2SeqTrainingArguments)

COMMON = {**TRAINER_DEFAULTS, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "seed": 7}
COMMON["learning_rate"] = 0.1  # the regression models have two parameters: let them move
MODEL_CARD = "README.md"


# ---------------------------------------------------------------------------------------------------------------
# The models and data of transformers' tests/trainer, reduced to what these tests need.


class RegressionDataset:
    """y = a x + b + noise, as dicts `{"input_x": x, "labels": y}`."""

    def __init__(self, a: float = 2.0, b: float = 3.0, length: int = 64, seed: int = 42):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(length,)).astype(np.float32)
        self.y = (a * self.x + b + rng.normal(scale=0.1, size=(length,))).astype(np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, np.float32]:
        return {"input_x": self.x[index], "labels": self.y[index]}


class RegressionConfig(PretrainedConfig):
    model_type = "hf_seqobj_test_regression"

    def __init__(self, a: float = 0.0, b: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.a = a
        self.b = b


class RegressionPreTrainedModel(PreTrainedModel):
    """A `PreTrainedModel` that returns a plain tuple, `(loss, y)`, and records what its forward receives."""

    config_class = RegressionConfig
    base_model_prefix = "regression"

    def __init__(self, config: RegressionConfig):
        super().__init__(config)
        self.a = nn.Parameter(torch.tensor(float(config.a)))
        self.b = nn.Parameter(torch.tensor(float(config.b)))
        self.seen_x: list[list[float]] = []
        self.seen_num_items: list[float | None] = []
        self.post_init()

    def _init_weights(self, module):  # the parameters come from the config
        pass

    def forward(self, input_x, labels=None, **kwargs):
        if self.training:
            self.seen_x.append(input_x.tolist())
            value = kwargs.get("num_items_in_batch")
            self.seen_num_items.append(None if value is None else float(value))
        y = input_x * self.a + self.b
        if labels is None:
            return (y,)
        return (nn.functional.mse_loss(y, labels), y)


class RegressionNoKwargsModel(RegressionPreTrainedModel):
    """The same model with a forward without `**kwargs`: the Trainer passes no `num_items_in_batch`."""

    def forward(self, input_x, labels=None):
        return super().forward(input_x, labels)


class RegressionModuleModel(nn.Module):
    """A plain `nn.Module` (no `config` attribute) returning a tuple."""

    def __init__(self, a: float = 0.0, b: float = 0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, input_x, labels=None, **kwargs):
        y = input_x * self.a + self.b
        if labels is None:
            return (y,)
        return (nn.functional.mse_loss(y, labels), y)


def _regression(kind: str = "tuple"):
    if kind == "tuple":
        return RegressionPreTrainedModel(RegressionConfig(a=0.5, b=-0.5))
    if kind == "no_kwargs":
        return RegressionNoKwargsModel(RegressionConfig(a=0.5, b=-0.5))
    model = RegressionModuleModel(0.5, -0.5)
    if kind == "config_none":
        model.config = None
    return model


def _bert_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def _classification_data(length: int = 32, seed: int = 0) -> list[dict[str, list[int] | int]]:
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": rng.integers(1, 50, size=10).tolist(), "attention_mask": [1] * 10, "labels": int(label)}
        for label in rng.integers(0, 3, size=length)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Running a trainer and comparing two runs.


@dataclasses.dataclass
class Run:
    trainer: Trainer
    losses: list[float]
    params: dict[str, torch.Tensor]
    log_keys: list[list[str]]


def _run(pair, model, train_dataset, output_dir, train: bool = True, trainer_kwargs=None, **settings) -> Run:
    trainer_class, args_class = pair
    args = args_class(output_dir=str(output_dir), **{**COMMON, **settings})
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, **(trainer_kwargs or {}))
    if train:
        trainer.train()
    history = trainer.state.log_history
    return Run(
        trainer=trainer,
        losses=[entry["loss"] for entry in history if "loss" in entry],
        params={name: value.detach().clone() for name, value in trainer.model.named_parameters()},
        log_keys=[sorted(entry) for entry in history],
    )


def _assert_same(stock: Run, ours: Run, initial: dict[str, torch.Tensor] | None = None, atol: float = 1e-6):
    assert stock.losses, "the stock run logged no loss"
    assert ours.losses == pytest.approx(stock.losses, abs=atol, rel=0)
    assert ours.log_keys == stock.log_keys
    assert set(ours.params) == set(stock.params)
    for name, value in stock.params.items():
        torch.testing.assert_close(ours.params[name], value, atol=atol, rtol=0, msg=f"parameter {name} differs")
    if initial is not None:
        moved = max((stock.params[name] - value).abs().max().item() for name, value in initial.items())
        assert moved > 1e-4, "training did not move the parameters, so the comparison would prove nothing"


def _checkpoint_files(output_dir) -> dict[str, list[str]]:
    """The files of each checkpoint directory (recursively), our model card left out."""
    found = {}
    for checkpoint in sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-")):
        root = os.path.join(output_dir, checkpoint)
        files = [
            os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root) for name in names
        ]
        found[checkpoint] = sorted(name for name in files if name != MODEL_CARD)
    return found


def _initial(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------------------
# Models the stock Trainer trains: tuple outputs, no config, a classifier.


@pytest.mark.parametrize("kind", ["tuple", "no_kwargs"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_model_returning_a_tuple_trains_as_with_the_stock_trainer(kind, accumulation, tmp_path):
    data = RegressionDataset()
    settings = dict(max_steps=4, gradient_accumulation_steps=accumulation, save_strategy="steps", save_steps=2)
    initial = _initial(_regression(kind))
    stock = _run(STOCK, _regression(kind), data, tmp_path / "stock", **settings)
    ours = _run(OURS, _regression(kind), data, tmp_path / "ours", **settings)
    _assert_same(stock, ours, initial)
    assert ours.trainer.model.seen_x == stock.trainer.model.seen_x  # the same batches in the same order
    assert ours.trainer.model.seen_num_items == stock.trainer.model.seen_num_items
    assert ours.trainer.model_accepts_loss_kwargs == stock.trainer.model_accepts_loss_kwargs == (kind == "tuple")
    assert _checkpoint_files(tmp_path / "ours") == _checkpoint_files(tmp_path / "stock")
    assert set(_checkpoint_files(tmp_path / "ours")) == {"checkpoint-2", "checkpoint-4"}
    assert all(os.path.isfile(tmp_path / "ours" / name / MODEL_CARD) for name in ("checkpoint-2", "checkpoint-4"))


@pytest.mark.parametrize("kind", ["no_config", "config_none"])
def test_a_model_without_config_trains_and_saves_as_with_the_stock_trainer(kind, tmp_path):
    data = RegressionDataset()
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2)
    initial = _initial(_regression(kind))
    stock = _run(STOCK, _regression(kind), data, tmp_path / "stock", **settings)
    ours = _run(OURS, _regression(kind), data, tmp_path / "ours", **settings)
    _assert_same(stock, ours, initial)
    assert _checkpoint_files(tmp_path / "ours") == _checkpoint_files(tmp_path / "stock")
    card = (tmp_path / "ours" / "checkpoint-4" / MODEL_CARD).read_text()
    assert "RegressionModuleModel" in card and "AutoModelForCausalLM" not in card
    ours.trainer.save_model()
    assert (tmp_path / "ours" / MODEL_CARD).is_file()


def test_a_sequence_classifier_trains_and_evaluates_as_with_the_stock_trainer(tmp_path):
    data = _classification_data()
    settings = dict(max_steps=4, gradient_accumulation_steps=2)
    trainer_kwargs = {"eval_dataset": _classification_data(16, seed=1)}
    initial = _initial(_bert_classifier())
    stock = _run(STOCK, _bert_classifier(), data, tmp_path / "stock", trainer_kwargs=trainer_kwargs, **settings)
    ours = _run(OURS, _bert_classifier(), data, tmp_path / "ours", trainer_kwargs=trainer_kwargs, **settings)
    _assert_same(stock, ours, initial)
    stock_metrics, our_metrics = stock.trainer.evaluate(), ours.trainer.evaluate()
    assert sorted(our_metrics) == sorted(stock_metrics)  # no perplexity for a model that is not a language model
    assert "epoch" in our_metrics
    assert our_metrics["eval_loss"] == pytest.approx(stock_metrics["eval_loss"], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The stock loss path: compute_loss_func, label smoothing, num_items_in_batch.


def _doubled_mse(outputs, labels, num_items_in_batch=None):
    return 2 * nn.functional.mse_loss(outputs[0], labels)  # without labels the model returns (y,)


def _doubled_token_loss(outputs, labels, num_items_in_batch=None):
    logits = outputs.logits[:, :-1]
    total = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    return 2 * total / num_items_in_batch


@pytest.mark.parametrize("accumulation", [1, 2])
def test_compute_loss_func_is_used_as_by_the_stock_trainer(accumulation, tmp_path):
    data = RegressionDataset()
    settings = dict(max_steps=3, gradient_accumulation_steps=accumulation)
    kwargs = {"trainer_kwargs": {"compute_loss_func": _doubled_mse}}
    plain = _run(OURS, _regression(), data, tmp_path / "plain", **settings)
    stock = _run(STOCK, _regression(), data, tmp_path / "stock", **kwargs, **settings)
    ours = _run(OURS, _regression(), data, tmp_path / "ours", **kwargs, **settings)
    _assert_same(stock, ours, _initial(_regression()))
    assert ours.losses[0] == pytest.approx(2 * plain.losses[0], rel=1e-5)  # the first step starts from the same point


def _ner_run(pair, arch, tiny_checkpoints, ner_task, output_dir, trainer_kwargs=None, **settings) -> Run:
    task, splits = ner_task
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits))
    tokenized = task.tokenize(splits, tokenizer, decoder_only=arch == "gpt2")
    collator = DataCollatorForSeq2Seq(tokenizer, model=None if arch == "gpt2" else model)
    trainer_kwargs = {"data_collator": collator, "processing_class": tokenizer, **(trainer_kwargs or {})}
    return _run(pair, model, tokenized["train"], output_dir, trainer_kwargs=trainer_kwargs, **settings)


def test_compute_loss_func_of_a_language_model(tiny_checkpoints, ner_task, tmp_path):
    """A user loss for GPT-2 (twice the token cross-entropy) is the loss that trains, with accumulation too."""
    settings = dict(max_steps=2, gradient_accumulation_steps=2)
    kwargs = {"trainer_kwargs": {"compute_loss_func": _doubled_token_loss}}
    plain = _ner_run(OURS, "gpt2", tiny_checkpoints, ner_task, tmp_path / "plain", **settings)
    stock = _ner_run(STOCK, "gpt2", tiny_checkpoints, ner_task, tmp_path / "stock", **kwargs, **settings)
    ours = _ner_run(OURS, "gpt2", tiny_checkpoints, ner_task, tmp_path / "ours", **kwargs, **settings)
    _assert_same(stock, ours, atol=1e-5)
    assert ours.losses[0] == pytest.approx(2 * plain.losses[0], rel=1e-4)


@pytest.mark.parametrize("arch, accumulation", [("gpt2", 1), ("gpt2", 2), ("bart", 1), ("bart", 2), ("t5", 2)])
def test_label_smoothing_as_with_the_stock_trainer(arch, accumulation, tiny_checkpoints, ner_task, tmp_path):
    stock_pair, our_pair = (STOCK, OURS) if arch == "gpt2" else (STOCK_SEQ2SEQ, OURS_SEQ2SEQ)
    settings = dict(max_steps=2, gradient_accumulation_steps=accumulation, label_smoothing_factor=0.1)
    stock = _ner_run(stock_pair, arch, tiny_checkpoints, ner_task, tmp_path / "stock", **settings)
    ours = _ner_run(our_pair, arch, tiny_checkpoints, ner_task, tmp_path / "ours", **settings)
    _assert_same(stock, ours, atol=1e-5)


def test_num_items_in_batch_reaches_the_model_as_with_the_stock_trainer(tmp_path):
    """`model_accepts_loss_kwargs` is the stock one, and the model gets the same `num_items_in_batch` values."""
    data = RegressionDataset()
    for kind in ("tuple", "no_kwargs"):
        stock = _run(
            STOCK, _regression(kind), data, tmp_path / f"stock_{kind}", max_steps=2, gradient_accumulation_steps=2
        )
        ours = _run(
            OURS, _regression(kind), data, tmp_path / f"ours_{kind}", max_steps=2, gradient_accumulation_steps=2
        )
        assert ours.trainer.model.seen_num_items == stock.trainer.model.seen_num_items
        expected = [8.0] * 4 if kind == "tuple" else [None] * 4  # two steps of two micro-batches of 4
        assert ours.trainer.model.seen_num_items == expected

    class NoLossKwargs(RegressionPreTrainedModel):
        accepts_loss_kwargs = False

    stock = _run(STOCK, NoLossKwargs(RegressionConfig()), data, tmp_path / "stock_attr", max_steps=1)
    ours = _run(OURS, NoLossKwargs(RegressionConfig()), data, tmp_path / "ours_attr", max_steps=1)
    assert ours.trainer.model_accepts_loss_kwargs is stock.trainer.model_accepts_loss_kwargs is False
    assert ours.trainer.model.seen_num_items == stock.trainer.model.seen_num_items == [None]


# ---------------------------------------------------------------------------------------------------------------
# Encoder-decoder models given labels only.


def _labels_only_data(source_length: int, target_length: int, rows: int = 16) -> list[dict[str, list[int]]]:
    rng = np.random.default_rng(source_length * 100 + target_length)
    return [
        {
            "input_ids": rng.integers(5, 40, size=source_length).tolist(),
            "attention_mask": [1] * source_length,
            "labels": rng.integers(5, 40, size=target_length).tolist(),
        }
        for _ in range(rows)
    ]


@pytest.mark.parametrize("arch", ["bart", "t5"])
@pytest.mark.parametrize("lengths", [(9, 5), (7, 7)], ids=["different_lengths", "equal_lengths"])
def test_an_encoder_decoder_given_labels_only_trains_as_with_the_stock_trainer(
    arch, lengths, tiny_checkpoints, tmp_path
):
    """No decoder_input_ids in the batch: the decoder inputs come from the labels, as the model builds them."""
    data = _labels_only_data(*lengths)
    settings = dict(max_steps=3, trainer_kwargs={"data_collator": default_data_collator})
    path = tiny_checkpoints[arch]
    initial = _initial(load_model_and_tokenizer(path)[0])
    stock = _run(STOCK_SEQ2SEQ, load_model_and_tokenizer(path)[0], data, tmp_path / "stock", **settings)
    ours = _run(OURS_SEQ2SEQ, load_model_and_tokenizer(path)[0], data, tmp_path / "ours", **settings)
    _assert_same(stock, ours, initial, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Gradient accumulation: the one deliberate difference.


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_stock_mis_scales_an_encoder_decoder_under_accumulation_and_ours_does_not(
    arch, tiny_checkpoints, ner_task, tmp_path
):
    """BART's / T5's own loss is the micro-batch mean whatever `num_items_in_batch` says, and the stock Trainer, which
    passes it and then trusts the loss to be normalised, sums the micro-batch means: twice the step with two
    micro-batches (SGD without clipping, so that the step shows the gradient's scale). Ours makes the update of one
    big batch of 8 (what both make without accumulation)."""
    from conftest import NO_DROPOUT

    task, splits = ner_task

    def run(pair, name, batch, accumulation):
        model, tokenizer = load_model_and_tokenizer(
            tiny_checkpoints[arch], extra_tokens=task.extra_tokens(splits), config_overrides=NO_DROPOUT[arch]
        )
        tokenized = task.tokenize(splits, tokenizer, decoder_only=False)
        kwargs = {"data_collator": DataCollatorForSeq2Seq(tokenizer, model=model), "processing_class": tokenizer}
        settings = dict(
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            learning_rate=0.1,
            optim="sgd",  # Adam's first step hardly depends on the gradient's scale; SGD's is proportional to it
            max_grad_norm=0.0,  # and no clipping to one norm
        )
        return _run(pair, model, tokenized["train"], tmp_path / name, trainer_kwargs=kwargs, **settings)

    big = run(STOCK_SEQ2SEQ, "big", 8, 1)
    stock = run(STOCK_SEQ2SEQ, "stock", 4, 2)
    ours = run(OURS_SEQ2SEQ, "ours", 4, 2)
    assert ours.losses == pytest.approx(big.losses, rel=1e-5)
    assert stock.losses[0] == pytest.approx(2 * big.losses[0], rel=0.2)  # the sum of two micro-batch means
    worst_stock = max((stock.params[name] - value).abs().max().item() for name, value in big.params.items())
    for name, value in big.params.items():
        torch.testing.assert_close(ours.params[name], value, atol=2e-5, rtol=1e-4, msg=name)
    assert worst_stock > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Resume, callbacks, arguments, metrics.


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_sees_the_batches_of_the_uninterrupted_run_as_with_the_stock_trainer(tmp_path):
    """Interrupted at step 2 and resumed: the same remaining batches in the same order and the same parameters as
    the stock Trainer's interrupted and resumed run (and its uninterrupted one), and the same checkpoint files."""
    data = RegressionDataset(length=48)
    settings = dict(num_train_epochs=2, gradient_accumulation_steps=2, save_strategy="steps", save_steps=2)
    runs = {}
    for name, pair in (("stock", STOCK), ("ours", OURS)):
        _run(pair, _regression(), data, tmp_path / name, trainer_kwargs={"callbacks": [_StopAt(2)]}, **settings)
        model = _regression()
        args = pair[1](output_dir=str(tmp_path / name), **{**COMMON, **settings})
        trainer = pair[0](model=model, args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=str(tmp_path / name / "checkpoint-2"))
        runs[name] = trainer
    full = _run(STOCK, _regression(), data, tmp_path / "full", **settings)
    stock, ours = runs["stock"], runs["ours"]
    assert ours.model.seen_x == stock.model.seen_x
    assert ours.model.seen_x == full.trainer.model.seen_x[-len(ours.model.seen_x) :]
    assert ours.state.global_step == stock.state.global_step == full.trainer.state.global_step == 12
    for name, value in full.params.items():
        torch.testing.assert_close(dict(ours.model.named_parameters())[name].detach(), value, atol=1e-6, rtol=0)
        torch.testing.assert_close(dict(stock.model.named_parameters())[name].detach(), value, atol=1e-6, rtol=0)
    assert _checkpoint_files(tmp_path / "ours") == _checkpoint_files(tmp_path / "stock")


def test_resume_true_without_a_checkpoint_raises_the_stock_error(tmp_path):
    """`train(resume_from_checkpoint=True)` with no checkpoint in output_dir: the stock Trainer's own error."""
    messages = {}
    for name, pair in (("stock", STOCK), ("ours", OURS)):
        run = _run(pair, _regression(), RegressionDataset(length=8), tmp_path / name, train=False)
        with pytest.raises(ValueError) as error:
            run.trainer.train(resume_from_checkpoint=True)
        messages[name] = str(error.value).replace(str(tmp_path / name), "OUTPUT_DIR")
    assert "No valid checkpoint found" in messages["stock"]
    assert messages["ours"] == messages["stock"]


class _Recorder(TrainerCallback):
    pass


@pytest.mark.parametrize("user_callbacks", [None, [_Recorder, PrinterCallback()]], ids=["default", "custom"])
def test_the_callback_list_is_the_stock_one(user_callbacks, tiny_checkpoints, ner_task, tmp_path):
    kinds = {}
    for name, pair in (("stock", STOCK), ("ours", OURS)):
        run = _run(
            pair, _regression(), RegressionDataset(), tmp_path / name, train=False,
            trainer_kwargs={"callbacks": list(user_callbacks or [])},
        )  # fmt: skip
        handler = run.trainer.callback_handler
        kinds[name] = ([type(callback) for callback in handler.callbacks], handler.callback_list)
        run.trainer.pop_callback(PrinterCallback)
        kinds[f"{name}_popped"] = [type(callback) for callback in handler.callbacks]
    assert kinds["ours"] == kinds["stock"]
    assert kinds["ours_popped"] == kinds["stock_popped"]
    task, splits = ner_task
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints["t5"], extra_tokens=task.extra_tokens(splits))
    stock = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(output_dir=str(tmp_path / "s"), **COMMON))
    ours = SeqObjSeq2SeqTrainer(
        model=model, args=SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path / "o"), **COMMON)
    )
    assert [type(cb) for cb in ours.callback_handler.callbacks] == [
        type(cb) for cb in stock.callback_handler.callbacks
    ]


def test_no_args_gives_default_arguments(tmp_path, monkeypatch, tiny_checkpoints):
    monkeypatch.chdir(tmp_path)
    stock = Trainer(_regression())
    ours = SeqObjTrainer(_regression())
    assert isinstance(ours.args, SeqObjTrainingArguments) and ours.args.objective == "mle"
    for field in dataclasses.fields(TrainingArguments):
        assert getattr(ours.args, field.name) == getattr(stock.args, field.name), field.name
    assert ours.args.output_dir == stock.args.output_dir == "tmp_trainer"
    # The stock Seq2SeqTrainer fails without args (it reads args.generation_config of a TrainingArguments); ours
    # builds default Seq2Seq arguments.
    seq2seq = SeqObjSeq2SeqTrainer(load_model_and_tokenizer(tiny_checkpoints["bart"])[0])
    assert isinstance(seq2seq.args, SeqObjSeq2SeqTrainingArguments)
    defaults = Seq2SeqTrainingArguments(output_dir="tmp_trainer")
    for field in dataclasses.fields(Seq2SeqTrainingArguments):
        assert getattr(seq2seq.args, field.name) == getattr(defaults, field.name), field.name


def test_evaluate_and_predict_return_the_stock_keys(tmp_path):
    data, eval_data = RegressionDataset(), RegressionDataset(length=16, seed=1)
    runs = {
        name: _run(pair, _regression(), data, tmp_path / name, max_steps=2, trainer_kwargs={"eval_dataset": eval_data})
        for name, pair in (("stock", STOCK), ("ours", OURS))
    }
    stock, ours = runs["stock"].trainer, runs["ours"].trainer
    stock_metrics, our_metrics = stock.evaluate(), ours.evaluate()
    assert "epoch" in stock_metrics
    assert sorted(our_metrics) == sorted(stock_metrics)
    assert our_metrics["eval_loss"] == pytest.approx(stock_metrics["eval_loss"], abs=1e-6)
    named = {"first": eval_data, "second": RegressionDataset(length=8, seed=2)}
    assert sorted(ours.evaluate(named)) == sorted(stock.evaluate(named))
    assert sorted(ours.evaluate(eval_data, metric_key_prefix="dev")) == sorted(
        stock.evaluate(eval_data, metric_key_prefix="dev")
    )
    stock_prediction, our_prediction = stock.predict(eval_data), ours.predict(eval_data)
    assert sorted(our_prediction.metrics) == sorted(stock_prediction.metrics)
    np.testing.assert_allclose(our_prediction.predictions, stock_prediction.predictions, atol=1e-6)
    assert [sorted(entry) for entry in ours.state.log_history] == [sorted(e) for e in stock.state.log_history]


def test_a_language_model_adds_only_its_prefixed_perplexity(tiny_checkpoints, ner_task, tmp_path):
    task, splits = ner_task
    runs = {}
    for name, pair in (("stock", STOCK), ("ours", OURS)):
        model, tokenizer = load_model_and_tokenizer(tiny_checkpoints["gpt2"], extra_tokens=task.extra_tokens(splits))
        tokenized = task.tokenize(splits, tokenizer, decoder_only=True)
        kwargs = {"data_collator": DataCollatorForSeq2Seq(tokenizer), "eval_dataset": tokenized["validation"]}
        runs[name] = _run(pair, model, tokenized["train"], tmp_path / name, max_steps=1, trainer_kwargs=kwargs)
    stock_metrics, our_metrics = runs["stock"].trainer.evaluate(), runs["ours"].trainer.evaluate()
    assert set(our_metrics) == set(stock_metrics) | {"eval_perplexity"} and "epoch" in our_metrics
    assert our_metrics["eval_perplexity"] == pytest.approx(np.exp(our_metrics["eval_loss"]), rel=1e-6)
    test = runs["ours"].trainer.predict(runs["ours"].trainer.eval_dataset)
    stock_test = runs["stock"].trainer.predict(runs["stock"].trainer.eval_dataset)
    assert set(test.metrics) == set(stock_test.metrics) | {"test_perplexity"}


@pytest.mark.parametrize("objective", sorted(set(OBJECTIVES) - {"mle"}))
@pytest.mark.parametrize("model_kind", ["classifier", "regression"])
def test_a_sequence_objective_needs_a_language_model(objective, model_kind, tmp_path):
    model = _bert_classifier() if model_kind == "classifier" else _regression()
    args = SeqObjTrainingArguments(output_dir=str(tmp_path), objective=objective, report_to="none", use_cpu=True)
    with pytest.raises(ValueError) as caught:
        SeqObjTrainer(model=model, args=args)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(objective) in message and type(model).__name__ in message


def test_a_sequence_objective_refuses_a_compute_loss_func(tiny_checkpoints, tmp_path):
    """A sequence objective computes its own loss: a compute_loss_func is an error, not silently left unused."""
    model, tokenizer = load_model_and_tokenizer(tiny_checkpoints["gpt2"])
    args = SeqObjTrainingArguments(output_dir=str(tmp_path), objective="scheduled_sampling", **COMMON)
    with pytest.raises(ValueError, match="'scheduled_sampling' objective .* compute_loss_func='_doubled_token_loss'"):
        SeqObjTrainer(model=model, args=args, processing_class=tokenizer, compute_loss_func=_doubled_token_loss)
