"""Saving and loading an SAE, in our own format and in SAELens's.

Our format: one folder with ``repgeo_sae.safetensors`` (``W_enc`` d_in x d_sae, ``b_enc``,
``W_dec`` d_sae x d_in, ``b_dec``) and ``config.json`` (the :class:`SAEConfig` and the folded
input scale). The weights file was called ``sae.safetensors`` before; that is the name sparsify
gives its own, differently laid out, tensors, so a tool that goes by file names would misread
ours. :func:`load_sae` still reads folders written under the old name (cached SAEs).

SAELens's format (:func:`export_saelens`, checked against sae-lens 6.54.12): ``cfg.json``,
``sae_weights.safetensors`` with the same four tensors, and an optional
``sparsity.safetensors`` (key ``sparsity``: float32 ``log10(firing fraction + 1e-10)`` per
latent). ``SAE.load_from_disk(folder)`` of the ``sae_lens`` package then gives the same
latents and reconstructions as our :class:`SparseAutoencoder` (tested in
``tests/test_saelens.py`` against the installed package). How our settings map:

- architecture ``"relu"`` -> ``"standard"``; ``"topk"`` -> ``"topk"`` with ``k`` and
  ``rescale_acts_by_decoder_norm: false`` (both select the top k raw pre-activations, then
  apply a ReLU);
- ``subtract_decoder_bias`` -> ``apply_b_dec_to_input``;
- ``normalize_activations: "none"``: our input scale is already folded into the weights, so the
  SAE takes raw activations;
- free decoder norms (the ``paper-*`` presets) are folded into the encoder before export
  (column ``i`` of ``W_enc`` and ``b_enc[i]`` times ``||W_dec[i]||``, row ``i`` of ``W_dec``
  divided by it: ReLU commutes with a positive scale, so the reconstruction is unchanged and the
  rows become unit vectors, which SAEBench assumes). For TopK that would change which latents
  are the top k unless every row has the same norm, so such an SAE is exported unfolded and its
  metadata says so (``decoder_norms_folded: false``);
- the ``metadata`` block carries ``sae_lens_version: "6.0.0"`` (without it the loader treats
  the file as pre-6.0 and drops the metadata), the model, the hook (``hidden_states`` index and
  module path), context size, BOS and special-token handling, the data set, and our own keys.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import __version__
from .model import SAEConfig, SparseAutoencoder

log = logging.getLogger(__name__)

#: File names inside a saved SAE folder.
WEIGHTS_FILE = "repgeo_sae.safetensors"
#: Older names of :data:`WEIGHTS_FILE` that :func:`load_sae` still reads.
LEGACY_WEIGHTS_FILES = ("sae.safetensors",)
CONFIG_FILE = "config.json"
FORMAT = "repgeo-sae/1"

#: SAELens's file names.
SAELENS_CONFIG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_SPARSITY_FILE = "sparsity.safetensors"
#: The SAELens config version our ``cfg.json`` declares (its metadata's ``sae_lens_version``):
#: the 6.x layout, which keeps the metadata block as written.
SAELENS_FORMAT_VERSION = "6.0.0"
#: Added to the firing fraction before the log10 of ``sparsity.safetensors`` (SAELens's value).
SPARSITY_EPSILON = 1e-10

SaveFormat = Literal["repgeo", "saelens"]
_PARAMETERS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _tensors(sae: SparseAutoencoder) -> dict[str, Tensor]:
    return {
        name: getattr(sae, name).detach().to("cpu", torch.float32).contiguous()
        for name in _PARAMETERS
    }


def save_sae(
    sae: SparseAutoencoder,
    folder: str | Path,
    *,
    format: SaveFormat = "repgeo",
    **saelens_options: Any,
) -> Path:
    """Write ``sae`` into ``folder`` and return the folder.

    ``format="repgeo"``: ``repgeo_sae.safetensors`` and ``config.json`` (read back exactly by
    :func:`load_sae`). ``format="saelens"``: the SAELens layout, through :func:`export_saelens`,
    which takes ``saelens_options`` (model name, hook, ...)."""
    if format == "saelens":
        return export_saelens(sae, folder, **saelens_options)
    if format != "repgeo":
        raise ValueError(f"format must be 'repgeo' or 'saelens', got {format!r}")
    if saelens_options:
        raise TypeError(f"Options {sorted(saelens_options)} only apply to format='saelens'.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(sae), str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "config": sae.config.to_dict(), "input_scale": sae.input_scale}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def _weights_file(folder: Path) -> Path | None:
    for name in (WEIGHTS_FILE, *LEGACY_WEIGHTS_FILES):
        if (folder / name).is_file():
            return folder / name
    return None


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read an SAE written by :func:`save_sae` (also under the old weights name
    ``sae.safetensors``), or a SAELens folder (``cfg.json``; see :func:`load_saelens`)."""
    folder = Path(folder)
    weights = _weights_file(folder)
    if weights is None and (folder / SAELENS_CONFIG_FILE).is_file():
        return load_saelens(folder, device)
    if weights is None or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"No SAE in {folder} (needs {WEIGHTS_FILE} and {CONFIG_FILE}, or SAELens's "
            f"{SAELENS_CONFIG_FILE} and {SAELENS_WEIGHTS_FILE})."
        )
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE} is format {meta.get('format')!r}, not {FORMAT}")
    sae = SparseAutoencoder(SAEConfig.from_dict(meta["config"]))
    _load_tensors(sae, load_file(str(weights)), folder)
    sae.input_scale = float(meta.get("input_scale", 1.0))
    sae.requires_grad_(False)
    sae.eval()
    return sae.to(device)


