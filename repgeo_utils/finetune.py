"""Fine-tuning with the Hugging Face Trainer, and evaluation before and after.

``finetune_task`` loads a pre-trained encoder with a fresh classification head (seeded),
evaluates it on the test split (the "pre-trained" row of paper 1's Table 2: an untrained head,
so roughly chance), fine-tunes every weight with the Trainer (dynamic padding, length-grouped
batches; ``accelerate`` spreads it over several GPUs when there are some), and evaluates again.

The fine-tuned checkpoint (hub layout, loadable with ``models.load_model``) and the results are
cached under ``data/cache/finetune/`` keyed by the model, the task's data, the settings and the
seed: a rerun reuses them, any changed setting retrains.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

from . import validate
from .cache import cache_entry
from .config import FinetuneSettings, get_profile
from .data import check_task, fingerprint, load_profile_task
from .models import load_model, quiet_hf, resolve_model

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalReport:
    """Test-split metrics of one classifier."""

    label_names: list[str]
    accuracy: float
    macro_f1: float
    per_class: pd.DataFrame  # index = class; columns precision, recall, f1, support
    confusion: np.ndarray  # rows = true class, columns = predicted class

    @classmethod
    def from_predictions(cls, y_true, y_pred, label_names: list[str]) -> EvalReport:
        labels = list(range(len(label_names)))
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        per_class = pd.DataFrame(
            {"precision": p, "recall": r, "f1": f, "support": s},
            index=pd.Index(label_names, name="class"),
        )
        return cls(
            label_names=list(label_names),
            accuracy=float(accuracy_score(y_true, y_pred)),
            macro_f1=float(
                f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
            ),
            per_class=per_class,
            confusion=confusion_matrix(y_true, y_pred, labels=labels),
        )

    def to_dict(self) -> dict:
        return {
            "label_names": self.label_names,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class.reset_index().to_dict("list"),
            "confusion": self.confusion.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> EvalReport:
        return cls(
            label_names=d["label_names"],
            accuracy=d["accuracy"],
            macro_f1=d["macro_f1"],
            per_class=pd.DataFrame(d["per_class"]).set_index("class"),
            confusion=np.array(d["confusion"]),
        )


@torch.inference_mode()
def predict_logits(
    model, tokenizer, texts: list[str], *, max_length: int = 128, batch_size: int = 64
) -> np.ndarray:
    """Logits for ``texts``, batched by length (padding never changes a result)."""
    texts = validate.text_list("texts", texts)
    validate.positive_int("max_length", max_length)
    validate.positive_int("batch_size", batch_size)
    model.eval()
    device = next(model.parameters()).device
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def evaluate(
    model, tokenizer, dataset, *, max_length: int = 128, batch_size: int = 64
) -> EvalReport:
    """Accuracy, macro-F1, per-class precision/recall and confusion matrix on ``dataset``."""
    names = dataset.features["label"].names
    logits = predict_logits(
        model, tokenizer, dataset["text"], max_length=max_length, batch_size=batch_size
    )
    return EvalReport.from_predictions(np.asarray(dataset["label"]), logits.argmax(-1), names)


# --------------------------------------------------------------------------------------
# Fine-tuning


@dataclass
class FinetuneResult:
    """What one fine-tuning run produced."""

    model: str
    task: str
    seed: int
    settings: FinetuneSettings
    checkpoint: Path  # hub-layout folder: load_model(checkpoint, kind="classifier")
    pre: EvalReport  # pre-trained encoder + untrained head
    post: EvalReport  # fine-tuned
    history: pd.DataFrame  # per epoch: train loss, validation accuracy
    train_seconds: float
    train_tokens: int  # real (non-padding) tokens processed, all epochs
    cached: bool = False  # True when this call reused a finished run
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else math.nan

    def summary(self) -> dict:
        """One row for a results table."""
        return {
            "task": self.task,
            "model": self.model,
            "seed": self.seed,
            "pre_accuracy": self.pre.accuracy,
            "post_accuracy": self.post.accuracy,
            "pre_macro_f1": self.pre.macro_f1,
            "post_macro_f1": self.post.macro_f1,
            "train_seconds": self.train_seconds,
            "tokens_per_second": self.tokens_per_second,
        }


#: Paper 1 (Nadipalli 2025), Appendix A, Table 2: test accuracy of bert-base-uncased before
#: (untrained head) and after fine-tuning, by the paper's task.
PAPER_TABLE2 = {"imdb": (0.54, 0.93), "spotify": (0.12, 0.57), "news": (0.12, 0.93)}

RESULTS = "results.json"


@contextmanager
def no_datasets_bars():
    """Within the block ``datasets`` shows no progress bars (restored on leaving)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _history(log_history: list[dict]) -> pd.DataFrame:
    """One row per evaluation: the optimisation step, the epoch (fractional), the mean training
    loss over the logging interval that ends there, and the validation loss and accuracy."""
    train = {r["step"]: r["loss"] for r in log_history if "loss" in r and "step" in r}
    rows = [
        {
            "step": ev["step"],
            "epoch": ev["epoch"],
            "train_loss": train.get(ev["step"], np.nan),
            "val_loss": ev.get("eval_loss"),
            "val_accuracy": ev["eval_accuracy"],
        }
        for ev in log_history
        if "eval_accuracy" in ev
    ]
    return pd.DataFrame(rows, columns=["step", "epoch", "train_loss", "val_loss", "val_accuracy"])


