"""Similarity measures on 100k tokens x 384: seconds each, in memory and memory-mapped.

The pair imitates two models' hidden states of the same tokens: ``a`` has a non-zero mean and
a decaying spectrum; ``b`` is a rotation of ``a`` plus noise and its own offset. Each of
:func:`~repgeo_utils.similarity.cosine_of_means`, :func:`~repgeo_utils.similarity.
mean_token_cosine` and :func:`~repgeo_utils.similarity.linear_cka` is timed (best of
``--repeats``), and all three together in one pass (:func:`~repgeo_utils.similarity.
similarity_measures`), on float32 arrays in memory and on ``np.memmap`` files (page cache warm).
Linear CKA's cost is dominated by three ``d x N x d`` products: ``6 N d^2`` FLOPs, reported
against the float32 GEMM rate measured here.

Writes ``benchmarks/results/similarity.json``.

    .venv/bin/python benchmarks/bench_similarity.py [--tokens 100000] [--dim 384]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repgeo_utils.similarity import (
    cosine_of_means,
    linear_cka,
    mean_token_cosine,
    similarity_measures,
)

log = logging.getLogger("bench_similarity")

RESULTS = Path(__file__).resolve().parent / "results" / "similarity.json"


def make_pair(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two paired float32 (n, d) matrices with hidden-state-like structure."""
    rng = np.random.default_rng(seed)
    scales = (1.0 + np.arange(d)) ** -0.5
    a = rng.standard_normal((n, d), dtype=np.float32) * scales.astype(np.float32)
    a += rng.standard_normal(d).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    b = a @ rotation.astype(np.float32)
    b += 0.3 * rng.standard_normal((n, d), dtype=np.float32) + 0.5
    return a, b


def best_seconds(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def gemm_flops(seconds: float = 1.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2.0 * 2048**3 / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    load_before = os.getloadavg()
    a, b = make_pair(args.tokens, args.dim)
    functions = {
        "cosine_of_means": cosine_of_means,
        "mean_token_cosine": mean_token_cosine,
        "linear_cka": linear_cka,
    }
    timings: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as folder:
        mapped = []
        for name, x in (("a", a), ("b", b)):
            path = Path(folder) / f"{name}.f32"
            x.tofile(path)
            mapped.append(np.memmap(path, dtype=np.float32, mode="r", shape=x.shape))
        for storage, (x, y) in (("in_memory", (a, b)), ("memmap", tuple(mapped))):
            timings[storage] = {}
            for name, fn in functions.items():
                seconds, value = best_seconds(lambda fn=fn, x=x, y=y: fn(x, y), args.repeats)
                timings[storage][name] = {"seconds": seconds, "value": value}
                log.info("%s %s: %.3f s (value %.6f)", storage, name, seconds, value)
            seconds, values = best_seconds(lambda x=x, y=y: similarity_measures(x, y),
                                           args.repeats)  # fmt: skip
            timings[storage]["all_three_one_pass"] = {"seconds": seconds, "values": values}
            log.info("%s all three in one pass: %.3f s", storage, seconds)
    gemm = gemm_flops()
    cka_flops = 6.0 * args.tokens * args.dim**2
    result = {
        "what": f"similarity measures on {args.tokens} x {args.dim} float32 pairs",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "timings": timings,
        "linear_cka_gemm_flops": cka_flops,
        "gemm_float32_flops_per_second": gemm,
        "linear_cka_seconds_at_gemm_rate": cka_flops / gemm,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "input_mb_per_side": a.nbytes / 2**20,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log.info("written %s", RESULTS)


if __name__ == "__main__":
    main()
