"""Measuring a model's checkpoints: last-token representations and validation loss per revision.

:func:`sweep_checkpoints` runs a local run folder (from :func:`~repgeo_utils.lm.pretrain` or a
post-training stage) or a hub model such as ``EleutherAI/pythia-160m`` at each revision on the
same texts, caches each revision's features under ``data/cache/checkpoint-sweep/`` and tabulates
RankMe and alpha-ReQ from :mod:`repgeo_utils.spectral`. :func:`causal_lm_batches` and
:func:`last_token_features` are the tokenise-pad-run routine it shares with the LM ablation.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .. import spectral, validate
from ..cache import cache_entry, key_hash
from ..models import load_model, resolve_model
from .checkpoints import list_revisions, quiet_progress_bars, revision_step

log = logging.getLogger(__name__)


@dataclass
class RevisionFeatures:
    """Last-token representations and validation loss of one revision."""

    revision: str | None
    step: int | None
    loss: float  # mean next-token cross-entropy over all predicted tokens of the texts
    tokens: int  # how many tokens the loss averages over
    # layer -> last-token states
    features: dict[int, Float[np.ndarray, "texts hidden"]]


@dataclass
class CheckpointSweep:
    """What :func:`sweep_checkpoints` returns: per revision the features and (unless
    ``spectral_metrics=False``) a metrics table."""

    model: str
    layers: list[int]  # hidden_states indices; the last is the final layer (after final LN)
    revisions: list[RevisionFeatures]
    # pandas.DataFrame (revision, step, layer, loss, rankme_covariance, rankme_singular, alpha,
    # alpha_r2, alpha_fit_hi; the columns of spectral.layer_spectra where they overlap) or None
    metrics: pd.DataFrame | None

    def features(self, layer: int | None = None) -> dict[str | None, np.ndarray]:
        """``revision -> features`` of one layer (default: the final layer)."""
        layer = self.layers[-1] if layer is None else layer
        return {r.revision: r.features[layer] for r in self.revisions}


def _resolve_layers(layers: str | Sequence[int], num_layers: int) -> list[int]:
    """``"final"``, ``"all"`` or indices into ``hidden_states`` (0 = embeddings,
    ``num_layers`` = final layer after the final LayerNorm; negative counts from the end)."""
    if layers == "final":
        return [num_layers]
    if layers == "all":
        return list(range(num_layers + 1))
    if isinstance(layers, str):
        raise ValueError(f"layers must be 'final', 'all' or a list of ints, got {layers!r}")
    out = []
    for layer in layers:
        idx = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= num_layers:
            raise ValueError(
                f"layer {layer} out of range for a model with {num_layers} layers "
                f"(hidden_states has {num_layers + 1} entries: 0..{num_layers})."
            )
        out.append(idx)
    return sorted(set(out))


def model_positions(model) -> int | None:
    """How many positions the model was built for (``max_position_embeddings``), or None."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(positions) if positions else None


def resolve_max_length(max_length: int | None, positions: int | None) -> int:
    """The token limit to cut texts at: the model's context when ``max_length`` is None (as
    paper 2's code truncates to the context); an explicit ``max_length`` beyond the model's
    positions is refused, since the model never saw such positions in training."""
    if max_length is None:
        if positions is None:
            raise ValueError(
                "max_length=None means 'the model's context', but the model's config has no "
                "max_position_embeddings: pass max_length explicitly."
            )
        return positions
    validate.positive_int("max_length", max_length)
    if positions is not None and max_length > positions:
        raise ValueError(
            f"max_length {max_length} exceeds the model's {positions} positions (its context): "
            f"texts would run past the positions it was trained on. Use max_length <= "
            f"{positions}, or None for the context itself."
        )
    return max_length


def causal_lm_batches(
    tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 32
) -> list[tuple[np.ndarray, Any, Any]]:
    """``texts`` tokenised for a causal LM: no special tokens added (as Pythia's tokenizer),
    truncated to ``max_length``, sorted by length and right-padded into batches. Returns
    ``(text indices, input_ids, attention_mask)`` per batch (torch tensors)."""
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)[
        "input_ids"
    ]
    empty = [i for i, ids in enumerate(enc) if not ids]
    if empty:
        raise ValueError(f"{len(empty)} texts tokenize to nothing (first: index {empty[0]}).")
    pad = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else (tokenizer.eos_token_id or 0)
    )
    order = np.argsort([len(ids) for ids in enc], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(enc[i])] = torch.tensor(enc[i])
            mask[row, : len(enc[i])] = 1
        batches.append((idx, ids, mask))
    return batches


