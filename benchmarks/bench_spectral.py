"""RankMe + alpha-ReQ of 10,000 x 768 and 10,000 x 2,048 features: ours against paper 2's route.

Paper 2's code gets the spectrum from a full-SVD PCA of the centred feature matrix
(scikit-learn ``PCA(svd_solver="full")``, ``explained_variance_ratio_``, at most 2,048
components) and then computes RankMe and alpha-ReQ on it. ``repgeo_utils.spectral`` forms the
``d x d`` covariance with one symmetric rank-k update (BLAS syrk) and takes its eigenvalues,
which is the same spectrum for a fraction of the work when ``samples >> features``.

For each shape both routes run on the same float32 features (cast to float64 by both), we check
that RankMe (both variants) and alpha agree to 1e-6 relative, and report the median wall time
over repeats and the speed ratio (target: at least 5x). The features have a power-law spectrum
(variance ~ r^-1.2) in a random orthonormal basis. The load average is recorded, because on a
shared machine it moves every number.

    .venv/bin/python benchmarks/bench_spectral.py [--repeats 3] [--samples 10000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
import sklearn
from sklearn.decomposition import PCA

from repgeo_utils.spectral import alpha_req, eigenspectrum, rankme

log = logging.getLogger("bench_spectral")

RESULTS = Path(__file__).resolve().parent / "results" / "spectral.json"
WIDTHS = (768, 2048)
TARGET_SPEEDUP = 5.0
TOLERANCE = 1e-6


def make_features(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n x d`` float32 features with variance ~ r^-1.2 along random orthonormal directions."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, d + 1, dtype=np.float64) ** -0.6
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    latent = rng.normal(size=(n, d)) * scales
    return (latent @ basis.T + rng.normal(size=d)).astype(np.float32)


def metrics(spectrum: np.ndarray) -> dict[str, float]:
    """RankMe (both variants) and alpha-ReQ (ranks 12..100) of one spectrum."""
    return {
        "rankme_covariance": rankme(spectrum, "covariance"),
        "rankme_singular": rankme(spectrum, "singular"),
        "alpha": alpha_req(spectrum, fit_range=(12, 100)).alpha,
    }


def reference_route(features: np.ndarray) -> dict[str, float]:
    """Paper 2's route: centre, full-SVD PCA, explained-variance ratios, then the metrics."""
    x = features.astype(np.float64)
    centred = x - x.mean(axis=0)
    pca = PCA(n_components=min(2048, *centred.shape), svd_solver="full")
    pca.fit(centred)
    return metrics(pca.explained_variance_ratio_)


def our_route(features: np.ndarray) -> dict[str, float]:
    """``repgeo_utils.spectral``: covariance (or Gram) eigenvalues, then the same metrics."""
    return metrics(eigenspectrum(features, max_eigenvalues=2048))


def timed(fn, features: np.ndarray, repeats: int) -> tuple[dict[str, float], list[float]]:
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(features)
        times.append(time.perf_counter() - start)
    return result, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    runs = []
    for d in WIDTHS:
        features = make_features(args.samples, d)
        ours, our_times = timed(our_route, features, args.repeats)
        ref, ref_times = timed(reference_route, features, args.repeats)
        rel = {k: abs(ours[k] - ref[k]) / abs(ref[k]) for k in ref}
        ratio = statistics.median(ref_times) / statistics.median(our_times)
        runs.append(
            {
                "samples": args.samples,
                "features": d,
                "ours_s": statistics.median(our_times),
                "reference_s": statistics.median(ref_times),
                "ours_all_s": our_times,
                "reference_all_s": ref_times,
                "speedup": ratio,
                "ours": ours,
                "reference": ref,
                "max_relative_difference": max(rel.values()),
                "relative_difference": rel,
                "same_to_1e-6": max(rel.values()) <= TOLERANCE,
            }
        )
        log.info(
            "%d x %d: ours %.3f s, full-SVD PCA %.3f s, %.1fx; RankMe %.4f, alpha %.4f; "
            "max relative difference %.2e",
            args.samples,
            d,
            statistics.median(our_times),
            statistics.median(ref_times),
            ratio,
            ours["rankme_covariance"],
            ours["alpha"],
            max(rel.values()),
        )

    result = {
        "benchmark": "RankMe + alpha-ReQ: covariance eigenvalues vs full-SVD PCA (paper 2's route)",
        "repeats": args.repeats,
        "statistic": "median wall time over repeats",
        "target_speedup": TARGET_SPEEDUP,
        "tolerance_relative": TOLERANCE,
        "all_within_tolerance": all(r["same_to_1e-6"] for r in runs),
        "all_meet_target": all(r["speedup"] >= TARGET_SPEEDUP for r in runs),
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)
    log.info("written: %s", RESULTS)


if __name__ == "__main__":
    main()
