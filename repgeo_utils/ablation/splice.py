"""Splice-in fidelity: replace one layer's output with an SAE's reconstruction inside the forward
pass and measure what the model loses.

SAELens and SAEBench do this for causal LMs (CE loss recovered, KL); here it is done the same
way for a causal LM and for encoder classifiers (BERT family), where what the model "loses" is
accuracy and the KL divergence of its class distribution.

- **Where.** ``hidden_states`` index ``L`` (the convention of :mod:`repgeo_utils.activations`
  and the SAE grid) is the output of :func:`hidden_state_module`: index 0 the embeddings, index
  ``L`` the output of transformer layer ``L - 1``; for a causal LM whose last hidden state is
  taken after the final norm (GPT-NeoX, GPT-2, Llama), the last index is that norm's output. A
  forward hook on that module (as :func:`~repgeo_utils.ablation.eigen_ablation` uses) replaces
  the hidden state at every **real** token; padding positions are never touched.
- **What is measured** (:func:`splice_fidelity`), per layer and per replacement, over the same
  batches: the clean model; the layer **zero-ablated** (SAELens's reference); the layer
  **mean-ablated** (every real token's state replaced by the mean state over the evaluation
  texts' real tokens); and each SAE spliced in. Classifier: accuracy and mean over texts of
  ``KL(p_clean || p_spliced)``; causal LM: mean next-token CE loss and mean per-token KL.
- **Fraction recovered**, SAELens's ``kl_div_score`` / ``ce_loss_score`` convention: for a
  reference ``ref`` (zero or mean ablation), ``KL recovered = (KL_ref - KL_sae) / KL_ref``,
  ``CE recovered = (CE_ref - CE_sae) / (CE_ref - CE_clean)`` and, likewise for accuracy,
  ``(acc_sae - acc_ref) / (acc_clean - acc_ref)``: 1 when the SAE stands in for the layer
  perfectly, 0 when it is no better than the ablation (NaN when the ablation costs nothing).
- **Cost.** Every batch runs the clean model once, each reference once per layer and each SAE
  once: **one extra forward pass per SAE per batch**; the clean pass and the two references are
  shared by every SAE spliced at the same layer. Mean-ablation needs the layer's mean: pass it
  (e.g. from cached activations of the same texts) or it costs one more clean pass over the
  batches, once (``benchmarks/bench_crosscoder.py`` measures the splice cost).

A model without a classification head (the pre-trained encoder) gets one from
:func:`fit_linear_probe` and :class:`ProbeClassifier`: a logistic-regression read-out of its
mean-pooled last layer, fitted once on clean features and then held fixed, so that splicing
measures what the *representation* loses for the task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..lm.sweeps import causal_lm_batches
from ..sae.model import SparseAutoencoder
from .hooks import Replay

log = logging.getLogger(__name__)

Objective = Literal["classifier", "causal-lm"]
#: A replacement of the real tokens' hidden states: ``(tokens, d) -> (tokens, d)``.
Replacement = Callable[[Tensor], Tensor]
#: The ablations every splice is compared with.
REFERENCES: tuple[str, str] = ("zero", "mean")


# --- where a hidden state comes from ----------------------------------------------------------


def _layers_of(base) -> Any:
    for path in ("encoder.layer", "layers", "h", "transformer.h"):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None:
            return module
    return None


def hidden_state_module(model, index: int) -> tuple[str, nn.Module]:
    """``(path, module)``: the module whose output is ``hidden_states[index]`` of ``model``
    (with or without a head), its path as ``named_modules`` gives it.

    BERT family: 0 -> ``embeddings``, ``L`` -> ``encoder.layer.{L-1}``. Causal LMs (GPT-NeoX,
    Llama-like, GPT-2): 0 -> the embedding output (after its dropout), ``L`` -> ``layers.{L-1}``,
    and the last index -> the final norm, which these models apply before returning the last
    hidden state. Negative indices count from the end.
    """
    base = getattr(model, "base_model", model)
    n_layers = int(model.config.num_hidden_layers)
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"index must be an int, got {index!r}")
    if not -(n_layers + 1) <= index <= n_layers:
        raise IndexError(
            f"hidden_states index {index} is out of range: the model has {n_layers + 1} hidden "
            f"states (0..{n_layers})."
        )
    index = int(index) % (n_layers + 1)
    layers = _layers_of(base)
    if layers is None:
        raise ValueError(
            f"Don't know the layers of a {type(model).__name__}: expected a BERT-like "
            "(encoder.layer), GPT-NeoX / Llama-like (layers) or GPT-2 (h) model."
        )
    final_norm = next(
        (getattr(base, n) for n in ("final_layer_norm", "norm", "ln_f") if hasattr(base, n)),
        None,
    )
    if index == 0:
        module = next(
            (
                getattr(base, name)
                for name in ("embeddings", "emb_dropout", "drop", "embed_in", "embed_tokens")
                if isinstance(getattr(base, name, None), nn.Module)
            ),
            None,
        )
        if module is None:
            raise ValueError(f"Don't know the embedding output of a {type(model).__name__}.")
    elif index == n_layers and final_norm is not None:
        module = final_norm
    else:
        module = layers[index - 1]
    names = {id(m): name for name, m in model.named_modules()}
    return names.get(id(module), type(module).__name__), module


def upstream_modules(model, index: int) -> list[nn.Module]:
    """The modules whose outputs a forward pass computes on the way to ``hidden_states[index]``,
    in order, ending with :func:`hidden_state_module`'s: the embedding output and the layers
    before it; for the last index of a causal LM with a final norm, every layer and that norm.
    Replaying them (:class:`~repgeo_utils.ablation.hooks.Replay`) skips the part of the model an
    ablation or splice at ``index`` does not change."""
    _, target = hidden_state_module(model, index)
    base = getattr(model, "base_model", model)
    n_layers = int(model.config.num_hidden_layers)
    index = int(index) % (n_layers + 1)
    _, embedding = hidden_state_module(model, 0)
    if index == 0:
        return [embedding]
    layers = list(_layers_of(base))
    if index == n_layers and target is not layers[-1]:  # the final norm
        return [embedding, *layers, target]
    return [embedding, *layers[:index]]


# --- the hook -------------------------------------------------------------------------------


def as_replacement(sae_or_fn: SparseAutoencoder | Replacement) -> Replacement:
    """A :data:`Replacement` from an SAE (its reconstruction, computed in float32 on the SAE's
    device and returned in the input's dtype and device) or a function of the same shape."""
    if isinstance(sae_or_fn, SparseAutoencoder):
        sae = sae_or_fn
        device = sae.W_enc.device

        def reconstruct(h: Tensor) -> Tensor:
            return sae(h.to(device=device, dtype=torch.float32))[0].to(h.dtype).to(h.device)

        return reconstruct
    if callable(sae_or_fn):
        return sae_or_fn
    raise TypeError(f"Expected an SAE or a function of the hidden states, got {sae_or_fn!r}")


@dataclass
class SpliceHook:
    """What :func:`splice` yields. Set ``mask`` (``(batch, seq)``, True at real tokens) before
    each forward pass; ``None`` replaces every position. ``calls`` counts replaced passes."""

    replace: Replacement
    mask: Tensor | None = None
    calls: int = 0


@contextmanager
def splice(module: nn.Module, replace: SparseAutoencoder | Replacement) -> Iterator[SpliceHook]:
    """Within the block, ``module``'s output ``h`` (``(batch, seq, d)``, or element 0 of a
    tuple) has its real tokens (``hook.mask``) replaced by ``replace(h[mask])``; padding is
    left as it was. The hook is removed on leaving the block, also on an exception."""
    if not hasattr(module, "register_forward_hook"):
        raise TypeError(f"module must be a torch nn.Module, got {type(module).__name__}.")
    record = SpliceHook(as_replacement(replace))

    def swap(h: Tensor) -> Tensor:
        mask = record.mask
        if mask is None:
            flat = h.reshape(-1, h.shape[-1])
            return record.replace(flat).reshape(h.shape)
        if tuple(mask.shape) != tuple(h.shape[:-1]):
            raise ValueError(
                f"The token mask has shape {tuple(mask.shape)} but the hidden state "
                f"{tuple(h.shape)}."
            )
        out = h.clone()
        out[mask] = record.replace(h[mask])
        return out

    def hook(_module, _inputs, output):
        record.calls += 1
        if isinstance(output, Tensor):
            return swap(output)
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            return (swap(output[0]), *output[1:])
        raise TypeError(
            f"splice supports modules returning a tensor or a tuple whose first element is the "
            f"hidden state, got {type(output).__name__}."
        )

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


def zero_replacement(h: Tensor) -> Tensor:
    """Zero-ablation: every real token's state becomes 0."""
    return torch.zeros_like(h)


def mean_replacement(mean: Float[Tensor, " d"]) -> Replacement:
    """Mean-ablation: every real token's state becomes ``mean``."""
    mean = torch.as_tensor(mean)

    def replace(h: Tensor) -> Tensor:
        return mean.to(device=h.device, dtype=h.dtype).expand_as(h)

    return replace


# --- batches --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpliceBatch:
    """One batch: the texts it holds (indices into the text list) and the model's inputs."""

    rows: np.ndarray
    inputs: dict[str, Tensor]

    @property
    def mask(self) -> Tensor:
        return self.inputs["attention_mask"].bool()


def encoder_batches(
    tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int
) -> list[SpliceBatch]:
    """Texts tokenised as ``finetune.predict_logits`` does (special tokens, truncation at
    ``max_length``), sorted by length and padded per batch."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        padded = tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc}, return_tensors="pt")
        out.append(SpliceBatch(rows, dict(padded)))
    return out


def lm_batches(
    tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int
) -> list[SpliceBatch]:
    """Texts batched for a causal LM as ``lm.sweeps.causal_lm_batches`` batches them."""
    return [
        SpliceBatch(np.asarray(rows), {"input_ids": ids, "attention_mask": mask})
        for rows, ids, mask in causal_lm_batches(
            tokenizer, texts, max_length=max_length, batch_size=batch_size
        )
    ]


# --- measuring ------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Running sums of one variant's measures."""

    n_texts: int = 0
    correct: float = 0.0
    kl_sum: float = 0.0
    kl_count: int = 0
    ce_sum: float = 0.0
    ce_count: int = 0
    logits: list[np.ndarray] = field(default_factory=list)


def _kl_rows(clean_logp: Tensor, logp: Tensor) -> Tensor:
    """``KL(p_clean || p)`` along the last axis, float64."""
    clean_logp, logp = clean_logp.double(), logp.double()
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


def _run(model, batch: SpliceBatch) -> Tensor:
    return model(**batch.inputs).logits.float()


def _device_inputs(batch: SpliceBatch, device) -> SpliceBatch:
    return SpliceBatch(batch.rows, {k: v.to(device) for k, v in batch.inputs.items()})


def layer_means(
    model, batches: Sequence[SpliceBatch], layers: Sequence[int]
) -> dict[int, Float[Tensor, " d"]]:
    """Mean hidden state of each of ``layers`` over the real tokens of ``batches`` (one clean
    forward pass per batch; float64)."""
    sums: dict[int, Tensor] = {}
    counts = dict.fromkeys(layers, 0)
    handles: list = []
    current: dict[str, Tensor] = {}
    for layer in layers:
        _, module = hidden_state_module(model, layer)

        def capture(_m, _i, output, layer=layer):
            h = output[0] if isinstance(output, tuple) else output
            mask = current["mask"]
            real = h[mask].double()
            sums[layer] = real.sum(0) + sums[layer] if layer in sums else real.sum(0)
            counts[layer] += real.shape[0]

        handles.append(module.register_forward_hook(capture))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = _device_inputs(batch, device)
                current["mask"] = batch.mask
                model(**batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: (sums[layer] / counts[layer]).cpu() for layer in layers}


def splice_fidelity(
    model,
    batches: Sequence[SpliceBatch],
    splices: Mapping[int, Mapping[str, SparseAutoencoder | Replacement]],
    *,
    objective: Objective = "classifier",
    labels: Sequence[int] | np.ndarray | None = None,
    means: Mapping[int, Tensor | np.ndarray] | None = None,
    references: Sequence[str] = REFERENCES,
    progress: bool = False,
) -> pd.DataFrame:
    """What ``model`` keeps when each replacement of ``splices`` (``{hidden_states index:
    {label: SAE or function}}``) stands in for its layer, against the clean model and the
    zero- / mean-ablated layer (see the module docstring for the measures and their cost).

    ``objective="classifier"``: ``model(**inputs).logits`` is ``(batch, classes)``; ``labels``
    (one per text, indexed by the batches' ``rows``) give accuracies. ``"causal-lm"``: logits
    ``(batch, seq, vocab)``; CE over next real tokens and KL over real positions. ``means``:
    the mean-ablation state per layer (e.g. from cached activations of these texts); layers
    without one get it from one clean pass over the batches.

    Returns one row per ``(layer, variant)`` after a ``"clean"`` row: columns ``layer``
    (-1 for clean), ``variant`` (``clean``, ``zero``, ``mean`` or the splice's label),
    ``kind`` (``model``, ``reference``, ``splice``), the measures (classifier: ``accuracy``,
    ``kl``; causal LM: ``ce_loss``, ``kl``), the counts they average over, the reference values
    beside every splice row (``accuracy_zero``, ``kl_mean``, ...) and the fractions recovered
    (``kl_recovered_zero``, ``accuracy_recovered_mean``, ``ce_recovered_zero``, ...).
    ``attrs["forward_passes"]`` counts the forward passes run, per kind.
    """
    if objective not in ("classifier", "causal-lm"):
        raise ValueError(f"objective must be 'classifier' or 'causal-lm', got {objective!r}")
    references = list(references)
    unknown = [r for r in references if r not in REFERENCES]
    if unknown:
        raise ValueError(f"Unknown references {unknown}; use {REFERENCES}.")
    if not batches:
        raise ValueError("No batches to evaluate.")
    if objective == "classifier" and labels is None:
        raise ValueError("A classifier's splice fidelity needs the labels of the texts.")
    label_array = None if labels is None else np.asarray(labels)
    modules = {layer: hidden_state_module(model, layer)[1] for layer in splices}
    variants: list[tuple[int, str, str, Replacement]] = []
    missing = [layer for layer in splices if "mean" in references and layer not in (means or {})]
    computed = layer_means(model, batches, missing) if missing else {}
    for layer, named in splices.items():
        if "zero" in references:
            variants.append((layer, "zero", "reference", zero_replacement))
        if "mean" in references:
            mean = (means or {}).get(layer, computed.get(layer))
            variants.append((layer, "mean", "reference", mean_replacement(torch.as_tensor(mean))))
        for label, replacement in named.items():
            if label in REFERENCES or label == "clean":
                raise ValueError(f"{label!r} names a reference; give the splice another label.")
            variants.append((layer, label, "splice", as_replacement(replacement)))
    tallies = {(layer, label): _Tally() for layer, label, _, _ in variants}
    clean = _Tally()
    device = next(model.parameters()).device
    passes = {"clean": len(batches), "means": len(batches) if missing else 0, "reference": 0}
    passes["splice"] = 0
    # the clean pass records the modules up to the deepest spliced layer; a variant at layer L
    # replays those up to L and computes only what comes after (the same numbers, less work)
    upstream = {layer: upstream_modules(model, layer) for layer in splices}
    replay = Replay(max(upstream.values(), key=len))
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(batches, desc="splice", disable=not progress):
            batch = _device_inputs(batch, device)
            mask = batch.mask
            with replay.record():
                clean_logits = _run(model, batch)
            clean_logp = torch.log_softmax(clean_logits, -1)
            _score(clean, clean_logits, clean_logp, batch, mask, label_array, objective)
            for layer, label, kind, replacement in variants:
                with (
                    replay.replayed(upto=len(upstream[layer])),
                    splice(modules[layer], replacement) as hook,
                ):
                    hook.mask = mask
                    logits = _run(model, batch)
                if hook.calls != 1:
                    raise RuntimeError(
                        f"The spliced module of layer {layer} ran {hook.calls} times in one "
                        "forward pass; expected once."
                    )
                passes[kind] += 1
                _score(tallies[(layer, label)], logits, clean_logp, batch, mask, label_array,
                       objective)  # fmt: skip
    rows = [_row(-1, "clean", "model", clean, objective)]
    rows += [_row(layer, label, kind, tallies[(layer, label)], objective)
             for layer, label, kind, _ in variants]  # fmt: skip
    table = _with_recovered(pd.DataFrame(rows), objective)
    table.attrs["forward_passes"] = passes
    table.attrs["batches"] = len(batches)
    return table


def _score(
    tally: _Tally,
    logits: Tensor,
    clean_logp: Tensor,
    batch: SpliceBatch,
    mask: Tensor,
    labels: np.ndarray | None,
    objective: str,
) -> None:
    logp = torch.log_softmax(logits, -1)
    if objective == "classifier":
        kl = _kl_rows(clean_logp, logp)
        tally.kl_sum += float(kl.sum())
        tally.kl_count += int(kl.numel())
        tally.n_texts += len(batch.rows)
        if labels is not None:
            predicted = logits.argmax(-1).cpu().numpy()
            tally.correct += float((predicted == labels[batch.rows]).sum())
        return
    kl = _kl_rows(clean_logp, logp)[mask]
    tally.kl_sum += float(kl.sum())
    tally.kl_count += int(kl.numel())
    ids = batch.inputs["input_ids"]
    target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    tally.ce_sum += float(ce)
    tally.ce_count += int((target != -100).sum())
    tally.n_texts += len(batch.rows)


def _row(layer: int, variant: str, kind: str, tally: _Tally, objective: str) -> dict[str, Any]:
    row: dict[str, Any] = {"layer": layer, "variant": variant, "kind": kind}
    if objective == "classifier":
        row["accuracy"] = tally.correct / tally.n_texts if tally.n_texts else math.nan
    else:
        row["ce_loss"] = tally.ce_sum / tally.ce_count if tally.ce_count else math.nan
        row["predicted_tokens"] = tally.ce_count
    row["kl"] = tally.kl_sum / tally.kl_count if tally.kl_count else math.nan
    row["texts"] = tally.n_texts
    return row


def _fraction(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is (about) zero."""
    if not math.isfinite(denominator) or abs(denominator) < 1e-12:
        return math.nan
    return numerator / denominator


def fraction_recovered(value: float, clean: float, ablated: float) -> float:
    """``(value - ablated) / (clean - ablated)``: 1 at the clean model's value, 0 at the
    ablation's (SAELens's ``ce_loss_score``; with ``clean = 0`` for a KL divergence it is
    ``kl_div_score = (KL_ablated - KL) / KL_ablated``); NaN when the ablation changes nothing."""
    return _fraction(value - ablated, clean - ablated)


def _with_recovered(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    measures = ["accuracy", "kl"] if objective == "classifier" else ["ce_loss", "kl"]
    clean = table.loc[table["kind"] == "model"].iloc[0]
    clean_values = {m: (0.0 if m == "kl" else float(clean[m])) for m in measures}
    if objective == "classifier":
        table["accuracy_clean"] = float(clean["accuracy"])
    else:
        table["ce_loss_clean"] = float(clean["ce_loss"])
    for reference in REFERENCES:
        ref = table.loc[table["variant"] == reference].set_index("layer")
        for m in measures:
            if ref.empty:
                continue
            column = table["layer"].map(ref[m])
            table[f"{m}_{reference}"] = column.where(table["kind"] == "splice")
            name = {"ce_loss": "ce"}.get(m, m)
            table[f"{name}_recovered_{reference}"] = [
                fraction_recovered(float(v), clean_values[m], float(r))
                if kind == "splice"
                else math.nan
                for v, r, kind in zip(table[m], column, table["kind"], strict=True)
            ]
    return table


# --- a read-out for a model without a head ----------------------------------------------------


def mean_pool(hidden: Float[Tensor, "batch seq d"], mask: Tensor) -> Float[Tensor, "batch d"]:
    """Mean of each text's real-token states."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


class ProbeClassifier(nn.Module):
    """An encoder with a fixed linear read-out of its mean-pooled last hidden state:
    ``logits = mean_pool(last_hidden_state) @ weight.T + bias``. It exposes the encoder's
    ``config`` and ``base_model``, so :func:`hidden_state_module` and :func:`splice_fidelity`
    treat it as a classifier; the encoder's weights are untouched."""

    weight: Tensor
    bias: Tensor

    def __init__(self, encoder: nn.Module, weight: np.ndarray | Tensor, bias: np.ndarray | Tensor):
        super().__init__()
        self.encoder = encoder
        weight = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        bias = torch.as_tensor(np.asarray(bias), dtype=torch.float32)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"weight must be (classes, d) and bias (classes,), got {tuple(weight.shape)} "
                f"and {tuple(bias.shape)}"
            )
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    @property
    def config(self):
        return self.encoder.config

    @property
    def base_model(self):
        return getattr(self.encoder, "base_model", self.encoder)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **inputs: Tensor):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        return SimpleNamespace(logits=pooled @ self.weight.T + self.bias)


