"""Saving and loading an SAE: ``sae.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``)
and ``config.json`` in one folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import SAEConfig, SparseAutoencoder

#: File names inside a saved SAE folder.
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "repgeo-sae/1"


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``) and
    ``config.json`` into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: getattr(sae, name).detach().cpu().contiguous()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "config": sae.config.to_dict(), "input_scale": sae.input_scale}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read an SAE written by :func:`save_sae`."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"No SAE in {folder} (needs {WEIGHTS_FILE} and {CONFIG_FILE}).")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE} is format {meta.get('format')!r}, not {FORMAT}")
    sae = SparseAutoencoder(SAEConfig.from_dict(meta["config"]))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        raise ValueError(f"Weights in {folder} do not fit the config: {got} vs {expected}")
    sae.load_state_dict(tensors)
    sae.input_scale = float(meta.get("input_scale", 1.0))
    sae.requires_grad_(False)
    sae.eval()
    return sae.to(device)
