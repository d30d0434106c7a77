"""The SAE grid of notebooks 03 and 04: task x depth x model, and what to read off it.

Paper 1 (Nadipalli 2025, sections 3.2.3-3.2.4) trains one SAE per dataset, per layer (3, 6 and
12 of bert-base) and per model (pre-trained, fine-tuned), then looks at the most variable
features. This module builds that grid on top of :mod:`repgeo_utils.sae` and
:mod:`repgeo_utils.activations`, and adds the measurements the notebooks report:

- :class:`GridSettings` and :data:`GRID_SETTINGS`: which texts and which SAEs make up the grid,
  one named setting per profile, so notebooks 03 and 04 name the same grid with one word;
- :class:`GridData`: each task's texts (held-out splits first, about the same number of tokens
  per task, shuffled, with labels), the pre-trained model and the task's fine-tuned checkpoint,
  and their cached activations;
- :func:`depth_layers`: early / middle / late = ``hidden_states`` layers ceil(L/4), ceil(L/2), L;
- :func:`train_sae_grid` -> :class:`SAEGrid`: one cached SAE per (task, depth, model), with a
  metrics table;
- :func:`grid_statistics`, :func:`match_grid`, :func:`matching_summary`: which fine-tuned
  features keep a pre-trained twin (decoder cosine, one-to-one), per layer and task;
- :func:`describe_features`: a feature's top-activating tokens, firing frequency and the class
  whose texts it fires on most (the rows of our Table 1);
- :func:`compare_settings` and :func:`sequence_mean_comparison`: the paper's optimiser setting
  against ours, and SAEs trained on sequence means (the paper's code) against token SAEs.

Every SAE goes through :func:`repgeo_utils.sae.train_sae_on_activations`, so notebook 04 finds
the SAEs notebook 03 trained in the cache (same settings, texts, layer and config -> same key).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from .. import validate
from ..activations import ActivationSet, extract_activations
from ..config import get_profile
from ..data import SPLITS, load_profile_task
from ..finetune import finetune_profile
from ..models import load_tokenizer
from .cached import TrainedSAE, split_texts, train_sae_on_activations
from .features import LatentStatistics, latent_statistics, match_features, top_activating_tokens
from .metrics import SAEMetrics, encode_batches, evaluate_sae
from .model import DEPRECATED_PRESETS, PRESETS, SAEConfig, SparseAutoencoder
from .training import TrainHistory

log = logging.getLogger(__name__)

PRE, POST = "pre-trained", "fine-tuned"
MODELS = (PRE, POST)
DEPTHS = ("early", "middle", "late")

#: (task, depth, model), e.g. ``("bbc-news", "late", "fine-tuned")``.
GridKey = tuple[str, str, str]


def depth_layers(n_layers: int) -> dict[str, int]:
    """``hidden_states`` indices of the early, middle and late layer of an ``n_layers`` model:
    ceil(L/4), ceil(L/2) and L (bert-base, L = 12: 3, 6, 12 as in the paper; MiniLM-L6: 2, 3, 6).

    Index 0 is the embedding output, so index ``l`` is the output of transformer layer ``l``.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
    return {
        "early": max(1, math.ceil(n_layers / 4)),
        "middle": max(1, math.ceil(n_layers / 2)),
        "late": n_layers,
    }


