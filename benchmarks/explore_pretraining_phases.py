"""Search for the compression-seeking phase in a small pretraining run (one experiment a call).

Trains one :class:`repgeo_utils.pretrain.PretrainConfig` (fields overridden on the command
line), in chunks so that a wall-clock budget can stop it (the run stays resumable: a second
call with the same settings continues where it stopped), then sweeps every saved revision and
prints step, training loss, validation loss and last-token RankMe per layer. The numbers in
``benchmarks/pretraining_phase_search.md`` come from this script.

    .venv/bin/python benchmarks/explore_pretraining_phases.py --name d32 \\
        --set hidden_size=32 num_layers=2 steps=3000 --minutes 7

Uses one thread (``--threads``) so that several people can share a small machine. RankMe is
computed by ``repgeo_utils.spectral`` when it is installed, else by the covariance formula of
paper 2's code written out below (p_i = lambda_i / sum|lambda| + 1e-7).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from repgeo_utils import lm, spectral

log = logging.getLogger("explore_pretraining_phases")

RESULTS = Path(__file__).resolve().parent / "results" / "phase_search"


def rankme_covariance(features: np.ndarray) -> float:
    """RankMe on covariance eigenvalues of centred features, as in paper 2's code."""
    return float(spectral.rankme(spectral.eigenspectrum(features), variant="covariance"))


def parse_overrides(pairs: list[str]) -> dict:
    """``["hidden_size=32", "cosine_decay=False"]`` -> ``{"hidden_size": 32, ...}``."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="experiment name (results file name)")
    parser.add_argument("--set", nargs="*", default=[], help="PretrainConfig overrides k=v")
    parser.add_argument("--minutes", type=float, default=7.0, help="training time budget")
    parser.add_argument("--chunk", type=int, default=100, help="steps between budget checks")
    parser.add_argument("--probes", type=int, default=768, help="measurement sequences")
    parser.add_argument("--max-words", type=int, default=48, help="longest probe, in words")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=None, help="cache root for the runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("repgeo_utils.cache").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    config = lm.PretrainConfig(**parse_overrides(args.set))
    budget = args.minutes * 60
    start = time.perf_counter()
    step = 0
    result = None
    while True:
        step = min(config.steps, step + args.chunk)
        result = lm.pretrain(config, root=args.root, stop_at_step=step, progress=False)
        if result.complete or step >= config.steps:
            break
        if time.perf_counter() - start > budget:
            log.warning("time budget reached at step %d of %d", step, config.steps)
            break
    train_seconds = time.perf_counter() - start
    assert result is not None
    probes = lm.probe_texts(
        result.holdout_texts, n=args.probes, max_words=args.max_words, seed=config.corpus_seed
    )
    sweep = lm.sweep_checkpoints(
        result.run_folder,
        None,
        probes,
        layers="all",
        max_length=96,
        spectral_metrics=False,
        use_cache=False,
        progress=False,
    )
    losses = {row["step"]: row["loss"] for row in result.train_log}
    rows = []
    for rev in sweep.revisions:
        window = [losses[s] for s in range(max(1, rev.step - 19), rev.step + 1) if s in losses]
        rows.append(
            {
                "step": rev.step,
                "train_loss": float(np.mean(window)) if window else float("nan"),
                "val_loss": rev.loss,
                "lr": config.lr_at(max(0, rev.step - 1)),
                "rankme": {str(k): rankme_covariance(v) for k, v in rev.features.items()},
            }
        )
    final = str(sweep.layers[-1])
    print(f"{'step':>6} {'train':>7} {'val':>7} {'lr':>9}  RankMe final | per layer")
    for row in rows:
        per_layer = " ".join(f"{row['rankme'][str(k)]:6.1f}" for k in sweep.layers)
        print(
            f"{row['step']:>6} {row['train_loss']:7.3f} {row['val_loss']:7.3f} "
            f"{row['lr']:9.2e}  {row['rankme'][final]:6.1f} | {per_layer}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(
        json.dumps(
            {
                "name": args.name,
                "config": config.run_key()["config"],
                "complete": result.complete,
                "train_seconds": train_seconds,
                "tokens_per_second": result.tokens_per_second,
                "parameters": result.parameters,
                "probes": len(probes),
                "rows": rows,
            },
            indent=1,
        )
    )
    log.info("results: %s (%.0f s training)", out, train_seconds)


if __name__ == "__main__":
    main()
