"""SAEs of the notebook 03 grid as the field measures, shares and diffs them: splice-in
fidelity, SAE transfer, a crosscoder per layer beside the matching approach, and SAELens files.

Every function takes the grid's own objects (:class:`~repgeo_utils.sae.grid.GridData`,
:class:`~repgeo_utils.sae.grid.SAEGrid`) and returns a tidy table (one row per task, layer,
model, ...), which :mod:`repgeo_utils.plotting.sae_diffing` draws:

- :func:`splice_grid`: each SAE spliced into the forward pass at its layer
  (:mod:`repgeo_utils.ablation.splice`) on the held-out texts of its task: accuracy and KL
  recovered against zero- and mean-ablation. The **fine-tuned** model is its classifier (the
  checkpoint of notebook 01, with its head); its own SAE and, for **SAE transfer**, the
  pre-trained model's SAE of the same layer are spliced in. The **pre-trained** model has no
  head for the task, so it gets a fixed linear read-out (logistic regression on its mean-pooled
  last layer, fitted on the SAEs' training texts: :class:`~repgeo_utils.ablation.ProbeClassifier`):
  splicing then measures what the representation loses for the task, with the read-out held
  fixed. (Splicing the pre-trained SAE into the fine-tuned classifier is the transfer row.)
- :func:`sae_transfer_table`: the pre-trained SAE on the fine-tuned model's activations at the
  same layer: FVU (and what it loses against the fine-tuned model's own SAE), shrinkage, cosine,
  and with a splice table, the splice-in fidelity lost.
- :func:`train_crosscoder_grid` -> :class:`CrosscoderGrid`: a crosscoder per task and layer on the
  same texts and split as the SAEs; :func:`crosscoder_latents`, :func:`crosscoder_summary`
  (pre-only / shared / post-only counts, latent scaling) and :func:`crosscoder_vs_matching`
  (beside ``match_grid`` / ``matching_summary``: do both say "early layers keep, late layers
  replace"?).
- :func:`export_grid_saelens`: every SAE of the grid as a SAELens folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from transformers import AutoModel

from ..ablation.splice import (
    ProbeClassifier,
    classifier_splice_fidelity,
    fit_linear_probe,
    hidden_state_module,
)
from ..activations import ActivationSet
from ..models import load_config, load_model
from .crosscoder import (
    SHARED_NU,
    CrosscoderConfig,
    TrainedCrosscoder,
    band_counts,
    held_out_pairs,
    latent_table,
    train_crosscoder_on_activations,
)
from .features import latent_statistics
from .grid import DEPTHS, MODELS, POST, PRE, GridData, SAEGrid, grid_settings, token_rows
from .io import export_saelens
from .metrics import evaluate_sae

log = logging.getLogger(__name__)

#: Read-out of each model in :func:`splice_grid`.
READOUTS = {PRE: "linear probe (fixed)", POST: "classifier head"}


def _eval_texts(grid: SAEGrid, task: str) -> Bool[np.ndarray, " texts"]:
    """The held-out texts of a task (every SAE of a task holds out the same ones)."""
    masks = [run.eval_texts for (t, _, _), run in grid.runs.items() if t == task]
    if not masks:
        raise KeyError(f"The grid has no SAE for task {task!r}.")
    return masks[0]


def _held_out_rows(acts: ActivationSet, held_out: np.ndarray) -> np.ndarray:
    return np.repeat(held_out, acts.lengths)


def _task_depths(grid: SAEGrid, task: str, depths: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(d for t, d, _ in grid.runs if t == task))
    return [d for d in present if depths is None or d in depths]


# --- splice-in fidelity ------------------------------------------------------------------------


def fit_grid_probe(
    data: GridData, task: str, held_out: np.ndarray, *, C: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The pre-trained model's read-out for ``task``: a logistic regression on the mean-pooled
    last layer of the texts *not* held out (the SAEs' training texts), from the cached
    activations (:func:`~repgeo_utils.ablation.fit_linear_probe`)."""
    acts = data.activations[(task, PRE)]
    texts = data.texts[task]
    features = acts.pooled(acts.n_hidden_states - 1, "mean")[~held_out]
    return fit_linear_probe(
        features, texts.labels[~held_out], C=C, seed=seed, n_classes=len(texts.label_names)
    )