# --- which grid ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSettings:
    """Which texts and which SAEs make up a grid: everything, besides the profile, the tasks and
    the fine-tuning seed, that decides its cache entries. Notebooks 03 and 04 name one entry of
    :data:`GRID_SETTINGS`, so 04 finds the SAEs 03 trained without copying its parameters.

    ``splits`` and ``max_tokens`` choose each task's texts (:func:`task_texts`); ``preset``,
    ``d_sae``, ``epochs`` and ``sae_seed`` the SAE (:meth:`sae_config`). The defaults are those
    of :func:`sae_grid` called without settings.
    """

    splits: tuple[str, ...] = ("validation", "test")
    max_tokens: int | None = None
    preset: str = "l1-sparse"
    d_sae: int = 1024
    epochs: int = 10
    sae_seed: int = 0

    def __post_init__(self) -> None:
        if not self.splits or isinstance(self.splits, str):
            raise ValueError(
                f"splits must be a non-empty tuple of split names, got {self.splits!r}"
            )
        object.__setattr__(self, "splits", tuple(self.splits))
        for split in self.splits:
            validate.one_of("splits", split, SPLITS)
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must not repeat a split, got {self.splits!r}")
        if self.max_tokens is not None:
            validate.positive_int("max_tokens", self.max_tokens)
        validate.one_of("preset", self.preset, (*PRESETS, *DEPRECATED_PRESETS))
        validate.positive_int("d_sae", self.d_sae)
        validate.positive_int("epochs", self.epochs)
        validate.non_negative_int("sae_seed", self.sae_seed)

    def sae_config(self, d_in: int) -> SAEConfig:
        """The SAE of every cell of the grid, for activations of width ``d_in``."""
        return SAEConfig.preset(
            self.preset, d_in=d_in, d_sae=self.d_sae, epochs=self.epochs, seed=self.sae_seed
        )


#: The named grids. ``quick``: each task's texts taken split by split (held-out splits first)
#: up to 15,000 tokens, the ``l1-sparse`` SAE (ReLU + L1 1e-2) with 1,024 latents, 10 epochs,
#: seed 0. ``paper``: the same grid (on bert-base's 768 dimensions the 1,024 latents are the
#: paper's size); raise ``max_tokens`` for a GPU run. ``smoke``: the paper grid with 64 latents,
#: for the 32-dimensional stand-in BERTs of ``make smoke`` (:mod:`repgeo_utils.smoke`): 1,024
#: latents on 32 dimensions start at a held-out FVU near 1,500 (at 768 dimensions: 3.7), which
#: the paper's optimiser setting (Adam 2e-5) never leaves, so notebook 03 stops on the
#: divergence check.
GRID_SETTINGS: dict[str, GridSettings] = {
    "quick": GridSettings(splits=("validation", "test", "train"), max_tokens=15_000),
    "paper": GridSettings(splits=("validation", "test", "train"), max_tokens=15_000),
    "smoke": GridSettings(splits=("validation", "test", "train"), max_tokens=15_000, d_sae=64),
}


def grid_settings(name: str | GridSettings, **overrides: Any) -> GridSettings:
    """A named grid of :data:`GRID_SETTINGS` (or a :class:`GridSettings`), with ``overrides``
    of its fields; an unknown name fails with the known ones."""
    if isinstance(name, GridSettings):
        settings = name
    elif name in GRID_SETTINGS:
        settings = GRID_SETTINGS[name]
    else:
        raise ValueError(
            f"Unknown SAE grid {name!r}. Known grids: {', '.join(sorted(GRID_SETTINGS))}."
        )
    return replace(settings, **overrides) if overrides else settings


# --- texts and activations -----------------------------------------------------------------


@dataclass(frozen=True)
class TaskTexts:
    """The texts of one task that the SAEs see, in a seeded random order, with their labels."""

    task: str
    texts: list[str]
    labels: Int[np.ndarray, " texts"]
    label_names: tuple[str, ...]
    splits: tuple[str, ...]


