"""The standard run: paper 2 at a scale where its measures mean something, end to end, in one
command, written as small tables that are committed (``data/recorded/<setting>/``).

    python -m repgeo_utils.lm.standard --setting standard --out data/recorded/standard
    make standard

:data:`STANDARD_SETTINGS` holds the ``standard`` setting (chosen in
``benchmarks/standard_run_search.md``: a 2-layer, hidden-128 GPT-NeoX, 16,000 steps, two
pretraining seeds) and a ``tiny`` one that runs the same path in seconds (the test). The run:

1. pretrains the main seed and the noise seeds (in parallel worker processes, one thread
   each, so each run is bit-for-bit what a single-threaded run gives);
2. sweeps every revision of every seed: loss, RankMe (both variants), alpha-ReQ per layer on
   held-out probe texts cut to the context; the phases, their noise and alpha per phase;
3. on the main seed: distributional memorization (infini-gram over the training tokens),
   downstream probes and few-shot accuracy with their correlations with RankMe and alpha,
   early generations and their repetition, SFT from checkpoints spread over the phases;
4. post-trains the final checkpoint (SFT -> DPO -> GRPO without and with a KL penalty) over
   seeds, with pass@k against the random-guess reference.

``run.json`` records the exact command, the git commit, the machine (CPU model, cores, the
float32 GEMM rate measured in the run) and the seconds of every step. Heavy intermediate
results (weights, features) stay in the cache (``data/cache/``); only the tables are written to
the output folder. :func:`load_recorded` reads them back for the notebooks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import validate
from ..config import ROOT, data_dir
from ..spectral import segment_phases
from . import downstream as ds
from . import generations as gen
from . import memorization as mem
from . import phases as ph
from .corpus import build_corpus, prepare_corpus, probe_texts
from .model import PretrainConfig
from .sweeps import sweep_checkpoints
from .training import pretrain, torch_threads

log = logging.getLogger(__name__)

#: Where recorded runs are committed (``data/recorded/<setting>/``).
RECORDED_DIR = ROOT / "data" / "recorded"


@validate.refuse_unknown_names
@dataclass(frozen=True)
class StandardSetting:
    """Everything the one-command run does (post-training settings are imported lazily: see
    :func:`posttrain_config`)."""

    name: str
    pretrain: PretrainConfig
    # more pretraining seeds, swept for the noise only (the recorded run used seed 1; each adds
    # a single-thread pretraining of about 35 minutes on a loaded 2-core machine)
    noise_seeds: tuple[int, ...] = (1,)
    workers: int = 2  # parallel processes for the pretraining seeds and post-training seeds
    n_probe: int = 1024  # held-out probe texts (RankMe, alpha)
    probe_max_words: int = 40  # probe texts of at most this many words (fit the context)
    layers: str = "all"
    memorization_sequences: int = 256  # per split (held-out, training)
    # 1,200 rows a task (960 to train the probe) and 250 test rows: the probe and few-shot
    # passes over every checkpoint are the run's largest measurement cost after the sweeps
    downstream: ds.DownstreamSettings = field(
        default_factory=lambda: ds.DownstreamSettings(max_rows=1200, max_test=250)
    )
    sft_bases: int = 7  # base checkpoints of SFT-from-checkpoints, spread over the phases
    sft_steps: int = 200
    sft_batch_size: int = 16
    posttrain_setting: str = "standard"  # key of posttrain.POSTTRAIN_SETTINGS
    posttrain_seeds: tuple[int, ...] = (0, 1, 2)
    kl_beta: float = 0.04  # GRPO is run without and with this KL penalty (TRL's beta)
    n_samples: int = 64  # samples per prompt for pass@k
    max_eval_rows: int = 200  # ID / OOD test rows scored in post-training
    generation_tokens: int = 24
    extra_generation_prompts: int = 10  # held-out openings added to the fixed prompts

    def __post_init__(self) -> None:
        if not isinstance(self.pretrain, PretrainConfig):
            raise TypeError(f"pretrain must be a PretrainConfig, got {type(self.pretrain)}")
        for name in ("workers", "n_probe", "probe_max_words", "memorization_sequences",
                     "sft_steps", "sft_batch_size", "n_samples", "max_eval_rows",
                     "generation_tokens"):  # fmt: skip
            validate.positive_int(name, getattr(self, name))
        validate.integer("sft_bases", self.sft_bases, minimum=2)
        validate.non_negative_int("extra_generation_prompts", self.extra_generation_prompts)
        for seed in self.noise_seeds:
            validate.non_negative_int("noise_seeds[]", seed)
        if self.pretrain.seed in self.noise_seeds:
            raise ValueError(
                f"noise_seeds {self.noise_seeds} repeat the main seed {self.pretrain.seed}"
            )
        if len(set(self.posttrain_seeds)) == 1 or len(set(self.posttrain_seeds)) < len(
            self.posttrain_seeds
        ):
            raise ValueError(
                f"posttrain_seeds needs two distinct seeds or more (or none, to leave "
                f"post-training out), got {self.posttrain_seeds}"
            )
        validate.positive_float("kl_beta", self.kl_beta)
        validate.one_of("layers", self.layers, ("all", "final"))

    @property
    def seeds(self) -> tuple[int, ...]:
        """The main pretraining seed first, then the noise seeds."""
        return (self.pretrain.seed, *self.noise_seeds)

    def pretrain_configs(self) -> list[PretrainConfig]:
        return [replace(self.pretrain, seed=s) for s in self.seeds]


#: ``standard``: chosen in benchmarks/standard_run_search.md; ``tiny``: the same path in
#: seconds (a test runs it).
STANDARD_SETTINGS: dict[str, StandardSetting] = {
    "standard": StandardSetting(
        name="standard",
        pretrain=PretrainConfig(
            num_layers=2,
            hidden_size=128,
            num_heads=4,
            steps=16_000,
            warmup_fraction=0.0025,
            checkpoint_every=1000,
        ),
    ),
    "tiny": StandardSetting(
        name="tiny",
        pretrain=PretrainConfig(
            seed=0,
            vocab_size=300,
            num_layers=1,
            hidden_size=16,
            num_heads=2,
            context_length=32,
            steps=4,
            batch_size=4,
            learning_rate=1e-2,
            warmup_fraction=0.2,
            checkpoint_every=4,
            max_documents=60,
        ),  # fmt: skip
        noise_seeds=(1,),
        workers=1,
        n_probe=48,
        probe_max_words=12,
        memorization_sequences=6,
        downstream=ds.DownstreamSettings(max_rows=80, max_test=20, shots=1),
        sft_bases=2,
        sft_steps=2,
        sft_batch_size=4,
        posttrain_setting="tiny",
        posttrain_seeds=(0, 1),
        n_samples=4,
        max_eval_rows=6,
        generation_tokens=4,
        extra_generation_prompts=2,
    ),
}


def get_setting(name: str | StandardSetting) -> StandardSetting:
    """A setting of :data:`STANDARD_SETTINGS` by name (an unknown name lists the known ones)."""
    if isinstance(name, StandardSetting):
        return name
    validate.one_of("setting", name, tuple(STANDARD_SETTINGS))
    return STANDARD_SETTINGS[name]


# --- the machine -------------------------------------------------------------------------------


def gemm_flops(m: int = 1024, k: int = 1024, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured float32 FLOP/s of ``(m, k) @ (k, n)`` on torch's current threads."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2.0 * m * k * n * reps / (time.perf_counter() - start)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record(threads: int = 1) -> dict[str, Any]:
    """CPU model, cores, load average and the square float32 GEMM rate on ``threads``."""
    with torch_threads(threads):
        rate = gemm_flops()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gemm_gflops": rate / 1e9,
        "gemm_threads": threads,
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
    }


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it."""

    def run(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "commit": run("rev-parse", "HEAD"),
        "dirty": bool(run("status", "--porcelain", "--untracked-files=no")),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "infini-gram", "numpy", "scikit-learn"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


# --- running -----------------------------------------------------------------------------------


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("standard run: %s ...", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 2)
            log.info("standard run: %s took %.1f s", name, self.seconds[name])


def _pretrain_in_worker(config: PretrainConfig, data_root: str) -> float:
    """A worker's job: pretrain one config on one thread (results land in the cache);
    returns its wall seconds."""
    os.environ["REPGEO_DATA_DIR"] = data_root
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    pretrain(config, num_threads=1, progress=False)
    return time.perf_counter() - start


def _posttrain_in_worker(setting_name: str, base: str, seed: int, kl: float | None,
                         probe: list[str], n_samples: int, max_eval_rows: int,
                         data_root: str) -> float:  # fmt: skip
    """A worker's job: one seed's post-training and its measurements (into the cache);
    returns its wall seconds."""
    os.environ["REPGEO_DATA_DIR"] = data_root
    logging.basicConfig(level=logging.WARNING)
    from ..posttrain import seeds as ps  # noqa: PLC0415  (posttrain imports lm)

    start = time.perf_counter()
    ps.run_seed(posttrain_config(setting_name, base), probe, seed, kl_beta=kl,
                n_samples=n_samples, max_eval_rows=max_eval_rows, progress=False)  # fmt: skip
    return time.perf_counter() - start


def posttrain_config(setting_name: str, base: str):
    """The post-training config of a :data:`posttrain.POSTTRAIN_SETTINGS` entry, started from
    ``base`` (a pretraining run folder)."""
    from ..posttrain import POSTTRAIN_SETTINGS  # noqa: PLC0415  (posttrain imports lm)

    validate.one_of("posttrain_setting", setting_name, tuple(POSTTRAIN_SETTINGS))
    return replace(POSTTRAIN_SETTINGS[setting_name], base_model=base, base_revision=None)


class _Jobs:
    """Jobs run in ``workers`` spawned processes, or at once in this process when
    ``workers`` is 1; :meth:`result` waits for one."""

    def __init__(self, workers: int) -> None:
        self.pool = (
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            if workers > 1
            else None
        )
        self.jobs: dict[str, Any] = {}

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        self.jobs[name] = self.pool.submit(fn, *args) if self.pool else fn(*args)

    def result(self, name: str) -> Any:
        job = self.jobs[name]
        return job.result() if self.pool else job

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)


