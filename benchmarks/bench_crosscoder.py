"""Crosscoder training throughput against the GEMM bound and against the SAE per latent, and
the cost of splice-in fidelity in forward passes; JSON to results/crosscoder.json.

**Crosscoder.** A step of a 2 x d_in -> d_sae crosscoder is an SAE step on the concatenated
activations: five matrix products of 2 x (2 d_in) x d_sae FLOPs a token (encoder and decoder
forward, decoder weight gradient, gradient to the latents, encoder weight gradient), twice an
SAE's per latent. The bound is the measured float32 GEMM rate (a square 1024^3 product, and the
crosscoder's own five products at the benchmarked batch) divided by those FLOPs. In the same
run the SAE of ``benchmarks/bench_sae.py`` (default setting, d_in -> d_sae) is timed at the same
batch sizes; **per latent** means tokens/s x d_sae, and the target is a crosscoder reaching at
least half the SAE's (half, because each of its latents reads and writes two models).

**Splice-in fidelity.** MiniLM-L6 (the packaged offline weights, a random 2-class head) on 256
texts in batches of 32, one layer: the forward passes alone, then
``ablation.splice_fidelity`` with no SAE, one SAE and three SAEs (no references), and with the
zero- and mean-ablation references. Extra forward passes per SAE = (time with three SAEs - time
with none) / 3 / time of the forward passes alone.

Each figure is the median over repeats (crosscoder and SAE runs alternate, so a change of load
hits both alike); the load average is recorded, because on a shared machine it moves every
number.

    .venv/bin/python benchmarks/bench_crosscoder.py [--tokens 32768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_sae import D_IN, D_SAE, gemm_flops, synthetic_activations

from repgeo_utils.ablation.splice import encoder_batches, splice_fidelity
from repgeo_utils.models import load_model
from repgeo_utils.sae import SAEConfig, SparseAutoencoder, train_sae
from repgeo_utils.sae.crosscoder import CrosscoderConfig, train_crosscoder

log = logging.getLogger("bench_crosscoder")

RESULTS = Path(__file__).resolve().parent / "results" / "crosscoder.json"
#: The issue's target: crosscoder tokens/s x d_sae at least this share of the SAE's.
TARGET_PER_LATENT = 0.5


def crosscoder_step_gemm_flops(batch: int, seconds: float = 1.0) -> float:
    """FLOP/s of the five products of one crosscoder step (width 2 d_in) at ``batch`` tokens."""
    d2 = 2 * D_IN
    x, g = torch.randn(batch, d2), torch.randn(batch, d2)
    h, w_enc, w_dec = torch.randn(batch, D_SAE), torch.randn(d2, D_SAE), torch.randn(D_SAE, d2)

    def five() -> None:
        x @ w_enc
        h @ w_dec
        h.T @ g
        g @ w_dec.T
        x.T @ h

    for _ in range(2):
        five()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        five()
        reps += 1
    return 5 * 2.0 * batch * d2 * D_SAE * reps / (time.perf_counter() - start)


def paired_activations(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-trained-like activations and a fine-tuned version that keeps most of them."""
    x_pre = synthetic_activations(n, seed=0)
    return x_pre, 0.8 * x_pre + 0.6 * synthetic_activations(n, seed=1)


def training_runs(tokens: int, batches: list[int], repeats: int) -> list[dict]:
    x_pre, x_post = paired_activations(tokens)
    peak = gemm_flops(1024, 1024, 1024)
    cc_flops_per_token = 5 * 2.0 * (2 * D_IN) * D_SAE
    out = []
    for batch in batches:
        sae_config = SAEConfig(d_in=D_IN, d_sae=D_SAE, epochs=1, batch_size=batch)
        cc_config = CrosscoderConfig(d_in=D_IN, d_sae=D_SAE, epochs=1, batch_size=batch)

        def sae_rate(seed: int, config=sae_config) -> float:
            _, h = train_sae(replace(config, seed=seed), x_pre, progress=False, device="cpu")
            return h.tokens_per_second

        def cc_rate(seed: int, config=cc_config) -> float:
            _, h = train_crosscoder(
                replace(config, seed=seed), x_pre, x_post, progress=False, device="cpu"
            )
            return h.tokens_per_second

        # alternate the two, so that a change of the machine's load hits both alike
        cc_rates, sae_rates = [], []
        for r in range(repeats):
            cc_rates.append(cc_rate(r))
            sae_rates.append(sae_rate(r))
        cc_median, cc_runs = statistics.median(cc_rates), [round(v) for v in cc_rates]
        sae_median, sae_runs = statistics.median(sae_rates), [round(v) for v in sae_rates]
        step = crosscoder_step_gemm_flops(batch)
        row = {
            "batch_size": batch,
            "crosscoder_tokens_per_s": cc_median,
            "crosscoder_runs": cc_runs,
            "sae_tokens_per_s": sae_median,
            "sae_runs": sae_runs,
            "crosscoder_bound_tokens_per_s_peak": peak / cc_flops_per_token,
            "crosscoder_bound_tokens_per_s_step_gemms": step / cc_flops_per_token,
            "crosscoder_fraction_of_peak_bound": cc_median / (peak / cc_flops_per_token),
            "crosscoder_fraction_of_step_bound": cc_median / (step / cc_flops_per_token),
            "sae_fraction_of_peak_bound": sae_median / (peak / (cc_flops_per_token / 2)),
            "per_latent_crosscoder_over_sae": cc_median / sae_median,  # same d_sae
        }
        row["meets_target"] = row["per_latent_crosscoder_over_sae"] >= TARGET_PER_LATENT
        log.info(
            "batch %5d: crosscoder %7.0f tokens/s (%.0f%% of its peak-GEMM bound %.0f), SAE "
            "%7.0f tokens/s: %.2f of the SAE per latent (target >= %.1f)",
            batch, cc_median, 100 * row["crosscoder_fraction_of_peak_bound"],
            peak / cc_flops_per_token, sae_median, row["per_latent_crosscoder_over_sae"],
            TARGET_PER_LATENT,
        )  # fmt: skip
        out.append(row)
    return out