def task_texts(
    task: str,
    profile: Any = "quick",
    *,
    splits: Sequence[str] = ("validation", "test"),
    max_tokens: int | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    seed: int = 0,
) -> TaskTexts:
    """The texts of a task that its SAEs see, with their labels, in a seeded random order.

    Without ``max_tokens``: every text of ``splits``. With it, texts are taken split by split in
    the order given (each split in a seeded random order) until their token count (by
    ``tokenizer``, truncated at ``max_length``, special tokens included) reaches ``max_tokens``,
    so every task gets about the same number of tokens: a task of short texts (headlines) takes
    more of them, reaching into later splits. The chosen texts are then shuffled together: splits
    come sorted by class, and an SAE estimates its input scale from the first rows of a stream.
    """
    dataset = load_profile_task(task, profile, seed=seed)
    unknown = [s for s in splits if s not in dataset]
    if unknown or not splits:
        raise ValueError(f"Unknown splits {unknown or splits}; the task has {list(dataset)}.")
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs the tokenizer that counts the tokens.")
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    budget = max_tokens
    for split in splits:
        order = rng.permutation(len(dataset[split]))
        chosen = [dataset[split][int(i)]["text"] for i in order]
        split_labels = [int(dataset[split][int(i)]["label"]) for i in order]
        if budget is not None:
            lengths = [
                len(ids)
                for ids in tokenizer(chosen, truncation=max_length is not None,
                                     max_length=max_length)["input_ids"]
            ]  # fmt: skip
            keep = int(np.searchsorted(np.cumsum(lengths), budget, side="left")) + 1
            keep = min(keep, len(chosen))
            budget -= int(np.sum(lengths[:keep]))
            chosen, split_labels = chosen[:keep], split_labels[:keep]
        texts += chosen
        labels += split_labels
        if budget is not None and budget <= 0:
            break
    order = rng.permutation(len(texts))
    return TaskTexts(
        task=task,
        texts=[texts[i] for i in order],
        labels=np.asarray(labels, dtype=np.int64)[order],
        label_names=tuple(dataset[splits[0]].features["label"].names),
        splits=tuple(splits),
    )


@dataclass
class GridData:
    """Texts, models and activations (all ``hidden_states``) for every task of the grid."""

    texts: dict[str, TaskTexts]
    #: (task, model) -> what ``extract_activations`` loads: a registry key or a checkpoint folder
    models: dict[tuple[str, str], str | Path]
    activations: dict[tuple[str, str], ActivationSet]
    #: depth name -> hidden_states index
    layers: dict[str, int]
    max_length: dict[str, int]

    @property
    def tasks(self) -> list[str]:
        return list(self.texts)

    @classmethod
    def build(
        cls,
        profile: Any = "quick",
        tasks: Sequence[str] | None = None,
        *,
        seed: int = 0,
        splits: Sequence[str] = ("validation", "test"),
        max_tokens: int | None = None,
        progress: bool = False,
    ) -> GridData:
        """Fine-tune (or reuse) each task's checkpoint, pick its texts (:func:`task_texts`) and
        extract (or reuse) the activations of the pre-trained and the fine-tuned model on them.
        Texts are truncated at the length the task was fine-tuned with."""
        prof = get_profile(profile)
        tasks = list(prof.tasks) if tasks is None else validate.text_list("tasks", tasks)
        results = finetune_profile(prof, tasks, seed=seed, progress=progress)
        tokenizer = load_tokenizer(prof.model) if max_tokens is not None else None
        texts: dict[str, TaskTexts] = {}
        models: dict[tuple[str, str], str | Path] = {}
        acts: dict[tuple[str, str], ActivationSet] = {}
        max_length: dict[str, int] = {}
        for task in tasks:
            max_length[task] = prof.finetune_settings(task).max_length
            texts[task] = task_texts(
                task, prof, splits=splits, max_tokens=max_tokens, tokenizer=tokenizer,
                max_length=max_length[task], seed=seed,
            )  # fmt: skip
            models[(task, PRE)] = prof.model
            models[(task, POST)] = results[task].checkpoint
            for model in MODELS:
                acts[(task, model)] = extract_activations(
                    models[(task, model)],
                    texts[task].texts,
                    max_length=max_length[task],
                    progress=progress,
                )
        n_layers = next(iter(acts.values())).n_hidden_states - 1
        return cls(texts, models, acts, depth_layers(n_layers), max_length)


# --- the grid ------------------------------------------------------------------------------


