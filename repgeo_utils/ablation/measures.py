"""Eigen-direction ablation of a model's final representation (paper 2, Table 2).

Paper 2 (Li et al., 2025) projects the final-layer representations of a language model onto
their top-k eigen-directions ("keep") or onto the complement ("remove") and measures the task
again: keeping only the top 10 of Pythia-1B's 2,048 directions collapses its SciQ accuracy
(0.838 -> 0.225) while removing them barely moves it (0.849). The geometry is fitted on one set
of texts and the model evaluated on another; the ablation itself is
``ablation.eigen_ablation`` (``mean + (h - mean) @ P``), applied to

- a **causal LM**: the output of the final LayerNorm, i.e. the vector every next-token logit
  is read from (the unembedding's input), at every position; metric: the mean next-token
  cross-entropy (:func:`lm_loss_ablation`);
- a **sequence classifier** (BERT family): the output of the last encoder layer at every
  token, so the [CLS] state the pooler and the classification head read is ablated; metric:
  accuracy (:func:`classifier_accuracy_ablation`).

The eigenbasis is fitted on the representation of *every real token* of the fitting texts
(padding excluded). The ablation machinery itself (:func:`~repgeo_utils.ablation.fit_eigenbasis`,
:func:`~repgeo_utils.ablation.eigen_ablation`, :func:`~repgeo_utils.ablation.ablation_sweep`) is
in :mod:`repgeo_utils.ablation.hooks`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import validate
from ..finetune import predict_logits
from ..lm.sweeps import (
    causal_lm_batches,
    last_token_features,
    model_positions,
    resolve_max_length,
)
from .hooks import ABLATION_MODES, EigenBasis, ablation_sweep, check_ks, fit_eigenbasis
from .splice import upstream_modules

log = logging.getLogger(__name__)


def final_representation_module(model):
    """The submodule whose output is the model's final-layer representation.

    - Causal LMs: the final LayerNorm feeding the unembedding: GPT-NeoX / Pythia
      ``gpt_neox.final_layer_norm``, Llama-like ``model.norm``, GPT-2 ``transformer.ln_f``.
    - Encoders (BERT family, with or without a classification head): the last encoder layer,
      ``bert.encoder.layer[-1]`` (generically ``base_model.encoder.layer[-1]``).

    Works on the model with its head or on the bare base model. Raises a ValueError for other
    architectures.
    """
    base = getattr(model, "base_model", model)
    for name in ("final_layer_norm", "norm", "ln_f"):
        module = getattr(base, name, None)
        if module is not None and hasattr(module, "register_forward_hook"):
            return module
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is not None and len(layers) > 0:
        return layers[-1]
    raise ValueError(
        f"Don't know the final representation of a {type(model).__name__}: expected a "
        "GPT-NeoX (gpt_neox.final_layer_norm), Llama-like (model.norm), GPT-2 "
        "(transformer.ln_f) or BERT-like (base_model.encoder.layer[-1]) model."
    )


def _upstream(model, module) -> list | None:
    """The modules an ablation of the final representation ``module`` can replay
    (``splice.upstream_modules``), or None for a model whose layers are not known."""
    try:
        modules = upstream_modules(model, int(model.config.num_hidden_layers))
    except (AttributeError, TypeError, ValueError):
        return None
    return modules if modules and modules[-1] is module else None


def _device(model):
    return next(model.parameters()).device


def collect_module_outputs(model, module, batches: Iterable[Mapping]) -> np.ndarray:
    """``module``'s output at every real token while ``model`` runs on ``batches``.

    Each batch is a mapping of tensors passed as ``model(**batch)`` (moved to the model's
    device); positions with ``attention_mask == 0`` are dropped (all kept without a mask).
    The module's output (element 0 of a tuple) must have shape ``(batch, seq, d)``. Returns
    an ``(n_tokens, d)`` float32 array, batches in order, tokens row-major. Runs in eval mode
    under ``torch.inference_mode``.
    """
    captured: list = []

    def hook(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        if not hasattr(h, "shape"):
            raise TypeError(
                f"collect_module_outputs needs a tensor (or tuple) output, got "
                f"{type(output).__name__}."
            )
        captured.append(h)

    device = _device(model)
    rows = []
    model.eval()
    handle = module.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                captured.clear()
                model(**batch)
                if len(captured) != 1:
                    raise RuntimeError(
                        f"The module ran {len(captured)} times in one forward pass; expected 1."
                    )
                h = captured[0]
                mask = batch.get("attention_mask")
                if mask is None:
                    mask = torch.ones(h.shape[:-1], dtype=torch.bool, device=h.device)
                if h.ndim != 3 or tuple(h.shape[:2]) != tuple(mask.shape):
                    raise ValueError(
                        f"The module's output has shape {tuple(h.shape)}; expected (batch, seq, "
                        f"d) matching the attention mask {tuple(mask.shape)}."
                    )
                rows.append(h[mask.bool()].float().cpu().numpy())
    finally:
        handle.remove()
        captured.clear()
    if not rows:
        raise ValueError("collect_module_outputs got no batches.")
    return np.concatenate(rows)


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    return validate.text_list(name, texts)


def _causal_batches(tokenizer, texts, max_length: int, batch_size: int) -> list[dict]:
    """Texts batched exactly as ``lm.last_token_features`` batches them."""
    return [
        {"input_ids": ids, "attention_mask": mask}
        for _, ids, mask in causal_lm_batches(
            tokenizer, texts, max_length=max_length, batch_size=batch_size
        )
    ]


def _encoder_batches(tokenizer, texts, max_length: int, batch_size: int) -> list[dict]:
    """Texts tokenised as ``finetune.predict_logits`` does (special tokens, length-sorted)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    return [
        tokenizer.pad(
            {k: [enc[k][i] for i in order[s : s + batch_size]] for k in enc}, return_tensors="pt"
        )
        for s in range(0, len(order), batch_size)
    ]