def _load_tensors(sae: SparseAutoencoder, tensors: dict[str, Tensor], folder: Path) -> None:
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        raise ValueError(f"Weights in {folder} do not fit the config: {got} vs {expected}")
    sae.load_state_dict({k: v.float() for k, v in tensors.items()})


# --- SAELens ---------------------------------------------------------------------------------


def saelens_hook_name(hidden_state: int, module_path: str) -> str:
    """The ``hook_name`` we record: the ``hidden_states`` index and the module whose output it
    is, e.g. ``"hidden_states.3 = encoder.layer.2 output"`` (index 0 is the embeddings)."""
    return f"hidden_states.{int(hidden_state)} = {module_path} output"


def fold_decoder_norms(sae: SparseAutoencoder) -> SparseAutoencoder:
    """A copy of ``sae`` with unit-norm decoder rows and the same reconstructions: latent ``i``
    is multiplied by ``||W_dec[i]||`` (encoder column and bias) and its decoder row divided by
    it (rows of norm 0 are left alone). Exact for ReLU, whose output scales with a positive
    factor; for TopK only when every row has the same norm (otherwise the top k could change),
    which :func:`export_saelens` checks."""
    out = SparseAutoencoder(sae.config)
    out.load_state_dict(sae.state_dict())
    out.input_scale = sae.input_scale
    with torch.no_grad():
        norms = out.W_dec.norm(dim=1)
        scale = torch.where(norms > 0, norms, torch.ones_like(norms))
        out.W_enc.mul_(scale)
        out.b_enc.mul_(scale)
        out.W_dec.div_(scale[:, None])
    out.requires_grad_(False)
    out.eval()
    return out


def _norms_are_equal(sae: SparseAutoencoder, rtol: float = 1e-6) -> bool:
    norms = sae.W_dec.detach().double().norm(dim=1)
    return bool((norms - norms.mean()).abs().max() <= rtol * norms.mean())


def log10_sparsity(firing_frequency: Float[Tensor, " d_sae"]) -> Float[Tensor, " d_sae"]:
    """SAELens's ``sparsity`` tensor: float32 ``log10(firing fraction + 1e-10)`` per latent."""
    frequency = torch.as_tensor(firing_frequency, dtype=torch.float64)
    if frequency.ndim != 1 or bool(((frequency < 0) | (frequency > 1)).any()):
        raise ValueError("firing_frequency must be one share in [0, 1] per latent.")
    return torch.log10(frequency + SPARSITY_EPSILON).float()


