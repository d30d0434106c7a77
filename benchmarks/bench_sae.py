"""SAE training throughput (tokens/s) against the GEMM bound; JSON to results/sae.json.

The bound: one training step of a d_in -> d_sae SAE needs five matrix products a token, each
2 x d_in x d_sae FLOPs: the encoder and decoder forward, the decoder weight gradient, the
gradient back through the decoder to the latents, and the encoder weight gradient (the
gradient with respect to the input activations, the sixth product of a generic autograd step,
is never needed). Dividing a measured float32 GEMM rate by those FLOPs gives the tokens/s a
perfect implementation would reach; measured / bound says how much of the machine
``repgeo_utils.sae.train_sae`` uses. Two GEMM rates are measured: a square 1024^3 product
(roughly the machine's peak) and the SAE's own five products at the benchmarked batch size.

Runs: the default setting (batch 256) and larger batches; TopK with k = 32 (the sparse route);
the same training configured the way the paper's code did it (batch 16), reported as a ratio;
and the default once more on a single thread. Each figure is the median over
repeats of one epoch over synthetic activations (throughput does not depend on the values).
The load average is recorded, because on a shared machine it moves every number.

    .venv/bin/python benchmarks/bench_sae.py [--threads N] [--tokens 32768] [--repeats 3]
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

import torch

from repgeo_utils.sae import SAEConfig, train_sae

log = logging.getLogger("bench_sae")

RESULTS = Path(__file__).resolve().parent / "results" / "sae.json"
D_IN, D_SAE = 384, 1024  # MiniLM hidden size -> the paper's 1024 latents
TARGET_TOKENS_PER_S = 30_000


def gemm_flops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Measured float32 FLOP/s of ``(m, k) @ (k, n)`` (2 m k n FLOPs a product)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2.0 * m * k * n * reps / (time.perf_counter() - start)


def sae_step_gemm_flops(batch: int, seconds: float = 1.0) -> float:
    """FLOP/s of the five products of one SAE step at ``batch`` tokens, run back to back."""
    x, g = torch.randn(batch, D_IN), torch.randn(batch, D_IN)
    h, w_enc, w_dec = torch.randn(batch, D_SAE), torch.randn(D_IN, D_SAE), torch.randn(D_SAE, D_IN)

    def five() -> None:
        x @ w_enc  # encoder forward
        h @ w_dec  # decoder forward
        h.T @ g  # decoder weight gradient
        g @ w_dec.T  # gradient to the latents
        x.T @ h  # encoder weight gradient

    for _ in range(2):
        five()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        five()
        reps += 1
    return 5 * 2.0 * batch * D_IN * D_SAE * reps / (time.perf_counter() - start)


def synthetic_activations(n: int, seed: int = 0) -> torch.Tensor:
    """Sparse combinations of 2,048 random directions plus noise, ~ hidden-state sized."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(2048, D_IN, generator=g)
    active = torch.rand(n, 2048, generator=g) < 16 / 2048
    return (active * torch.rand(n, 2048, generator=g)) @ atoms + 0.1 * torch.randn(
        n, D_IN, generator=g
    )


def measure(config: SAEConfig, x: torch.Tensor, repeats: int) -> dict:
    """Median tokens/s of one-epoch ``train_sae`` runs (the timed loop excludes setup)."""
    rates = []
    for r in range(repeats):
        _, history = train_sae(replace(config, epochs=1, seed=r), x, progress=False, device="cpu")
        rates.append(history.tokens_per_second)
    return {
        "batch_size": config.batch_size,
        "architecture": config.architecture,
        "tokens_per_run": int(x.shape[0]),
        "tokens_per_s_median": statistics.median(rates),
        "tokens_per_s_runs": [round(v) for v in rates],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--tokens", type=int, default=32_768, help="tokens per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    peak = gemm_flops(1024, 1024, 1024)
    flops_per_token = 5 * 2.0 * D_IN * D_SAE
    x = synthetic_activations(args.tokens)
    default = SAEConfig(d_in=D_IN, d_sae=D_SAE)
    runs = []
    for batch in args.batches:
        result = measure(replace(default, batch_size=batch), x, args.repeats)
        step_flops = sae_step_gemm_flops(batch)
        result.update(
            step_gemm_gflops=step_flops / 1e9,
            bound_tokens_per_s_peak=peak / flops_per_token,
            bound_tokens_per_s_step_gemms=step_flops / flops_per_token,
            fraction_of_peak_bound=result["tokens_per_s_median"] / (peak / flops_per_token),
        )
        runs.append(result)
        log.info(
            "batch %5d: %7.0f tokens/s (%.0f%% of the peak-GEMM bound %.0f)",
            batch,
            result["tokens_per_s_median"],
            100 * result["fraction_of_peak_bound"],
            peak / flops_per_token,
        )
    topk = measure(
        SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=32, batch_size=1024),
        x,
        args.repeats,
    )
    # the paper's code: batch 16 (its optimiser settings do not change the cost of a step)
    paper_config = SAEConfig.preset("paper-text", D_IN, D_SAE)
    paper = measure(paper_config, x[: max(2048, args.tokens // 8)], args.repeats)
    default_run = next((r for r in runs if r["batch_size"] == default.batch_size), runs[0])
    # the default run again on one thread: on a shared machine, two OpenMP threads fighting
    # other processes can be slower than one, which this separates from the code's own speed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_thread = measure(default, x, args.repeats)
    one_thread["peak_gemm_gflops_1024"] = gemm_flops(1024, 1024, 1024) / 1e9
    one_thread["fraction_of_peak_bound"] = one_thread["tokens_per_s_median"] / (
        one_thread["peak_gemm_gflops_1024"] * 1e9 / flops_per_token
    )
    torch.set_num_threads(threads)
    best = max(runs, key=lambda r: r["tokens_per_s_median"])
    out = {
        "benchmark": "sae_training_throughput",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "flops_per_token": flops_per_token,
        "peak_gemm_gflops_1024": peak / 1e9,
        "bound_tokens_per_s": peak / flops_per_token,
        "target_tokens_per_s": TARGET_TOKENS_PER_S,
        "default_batch_size": default.batch_size,
        "default_tokens_per_s": default_run["tokens_per_s_median"],
        "best_tokens_per_s": best["tokens_per_s_median"],
        "best_batch_size": best["batch_size"],
        "meets_target": best["tokens_per_s_median"] >= TARGET_TOKENS_PER_S,
        "runs": runs,
        "topk_k32": topk,
        "paper_batch16": paper,
        "default_one_thread": one_thread,
        "default_over_paper": default_run["tokens_per_s_median"] / paper["tokens_per_s_median"],
        "best_over_paper": best["tokens_per_s_median"] / paper["tokens_per_s_median"],
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
    log.info(
        "paper setting (batch 16): %.0f tokens/s; default / paper = %.1fx; best / paper = %.1fx",
        paper["tokens_per_s_median"],
        out["default_over_paper"],
        out["best_over_paper"],
    )
    log.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