def run_standard(
    setting: str | StandardSetting = "standard",
    out: str | Path | None = None,
    *,
    command: str | None = None,
    progress: bool = False,
) -> Path:
    """Run ``setting`` end to end and write its tables to ``out`` (default
    ``data/recorded/<name>``); returns ``out``. Everything heavy is cached, so a rerun after
    an interruption redoes only what is missing."""
    setting = get_setting(setting)
    out = Path(out) if out is not None else RECORDED_DIR / setting.name
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    started = datetime.now(timezone.utc)
    record: dict[str, Any] = {
        "setting": setting.name,
        "command": command
        or f"repgeo_utils.lm.standard.run_standard({setting.name!r}, {str(out)!r})",
        "git": git_commit(),
        "started": started.isoformat(timespec="seconds"),
        "machine_start": machine_record(threads=1),
        "versions": versions(),
        "settings": _jsonable(asdict(setting)),
    }
    root = str(data_dir())
    wall = time.perf_counter()

    jobs = _Jobs(setting.workers)
    try:  # one thread here too: the workers hold the other cores, and sums stay reproducible
        with torch_threads(1):
            _run_all(setting, out, record, timer, jobs, root, progress)
    finally:
        jobs.close()
    record["seconds"] = timer.seconds
    record["seconds_total"] = round(time.perf_counter() - wall, 1)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["machine_end"] = machine_record(threads=1)
    record["files"] = sorted(p.name for p in out.iterdir() if p.name != "run.json")
    (out / "run.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    log.info("standard run %s written to %s in %.0f s", setting.name, out, record["seconds_total"])
    return out


def _run_all(
    setting: StandardSetting,
    out: Path,
    record: dict[str, Any],
    timer: _Timer,
    jobs: _Jobs,
    root: str,
    progress: bool,
) -> None:
    """The steps of :func:`run_standard`. Pretraining seeds and post-training seeds run as
    worker jobs (queued in that order); this process measures the main seed as soon as it is
    trained, while the workers go on."""
    configs = setting.pretrain_configs()
    main_seed = setting.pretrain.seed
    with timer("pretraining the main seed (workers start every seed)"):
        for config in configs:
            jobs.submit(f"pretrain-{config.seed}", _pretrain_in_worker, config, root)
        worker_seconds = {f"pretrain seed {main_seed}": jobs.result(f"pretrain-{main_seed}")}
    main = pretrain(configs[0], num_threads=1, progress=False)  # a cache hit
    probe = probe_texts(main.holdout_texts, n=setting.n_probe, max_words=setting.probe_max_words,
                        min_words=min(16, setting.probe_max_words))  # fmt: skip
    record["probe_texts"] = len(probe)
    base = str(main.run_folder)
    for seed in setting.posttrain_seeds:  # queued behind the remaining pretraining seeds
        jobs.submit(f"posttrain-{seed}", _posttrain_in_worker, setting.posttrain_setting, base,
                    seed, setting.kl_beta, probe[:512], setting.n_samples,
                    setting.max_eval_rows, root)  # fmt: skip
    revisions = main.revisions

    with timer("checkpoint sweep of the main seed"):
        sweep = sweep_checkpoints(main.run_folder, revisions, probe, layers=setting.layers,
                                  progress=progress)  # fmt: skip
        assert sweep.metrics is not None
        main_table = sweep.metrics.assign(seed=main_seed)
    last_layer = int(main_table["layer"].max())
    main_final = main_table[main_table["layer"] == last_layer].sort_values("step")
    geometry = main_final[["step", "rankme_covariance", "rankme_singular", "alpha"]]
    seg = segment_phases(main_final["step"], main_final["rankme_covariance"])

    data = prepare_corpus(setting.pretrain)
    with timer("distributional memorization (infini-gram)"):
        memo = mem.memorization_over_checkpoints(
            main.run_folder, revisions, data, n_sequences=setting.memorization_sequences,
            max_tokens=setting.pretrain.context_length, progress=progress,
        )  # fmt: skip
        memo.trajectory.merge(geometry, on="step", how="left").to_csv(
            out / "memorization.csv", index=False
        )
        memo.suffix_lengths().to_csv(out / "suffix_lengths.csv", index=False)
        record["ngram_index"] = {"tokens": memo.index.tokens, "documents": memo.index.documents}

    with timer("downstream probes and few-shot accuracy"):
        down = ds.downstream_over_checkpoints(main.run_folder, revisions, setting.downstream,
                                              progress=progress)  # fmt: skip
        down = down.merge(geometry, on="step", how="left")
        down.to_csv(out / "downstream.csv", index=False)
        measures = [c for c in ("probe_accuracy", "few_shot_accuracy") if c in down.columns]
        warm_end = int(main_final.loc[main_final["rankme_covariance"].idxmin(), "step"])
        corr = pd.concat([
            ds.correlation_table(down, measures, min_step=0),
            ds.correlation_table(down, measures, min_step=warm_end),
        ], ignore_index=True)  # fmt: skip
        corr.to_csv(out / "correlations.csv", index=False)

    with timer("early generations and repetition"):
        prompts = list(gen.DEFAULT_PROMPTS) + [
            " ".join(t.split()[:4]) for t in main.holdout_texts[: setting.extra_generation_prompts]
        ]
        generations = gen.generations_over_checkpoints(
            main.run_folder, revisions, prompts, max_new_tokens=setting.generation_tokens,
            progress=progress,
        )  # fmt: skip
        generations.to_csv(out / "generations.csv", index=False)
        gen.repetition_by_checkpoint(generations).merge(
            main_final[["step", "rankme_covariance"]], on="step", how="left"
        ).to_csv(out / "repetition.csv", index=False)

    from ..posttrain import checkpoint_sft as csft  # noqa: PLC0415  (posttrain imports lm)
    from ..posttrain import seeds as pseeds  # noqa: PLC0415
    from ..posttrain.stages import SFTSettings  # noqa: PLC0415

    with timer("SFT from checkpoints"):
        steps = ph.bases_across_phases(main_final["step"].astype(int).tolist(), seg,
                                       n=setting.sft_bases)  # fmt: skip
        sft_settings = csft.CheckpointSFTSettings(
            sft=SFTSettings(steps=setting.sft_steps, batch_size=setting.sft_batch_size,
                            learning_rate=1e-3, checkpoint_every=10 * setting.sft_steps),
            max_length=setting.pretrain.context_length,
            max_prompt_tokens=min(48, setting.pretrain.context_length - 8),
        )  # fmt: skip
        sft = csft.sft_from_checkpoints(
            main.run_folder, [f"step{s}" for s in steps], sft_settings,
            pretraining_texts=data_train_texts(setting.pretrain), progress=progress,
        )  # fmt: skip
        record["checkpoint_sft"] = {k: int(v) for k, v in sft.attrs.items()}
        sft = sft.merge(geometry, on="step", how="left")
        sft["phase"] = [_phase_of(seg, s) for s in sft["step"]]
        sft.to_csv(out / "checkpoint_sft.csv", index=False)

    with timer("waiting for the other pretraining seeds"):
        for config in configs[1:]:
            worker_seconds[f"pretrain seed {config.seed}"] = jobs.result(f"pretrain-{config.seed}")
    runs = {c.seed: pretrain(c, num_threads=1, progress=False) for c in configs}  # cache hits
    record["pretraining"] = {
        str(seed): {"run_folder": run.run_folder.name, "parameters": run.parameters,
                    "revisions": len(run.revisions)}
        for seed, run in runs.items()
    }  # fmt: skip
    _write_train_log(out, runs)
    with timer("checkpoint sweeps of the other seeds; phases, noise, alpha per phase"):
        tables = [main_table]
        for seed, run in runs.items():
            if seed == main_seed:
                continue
            other = sweep_checkpoints(run.run_folder, run.revisions, probe, layers=setting.layers,
                                      progress=progress)  # fmt: skip
            assert other.metrics is not None
            tables.append(other.metrics.assign(seed=seed))
        checkpoints = pd.concat(tables, ignore_index=True)
        checkpoints.to_csv(out / "checkpoints.csv", index=False)
        final = checkpoints[checkpoints["layer"] == last_layer]
        _write_phases(out, final, main_final, setting)

    if not setting.posttrain_seeds:
        record["posttrain"] = {"skipped": "no post-training seeds (--posttrain-seeds given none)"}
        record["worker_seconds"] = {k: round(float(v), 1) for k, v in worker_seconds.items()}
        return
    with timer("post-training over seeds (SFT, DPO, GRPO without and with KL)"):
        for seed in setting.posttrain_seeds:
            worker_seconds[f"posttrain seed {seed}"] = jobs.result(f"posttrain-{seed}")
        runs_pt = pseeds.posttrain_over_seeds(
            posttrain_config(setting.posttrain_setting, base), probe[:512],
            seeds=setting.posttrain_seeds, kl_beta=setting.kl_beta, n_samples=setting.n_samples,
            max_eval_rows=setting.max_eval_rows, progress=progress,
        )  # fmt: skip
        runs_pt.changes.to_csv(out / "posttrain_changes.csv", index=False)
        runs_pt.summary.to_csv(out / "posttrain_summary.csv", index=False)
        runs_pt.trajectories.to_csv(out / "posttrain_trajectory.csv", index=False)
        pd.concat([runs_pt.pass_at_k, runs_pt.random_reference], ignore_index=True).to_csv(
            out / "pass_at_k.csv", index=False
        )
        runs_pt.solved.to_csv(out / "pass_at_k_solved.csv", index=False)
        runs_pt.seconds.to_csv(out / "posttrain_seconds.csv", index=False)
        record["posttrain"] = {"answers": runs_pt.answers}
    record["worker_seconds"] = {k: round(float(v), 1) for k, v in worker_seconds.items()}


def data_train_texts(config: PretrainConfig) -> list[str]:
    """The training documents of the pretraining corpus of ``config`` (rebuilt, seconds)."""
    corpus = build_corpus(config.use_bbc, config.use_tweets, config.holdout_fraction,
                          config.corpus_seed, config.max_documents)  # fmt: skip
    return corpus.train_texts


def _phase_of(seg, step: float) -> str:
    for phase in seg.phases:
        if phase.start_step <= step <= phase.end_step:
            return phase.name
    return "before the first phase" if step < seg.phases[0].start_step else "after"


def _write_train_log(out: Path, runs: dict[int, Any], every: int = 100) -> None:
    """Training loss averaged over blocks of ``every`` steps, per seed (a small table)."""
    rows = []
    for seed, run in runs.items():
        log_ = pd.DataFrame(run.train_log)
        if log_.empty:
            continue
        block = (log_["step"] - 1) // every
        agg = log_.groupby(block).agg(
            step=("step", "max"), loss=("loss", "mean"), lr=("lr", "last")
        )
        rows.append(agg.assign(seed=seed))
    if rows:
        pd.concat(rows, ignore_index=True).to_csv(out / "train_loss.csv", index=False)


def _write_phases(out: Path, final: pd.DataFrame, main_final: pd.DataFrame,
                  setting: StandardSetting) -> None:  # fmt: skip
    noise_from = float(setting.pretrain.checkpoint_every)
    tables = []
    for metric in ("rankme_covariance", "rankme_singular"):
        tables.append(ph.phase_table(final, metric, noise_from_step=noise_from))
    phases = pd.concat(tables, ignore_index=True)
    phases.to_csv(out / "phases.csv", index=False)
    spread = pd.concat([
        ph.seed_spread(phases[phases["metric"] == m]).assign(metric=m)
        for m in ("rankme_covariance", "rankme_singular")
    ], ignore_index=True)  # fmt: skip
    spread.to_csv(out / "noise.csv", index=False)
    rows = []
    segmentations = {
        "rankme_covariance": segment_phases(main_final["step"], main_final["rankme_covariance"]),
        "rankme_singular": segment_phases(main_final["step"], main_final["rankme_singular"]),
    }
    fitted = main_final.dropna(subset=["alpha"])
    if len(fitted) >= 2:  # a model narrower than rank 12 has no alpha-ReQ
        segmentations["alpha"] = segment_phases(fitted["step"], fitted["alpha"],
                                                higher_is_expansion=False)  # fmt: skip
    for metric, seg in segmentations.items():
        for p in seg.phases:
            rows.append({"metric": metric, "phase": p.name, "start_step": p.start_step,
                         "end_step": p.end_step, "start_value": p.start_value,
                         "end_value": p.end_value})  # fmt: skip
    pd.DataFrame(rows).to_csv(out / "phase_segments.csv", index=False)
    ph.values_by_phase(main_final["step"].tolist(), main_final["alpha"].to_numpy(),
                       segmentations["rankme_covariance"]).to_csv(out / "alpha_by_phase.csv",
                                                                  index=False)  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- reading a recorded run --------------------------------------------------------------------


@dataclass
class RecordedRun:
    """A recorded run's tables (``<name>.csv``) and its ``run.json``."""

    path: Path
    run: dict[str, Any]

    def table(self, name: str) -> pd.DataFrame:
        """``<name>.csv`` of the run (``checkpoints``, ``memorization``, ...)."""
        path = self.path / f"{name}.csv"
        if not path.is_file():
            known = sorted(p.stem for p in self.path.glob("*.csv"))
            raise FileNotFoundError(f"{path} does not exist; the run has {', '.join(known)}")
        return pd.read_csv(path)

    def has_table(self, name: str) -> bool:
        """Whether the run wrote ``<name>.csv`` (a run without post-training seeds has no
        post-training tables)."""
        return (self.path / f"{name}.csv").is_file()

    def label(self) -> str:
        """One line for a figure or a notebook: the command and the machine that made it."""
        machine = self.run.get("machine_start", {})
        minutes = self.run.get("seconds_total", float("nan")) / 60
        commit = self.run.get("git", {}).get("commit", "?")[:10]
        # a rerun finds earlier steps in the cache and times only what it did itself
        resumed = any(
            s < 60 for k, s in self.run.get("worker_seconds", {}).items() if "pretrain" in k
        )
        took = (
            f"its last invocation took {minutes:.0f} min, the rest was cached"
            if resumed
            else f"{minutes:.0f} min"
        )
        return (
            f"`{self.run.get('command', '?')}` at commit {commit} ({took}) on "
            f"{machine.get('cpu', '?')} ({machine.get('cores', '?')} cores, float32 GEMM "
            f"{machine.get('gemm_gflops', float('nan')):.0f} GFLOP/s on one thread)"
        )


def load_recorded(name_or_path: str | Path = "standard") -> RecordedRun:
    """A recorded run: a setting name under ``data/recorded/`` or a folder."""
    path = Path(name_or_path)
    if not path.is_dir():
        path = RECORDED_DIR / str(name_or_path)
    run_json = path / "run.json"
    if not run_json.is_file():
        raise FileNotFoundError(
            f"{run_json} does not exist: record the run first (`make standard`, or "
            f"python -m repgeo_utils.lm.standard --setting {Path(str(name_or_path)).name})."
        )
    return RecordedRun(path, json.loads(run_json.read_text()))


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a standard setting end to end.")
    parser.add_argument("--setting", default="standard", choices=sorted(STANDARD_SETTINGS))
    parser.add_argument("--out", type=Path, default=None, help="output folder of the tables")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--noise-seeds", type=int, nargs="+", default=None, metavar="SEED",
        help="pretraining seeds swept for the noise only (default: the setting's)",
    )  # fmt: skip
    parser.add_argument(
        "--posttrain-seeds", type=int, nargs="*", default=None, metavar="SEED",
        help="post-training seeds (default: the setting's); none leaves post-training out",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("repgeo_utils.cache", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = "python -m repgeo_utils.lm.standard " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    setting = get_setting(args.setting)
    if args.noise_seeds is not None:
        setting = replace(setting, noise_seeds=tuple(args.noise_seeds))
    if args.posttrain_seeds is not None:
        setting = replace(setting, posttrain_seeds=tuple(args.posttrain_seeds))
    run_standard(setting, args.out, command=command, progress=args.progress)


if __name__ == "__main__":
    main()