#: :func:`fit_linear_probe`: a feature whose sd over the training texts is at most this share of
#: the median feature's sd counts as constant.
CONSTANT_FEATURE = 1e-6


def _constant_features(scale: np.ndarray) -> np.ndarray:
    varying = scale[scale > 0]
    if not len(varying):
        return np.ones_like(scale, dtype=bool)
    return scale <= CONSTANT_FEATURE * float(np.median(varying))


def fit_linear_probe(
    features: Float[np.ndarray, "texts d"],
    labels: Sequence[int] | np.ndarray,
    *,
    C: float = 1.0,
    seed: int = 0,
    n_classes: int | None = None,
) -> tuple[Float[np.ndarray, "classes d"], Float[np.ndarray, " classes"]]:
    """A multinomial logistic regression of ``labels`` on standardised ``features`` (scikit-learn,
    L2 penalty ``C``, seeded), returned as ``(weight, bias)`` on the raw features (the
    standardisation folded in). Binary tasks get two rows (``-w/2, +w/2``) so the softmax of the
    logits is the fitted probability. ``n_classes``: how many rows; a class missing from the
    labels gets weight 0 and bias -1e9, so it is never predicted. A feature that does not vary
    over the training texts (sd at most :data:`CONSTANT_FEATURE` of the median sd; MiniLM's
    mean-pooled last layer has one) gets weight 0: standardising it would divide by rounding
    noise and give it a weight near 1e31, so that any change a splice makes there would swamp
    the logits."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} do not pair up")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("A probe needs at least two classes among the labels.")
    mean, sd = x.mean(0), x.std(0)
    constant = _constant_features(sd)
    scale = np.where(constant, 1.0, sd)
    z = (x - mean) / scale
    z[:, constant] = 0.0
    fit = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(z, y)
    coef, intercept = fit.coef_.copy(), fit.intercept_
    coef[:, constant] = 0.0
    if len(classes) == 2:
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = coef / scale
    bias = intercept - weight @ mean
    size = int(n_classes) if n_classes is not None else int(classes.max()) + 1
    full_w, full_b = np.zeros((size, x.shape[1])), np.full(size, -1e9)
    full_w[classes], full_b[classes] = weight, bias
    return full_w, full_b


# --- the two use cases ------------------------------------------------------------------------


def classifier_splice_fidelity(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    splices: Mapping[int, Mapping[str, SparseAutoencoder | Replacement]],
    *,
    max_length: int = 128,
    batch_size: int = 32,
    means: Mapping[int, Tensor | np.ndarray] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`splice_fidelity` of a sequence classifier (a fine-tuned checkpoint, or a
    :class:`ProbeClassifier`) on ``texts`` with ``labels``, tokenised as
    ``finetune.predict_logits`` does."""
    texts = list(texts)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    batches = encoder_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    return splice_fidelity(
        model, batches, splices, objective="classifier", labels=labels, means=means,
        progress=progress,
    )  # fmt: skip


def lm_splice_fidelity(
    model,
    tokenizer,
    texts: Sequence[str],
    splices: Mapping[int, Mapping[str, SparseAutoencoder | Replacement]],
    *,
    max_length: int = 128,
    batch_size: int = 32,
    means: Mapping[int, Tensor | np.ndarray] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`splice_fidelity` of a causal LM (e.g. :mod:`repgeo_utils.lm`'s) on ``texts``,
    batched as ``lm.last_token_features`` batches them: CE loss recovered and KL."""
    batches = lm_batches(tokenizer, list(texts), max_length=max_length, batch_size=batch_size)
    return splice_fidelity(
        model, batches, splices, objective="causal-lm", means=means, progress=progress
    )
