"""Notebook 01: fine-tuning on three task types, before and after (paper 1, Table 2, Fig 6)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..finetune import PAPER_TABLE2, FinetuneResult
from ..report import Findings, pm, recorded_spread

NOTEBOOK = "01_finetuning"


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` independent test examples."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def _n_test(result: FinetuneResult) -> int:
    return int(np.asarray(result.post.confusion).sum())


def findings(
    results: Mapping[str, FinetuneResult], *, profile: str = "quick", parameters: dict | None = None
) -> Findings:
    """Pre and post accuracy and macro-F1 per task (with the binomial standard error), the
    lowest-recall class, and whether every task learned (post - pre > 2 standard errors)."""
    found = Findings(NOTEBOOK, profile=profile, parameters=dict(parameters or {}))
    learned = []
    for task, r in results.items():
        n = _n_test(r)
        se = binomial_se(r.post.accuracy, n)
        source = f"binomial standard error, {n} test texts"
        found.number(f"{task}.pre_accuracy", r.pre.accuracy, what="untrained head, test split")
        found.number(f"{task}.post_accuracy", r.post.accuracy, spread=se, spread_source=source)
        found.number(f"{task}.post_macro_f1", r.post.macro_f1)
        found.verdict(f"{task}.lowest_recall_class", str(r.post.per_class["recall"].idxmin()))
        learned.append(r.post.accuracy - r.pre.accuracy > 2 * se)
    found.verdict("every_task_learned", "yes" if all(learned) else "no")
    return found


def _untrained_head(result: FinetuneResult) -> str:
    confusion = np.asarray(result.pre.confusion)
    predicted = confusion.sum(0)
    top = int(predicted.argmax())
    share = predicted[top] / predicted.sum()
    truth = confusion.sum(1)[top] / confusion.sum()
    name = result.pre.label_names[top]
    return f"{share:.0%} of its test predictions are `{name}`, a class that is {truth:.0%} of the test texts"


def summary(
    results: Mapping[str, FinetuneResult],
    stands_for: Mapping[str, str],
    *,
    paper: Mapping[str, tuple[float, float]] = PAPER_TABLE2,
) -> str:
    """Markdown bullets and a closing paragraph, every number and claim from ``results``."""
    lines = []
    for task, r in results.items():
        n = _n_test(r)
        se = binomial_se(r.post.accuracy, n)
        seeds = recorded_spread(NOTEBOOK, f"{task}.post_accuracy")
        spread = f" (± binomial standard error on {n} test texts" + (
            f"; {seeds.source}: ± {seeds.half_range:.2f})" if seeds else ")"
        )
        worst = str(r.post.per_class["recall"].idxmin())
        support = r.post.per_class["support"]
        smallest = "the class with the fewest test texts" if worst == support.idxmin() else (
            f"not the smallest class ({support.idxmin()} has {int(support.min())})"
        )  # fmt: skip
        lines.append(
            f"- **{task}** (stands for {stands_for.get(task, task)}): accuracy "
            f"{r.pre.accuracy:.2f} → {pm(r.post.accuracy, se)}{spread}, macro-F1 "
            f"{r.pre.macro_f1:.2f} → {r.post.macro_f1:.2f}; lowest recall `{worst}` "
            f"{r.post.per_class.loc[worst, 'recall']:.2f} ({int(support[worst])} test texts, "
            f"{smallest})."
        )
    gains = {t: r.post.accuracy - r.pre.accuracy for t, r in results.items()}
    below = [
        t for t, r in results.items() if gains[t] <= 2 * binomial_se(r.post.accuracy, _n_test(r))
    ]
    paragraph = [
        "Fine-tuning lifts every task above its untrained-head baseline by more than twice the "
        "standard error, as in the paper's Table 2."
        if not below
        else f"Fine-tuning does not clearly lift {', '.join(below)} above its untrained-head "
        "baseline (gain within twice the standard error)."
    ]
    hardest = min(results, key=lambda t: results[t].post.accuracy)
    multi = [t for t in results if stands_for.get(t) == "spotify"]
    if multi:
        paragraph.append(
            f"The multi-class sentiment task ({multi[0]}) is the hardest of the three, as in the "
            "paper."
            if hardest == multi[0]
            else f"Unlike the paper, the hardest task here is {hardest}, not the multi-class "
            f"sentiment task ({multi[0]})."
        )
    compared = {
        t: abs(r.post.accuracy - paper[stands_for[t]][1])
        for t, r in results.items()
        if stands_for.get(t) in paper
    }
    if compared:
        closest = min(compared, key=lambda t: compared[t])
        paragraph.append(
            f"Closest to the paper's fine-tuned accuracy is {closest} "
            f"({results[closest].post.accuracy:.2f} against {paper[stands_for[closest]][1]:.2f} "
            f"for {stands_for[closest]}); the others differ by up to "
            f"{max(compared.values()):.2f}, with other data, a smaller model and shorter training."
        )
    examples = "; ".join(f"{t}: {_untrained_head(r)}" for t, r in results.items())
    paragraph.append(
        "The baselines differ from the paper's because an untrained head sends most texts to one "
        f"class, so its accuracy is about that class's share of the test split ({examples})."
    )
    return "\n".join(lines) + "\n\n" + " ".join(paragraph)
