"""Notebook 02: per-layer similarity of pre-trained and fine-tuned hidden states (paper 1,
section 3.2.2, Figs 1-2)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..report import Findings, pm, recorded_spread
from ..similarity import MEASURE_LABELS, MEASURES, PAPER_LAST_LAYER, PAPER_MEASURE

NOTEBOOK = "02_activation_similarity"

#: Paper 1's code output for IMDb at each model's last layer (mean per-token cosine): shallower
#: BERTs stay more similar to their pre-trained selves (the text says so for every layer).
PAPER_SIZE_LAST_LAYER: dict[str, float] = {
    "bert-base": 0.49,
    "bert-medium": 0.52,
    "bert-small": 0.71,
    "bert-tiny": 0.90,
}


def _wide(sim: pd.DataFrame, task: str) -> pd.DataFrame:
    return sim[sim["task"] == task].pivot(index="layer", columns="measure", values="value")


def _spread(spreads: pd.DataFrame | None, task: str, layer: int, measure: str) -> float | None:
    if spreads is None:
        return None
    row = spreads[
        (spreads["task"] == task) & (spreads["layer"] == layer) & (spreads["measure"] == measure)
    ]
    return float(row["spread"].iloc[0]) if len(row) else None


def findings(
    sim: pd.DataFrame,
    spreads: pd.DataFrame | None = None,
    *,
    profile: str = "quick",
    parameters: dict | None = None,
) -> Findings:
    """Every measure at the first and the last layer per task (with its half-sample spread),
    and whether every measure falls from the first to the last layer for every task."""
    found = Findings(NOTEBOOK, profile=profile, parameters=dict(parameters or {}))
    falls = []
    for task in sim["task"].unique():
        w = _wide(sim, task)
        last = int(w.index.max())
        for measure in w.columns:
            for layer in (0, last):
                s = _spread(spreads, task, layer, measure)
                found.number(
                    f"{task}.{measure}.layer{layer}",
                    float(w.loc[layer, measure]),
                    spread=s,
                    spread_source="half-sample standard error over texts" if s else "",
                )
            falls.append(w.loc[last, measure] < w.loc[0, measure])
    found.verdict("falls_with_depth", "yes" if all(falls) else "no")
    return found


def _largest_drop(w: pd.DataFrame, measure: str) -> tuple[int, float]:
    drops = -w[measure].diff().dropna()
    layer = int(drops.idxmax())
    return layer, float(drops.max())


def summary(
    sim: pd.DataFrame,
    stands_for: Mapping[str, str],
    spreads: pd.DataFrame | None = None,
    *,
    model_sizes: tuple[str, ...] = (),
    by_size: pd.DataFrame | None = None,
) -> str:
    """The notebook's closing bullets and paragraphs, from ``sim`` (``layer_similarity``
    tables of every task, with a ``task`` column) and the half-sample ``spreads``."""
    tasks = list(sim["task"].unique())
    lines = []
    for task in tasks:
        w = _wide(sim, task)
        last = int(w.index.max())
        parts = [
            f"{MEASURE_LABELS[m]} {w.loc[0, m]:.3f} → "
            f"{pm(w.loc[last, m], _spread(spreads, task, last, m), digits=3)}"
            for m in MEASURES
        ]
        lines.append(
            f"- **{task}** (stands for {stands_for.get(task, task)}), layer 0 → {last}: "
            + "; ".join(parts)
            + "."
        )
    text = ["\n".join(lines), ""]
    if spreads is not None:
        text.append(
            "The ± is the half-sample standard error over texts (how much the value depends on "
            "which test texts were measured); "
            + (
                f"over the recorded seeds the last-layer per-token cosine moved by {seed_note}. "
                if (seed_note := _seed_note(sim, tasks))
                else "the fine-tuning seed moves the values more (see benchmarks/reproducibility.md). "
            )
        )
    first = {t: _wide(sim, t).loc[0] for t in tasks}
    lowest_first = min(float(first[t][m]) for t in tasks for m in MEASURES)
    monotone = {
        (t, m): bool((_wide(sim, t)[m].diff().dropna() <= 1e-3).all())
        for t in tasks
        for m in MEASURES
    }
    not_monotone = [f"{m} on {t}" for (t, m), ok in monotone.items() if not ok]
    drops = {t: _largest_drop(_wide(sim, t), PAPER_MEASURE) for t in tasks}
    last_layers = {t: int(_wide(sim, t).index.max()) for t in tasks}
    steepest_at_top = all(drops[t][0] >= last_layers[t] - 1 for t in tasks)
    text.append(
        f"At the embeddings (layer 0) every measure is at least {lowest_first:.3f} for every task. "
        + (
            "From there every measure falls with depth, layer by layer, for every task"
            if not not_monotone
            else f"Every measure falls with depth except {', '.join(not_monotone)}, which rises "
            "somewhere on the way"
        )
        + (
            "; the per-token cosine drops most in one of the last two layers for every task "
            f"({', '.join(f'{t}: layer {drops[t][0]}, -{drops[t][1]:.2f}' for t in tasks)}). "
            "That is the shape of the paper's Fig 1: the lower layers barely move, the top is "
            "rewritten."
            if steepest_at_top
            else "; the largest single-layer drop of the per-token cosine is at "
            + ", ".join(f"layer {drops[t][0]} ({t})" for t in tasks)
            + "."
        )
    )
    paper = {
        t: PAPER_LAST_LAYER[stands_for[t]] for t in tasks if stands_for.get(t) in PAPER_LAST_LAYER
    }
    if paper:
        ours = {t: float(_wide(sim, t).loc[last_layers[t], PAPER_MEASURE]) for t in paper}
        ours_low, paper_low = min(ours, key=ours.__getitem__), min(paper, key=paper.__getitem__)
        text.append(
            "\n\nOn the paper's own measure (the mean per-token cosine of its code), our last "
            "layer gives "
            + ", ".join(f"{ours[t]:.2f} ({t})" for t in paper)
            + " against the paper's bert-base "
            + ", ".join(f"{paper[t]:.2f} ({stands_for[t]})" for t in paper)
            + ". "
            + (
                f"In both, the task that moves the last layer most is the topic task ({ours_low})."
                if ours_low == paper_low
                else f"The task that moves our last layer most is {ours_low}; in the paper it is "
                f"the one {paper_low} stands for."
            )
            + " The models (6 against 12 layers), the data and the length of training all differ, "
            "so the closeness of single numbers means little; the ordering and the shape are "
            "what carry over."
        )
    text.append("\n\n" + _measures_disagree(sim, tasks, last_layers))
    text.append("\n\n" + _sizes(model_sizes, by_size))
    return "\n".join(text[:2]) + "".join(text[2:])


def _seed_note(sim: pd.DataFrame, tasks: list[str]) -> str:
    notes = []
    for t in tasks:
        last = int(_wide(sim, t).index.max())
        s = recorded_spread(NOTEBOOK, f"{t}.{PAPER_MEASURE}.layer{last}")
        if s is not None:
            notes.append(f"± {s.half_range:.2f} ({t}, {s.source})")
    return "; ".join(notes)


def _measures_disagree(sim: pd.DataFrame, tasks: list[str], last_layers: dict[str, int]) -> str:
    sentences = []
    orthogonal = [
        t
        for t in tasks
        if _wide(sim, t).loc[last_layers[t], "cosine_of_means"]
        < _wide(sim, t).loc[last_layers[t], "mean_token_cosine"] - 0.1
    ]
    for t in orthogonal:
        w = _wide(sim, t)
        sentences.append(
            f"On {t} the cosine of means at the last layer is "
            f"{w.loc[last_layers[t], 'cosine_of_means']:.2f}, far below the per-token cosine "
            f"({w.loc[last_layers[t], 'mean_token_cosine']:.2f}): the two models' average vectors "
            "point in different directions although individual tokens stay closer."
        )
    below = {}
    for t in tasks:
        w = _wide(sim, t)
        layer = last_layers[t] - 1
        below[t] = (float(w.loc[layer, "linear_cka"]), float(w.loc[layer, "mean_token_cosine"]))
    if all(cka < cos for cka, cos in below.values()):
        ckas = [v[0] for v in below.values()]
        coss = [v[1] for v in below.values()]
        sentences.append(
            f"One layer below the top, linear CKA is already {min(ckas):.2f}-{max(ckas):.2f} while "
            f"the per-token cosine is {min(coss):.2f}-{max(coss):.2f}: how the tokens are "
            "arranged relative to each other changes before their own coordinates do."
        )
    else:
        sentences.append(
            "One layer below the top, linear CKA is not below the per-token cosine for every task "
            "("
            + ", ".join(f"{t}: CKA {v[0]:.2f}, cosine {v[1]:.2f}" for t, v in below.items())
            + ")."
        )
    sentences.append(
        "A similarity-per-layer curve therefore needs its measure named; the paper's published "
        "curves are the per-token cosine."
    )
    return " ".join(sentences)


def _sizes(model_sizes: tuple[str, ...], by_size: pd.DataFrame | None) -> str:
    if len(model_sizes) < 2 or by_size is None:
        return (
            "Offline there is one pre-trained model size, so the paper's size comparison (its "
            "Fig 2) is not drawn here; the `paper` profile runs it for the BERT sizes. The paper "
            "finds that shallower BERTs stay more similar to their pre-trained selves at every "
            "layer (IMDb, last layer: "
            + ", ".join(f"{m} {v:.2f}" for m, v in PAPER_SIZE_LAST_LAYER.items())
            + ")."
        )
    last = by_size.loc[by_size.groupby(["task", "model"])["layer"].idxmax()]
    last = last[last["measure"] == PAPER_MEASURE]
    order = last.groupby("model")["value"].mean().sort_values()
    return (
        "Across model sizes the mean last-layer per-token cosine orders "
        + " < ".join(f"{m} ({v:.2f})" for m, v in order.items())
        + "; the paper (IMDb) has "
        + " < ".join(
            f"{m} ({v:.2f})" for m, v in sorted(PAPER_SIZE_LAST_LAYER.items(), key=lambda kv: kv[1])
        )
        + "."
    )