def export_saelens(
    sae: SparseAutoencoder,
    folder: str | Path,
    *,
    model_name: str,
    hidden_state: int,
    module_path: str,
    context_size: int,
    prepend_bos: bool,
    dataset_path: str,
    exclude_special_tokens: bool,
    firing_frequency: Float[Tensor, " d_sae"] | None = None,
    fold_norms: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json``, ``sae_weights.safetensors`` and, with
    ``firing_frequency``, ``sparsity.safetensors``) that ``sae_lens.SAE.load_from_disk`` loads
    with the same encode / decode outputs. Returns the folder.

    ``model_name``, ``context_size`` (the ``max_length`` the activations were extracted with),
    ``prepend_bos`` (whether a [CLS]/BOS token starts every text), ``dataset_path`` (where the
    texts come from) and ``exclude_special_tokens`` (whether the SAE was trained without
    [CLS]/[SEP]) go into the metadata as SAELens names them; ``hidden_state`` (the
    ``hidden_states`` index) and ``module_path`` (the module whose output it is) make the
    ``hook_name`` (:func:`saelens_hook_name`) and are also kept as they are; ``metadata`` adds
    keys of our own (task, model role, ...). ``fold_norms``: ``None`` folds the decoder norms
    when that is exact (every ReLU SAE; a TopK SAE whose rows have one norm) and otherwise
    exports unfolded with a warning; ``True`` raises instead; ``False`` never folds. What was
    done is recorded as ``decoder_norms_folded``.
    """
    folder = Path(folder)
    config = sae.config
    exact = config.architecture == "relu" or _norms_are_equal(sae)
    if fold_norms is None:
        fold = exact
        if not exact:
            log.warning(
                "TopK SAE with decoder rows of different norms: folding them would change which "
                "latents are the top k, so it is exported unfolded (decoder_norms_folded: false)."
            )
    elif fold_norms and not exact:
        raise ValueError(
            "Cannot fold the decoder norms of this TopK SAE: its rows have different norms, so "
            "scaling the latents would change which k are largest. Export it with "
            "fold_norms=None or False (unfolded, recorded in the metadata)."
        )
    else:
        fold = bool(fold_norms)
    out = fold_decoder_norms(sae) if fold else sae
    cfg: dict[str, Any] = {
        "architecture": "standard" if config.architecture == "relu" else "topk",
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(config.subtract_decoder_bias),
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if config.architecture == "topk":
        cfg["k"] = config.active_k
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": model_name,
        "hook_name": saelens_hook_name(hidden_state, module_path),
        "hook_head_index": None,
        "context_size": int(context_size),
        "prepend_bos": bool(prepend_bos),
        "dataset_path": dataset_path,
        "exclude_special_tokens": bool(exclude_special_tokens),
        "hidden_states_index": int(hidden_state),
        "module_path": module_path,
        "decoder_norms_folded": fold,
        "repgeo_version": __version__,
        "repgeo_config": config.to_dict(),
        "repgeo_input_scale": sae.input_scale,
        **(metadata or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAELENS_CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    save_file(_tensors(out), str(folder / SAELENS_WEIGHTS_FILE))
    if firing_frequency is not None:
        sparsity = log10_sparsity(firing_frequency)
        if sparsity.shape != (config.d_sae,):
            raise ValueError(
                f"firing_frequency has {sparsity.shape[0]} entries for {config.d_sae} latents."
            )
        save_file({"sparsity": sparsity.contiguous()}, str(folder / SAELENS_SPARSITY_FILE))
    return folder


def load_saelens(folder: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read a SAELens folder of the kinds :func:`export_saelens` writes (``standard`` or
    ``topk``, no activation normalisation) as our :class:`SparseAutoencoder`, without the
    ``sae_lens`` package. The config comes from our metadata when the folder has it (with the
    exported, unit-norm decoder unless ``decoder_norms_folded`` is false), else it is rebuilt
    from ``cfg.json``."""
    folder = Path(folder)
    if (
        not (folder / SAELENS_CONFIG_FILE).is_file()
        or not (folder / SAELENS_WEIGHTS_FILE).is_file()
    ):
        raise FileNotFoundError(
            f"No SAELens SAE in {folder} (needs {SAELENS_CONFIG_FILE} and {SAELENS_WEIGHTS_FILE})."
        )
    cfg = json.loads((folder / SAELENS_CONFIG_FILE).read_text())
    architecture = {"standard": "relu", "topk": "topk"}.get(cfg.get("architecture", "standard"))
    problems = []
    if architecture is None:
        problems.append(f"architecture {cfg.get('architecture')!r} (we read standard and topk)")
    if cfg.get("normalize_activations", "none") != "none":
        problems.append(f"normalize_activations {cfg['normalize_activations']!r}")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        problems.append("rescale_acts_by_decoder_norm")
    if problems:
        raise ValueError(f"Cannot read the SAELens SAE in {folder}: {'; '.join(problems)}.")
    metadata = cfg.get("metadata") or {}
    ours = metadata.get("repgeo_config")
    if ours is not None:
        config = SAEConfig.from_dict(ours)
        if metadata.get("decoder_norms_folded", False):  # the exported rows are unit vectors
            config = replace(config, normalize_decoder=True)
    else:
        config = SAEConfig(
            d_in=int(cfg["d_in"]),
            d_sae=int(cfg["d_sae"]),
            architecture="relu" if architecture == "relu" else "topk",
            k=int(cfg.get("k", 100)) if architecture == "topk" else None,
            subtract_decoder_bias=bool(cfg.get("apply_b_dec_to_input", True)),
            normalize_decoder=False,
            scale_inputs=False,
        )
    sae = SparseAutoencoder(config)
    _load_tensors(sae, load_file(str(folder / SAELENS_WEIGHTS_FILE)), folder)
    scale = metadata.get("repgeo_input_scale", 1.0)
    sae.input_scale = (
        float(scale) if isinstance(scale, int | float) and math.isfinite(scale) else 1.0
    )
    sae.requires_grad_(False)
    sae.eval()
    return sae.to(device)


def read_saelens_sparsity(folder: str | Path) -> Float[Tensor, " d_sae"] | None:
    """The ``sparsity`` tensor of a SAELens folder (log10 firing fraction), or None."""
    path = Path(folder) / SAELENS_SPARSITY_FILE
    return load_file(str(path))["sparsity"] if path.is_file() else None