@dataclass
class SAEGrid:
    """One trained SAE per (task, depth, model)."""

    data: GridData
    config: SAEConfig
    runs: dict[GridKey, TrainedSAE]
    exclude_special: bool = False

    def __getitem__(self, key: GridKey) -> TrainedSAE:
        return self.runs[key]

    def keys(self) -> list[GridKey]:
        return list(self.runs)

    def metrics_table(self) -> pd.DataFrame:
        """MSE, FVU, mean L0, dead and dense latents, shrinkage (mean ``||x_hat|| / ||x||``) and
        cosine (mean ``cos(x_hat, x)``) on the held-out texts' tokens, one row per SAE, with its
        training time."""
        rows = []
        for (task, depth, model), run in self.runs.items():
            m = run.metrics
            rows.append(
                {
                    "task": task,
                    "depth": depth,
                    "layer": self.data.layers[depth],
                    "model": model,
                    "eval tokens": m.n_tokens,
                    "MSE": m.mse,
                    "FVU": m.fvu,
                    "L0": m.mean_l0,
                    "dead": m.dead,
                    "dense": m.dense,
                    "shrinkage": m.shrinkage,
                    "cosine": m.cosine,
                    "train s": run.history.seconds,
                }
            )
        return pd.DataFrame(rows)


def train_sae_grid(
    data: GridData,
    config: SAEConfig,
    *,
    models: Sequence[str] = MODELS,
    depths: Sequence[str] = DEPTHS,
    exclude_special: bool = False,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    progress: bool = False,
) -> SAEGrid:
    """Train (or load from the cache) an SAE for every task x depth x model of ``data``.

    Each SAE holds out the same ``eval_fraction`` of each task's texts (seeded by
    ``split_seed``) and reports its metrics on their tokens (see
    :func:`~repgeo_utils.sae.train_sae_on_activations`)."""
    runs: dict[GridKey, TrainedSAE] = {}
    for task in data.tasks:
        for depth in depths:
            for model in models:
                runs[(task, depth, model)] = train_sae_on_activations(
                    data.activations[(task, model)],
                    data.layers[depth],
                    config,
                    eval_fraction=eval_fraction,
                    split_seed=split_seed,
                    exclude_special=exclude_special,
                    progress=progress,
                )
    return SAEGrid(data, config, runs, exclude_special)


def sae_grid(
    profile: Any = "quick",
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    settings: str | GridSettings | None = None,
    progress: bool = False,
    **overrides: Any,
) -> SAEGrid:
    """:meth:`GridData.build` then :func:`train_sae_grid` with :meth:`GridSettings.sae_config`:
    the whole grid in one call. ``settings`` names a grid of :data:`GRID_SETTINGS` (or is one;
    None: ``GridSettings()``) and ``overrides`` change its fields (``splits``, ``max_tokens``,
    ``preset``, ``d_sae``, ``epochs``, ``sae_seed``). Two notebooks that call it with the same
    settings get the same cache entries (the second one trains nothing)."""
    chosen = grid_settings(settings if settings is not None else GridSettings(), **overrides)
    data = GridData.build(
        profile,
        tasks,
        seed=seed,
        splits=chosen.splits,
        max_tokens=chosen.max_tokens,
        progress=progress,
    )
    d_in = next(iter(data.activations.values())).d_model
    return train_sae_grid(data, chosen.sae_config(d_in), progress=progress)


def latent_max(
    sae: SparseAutoencoder, x: Float[np.ndarray, "tokens d_in"]
) -> Float[np.ndarray, " d_sae"]:
    """Each latent's largest value over the rows of ``x`` (0 for latents that never fire)."""
    peak = np.zeros(sae.d_sae)
    for h in encode_batches(sae, x):
        peak = np.maximum(peak, h.double().amax(0).cpu().numpy())
    return peak


def token_rows(
    acts: ActivationSet, layer: int, *, exclude_special: bool = False
) -> Float[np.ndarray, "tokens d_model"]:
    """All token activations of a layer as one in-memory matrix (special tokens left out with
    ``exclude_special``)."""
    x = np.asarray(acts.tokens(layer))
    return x[~acts.special_mask] if exclude_special else x


def grid_statistics(
    grid: SAEGrid, *, exclude_special: bool = False
) -> dict[GridKey, LatentStatistics]:
    """Firing frequency, mean and variance of every latent of every SAE, over all the tokens of
    its task's texts (training and held-out: the paper's "variance across the dataset")."""
    out = {}
    for (task, depth, model), run in grid.runs.items():
        x = token_rows(
            grid.data.activations[(task, model)], run.layer, exclude_special=exclude_special
        )
        out[(task, depth, model)] = latent_statistics(run.sae, x)
    return out


