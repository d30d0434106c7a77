"""Pretraining: tiny real runs that write Pythia-style revisions, exact resume, clear errors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from repgeo_utils import lm
from repgeo_utils.lm.sweeps import _resolve_layers
from repgeo_utils.models import ModelNotFoundError, load_model

#: A few-second run: 1 layer, hidden 16, 300-token vocabulary, 6 steps, 60 documents a source.
TINY = lm.PretrainConfig(
    seed=3,
    vocab_size=300,
    num_layers=1,
    hidden_size=16,
    num_heads=2,
    context_length=16,
    steps=6,
    batch_size=4,
    learning_rate=1e-2,
    warmup_fraction=0.2,
    checkpoint_every=4,
    max_documents=60,
)


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REPGEO_DATA_DIR", str(tmp_path))
    return tmp_path


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_checkpoint_schedule_is_pythias():
    revisions = lm.pythia_revisions()
    assert len(revisions) == 154  # step0, 10 powers of two, 143 thousands
    assert revisions[:12] == [
        "step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64",
        "step128", "step256", "step512", "step1000",
    ]  # fmt: skip
    assert revisions[-1] == "step143000"
    assert lm.checkpoint_schedule(6, 4) == [0, 1, 2, 4, 6]
    assert lm.checkpoint_schedule(600, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 250, 256, 500, 512,
                                               600]  # fmt: skip


def test_learning_rate_warmup_then_cosine():
    cfg = lm.PretrainConfig(
        steps=100, warmup_fraction=0.1, learning_rate=1e-3, min_lr_ratio=0.1, cosine_decay=True
    )
    assert cfg.warmup_steps == 10
    assert cfg.lr_at(0) == pytest.approx(1e-4)
    assert cfg.lr_at(9) == pytest.approx(1e-3)
    assert cfg.lr_at(10) == pytest.approx(1e-3)
    assert cfg.lr_at(55) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down the cosine
    assert cfg.lr_at(100) == pytest.approx(1e-4)
    lrs = [cfg.lr_at(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    flat = lm.PretrainConfig(steps=100, warmup_fraction=0.1, cosine_decay=False)
    assert flat.lr_at(99) == flat.learning_rate


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"steps": 0}, "steps must be an int >= 1, got 0"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0, got 0"),
        ({"use_bbc": False, "use_tweets": False}, "at least one source"),
        ({"holdout_fraction": 0.0}, "holdout_fraction"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_bad_configs_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        lm.PretrainConfig(**overrides)


def test_bad_stop_step_and_layers_fail_clearly(data_dir):
    with pytest.raises(ValueError, match="stop_at_step"):
        lm.pretrain(TINY, stop_at_step=TINY.steps + 1, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        _resolve_layers([5], num_layers=2)


def test_corpus_holds_out_a_fixed_seeded_set():
    a = lm.build_corpus(holdout_fraction=0.1, seed=1, max_documents=50)
    b = lm.build_corpus(holdout_fraction=0.1, seed=1, max_documents=50)
    c = lm.build_corpus(holdout_fraction=0.1, seed=2, max_documents=50)
    assert a.holdout_texts == b.holdout_texts
    assert a.holdout_texts != c.holdout_texts
    assert not set(a.holdout_texts) & set(a.train_texts)
    assert sorted(set(a.holdout_sources)) == ["bbc", "tweets"]
    assert len(a.holdout_texts) == 10  # 5 of 50 from each source
    assert len(a.train_texts) == 90


def test_probe_texts_are_seeded_word_prefixes():
    docs = [" ".join(f"w{i}" for i in range(200)), "a short tweet here"]
    probes = lm.probe_texts(docs, n=50, min_words=10, max_words=20, seed=0)
    assert probes == lm.probe_texts(docs, n=50, min_words=10, max_words=20, seed=0)
    for text in probes:
        words = text.split()
        assert text == "a short tweet here" or 10 <= len(words) <= 20
        assert docs[0].startswith(text) or text == docs[1]


def test_token_batches_are_a_pure_function_of_step():
    ids = np.arange(1000, dtype=np.uint16)
    a = lm.TokenBatches(ids, context_length=10, batch_size=7, seed=0)
    b = lm.TokenBatches(ids, context_length=10, batch_size=7, seed=0)
    assert torch.equal(a.batch(30), b.batch(30))  # b never saw steps 0..29
    assert torch.equal(a.batch(3), b.batch(3))
    first_epoch = torch.cat([a.batch(s) for s in range(a.windows_per_epoch // 7)])
    starts = first_epoch[:, 0].tolist()
    assert len(set(starts)) == len(starts)  # no window twice within an epoch
    assert all(torch.equal(r, torch.arange(r[0], r[0] + 10)) for r in first_epoch)


def test_tiny_run_writes_revisions_that_load_like_hub_revisions(data_dir):
    result = lm.pretrain(TINY, progress=False)
    folder = result.run_folder
    assert folder.is_relative_to(data_dir / "cache" / "pretrain")
    assert result.complete and lm.is_run_complete(folder, TINY)
    assert lm.list_revisions(folder) == ["step0", "step1", "step2", "step4", "step6"]
    assert [row["step"] for row in result.train_log] == list(range(1, 7))

    init, tokenizer = load_model(folder, revision="step0", kind="causal-lm")
    final, _ = load_model(folder, revision="step6", kind="causal-lm")
    main, _ = load_model(folder, kind="causal-lm")  # the run folder itself is the last step
    assert type(final).__name__ == "GPTNeoXForCausalLM"
    assert final.config.hidden_size == 16 and final.config.num_hidden_layers == 1
    assert not torch.equal(
        init.get_output_embeddings().weight, final.get_output_embeddings().weight
    )
    _assert_same_weights(final, main)
    fresh = lm.build_model(TINY, vocab_size=len(tokenizer))
    _assert_same_weights(init, fresh)  # step0 is the seeded initialisation
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id == 1
    assert len(tokenizer) == TINY.vocab_size

    with pytest.raises(ModelNotFoundError, match="no revision 'step3'"):
        load_model(folder, revision="step3", kind="causal-lm")
    again = lm.pretrain(TINY, progress=False)  # complete: reused, nothing trained
    assert again.complete and again.tokens_per_second is None


def test_interrupted_run_resumes_to_identical_weights(data_dir, tmp_path):
    whole = lm.pretrain(TINY, root=tmp_path / "whole", progress=False)

    part = lm.pretrain(TINY, root=tmp_path / "split", stop_at_step=3, progress=False)
    assert not part.complete
    assert not lm.is_run_complete(part.run_folder, TINY)
    assert not lm.is_run_complete(part.run_folder)
    assert not (part.run_folder / "meta.json").exists()
    assert lm.list_revisions(part.run_folder) == ["step0", "step1", "step2"]
    with pytest.raises(ModelNotFoundError):  # no main weights until the run is complete
        load_model(part.run_folder, kind="causal-lm")

    resumed = lm.pretrain(TINY, root=tmp_path / "split", progress=False)
    assert resumed.complete and resumed.run_folder == part.run_folder
    assert resumed.revisions == whole.revisions
    assert [r["loss"] for r in resumed.train_log] == [r["loss"] for r in whole.train_log]
    for rev in whole.revisions:
        a, _ = load_model(whole.run_folder, revision=rev, kind="causal-lm")
        b, _ = load_model(resumed.run_folder, revision=rev, kind="causal-lm")
        _assert_same_weights(a, b)


def test_sweep_gives_last_token_states_and_loss(data_dir):
    result = lm.pretrain(TINY, progress=False)
    # 40 distinct five-word windows of the held-out documents: they fit the 16-token context,
    # which the sweep cuts at (longer word prefixes of the same documents would be cut to a
    # dozen distinct texts, too few for a rank-16 spectrum)
    windows = [
        " ".join(t.split()[i : i + 5]) for t in result.holdout_texts for i in range(0, 60, 5)
    ]
    texts = list(dict.fromkeys(w for w in windows if len(w.split()) == 5))[:40]
    assert len(texts) == 40
    sweep = lm.sweep_checkpoints(
        result.run_folder, ["step0", "step6"], texts, layers="all", progress=False
    )  # fmt: skip
    assert sweep.layers == [0, 1]
    table = sweep.metrics
    assert list(table["step"]) == [0, 0, 6, 6] and list(table["layer"]) == [0, 1, 0, 1]
    assert ((table["rankme_covariance"] >= 1) & (table["rankme_covariance"] <= 16)).all()
    assert (table["rankme_singular"] >= table["rankme_covariance"]).all()
    # hidden 16: alpha is fitted over ranks 12..16, not 12..100; the final layer is a
    # LayerNorm output, whose features sum to zero before the gain, so it has rank 15
    assert list(table["alpha_fit_hi"]) == [16, 15, 16, 15]
    assert [r.step for r in sweep.revisions] == [0, 6]
    init = sweep.revisions[0]
    # a freshly initialised LM (logits near 0) predicts close to uniformly: loss ~ ln(vocab)
    assert init.loss == pytest.approx(math.log(TINY.vocab_size), abs=0.05)
    assert init.features[1].shape == (len(texts), 16)

    # the batched, padded extraction equals one unpadded forward pass per text
    model, tokenizer = load_model(result.run_folder, revision="step6", kind="causal-lm")
    final = sweep.revisions[1].features[1]
    with torch.inference_mode():
        for i in (0, 7, len(texts) - 1):
            ids = tokenizer(texts[i], add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = ids[:, : TINY.context_length]  # the sweep cuts texts at the context
            ref = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
            np.testing.assert_allclose(final[i], ref.numpy(), rtol=1e-4, atol=1e-5)

    cached = lm.sweep_checkpoints(
        result.run_folder, ["step6"], texts, layers="all", spectral_metrics=False, progress=False
    )  # fmt: skip
    np.testing.assert_array_equal(cached.revisions[0].features[1], final)
    meta = json.loads((result.run_folder / "meta.json").read_text())
    assert meta["complete"] is True and meta["revisions"] == lm.list_revisions(result.run_folder)


def test_recommended_settings_and_trajectory_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from repgeo_utils import plotting, spectral

    assert lm.PRETRAIN_SETTINGS["quick"] == lm.PretrainConfig()
    assert lm.PRETRAIN_SETTINGS["longer"].hidden_size > lm.PRETRAIN_SETTINGS["quick"].hidden_size
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000]
    rankme = [20, 20, 19, 18, 12, 6, 5, 8, 12, 16, 19, 20, 18, 16]
    table = pd.DataFrame(
        [{"step": s, "layer": layer, "rankme_covariance": r + layer, "alpha": 2.0, "loss": 7 - s / 1000}
         for s, r in zip(steps, rankme, strict=True) for layer in (0, 2)]
    )  # fmt: skip
    phases = spectral.segment_phases(steps, rankme)
    assert [p.name for p in phases.phases] == ["warmup", "entropy-seeking", "compression-seeking"]
    fig = plotting.plot_checkpoint_trajectory(table, phases=phases)
    assert len(fig.axes) == 3 and "hidden_states[2]" in fig._suptitle.get_text()
    fig.savefig(tmp_path / "trajectory.png")
    fig = plotting.plot_layer_trajectories(table)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["embeddings", "layer 2"]
    with pytest.raises(ValueError, match="lacks columns"):
        plotting.plot_checkpoint_trajectory(table, metrics=("rankme_singular",))


def test_old_import_path_still_works_and_warns():
    from conftest import import_afresh_warns

    old = import_afresh_warns("repgeo_utils.pretrain", r"repgeo_utils\.lm")
    assert old.pretrain is lm.pretrain and old.PRETRAIN_SETTINGS is lm.PRETRAIN_SETTINGS
    from repgeo_utils.pretrain import sweep_checkpoints

    assert sweep_checkpoints is lm.sweep_checkpoints
    with pytest.raises(AttributeError, match="moved to repgeo_utils.lm"):
        old.no_such_name  # noqa: B018


#: One process trains a 1-layer model whose logits are 2 MiB (8 x 64 x 1,024) for 30 steps,
#: optionally after ``lm.retain_freed_memory()``, and prints (applied, page faults per step over
#: the last 20 steps, sha256 of the weights).
_MEMORY_SCRIPT = """
import hashlib, resource, sys, torch
from repgeo_utils import lm
applied = lm.retain_freed_memory() if sys.argv[1] == "1" else None
torch.set_num_threads(1)
config = lm.PretrainConfig(vocab_size=1024, num_layers=1, hidden_size=16, num_heads=2)
model = lm.build_model(config, vocab_size=1024)
optimizer = lm.make_optimizer(model, config)
tokens = torch.randint(0, 1024, (8, 64), generator=torch.Generator().manual_seed(0))
for _ in range(10):
    lm.train_step(model, optimizer, tokens)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    lm.train_step(model, optimizer, tokens)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
print(applied, faults, hashlib.sha256(weights).hexdigest())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retain_freed_memory_stops_page_faults_and_keeps_the_bits():
    """Measured per process: without it glibc hands the logits' blocks back every step (180-620
    faults a step here), with it they are reused; the trained weights are the same bits."""
    runs = {}
    for retain in ("0", "1"):
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, retain],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        applied, faults, digest = result.stdout.split()[-3:]
        runs[retain] = (applied, float(faults), digest)
    assert runs["1"][0] == "True"
    assert runs["0"][2] == runs["1"][2], "retaining memory changed the trained weights"
    if runs["0"][1] < 50:  # another C library that keeps the blocks by itself
        pytest.skip(f"only {runs['0'][1]} page faults a step without it: nothing to remove")
    assert runs["1"][1] <= runs["0"][1] / 10, runs