def _check_sizes(ks, hidden: int, max_length: int, batch_size: int) -> None:
    check_ks(ks, hidden)
    validate.positive_int("max_length", max_length)
    validate.positive_int("batch_size", batch_size)


def _fit(model, module, batches) -> EigenBasis:
    features = collect_module_outputs(model, module, batches)
    basis = fit_eigenbasis(features)
    log.info("eigenbasis fitted on %d tokens x %d dimensions", *features.shape)
    return basis


def lm_loss_ablation(
    model,
    tokenizer,
    fit_texts: Sequence[str],
    eval_texts: Sequence[str],
    ks: Sequence[int],
    *,
    max_length: int | None = None,
    batch_size: int = 32,
    modes: Sequence[str] = ABLATION_MODES,
    progress: bool = True,
) -> pd.DataFrame:
    """Mean next-token loss of a causal LM with its final representation ablated.

    Texts are cut at ``max_length`` tokens: None (the default) is the model's context, and
    a longer ``max_length`` is refused (:func:`repgeo_utils.lm.sweeps.resolve_max_length`).

    The eigenbasis is fitted on the final LayerNorm's output (:func:`final_representation_module`)
    at every real token of ``fit_texts``; the loss on ``eval_texts`` (tokenised, padded and
    averaged over predicted tokens as in ``lm.last_token_features``) is then measured
    without ablation and with the top-k directions kept / removed at every position. Returns
    :func:`ablation_sweep`'s table with the metric column ``loss``;
    ``attrs["n_fit_tokens"]`` is the number of fitting tokens.
    """
    fit_texts = _check_texts(fit_texts, "fit_texts")
    eval_texts = _check_texts(eval_texts, "eval_texts")
    max_length = resolve_max_length(max_length, model_positions(model))
    _check_sizes(ks, int(model.config.hidden_size), max_length, batch_size)
    module = final_representation_module(model)
    model.eval()
    with torch.inference_mode():
        basis = _fit(model, module, _causal_batches(tokenizer, fit_texts, max_length, batch_size))
        device = str(_device(model))

        def evaluate() -> dict[str, float]:
            _, loss, _ = last_token_features(
                model,
                tokenizer,
                eval_texts,
                [],
                max_length=max_length,
                batch_size=batch_size,
                device=device,
            )
            return {"loss": loss}

        table = ablation_sweep(
            evaluate, module, basis, ks, modes, upstream=_upstream(model, module), progress=progress
        )
    table.attrs["n_fit_tokens"] = basis.n_samples
    return table


