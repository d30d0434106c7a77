"""SAEs on cached activations: :func:`train_sae_on_activations` streams one layer of an
:class:`~repgeo_utils.activations.ActivationSet` and caches the trained SAE under
``data/cache/sae/``, keyed by :func:`sae_cache_key`."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool

from ..cache import cache_entry
from .io import FORMAT, load_sae, save_sae
from .metrics import SAEMetrics, evaluate_sae
from .model import SAEConfig, SparseAutoencoder
from .sources import ChunkSource, RowSelection
from .training import TrainHistory, default_device, train_on_source

if TYPE_CHECKING:
    from ..activations import ActivationSet

log = logging.getLogger(__name__)


def split_texts(n_texts: int, eval_fraction: float, seed: int) -> Bool[np.ndarray, " texts"]:
    """Held-out texts: a seeded random ``eval_fraction`` of ``n_texts`` (at least one text,
    and at least one left for training). Splitting by text keeps a text's tokens together."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if n_texts < 2:
        raise ValueError(f"Need at least 2 texts to hold some out, got {n_texts}")
    n_eval = min(max(1, round(eval_fraction * n_texts)), n_texts - 1)
    held_out = np.zeros(n_texts, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n_texts)[:n_eval]] = True
    return held_out


@dataclass
class TrainedSAE:
    """An SAE trained on one layer of an activation set, with its record."""

    sae: SparseAutoencoder
    history: TrainHistory
    #: metrics on the tokens of the held-out texts
    metrics: SAEMetrics
    #: the cache entry holding it
    path: Path
    #: the ``hidden_states`` index it was trained on
    layer: int
    #: True for the texts held out from training
    eval_texts: Bool[np.ndarray, " texts"]


def sae_cache_key(
    activations: ActivationSet,
    layer: int,
    config: SAEConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    exclude_special: bool = False,
) -> dict[str, Any]:
    """The cache key of :func:`train_sae_on_activations`: the activation entry's own key,
    the layer, every config field and the split."""
    return {
        "format": FORMAT,
        "activations": activations.key,
        "layer": int(layer) % activations.n_hidden_states,
        "config": config.to_dict(),
        "eval_fraction": eval_fraction,
        "split_seed": split_seed,
        "exclude_special": exclude_special,
    }


def _token_rows_by_shard(
    tokens: Any, token_mask: Bool[np.ndarray, " tokens"]
) -> list[RowSelection]:
    """One :class:`RowSelection` per shard of a ``ShardedArray``: the rows where mask is set."""
    out, start = [], 0
    for part in tokens.parts():
        rows = np.flatnonzero(token_mask[start : start + len(part)])
        start += len(part)
        if len(rows):
            out.append(RowSelection(part, rows))
    return out


#: Metrics added after SAEs were first cached: an entry without them is evaluated again on
#: load (in memory) instead of reporting NaN.
LATER_METRICS = ("shrinkage", "cosine", "relative_reconstruction_bias")

#: A held-out FVU above this means the SAE reconstructs worse than the data mean by an order
#: of magnitude: the run diverged (a trained SAE is below 1, an untrained one about 1-2).
DIVERGED_FVU = 10.0


def divergence(sae: SparseAutoencoder, metrics: SAEMetrics) -> str | None:
    """Why a trained SAE must not be kept: non-finite weights or metrics, or a held-out FVU
    above :data:`DIVERGED_FVU` (``None`` when there is none of these)."""
    for name, parameter in sae.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            return f"non-finite values in {name}"
    for name in ("mse", "fvu", "mean_l0"):
        if not math.isfinite(getattr(metrics, name)):
            return f"held-out {name} is {getattr(metrics, name)}"
    if metrics.fvu > DIVERGED_FVU:
        return f"held-out FVU {metrics.fvu:.3g} > {DIVERGED_FVU:g}"
    return None


def train_sae_on_activations(
    activations: ActivationSet,
    layer: int,
    config: SAEConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    exclude_special: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    root: Path | None = None,
) -> TrainedSAE:
    """Train (or load from the cache) an SAE on one layer of a cached activation set.

    The texts are split by :func:`split_texts`; the SAE streams the training texts' token rows
    shard by shard from the memory-mapped activation cache (or, with ``config.train_on ==
    "sequence_means"``, trains on their mean activations) and is evaluated on the held-out
    texts' tokens. ``exclude_special`` leaves [CLS]/[SEP]-like tokens out of training and
    evaluation. The result is a cache entry of kind ``sae`` keyed by :func:`sae_cache_key`
    (the activation entry's key, the layer, the config and the split), so a rerun loads it.
    """

    tokens = activations.tokens(layer)  # validates the layer
    stored = int(layer) % activations.n_hidden_states
    if activations.d_model != config.d_in:
        raise ValueError(
            f"The activations have d_model={activations.d_model} but the SAE config says "
            f"d_in={config.d_in}."
        )
    if exclude_special and config.train_on == "sequence_means":
        raise ValueError("exclude_special applies to token training, not to sequence means.")
    held_out = split_texts(activations.n_texts, eval_fraction, split_seed)
    key = sae_cache_key(
        activations,
        stored,
        config,
        eval_fraction=eval_fraction,
        split_seed=split_seed,
        exclude_special=exclude_special,
    )
    name = f"{activations.path.name}__L{stored}__{config.architecture}"
    token_held_out = np.repeat(held_out, activations.lengths)
    keep = ~activations.special_mask if exclude_special else np.ones_like(token_held_out)
    eval_source = _token_rows_by_shard(tokens, token_held_out & keep)
    with cache_entry("sae", name, key, root=root) as entry:
        if not entry.exists:
            if config.train_on == "sequence_means":
                train_source = activations.pooled(stored, "mean")[~held_out]
            else:
                train_source = _token_rows_by_shard(tokens, ~token_held_out & keep)
            resolved = torch.device(device) if device is not None else default_device()
            sae, history = train_on_source(
                config, ChunkSource(train_source, config.d_in), resolved, progress
            )
            metrics = evaluate_sae(sae, eval_source)
            problem = divergence(sae, metrics)
            if problem is not None:  # raising here leaves nothing in the cache
                raise FloatingPointError(
                    f"SAE {name} layer {stored} diverged ({problem}) with lr={config.lr}; "
                    "nothing was cached. Lower the learning rate or enable scale_inputs."
                )
            save_sae(sae, entry.build_dir)
            (entry.build_dir / "history.json").write_text(json.dumps(asdict(history)))
            (entry.build_dir / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=2))
            log.info("SAE %s layer %d: %s", name, stored, metrics)
    folder = entry.path
    record = json.loads((folder / "history.json").read_text())
    metrics_record = json.loads((folder / "metrics.json").read_text())
    metrics_record.pop("fve", None)
    sae = load_sae(folder, device="cpu" if device is None else device)
    metrics = SAEMetrics(**metrics_record)
    if any(name not in metrics_record for name in LATER_METRICS):
        # an entry made before these measures existed: measured again on the same held-out
        # tokens, in memory (a committed entry is never rewritten)
        metrics = evaluate_sae(sae, eval_source)
    return TrainedSAE(
        sae=sae,
        history=TrainHistory(**record),
        metrics=metrics,
        path=folder,
        layer=stored,
        eval_texts=held_out,
    )