def top_features(stats: LatentStatistics, n: int = 3) -> list[int]:
    """The paper's selection from precomputed statistics: the ``n`` latents of highest variance,
    most variable first (ties: lower index first)."""
    variance = stats.variance.double().numpy()
    n = validate.integer("n", n)
    if not 1 <= n <= variance.size:
        raise ValueError(f"n must be between 1 and {variance.size}, got {n}")
    return np.lexsort((np.arange(variance.size), -variance))[:n].tolist()


# --- feature matching ----------------------------------------------------------------------


def match_grid(
    runs_a: Mapping[GridKey, TrainedSAE],
    runs_b: Mapping[GridKey, TrainedSAE],
    pairs: Iterable[tuple[GridKey, GridKey]],
    *,
    stats_a: Mapping[GridKey, LatentStatistics] | None = None,
    stats_b: Mapping[GridKey, LatentStatistics] | None = None,
    threshold: float = 0.7,
) -> pd.DataFrame:
    """Match the features of each ``b`` SAE to those of its ``a`` SAE (``pairs`` of keys).

    With statistics, only latents that fire at least once on the task's tokens take part. One
    row per matched ``b`` feature: ``task``, ``depth``, ``feature`` (of ``b``), ``twin`` (of
    ``a``, -1 for none), ``cosine`` (decoder cosine with the one-to-one twin) and
    ``nearest_cosine`` (best cosine with any ``a`` feature)."""
    frames = []
    for key_a, key_b in pairs:
        alive_a = None if stats_a is None else stats_a[key_a].firing_frequency > 0
        alive_b = None if stats_b is None else stats_b[key_b].firing_frequency > 0
        match = match_features(
            runs_a[key_a].sae,
            runs_b[key_b].sae,
            threshold=threshold,
            alive_a=alive_a,
            alive_b=alive_b,
        )
        frames.append(
            pd.DataFrame(
                {
                    "task": key_b[0],
                    "depth": key_b[1],
                    "layer": runs_b[key_b].layer,
                    "feature": match.features_b.numpy(),
                    "twin": match.index_a.numpy(),
                    "cosine": match.cosine.numpy(),
                    "nearest_cosine": match.nearest_cosine.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def key_pairs(
    grid: SAEGrid, model_a: str = PRE, model_b: str = POST
) -> list[tuple[GridKey, GridKey]]:
    """``((task, depth, model_a), (task, depth, model_b))`` for every task and depth of a grid
    that has a ``model_b`` SAE (the ``a`` keys may point into another grid, e.g. SAEs of the
    same data with another seed)."""
    return [
        ((task, depth, model_a), (task, depth, model_b))
        for task, depth, model in grid.keys()
        if model == model_b
    ]


def matching_summary(table: pd.DataFrame, threshold: float = 0.7) -> pd.DataFrame:
    """Per task and layer: matched features, the share whose one-to-one twin has a decoder
    cosine >= ``threshold``, and the median matched and nearest cosines."""
    grouped = table.groupby(["task", "depth", "layer"], sort=False)
    return grouped.agg(
        features=("cosine", "size"),
        share_with_twin=("cosine", lambda c: float((c >= threshold).mean())),
        median_cosine=("cosine", "median"),
        median_nearest=("nearest_cosine", "median"),
    ).reset_index()


# --- what a feature responds to ------------------------------------------------------------


def feature_activations(
    sae: SparseAutoencoder, x: Float[np.ndarray, "tokens d_in"], features: Sequence[int]
) -> Float[np.ndarray, "tokens n"]:
    """The chosen latents of ``sae`` on every row of ``x``."""
    index = torch.as_tensor(_feature_list(features, sae.d_sae), dtype=torch.long)
    parts = [h[:, index].double().cpu().numpy() for h in encode_batches(sae, x)]
    return np.concatenate(parts) if parts else np.zeros((0, len(index)))


def _feature_list(features: Any, d_sae: int) -> list[int]:
    """``features`` as a list of latent indices of an SAE with ``d_sae`` latents."""
    if isinstance(features, int | np.integer | str) or not isinstance(features, Iterable):
        raise TypeError(
            f"features must be a list of latent indices, got {type(features).__name__} "
            f"{features!r}; for one feature pass [{features!r}]"
        )
    out = [validate.integer("features[]", f) for f in features]
    outside = [f for f in out if not 0 <= f < d_sae]
    if outside:
        raise ValueError(f"features {outside} are out of range: the SAE has latents 0..{d_sae - 1}")
    return out


def class_preference(
    per_text: Float[np.ndarray, " texts"],
    labels: Int[np.ndarray, " texts"],
    label_names: Sequence[str],
) -> tuple[str, float]:
    """The class whose texts a feature fires on most, and by how much: ``(class, ratio)`` with
    ratio = mean ``per_text`` value in that class / mean in the other classes (``inf`` when
    the others are all zero, ``nan`` when the feature never fires)."""
    per_text = np.asarray(per_text, dtype=float)
    labels = np.asarray(labels)
    if per_text.shape != labels.shape:
        raise ValueError(f"{per_text.shape[0]} values but {labels.shape[0]} labels")
    present = [c for c in range(len(label_names)) if (labels == c).any()]
    means = {c: per_text[labels == c].mean() for c in present}
    best = max(present, key=lambda c: (means[c], -c))
    if means[best] <= 0:
        return "-", float("nan")
    rest = per_text[labels != best]
    rest_mean = rest.mean() if rest.size else 0.0
    return label_names[best], float(means[best] / rest_mean) if rest_mean > 0 else float("inf")


def summarize_tokens(tokens: Sequence[str], n: int = 4) -> str:
    """``"great ×5, good ×2, fun"``: the most common tokens of a list, commonest first (ties in
    order of first appearance)."""
    counts = Counter(tokens)
    order = {t: i for i, t in reversed(list(enumerate(tokens)))}
    common = sorted(counts, key=lambda t: (-counts[t], order[t]))[:n]
    return ", ".join(f"{t} ×{counts[t]}" if counts[t] > 1 else t for t in common)


def describe_features(
    sae: SparseAutoencoder,
    acts: ActivationSet,
    layer: int,
    features: Sequence[int],
    labels: Int[np.ndarray, " texts"],
    label_names: Sequence[str],
    *,
    n_top: int = 20,
    context: int = 4,
) -> pd.DataFrame:
    """One row per feature: its variance and firing frequency over all tokens, the share of its
    activation mass on special tokens ([CLS]/[SEP]), its ``n_top`` top-activating tokens
    (summarised, plus the strongest one in context, and that token's text index and position),
    and the class whose texts it fires on most (per-text maximum; see
    :func:`class_preference`)."""
    x = np.asarray(acts.tokens(layer))
    values = feature_activations(sae, x, features)
    offsets, special = acts.offsets, acts.special_mask
    tokenizer = acts.tokenizer()
    rows = []
    for j, feature in enumerate(features):
        v = values[:, j]
        top = top_activating_tokens(
            torch.from_numpy(v), acts.token_ids, offsets, tokenizer, n=n_top, context=context
        )
        per_text = np.maximum.reduceat(v, offsets[:-1]) if len(v) else v
        prefers, ratio = class_preference(per_text, labels, label_names)
        mass = v.sum()
        rows.append(
            {
                "feature": int(feature),
                "variance": float(v.var()),
                "top text": top[0].sequence if top else -1,
                "top position": top[0].position if top else -1,
                "fires on": float((v > 0).mean()),
                "on [CLS]/[SEP]": float(v[special].sum() / mass) if mass > 0 else float("nan"),
                "top tokens": summarize_tokens([t.token for t in top]),
                "strongest in context": str(top[0]) if top else "",
                "prefers class": prefers,
                "class ratio": ratio,
                "max": float(v.max()) if len(v) else 0.0,
            }
        )
    return pd.DataFrame(rows)


# --- token strips on chosen sentences ------------------------------------------------------


@dataclass(frozen=True)
class SentenceActivations:
    """The chosen features of one SAE on the tokens of one sentence."""

    sentence: str
    tokens: list[str]
    #: (features, tokens)
    values: Float[np.ndarray, "n tokens"]
    features: tuple[int, ...]


def sentence_activations(
    sentence_acts: ActivationSet,
    layer: int,
    sae: SparseAutoencoder,
    features: Sequence[int],
    sentences: Sequence[str] | None = None,
) -> list[SentenceActivations]:
    """Per-token values of ``features`` on each sentence of an activation set (paper 1,
    section 3.2.4: run the sentence through the model, take the layer's hidden states, encode
    them with the SAE and read the chosen latents token by token)."""
    if sentences is not None:
        sentences = validate.text_list("sentences", sentences)
        if len(sentences) != sentence_acts.n_texts:
            raise ValueError(
                f"sentences has {len(sentences)} texts but the activation set holds "
                f"{sentence_acts.n_texts}: give one sentence per text, in the set's order."
            )
    x = np.asarray(sentence_acts.tokens(layer))
    values = feature_activations(sae, x, features)
    tokenizer = sentence_acts.tokenizer()
    out = []
    for i in range(sentence_acts.n_texts):
        rows = sentence_acts.text_rows(i)
        ids = sentence_acts.token_ids[rows].tolist()
        out.append(
            SentenceActivations(
                sentence=sentences[i] if sentences is not None else tokenizer.decode(ids),
                tokens=tokenizer.convert_ids_to_tokens(ids),
                values=values[rows].T.copy(),
                features=tuple(int(f) for f in features),
            )
        )
    return out


def context_strip(
    acts: ActivationSet,
    layer: int,
    sae: SparseAutoencoder,
    feature: int,
    text: int,
    position: int,
    context: int = 8,
) -> tuple[list[str], Float[np.ndarray, " window"]]:
    """Tokens and one feature's values in a window of ``context`` tokens either side of
    ``position`` in text ``text`` of an activation set (e.g. where the feature fires most)."""
    rows = acts.text_rows(text)
    lo = max(rows.start, rows.start + position - context)
    hi = min(rows.stop, rows.start + position + context + 1)
    x = np.asarray(acts.tokens(layer)[lo:hi])
    values = feature_activations(sae, x, [feature])[:, 0]
    tokens = acts.tokenizer().convert_ids_to_tokens(acts.token_ids[lo:hi].tolist())
    return tokens, values


# --- the paper's optimiser and sequence-mean training --------------------------------------


def mean_squared_deviation(x: Float[np.ndarray, "tokens d"]) -> float:
    """Mean over rows of ``||x - mean(x)||^2`` (the denominator of the FVU, per token)."""
    x = np.asarray(x, dtype=np.float64)
    return float(((x - x.mean(0)) ** 2).sum(1).mean())


def fvu_curve(history: TrainHistory, msd: float, d_in: int) -> Float[np.ndarray, " steps"]:
    """Per-step training MSE of a history as an approximate fraction of variance unexplained:
    ``step_mse * d_in / (msd * input_scale^2)``, with ``msd`` the raw training tokens' mean
    squared deviation. Makes runs with and without input scaling comparable."""
    scale = history.input_scale
    return np.asarray(history.step_mse, dtype=float) * d_in / (msd * scale * scale)


@dataclass
class SettingsComparison:
    """SAEs of several settings on the same layer, evaluated on the same held-out tokens."""

    runs: dict[str, TrainedSAE]
    table: pd.DataFrame
    #: label -> (epochs axis, per-step training FVU)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: label -> per-step mean active latents a token (same epochs axis)
    l0: dict[str, np.ndarray] = field(default_factory=dict)


def compare_settings(
    acts: ActivationSet,
    layer: int,
    configs: Mapping[str, SAEConfig],
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    progress: bool = False,
) -> SettingsComparison:
    """Train (or reuse) one SAE per config on one layer; table of held-out metrics and the
    final training loss in the SAE's own units (raw for the paper's setting), plus training
    curves as FVU and L0 against epochs."""
    held_out = np.repeat(split_texts(acts.n_texts, eval_fraction, split_seed), acts.lengths)
    train_x = np.asarray(acts.tokens(layer))[~held_out]
    msd = mean_squared_deviation(train_x)
    runs, rows, curves, l0 = {}, [], {}, {}
    for label, config in configs.items():
        run = train_sae_on_activations(
            acts, layer, config, eval_fraction=eval_fraction, split_seed=split_seed,
            progress=progress,
        )  # fmt: skip
        runs[label] = run
        h, m = run.history, run.metrics
        steps = np.arange(1, len(h.step_mse) + 1)
        curves[label] = (steps * config.batch_size / len(train_x), fvu_curve(h, msd, config.d_in))
        l0[label] = np.asarray(h.step_l0, dtype=float)
        rows.append(
            {
                "setting": label,
                "lr": config.lr,
                "batch": config.batch_size,
                "epochs": config.epochs,
                "steps": len(h.step_mse),
                "final train loss (own units)": h.epoch_loss[-1],
                "MSE": m.mse,
                "FVU": m.fvu,
                "L0": m.mean_l0,
                "dead": m.dead,
                "dense": m.dense,
                "train s": h.seconds,
            }
        )
    return SettingsComparison(runs, pd.DataFrame(rows), curves, l0)


def _metrics_on(sae: SparseAutoencoder, x: np.ndarray) -> SAEMetrics:
    return evaluate_sae(sae, np.ascontiguousarray(x, dtype=np.float32))


def sequence_mean_comparison(
    acts: ActivationSet,
    layer: int,
    config: SAEConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, TrainedSAE]]:
    """An SAE trained on tokens against SAEs trained on per-text mean activations (what the
    paper's code did), all evaluated on the held-out texts' tokens and on their means.

    A text set has far fewer texts than tokens, so with the same epochs a sequence-mean SAE
    takes far fewer optimiser steps. Two sequence-mean SAEs are trained: one with the same
    epochs as ``config`` and one whose epochs are scaled so it takes about as many steps as the
    token SAE. Returns the table (one row per SAE) and the SAEs by row label.
    """
    held_out = split_texts(acts.n_texts, eval_fraction, split_seed)
    token_held_out = np.repeat(held_out, acts.lengths)
    x = np.asarray(acts.tokens(layer))
    means = acts.pooled(layer, "mean")
    n_train_tokens, n_train_texts = int((~token_held_out).sum()), int((~held_out).sum())
    steps = math.ceil(n_train_tokens / config.batch_size) * config.epochs
    per_epoch = math.ceil(n_train_texts / config.batch_size)
    on_means = replace(config, train_on="sequence_means")
    variants = {
        "tokens": (config, n_train_tokens),
        "sequence means, same epochs": (on_means, n_train_texts),
        "sequence means, same steps": (
            replace(on_means, epochs=max(1, round(steps / per_epoch))),
            n_train_texts,
        ),
    }
    runs, rows = {}, []
    for label, (cfg, n_train) in variants.items():
        run = train_sae_on_activations(
            acts, layer, cfg, eval_fraction=eval_fraction, split_seed=split_seed,
            progress=progress,
        )  # fmt: skip
        runs[label] = run
        tok = _metrics_on(run.sae, x[token_held_out])
        mean = _metrics_on(run.sae, means[held_out])
        rows.append(
            {
                "trained on": label,
                "training examples": n_train,
                "epochs": cfg.epochs,
                "steps": len(run.history.step_mse),
                "FVU on tokens": tok.fvu,
                "L0 on tokens": tok.mean_l0,
                "dead on tokens": tok.dead,
                "FVU on means": mean.fvu,
                "L0 on means": mean.mean_l0,
            }
        )
    return pd.DataFrame(rows), runs


def special_token_share(
    sae: SparseAutoencoder, x: np.ndarray, special: Bool[np.ndarray, " tokens"]
) -> Float[np.ndarray, " d_sae"]:
    """Per latent: the share of its activation mass (summed over tokens) on special tokens."""
    mass = np.zeros(sae.d_sae)
    on_special = np.zeros(sae.d_sae)
    start = 0
    for h in encode_batches(sae, x):
        hd = h.double().cpu().numpy()
        mask = special[start : start + len(hd)]
        mass += hd.sum(0)
        on_special += hd[mask].sum(0)
        start += len(hd)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, on_special / mass, np.nan)
