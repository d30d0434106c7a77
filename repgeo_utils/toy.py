"""The linear cross-entropy toy model of paper 2 (Li et al., 2025, section 3.3 and appendix B).

``n`` inputs with orthonormal rows (one-hot vectors, so ``X = I``) are mapped linearly to a
``d``-dimensional embedding ``F = X W`` and read out linearly to ``C`` class logits
``Z = F U``; the loss is cross-entropy on the softmax of ``Z`` (or, as a control, mean squared
error on ``Z``), minimised by full-batch gradient descent from a small initialisation. We track
RankMe of the embeddings ``F`` over the steps.

Each input's class is drawn from a class distribution ``pi`` (Zipf-skewed, ``pi_c ~ c^-s``,
or uniform), and its target is the soft label ``(1 - eps) e_y + eps pi``: ``eps`` is the
irreducible share of the next-token distribution that no context predicts, as in language
modelling. With hard labels (``eps = 0``) the logits grow without bound and RankMe of every
condition only collapses and then rises; the soft target gives the loss a finite optimum whose
rank-``d`` approximation the bottleneck has to share out, and that is what makes the
compression (a late fall of RankMe) appear.

Conditions (``toy_conditions``): the paper's main setting (skewed classes, ``d < C``) and its
controls, uniform classes, no bottleneck (``d = C``), and MSE instead of cross-entropy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from threadpoolctl import threadpool_limits

from . import validate
from .spectral import eigenspectrum, rankme

log = logging.getLogger(__name__)

ToyLoss = Literal["cross_entropy", "mse"]
ToyInit = Literal["small", "balanced"]


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one toy-model run; ``seed`` fixes the labels and the initialisation."""

    n_samples: int = 512  # inputs, one-hot (orthonormal rows)
    n_classes: int = 64  # C, the "vocabulary"
    d_embed: int = 6  # d, the embedding width; d < C is the bottleneck
    zipf_exponent: float = 1.5  # class frequencies pi_c ~ c^-s; 0 gives uniform classes
    label_smoothing: float = 0.3  # eps in the targets (1 - eps) e_y + eps pi
    loss: ToyLoss = "cross_entropy"
    # on the mean loss; 12 keeps every condition's loss decreasing monotonically (gradient-flow
    # regime). Above ~15 the main condition oscillates and its RankMe fall is exaggerated.
    learning_rate: float = 12.0
    steps: int = 2000  # full-batch gradient-descent steps
    init_scale: float = 1e-3  # standard deviation of the Gaussian initial weights
    seed: int = 0
    # "small": W and U independent small Gaussians; "balanced": W^T W = U U^T at step 0, the
    # condition of the paper's Theorem B.2 (gradient flow then keeps it, so W and U share
    # their singular values)
    init: ToyInit = "small"
    snapshot_steps: tuple[int, ...] = ()  # steps at which to keep F (class clusters, Fig 5B)
    n_singular: int = 6  # top singular values of W and U recorded at every step (Fig 5D)

    def __post_init__(self) -> None:
        validate.integer("n_samples", self.n_samples, minimum=2)
        validate.integer("n_classes", self.n_classes, minimum=2)
        validate.positive_int("d_embed", self.d_embed)
        validate.non_negative_float("zipf_exponent", self.zipf_exponent)
        validate.fraction("label_smoothing", self.label_smoothing, open_high=True)
        validate.one_of("loss", self.loss, ("cross_entropy", "mse"))
        validate.one_of("init", self.init, ("small", "balanced"))
        validate.positive_float("learning_rate", self.learning_rate)
        validate.positive_int("steps", self.steps)
        validate.positive_float("init_scale", self.init_scale)
        validate.non_negative_int("seed", self.seed)

    def class_distribution(self) -> Float[np.ndarray, " classes"]:
        """``pi``: the class frequencies labels are drawn from (Zipf, or uniform at s = 0)."""
        ranks = np.arange(1, self.n_classes + 1, dtype=np.float64)
        weights = ranks**-self.zipf_exponent
        return weights / weights.sum()