def splice_cost(repeats: int) -> dict:
    """Forward passes of splice-in fidelity on MiniLM-L6, relative to the passes alone."""
    model, tokenizer = load_model("minilm-l6", kind="classifier", label_names=["a", "b"], seed=0)
    model.eval()
    rng = np.random.default_rng(0)
    words = (
        "the market rose as shares of the company gained after the election while the team "
        "won its game and the film was praised for its acting plot music and director"
    ).split()
    texts = [" ".join(rng.choice(words, size=rng.integers(8, 40))) for _ in range(256)]
    labels = rng.integers(0, 2, size=len(texts))
    batches = encoder_batches(tokenizer, texts, max_length=128, batch_size=32)
    layer = 3
    saes = []
    for seed in range(3):  # SAEs of the grid's size with random weights: the cost is what counts
        sae = SparseAutoencoder(SAEConfig(d_in=384, d_sae=1024, seed=seed))
        sae.reset_parameters(torch.Generator().manual_seed(seed))
        saes.append(sae.requires_grad_(False).eval())
    means = {layer: torch.zeros(384)}

    def forward_only() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                model(**batch.inputs)
        return time.perf_counter() - start

    def fidelity(n_saes: int, references: tuple[str, ...] = ()) -> float:
        splices = {layer: {f"sae {i}": saes[i] for i in range(n_saes)}}
        start = time.perf_counter()
        splice_fidelity(model, batches, splices, labels=labels, means=means, references=references)
        return time.perf_counter() - start

    forward_only()  # warm up
    timings = {
        "forward_passes_alone_s": statistics.median(forward_only() for _ in range(repeats)),
        "no_sae_s": statistics.median(fidelity(0) for _ in range(repeats)),
        "one_sae_s": statistics.median(fidelity(1) for _ in range(repeats)),
        "three_saes_s": statistics.median(fidelity(3) for _ in range(repeats)),
        "one_sae_with_references_s": statistics.median(
            fidelity(1, ("zero", "mean")) for _ in range(repeats)
        ),
    }
    alone = timings["forward_passes_alone_s"]
    out = {
        "model": "minilm-l6 (6 layers, 384 wide), random 2-class head",
        "texts": len(texts),
        "batches": len(batches),
        "layer": layer,
        "sae": "384 -> 1024 ReLU",
        **timings,
        "extra_forward_passes_per_sae": (timings["three_saes_s"] - timings["no_sae_s"]) / 3 / alone,
        "clean_pass_and_scoring_in_forward_passes": timings["no_sae_s"] / alone,
        "references_in_forward_passes": (
            timings["one_sae_with_references_s"] - timings["one_sae_s"]
        )
        / alone,
    }
    log.info(
        "splice: %.2f extra forward passes per SAE per batch (zero + mean references: %.2f, "
        "shared by every SAE at the layer)",
        out["extra_forward_passes_per_sae"],
        out["references_in_forward_passes"],
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--tokens", type=int, default=32_768, help="tokens per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--skip-splice", action="store_true", help="training throughput only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    peak = gemm_flops(1024, 1024, 1024)
    runs = training_runs(args.tokens, args.batches, args.repeats)
    best = max(runs, key=lambda r: r["crosscoder_tokens_per_s"])
    out = {
        "benchmark": "crosscoder_training_throughput_and_splice_cost",
        "d_in_per_model": D_IN,
        "d_sae": D_SAE,
        "crosscoder_flops_per_token": 5 * 2.0 * (2 * D_IN) * D_SAE,
        "sae_flops_per_token": 5 * 2.0 * D_IN * D_SAE,
        "peak_gemm_gflops_1024": peak / 1e9,
        "target_per_latent_crosscoder_over_sae": TARGET_PER_LATENT,
        "runs": runs,
        "best_batch_size": best["batch_size"],
        "best_crosscoder_tokens_per_s": best["crosscoder_tokens_per_s"],
        "best_per_latent_crosscoder_over_sae": best["per_latent_crosscoder_over_sae"],
        "meets_target_at_every_batch": all(r["meets_target"] for r in runs),
        "splice": None if args.skip_splice else splice_cost(args.repeats),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