def classifier_accuracy_ablation(
    model,
    tokenizer,
    fit_texts: Sequence[str],
    eval_texts: Sequence[str],
    eval_labels: Sequence[int],
    ks: Sequence[int],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    modes: Sequence[str] = ABLATION_MODES,
    progress: bool = True,
) -> pd.DataFrame:
    """Accuracy of a sequence classifier with its last encoder layer's output ablated.

    The eigenbasis is fitted on the last encoder layer's output at every real token of
    ``fit_texts`` ([CLS] and [SEP] included); under the ablation that output is projected at
    every token, so the [CLS] state read by the pooler and the classification head is the
    ablated one. Accuracy on ``eval_texts`` comes from ``finetune.predict_logits``. Returns
    :func:`ablation_sweep`'s table with the metric column ``accuracy``;
    ``attrs["n_fit_tokens"]`` is the number of fitting tokens.
    """
    fit_texts = _check_texts(fit_texts, "fit_texts")
    eval_texts = _check_texts(eval_texts, "eval_texts")
    labels = np.asarray(list(eval_labels))
    if labels.shape != (len(eval_texts),):
        raise ValueError(
            f"eval_labels must hold one label per eval text: {labels.size} labels for "
            f"{len(eval_texts)} texts."
        )
    num_labels = int(model.config.num_labels)
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= num_labels
    ):
        raise ValueError(
            f"eval_labels must be integers in [0, {num_labels}) (the model has {num_labels} "
            f"labels), got values {sorted(set(labels.tolist()))[:10]}."
        )
    _check_sizes(ks, int(model.config.hidden_size), max_length, batch_size)
    module = final_representation_module(model)
    model.eval()
    with torch.inference_mode():
        basis = _fit(model, module, _encoder_batches(tokenizer, fit_texts, max_length, batch_size))

        def evaluate() -> dict[str, float]:
            logits = predict_logits(
                model, tokenizer, eval_texts, max_length=max_length, batch_size=batch_size
            )
            return {"accuracy": float(np.mean(logits.argmax(-1) == labels))}

        table = ablation_sweep(
            evaluate, module, basis, ks, modes, upstream=_upstream(model, module), progress=progress
        )
    table.attrs["n_fit_tokens"] = basis.n_samples
    return table


def default_ks(dim: int) -> list[int]:
    """The k of an ablation sweep over ``dim`` directions: 0 (mean only), every power of two
    below ``dim``, paper 2's 10 (when below ``dim``) and ``dim`` itself (no ablation)."""
    dim = validate.positive_int("dim", dim)
    return sorted(
        {0, dim}
        | {2**i for i in range(dim.bit_length()) if 2**i < dim}
        | ({10} if dim > 10 else set())
    )


def table2_row(table: pd.DataFrame, metric: str, ks: Sequence[int]) -> dict[str, float]:
    """One row in the layout of paper 2's Table 2 from an :func:`ablation_sweep`
    table: the unablated ``metric``, then for each k the value with the top-k directions
    removed and retained, and with only the mean kept (keep k = 0) when the table has it."""

    def value(mode: str, k: int) -> float:
        rows = table.loc[(table["mode"] == mode) & (table["k"] == k), metric]
        if rows.empty:
            raise ValueError(f"the ablation table has no row for mode {mode!r}, k = {k}")
        return float(rows.iloc[0])

    row = {"original": float(table.loc[table["mode"] == "none", metric].iloc[0])}
    for k in ks:
        row[f"top-{k} removed"] = value("remove", k)
        row[f"top-{k} retained"] = value("keep", k)
    if ((table["mode"] == "keep") & (table["k"] == 0)).any():
        row["mean only"] = value("keep", 0)
    return row