#: Evaluations on the validation split during a fine-tune (the curves of notebook 01).
EVALUATIONS = 8

#: Validation texts each of those evaluations scores at most: a seeded sample, the same at
#: every evaluation. The curves only show the trend (the reported accuracies come from the
#: whole test split); nine passes over every validation text took about a sixth of a quick
#: fine-tune. The sample leaves training untouched: the Trainer draws the same random numbers
#: whatever the evaluation set's size, so the fine-tuned weights are the same bits.
CURVE_TEXTS = 150


def curve_rows(n_rows: int, seed: int, limit: int = CURVE_TEXTS) -> list[int]:
    """Which of ``n_rows`` validation rows the learning-curve evaluations score: all of them
    up to ``limit``, else a sample of ``limit`` drawn with ``seed`` (in row order)."""
    n_rows = validate.non_negative_int("n_rows", n_rows)
    limit = validate.positive_int("limit", limit)
    if n_rows <= limit:
        return list(range(n_rows))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_rows, size=limit, replace=False).tolist())


def divergence(model: torch.nn.Module, log_history: list[dict]) -> str | None:
    """Why a training run must not be kept: a non-finite logged loss or a non-finite weight
    (``None`` when there is neither)."""
    for record in log_history:
        for name in ("loss", "eval_loss"):
            value = record.get(name)
            if value is not None and not math.isfinite(float(value)):
                return f"{name} {value} at epoch {record.get('epoch')}"
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            return f"non-finite values in {name}"
    return None


def warmup_steps(warmup_ratio: float, optimisation_steps: int) -> int:
    """Steps of linear warmup for a share ``warmup_ratio`` (in [0, 1]) of the optimisation
    steps: ``ceil(warmup_ratio * optimisation_steps)``, so 1.0 warms up over the whole run."""
    ratio = validate.fraction("warmup_ratio", warmup_ratio)
    steps = validate.non_negative_int("optimisation_steps", optimisation_steps)
    return math.ceil(ratio * steps)


def _check_optimizer(settings: FinetuneSettings, output_dir: Path) -> None:
    """Refuse, before the model loads, an optimiser the Trainer knows but cannot build here
    (most need a package of their own: bitsandbytes, GaLore, LOMO, ...)."""
    from transformers import Trainer  # noqa: PLC0415  (about 8 s: only when training)

    args = TrainingArguments(output_dir=str(output_dir), optim=settings.optimizer, report_to="none")
    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except (ImportError, ValueError) as err:
        raise ValueError(
            f"optimizer {settings.optimizer!r} cannot be used here: {err}. The optimisers that "
            "need nothing extra include 'adamw_torch_fused' (the default), 'adamw_torch', 'sgd' and 'adafactor'."
        ) from err


