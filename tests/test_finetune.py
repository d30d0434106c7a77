"""Fine-tuning a tiny BERT end to end, evaluation metrics, the result cache."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from repgeo_utils.config import FinetuneSettings
from repgeo_utils.data import load_task
from repgeo_utils.finetune import EvalReport, finetune_task
from repgeo_utils.models import load_model

POS = ["good", "great", "love", "brilliant", "happy"]
NEG = ["bad", "terrible", "hate", "awful", "sad"]
FILL = ["the", "movie", "app", "music", "plot", "acting", "this", "was", "is", "it"]


@pytest.fixture
def separable_task(tmp_path):
    """Sentiment decided by one cue word among filler words: trivially separable."""
    rng = random.Random(0)
    rows = []
    for i in range(160):
        label = i % 2
        words = rng.sample(FILL, 4) + [rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "label": ["neg", "pos"][label]})
    path = tmp_path / "separable.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return load_task(f"csv:{path}", seed=0)


FAST = FinetuneSettings(learning_rate=1e-2, epochs=8, batch_size=16, max_length=16)


def test_eval_report_known_answers():
    r = EvalReport.from_predictions([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["a", "b", "c"])
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.per_class.loc["a", "precision"] == pytest.approx(1 / 2)
    assert r.per_class.loc["b", "precision"] == pytest.approx(2 / 3)
    assert r.per_class.loc["b", "recall"] == 1.0
    assert r.per_class.loc["c", "recall"] == pytest.approx(1 / 2)
    # F1: a = 0.5, b = 0.8, c = 2/3
    assert r.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    back = EvalReport.from_dict(r.to_dict())
    assert back.accuracy == r.accuracy and (back.confusion == r.confusion).all()
    pd.testing.assert_frame_equal(back.per_class, r.per_class, check_dtype=False)


def test_finetune_tiny_bert_beats_chance_and_caches(tiny_bert, separable_task, tmp_path, capsys):
    res = finetune_task(
        str(tiny_bert),
        separable_task,
        FAST,
        task="separable",
        seed=0,
        progress=False,
        cache_root=tmp_path / "cache",
    )
    assert not res.cached
    assert "{'loss'" not in capsys.readouterr().out  # progress=False: no Trainer log dicts either
    assert res.post.accuracy >= 0.9 > res.pre.accuracy
    assert res.post.confusion.sum() == len(separable_task["test"])
    assert list(res.history["epoch"]) == [float(e) for e in range(1, 9)]
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]
    assert res.train_tokens > 0 and res.tokens_per_second > 0
    # the checkpoint loads as a classifier with the task's label names
    model, _ = load_model(res.checkpoint, kind="classifier")
    assert model.config.id2label == {0: "neg", 1: "pos"}

    again = finetune_task(
        str(tiny_bert),
        separable_task,
        FAST,
        task="separable",
        seed=0,
        progress=False,
        cache_root=tmp_path / "cache",
    )
    assert again.cached and again.post.accuracy == res.post.accuracy
    assert again.checkpoint == res.checkpoint

    changed = FinetuneSettings(**{**FAST.__dict__, "epochs": 1})
    other = finetune_task(
        str(tiny_bert),
        separable_task,
        changed,
        task="separable",
        seed=0,
        progress=False,
        cache_root=tmp_path / "cache",
    )
    assert not other.cached and other.checkpoint != res.checkpoint


def test_finetune_is_deterministic_under_a_seed(tiny_bert, separable_task, tmp_path):
    settings = FinetuneSettings(learning_rate=3e-3, epochs=1, batch_size=16, max_length=16)
    runs = [
        finetune_task(
            str(tiny_bert),
            separable_task,
            settings,
            task="separable",
            seed=7,
            progress=False,
            cache_root=tmp_path / f"cache{i}",
        )
        for i in range(2)
    ]
    np.testing.assert_array_equal(runs[0].post.confusion, runs[1].post.confusion)
    assert runs[0].history["train_loss"].tolist() == runs[1].history["train_loss"].tolist()


def test_finetune_rejects_empty_split(tiny_bert, separable_task, tmp_path):
    broken = separable_task.copy()
    broken["test"] = separable_task["test"].select([])
    with pytest.raises(ValueError, match="no rows in its 'test' split"):
        finetune_task(str(tiny_bert), broken, FAST, task="separable", cache_root=tmp_path)


def test_a_diverging_fine_tune_is_refused_and_leaves_nothing_cached(
    tiny_bert, separable_task, tmp_path
):
    """lr 1e9 blows the weights up: the run raises with the learning rate named, and no entry
    (neither a result nor a checkpoint) is left for a rerun to reuse."""
    from dataclasses import replace

    with pytest.raises(FloatingPointError, match=r"diverged .* learning_rate=1000000000.0"):
        finetune_task(
            str(tiny_bert),
            separable_task,
            replace(FAST, learning_rate=1e9, epochs=2),
            task="separable",
            seed=0,
            progress=False,
            cache_root=tmp_path / "cache",
        )
    kind = tmp_path / "cache" / "finetune"
    assert not any(p.is_dir() and not p.name.startswith(".") for p in kind.iterdir())


class _SchedulerSeen(Exception):
    """Raised once the Trainer has built its learning-rate schedule: the test stops there."""


@pytest.mark.parametrize(("ratio", "share"), [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_warmup_ratio_is_a_share_of_the_optimisation_steps(
    tiny_bert, separable_task, tmp_path, monkeypatch, ratio, share
):
    """transformers 5 reads warmup_steps >= 1 as a count of steps: a ratio of 1.0 passed there
    warmed up for one step. The schedule the Trainer builds must warm up over ceil(ratio * steps)
    steps: half of them at 0.5, all of them at 1.0 (read from the scheduler's own multipliers:
    a linear warmup over W steps has multiplier s / W at step s < W, then 1 at step W)."""
    import math
    from dataclasses import replace

    from repgeo_utils import finetune

    seen: dict = {}
    build = finetune.trainer_class().create_scheduler

    def capture(self, num_training_steps, optimizer=None):
        scheduler = build(self, num_training_steps, optimizer)
        seen["steps"] = num_training_steps
        seen["lr"] = [scheduler.lr_lambdas[0](s) for s in range(num_training_steps + 1)]
        raise _SchedulerSeen

    monkeypatch.setattr(finetune.trainer_class(), "create_scheduler", capture)
    settings = replace(FAST, epochs=2, warmup_ratio=ratio)
    with pytest.raises(_SchedulerSeen):
        finetune_task(
            str(tiny_bert), separable_task, settings, task="separable", progress=False,
            cache_root=tmp_path / "cache",
        )  # fmt: skip
    steps = 2 * math.ceil(len(separable_task["train"]) / FAST.batch_size)
    assert seen["steps"] == steps == 16
    lr = seen["lr"]
    warmup = 0 if lr[0] > 0 else round(1 / lr[1])
    assert warmup == math.ceil(share * steps)
    if 0 < warmup < steps:
        assert lr[warmup] == 1.0 and lr[warmup - 1] < 1.0  # the peak is reached at step W


def test_curve_rows_by_hand():
    from repgeo_utils.finetune import curve_rows

    assert curve_rows(5, seed=0, limit=8) == [0, 1, 2, 3, 4]
    rows = curve_rows(300, seed=3, limit=150)
    assert len(rows) == len(set(rows)) == 150 and rows == sorted(rows) and rows[-1] < 300
    assert rows == curve_rows(300, seed=3, limit=150) != curve_rows(300, seed=4, limit=150)
    with pytest.raises(ValueError, match="limit"):
        curve_rows(10, seed=0, limit=0)


def test_the_curve_sample_leaves_the_fine_tuned_weights_unchanged(
    tiny_bert, separable_task, tmp_path, monkeypatch
):
    """Scoring fewer validation texts at each evaluation changes the curve only: the trained
    weights are the same bits (the evaluations draw the same random numbers either way)."""
    import torch

    from repgeo_utils import finetune

    settings = FinetuneSettings(learning_rate=3e-3, epochs=1, batch_size=16, max_length=16)
    n_val = len(separable_task["validation"])
    weights, curves = [], []
    for limit in (n_val, 5):
        monkeypatch.setattr(finetune, "CURVE_TEXTS", limit)
        result = finetune_task(
            str(tiny_bert), separable_task, settings, task="separable", seed=7, progress=False,
            cache_root=tmp_path / f"cache{limit}",
        )  # fmt: skip
        model, _ = load_model(result.checkpoint, kind="classifier")
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        curves.append(result.history)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert curves[0]["train_loss"].equals(curves[1]["train_loss"])
    # 5 texts: accuracies in fifths
    assert (curves[1]["val_accuracy"] * 5).round(9).mod(1).eq(0).all()
    assert not curves[0]["val_loss"].equals(curves[1]["val_loss"])
