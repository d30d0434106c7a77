"""Downstream performance over pretraining checkpoints (paper 2, section 3.2 and appendix C.2).

Paper 2 reports that the compression-seeking phase comes "with significant improvement in
downstream task performance" and correlates accuracy with RankMe and alpha-ReQ across
checkpoints (appendix C.2: Spearman and Pearson with p-values). Per checkpoint we measure:

- **linear-probe accuracy** (:func:`linear_probe_accuracy`): a logistic regression on the
  standardised last-token final-layer states of a labelled task's training split, scored on
  its test split (BBC topic from headlines, tweet sentiment);
- **few-shot accuracy** (:func:`few_shot_accuracy`): the LM picks the answer it finds most
  likely after a prompt of labelled examples, with the chance level (the majority class's
  share of the test rows) and a one-sided binomial test of being above it, because a small LM
  often is not;

and :func:`correlation_table` gives each measure's correlation with RankMe and alpha across
checkpoints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from .. import validate
from ..cache import cache_entry, key_hash
from ..data import load_task
from ..models import load_model, resolve_model
from .checkpoints import quiet_progress_bars, revision_step
from .sweeps import last_token_features, model_positions

log = logging.getLogger(__name__)

#: How a labelled text becomes a prompt for the few-shot measure (the answer follows " ").
FEW_SHOT_TEMPLATES: dict[str, str] = {
    "bbc-news": "Headline: {text}\nTopic:",
    "tweets-3way": "Tweet: {text}\nSentiment:",
    "tweets-binary": "Tweet: {text}\nSentiment:",
}


@dataclass(frozen=True)
class LabelledTexts:
    """Train and test texts of a classification task with their label ids and names."""

    task: str
    labels: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray

    def fingerprint(self) -> str:
        return key_hash(
            {
                "task": self.task,
                "labels": self.labels,
                "train": [self.train_texts, self.train_labels.tolist()],
                "test": [self.test_texts, self.test_labels.tolist()],
            },
            16,
        )


def labelled_texts(
    task: str, *, max_rows: int | None = 3000, max_test: int | None = 500, seed: int = 0
) -> LabelledTexts:
    """A task of :mod:`repgeo_utils.data` (texts as written, no preprocessing), split as
    ``load_task`` splits it (seeded, stratified): its train split for fitting, its test split
    (at most ``max_test`` rows) for scoring."""
    dataset = load_task(task, max_rows=max_rows, preprocess=None, seed=seed)
    labels = list(dataset["train"].features["label"].names)
    test = dataset["test"]
    if max_test is not None:
        test = test.select(range(min(max_test, len(test))))
    return LabelledTexts(
        task,
        labels,
        [" ".join(str(t).split()) for t in dataset["train"]["text"]],
        np.asarray(dataset["train"]["label"], dtype=int),
        [" ".join(str(t).split()) for t in test["text"]],
        np.asarray(test["label"], dtype=int),
    )


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    seed: int = 0,
    c: float = 1.0,
) -> float:
    """Test accuracy of a logistic regression (L2, ``C = c``, lbfgs) on standardised
    features, fitted on the training rows."""
    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=2000, random_state=seed),
    )
    probe.fit(np.asarray(train_features, dtype=np.float64), train_labels)
    return float(probe.score(np.asarray(test_features, dtype=np.float64), test_labels))


def majority_rate(labels: np.ndarray) -> float:
    """Share of the most frequent label: the accuracy of always answering it."""
    counts = np.bincount(np.asarray(labels, dtype=int))
    return float(counts.max() / counts.sum())


def above_chance(
    correct: int, total: int, chance: float, alpha: float = 0.01
) -> tuple[bool, float]:
    """One-sided binomial test of ``correct`` of ``total`` against the rate ``chance``:
    (significant at ``alpha``, p-value)."""
    p = float(stats.binomtest(int(correct), int(total), chance, alternative="greater").pvalue)
    return p < alpha, p


def _answer_logprob(model, tokenizer, prompts: Sequence[str], answer: str, batch_size: int = 64):
    """``log p(" " + answer | prompt)`` summed over the answer's tokens, per prompt."""
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.empty(len(prompts))
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
            width = max(len(e) for e in enc) + len(answer_ids)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            target = torch.full_like(ids, -100)
            for i, e in enumerate(enc):
                seq = e + answer_ids
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
                target[i, len(e) : len(seq)] = torch.tensor(answer_ids)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            labels = target[:, 1:]
            picked = logp[:, :-1].gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out[start : start + len(chunk)] = (picked * (labels != -100)).sum(1).numpy()
    return out


