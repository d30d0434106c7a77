"""SAELens's on-disk format: what :func:`export_saelens` writes (checked by hand, no sae_lens
needed) and a round trip through the real ``sae_lens`` package where it is installed.

The round trip needs the ``interop`` extra (``make setup-interop``; about 1 GB). Without it
those tests skip; with it, run them as ``.venv/bin/python -m pytest tests/test_saelens.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from repgeo_utils.sae import (
    LEGACY_WEIGHTS_FILES,
    WEIGHTS_FILE,
    SAEConfig,
    SparseAutoencoder,
    export_saelens,
    fold_decoder_norms,
    load_sae,
    load_saelens,
    read_saelens_sparsity,
    save_sae,
)

D_IN, D_SAE, K = 12, 40, 5

METADATA = dict(
    model_name="minilm-l6",
    hidden_state=3,
    module_path="encoder.layer.2",
    context_size=64,
    prepend_bos=True,
    dataset_path="repgeo:bbc-news/validation+test",
    exclude_special_tokens=False,
)


def random_sae(architecture: str, subtract: bool, *, free_norms: bool, seed: int = 0):
    """An SAE with random weights; ``free_norms`` gives its decoder rows norms from 0.2 to 3."""
    config = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=architecture,
        k=K if architecture == "topk" else None,
        subtract_decoder_bias=subtract,
        normalize_decoder=not free_norms,
    )
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(config)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=g))
        sae.b_enc.copy_(0.5 * torch.randn(D_SAE, generator=g))
        w = torch.randn(D_SAE, D_IN, generator=g)
        w /= w.norm(dim=1, keepdim=True)
        if free_norms:
            w *= 0.2 + 2.8 * torch.rand(D_SAE, 1, generator=g)
        sae.W_dec.copy_(w)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
    sae.requires_grad_(False)
    return sae


def inputs(seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(64, D_IN, generator=torch.Generator().manual_seed(seed))


# --- without sae_lens: the files by hand ---------------------------------------------------


def test_export_writes_the_saelens_layout(tmp_path):
    sae = random_sae("topk", True, free_norms=False)
    frequency = torch.tensor([0.0, 0.5, 1.0, 1e-3] + [0.25] * (D_SAE - 4), dtype=torch.float64)
    folder = export_saelens(
        sae, tmp_path / "sl", **METADATA, firing_frequency=frequency, metadata={"task": "bbc"}
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == K
    assert cfg["rescale_acts_by_decoder_norm"] is False
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (
        D_IN,
        D_SAE,
        "float32",
        "cpu",
    )
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["sae_lens_version"] == "6.0.0"  # else the loader drops the metadata
    assert meta["hook_name"] == "hidden_states.3 = encoder.layer.2 output"
    assert (meta["model_name"], meta["context_size"], meta["prepend_bos"]) == (
        "minilm-l6",
        64,
        True,
    )
    assert meta["dataset_path"] == "repgeo:bbc-news/validation+test"
    assert meta["exclude_special_tokens"] is False and meta["task"] == "bbc"
    assert meta["hidden_states_index"] == 3 and meta["module_path"] == "encoder.layer.2"
    assert meta["decoder_norms_folded"] is True  # unit rows: folding changes nothing
    with safe_open(str(folder / "sae_weights.safetensors"), "pt") as f:
        shapes = {name: tuple(f.get_tensor(name).shape) for name in f.keys()}  # noqa: SIM118
    assert shapes == {
        "W_enc": (D_IN, D_SAE),
        "b_enc": (D_SAE,),
        "W_dec": (D_SAE, D_IN),
        "b_dec": (D_IN,),
    }
    sparsity = load_file(str(folder / "sparsity.safetensors"))
    assert list(sparsity) == ["sparsity"] and sparsity["sparsity"].dtype == torch.float32
    # log10(frequency + 1e-10) by hand: -10, log10(0.5), 0, -3
    expected = torch.tensor([-10.0, -0.30103, 0.0, -3.0])
    torch.testing.assert_close(sparsity["sparsity"][:4], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(read_saelens_sparsity(folder), sparsity["sparsity"])


@pytest.mark.parametrize("architecture", ["relu", "topk"])
@pytest.mark.parametrize("subtract", [True, False], ids=["b_dec-in", "no-b_dec-in"])
def test_our_reader_gives_back_the_same_sae(tmp_path, architecture, subtract):
    sae = random_sae(architecture, subtract, free_norms=architecture == "relu")
    folder = save_sae(sae, tmp_path / "sl", format="saelens", **METADATA)
    loaded = load_sae(folder)  # load_sae recognises a SAELens folder
    assert loaded.config.architecture == architecture
    assert loaded.config.subtract_decoder_bias is subtract
    x = inputs()
    h, h_ref = loaded.encode(x), sae.encode(x)
    torch.testing.assert_close(loaded.decode(h), sae.decode(h_ref), atol=1e-5, rtol=1e-5)
    assert torch.equal(h != 0, h_ref != 0)  # the same latents fire


def test_free_decoder_norms_are_folded_for_relu(tmp_path):
    sae = random_sae("relu", False, free_norms=True)  # the paper presets' free norms
    norms = sae.W_dec.norm(dim=1)
    folded = fold_decoder_norms(sae)
    torch.testing.assert_close(folded.W_dec.norm(dim=1), torch.ones(D_SAE))
    x = inputs()
    torch.testing.assert_close(folded(x)[0], sae(x)[0], atol=1e-5, rtol=1e-5)
    # each latent is scaled by its decoder norm
    torch.testing.assert_close(folded.encode(x), sae.encode(x) * norms, atol=1e-5, rtol=1e-5)
    folder = export_saelens(sae, tmp_path / "sl", **METADATA)
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["decoder_norms_folded"]
    exported = load_saelens(folder)
    torch.testing.assert_close(exported.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert exported.config.normalize_decoder  # the exported rows are unit vectors


def test_topk_with_unequal_norms_is_exported_unfolded(tmp_path, caplog):
    sae = random_sae("topk", True, free_norms=True)
    folded = fold_decoder_norms(sae)
    x = inputs()
    # folding would change which latents are the top k: that is why it is refused
    assert not torch.equal(folded.encode(x) != 0, sae.encode(x) != 0)
    with pytest.raises(ValueError, match="Cannot fold the decoder norms of this TopK SAE"):
        export_saelens(sae, tmp_path / "a", **METADATA, fold_norms=True)
    folder = export_saelens(sae, tmp_path / "b", **METADATA)
    assert "exported unfolded" in caplog.text
    assert (
        json.loads((folder / "cfg.json").read_text())["metadata"]["decoder_norms_folded"] is False
    )
    loaded = load_saelens(folder)
    torch.testing.assert_close(loaded(x)[0], sae(x)[0])


def test_our_own_weights_file_is_renamed_and_the_old_name_still_reads(tmp_path):
    sae = random_sae("relu", True, free_norms=False)
    folder = save_sae(sae, tmp_path / "ours")
    assert WEIGHTS_FILE == "repgeo_sae.safetensors" and (folder / WEIGHTS_FILE).is_file()
    assert not (folder / "sae.safetensors").exists()  # sparsify's name, for other tensors
    (folder / WEIGHTS_FILE).rename(folder / LEGACY_WEIGHTS_FILES[0])  # a cached, older SAE
    old = load_sae(folder)
    assert torch.equal(old.W_dec, sae.W_dec)
    with pytest.raises(TypeError, match="only apply to format='saelens'"):
        save_sae(sae, tmp_path / "x", model_name="m")
    with pytest.raises(ValueError, match="format must be"):
        save_sae(sae, tmp_path / "x", format="sparsify")


def test_saelens_folders_we_cannot_read_fail_clearly(tmp_path):
    folder = export_saelens(random_sae("relu", True, free_norms=False), tmp_path / "j", **METADATA)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "jumprelu"}))
    with pytest.raises(ValueError, match="architecture 'jumprelu'"):
        load_saelens(folder)
    with pytest.raises(FileNotFoundError, match="No SAELens SAE"):
        load_saelens(tmp_path)


# --- with sae_lens: the real loader --------------------------------------------------------


@pytest.mark.parametrize("architecture", ["relu", "topk"])
@pytest.mark.parametrize("subtract", [True, False], ids=["b_dec-in", "no-b_dec-in"])
def test_sae_lens_loads_it_with_identical_outputs(tmp_path, architecture, subtract):
    sae_lens = pytest.importorskip(
        "sae_lens", reason="needs the interop extra (make setup-interop)"
    )
    sae = random_sae(architecture, subtract, free_norms=architecture == "relu")
    frequency = torch.rand(D_SAE, dtype=torch.float64)
    folder = export_saelens(sae, tmp_path / "sl", **METADATA, firing_frequency=frequency)
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    expected_class = sae_lens.StandardSAE if architecture == "relu" else sae_lens.TopKSAE
    assert type(theirs) is expected_class
    assert theirs.cfg.apply_b_dec_to_input is subtract
    assert theirs.cfg.metadata.hook_name == "hidden_states.3 = encoder.layer.2 output"
    assert theirs.cfg.metadata.model_name == "minilm-l6"
    assert theirs.cfg.metadata.context_size == 64
    assert theirs.cfg.metadata.module_path == "encoder.layer.2"  # our own keys survive
    if architecture == "topk":
        assert theirs.cfg.k == K
    ours = load_sae(folder)  # the exported (folded) SAE, as we read it
    x = inputs()
    x3 = x.reshape(4, 16, D_IN)  # (batch, sequence, d_in), as SAELens is used on a model
    with torch.no_grad():
        for batch in (x, x3):
            h = theirs.encode(batch)
            torch.testing.assert_close(h, ours.encode(batch), atol=1e-6, rtol=0)
            torch.testing.assert_close(theirs.decode(h), ours.decode(h), atol=1e-6, rtol=0)
            # and the original SAE, before folding, reconstructs the same
            torch.testing.assert_close(theirs(batch), sae(batch)[0], atol=1e-5, rtol=1e-6)