def last_token_features(
    model,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> tuple[dict[int, np.ndarray], float, int]:
    """Last-token hidden states of ``layers`` for ``texts`` and the mean next-token loss.

    Texts are truncated to ``max_length`` tokens (None: the model's context; more than the
    context is refused), batched by length (right padding), and the state at each text's last
    real token is kept, in float32. Returns ``(layer -> (n_texts, hidden) array, mean loss,
    predicted tokens)``.
    """
    if not texts:
        raise ValueError("last_token_features needs at least one text.")
    max_length = resolve_max_length(max_length, model_positions(model))
    batches = causal_lm_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    n_texts = sum(len(idx) for idx, _, _ in batches)
    hidden = int(model.config.hidden_size)
    feats = {layer: np.empty((n_texts, hidden), dtype=np.float32) for layer in layers}
    loss_sum, n_tok = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for idx, ids, mask in batches:
            ids, mask = ids.to(device), mask.to(device)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            last = mask.sum(1) - 1
            rows = torch.arange(len(idx), device=device)
            for layer in layers:
                feats[layer][idx] = out.hidden_states[layer][rows, last].float().cpu().numpy()
            logits = out.logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            loss_sum += float(loss)
            n_tok += int((target != -100).sum())
    return feats, (loss_sum / n_tok if n_tok else float("nan")), n_tok


def _summary(features: np.ndarray, fit_range: tuple[int, int], label: str) -> dict[str, float]:
    """The sweep's metric columns for one feature matrix (spectral_summary, clipped to rank)."""
    summary = spectral.spectral_summary(
        spectral.eigenspectrum(features), fit_range=fit_range, label=label, clip_to_rank=True
    )
    summary.pop("n_eigenvalues")
    return summary


def sweep_checkpoints(
    model: str | Path,
    revisions: Sequence[str | None] | None,
    texts: Sequence[str],
    *,
    layers: str | Sequence[int] = "final",
    max_length: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    spectral_metrics: bool = True,
    fit_range: tuple[int, int] = (12, 100),
    use_cache: bool = True,
    progress: bool = True,
) -> CheckpointSweep:
    """Last-token representations and validation loss of ``model`` at each revision.

    ``model`` is anything :func:`repgeo_utils.models.resolve_model` accepts: a run folder
    written by :func:`pretrain` (``revisions=None`` sweeps all of its saved revisions) or a
    hub id such as ``EleutherAI/pythia-160m`` with revisions from :func:`pythia_revisions`.
    ``layers`` indexes ``hidden_states`` (``"final"``, ``"all"`` or a list; the final entry is
    the output of the final LayerNorm, which feeds the unembedding). Texts are cut to
    ``max_length`` tokens: by default (None) the model's context, as paper 2's code cuts them;
    a longer ``max_length`` is refused (a 128-token cut of a 64-token model ran texts past its
    trained positions before this check). Each revision's result is
    cached under ``data/cache/checkpoint-sweep/`` keyed by the weights, texts and settings.
    With ``spectral_metrics`` (the default), ``metrics`` is a table with RankMe (both variants)
    and alpha-ReQ per revision and layer from :func:`repgeo_utils.spectral.spectral_summary`:
    alpha is fitted over the ranks ``fit_range`` (12..100), ending at the numerical rank when
    fewer eigenvalues than that are non-zero (``clip_to_rank``; ``alpha_fit_hi`` is the last
    rank fitted), as a small model's width is often below 100.
    """
    if revisions is None:
        revisions = list_revisions(model)
        if not revisions:
            raise ValueError(f"{model!r} has no saved revisions; pass revisions explicitly.")
    if not texts:
        raise ValueError("sweep_checkpoints needs at least one text.")
    texts = list(texts)
    texts_hash = key_hash({"texts": texts}, length=16)
    results: list[RevisionFeatures] = []
    layer_ids: list[int] | None = None
    for revision in tqdm(
        list(revisions), desc="checkpoint sweep", disable=not progress, leave=False
    ):
        ref = resolve_model(model, revision)

        def compute(target: Path, revision: str | None = revision) -> None:
            with quiet_progress_bars():
                net, tokenizer = load_model(model, revision, kind="causal-lm")
            net.to(device)
            limit = resolve_max_length(max_length, model_positions(net))
            ids = _resolve_layers(layers, int(net.config.num_hidden_layers))
            feats, loss, n_tok = last_token_features(
                net,
                tokenizer,
                texts,
                ids,
                max_length=limit,
                batch_size=batch_size,
                device=device,
            )
            arrays: dict[str, Any] = {f"layer{k}": v for k, v in feats.items()}
            np.savez(target / "features.npz", **arrays)
            (target / "loss.json").write_text(
                json.dumps({"loss": loss, "tokens": n_tok, "layers": ids})
            )

        key = {
            **ref.as_key(),
            "texts": texts_hash,
            "n_texts": len(texts),
            "layers": layers if isinstance(layers, str) else list(layers),
            "max_length": max_length,
            # 2: texts cut at the model's context by default, longer cuts refused
            "format": 2,
        }
        if ref.source != "hub":  # the weights themselves (a hub model: its id and revision)
            key["fingerprint"] = ref.fingerprint()
        with tempfile.TemporaryDirectory() as scratch:
            if use_cache:
                with cache_entry("checkpoint-sweep", ref.cache_name, key) as entry:
                    if not entry.exists:
                        compute(entry.build_dir)
                stored = entry.path
            else:
                stored = Path(scratch)
                compute(stored)
            info = json.loads((stored / "loss.json").read_text())
            with np.load(stored / "features.npz") as npz:
                feats = {int(k.removeprefix("layer")): npz[k] for k in npz.files}
        layer_ids = layer_ids or list(info["layers"])
        results.append(
            RevisionFeatures(
                revision,
                revision_step(revision) if revision else None,
                float(info["loss"]),
                int(info["tokens"]),
                feats,
            )
        )
    metrics = None
    if spectral_metrics:
        rows = []
        for res in results:
            for layer, feat in res.features.items():
                rows.append(
                    {
                        "revision": res.revision,
                        "step": res.step,
                        "layer": layer,
                        "loss": res.loss,
                        **_summary(feat, fit_range, f"{res.revision}, layer {layer}"),
                    }
                )
        metrics = pd.DataFrame(rows)
    return CheckpointSweep(str(model), layer_ids or [], results, metrics)