def splice_grid(
    grid: SAEGrid,
    *,
    tasks: Sequence[str] | None = None,
    depths: Sequence[str] | None = None,
    transfer: bool = True,
    probe_C: float = 1.0,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """Splice-in fidelity of every SAE of ``grid`` on its task's held-out texts (see the module
    docstring for what each model's read-out is).

    One row per (task, model, depth, SAE): ``task``, ``model`` (whose forward pass),
    ``readout``, ``depth``, ``layer``, ``sae`` (whose SAE is spliced in), ``transfer`` (the
    pre-trained SAE in the fine-tuned model), and :func:`~repgeo_utils.ablation.splice_fidelity`'s
    measures: ``accuracy``, ``kl``, their clean / zero- / mean-ablation references and
    ``accuracy_recovered_zero``, ``accuracy_recovered_mean``, ``kl_recovered_zero``,
    ``kl_recovered_mean``. The mean-ablation state is each layer's mean over the held-out
    texts' real tokens, from the cached activations (so it costs no forward pass).
    """
    data = grid.data
    frames = []
    for task in tasks or data.tasks:
        held_out = _eval_texts(grid, task)
        texts = data.texts[task]
        eval_texts = [t for t, keep in zip(texts.texts, held_out, strict=True) if keep]
        labels = texts.labels[held_out]
        task_depths = _task_depths(grid, task, depths)
        for model_name in MODELS:
            # depths that share a layer (a shallow model) share its SAEs: spliced once
            splices: dict[int, dict[str, Any]] = {}
            depths_at: dict[int, list[str]] = {}
            for depth in task_depths:
                layer = data.layers[depth]
                sources = [model_name] + ([PRE] if transfer and model_name == POST else [])
                for sae_model in sources:
                    run = grid.runs.get((task, depth, sae_model))
                    if run is not None:
                        splices.setdefault(layer, {}).setdefault(f"{sae_model} SAE", run.sae)
                if layer in splices:
                    depths_at.setdefault(layer, []).append(depth)
            if not splices:
                continue
            acts = data.activations[(task, model_name)]
            rows = _held_out_rows(acts, held_out)
            means = {
                layer: torch.from_numpy(
                    np.asarray(acts.tokens(layer))[rows].mean(0, dtype=np.float64)
                )
                for layer in splices
            }
            model = _readout_model(data, task, model_name, held_out, probe_C)
            table = classifier_splice_fidelity(
                model, acts.tokenizer(), eval_texts, labels, splices,
                max_length=data.max_length[task], batch_size=batch_size, means=means,
                progress=progress,
            )  # fmt: skip
            table = table[table["kind"] == "splice"].copy()
            table["depth"] = table["layer"].map(depths_at)
            table = table.explode("depth", ignore_index=True)
            table["task"] = task
            table["model"] = model_name
            table["readout"] = READOUTS[model_name]
            table["sae"] = table["variant"].str.removesuffix(" SAE")
            table["transfer"] = table["sae"] != model_name
            frames.append(table.drop(columns=["variant", "kind"]))
    if not frames:
        raise ValueError("No SAE of the grid matched the tasks and depths asked for.")
    out = pd.concat(frames, ignore_index=True)
    first = ["task", "model", "readout", "depth", "layer", "sae", "transfer"]
    out = out[first + [c for c in out.columns if c not in first]]
    order = {depth: i for i, depth in enumerate(DEPTHS)}
    out = out.sort_values(
        ["task", "model", "depth", "transfer"], key=lambda c: c.map(order) if c.name == "depth" else c,
        kind="stable",
    )  # fmt: skip
    return out.reset_index(drop=True)


def _readout_model(data: GridData, task: str, model_name: str, held_out, probe_C: float):
    label_names = list(data.texts[task].label_names)
    if model_name == POST:
        model, _ = load_model(  # the fine-tuned checkpoint's own head (seeded, should it lack one)
            data.models[(task, POST)], kind="classifier", label_names=label_names, seed=0
        )
        return model.eval()
    encoder, _ = load_model(data.models[(task, PRE)], kind="encoder")
    weight, bias = fit_grid_probe(data, task, held_out, C=probe_C)
    return ProbeClassifier(encoder, weight, bias).eval()


# --- SAE transfer ------------------------------------------------------------------------------


def sae_transfer_table(grid: SAEGrid, splice: pd.DataFrame | None = None) -> pd.DataFrame:
    """The pre-trained model's SAE applied to the fine-tuned model's activations at the same
    layer (held-out texts' tokens), per task and depth: ``fvu_pre_own`` (pre-trained SAE on its
    own model), ``fvu_post_own`` (fine-tuned SAE on its own model), ``fvu_transfer`` and
    ``fvu_lost`` (= transfer - fine-tuned own), with the transfer's ``shrinkage`` and ``cosine``.
    With ``splice`` (a :func:`splice_grid` table), also the splice-in fidelity in the
    fine-tuned classifier of its own SAE and of the transferred one (``kl_recovered_zero_own``,
    ``kl_recovered_zero_transfer``, ``accuracy_recovered_zero_*``) and what transfer loses
    (``kl_recovered_lost``, ``accuracy_recovered_lost``)."""
    data = grid.data
    rows = []
    for task, depth, model in grid.runs:
        if model != POST or (task, depth, PRE) not in grid.runs:
            continue
        pre_run, post_run = grid.runs[(task, depth, PRE)], grid.runs[(task, depth, POST)]
        acts = data.activations[(task, POST)]
        mask = _held_out_rows(acts, post_run.eval_texts)
        if grid.exclude_special:
            mask &= ~acts.special_mask
        x = np.ascontiguousarray(np.asarray(acts.tokens(post_run.layer))[mask], dtype=np.float32)
        transfer = evaluate_sae(pre_run.sae, x)
        rows.append(
            {
                "task": task,
                "depth": depth,
                "layer": post_run.layer,
                "fvu_pre_own": pre_run.metrics.fvu,
                "fvu_post_own": post_run.metrics.fvu,
                "fvu_transfer": transfer.fvu,
                "fvu_lost": transfer.fvu - post_run.metrics.fvu,
                "shrinkage_transfer": transfer.shrinkage,
                "cosine_transfer": transfer.cosine,
                "l0_transfer": transfer.mean_l0,
                "l0_post_own": post_run.metrics.mean_l0,
            }
        )
    table = pd.DataFrame(rows)
    if splice is None or table.empty:
        return table
    post = splice[splice["model"] == POST]
    for measure in ("kl_recovered_zero", "accuracy_recovered_zero"):
        for which, transferred in (("own", False), ("transfer", True)):
            part = post[post["transfer"] == transferred].set_index(["task", "depth"])[measure]
            table[f"{measure}_{which}"] = [part.get((t, d), math.nan)
                                           for t, d in zip(table["task"], table["depth"], strict=True)]  # fmt: skip
        name = measure.replace("_zero", "")
        table[f"{name}_lost"] = table[f"{measure}_own"] - table[f"{measure}_transfer"]
    return table


# --- crosscoders on the grid's layers -----------------------------------------------------------


def crosscoder_config(d_in: int, settings: Any = None, **overrides: Any) -> CrosscoderConfig:
    """The crosscoder of a grid: the SAEs' latents, epochs and seed (from a
    :class:`~repgeo_utils.sae.grid.GridSettings`, default ``GridSettings()``), L1 1e-2 (the
    ``l1-sparse`` SAEs' coefficient, here on decoder-norm-weighted latents), with ``overrides``."""
    chosen = grid_settings(settings) if settings is not None else None
    base: dict[str, Any] = dict(d_sae=1024)
    if chosen is not None:
        base = dict(d_sae=chosen.d_sae, epochs=chosen.epochs, seed=chosen.sae_seed)
    return CrosscoderConfig(d_in=d_in, **{**base, **overrides})


@dataclass
class CrosscoderGrid:
    """One crosscoder per (task, depth) of a grid's data."""

    data: GridData
    config: CrosscoderConfig
    runs: dict[tuple[str, str], TrainedCrosscoder]
    exclude_special: bool = False

    def metrics_table(self) -> pd.DataFrame:
        """Held-out FVU of each model, L0, dead and dense latents, training time."""
        rows = []
        for (task, depth), run in self.runs.items():
            m = run.metrics
            rows.append(
                {
                    "task": task,
                    "depth": depth,
                    "layer": run.layer,
                    "eval tokens": m.n_tokens,
                    "FVU pre": m.fvu_pre,
                    "FVU post": m.fvu_post,
                    "L0": m.mean_l0,
                    "dead": m.dead,
                    "dense": m.dense,
                    "train s": run.history.seconds,
                }
            )
        return pd.DataFrame(rows)


def train_crosscoder_grid(
    data: GridData,
    config: CrosscoderConfig,
    *,
    depths: Sequence[str] = DEPTHS,
    exclude_special: bool = False,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    progress: bool = False,
) -> CrosscoderGrid:
    """Train (or load from the cache) a crosscoder for every task and depth of ``data`` on the
    pre-trained and fine-tuned activations of the same texts, holding out the same texts as the
    SAE grid (same ``eval_fraction`` and ``split_seed``)."""
    runs = {}
    for task in data.tasks:
        for depth in depths:
            runs[(task, depth)] = train_crosscoder_on_activations(
                data.activations[(task, PRE)],
                data.activations[(task, POST)],
                data.layers[depth],
                config,
                eval_fraction=eval_fraction,
                split_seed=split_seed,
                exclude_special=exclude_special,
                progress=progress,
            )
    return CrosscoderGrid(data, config, runs, exclude_special)


def crosscoder_latents(
    cc_grid: CrosscoderGrid, *, shared_nu: float = SHARED_NU
) -> dict[tuple[str, str], pd.DataFrame]:
    """:func:`~repgeo_utils.sae.crosscoder.latent_table` of every crosscoder, on its held-out
    texts' token pairs: relative norms, bands and latent scaling per latent."""
    out = {}
    for (task, depth), run in cc_grid.runs.items():
        pairs = held_out_pairs(
            cc_grid.data.activations[(task, PRE)], cc_grid.data.activations[(task, POST)],
            run.layer, run.eval_texts, exclude_special=cc_grid.exclude_special,
        )  # fmt: skip
        out[(task, depth)] = latent_table(run.crosscoder, pairs, shared_nu=shared_nu)
    return out


def crosscoder_summary(
    latents: dict[tuple[str, str], pd.DataFrame], cc_grid: CrosscoderGrid | None = None
) -> pd.DataFrame:
    """Per task and layer: latents per relative-norm band (pre-only, pre-leaning, shared,
    post-leaning, post-only, dead), the pre-only and post-only latents latent scaling finds
    really shared, and ``share_kept`` (of the latents the fine-tuned model uses, the share the
    pre-trained model uses too; ``share_kept_after_scaling`` counts the really shared ones as
    kept). With ``cc_grid``, also the held-out FVU of each model."""
    rows = []
    for (task, depth), table in latents.items():
        row: dict[str, Any] = {"task": task, "depth": depth}
        if cc_grid is not None:
            run = cc_grid.runs[(task, depth)]
            row.update(layer=run.layer, fvu_pre=run.metrics.fvu_pre, fvu_post=run.metrics.fvu_post)
        row.update(band_counts(table))
        rows.append(row)
    return pd.DataFrame(rows)


def crosscoder_vs_matching(summary: pd.DataFrame, matching: pd.DataFrame) -> pd.DataFrame:
    """The crosscoder's ``share_kept`` beside the matching approach's ``share_with_twin``
    (``sae.grid.matching_summary``) per task and layer, and per task whether each says "early
    layers keep, late layers replace": ``*_trend`` is ``"keeps early, replaces late"`` when its
    share at the first (earliest) layer is above the share at the last one, ``"replaces early"``
    when below, ``"flat"`` when equal; ``agree`` when the two trends are the same."""
    keys = [k for k in ("task", "depth", "layer") if k in summary.columns and k in matching.columns]
    merged = summary.merge(
        matching[[*keys, "share_with_twin", "median_cosine"]], on=keys, how="inner"
    )
    if "layer" not in merged.columns:
        raise ValueError(
            "Give the crosscoder summary with layers (crosscoder_summary(..., cc_grid))."
        )
    merged = merged.sort_values(["task", "layer"], kind="stable").reset_index(drop=True)

    def trend(values: pd.Series) -> str:
        first, last = float(values.iloc[0]), float(values.iloc[-1])
        if not (math.isfinite(first) and math.isfinite(last)) or len(values) < 2:
            return "n/a"
        if first > last:
            return "keeps early, replaces late"
        return "replaces early" if first < last else "flat"

    for column, name in (("share_with_twin", "matching_trend"), ("share_kept", "crosscoder_trend")):
        merged[name] = merged.groupby("task")[column].transform(trend)
    merged["agree"] = merged["matching_trend"] == merged["crosscoder_trend"]
    return merged


# --- SAELens files ------------------------------------------------------------------------------


def module_path(model: str | Path, hidden_state: int) -> str:
    """The path (in the bare encoder the activations came from) of the module whose output is
    ``hidden_states[hidden_state]``, e.g. ``encoder.layer.2``; built on the meta device, so no
    weights are read."""
    config = load_config(model)
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config)
    return hidden_state_module(skeleton, hidden_state)[0]