def toy_conditions(base: ToyConfig | None = None) -> dict[str, ToyConfig]:
    """The main condition and four controls, each differing from ``base`` in one setting.

    The paper's three controls (its Figs 12-13): uniform classes (Zipf exponent 0), no
    bottleneck (``d = C``), MSE instead of cross-entropy; and ours, hard labels (``eps = 0``),
    which shows what the soft targets contribute.
    """
    base = base or ToyConfig()
    if base.d_embed >= base.n_classes:
        raise ValueError(
            f"The main condition needs a bottleneck, d_embed < n_classes; got "
            f"d_embed={base.d_embed}, n_classes={base.n_classes}."
        )
    if base.zipf_exponent == 0:
        raise ValueError("The main condition needs skewed classes (zipf_exponent > 0).")
    if base.loss != "cross_entropy":
        raise ValueError("The main condition uses the cross-entropy loss.")
    if base.label_smoothing == 0:
        raise ValueError("The main condition uses soft targets (label_smoothing > 0).")
    return {
        "main": base,
        "uniform classes": replace(base, zipf_exponent=0.0),
        "no bottleneck": replace(base, d_embed=base.n_classes),
        "MSE loss": replace(base, loss="mse"),
        "hard labels": replace(base, label_smoothing=0.0),
    }


