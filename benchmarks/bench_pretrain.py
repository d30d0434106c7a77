"""Pretraining throughput (tokens/s) against the GEMM bound; JSON to results/pretrain.json.

The bound: a training step costs about 6 x N FLOPs per token for N parameters that take part
in matrix products (every parameter but the input embedding table, which is a lookup), plus
6 x layers x context x hidden for attention scores and their weighted sum (Kaplan et al.
2020, Table 1, times 3 for forward + backward). Dividing the measured float32 GEMM rate of
this machine by that cost gives the tokens/s a perfect implementation would reach; the ratio
measured/bound says how much of the machine the training loop uses.

Three bounds, each measured in the same run:

- ``square``: a 1024 x 1024 x 1024 product, the machine's float32 peak (roughly);
- ``model_shape``: the model's largest product (the unembedding: batch x context tokens times
  hidden -> vocabulary), which small hidden sizes run far below peak;
- ``step_gemms``: every matrix product of one real training step (forward and backward,
  recorded by torch's profiler with their shapes), each timed alone at its own shape and
  summed: the time a step would take if it did nothing but its products. This is the tightest
  of the three: at hidden 128 the products themselves reach only part of the square peak, so
  no implementation of this model reaches the square bound.

    .venv/bin/python benchmarks/bench_pretrain.py [--threads 1 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from repgeo_utils import lm
from repgeo_utils.lm.standard import STANDARD_SETTINGS, gemm_flops

log = logging.getLogger("bench_pretrain")

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain.json"

#: The settings benchmarked: the quick and longer settings recommended in
#: benchmarks/pretraining_phase_search.md, the standard run's (benchmarks/standard_run_search.md)
#: and the 1.8M-parameter model measured while planning.
SETTINGS: dict[str, lm.PretrainConfig] = {
    **lm.PRETRAIN_SETTINGS,
    "standard": STANDARD_SETTINGS["standard"].pretrain,
    "planning-1.8M": lm.PretrainConfig(
        num_layers=4,
        hidden_size=128,
        num_heads=4,
        vocab_size=4096,
        context_length=128,
        batch_size=16,
    ),  # fmt: skip
}


def step_gemm_shapes(model, optimizer, batch, grad_clip) -> list[tuple[int, int, int]]:
    """``(m, k, n)`` of every matrix product in one training step (``aten::mm``, ``addmm``,
    ``bmm``; a batched product counts once per matrix), from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        lm.train_step(model, optimizer, batch, grad_clip)
    shapes = []
    for event in prof.events():
        dims = [s for s in event.input_shapes if len(s) >= 2]
        if event.name in ("aten::mm", "aten::addmm") and len(dims) == 2:
            (m, k), (_, n) = dims
            shapes.append((m, k, n))
        elif event.name == "aten::bmm" and len(dims) == 2:
            (b, m, k), (_, _, n) = dims
            shapes += [(m, k, n)] * b
    return shapes


def gemm_seconds(shapes: list[tuple[int, int, int]], seconds: float = 0.3) -> float:
    """Seconds to run every product of ``shapes`` once, each timed alone at its shape."""
    total = 0.0
    for shape in sorted(set(shapes)):
        total += shapes.count(shape) * 2.0 * math.prod(shape) / gemm_flops(*shape, seconds)
    return total


def flops_per_token(config: lm.PretrainConfig, matmul_params: int) -> float:
    """Training FLOPs per token: 6 N plus the attention term 6 L n_ctx d."""
    attention = 6 * config.num_layers * config.context_length * config.hidden_size
    return 6.0 * matmul_params + attention


def measure(config: lm.PretrainConfig, steps: int, warmup: int) -> dict:
    """Tokens/s of the real training step (``pretrain.train_step``) on real batches."""
    data = lm.prepare_corpus(config)
    tokenizer = data.load_tokenizer()
    model = lm.build_model(config, vocab_size=len(tokenizer))
    optimizer = lm.make_optimizer(model, config)
    batches = lm.TokenBatches(data.train_ids, config.context_length, config.batch_size, 0)
    for step in range(warmup):
        lm.train_step(model, optimizer, batches.batch(step), config.grad_clip)
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        lm.train_step(model, optimizer, batches.batch(step), config.grad_clip)
    seconds = time.perf_counter() - start
    shapes = step_gemm_shapes(model, optimizer, batches.batch(warmup + steps), config.grad_clip)
    step_gemm = gemm_seconds(shapes)
    params = lm.count_parameters(model)
    matmul_params = lm.count_parameters(model, non_embedding=True)
    tokens = steps * config.tokens_per_step
    return {
        "parameters": params,
        "matmul_parameters": matmul_params,
        "flops_per_token": flops_per_token(config, matmul_params),
        "tokens_per_second": tokens / seconds,
        "seconds": seconds,
        "steps": steps,
        "unembedding_gemm": [config.tokens_per_step, config.hidden_size, len(tokenizer)],
        "step_gemms": len(shapes),
        "step_gemm_seconds": step_gemm,
        "step_seconds": seconds / steps,
        "bound_tokens_per_second_step_gemms": config.tokens_per_step / step_gemm,
        "fraction_of_step_gemm_bound": step_gemm / (seconds / steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, torch.get_num_threads()}),
        help="thread counts to measure (default: 1 and torch's default)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--min-tokens", type=int, default=100_000, help="timed tokens at least")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    rows: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak = gemm_flops(1024, 1024, 1024)
        log.info("square GEMM: %.1f GFLOP/s on %d threads", peak / 1e9, threads)
        for name, config in SETTINGS.items():
            steps = max(args.steps, math.ceil(args.min_tokens / config.tokens_per_step))
            row = measure(config, steps, args.warmup)
            shaped = gemm_flops(*row["unembedding_gemm"])
            row["threads"] = threads
            row["gemm_flops_square"] = peak
            row["gemm_flops_model_shape"] = shaped
            row["bound_tokens_per_second_square"] = peak / row["flops_per_token"]
            row["bound_tokens_per_second_model_shape"] = shaped / row["flops_per_token"]
            row["fraction_of_square_bound"] = (
                row["tokens_per_second"] / row["bound_tokens_per_second_square"]
            )
            row["fraction_of_model_shape_bound"] = (
                row["tokens_per_second"] / row["bound_tokens_per_second_model_shape"]
            )
            row["config"] = asdict(config)
            rows[f"{name}@{threads}t"] = row
            log.info(
                "%s, %d threads: %.0f tokens/s; GEMM bound %.0f (square) / %.0f (model-shaped) "
                "/ %.0f (the step's own products) tokens/s; %.0f%% / %.0f%% / %.0f%% of it",
                name, threads, row["tokens_per_second"], row["bound_tokens_per_second_square"],
                row["bound_tokens_per_second_model_shape"],
                row["bound_tokens_per_second_step_gemms"],
                100 * row["fraction_of_square_bound"], 100 * row["fraction_of_model_shape_bound"],
                100 * row["fraction_of_step_gemm_bound"],
            )  # fmt: skip
    payload = {
        "benchmark": "pretrain",
        "threads": args.threads,
        "note": "load_average > cpu_count means other jobs shared the cores during the run",
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "settings": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, args.out)
    log.info("written %s", args.out)


if __name__ == "__main__":
    main()