def export_grid_saelens(
    grid: SAEGrid, folder: str | Path, *, sparsity: bool = True
) -> pd.DataFrame:
    """Write every SAE of ``grid`` as a SAELens folder ``<folder>/<task>__<depth>__<model>``
    (:func:`~repgeo_utils.sae.export_saelens`): model name (the fine-tuned model's is "<base>
    fine-tuned on <task>", its checkpoint folder in ``model_path``), hook (``hidden_states`` index and
    module path), ``max_length`` as context size, the [CLS] as BOS, the special-token handling
    and the texts; our metadata adds the task, the model's role (pre-trained / fine-tuned), its
    path and fingerprint, and the texts' digest. With ``sparsity``, each latent's log10 firing
    fraction over the task's tokens goes into ``sparsity.safetensors``. Returns one row per
    folder."""
    folder = Path(folder)
    data = grid.data
    rows = []
    paths: dict[tuple[str, int], str] = {}
    for (task, depth, model), run in grid.runs.items():
        acts = data.activations[(task, model)]
        source = data.models[(task, model)]
        key = (str(source), run.layer)
        if key not in paths:
            paths[key] = module_path(source, run.layer)
        texts = data.texts[task]
        frequency = None
        if sparsity:
            x = token_rows(acts, run.layer, exclude_special=grid.exclude_special)
            frequency = latent_statistics(run.sae, x).firing_frequency
        starts = acts.offsets[:-1]
        model_key = acts.key["model"]
        base_name = str(data.activations[(task, PRE)].key["model"].get("model"))
        out = export_saelens(
            run.sae,
            folder / f"{task}__{depth}__{model.replace(' ', '-')}",
            model_name=base_name if model == PRE else f"{base_name} fine-tuned on {task}",
            hidden_state=run.layer,
            module_path=paths[key],
            context_size=int(data.max_length[task]),
            prepend_bos=bool(acts.special_mask[starts].all()),
            dataset_path=f"repgeo:{task}/{'+'.join(texts.splits)}",
            exclude_special_tokens=grid.exclude_special,
            firing_frequency=frequency,
            metadata={
                "task": task,
                "model_role": model,
                "depth": depth,
                "model_path": model_key.get("path"),
                "model_fingerprint": acts.key.get("fingerprint"),
                "texts_sha": acts.key.get("texts"),
                "n_texts": acts.n_texts,
                "label_names": list(texts.label_names),
                "held_out_fraction": float(run.eval_texts.mean()),
            },
        )
        rows.append(
            {"task": task, "depth": depth, "layer": run.layer, "model": model, "folder": out}
        )
    return pd.DataFrame(rows)