@cache
def trainer_class() -> type:
    """The Trainer with warmup given as a share of the optimisation steps (built on first use:
    importing transformers' Trainer takes about 8 s, which notebooks that only read cached
    fine-tunes need not pay)."""
    from transformers import Trainer  # noqa: PLC0415  (as above)

    class WarmupRatioTrainer(Trainer):
        """The Trainer with warmup given as a share of the optimisation steps.

        transformers 5 has no ``warmup_ratio`` argument: ``warmup_steps`` below 1 is read as a
        ratio and from 1 on as a count of steps, so a ratio of 1.0 passed there would warm up for
        one step. The count is set here from the number of steps the Trainer has worked out (the
        same ``ceil(ratio * steps)`` it uses for a ratio below 1)."""

        def __init__(self, *args, warmup_ratio: float = 0.0, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.warmup_ratio = warmup_ratio

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            self.args.warmup_steps = warmup_steps(self.warmup_ratio, num_training_steps)
            return super().create_scheduler(num_training_steps, optimizer)

    return WarmupRatioTrainer


def finetune_task(
    model_name: str,
    dataset,
    settings: FinetuneSettings,
    *,
    task: str,
    seed: int = 0,
    revision: str | None = None,
    progress: bool = True,
    cache_root: Path | None = None,
) -> FinetuneResult:
    """Fine-tune ``model_name`` on ``dataset`` (a DatasetDict from ``data.load_task``).

    Reuses a finished run with the same model, data, settings and seed; otherwise trains,
    evaluates before and after on the test split, and caches the checkpoint and results.
    Everything is checked before the model loads: the splits, the task name, the settings, the
    seed and the model's name.
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a str (the task's name), got {type(task).__name__} {task!r}")
    if not task.strip():
        raise ValueError(f"task must name the task, got {task!r}")
    if not isinstance(settings, FinetuneSettings):
        raise TypeError(
            f"settings must be a FinetuneSettings, got {type(settings).__name__} {settings!r:.80}; "
            "make one with FinetuneSettings(**values)"
        )
    seed = validate.non_negative_int("seed", seed)
    for split in ("train", "validation", "test"):
        if split not in dataset or len(dataset[split]) == 0:
            raise ValueError(
                f"Task {task!r} has no rows in its {split!r} split (splits: "
                f"{ {name: len(part) for name, part in dataset.items()} }); every split needs "
                "rows, as data.load_task makes them."
            )
    ref = resolve_model(model_name, revision)
    label_names = dataset["train"].features["label"].names
    key = {
        "model": ref.as_key(),
        "task": task,
        "data": fingerprint(dataset),
        "settings": asdict(settings),
        "seed": seed,
        "curve_texts": CURVE_TEXTS,
    }
    if ref.source != "hub":  # the weights themselves (a hub model: its id and revision)
        key["fingerprint"] = ref.fingerprint()
    name = f"{ref.cache_name}__{task.replace('csv:', 'csv-')}__seed{seed}"
    with cache_entry("finetune", name, key, root=cache_root) as entry:
        if entry.exists:
            return _load_result(entry.path, cached=True)
        out = entry.build_dir
        _check_optimizer(settings, out / "trainer")
        model, tokenizer = load_model(
            ref.path if ref.source != "hub" else ref.name,
            revision,
            kind="classifier",
            label_names=label_names,
            seed=seed,
        )
        pre = evaluate(model, tokenizer, dataset["test"], max_length=settings.max_length)

        def tokenize(batch):
            return tokenizer(batch["text"], truncation=True, max_length=settings.max_length)

        with no_datasets_bars():
            tok = dataset.map(tokenize, batched=True, remove_columns=["text"])
            tok = tok.rename_column("label", "labels")
            tok = tok.map(lambda b: {"length": [len(x) for x in b["input_ids"]]}, batched=True)
            with warnings.catch_warnings():  # pyarrow 25 on how datasets asks for the sort
                warnings.filterwarnings("ignore", "Specifying null_placement", FutureWarning)
                curve = curve_rows(len(tok["validation"]), seed, limit=CURVE_TEXTS)
                validation = tok["validation"].select(curve).sort("length")
        real_tokens = int(sum(tok["train"]["length"]))
        steps = math.ceil(settings.epochs * math.ceil(len(tok["train"]) / settings.batch_size))
        every = max(1, steps // EVALUATIONS)

        args = TrainingArguments(
            output_dir=str(out / "trainer"),
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=max(64, settings.batch_size),
            weight_decay=settings.weight_decay,
            # set by trainer_class()'s Trainer once the number of optimisation steps is known
            warmup_steps=0,
            lr_scheduler_type=settings.lr_scheduler,
            optim=settings.optimizer,
            train_sampling_strategy="group_by_length",
            length_column_name="length",
            eval_strategy="steps",
            eval_steps=every,
            logging_strategy="steps",
            logging_steps=every,
            save_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            disable_tqdm=not progress,
            dataloader_pin_memory=torch.cuda.is_available(),
        )

        def accuracy(pred):
            return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

        trainer = trainer_class()(
            model=model,
            args=args,
            train_dataset=tok["train"],
            # sorted by length, so each evaluation batch pads little (accuracy and mean loss do
            # not depend on the order); the training order is the Trainer's, length-grouped
            eval_dataset=validation,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=accuracy,
            warmup_ratio=settings.warmup_ratio,
        )
        if not progress:  # without a progress bar the Trainer prints every log dict instead
            trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        problem = divergence(model, trainer.state.log_history)
        if problem is not None:  # raising here leaves nothing in the cache
            raise FloatingPointError(
                f"Fine-tuning {ref.cache_name} on {task!r} diverged ({problem}) with "
                f"learning_rate={settings.learning_rate}; nothing was cached. Lower the "
                "learning rate or add warmup."
            )
        post = evaluate(model, tokenizer, dataset["test"], max_length=settings.max_length)

        ckpt = out / "model"
        with quiet_hf():
            model.save_pretrained(ckpt)
            tokenizer.save_pretrained(ckpt)
        history = _history(trainer.state.log_history)
        results = {
            "model": model_name,
            "task": task,
            "seed": seed,
            "settings": asdict(settings),
            "pre": pre.to_dict(),
            "post": post.to_dict(),
            "history": history.to_dict("list"),
            "train_seconds": seconds,
            "train_tokens": int(real_tokens * settings.epochs),
        }
        (out / RESULTS).write_text(json.dumps(results, indent=1))
        shutil.rmtree(out / "trainer", ignore_errors=True)
    result = _load_result(entry.path, cached=False)
    return result


def _load_result(path: Path, *, cached: bool) -> FinetuneResult:
    r = json.loads((path / RESULTS).read_text())
    return FinetuneResult(
        model=r["model"],
        task=r["task"],
        seed=r["seed"],
        settings=FinetuneSettings(**r["settings"]),
        checkpoint=path / "model",
        pre=EvalReport.from_dict(r["pre"]),
        post=EvalReport.from_dict(r["post"]),
        history=pd.DataFrame(r["history"]),
        train_seconds=r["train_seconds"],
        train_tokens=r["train_tokens"],
        cached=cached,
    )


def finetune_profile(
    profile="quick",
    tasks: list[str] | None = None,
    *,
    seed: int = 0,
    model: str | None = None,
    progress: bool = True,
) -> dict[str, FinetuneResult]:
    """Fine-tune (or reuse) the profile's model on each task with the profile's settings."""
    prof = get_profile(profile)
    tasks = list(prof.tasks) if tasks is None else validate.text_list("tasks", tasks)
    for task in tasks:  # every name checked before the first task trains
        check_task(task)
    results = {}
    for task in tasks:
        dataset = load_profile_task(task, prof, seed=seed)
        results[task] = finetune_task(
            model or prof.model,
            dataset,
            prof.finetune_settings(task),
            task=task,
            seed=seed,
            progress=progress,
        )
    return results