@dataclass(frozen=True)
class ToyRun:
    """RankMe of the embeddings (both variants) and the loss at every step of one run."""

    config: ToyConfig
    steps: Int[np.ndarray, " points"]  # 0 (initialisation) .. config.steps
    rankme_covariance: Float[np.ndarray, " points"]
    rankme_singular: Float[np.ndarray, " points"]
    loss: Float[np.ndarray, " points"]
    labels: Int[np.ndarray, " samples"]
    embeddings: Float[np.ndarray, "samples d"]  # F after the last step
    # top singular values of W (= F, the inputs being one-hot) and of U at every step
    singular_w: Float[np.ndarray, "points top"] = field(default_factory=lambda: np.zeros((0, 0)))
    singular_u: Float[np.ndarray, "points top"] = field(default_factory=lambda: np.zeros((0, 0)))
    snapshots: dict[int, np.ndarray] = field(
        default_factory=dict
    )  # step -> F (config.snapshot_steps)
    readout: Float[np.ndarray, "d classes"] | None = None  # U after the last step
    # balance_gap(W, U) at every step: 0 under the paper's balanced initialisation
    balance: Float[np.ndarray, " points"] = field(default_factory=lambda: np.zeros(0))

    def rankme(self, variant: str = "covariance") -> Float[np.ndarray, " points"]:
        """RankMe trajectory of the named variant (``"covariance"`` or ``"singular"``)."""
        if variant == "covariance":
            return self.rankme_covariance
        if variant == "singular":
            return self.rankme_singular
        raise ValueError(f"Unknown RankMe variant {variant!r}; use 'covariance' or 'singular'.")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def train_toy(config: ToyConfig) -> ToyRun:
    """Train the toy model with full-batch gradient descent; RankMe of ``F`` at every step.

    Loss (mean over the ``n`` inputs): cross-entropy ``-sum_c T_ic log softmax(Z_i)_c`` or
    MSE ``0.5 * sum_c (Z_ic - T_ic)^2``, with soft targets ``T = (1 - eps) onehot(y) + eps pi``.
    Deterministic for a given ``config`` (float64 NumPy, one BLAS thread).
    """
    if not isinstance(config, ToyConfig):
        raise TypeError(
            f"config must be a ToyConfig, got {type(config).__name__} {config!r:.80}; make one "
            "with ToyConfig(**settings)"
        )
    rng = np.random.default_rng(config.seed)
    n, c, d = config.n_samples, config.n_classes, config.d_embed
    pi = config.class_distribution()
    labels = rng.choice(c, size=n, p=pi)
    eps = config.label_smoothing
    targets = (1.0 - eps) * np.eye(c)[labels] + eps * pi[None, :]
    # X = I (one-hot inputs), so the embedding F = X W is W itself
    w = rng.normal(scale=config.init_scale, size=(n, d))
    u = rng.normal(scale=config.init_scale, size=(d, c))
    if config.init == "balanced":
        w = balanced_embedding(u, n, rng)
    lr = config.learning_rate
    top = min(config.n_singular, d, c, n)
    sv_w = np.empty((config.steps + 1, top))
    sv_u = np.empty((config.steps + 1, top))
    snapshots: dict[int, np.ndarray] = {}

    points = config.steps + 1
    rm_cov = np.empty(points)
    rm_sing = np.empty(points)
    losses = np.empty(points)
    gaps = np.empty(points)
    # one BLAS thread: the matrices are small, and the result is bit-identical on rerun;
    # overflow of a diverging run is caught below by the finite-loss check
    with threadpool_limits(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
        for step in range(points):
            logits = w @ u
            if config.loss == "cross_entropy":
                probs = _softmax(logits)
                losses[step] = -np.sum(targets * np.log(np.clip(probs, 1e-300, None))) / n
                grad_logits = (probs - targets) / n
            else:
                residual = logits - targets
                losses[step] = 0.5 * np.sum(residual**2) / n
                grad_logits = residual / n
            if not np.isfinite(losses[step]):
                raise FloatingPointError(
                    f"The toy model diverged at step {step}; lower learning_rate "
                    f"(now {lr}) for {asdict(config)}."
                )
            spectrum = eigenspectrum(w)
            rm_cov[step] = rankme(spectrum, "covariance")
            rm_sing[step] = rankme(spectrum, "singular")
            sv_w[step] = np.linalg.svd(w, compute_uv=False)[:top]
            sv_u[step] = np.linalg.svd(u, compute_uv=False)[:top]
            gaps[step] = balance_gap(w, u)
            if step in config.snapshot_steps:
                snapshots[step] = w.copy()
            if step == config.steps:
                break
            grad_u = w.T @ grad_logits
            grad_w = grad_logits @ u.T
            w = w - lr * grad_w
            u = u - lr * grad_u
    log.info(
        "toy model %s: RankMe %.2f -> %.2f, loss %.3f -> %.3f",
        config.loss,
        rm_cov[0],
        rm_cov[-1],
        losses[0],
        losses[-1],
    )
    return ToyRun(
        config=config,
        steps=np.arange(points),
        rankme_covariance=rm_cov,
        rankme_singular=rm_sing,
        loss=losses,
        labels=labels,
        embeddings=w,
        singular_w=sv_w,
        singular_u=sv_u,
        snapshots=snapshots,
        readout=u,
        balance=gaps,
    )


def balanced_embedding(
    u: Float[np.ndarray, "d classes"], n: int, rng: np.random.Generator
) -> Float[np.ndarray, "samples d"]:
    """An ``n x d`` embedding ``W`` with ``W^T W = U U^T``: the balanced initialisation of the
    paper's Theorem B.2. With ``U = A S B^T`` (thin SVD), ``W = Q S A^T`` for a random ``Q``
    with orthonormal columns, so W and U start with the same singular values."""
    d = u.shape[0]
    if n < d:
        raise ValueError(f"a balanced W needs n_samples >= d_embed, got {n} < {d}")
    a, sing, _ = np.linalg.svd(u, full_matrices=False)
    q, _ = np.linalg.qr(rng.normal(size=(n, d)))
    return q @ np.diag(sing) @ a.T


def paper_conditions(base: ToyConfig | None = None) -> dict[str, ToyConfig]:
    """Paper 2's setting first, then ours and the controls, each one change away.

    - ``"hard labels (paper)"``: one-hot targets, Zipf-skewed classes, ``d < C``: the setup
      of the paper's section 3.3 (its Fig 5); at our sizes RankMe collapses and then only
      rises, with no compression;
    - ``"soft targets (ours)"``: targets ``(1 - eps) e_y + eps pi``, our addition: the
      irreducible entropy of next-token prediction gives the loss a finite optimum, and
      RankMe rises then falls;
    - the paper's controls applied to the soft-target condition: ``"uniform classes"``,
      ``"no bottleneck"`` (``d = C``), ``"MSE loss"``.
    """
    base = base or ToyConfig()
    soft = base if base.label_smoothing > 0 else replace(base, label_smoothing=0.3)
    controls = toy_conditions(soft)
    return {
        "hard labels (paper)": replace(soft, label_smoothing=0.0),
        "soft targets (ours)": soft,
        "uniform classes": controls["uniform classes"],
        "no bottleneck": controls["no bottleneck"],
        "MSE loss": controls["MSE loss"],
    }


def class_clusters(run: ToyRun, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """The embeddings ``F`` at the snapshot ``steps`` (default: all of the run's snapshots)
    projected on their own top two principal directions: one row per (step, sample) with its
    class, the class's frequency rank (0 = most frequent) and the 2-D coordinates, ready for a
    scatter per step (Fig 5B). Signs of the directions are fixed so that the most frequent
    class's mean has positive coordinates."""
    steps = sorted(run.snapshots) if steps is None else list(steps)
    missing = [s for s in steps if s not in run.snapshots]
    if missing:
        raise ValueError(
            f"steps {missing} were not kept; snapshots exist for {sorted(run.snapshots)} "
            "(set ToyConfig.snapshot_steps)"
        )
    counts = np.bincount(run.labels, minlength=run.config.n_classes)
    rank = np.empty_like(counts)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    top_class = int(np.argmax(counts))
    frames = []
    for step in steps:
        f = run.snapshots[step]
        centred = f - f.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.column_stack([xy, np.zeros(len(xy))])
        sign = np.sign(xy[run.labels == top_class].mean(0))
        xy = xy * np.where(sign == 0, 1.0, sign)
        frames.append(pd.DataFrame({"step": step, "sample": np.arange(len(f)),
                                    "label": run.labels, "class_rank": rank[run.labels],
                                    "x": xy[:, 0], "y": xy[:, 1]}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def singular_value_table(run: ToyRun) -> pd.DataFrame:
    """Top singular values of W and U at every step, tidy: ``step, matrix, index, value``
    (Fig 5D: under the balanced initialisation the two coincide)."""
    rows = []
    for matrix, values in (("W", run.singular_w), ("U", run.singular_u)):
        for i in range(values.shape[1]):
            rows.append(pd.DataFrame({"step": run.steps, "matrix": matrix, "index": i,
                                      "value": values[:, i]}))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def class_spread(
    run: ToyRun, steps: Sequence[int] | None = None, n_frequent: int = 4
) -> pd.DataFrame:
    """How far the classes have moved out from the origin at each snapshot step (Fig 5B's
    clusters as numbers): the distance of each class's mean embedding (a row of ``W``, not
    centred) from the origin, summarised per step as the median over the ``n_frequent`` most
    frequent classes (``frequent``) and over the less frequent half of the classes that occur
    (``rare``), and their ``ratio`` = rare / frequent. A ratio well below 1 means the rare
    classes still sit near the origin while the frequent ones have separated. ``steps``
    (default: every snapshot) must be snapshot steps."""
    validate.positive_int("n_frequent", n_frequent)
    steps = sorted(run.snapshots) if steps is None else [int(s) for s in steps]
    missing = [s for s in steps if s not in run.snapshots]
    if not steps or missing:
        raise ValueError(
            f"no snapshot at steps {missing or steps}; the run kept {sorted(run.snapshots)} "
            "(set ToyConfig.snapshot_steps)"
        )
    counts = np.bincount(run.labels, minlength=run.config.n_classes)
    order = np.argsort(-counts, kind="stable")
    present = order[counts[order] > 0]
    if len(present) < 2 * n_frequent:
        raise ValueError(
            f"n_frequent={n_frequent} needs at least {2 * n_frequent} classes that occur; "
            f"the run has {len(present)}"
        )
    rare = present[len(present) // 2 :]
    rows = []
    for step in steps:
        f = run.snapshots[step]
        norm = {int(c): float(np.linalg.norm(f[run.labels == c].mean(0))) for c in present}
        frequent_m = float(np.median([norm[int(c)] for c in present[:n_frequent]]))
        rare_m = float(np.median([norm[int(c)] for c in rare]))
        rows.append({"step": step, "frequent": frequent_m, "rare": rare_m,
                     "ratio": rare_m / frequent_m if frequent_m > 0 else np.inf})  # fmt: skip
    return pd.DataFrame(rows)


def init_table(runs: dict[str, dict[str, ToyRun]], min_fall: float = 0.05) -> pd.DataFrame:
    """The paper's balanced initialisation against ours: ``runs[condition][init]``. One row
    per run: the RankMe (covariance) fall and verdict, the balance gap at the first and the
    last step, and how far W's and U's top singular values are apart at the end (the largest
    relative difference; 0 when they coincide, as Theorem B.2 says for a balanced start)."""
    rows = []
    for name, by_init in runs.items():
        for init, run in by_init.items():
            v = rise_then_fall(run.steps, run.rankme_covariance, min_fall=min_fall)
            if not len(run.balance) or not run.singular_w.size:
                raise ValueError(f"{name} / {init}: the run has no balance or singular values")
            sw, su = run.singular_w[-1], run.singular_u[-1]
            rows.append({"condition": name, "init": init, "fall": v.fall,
                         "rises then falls": v.rises_then_falls,
                         "gap at start": float(run.balance[0]), "gap at end": float(run.balance[-1]),
                         "W vs U sigma": float(np.max(np.abs(sw - su) / su))})  # fmt: skip
    return pd.DataFrame(rows)


def balance_gap(w: np.ndarray, u: np.ndarray) -> float:
    """``||W^T W - U U^T|| / ||U U^T||`` (Frobenius): 0 for a balanced pair."""
    uu = u @ u.T
    return float(np.linalg.norm(w.T @ w - uu) / np.linalg.norm(uu))


def run_conditions(
    base: ToyConfig | None = None,
    conditions: dict[str, ToyConfig] | None = None,
) -> dict[str, ToyRun]:
    """Train every condition (default: ``toy_conditions(base)``); results keyed by name."""
    conditions = conditions if conditions is not None else toy_conditions(base)
    return {name: train_toy(config) for name, config in conditions.items()}


@dataclass(frozen=True)
class RiseFall:
    """Shape of a RankMe trajectory: collapse, rise to a peak, fall to the end."""

    collapse_step: int  # step of the lowest value (the warmup collapse)
    collapse_value: float
    peak_step: int  # step of the highest value after the collapse
    peak_value: float
    final_value: float
    fall: float  # (peak - final) / peak: the relative fall after the peak
    min_fall: float  # the threshold the verdict used

    @property
    def rises_then_falls(self) -> bool:
        """True when the value falls by at least ``min_fall`` of its peak after rising."""
        return self.peak_value > self.collapse_value and self.fall >= self.min_fall

    def describe(self) -> str:
        """One line, e.g. ``collapse 1.02 at step 20, peak 5.80 at 150, final 5.40 (-6.9%)``."""
        verdict = "rises then falls" if self.rises_then_falls else "no fall"
        return (
            f"collapse {self.collapse_value:.2f} at step {self.collapse_step}, peak "
            f"{self.peak_value:.2f} at step {self.peak_step}, final {self.final_value:.2f} "
            f"(fall {100 * self.fall:.1f}% of the peak): {verdict}"
        )


def rise_then_fall(
    steps: Int[np.ndarray, " points"],
    values: Float[np.ndarray, " points"],
    min_fall: float = 0.05,
) -> RiseFall:
    """Collapse (global minimum), peak after it, and the relative fall from peak to end.

    ``rises_then_falls`` holds when the end is at least ``min_fall`` (default 5%) below the
    peak: the toy model's version of a compression-seeking phase.
    """
    validate.fraction("min_fall", min_fall)
    s = np.asarray(steps)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or s.shape != v.shape:
        raise ValueError(f"steps and values must be 1-D of equal length, got {s.shape}, {v.shape}")
    if v.size < 3:
        raise ValueError(f"A trajectory needs at least 3 points, got {v.size}.")
    if not np.isfinite(v).all():
        raise ValueError("values must not contain NaN or infinite values.")
    low = int(np.argmin(v))
    peak = low + int(np.argmax(v[low:]))
    fall = (v[peak] - v[-1]) / v[peak] if v[peak] > 0 else 0.0
    return RiseFall(
        collapse_step=int(s[low]),
        collapse_value=float(v[low]),
        peak_step=int(s[peak]),
        peak_value=float(v[peak]),
        final_value=float(v[-1]),
        fall=float(fall),
        min_fall=min_fall,
    )


def shape_table(runs: dict[str, ToyRun], min_fall: float = 0.05) -> pd.DataFrame:
    """One row per condition and RankMe variant: the collapse, the peak after it, the end,
    the fall from peak to end (``fall``, a fraction), the verdict and the final loss."""
    rows = []
    for name, run in runs.items():
        for variant in ("covariance", "singular"):
            v = rise_then_fall(run.steps, run.rankme(variant), min_fall=min_fall)
            rows.append({"condition": name, "variant": variant, "collapse": v.collapse_value,
                         "collapse step": v.collapse_step, "peak": v.peak_value,
                         "peak step": v.peak_step, "final": v.final_value, "fall": v.fall,
                         "rises then falls": v.rises_then_falls,
                         "final loss": float(run.loss[-1])})  # fmt: skip
    return pd.DataFrame(rows)


def seed_table(
    conditions: dict[str, ToyConfig],
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    min_fall: float = 0.05,
) -> pd.DataFrame:
    """Each condition retrained with every seed (new labels and initial weights; ``steps``
    replaces the configured number when given): one row per condition, seed and RankMe
    variant with the fall after the peak (a fraction) and the verdict."""
    rows = []
    for name, config in conditions.items():
        for seed in seeds:
            changes: dict = {"seed": int(seed), "snapshot_steps": ()}
            if steps is not None:
                changes["steps"] = steps
            run = train_toy(replace(config, **changes))
            for variant in ("covariance", "singular"):
                v = rise_then_fall(run.steps, run.rankme(variant), min_fall=min_fall)
                rows.append({"condition": name, "seed": int(seed), "variant": variant,
                             "fall": v.fall, "rises then falls": v.rises_then_falls})  # fmt: skip
    return pd.DataFrame(rows)


def top_two_ratio(run: ToyRun, from_step: int = 0) -> dict[str, float]:
    """``sigma_1 / sigma_2`` of ``W`` (how far the dominant direction leads, Fig 5D): at
    ``from_step``, its lowest value from there on and the step of it, and at the end."""
    if run.singular_w.shape[1] < 2:
        raise ValueError("the run recorded fewer than two singular values of W")
    start = int(np.searchsorted(run.steps, from_step))
    if start >= len(run.steps):
        raise ValueError(f"from_step {from_step} is beyond the run's last step {run.steps[-1]}")
    ratio = run.singular_w[:, 0] / run.singular_w[:, 1]
    low = start + int(np.argmin(ratio[start:]))
    return {"at start": float(ratio[start]), "lowest": float(ratio[low]),
            "lowest step": int(run.steps[low]), "final": float(ratio[-1])}  # fmt: skip