def few_shot_prompts(
    data: LabelledTexts,
    tokenizer,
    *,
    shots: int,
    max_tokens: int,
    seed: int = 0,
) -> list[str]:
    """One prompt per test text: up to ``shots`` seeded training examples (``template`` +
    " " + label, a blank line between them), then the test text's template. Examples are
    dropped from the front, and the test text cut at words, until the prompt plus the longest
    answer fits ``max_tokens`` (the model's context)."""
    template = FEW_SHOT_TEMPLATES.get(data.task)
    if template is None:
        raise ValueError(
            f"no few-shot template for task {data.task!r}; known: {', '.join(FEW_SHOT_TEMPLATES)}"
        )
    longest_answer = max(len(tokenizer(" " + a, add_special_tokens=False)["input_ids"])
                         for a in data.labels)  # fmt: skip
    budget = max_tokens - longest_answer

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = np.random.default_rng(seed)
    prompts = []
    for text in data.test_texts:
        picks: list[int] = (
            rng.choice(len(data.train_texts), size=shots, replace=False).tolist() if shots else []
        )
        demos = [template.format(text=data.train_texts[i]) + " " + data.labels[data.train_labels[i]]
                 for i in picks]  # fmt: skip
        words = text.split()
        query = template.format(text=" ".join(words))
        while n_tokens(query) > budget and len(words) > 1:
            words = words[: max(1, len(words) - max(1, (n_tokens(query) - budget) // 2))]
            query = template.format(text=" ".join(words))
        while demos and n_tokens("\n\n".join([*demos, query])) > budget:
            demos = demos[1:]
        prompts.append("\n\n".join([*demos, query]))
    return prompts


def few_shot_accuracy(
    model, tokenizer, data: LabelledTexts, *, shots: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Accuracy of answering each test text with the label whose tokens the LM finds most
    likely after :func:`few_shot_prompts` (summed log-probability), against the majority-class
    rate (the chance level an LM that always picks one answer reaches) with a binomial test."""
    positions = model_positions(model) or 2048
    prompts = few_shot_prompts(data, tokenizer, shots=shots, max_tokens=positions, seed=seed)
    model.eval()
    scores = np.stack([_answer_logprob(model, tokenizer, prompts, a) for a in data.labels], 1)
    predicted = scores.argmax(1)
    correct = int((predicted == data.test_labels).sum())
    chance = majority_rate(data.test_labels)
    significant, p = above_chance(correct, len(prompts), chance)
    return {
        "accuracy": correct / len(prompts),
        "chance": chance,
        "uniform_chance": 1.0 / len(data.labels),
        "above_chance": bool(significant),
        "above_chance_p": p,
        "predicted_classes": int(len(np.unique(predicted))),
        "rows": len(prompts),
    }


@dataclass(frozen=True)
class DownstreamSettings:
    """What :func:`downstream_over_checkpoints` measures."""

    tasks: tuple[str, ...] = ("bbc-news", "tweets-binary")
    max_rows: int | None = 3000  # rows per task before the 80/10/10 split
    max_test: int | None = 500  # test rows scored
    shots: int = 2  # few-shot examples (fewer when they do not fit the context)
    few_shot: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty tuple of task names, got {self.tasks!r}")
        for task in self.tasks:
            validate.one_of("tasks[]", task, tuple(FEW_SHOT_TEMPLATES))
        if self.max_rows is not None:
            validate.integer("max_rows", self.max_rows, minimum=20)
        if self.max_test is not None:
            validate.positive_int("max_test", self.max_test)
        validate.non_negative_int("shots", self.shots)
        validate.non_negative_int("seed", self.seed)


def downstream_over_checkpoints(
    model: str | Path,
    revisions: Sequence[str],
    settings: DownstreamSettings | None = None,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Per revision and task: linear-probe accuracy of the last-token final-layer states and
    few-shot accuracy, with the chance levels. One cache entry per revision under
    ``data/cache/downstream/`` (key: the weights, the task data, the settings).

    Columns: ``revision, step, task, probe_accuracy, few_shot_accuracy, chance,
    uniform_chance, few_shot_above_chance, few_shot_p, few_shot_classes``."""
    settings = settings or DownstreamSettings()
    tasks = {t: labelled_texts(t, max_rows=settings.max_rows, max_test=settings.max_test,
                               seed=settings.seed) for t in settings.tasks}  # fmt: skip
    rows = []
    for revision in tqdm(list(revisions), desc="downstream", disable=not progress, leave=False):
        ref = resolve_model(model, revision)
        key = {
            **ref.as_key(),
            "fingerprint": ref.fingerprint() if ref.source != "hub" else None,
            "tasks": {t: d.fingerprint() for t, d in tasks.items()},
            "settings": settings.__dict__ | {"tasks": list(settings.tasks)},
            "format": 1,
        }
        with cache_entry("downstream", ref.cache_name, key) as entry:
            if not entry.exists:
                result = _measure_revision(model, revision, tasks, settings)
                (entry.build_dir / "downstream.json").write_text(json.dumps(result))
        result = json.loads((entry.path / "downstream.json").read_text())
        for task, values in result.items():
            rows.append({"revision": revision, "step": revision_step(revision), "task": task,
                         **values})  # fmt: skip
    return pd.DataFrame(rows)


def _measure_revision(
    model: str | Path,
    revision: str,
    tasks: dict[str, LabelledTexts],
    settings: DownstreamSettings,
) -> dict[str, dict[str, Any]]:
    with quiet_progress_bars():
        net, tokenizer = load_model(model, revision, kind="causal-lm")
    final = int(net.config.num_hidden_layers)
    out: dict[str, dict[str, Any]] = {}
    for task, data in tasks.items():
        train, _, _ = last_token_features(net, tokenizer, data.train_texts, [final])
        test, _, _ = last_token_features(net, tokenizer, data.test_texts, [final])
        values: dict[str, Any] = {
            "probe_accuracy": linear_probe_accuracy(
                train[final], data.train_labels, test[final], data.test_labels, seed=settings.seed
            ),
            "chance": majority_rate(data.test_labels),
            "uniform_chance": 1.0 / len(data.labels),
        }
        if settings.few_shot:
            shot = few_shot_accuracy(net, tokenizer, data, shots=settings.shots, seed=settings.seed)
            values.update(
                few_shot_accuracy=shot["accuracy"],
                few_shot_above_chance=shot["above_chance"],
                few_shot_p=shot["above_chance_p"],
                few_shot_classes=shot["predicted_classes"],
            )
        out[task] = values
    return out


def correlation_table(
    table: pd.DataFrame,
    measures: Sequence[str],
    geometry: Sequence[str] = ("rankme_covariance", "alpha"),
    *,
    by: str | None = "task",
    min_step: int = 0,
) -> pd.DataFrame:
    """Spearman and Pearson correlation (with p-values) of each of ``measures`` with each of
    ``geometry`` across the checkpoints of ``table`` (one row per checkpoint, or per
    checkpoint and ``by`` group), from ``min_step`` on: paper 2's appendix C.2 table."""
    part = table[table["step"] >= min_step]
    groups = [(None, part)] if by is None else list(part.groupby(by, sort=True))
    rows = []
    for name, group in groups:
        for measure in measures:
            for geo in geometry:
                sub = group[[measure, geo]].dropna()
                row: dict[str, Any] = {"measure": measure, "against": geo,
                                       "checkpoints": len(sub), "from_step": min_step}  # fmt: skip
                if by is not None:
                    row[by] = name
                if len(sub) >= 3 and sub[measure].nunique() > 1 and sub[geo].nunique() > 1:
                    s = stats.spearmanr(sub[measure], sub[geo])
                    p = stats.pearsonr(sub[measure], sub[geo])
                    row.update(spearman=float(s.statistic), spearman_p=float(s.pvalue),
                               pearson=float(p.statistic), pearson_p=float(p.pvalue))  # fmt: skip
                else:
                    row.update(spearman=np.nan, spearman_p=np.nan, pearson=np.nan,
                               pearson_p=np.nan)  # fmt: skip
                rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "FEW_SHOT_TEMPLATES",
    "DownstreamSettings",
    "LabelledTexts",
    "above_chance",
    "correlation_table",
    "downstream_over_checkpoints",
    "few_shot_accuracy",
    "few_shot_prompts",
    "labelled_texts",
    "linear_probe_accuracy",
    "majority_rate",
]
