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
  summed: the time a step would take if it did nothing but its products. Usually the tightest
  of the three: where the step's products run below the square peak, no implementation of this
  model reaches the square bound.

The training steps, the step's products and the square product are timed in alternating rounds
(``--rounds``) and the medians reported, with each round's ratios: these machines' speed drifts
by a fifth within minutes (the square product read 48 to 79 GFLOP/s on one thread between runs),
which a single block of steps followed by a single block of products would read as a change of
efficiency. The model-shaped bound is still timed once per thread count. Like pretraining, the
benchmark first calls ``lm.retain_freed_memory()`` (``--default-malloc`` measures without it).

    .venv/bin/python benchmarks/bench_pretrain.py [--threads 1 2] [--settings standard]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
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


def measure(config: lm.PretrainConfig, steps: int, warmup: int, rounds: int) -> dict:
    """Tokens/s of the real training step (``pretrain.train_step``) on real batches, and the
    step's own products and the square product timed alone: in ``rounds`` alternating blocks
    (steps, then the products), so a drift of the machine's speed reaches both sides of each
    round's ratios."""
    data = lm.prepare_corpus(config)
    tokenizer = data.load_tokenizer()
    model = lm.build_model(config, vocab_size=len(tokenizer))
    optimizer = lm.make_optimizer(model, config)
    batches = lm.TokenBatches(data.train_ids, config.context_length, config.batch_size, 0)
    for step in range(warmup):
        lm.train_step(model, optimizer, batches.batch(step), config.grad_clip)
    shapes = step_gemm_shapes(model, optimizer, batches.batch(warmup), config.grad_clip)
    params = lm.count_parameters(model)
    matmul_params = lm.count_parameters(model, non_embedding=True)
    cost = flops_per_token(config, matmul_params)
    per_round = math.ceil(steps / rounds)
    step_seconds, gemm_step_seconds, square_fractions = [], [], []
    step = warmup + 1
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            lm.train_step(model, optimizer, batches.batch(step), config.grad_clip)
            step += 1
        step_seconds.append((time.perf_counter() - start) / per_round)
        gemm_step_seconds.append(gemm_seconds(shapes, seconds=0.03))
        square_bound = gemm_flops(1024, 1024, 1024, seconds=0.1) / cost  # tokens/s
        square_fractions.append(config.tokens_per_step / step_seconds[-1] / square_bound)
    fractions = [gemm / secs for gemm, secs in zip(gemm_step_seconds, step_seconds, strict=True)]
    seconds = statistics.median(step_seconds)
    step_gemm = statistics.median(gemm_step_seconds)
    return {
        "parameters": params,
        "matmul_parameters": matmul_params,
        "flops_per_token": cost,
        "tokens_per_second": config.tokens_per_step / seconds,
        "seconds": sum(step_seconds) * per_round,
        "steps": rounds * per_round,
        "rounds": rounds,
        "unembedding_gemm": [config.tokens_per_step, config.hidden_size, len(tokenizer)],
        "step_gemms": len(shapes),
        "step_gemm_seconds": step_gemm,
        "step_seconds": seconds,
        "step_seconds_per_round": step_seconds,
        "bound_tokens_per_second_step_gemms": config.tokens_per_step / step_gemm,
        "fraction_of_step_gemm_bound": statistics.median(fractions),
        "fraction_of_step_gemm_bound_per_round": fractions,
        "fraction_of_square_bound_per_round": square_fractions,
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
    parser.add_argument(
        "--rounds", type=int, default=15,
        help="alternating blocks of timed steps and timed products (medians are reported)",
    )  # fmt: skip
    parser.add_argument(
        "--default-malloc", action="store_true",
        help="leave glibc's allocator as it is (pretraining calls lm.retain_freed_memory())",
    )  # fmt: skip
    parser.add_argument(
        "--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS),
        help="which settings to measure (default: all)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    retained = False if args.default_malloc else lm.retain_freed_memory()
    rows: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak = gemm_flops(1024, 1024, 1024)
        log.info("square GEMM: %.1f GFLOP/s on %d threads", peak / 1e9, threads)
        for name in args.settings:
            config = SETTINGS[name]
            steps = max(args.steps, math.ceil(args.min_tokens / config.tokens_per_step))
            row = measure(config, steps, args.warmup, args.rounds)
            shaped = gemm_flops(*row["unembedding_gemm"])
            row["threads"] = threads
            row["gemm_flops_square"] = peak
            row["gemm_flops_model_shape"] = shaped
            row["bound_tokens_per_second_square"] = peak / row["flops_per_token"]
            row["bound_tokens_per_second_model_shape"] = shaped / row["flops_per_token"]
            row["fraction_of_square_bound"] = statistics.median(
                row["fraction_of_square_bound_per_round"]
            )  # each round's steps against a square product timed right after them
            row["fraction_of_model_shape_bound"] = (
                row["tokens_per_second"] / row["bound_tokens_per_second_model_shape"]
            )
            row["config"] = asdict(config)
            rows[f"{name}@{threads}t"] = row
            log.info(
                "%s, %d threads: %.0f tokens/s; GEMM bound %.0f (square) / %.0f (model-shaped) "
                "/ %.0f (the step's own products) tokens/s; %.0f%% / %.0f%% / %.0f%% of it "
                "(rounds: %.0f-%.0f%% of the square bound, %.0f-%.0f%% of the products)",
                name, threads, row["tokens_per_second"], row["bound_tokens_per_second_square"],
                row["bound_tokens_per_second_model_shape"],
                row["bound_tokens_per_second_step_gemms"],
                100 * row["fraction_of_square_bound"], 100 * row["fraction_of_model_shape_bound"],
                100 * row["fraction_of_step_gemm_bound"],
                100 * min(row["fraction_of_square_bound_per_round"]),
                100 * max(row["fraction_of_square_bound_per_round"]),
                100 * min(row["fraction_of_step_gemm_bound_per_round"]),
                100 * max(row["fraction_of_step_gemm_bound_per_round"]),
            )  # fmt: skip
    payload = {
        "benchmark": "pretrain",
        "threads": args.threads,
        "note": "load_average > cpu_count means other jobs shared the cores during the run",
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "retain_freed_memory": retained,
        "settings": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, args.out)
    log.info("written %s", args.out)


if __name__ == "__main__":
    main()
